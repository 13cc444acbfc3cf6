"""The demo lab (`python3 demo/lab.py --fast`, README "Demo") end to end, for real.

It builds namespaces demo-dc / demo-campus / demo-remote, runs a pynetdicom PACS, DCMTK storescu
modalities, `dicom-probe run` capturing live and Prometheus with a shortened copy of the seed alert,
and must: exit 0; show DicomAETitleNotRecognized firing with the seed's labels and summary, then
resolved after the fix; have the probe, the modalities and the PACS agree on every count; and leave
no demo- namespace, no demo-host link and no process behind. About 45 s. Needs root, `ip netns`,
DCMTK in /usr/bin, Prometheus and pynetdicom, else skipped.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "demo" / "lab.py"
LOCK_FILE = "/run/lock/dicom-probe-demo.lock"  # held by a running demo (demo/lab.py)
BUDGET = 120  # seconds, the whole run (typically ~45)

SEED_LABELS = {
    "alertname": "DicomAETitleNotRecognized",
    "calling_ae": "CT_REMOTE1",
    "called_ae": "PACS_MAIN",
    "site": "remote-hospital",
    "reason": "calling-ae-title-not-recognized",
    "severity": "critical",
}
SEED_SUMMARY = "calling AE CT_REMOTE1 at site remote-hospital is being rejected by PACS_MAIN: calling-ae-title-not-recognized"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, live capture)"
    ip = shutil.which("ip") or "/usr/sbin/ip"
    if not os.path.exists(ip):
        return "iproute2 'ip' not found"
    r = subprocess.run([ip, "netns", "list"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"'ip netns' is unavailable: {r.stderr.strip()}"
    for tool in ("prometheus", "promtool"):
        if not (shutil.which(tool) or os.path.exists(f"/usr/bin/{tool}")):
            return f"needs {tool} (Debian package prometheus; bash deploy/install.sh --test)"
    for tool in ("/usr/bin/storescu", shutil.which("ethtool") or "/usr/sbin/ethtool"):
        if not os.path.exists(tool):
            return f"{tool} not found (bash deploy/install.sh --test)"
    for module in ("pynetdicom", "pydicom"):
        if importlib.util.find_spec(module) is None:
            return f"needs the Python package {module}"
    return None


_WHY = _why_not()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


def _demo_running() -> bool:
    """Another demo lab (someone's `make demo`) holds the lock: the fixed demo- names are taken."""
    try:
        fd = os.open(LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _demo_namespaces() -> list[str]:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    out = subprocess.run([ip, "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].startswith("demo-")]


def _processes_with(token: str) -> list[str]:
    """Processes (other than this one) whose command line contains ``token``."""
    r = subprocess.run(["pgrep", "-af", "--", token], capture_output=True, text=True)
    return [line for line in r.stdout.splitlines() if line.split()[0] != str(os.getpid())]


def _labels(text: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', text))


def test_demo_lab_fast_end_to_end():
    if _demo_running():
        pytest.skip("a demo lab is already running on this machine (make demo); its demo- names are taken")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(LAB), "--fast"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=BUDGET + 30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the lab cleans up on SIGTERM
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"demo/lab.py --fast did not finish in {BUDGET + 30} s:\n{out[-6000:]}")
    except BaseException:  # e.g. Ctrl-C on pytest: the lab (own session) would not see it
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        raise
    elapsed = time.monotonic() - t0
    print(f"\ndemo/lab.py --fast: exit {proc.returncode} after {elapsed:.1f} s")
    tail = out[-6000:]
    if proc.returncode != 0 and "another demo lab is running" in out:
        pytest.skip("a demo lab started on this machine meanwhile (make demo); its demo- names are taken")
    assert proc.returncode == 0, f"demo failed (exit {proc.returncode}):\n{tail}"
    assert elapsed < BUDGET, f"the demo took {elapsed:.0f} s (budget {BUDGET} s)\n{tail}"

    # The alert fired with the seed's labels and summary ...
    firing = re.search(r"ALERT FIRING DicomAETitleNotRecognized \{([^}]*)\}\n.*summary: (.*)\n", out)
    assert firing, f"no firing seed alert in the output:\n{tail}"
    assert _labels(firing.group(1)) == SEED_LABELS, firing.group(1)
    assert firing.group(2).strip() == SEED_SUMMARY
    # ... then the fix, then it resolved.
    fix = out.find("=== 5. The fix")
    resolved = re.search(r"ALERT RESOLVED DicomAETitleNotRecognized calling_ae=CT_REMOTE1 site=remote-hospital", out)
    assert resolved, f"the seed alert never resolved:\n{tail}"
    assert firing.start() < fix < resolved.start()

    result_line = re.search(r"^DEMO RESULT (\{.*\})$", out, re.M)
    assert result_line, tail
    result = json.loads(result_line.group(1))
    print(f"timeline: {result['timeline']}")
    assert result["ok"] and result["fast"]
    assert result["alert"]["labels"] == SEED_LABELS
    assert result["alert"]["summary"] == SEED_SUMMARY
    # probe, DCMTK modalities and the PACS's own log agree on every count
    assert result["agree"], tail
    counts, tl = result["counts"], result["timeline"]
    for ae in ("CT_LOCAL", "MR_LOCAL"):
        assert counts[ae]["requests"] >= 3 and counts[ae]["rejects"] == 0, counts
        assert counts[ae]["accepts"] == counts[ae]["requests"], counts
    for ae in ("CT_REMOTE1", "CT_REMOTE2"):
        assert counts[ae]["rejects"] >= 3 and counts[ae]["accepts"] >= 1, counts
    assert tl["alert_firing"] - tl["remote_live"] < 45, tl
    assert tl["remote_accepted"] - tl["fix_applied"] < 15, tl
    assert tl["alert_resolved"] - tl["fix_applied"] < 45, tl
    assert "cleaned up: no demo- namespace, no demo process left" in out

    # Nothing is left: namespaces, the host link, processes, the work directory.
    assert _demo_namespaces() == [], f"demo namespaces left: {_demo_namespaces()}"
    assert not Path("/sys/class/net/demo-host").exists(), "the demo-host veth is left in the root namespace"
    workdir = result["workdir"]
    assert workdir.startswith("/tmp/dicom-probe-demo-") or "/dicom-probe-demo-" in workdir
    assert _processes_with(workdir) == [], f"processes of the demo left: {_processes_with(workdir)}"
    assert _processes_with(f"{LAB} _pacs") == [], "the demo's PACS is still running"
    assert not Path(workdir).exists(), f"work directory left: {workdir}"
