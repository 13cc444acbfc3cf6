#!/usr/bin/env python3
"""The founding incident, live: a demo lab for dicom-probe (``make demo`` or ``python3 demo/lab.py``).

A new remote hospital is connected; its CT scanners CT_REMOTE1 and CT_REMOTE2 cannot send to the PACS,
keep retrying, and the PACS answers every A-ASSOCIATE-RQ with A-ASSOCIATE-RJ *calling AE title not
recognized*. This script builds that situation with real DICOM peers in network namespaces, lets
``dicom-probe run`` capture it live and Prometheus alert on it, then applies the fix and shows the
alert resolve. Needs root, iproute2 (``ip netns``), ethtool, DCMTK in /usr/bin, pynetdicom, pydicom
and Prometheus (``bash deploy/install.sh --test`` installs all of them).

Topology (everything named ``demo-*``; addresses in 198.18.0.0/15, MTU 1500, offloads off)::

    root namespace: demo-host 198.19.254.1/30  -- your shell and browser: the URLs printed work here
        |
    demo-dc  (the data centre)     dc-host 198.19.254.2/30
        PACS_MAIN  198.18.0.10:104   pynetdicom SCP with an AE table (unknown calling AE: RJ 1/1/3)
        dicom-probe run              captures on dc-campus + dc-remote; status page and /metrics :9764
        Prometheus                   :9090, scrapes the probe every 2 s, demo copy of the alert rules
        dc-campus 198.18.1.1/24  ------------  campus0 198.18.1.10/24   demo-campus (main campus)
                                                   CT_LOCAL (storescu), MR_LOCAL (storescu)
        dc-remote 198.19.1.1/24  ------------  remote0 198.19.1.10/24   demo-remote (remote hospital)
                                                   CT_REMOTE1, CT_REMOTE2 (storescu, retrying)

The PACS is a pynetdicom SCP rather than DCMTK's dcmqrscp: dcmqrscp refuses an unknown *calling* AE
with reason 7 (called-ae-title-not-recognized, see tests/fixtures/README.md), while the incident and
the seed capture have reason 3, calling-ae-title-not-recognized, which is what pynetdicom's
``require_calling_aet`` sends. Its AE table is a text file (one title per line) that it re-reads on
SIGHUP: the fix is "add the titles, reload the SCP", without a listening gap. The modalities are the
real DCMTK ``storescu`` (/usr/bin), one association per attempt.

Prometheus loads a generated copy of deploy/prometheus/dicom-probe.rules.yml in which exactly this
is shortened (nothing else differs):

* ``pair_reason:dicom_association_rejects:increase10m`` (the record the seed alert reads; the record
  keeps its name): window ``[10m]`` -> ``[30s]`` and both ``offset 10m`` -> ``offset 30s``;
* ``DicomAETitleNotRecognized``: ``for: 1m`` -> ``for: 15s`` (its description names the demo values);

with ``--fast`` (tests) 20 s and 6 s. Threshold (>= 3 rejects), labels and summary are unchanged.
``DicomNewAETitleRejected`` reads the same record (so its window is shortened too) but keeps its
``for: 1m``. Scrape and evaluation interval: 2 s.

Options: ``--fast`` shorter pauses and windows (about 45 s instead of about 75 s); ``--keep`` leave
the lab running after the story, traffic flowing, until Ctrl-C. Namespaces, the host veth and every
process are removed on exit, on error, on Ctrl-C and on SIGTERM/SIGHUP (signal handlers, try/finally
and atexit); a lab left behind by a killed run (SIGKILL) is removed by the next run.

Internal peer mode (run by the lab inside demo-dc)::

    python3 demo/lab.py _pacs --ae-title PACS_MAIN --port 104 --ae-table FILE
"""

from __future__ import annotations

import argparse
import atexit
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "dicom-probe.rules.yml"

IP = shutil.which("ip") or "/usr/sbin/ip"
ETHTOOL = shutil.which("ethtool") or "/usr/sbin/ethtool"
SS = shutil.which("ss") or "/usr/bin/ss"
# Absolute paths: the bare names on PATH may be pynetdicom's clones of the DCMTK tools.
STORESCU = "/usr/bin/storescu"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
LOCK_FILE = "/run/lock/dicom-probe-demo.lock"
OFFLOADS = ["tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off", "lro", "off"]

# -- the lab's names and addresses ------------------------------------------------------------------

PREFIX = "demo-"
NS_DC, NS_CAMPUS, NS_REMOTE = "demo-dc", "demo-campus", "demo-remote"
NAMESPACES = (NS_DC, NS_CAMPUS, NS_REMOTE)
HOST_DEV, HOST_IP = "demo-host", "198.19.254.1"  # root namespace end of the host link
DC_HOST_DEV, DC_IP = "dc-host", "198.19.254.2"  # demo-dc end: the URLs
PACS_IP, PACS_PORT, PACS_AE = "198.18.0.10", 104, "PACS_MAIN"
CAMPUS_NET, CAMPUS_GW, CAMPUS_IP = "198.18.1.0/24", "198.18.1.1", "198.18.1.10"
REMOTE_NET, REMOTE_GW, REMOTE_IP = "198.19.1.0/24", "198.19.1.1", "198.19.1.10"
PROBE_PORT, PROM_PORT = 9764, 9090  # inside demo-dc, a fresh namespace: always free there
PROBE_URL, PROM_URL = f"http://{DC_IP}:{PROBE_PORT}", f"http://{DC_IP}:{PROM_PORT}"

LOCAL_AES = ("CT_LOCAL", "MR_LOCAL")
REMOTE_AES = ("CT_REMOTE1", "CT_REMOTE2")
SEED_ALERT = "DicomAETitleNotRecognized"
INCREASE_RECORD = "pair_reason:dicom_association_rejects:increase10m"
REJECT_REASON = "calling-ae-title-not-recognized"

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


class DemoError(RuntimeError):
    pass


