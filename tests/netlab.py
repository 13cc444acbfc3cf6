"""A small network-namespace lab for the live daemon tests (after tests/fixtures/record_fixtures.py).

Everything it creates is private to the test run: network namespaces named ``dpt-<role>-<pid>`` (only
those are ever deleted: our own, and those of runs whose process is gone), veth pairs inside them
(MTU 1500, offloads off, IPv6 off), and processes started through ``ip netns exec`` (ended by their
own PID). Nothing is configured in the host's namespace.

Also runnable as a script, for a peer that must run inside a namespace::

    python3 tests/netlab.py pyscp '{"ae_title": "PACS_MAIN", "port": 104, "require_calling_aet": ["CT_LOCAL"]}'

starts a pynetdicom SCP (Verification and CT Image Storage), prints ``READY`` once it listens and runs
until stdin is closed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NS_PREFIX = "dpt-"  # every namespace the tests create starts with this; no other is ever touched

IP = shutil.which("ip") or "/usr/sbin/ip"
ETHTOOL = shutil.which("ethtool") or "/usr/sbin/ethtool"
CURL = shutil.which("curl") or "/usr/bin/curl"
# Absolute paths: the bare names on PATH are pynetdicom's clones of the DCMTK tools.
ECHOSCU = "/usr/bin/echoscu"
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"

OFFLOADS = ["tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off", "lro", "off"]

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


class LabError(RuntimeError):
    pass


def sh(cmd, check=True, timeout=30, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise LabError(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stdout}{r.stderr}")
    return r


def unavailable() -> str | None:
    """Why a live namespace test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET capture)"
    if not os.path.exists(IP):
        return "iproute2 'ip' not found"
    r = subprocess.run([IP, "netns", "list"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"'ip netns' is unavailable: {r.stderr.strip()}"
    for tool in (ECHOSCU, STORESCU, STORESCP, CURL, ETHTOOL):
        if not os.path.exists(tool):
            return f"{tool} not found"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bound with port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses; split after the last ')'
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def processes_with_arg(token: str) -> list[int]:
    """PIDs (other than ours) whose command line has an argument containing ``token``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if any(token.encode() in a for a in args):
            out.append(int(entry))
    return out


class Lab:
    """Namespaces and processes of one test module; :meth:`cleanup` removes all of them."""

    def __init__(self):
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []

    # -- topology ------------------------------------------------------------------------------

    def netns(self, role: str) -> str:
        """Create namespace ``dpt-<role>-<our pid>`` (unique, so that test runs in parallel never meet)
        and return its name. Namespaces of this form left by a run whose process is gone are removed."""
        reap_stale()
        name = f"{NS_PREFIX}{role}-{os.getpid()}"
        sh([IP, "netns", "add", name])
        self.namespaces.append(name)
        for key in ("all", "default"):
            self.ex(name, ["sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"])
        self.ex(name, [IP, "link", "set", "lo", "up"])
        return name

    def ex(self, ns: str, cmd, check=True, timeout=30) -> subprocess.CompletedProcess:
        return sh([IP, "netns", "exec", ns, *cmd], check=check, timeout=timeout)

    def veth(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
        sh([IP, "link", "add", dev_a, "netns", ns_a, "mtu", "1500", "type", "veth",
            "peer", "name", dev_b, "netns", ns_b, "mtu", "1500"])
        for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
            self.ex(ns, [ETHTOOL, "-K", dev, *OFFLOADS])
            self.ex(ns, [IP, "link", "set", dev, "up"])

    def addr(self, ns: str, dev: str, cidr: str) -> None:
        self.ex(ns, [IP, "addr", "add", cidr, "dev", dev])

    # -- processes -----------------------------------------------------------------------------

    def spawn(self, ns: str, cmd, stdout=None, stderr=None, stdin=False, cwd=None) -> subprocess.Popen:
        """Start ``cmd`` in ``ns``. ``ip netns exec`` execs the command, so the Popen's pid is the
        command's own. stdout/stderr: a path (file), None (discarded) or subprocess.PIPE."""
        def target(x):
            if x is None:
                return subprocess.DEVNULL
            if x is subprocess.PIPE:
                return x
            return open(x, "w")
        out, err = target(stdout), target(stderr)
        p = subprocess.Popen([IP, "netns", "exec", ns, *map(str, cmd)], stdout=out, stderr=err,
                             stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, text=True, cwd=cwd)
        for f in (out, err):
            if hasattr(f, "close") and f is not subprocess.PIPE:
                f.close()
        self.procs.append(p)
        return p

    def wait_listen(self, ns: str, port: int, timeout: float = 10.0) -> None:
        """Wait until something listens on ``port`` in ``ns`` (asked with ss: no packets)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.ex(ns, ["ss", "-Hltn", f"sport = :{port}"]).stdout.strip():
                return
            time.sleep(0.05)
        raise LabError(f"nothing listening on port {port} in {ns}")

    def run(self, ns: str, cmd, timeout: float = 30) -> tuple[int, str]:
        """Run ``cmd`` in ``ns`` to completion: (exit status, stdout+stderr)."""
        r = subprocess.run([IP, "netns", "exec", ns, *map(str, cmd)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return r.returncode, r.stdout

    @staticmethod
    def stop(p: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 5) -> int | None:
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return p.returncode

    def cleanup(self) -> None:
        for p in self.procs:
            try:
                self.stop(p, timeout=3)
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass
        self.procs = []
        for ns in reversed(self.namespaces):
            self._delete(ns)
        self.namespaces = []

    @staticmethod
    def _delete(ns: str) -> None:
        assert ns.startswith(NS_PREFIX)
        # Processes still in the namespace were started by these tests (e.g. a probe's workers
        # orphaned by a failed test): end them by PID before deleting the namespace.
        r = sh([IP, "netns", "pids", ns], check=False)
        for pid in r.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh([IP, "netns", "del", ns], check=False)


def reap_stale() -> None:
    """Delete ``dpt-<role>-<pid>`` namespaces whose creating process no longer exists (a crashed or
    killed test run). Namespaces of a live process, or not of this form, are left alone."""
    for line in sh([IP, "netns", "list"]).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        role, _, pid = name[len(NS_PREFIX):].rpartition("-")
        if not name.startswith(NS_PREFIX) or not role or not pid.isdigit():
            continue
        if not os.path.exists(f"/proc/{pid}"):
            Lab._delete(name)


# -- HTTP inside a namespace -----------------------------------------------------------------------


def http_get(ns: str, port: int, path: str, host: str = "127.0.0.1", timeout: float = 5) -> tuple[int, str]:
    """(status, body) of GET http://host:port/path made from inside ``ns`` with curl; status 0 when
    nothing answered."""
    r = subprocess.run([IP, "netns", "exec", ns, CURL, "-sS", "--noproxy", "*", "--max-time", str(timeout),
                        "-o", "-", "-w", "\n%{http_code}", f"http://{host}:{port}{path}"],
                       capture_output=True, text=True, timeout=timeout + 5)
    body, _, code = r.stdout.rpartition("\n")
    try:
        return int(code), body
    except ValueError:
        return 0, r.stdout + r.stderr


# -- Prometheus exposition -------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Samples of an exposition: (sample name, frozenset of label pairs) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def counter_types(text: str) -> dict[str, str]:
    """Family name -> type, from the # TYPE lines."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out[name] = kind
    return out


def select(samples: dict, name: str, **labels) -> dict[frozenset, float]:
    """The samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= set(lab)}


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels`` (0 when there is none)."""
    return sum(select(samples, name, **labels).values())


# -- DICOM test data -------------------------------------------------------------------------------


def make_ct(path: str | Path, seed: str, rows: int = 16, cols: int = 16) -> str:
    """A small CT Image Storage file with obviously fake patient data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    uid = generate_uid(entropy_srcs=["dicom-probe-live-test", seed])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = uid
    ds.PatientName = "SENTINEL^PHI^NAME"
    ds.PatientID = "SENTINEL-PHI-ID-0001"
    ds.Modality = "CT"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["dicom-probe-live-test", "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["dicom-probe-live-test", "series"])
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes((i * 7) % 256 for i in range(rows * cols * 2))
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


# -- peer mode: a pynetdicom SCP inside a namespace --------------------------------------------------


def _pyscp(spec: dict) -> None:
    from pynetdicom import AE, evt

    ae = AE(ae_title=spec["ae_title"])
    for uid in (VERIFICATION, CT_IMAGE_STORAGE):
        ae.add_supported_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.require_calling_aet = spec.get("require_calling_aet", [])
    ae.maximum_associations = 50
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    counts = {"rejected": 0, "accepted": 0, "released": 0, "echo": 0, "store": 0}

    def bump(key):
        def handler(event):
            counts[key] += 1
            return 0x0000 if key in ("echo", "store") else None
        return handler

    handlers = [(evt.EVT_REJECTED, bump("rejected")), (evt.EVT_ACCEPTED, bump("accepted")),
                (evt.EVT_RELEASED, bump("released")), (evt.EVT_C_ECHO, bump("echo")),
                (evt.EVT_C_STORE, bump("store"))]
    server = ae.start_server((spec.get("host", ""), spec["port"]), block=False, evt_handlers=handlers)
    print("READY", flush=True)
    sys.stdin.read()  # until the controller closes stdin (or the process is ended)
    server.shutdown()
    print("RESULT " + json.dumps(counts), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "pyscp":
        _pyscp(json.loads(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} pyscp SPEC_JSON")
