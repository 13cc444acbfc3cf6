#!/usr/bin/env bash
# Installs what dicom-probe needs on Debian (run as root): libpcap for pypcap, and the Python package.
# With --test, also the tools the test suite drives: tcpdump, tshark, DCMTK, Prometheus, iproute2,
# ethtool, chromium, and the package's test extra (pytest, hypothesis, pynetdicom); and tcpreplay for
# the live benchmark (bench/live.py).
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

packages=(libpcap-dev gcc python3-dev)
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3-pip)
if [ "$with_tests" = 1 ]; then
  packages+=(tcpdump tshark dcmtk prometheus iproute2 ethtool chromium fonts-dejavu-core tcpreplay)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

extra=""
[ "$with_tests" = 1 ] && extra="[test]"
pip_args=(install -q -e ".${extra}")
# Debian's own python3 refuses system-wide installs (PEP 668); the probe is a system service here.
if python3 -m pip install --help 2>/dev/null | grep -q -- --break-system-packages \
   && python3 -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
  pip_args+=(--break-system-packages)
fi
python3 -m pip "${pip_args[@]}"
# An editable install leaves the modules uncompiled; where PYTHONDONTWRITEBYTECODE is set every start
# would compile them again (~0.1 s). Compiled once here, they are only read.
python3 -m compileall -q probe >/dev/null || true
command -v dicom-probe >/dev/null || { echo "install.sh: dicom-probe is not on PATH after install" >&2; exit 1; }