class Interrupted(BaseException):
    """A signal asked us to stop (SIGINT is KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# -- small helpers ----------------------------------------------------------------------------------


def sh(cmd, check=True, timeout=30) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise DemoError(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stdout}{r.stderr}")
    return r


def nsx(ns: str, cmd, check=True, timeout=30) -> subprocess.CompletedProcess:
    return sh([IP, "netns", "exec", ns, *cmd], check=check, timeout=timeout)


def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with OPENER.open(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def prom_api(path: str, **params) -> dict | list | None:
    url = f"{PROM_URL}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    status, body = http_get(url)
    if status != 200:
        return None
    try:
        return json.loads(body)["data"]
    except (ValueError, KeyError):
        return None


def why_not() -> str | None:
    """Why the lab cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, live capture)"
    for tool in (IP, ETHTOOL, SS, STORESCU, PROMETHEUS, PROMTOOL):
        if not os.path.exists(tool):
            return f"{tool} not found (bash deploy/install.sh --test)"
    r = subprocess.run([IP, "netns", "list"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"'ip netns' is unavailable: {r.stderr.strip()}"
    import importlib.util

    for module in ("pydicom", "pynetdicom", "yaml", "prometheus_client"):
        if importlib.util.find_spec(module) is None:
            return f"missing Python package: {module} (bash deploy/install.sh --test)"
    return None


def make_image(path: Path, sop_class: str, modality: str, seed: str) -> str:
    """A tiny image with obviously fake patient data (what the modalities send)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    uid = generate_uid(entropy_srcs=["dicom-probe-demo", seed])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.PatientName, ds.PatientID = "DEMO^PATIENT", "DEMO-0001"
    ds.Modality = modality
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["dicom-probe-demo", "study", seed])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["dicom-probe-demo", "series", seed])
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes((i * 13) % 256 for i in range(32 * 32 * 2))
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def demo_rules(window: str, window_text: str, for_: str, for_text: str) -> tuple[str, list[str]]:
    """The demo copy of the rules file (YAML text) and the list of what was changed."""
    import yaml

    doc = yaml.safe_load(RULES.read_text())
    changes: list[str] = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == INCREASE_RECORD:
                expr = rule["expr"]
                if expr.count("offset 10m") != 2 or expr.count("[10m]") != 1:
                    raise DemoError(f"{RULES}: {INCREASE_RECORD} no longer has the 10m window this demo shortens")
                rule["expr"] = expr.replace("offset 10m", f"offset {window}").replace("[10m]", f"[{window}]")
                changes.append(f"{INCREASE_RECORD}: [10m] -> [{window}], offset 10m -> offset {window} (x2)")
            elif rule.get("alert") == SEED_ALERT:
                if rule.get("for") != "1m":
                    raise DemoError(f"{RULES}: {SEED_ALERT} no longer has for: 1m")
                rule["for"] = for_
                desc = rule["annotations"]["description"]
                new = desc.replace("in the last 10 minutes", f"in the last {window_text}") \
                          .replace("at least\n3 in 10 minutes, for 1 minute", f"at least\n3 in {window_text}, for {for_text}") \
                          .replace("at least 3 in 10 minutes, for 1 minute", f"at least 3 in {window_text}, for {for_text}")
                rule["annotations"]["description"] = new + " [demo lab: production rules use 10 minutes, for 1 minute]"
                changes.append(f"{SEED_ALERT}: for: 1m -> for: {for_}")
    if len(changes) != 2:
        raise DemoError(f"{RULES}: expected {INCREASE_RECORD} and {SEED_ALERT}, changed only {changes}")
    header = (f"# GENERATED by demo/lab.py from {RULES.relative_to(REPO)} -- demo timing, do not deploy.\n"
              + "".join(f"# shortened: {c}\n" for c in changes))
    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value):  # multi-line PromQL stays readable: literal blocks
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return header + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=120), changes


def pair_counts(metrics_text: str) -> dict[str, dict[str, float]]:
    """calling AE -> {requests, accepts, rejects, site} (called PACS_MAIN), from the probe's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict] = {}
    names = {"dicom_association_requests": "requests", "dicom_association_accepts": "accepts",
             "dicom_association_rejects": "rejects", "dicom_association_releases": "releases"}
    for fam in text_string_to_metric_families(metrics_text):
        key = names.get(fam.name)
        if key is None:
            continue
        for s in fam.samples:
            if not s.name.endswith("_total") or s.labels.get("called_ae") != PACS_AE:
                continue
            d = out.setdefault(s.labels["calling_ae"], {"requests": 0, "accepts": 0, "rejects": 0, "releases": 0,
                                                        "site": s.labels.get("site", "?")})
            d[key] += s.value
    return out


# -- the PACS (peer mode, inside demo-dc) --------------------------------------------------------------


def pacs_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lab.py _pacs")
    p.add_argument("--ae-title", required=True)
    p.add_argument("--host", default="")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ae-table", required=True, help="known calling AE titles, one per line; SIGHUP re-reads")
    a = p.parse_args(argv)

    from pynetdicom import AE, evt

    log_lock = threading.Lock()  # handlers run in the associations' threads: one whole line per write

    def log(**kw):
        line = json.dumps({"time": round(time.time(), 3), **kw}) + "\n"
        with log_lock:
            sys.stdout.write(line)
            sys.stdout.flush()

    def read_table() -> list[str]:
        titles = []
        for line in Path(a.ae_table).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                titles.append(line)
        if not titles:  # pynetdicom accepts everyone when the list is empty: never that
            raise SystemExit(f"{a.ae_table}: no AE title")
        return titles

    ae = AE(ae_title=a.ae_title)
    for uid in (VERIFICATION, CT_IMAGE_STORAGE, MR_IMAGE_STORAGE):
        ae.add_supported_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.require_calling_aet = read_table()
    ae.maximum_associations = 50
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15

    def who(event):
        return {"calling_ae": event.assoc.requestor.ae_title, "address": event.assoc.requestor.address}

    def on_rejected(event):
        prim = event.assoc.acceptor.primitive
        log(event="rejected", **who(event),
            rj=[getattr(prim, "result", None), getattr(prim, "result_source", None), getattr(prim, "diagnostic", None)])

    def on_accepted(event):
        log(event="accepted", **who(event))

    def on_store(event):
        log(event="c-store", **who(event))
        return 0x0000  # not written anywhere: the demo keeps no images

    stop = threading.Event()

    def on_signal(signum, _frame):
        if signum == signal.SIGHUP:
            try:
                ae.require_calling_aet = read_table()
                log(event="reloaded", known=ae.require_calling_aet)
            except (OSError, SystemExit) as e:
                log(event="reload-failed", error=str(e))
        else:
            stop.set()

    for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    server = ae.start_server((a.host, a.port), block=False,
                             evt_handlers=[(evt.EVT_REJECTED, on_rejected), (evt.EVT_ACCEPTED, on_accepted),
                                           (evt.EVT_C_STORE, on_store)])
    log(event="ready", ae_title=a.ae_title, port=a.port, known=ae.require_calling_aet)
    while not stop.wait(0.5):
        pass
    server.shutdown()
    log(event="stopped")
    return 0


# -- the lab --------------------------------------------------------------------------------------------


class Modality(threading.Thread):
    """A modality: storescu of its image to PACS_MAIN every ``interval`` seconds (a retrying device)."""

    def __init__(self, lab: "Lab", ae: str, ns: str, image: str, interval: float, delay: float = 0.0):
        super().__init__(name=ae, daemon=True)
        self.lab, self.ae, self.ns, self.image = lab, ae, ns, image
        self.interval, self.delay = interval, delay
        self.stop = threading.Event()
        self.attempts = self.accepted = self.rejected = self.failed = 0
        self.last_error = ""

    def run(self) -> None:
        if self.stop.wait(self.delay):
            return
        while not self.stop.is_set():
            cmd = [IP, "netns", "exec", self.ns, STORESCU, "-aet", self.ae, "-aec", PACS_AE,
                   "-to", "5", "-ta", "5", "-td", "5", PACS_IP, str(PACS_PORT), self.image]
            try:
                p = self.lab.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            except DemoError:
                return  # the lab is shutting down
            try:
                out, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.lab.kill(p)
                out = "timeout"
            finally:
                self.lab.forget(p)
            self.attempts += 1
            if p.returncode == 0:
                self.accepted += 1
            elif "Association Rejected" in (out or ""):
                self.rejected += 1
            else:
                self.failed += 1
                lines = (out or "").strip().splitlines()
                self.last_error = lines[-1] if lines else f"exit status {p.returncode}"
            if self.stop.wait(self.interval):
                return


class Lab:
    def __init__(self, args, closing: threading.Event | None = None):
        self.args = args
        self.closing_signal = closing or threading.Event()
        self.fast = args.fast
        self.t0 = time.monotonic()
        self.window, self.window_text = ("20s", "20 seconds") if self.fast else ("30s", "30 seconds")
        self.for_, self.for_text = ("6s", "6 seconds") if self.fast else ("15s", "15 seconds")
        self.normal_seconds = 4 if self.fast else 12
        self.tick = 3.0 if self.fast else 5.0
        self.workdir = Path(tempfile.mkdtemp(prefix="dicom-probe-demo-"))
        self.procs: dict[str, subprocess.Popen] = {}  # long-running: pacs, probe, prometheus
        self.clients: set[subprocess.Popen] = set()  # the modalities' storescu runs
        self.lock = threading.Lock()
        self.closing = False
        self.cleaned = False
        self.created_host_link = False
        self.modalities: list[Modality] = []
        self.timeline: dict[str, float] = {}
        self.lock_fd: int | None = None
        self.events_seen = 0
        self.completed = False
        self.failed = False
        self.pacs_log_pos = 0

    # -- output ---------------------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, msg: str = "") -> None:
        print(f"[{self.now():6.1f}s] {msg}" if msg else "", flush=True)

    def head(self, title: str) -> None:
        print(f"\n=== {title} " + "=" * max(3, 96 - len(title)), flush=True)

    def mark(self, name: str) -> float:
        self.timeline[name] = round(self.now(), 1)
        return self.timeline[name]

    # -- processes ----------------------------------------------------------------------------------

    def popen(self, cmd, **kw) -> subprocess.Popen:
        """Start a short-lived client (own session, so a terminal's Ctrl-C reaches only us)."""
        with self.lock:
            if self.closing:
                raise DemoError("lab is closing")
            p = subprocess.Popen([str(c) for c in cmd], text=True, start_new_session=True,
                                 stdin=subprocess.DEVNULL, **kw)
            self.clients.add(p)
            return p

    def forget(self, p: subprocess.Popen) -> None:
        with self.lock:
            self.clients.discard(p)

    @staticmethod
    def kill(p: subprocess.Popen, sig=signal.SIGKILL) -> None:
        try:
            os.killpg(p.pid, sig)  # ip netns exec execs the command: its pid leads its own group
        except (ProcessLookupError, PermissionError):
            pass

    def spawn(self, name: str, ns: str, cmd, cwd=None) -> subprocess.Popen:
        """Start a long-running process ``name`` in ``ns``, output to workdir/<name>.log."""
        log = open(self.workdir / f"{name}.log", "w")
        with self.lock:
            if self.closing:
                log.close()
                raise DemoError("lab is closing")
            p = subprocess.Popen([IP, "netns", "exec", ns, *map(str, cmd)], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, text=True, cwd=cwd, start_new_session=True)
            self.procs[name] = p
        log.close()
        return p

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join((self.workdir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is not None:
            raise DemoError(f"{name} exited with status {p.returncode}:\n{self.log_tail(name)}")

    def wait_for(self, what: str, cond, timeout: float, interval: float = 0.2, on_tick=None):
        end = time.monotonic() + timeout
        next_tick = time.monotonic() + self.tick
        while True:
            for name in self.procs:
                self.alive(name)
            v = cond()
            if v:
                return v
            if time.monotonic() > end:
                raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
            if on_tick and time.monotonic() >= next_tick:
                on_tick()
                next_tick += self.tick
            time.sleep(interval)

    # -- lifecycle ----------------------------------------------------------------------------------

    def take_lock(self) -> None:
        os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = (Path(LOCK_FILE).read_text().split() or ["?"])[0]
            raise DemoError(f"another demo lab is running (pid {holder}); stop it first (Ctrl-C)") from None
        previous = os.read(fd, 4096).decode(errors="replace").split()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {self.workdir}\n".encode())
        self.lock_fd = fd
        # a run killed with SIGKILL left its work directory: ours to remove (pid dead: we hold the lock)
        stale = Path(previous[1]) if len(previous) > 1 else None
        if stale and stale != self.workdir and stale.name.startswith("dicom-probe-demo-") \
                and stale.parent == Path(tempfile.gettempdir()) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)

    def remove_stale(self) -> None:
        """A lab left by a run that was SIGKILLed (we hold the lock, so no other run is alive)."""
        present = set(line.split()[0] for line in sh([IP, "netns", "list"]).stdout.splitlines() if line.strip())
        stale = [ns for ns in NAMESPACES if ns in present]
        if stale or Path(f"/sys/class/net/{HOST_DEV}").exists():
            self.say(f"removing a lab left by an earlier run: {', '.join(stale + [HOST_DEV])}")
            for ns in stale:
                self.delete_ns(ns)
            sh([IP, "link", "del", HOST_DEV], check=False)
        # the host link's addresses must be ours alone
        r = sh([IP, "-4", "route", "show", "to", "match", HOST_IP]).stdout
        for line in r.splitlines():
            if line.split()[0] != "default":
                raise DemoError(f"the root namespace already routes {HOST_IP} ({line.strip()}): "
                                f"198.19.254.0/30 is needed for the demo's host link")

    @staticmethod
    def delete_ns(ns: str) -> list[int]:
        """Delete namespace ``ns``; returns the PIDs that were still running in it (none, normally)."""
        assert ns.startswith(PREFIX)
        # Whatever still runs in one of our namespaces was started by this lab: end it by PID.
        found: set[int] = set()
        end = time.monotonic() + 3
        while time.monotonic() < end:
            pids = [int(p) for p in sh([IP, "netns", "pids", ns], check=False).stdout.split() if p.isdigit()]
            if not pids:
                break
            found.update(pids)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        sh([IP, "netns", "del", ns], check=False)
        return sorted(found)

    def cleanup(self) -> None:
        self.closing_signal.set()  # from now on a second Ctrl-C (or SIGTERM) cannot cut this short
        if self.cleaned:
            return
        self.cleaned = True
        with self.lock:
            self.closing = True
        if self.lock_fd is None:  # never owned the lab (e.g. another run holds it): touch nothing
            shutil.rmtree(self.workdir, ignore_errors=True)
            return
        print(f"\n[{self.now():6.1f}s] cleaning up: modalities, probe, Prometheus, PACS, namespaces", flush=True)
        for m in self.modalities:
            m.stop.set()
        with self.lock:
            clients = list(self.clients)
        for p in clients:
            self.kill(p)
        # the probe first (SIGTERM: it flushes its event log), then Prometheus, then the PACS
        for name in ("probe", "prometheus", "pacs"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                self.kill(p, signal.SIGTERM)
        for name in ("probe", "prometheus", "pacs"):
            p = self.procs.get(name)
            if p is None:
                continue
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                self.kill(p)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for p in clients:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for m in self.modalities:
            m.join(5)
        strays = {ns: pids for ns in NAMESPACES if (pids := self.delete_ns(ns))}
        if strays:  # the probe's workers after a probe crash, say: ended above, but worth a word
            print(f"  processes still running in the lab were killed: {strays}", flush=True)
        if self.created_host_link or Path(f"/sys/class/net/{HOST_DEV}").exists():
            sh([IP, "link", "del", HOST_DEV], check=False)  # normally gone with demo-dc already
        left = [line.split()[0] for line in sh([IP, "netns", "list"], check=False).stdout.splitlines()
                if line.split() and line.split()[0] in NAMESPACES]
        running = [p.pid for p in [*self.procs.values(), *clients] if p.poll() is None]
        if left or running or Path(f"/sys/class/net/{HOST_DEV}").exists():
            print(f"  WARNING: not removed: namespaces {left}, processes {running}, "
                  f"{HOST_DEV} {'present' if Path(f'/sys/class/net/{HOST_DEV}').exists() else 'gone'}", flush=True)
            self.failed = True
        if self.args.keep_workdir or self.failed:
            print(f"  logs kept in {self.workdir}", flush=True)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.lock_fd is not None:
            os.ftruncate(self.lock_fd, 0)  # a clean exit: nothing for the next run to reap
            os.close(self.lock_fd)
            self.lock_fd = None
        if not (left or running):
            print(f"[{self.now():6.1f}s] cleaned up: no demo- namespace, no demo process left", flush=True)

    # -- building ----------------------------------------------------------------------------------

    def netns(self, ns: str) -> None:
        sh([IP, "netns", "add", ns])
        for key in ("all", "default"):
            nsx(ns, ["sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"])
        nsx(ns, [IP, "link", "set", "lo", "up"])

    def veth(self, ns_a: str | None, dev_a: str, ns_b: str, dev_b: str) -> None:
        """A veth pair, MTU 1500, offloads off; ns_a None = the root namespace."""
        where_a = ["netns", ns_a] if ns_a else []
        sh([IP, "link", "add", dev_a, *where_a, "mtu", "1500", "type", "veth",
            "peer", "name", dev_b, "netns", ns_b, "mtu", "1500"])
        for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
            run = (lambda c: nsx(ns, c)) if ns else sh
            run([ETHTOOL, "-K", dev, *OFFLOADS])
            run([IP, "link", "set", dev, "up"])

    def build_network(self) -> None:
        for ns in NAMESPACES:
            self.netns(ns)
        # host link: the root namespace reaches demo-dc's URLs directly
        self.created_host_link = True
        self.veth(None, HOST_DEV, NS_DC, DC_HOST_DEV)
        sh(["sysctl", "-qw", f"net.ipv6.conf.{HOST_DEV}.disable_ipv6=1"], check=False)
        sh([IP, "addr", "add", f"{HOST_IP}/30", "dev", HOST_DEV])
        nsx(NS_DC, [IP, "addr", "add", f"{DC_IP}/30", "dev", DC_HOST_DEV])
        # the PACS address, and the two sites behind it
        nsx(NS_DC, [IP, "addr", "add", f"{PACS_IP}/32", "dev", "lo"])
        self.veth(NS_DC, "dc-campus", NS_CAMPUS, "campus0")
        self.veth(NS_DC, "dc-remote", NS_REMOTE, "remote0")
        nsx(NS_DC, [IP, "addr", "add", f"{CAMPUS_GW}/24", "dev", "dc-campus"])
        nsx(NS_DC, [IP, "addr", "add", f"{REMOTE_GW}/24", "dev", "dc-remote"])
        nsx(NS_CAMPUS, [IP, "addr", "add", f"{CAMPUS_IP}/24", "dev", "campus0"])
        nsx(NS_REMOTE, [IP, "addr", "add", f"{REMOTE_IP}/24", "dev", "remote0"])
        nsx(NS_CAMPUS, [IP, "route", "add", "default", "via", CAMPUS_GW])
        nsx(NS_REMOTE, [IP, "route", "add", "default", "via", REMOTE_GW])

    def wait_listen(self, ns: str, port: int, timeout: float = 15) -> None:
        self.wait_for(f"a listener on port {port} in {ns}",
                      lambda: nsx(ns, [SS, "-Hltn", f"sport = :{port}"]).stdout.strip(), timeout, 0.1)

    def start_pacs(self, known: list[str]) -> None:
        self.ae_table = self.workdir / "pacs-ae-table.txt"
        self.ae_table.write_text("# PACS_MAIN's known calling AE titles (re-read on SIGHUP)\n" + "\n".join(known) + "\n")
        self.spawn("pacs", NS_DC, [sys.executable, Path(__file__).resolve(), "_pacs", "--ae-title", PACS_AE,
                                   "--host", PACS_IP, "--port", PACS_PORT, "--ae-table", self.ae_table])

    def start_probe(self) -> None:
        import yaml

        self.probe_cfg = self.workdir / "dicom-probe.yaml"
        self.events = self.workdir / "events.jsonl"
        cfg = {
            "ports": [PACS_PORT],
            "capture": {"interfaces": ["dc-campus", "dc-remote"], "promiscuous": True, "buffer_mib": 8},
            "workers": self.args.workers,
            "http": {"listen": f":{PROBE_PORT}"},
            "event_log": {"destination": str(self.events)},
            "sites": {"remote-hospital": [REMOTE_NET], "main-campus": [CAMPUS_NET]},
            "known_ae_titles": [PACS_AE, *LOCAL_AES],
        }
        self.probe_cfg.write_text(yaml.safe_dump(cfg, sort_keys=False))
        sh([sys.executable, "-m", "probe", "check-config", self.probe_cfg])
        self.spawn("probe", NS_DC, [sys.executable, "-m", "probe", "run", "--config", self.probe_cfg], cwd=REPO)

    def start_prometheus(self) -> None:
        import yaml

        text, self.rule_changes = demo_rules(self.window, self.window_text, self.for_, self.for_text)
        self.rules = self.workdir / "dicom-probe.demo.rules.yml"
        self.rules.write_text(text)
        sh([PROMTOOL, "check", "rules", self.rules])
        self.prom_cfg = self.workdir / "prometheus.yml"
        self.prom_cfg.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "2s", "evaluation_interval": "2s", "scrape_timeout": "1500ms"},
            "rule_files": [str(self.rules)],
            "scrape_configs": [{"job_name": "dicom-probe",
                                "static_configs": [{"targets": [f"127.0.0.1:{PROBE_PORT}"],
                                                    "labels": {"probe": "demo-dc"}}]}],
        }, sort_keys=False))
        sh([PROMTOOL, "check", "config", self.prom_cfg])
        self.spawn("prometheus", NS_DC, [PROMETHEUS, f"--config.file={self.prom_cfg}",
                                         f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                                         f"--web.listen-address=:{PROM_PORT}", "--log.level=warn"])

    # -- looking ----------------------------------------------------------------------------------

    def probe_counts(self) -> dict[str, dict]:
        status, body = http_get(f"{PROBE_URL}/metrics")
        if status != 200:
            raise DemoError(f"{PROBE_URL}/metrics answered {status}")
        return pair_counts(body)

    def seed_alerts(self) -> dict[str, dict]:
        """calling AE -> the seed alert (pending or firing), from Prometheus's /api/v1/alerts."""
        data = prom_api("alerts") or {}
        return {a["labels"].get("calling_ae"): a for a in data.get("alerts", [])
                if a["labels"].get("alertname") == SEED_ALERT}

    def window_rejects(self) -> dict[str, float]:
        res = prom_api("query", query=f'sum by (calling_ae) ({INCREASE_RECORD}{{reason="{REJECT_REASON}"}})')
        return {r["metric"].get("calling_ae"): float(r["value"][1]) for r in (res or {}).get("result", [])}

    def counts_line(self, counts: dict | None = None) -> str:
        counts = self.probe_counts() if counts is None else counts
        parts = []
        for ae in (*LOCAL_AES, *REMOTE_AES):
            c = counts.get(ae)
            if c:
                parts.append(f"{ae} {c['requests']:.0f}/{c['accepts']:.0f}/{c['rejects']:.0f}")
        return "probe (requests/accepted/rejected): " + ("  ".join(parts) or "nothing yet")

    def tick_line(self) -> None:
        alerts = self.seed_alerts()
        win = self.window_rejects()
        state = ", ".join(f"{ae} {alerts[ae]['state']}" for ae in REMOTE_AES if ae in alerts) or "inactive"
        wtxt = ", ".join(f"{ae} {win[ae]:.1f}" for ae in REMOTE_AES if ae in win)
        self.say(self.counts_line())
        self.say(f"    {SEED_ALERT}: {state}" + (f"; rejects in the {self.window} window: {wtxt}" if wtxt else ""))
        self.new_events()
        self.pacs_events()

    def new_events(self) -> None:
        """New-AE-title events from the probe's event log."""
        try:
            lines = self.events.read_text().splitlines()
        except OSError:
            return
        for line in lines[self.events_seen:]:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "new-ae-title" and e.get("role") == "calling":
                known = "in known_ae_titles" if e.get("known") else "NOT in known_ae_titles"
                self.say(f"    probe event log: new calling AE title {e['ae_title']} ({known})")
        self.events_seen = len(lines)

    def pacs_events(self, quiet: bool = False) -> list[dict]:
        try:
            with open(self.workdir / "pacs.log") as f:
                f.seek(self.pacs_log_pos)
                chunk = f.read()
                self.pacs_log_pos = f.tell()
        except OSError:
            return []
        out = []
        for line in chunk.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        if not quiet:
            for e in out:
                if e.get("event") == "reloaded":
                    self.say(f"    PACS: AE table reloaded: {', '.join(e['known'])}")
        return out

    def pacs_totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        try:
            lines = (self.workdir / "pacs.log").read_text().splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") in ("accepted", "rejected"):
                d = out.setdefault(e["calling_ae"], {"accepted": 0, "rejected": 0, "rj": None})
                d[e["event"]] += 1
                if e["event"] == "rejected":
                    d["rj"] = e.get("rj")
        return out

    # -- the story ----------------------------------------------------------------------------------

    def modality(self, ae: str, ns: str, image: str, interval: float, delay: float = 0.0) -> Modality:
        m = Modality(self, ae, ns, image, interval, delay)
        self.modalities.append(m)
        m.start()
        return m

    def story(self) -> None:
        args = self.args
        self.take_lock()
        self.head("dicom-probe demo lab: 'the new remote hospital cannot send to the PACS'")
        self.say(f"work directory {self.workdir}")
        self.say(f"mode: {'fast' if self.fast else 'normal'}; alert window {self.window}, for {self.for_}")
        self.remove_stale()

        self.head("1. Building the network (namespaces demo-dc, demo-campus, demo-remote)")
        self.build_network()
        self.say(f"demo-dc      data centre: PACS_MAIN {PACS_IP}:{PACS_PORT}, probe, Prometheus; "
                 f"host link {DC_HOST_DEV} {DC_IP} <-> {HOST_DEV} {HOST_IP} (root namespace)")
        self.say(f"demo-campus  main campus {CAMPUS_NET}: CT_LOCAL, MR_LOCAL at {CAMPUS_IP}")
        self.say(f"demo-remote  remote hospital {REMOTE_NET}: CT_REMOTE1, CT_REMOTE2 at {REMOTE_IP} (not live yet)")
        self.say("veth pairs: MTU 1500, offloads off; the probe captures on dc-campus and dc-remote")

        images = {
            "CT": make_image(self.workdir / "ct.dcm", CT_IMAGE_STORAGE, "CT", "ct"),
            "MR": make_image(self.workdir / "mr.dcm", MR_IMAGE_STORAGE, "MR", "mr"),
        }

        self.head("2. Starting PACS_MAIN, dicom-probe and Prometheus in demo-dc")
        self.start_prometheus()
        self.start_pacs([*LOCAL_AES])
        self.start_probe()
        self.say(f"PACS_MAIN: pynetdicom SCP, known calling AEs {', '.join(LOCAL_AES)} "
                 f"(others: A-ASSOCIATE-RJ 1/1/3 {REJECT_REASON})")
        self.say(f"Prometheus rules: generated copy {self.rules.name}, shortened: " + "; ".join(self.rule_changes))
        self.wait_listen(NS_DC, PACS_PORT)
        self.mark("pacs_ready")

        def probe_ready():
            status, body = http_get(f"{PROBE_URL}/healthz")
            try:
                h = json.loads(body)
            except ValueError:
                return False
            return status == 200 and h.get("workers_alive") == args.workers and \
                h.get("capture_handles_open", 0) >= args.workers

        self.wait_for("the probe to capture (/healthz 200, workers alive)", probe_ready, 30)
        self.say(f"probe ready: {args.workers} worker(s) capturing, pid {self.procs['probe'].pid}")
        self.mark("probe_ready")
        self.wait_for("Prometheus to be ready", lambda: http_get(f"{PROM_URL}/-/ready")[0] == 200, 30)

        def scraped():
            res = (prom_api("query", query='up{job="dicom-probe"}') or {}).get("result", [])
            return any(r["value"][1] == "1" for r in res)

        self.wait_for("Prometheus's first successful scrape of the probe", scraped, 30)
        self.mark("prometheus_scraping")
        self.say("Prometheus scrapes the probe every 2 s")

        self.head("Where to look (from this shell or a browser on this machine)")
        q = urllib.parse.quote(f'ALERTS{{alertname="{SEED_ALERT}"}}')
        # Debian's prometheus package ships only the classic web UI (/classic/alerts; /alerts is 404)
        self.alerts_url = next((f"{PROM_URL}{path}" for path in ("/alerts", "/classic/alerts")
                                if http_get(f"{PROM_URL}{path}")[0] == 200), f"{PROM_URL}/alerts")
        print(f"""  status page       {PROBE_URL}/
  probe metrics     curl -s {PROBE_URL}/metrics | grep '^dicom_association_rejects_total'
  probe health      curl -s {PROBE_URL}/healthz
  Prometheus alerts {self.alerts_url}
  alerts API        curl -s {PROM_URL}/api/v1/alerts
  alert query       curl -s '{PROM_URL}/api/v1/query?query={q}'
  inside the lab    ip netns exec {NS_DC} curl -s http://127.0.0.1:{PROBE_PORT}/healthz
  (the root namespace reaches {DC_IP} over the {HOST_DEV} veth; add --keep to look after the story)""",
              flush=True)

        self.head("3. A normal day: the main campus sends images")
        self.modality("CT_LOCAL", NS_CAMPUS, images["CT"], 2.0)
        self.modality("MR_LOCAL", NS_CAMPUS, images["MR"], 3.0, delay=0.5)
        self.mark("campus_start")
        self.wait_for("campus associations",
                      lambda: all(self.probe_counts().get(ae, {}).get("accepts", 0) >= 1 for ae in LOCAL_AES), 30)
        end = time.monotonic() + self.normal_seconds
        while time.monotonic() < end:
            time.sleep(min(self.tick, max(0.0, end - time.monotonic())))
            self.say(self.counts_line())
        self.new_events()

        self.head("4. The remote hospital goes live: CT_REMOTE1 and CT_REMOTE2 start sending")
        self.say("their AE titles were never registered on PACS_MAIN; the scanners retry (every 2 s and 3 s)")
        self.modality("CT_REMOTE1", NS_REMOTE, images["CT"], 2.0)
        self.modality("CT_REMOTE2", NS_REMOTE, images["CT"], 3.0, delay=1.0)
        t_live = self.mark("remote_live")
        self.wait_for("the probe to count the first reject",
                      lambda: self.probe_counts().get("CT_REMOTE1", {}).get("rejects", 0) >= 1, 30)
        self.say(f"probe: first A-ASSOCIATE-RJ to CT_REMOTE1 counted ({self.now() - t_live:.1f} s after go-live)")
        self.mark("first_reject")

        def pending():
            return "CT_REMOTE1" in self.seed_alerts()

        self.wait_for(f"{SEED_ALERT} to become pending", pending, 60, 0.5, self.tick_line)
        self.say(f"ALERT PENDING {SEED_ALERT} calling_ae=CT_REMOTE1 ({self.now() - t_live:.1f} s after go-live; "
                 f"firing after for: {self.for_})")
        self.mark("alert_pending")

        def firing():
            a = self.seed_alerts().get("CT_REMOTE1")
            return a if a and a["state"] == "firing" else None

        alert = self.wait_for(f"{SEED_ALERT} to fire", firing, 60, 0.5, self.tick_line)
        t_fire = self.mark("alert_firing")
        labels = alert["labels"]
        lab_txt = ", ".join(f'{k}="{labels[k]}"' for k in
                            ("alertname", "calling_ae", "called_ae", "site", "reason", "severity") if k in labels)
        print(flush=True)
        self.say(f"ALERT FIRING {SEED_ALERT} {{{lab_txt}}}")
        self.say(f"    summary: {alert['annotations'].get('summary', '')}")
        self.say(f"    description: {' '.join(alert['annotations'].get('description', '').split())}")
        self.say(f"    ({t_fire:.1f} s after the start, {t_fire - t_live:.1f} s after the remote site went live)")
        for ae, a in sorted(self.seed_alerts().items()):
            if ae != "CT_REMOTE1":
                self.say(f"    also {a['state']}: {a['annotations'].get('summary', '')}")
        self.say(self.counts_line())
        cmd = f"curl -s {PROBE_URL}/metrics | grep '^dicom_association_rejects_total'"
        print(f"\n  $ {cmd}", flush=True)
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=15).stdout
        print("".join(f"  {line}\n" for line in out.splitlines()), end="", flush=True)
        status, page = http_get(f"{PROBE_URL}/")
        m = re.search(r"<h2>(\d+ AE pairs? failing)</h2>", page)
        print(f"  status page {PROBE_URL}/ : {m.group(1) if m else 'HTTP ' + str(status)}", flush=True)
        pt = self.pacs_totals()
        for ae in REMOTE_AES:
            if ae in pt and pt[ae]["rj"]:
                self.say(f"PACS_MAIN's own log: {ae} rejected {pt[ae]['rejected']} times, "
                         f"RJ result/source/reason {pt[ae]['rj']}")

        self.head("5. The fix: register CT_REMOTE1 and CT_REMOTE2 on PACS_MAIN and reload it")
        before = self.probe_counts()
        with open(self.ae_table, "a") as f:
            f.write("\n".join(REMOTE_AES) + "\n")
        os.kill(self.procs["pacs"].pid, signal.SIGHUP)
        t_fix = self.mark("fix_applied")
        self.say(f"added {', '.join(REMOTE_AES)} to {self.ae_table.name}; kill -HUP {self.procs['pacs'].pid} (PACS_MAIN)")
        self.wait_for("PACS_MAIN to reload its AE table",
                      lambda: any(e.get("event") == "reloaded" for e in self.pacs_events(quiet=True)) or None, 10, 0.1)
        self.say("PACS: AE table reloaded")

        def accepted():
            c = self.probe_counts()
            return all(c.get(ae, {}).get("accepts", 0) >= 1 for ae in REMOTE_AES) and c

        after = self.wait_for("the remote modalities to be accepted", accepted, 30, 0.3, self.tick_line)
        self.mark("remote_accepted")
        self.say(f"probe: CT_REMOTE1 and CT_REMOTE2 accepted ({self.now() - t_fix:.1f} s after the fix)")
        rej_at_accept = {ae: after[ae]["rejects"] for ae in REMOTE_AES}
        time.sleep(self.tick)
        now = self.probe_counts()
        for ae in REMOTE_AES:
            b, n = before.get(ae, {}), now.get(ae, {})
            self.say(f"    {ae}: rejects {rej_at_accept[ae]:.0f} -> {n.get('rejects', 0):.0f} (stopped), "
                     f"accepts {b.get('accepts', 0):.0f} -> {n.get('accepts', 0):.0f} (rising)")

        self.head(f"6. Waiting for the alert to resolve (no more rejects in the {self.window} window)")

        def resolved():
            alerts = self.seed_alerts()
            return not any(ae in alerts for ae in REMOTE_AES)

        self.wait_for(f"{SEED_ALERT} to resolve", resolved, 90, 0.5, self.tick_line)
        t_res = self.mark("alert_resolved")
        self.say(f"ALERT RESOLVED {SEED_ALERT} calling_ae=CT_REMOTE1 site=remote-hospital "
                 f"({t_res - t_fix:.1f} s after the fix)")
        self.say(f"    Prometheus /api/v1/alerts lists no {SEED_ALERT} any more; "
                 f"ALERTS{{alertname=\"{SEED_ALERT}\"}} is empty")

        self.head("7. Summary")
        for m in self.modalities:
            m.stop.set()
        for m in self.modalities:
            m.join(40)
        time.sleep(1.5)  # one more probe snapshot after the last association
        final = self.probe_counts()
        pt = self.pacs_totals()
        print(f"  {'calling AE':<11} {'site':<16} {'probe: requests':>15} {'accepted':>8} {'rejected':>8}"
              f"   {'modality: attempts':>18} {'ok':>4} {'rj':>4}   {'PACS: acc':>9} {'rej':>4}")
        agree = True
        for m in self.modalities:
            c = final.get(m.ae, {"requests": 0, "accepts": 0, "rejects": 0, "site": "-"})
            p = pt.get(m.ae, {"accepted": 0, "rejected": 0})
            same = (c["requests"], c["accepts"], c["rejects"]) == (m.attempts, m.accepted, m.rejected) \
                == (m.attempts, p["accepted"], p["rejected"])
            agree &= same and m.failed == 0
            print(f"  {m.ae:<11} {c['site']:<16} {c['requests']:>15.0f} {c['accepts']:>8.0f} {c['rejects']:>8.0f}"
                  f"   {m.attempts:>18} {m.accepted:>4} {m.rejected:>4}   {p['accepted']:>9} {p['rejected']:>4}"
                  + ("" if same else "   <- differs") + (f"   ({m.failed} failed: {m.last_error})" if m.failed else ""))
        print(f"  probe, modalities and PACS agree: {'yes' if agree else 'NO'}", flush=True)
        tl = self.timeline
        print(f"""  timeline (seconds since start):
    probe capturing {tl['probe_ready']}, Prometheus scraping {tl['prometheus_scraping']}, campus traffic {tl['campus_start']}
    remote site live {tl['remote_live']}, first reject counted {tl['first_reject']}
    alert pending {tl['alert_pending']}, FIRING {tl['alert_firing']} (+{tl['alert_firing'] - tl['remote_live']:.1f} s after go-live)
    fix applied {tl['fix_applied']}, remote accepted {tl['remote_accepted']}, RESOLVED {tl['alert_resolved']} (+{tl['alert_resolved'] - tl['fix_applied']:.1f} s after the fix)
  demo rules: {'; '.join(self.rule_changes)}""", flush=True)
        result = {"ok": True, "fast": self.fast, "timeline": tl, "agree": agree, "workdir": str(self.workdir),
                  "alert": {"labels": labels, "summary": alert["annotations"].get("summary")},
                  "counts": {ae: {k: final.get(ae, {}).get(k, 0) for k in ("requests", "accepts", "rejects")}
                             for ae in (*LOCAL_AES, *REMOTE_AES)}}
        print("DEMO RESULT " + json.dumps(result), flush=True)
        self.completed = True

        if args.keep:
            self.head("--keep: the lab keeps running (traffic flowing); Ctrl-C to stop and clean up")
            for m in list(self.modalities):
                self.modalities.remove(m)
                self.modality(m.ae, m.ns, m.image, m.interval)
            self.say(f"status page {PROBE_URL}/   Prometheus {self.alerts_url}")
            while True:
                for name in self.procs:
                    self.alive(name)
                time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_pacs"]:
        return pacs_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Reproduces the founding incident live; see the module docstring "
                                       "and README.md, 'Demo'.")
    p.add_argument("--fast", action="store_true", help="shorter pauses and alert windows (tests)")
    p.add_argument("--keep", action="store_true", help="after the story, keep the lab running until Ctrl-C")
    p.add_argument("--workers", type=int, default=2, help="probe capture workers (default 2)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the logs and generated configs")
    args = p.parse_args(argv)
    why = why_not()
    if why:
        print(f"demo lab cannot run: {why}", file=sys.stderr)
        return 2

    closing = threading.Event()  # set by cleanup: signals then only print a note

    def on_signal(signum, _frame):
        if closing.is_set():
            print("  (cleaning up, please wait)", flush=True)
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    lab = Lab(args, closing)
    atexit.register(lab.cleanup)
    code = 0
    try:
        lab.story()
    except KeyboardInterrupt:  # after --keep's story, Ctrl-C is the normal end
        print("\ninterrupted (Ctrl-C)", flush=True)
        code = 0 if lab.completed else 130
    except Interrupted as e:
        print(f"\ninterrupted ({e})", flush=True)
        code = 0 if lab.completed else 128 + e.signum
    except DemoError as e:
        lab.failed = True
        print(f"\nDEMO FAILED: {e}", flush=True)
        code = 1
    except Exception:  # noqa: BLE001 - report, then clean up
        lab.failed = True
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        lab.cleanup()
    if code == 0 and lab.failed:  # e.g. something could not be removed
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
