"""`dicom-probe run` capturing LIVE, end to end, against real DICOM peers in network namespaces.

Topology (all private, see tests/netlab.py; root and `ip netns` required, else skipped)::

    dpt-pacs-<pid>: vpacs 198.18.10.1/24, 198.18.10.11/24
        DCMTK storescp PACS_MAIN :11112 (accepts anyone)
        pynetdicom SCP PACS_MAIN :104 (require_calling_aet=[CT_LOCAL]: others get 1/1/3)
        dicom-probe run: capture.interfaces [vpacs] (AF_PACKET fanout), /metrics on its 127.0.0.1
      |  veth, MTU 1500, offloads off
    dpt-mod-<pid>: vmod 198.18.10.2/24, 198.18.10.3/24
        DCMTK echoscu / storescu

The known AE CT_LOCAL talks to 198.18.10.11 and leaves from 198.18.10.3 (a source route in dpt-mod),
so its series carry site "other"; CT_REMOTE1 leaves from 198.18.10.2, the configured site
"remote-hospital", and is rejected (calling AE title not recognized). The truth is what the DCMTK
clients themselves report (exit status and their -v output).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import netlab as N
from netlab import ECHOSCU, STORESCP, STORESCU, Lab, LabError, http_get, parse_metrics, select, value

_WHY = N.unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

REPO = Path(__file__).resolve().parent.parent
CAPTURE_DEV = "vpacs"
OTHER_DEV = "vpacs2"
PACS_IP, PACS_LOCAL_IP = "198.18.10.1", "198.18.10.11"  # rejecting pynetdicom SCP / storescp
REMOTE_IP, LOCAL_IP = "198.18.10.2", "198.18.10.3"  # CT_REMOTE1's source / CT_LOCAL's source
STORE_PORT, REJECT_PORT = 11112, 104
KNOWN, UNKNOWN, CALLED = "CT_LOCAL", "CT_REMOTE1", "PACS_MAIN"
LOCAL = {"calling_ae": KNOWN, "called_ae": CALLED, "site": "other"}
REMOTE = {"calling_ae": UNKNOWN, "called_ae": CALLED, "site": "remote-hospital"}
REJECT_LABELS = {"result": "rejected-permanent", "source": "service-user", "reason": "calling-ae-title-not-recognized"}

SNAPSHOT_SETTLE = 1.3  # > the workers' snapshot interval (1 s): one more snapshot after the counts match

# The per-pair families that must equal the truth exactly (every non-zero series of them).
PAIR_FAMILIES = (
    "dicom_association_requests_total", "dicom_association_accepts_total", "dicom_association_rejects_total",
    "dicom_association_aborts_total", "dicom_association_releases_total",
    "dicom_association_closed_without_release_total", "dicom_association_no_response_total",
    "dicom_dimse_requests_total", "dicom_dimse_responses_total", "dicom_dimse_unanswered_total",
    "dicom_dimse_unmatched_responses_total",
)
# What must not depend on the worker count: the association and DIMSE series (histogram counts only).
AGREE_FAMILIES = PAIR_FAMILIES + (
    "dicom_presentation_contexts_total", "dicom_pdata_bytes_total", "dicom_association_setup_seconds_count",
    "dicom_dimse_response_seconds_count", "dicom_dimse_suboperations_total",
)

RESULTS: dict = {}  # workers -> what test_live_counts_equal_the_peers_truth measured, for the cross-run tests
RELOAD: dict = {}  # counters before/after the SIGHUP of test_live_sighup_reloads_and_keeps_counters


# -- the lab ---------------------------------------------------------------------------------------


@dataclass
class Net:
    lab: Lab
    pacs: str  # namespace names
    mod: str
    tmp: Path
    files: list[str]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    lab = Lab()
    try:
        try:
            pacs = lab.netns("pacs")  # dpt-pacs-<pid>
            mod = lab.netns("mod")
        except LabError as e:
            pytest.skip(f"cannot create network namespaces: {e}")
        lab.veth(pacs, CAPTURE_DEV, mod, "vmod")
        lab.veth(pacs, OTHER_DEV, mod, "vmod2")  # a second, quiet capture interface
        lab.addr(pacs, CAPTURE_DEV, f"{PACS_IP}/24")
        lab.addr(pacs, CAPTURE_DEV, f"{PACS_LOCAL_IP}/24")
        lab.addr(mod, "vmod", f"{REMOTE_IP}/24")
        lab.addr(mod, "vmod", f"{LOCAL_IP}/24")
        lab.ex(mod, [N.IP, "route", "add", f"{PACS_LOCAL_IP}/32", "dev", "vmod", "src", LOCAL_IP])
        (tmp / "in").mkdir()
        lab.spawn(pacs, [STORESCP, "-aet", CALLED, "-od", tmp / "in", STORE_PORT],
                  stdout=tmp / "storescp.log", stderr=tmp / "storescp.err")
        spec = {"ae_title": CALLED, "port": REJECT_PORT, "require_calling_aet": [KNOWN]}
        pyscp = lab.spawn(pacs, [sys.executable, Path(N.__file__).resolve(), "pyscp", json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=tmp / "pyscp.err", stdin=True)
        line = pyscp.stdout.readline()
        assert line.strip() == "READY", f"pynetdicom SCP did not start: {line!r} {(tmp / 'pyscp.err').read_text()}"
        lab.wait_listen(pacs, REJECT_PORT)
        lab.wait_listen(pacs, STORE_PORT)
        files = [N.make_ct(tmp / f"ct{i}.dcm", f"ct{i}") for i in range(3)]
        yield Net(lab, pacs, mod, tmp, files)
    finally:
        ours = list(lab.namespaces)
        lab.cleanup()
        left = set(ours) & {line.split()[0] for line in N.sh([N.IP, "netns", "list"]).stdout.splitlines() if line}
        assert not left, f"namespaces not removed: {left}"


# -- traffic and its truth -------------------------------------------------------------------------


@dataclass
class Truth:
    """What the DCMTK clients reported."""

    echo_associations: int = 0  # accepted and released, CT_LOCAL
    store_associations: int = 0
    echoes: int = 0  # C-ECHO responses with status Success
    stores: int = 0  # C-STORE responses with status Success
    rejects: int = 0  # CT_REMOTE1: 'Association Rejected' 1/1/3
    problems: list = field(default_factory=list)

    @property
    def local_associations(self) -> int:
        return self.echo_associations + self.store_associations

    @property
    def associations(self) -> int:
        return self.local_associations + self.rejects


def _echo(net: Net, repeat: int) -> tuple[int, str]:
    return net.lab.run(net.mod, [ECHOSCU, "-v", "--repeat", repeat, "-aet", KNOWN, "-aec", CALLED,
                                 PACS_LOCAL_IP, STORE_PORT])


def _store(net: Net, files) -> tuple[int, str]:
    return net.lab.run(net.mod, [STORESCU, "-v", "-aet", KNOWN, "-aec", CALLED, PACS_LOCAL_IP, STORE_PORT, *files])


def _reject(net: Net) -> tuple[int, str]:
    return net.lab.run(net.mod, [ECHOSCU, "-v", "-aet", UNKNOWN, "-aec", CALLED, PACS_IP, REJECT_PORT])


def traffic(net: Net, echo_assocs: int, echoes_each: int, store_batches: list[int], rejects: int) -> Truth:
    """Run the clients (the known AE's associations one after another, the rejected ones 4 at a time
    alongside) and return what they reported. Fails if a peer did not do what was intended."""
    truth = Truth()

    def local():
        for _ in range(echo_assocs):
            rc, out = _echo(net, echoes_each)
            ok = rc == 0 and "Association Accepted" in out and "Releasing Association" in out
            truth.echo_associations += ok
            truth.echoes += out.count("Received Echo Response (Success)")
            if not ok:
                truth.problems.append(f"echoscu rc={rc}: {out}")
        for n in store_batches:
            rc, out = _store(net, net.files[:n])
            ok = rc == 0 and "Association Accepted" in out and "Releasing Association" in out
            truth.store_associations += ok
            truth.stores += out.count("Received Store Response (Success)")
            if not ok:
                truth.problems.append(f"storescu rc={rc}: {out}")

    with ThreadPoolExecutor(5) as pool:
        fut = pool.submit(local)
        for rc, out in pool.map(lambda _: _reject(net), range(rejects)):
            if rc != 0 and "Association Rejected" in out and "Calling AE Title Not Recognized" in out \
                    and "Rejected Permanent, Source: Service User" in out:
                truth.rejects += 1
            else:
                truth.problems.append(f"echoscu {UNKNOWN} rc={rc}: {out}")
        fut.result()
    intended = (echo_assocs, echo_assocs * echoes_each, len(store_batches), sum(store_batches), rejects)
    got = (truth.echo_associations, truth.echoes, truth.store_associations, truth.stores, truth.rejects)
    assert got == intended and not truth.problems, f"the peers did not do what was intended: {got} != {intended}\n" \
                                                   + "\n".join(truth.problems)
    return truth


def expected_series(t: Truth) -> dict:
    """The non-zero per-pair series the probe must show for the traffic ``t`` (from a fresh start)."""
    ok = {"status_class": "success", "status": "0000"}
    exp = [
        ("dicom_association_requests_total", LOCAL, t.local_associations),
        ("dicom_association_accepts_total", LOCAL, t.local_associations),
        ("dicom_association_releases_total", LOCAL, t.local_associations),
        ("dicom_association_requests_total", REMOTE, t.rejects),
        ("dicom_association_rejects_total", {**REMOTE, **REJECT_LABELS}, t.rejects),
        ("dicom_dimse_requests_total", {**LOCAL, "command": "C-ECHO"}, t.echoes),
        ("dicom_dimse_requests_total", {**LOCAL, "command": "C-STORE"}, t.stores),
        ("dicom_dimse_responses_total", {**LOCAL, "command": "C-ECHO", **ok}, t.echoes),
        ("dicom_dimse_responses_total", {**LOCAL, "command": "C-STORE", **ok}, t.stores),
    ]
    return {(name, frozenset(labels.items())): float(v) for name, labels, v in exp if v}


def pair_series(samples: dict, families=PAIR_FAMILIES) -> dict:
    return {k: v for k, v in samples.items() if k[0] in families and v}


def counters(samples: dict, text: str) -> dict:
    """The counter samples (histogram buckets/counts included; gauges left out)."""
    kinds = N.counter_types(text)
    out = {}
    for (name, labels), v in samples.items():
        for fam, kind in kinds.items():
            if kind == "counter" and name in (fam, fam + "_total") or \
                    kind == "histogram" and name in (fam + "_bucket", fam + "_count", fam + "_sum"):
                out[(name, labels)] = v
    return out


def decreased(before: dict, after: dict) -> list[str]:
    """Counter samples lower (or gone) after than before."""
    return [f"{name}{dict(labels)}: {v} -> {after.get((name, labels), 'absent')}"
            for (name, labels), v in sorted(before.items(), key=str) if after.get((name, labels), -1) < v]


def delta(before: dict, after: dict) -> dict:
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)}


# -- the probe -------------------------------------------------------------------------------------


class Probe:
    """`dicom-probe run` in the pacs namespace, capturing on vpacs (or ``interface``)."""

    def __init__(self, net: Net, name: str, workers: int, pid_namespace: bool = False, interface: str = CAPTURE_DEV,
                 **cfg):
        """``pid_namespace``: run it as PID 1 of a PID namespace of its own, as in a container that
        shares the host's network (``unshare --pid --fork --mount-proc --kill-child``)."""
        self.net = net
        self.pid_namespace = pid_namespace
        self.interface = interface
        self.dir = net.tmp / name
        self.dir.mkdir()
        self.workers = workers
        self.port = N.free_port()
        self.config = self.dir / "probe.yaml"
        self.events = self.dir / "events.jsonl"
        self.stderr = self.dir / "probe.err"
        self.write_config(**cfg)
        self.proc = None
        self.worker_pids: set[int] = set()

    def write_config(self, known=(KNOWN, CALLED), aliases=None, drop_pure_acks=False) -> None:
        cfg = {
            "ports": [REJECT_PORT, STORE_PORT],
            "capture": {"interfaces": [self.interface], "promiscuous": True, "buffer_mib": 16,
                        "drop_pure_acks": drop_pure_acks},
            "workers": self.workers,
            "event_log": {"destination": str(self.events)},
            "sites": {"remote-hospital": [f"{REMOTE_IP}/32"]},
            "known_ae_titles": list(known),
            "labels": {"ae_aliases": dict(aliases or {})},
        }
        self.config.write_text(yaml.safe_dump(cfg))

    def start(self) -> Probe:
        cmd = [sys.executable, "-m", "probe", "run", "--config", self.config, "--listen", f"127.0.0.1:{self.port}"]
        if self.pid_namespace:
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *cmd]
        self.proc = self.net.lab.spawn(self.net.pacs, cmd, stdout=self.dir / "probe.out", stderr=self.stderr,
                                       cwd=REPO)
        return self

    @property
    def pid(self) -> int:
        """The probe's (supervisor's) PID as seen from here."""
        if not self.pid_namespace:
            return self.proc.pid
        end = time.monotonic() + 5
        while time.monotonic() < end:
            kids = N.children(self.proc.pid)  # unshare's child
            if kids:
                return kids[0]
            time.sleep(0.02)
        raise AssertionError(f"unshare started no probe:\n{self.log()}")

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def health(self) -> tuple[int, dict]:
        status, body = http_get(self.net.pacs, self.port, "/healthz")
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"body": body}

    def scrape(self) -> tuple[dict, str]:
        status, body = http_get(self.net.pacs, self.port, "/metrics")
        assert status == 200, f"/metrics answered {status}: {body[:300]}\n{self.log()}"
        return parse_metrics(body), body

    def children(self) -> list[int]:
        kids = N.children(self.pid)
        self.worker_pids.update(kids)
        return kids

    def wait_ready(self, timeout: float = 15.0) -> dict:
        """/healthz 200 with every worker alive and its capture handle open (reported in a snapshot)."""
        end = time.monotonic() + timeout
        status, h = 0, {}
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"probe exited with {self.proc.returncode}:\n{self.log()}"
            status, h = self.health()
            if status == 200 and h.get("workers_alive") == self.workers \
                    and h.get("capture_handles_open", 0) >= self.workers:
                self.children()
                return h
            time.sleep(0.1)
        raise AssertionError(f"probe not ready in {timeout} s: /healthz {status} {h}\n{self.log()}")

    def wait_series(self, expected: dict, base: dict | None = None, timeout: float = 12.0) -> tuple[dict, str]:
        """Scrape until the per-pair series (minus ``base``) equal ``expected``, then once more a
        snapshot interval later (so late extras would show). Returns the last scrape."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            samples, text = self.scrape()
            got = pair_series(samples)
            if (delta(base, got) if base is not None else got) == expected:
                break
            time.sleep(0.25)
        time.sleep(SNAPSHOT_SETTLE)
        return self.scrape()

    def sigterm(self) -> float:
        self.children()
        os.kill(self.pid, signal.SIGTERM)
        return time.monotonic()

    def wait_exit(self, since: float, timeout: float = 10.0) -> tuple[int | None, float]:
        try:
            rc = self.proc.wait(max(0.0, since + timeout - time.monotonic()))
        except Exception:  # noqa: BLE001 - reported as a failure by the caller
            rc = None
        return rc, time.monotonic() - since

    def leftover_workers(self) -> list[int]:
        """Worker PIDs still running (not zombies) after the probe exited."""
        alive = []
        for pid in self.worker_pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        alive.append(pid)
            except OSError:
                pass
        return alive

    def kill_all(self) -> None:
        """Finalizer: whatever a failed test left running."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.children()
            except AssertionError:
                pass
            self.proc.kill()  # with pid_namespace: unshare --kill-child takes the probe and its workers along
            self.proc.wait(5)
        for pid in self.leftover_workers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def event_log(self) -> list[dict]:
        return [json.loads(line) for line in self.events.read_text().splitlines()]


@pytest.fixture
def probe_factory(net, request):
    made = []

    def make(workers: int, **cfg) -> Probe:
        p = Probe(net, f"{request.node.name.replace('[', '-').rstrip(']')}-{len(made)}", workers, **cfg)
        made.append(p)
        return p

    yield make
    for p in made:
        p.kill_all()


def assert_exits_cleanly(*probes: Probe) -> None:
    """SIGTERM (to all at once): each exits 0 within 10 s, with its workers, after its last log line."""
    sent = [p.sigterm() for p in probes]
    for probe, t0 in zip(probes, sent):
        rc, took = probe.wait_exit(t0)
        assert rc == 0, f"SIGTERM: exit status {rc} after {took:.1f} s\n{probe.log()}"
        assert took < 10
        assert not probe.leftover_workers(), f"workers outlived the probe: {probe.leftover_workers()}"
        assert "stopped:" in probe.log().splitlines()[-1]


def check_event_log(records: list[dict], truth: Truth, titles: set) -> None:
    """One record per association with the right outcome, and the new-AE-title events."""
    assocs = [r for r in records if "event" not in r]
    events = [r for r in records if r.get("event") == "new-ae-title"]
    assert len(assocs) == truth.associations, f"{len(assocs)} association records for {truth.associations}"
    local = [r for r in assocs if r["calling_ae"] == KNOWN]
    remote = [r for r in assocs if r["calling_ae"] == UNKNOWN]
    assert len(local) == truth.local_associations and len(remote) == truth.rejects
    for r in local:
        assert (r["outcome"], r["called_ae"], r["site"], r["rq_seen"]) == ("released", CALLED, "other", True), r
        assert r["client"].startswith(LOCAL_IP + ":") and r["server"] == f"{PACS_LOCAL_IP}:{STORE_PORT}", r
    for r in remote:
        assert (r["outcome"], r["called_ae"], r["site"], r["rq_seen"]) == \
            ("rejected", CALLED, "remote-hospital", True), r
        assert r["reject"] == REJECT_LABELS, r
        assert r["client"].startswith(REMOTE_IP + ":") and r["server"] == f"{PACS_IP}:{REJECT_PORT}", r
    ops = {}
    for r in local:
        for cmd, o in r.get("operations", {}).items():
            ops[cmd] = ops.get(cmd, 0) + o["requests"]
    assert ops == {k: v for k, v in (("C-ECHO", truth.echoes), ("C-STORE", truth.stores)) if v}
    assert {(e["ae_title"], e["role"], e["known"]) for e in events} == titles
    assert len(events) == len(titles), events


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_live_counts_equal_the_peers_truth(net, probe_factory, workers):
    probe = probe_factory(workers).start()
    health = probe.wait_ready()
    assert len(probe.children()) == workers
    assert health["capture_handles_open"] >= workers and health["errors"] == []

    t0 = time.time()
    truth = traffic(net, echo_assocs=5, echoes_each=2, store_batches=[2, 1], rejects=20)
    expected = expected_series(truth)
    samples, text = probe.wait_series(expected)
    t1 = time.time()

    assert pair_series(samples) == expected
    assert value(samples, "dicom_probe_kernel_drops_total") == 0
    assert value(samples, "dicom_probe_workers_alive") == workers
    assert value(samples, "dicom_probe_worker_restarts_total") == 0
    assert value(samples, "dicom_probe_packets_total", interface=CAPTURE_DEV) > 0
    assert value(samples, "dicom_associations_active") == 0
    status, health = probe.health()
    assert status == 200 and health["capture_handles_open"] >= workers and health["workers_alive"] == workers

    # sites and known AE titles
    first = select(samples, "dicom_ae_title_first_seen_timestamp_seconds", ae_title=UNKNOWN, role="calling")
    assert list(map(dict, first)) == [{"ae_title": UNKNOWN, "role": "calling", "known": "false"}]
    assert t0 - 1 <= next(iter(first.values())) <= t1 + 1
    assert select(samples, "dicom_ae_title_first_seen_timestamp_seconds", ae_title=KNOWN, role="calling", known="true")
    assert value(samples, "dicom_probe_new_ae_titles_total", role="calling", known="false") == 1
    assert value(samples, "dicom_probe_new_ae_titles_total", role="calling", known="true") == 1
    assert value(samples, "dicom_probe_new_ae_titles_total", role="called", known="true") == 1

    RESULTS[workers] = {"series": pair_series(samples, AGREE_FAMILIES), "text": text, "truth": truth}

    assert_exits_cleanly(probe)
    assert f"{truth.associations} associations requested, {truth.rejects} rejected" in probe.log()
    records = probe.event_log()
    check_event_log(records, truth, {(KNOWN, "calling", True), (CALLED, "called", True), (UNKNOWN, "calling", False)})
    # first seen = the start of the first association that carried the title
    first_start = min(r["start"] for r in records if r.get("calling_ae") == UNKNOWN)
    assert abs(next(iter(first.values())) - first_start) < 0.002


def test_live_one_and_two_workers_agree():
    if not {1, 2} <= set(RESULTS):
        pytest.skip("needs both runs of test_live_counts_equal_the_peers_truth")
    assert RESULTS[1]["series"] == RESULTS[2]["series"]


def test_live_interface_label_is_the_captured_interface():
    """Every per-interface series names an interface the probe captures on."""
    if not RESULTS:
        pytest.skip("needs a run of test_live_counts_equal_the_peers_truth")
    for workers, res in sorted(RESULTS.items()):
        samples = parse_metrics(res["text"])
        for fam in ("dicom_probe_packets_total", "dicom_probe_bytes_total", "dicom_probe_kernel_drops_total"):
            names = {dict(labels)["interface"] for (n, labels) in samples if n == fam}
            assert names == {CAPTURE_DEV}, f"workers={workers}: {fam} interface labels {sorted(names)}"


def test_live_sighup_reloads_and_keeps_counters(net, probe_factory):
    probe = probe_factory(2).start()
    probe.wait_ready()
    truth = traffic(net, echo_assocs=2, echoes_each=1, store_batches=[], rejects=3)
    before_samples, before_text = probe.wait_series(expected_series(truth))
    assert pair_series(before_samples) == expected_series(truth)
    before = counters(before_samples, before_text)

    # CT_REMOTE1 becomes a known title; CT_LOCAL is shown as CT_LOCAL_A from now on.
    probe.write_config(known=(KNOWN, CALLED, UNKNOWN), aliases={KNOWN: "CT_LOCAL_A"})
    os.kill(probe.pid, signal.SIGHUP)
    end = time.monotonic() + 5
    while "SIGHUP" not in probe.log() and time.monotonic() < end:
        time.sleep(0.05)
    lines = [l for l in probe.log().splitlines() if "SIGHUP" in l]
    assert lines == ["dicom-probe: SIGHUP: configuration reloaded"], probe.log()
    time.sleep(SNAPSHOT_SETTLE)  # the workers apply the new aliases at their next snapshot
    assert probe.proc.poll() is None
    after_samples, after_text = probe.scrape()
    after = counters(after_samples, after_text)
    assert pair_series(after_samples) == pair_series(before_samples)  # the association series are untouched

    more = traffic(net, echo_assocs=1, echoes_each=1, store_batches=[], rejects=0)
    alias = {**LOCAL, "calling_ae": "CT_LOCAL_A"}
    want = {("dicom_association_requests_total", frozenset(alias.items())): 1.0,
            ("dicom_association_accepts_total", frozenset(alias.items())): 1.0,
            ("dicom_association_releases_total", frozenset(alias.items())): 1.0,
            ("dicom_dimse_requests_total", frozenset({**alias, "command": "C-ECHO"}.items())): 1.0,
            ("dicom_dimse_responses_total",
             frozenset({**alias, "command": "C-ECHO", "status_class": "success", "status": "0000"}.items())): 1.0}
    assert more.echoes == 1
    final_samples, _ = probe.wait_series(want, base=pair_series(after_samples))
    assert delta(pair_series(after_samples), pair_series(final_samples)) == want
    assert probe.health()[0] == 200

    assert_exits_cleanly(probe)
    records = [r for r in probe.event_log() if "event" not in r]
    assert len(records) == truth.associations + 1
    assert [r["outcome"] for r in records if r["calling_ae"] == KNOWN].count("released") == 3
    RELOAD["counters"] = (before, after)


def test_live_sighup_never_lowers_a_counter():
    """Every counter sample read after the reload (known_ae_titles and ae_aliases changed) is >= its
    value before: a reload must not look like a counter reset to Prometheus."""
    if "counters" not in RELOAD:
        pytest.skip("needs test_live_sighup_reloads_and_keeps_counters")
    before, after = RELOAD["counters"]
    assert decreased(before, after) == []


def test_live_killed_worker_is_restarted_and_totals_never_drop(net, probe_factory):
    probe = probe_factory(2).start()
    probe.wait_ready()
    truth = traffic(net, echo_assocs=3, echoes_each=1, store_batches=[1], rejects=6)
    samples, text = probe.wait_series(expected_series(truth))
    assert pair_series(samples) == expected_series(truth)
    before = counters(samples, text)

    # Both workers have seen packets (10 connections over 2 fanout members: all on one has p = 0.2 %),
    # so whichever is killed, its counters matter.
    assert {dict(k)["worker"] for k in select(samples, "dicom_probe_worker_lag_seconds")} == {"0", "1"}, \
        "one worker saw no packet: the kernel's flow hash put every connection on the other one"
    old = probe.children()
    assert len(old) == 2
    os.kill(old[0], signal.SIGKILL)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        status, h = probe.health()
        if status == 200 and h.get("restarts") == 1 and h.get("workers_alive") == 2 \
                and h.get("capture_handles_open", 0) >= 2:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker not restarted: /healthz {status} {h}\n{probe.log()}")
    new = probe.children()
    assert len(new) == 2 and old[0] not in new and old[1] in new
    samples, text = probe.scrape()
    assert value(samples, "dicom_probe_worker_restarts_total") == 1
    assert value(samples, "dicom_probe_workers_alive") == 2
    after = counters(samples, text)
    assert decreased(before, after) == []
    assert pair_series(samples) == expected_series(truth)

    more = traffic(net, echo_assocs=2, echoes_each=2, store_batches=[], rejects=4)
    base = pair_series(samples)
    final, _ = probe.wait_series(expected_series(more), base=base)
    assert delta(base, pair_series(final)) == expected_series(more)
    assert value(final, "dicom_probe_kernel_drops_total") == 0

    assert_exits_cleanly(probe)
    records = [r for r in probe.event_log() if "event" not in r]
    # The killed worker's records were sent with its snapshots before the kill (traffic had settled).
    assert len(records) == truth.associations + more.associations


# -- two probes on one host: containers sharing the host's network namespace -------------------------
#
# A probe in a container with host networking (how a sniffer of a SPAN port is deployed) runs as PID 1
# of its own PID namespace. Two such probes share the network namespace, and with it the kernel's
# AF_PACKET fanout group ids, while having the same PID.

needs_unshare = pytest.mark.skipif(not os.path.exists("/usr/bin/unshare"), reason="needs util-linux unshare")


@needs_unshare
def test_live_probes_in_containers_sharing_the_network_namespace(net, probe_factory):
    """Probes a and b capture vpacs, c captures vpacs2, each as PID 1 of its own PID namespace: a and
    b must each count every association, and c must capture (no restarts, handles open)."""
    a = probe_factory(2, pid_namespace=True).start()
    b = probe_factory(2, pid_namespace=True).start()
    a.wait_ready()
    b.wait_ready()
    c = probe_factory(2, pid_namespace=True, interface=OTHER_DEV).start()
    truth = traffic(net, echo_assocs=2, echoes_each=1, store_batches=[], rejects=10)
    expected = expected_series(truth)
    end = time.monotonic() + 4
    while True:
        samples = {"a": a.scrape()[0], "b": b.scrape()[0]}
        c_status, c_health = c.health()
        if all(pair_series(s) == expected for s in samples.values()) and c_status == 200 \
                and c_health.get("capture_handles_open", 0) >= 2 or time.monotonic() > end:
            break
        time.sleep(0.25)
    problems = []
    got = {name: value(s, "dicom_association_requests_total") for name, s in samples.items()}
    if got != {"a": truth.associations, "b": truth.associations}:
        problems.append(f"same interface: associations counted by each probe (of {truth.associations}): {got}")
    c_got = (c_status, c_health.get("restarts"), c_health.get("capture_handles_open"), c_health.get("errors"))
    if c_got != (200, 0, 2, []):
        tail = [line for line in c.log().splitlines() if "Error" in line][-1:]
        problems.append(f"other interface: /healthz (status, restarts, handles, errors) = {c_got}; {tail}")
    assert not problems, "\n".join(problems)
    assert_exits_cleanly(a, b, c)


def test_live_pure_acks_dropped_in_the_kernel_give_the_same_counts(net, probe_factory):
    """capture.drop_pure_acks on a live handle: the kernel's filter takes the ACK-only segments, the
    counts equal the peers' truth and another probe's on the same interface without it."""
    full = probe_factory(1).start()
    lean = probe_factory(2, drop_pure_acks=True).start()
    full.wait_ready()
    lean.wait_ready()
    truth = traffic(net, echo_assocs=3, echoes_each=2, store_batches=[2], rejects=10)
    expected = expected_series(truth)
    samples = {"full": full.wait_series(expected)[0], "lean": lean.wait_series(expected)[0]}
    assert pair_series(samples["lean"]) == pair_series(samples["full"]) == expected
    packets = {k: value(s, "dicom_probe_packets_total", interface=CAPTURE_DEV) for k, s in samples.items()}
    # every association has ACK-only segments (the handshake's last, the ACKs of the C-STOREs' data)
    assert 0 < packets["lean"] <= packets["full"] - 2 * truth.associations, packets
    assert value(samples["lean"], "dicom_probe_kernel_drops_total") == 0
    assert_exits_cleanly(full, lean)


def test_live_interface_down_and_up_keeps_counting(net, probe_factory):
    """Issue 6 faults: the captured interface goes down and comes back (libpcap keeps the handle:
    no packets while down); counters never go backwards and traffic afterwards is counted exactly."""
    probe = probe_factory(2).start()
    probe.wait_ready()
    truth = traffic(net, echo_assocs=2, echoes_each=1, store_batches=[], rejects=2)
    samples, text = probe.wait_series(expected_series(truth))
    before = counters(samples, text)
    net.lab.ex(net.pacs, [N.IP, "link", "set", CAPTURE_DEV, "down"])
    time.sleep(2.0)
    net.lab.ex(net.pacs, [N.IP, "link", "set", CAPTURE_DEV, "up"])
    end = time.monotonic() + 10
    while time.monotonic() < end and net.lab.run(net.mod, [N.IP, "link", "show", "vmod"])[1].count("LOWER_UP") == 0:
        time.sleep(0.2)
    time.sleep(1.0)
    samples, text = probe.scrape()
    assert decreased(before, counters(samples, text)) == []
    more = traffic(net, echo_assocs=2, echoes_each=1, store_batches=[], rejects=2)
    total = Truth(**{k: getattr(truth, k) + getattr(more, k) for k in
                     ("echo_associations", "store_associations", "echoes", "stores", "rejects")})
    samples, _ = probe.wait_series(expected_series(total))
    assert pair_series(samples) == expected_series(total)
    status, h = probe.health()
    assert status == 200 and h["capture_handles_open"] >= 2


def test_live_interface_removed_and_recreated_is_reopened(net, probe_factory):
    """The captured interface disappears (libpcap: "The interface disappeared"): the worker reports
    it with its counts and is respawned waiting for the interface; /healthz is unhealthy meanwhile;
    when the interface is back the capture is reopened and counted."""
    lab = net.lab
    lab.veth(net.pacs, "vgone", net.mod, "vgone2")
    probe = probe_factory(1)
    probe.interface = "vgone"
    probe.write_config()
    probe.start()
    probe.wait_ready()
    lab.ex(net.pacs, [N.IP, "link", "del", "vgone"])
    end = time.monotonic() + 15
    while time.monotonic() < end:
        samples, _ = probe.scrape()
        if sum(select(samples, "dicom_probe_capture_reopens_total").values()) >= 1:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"the lost capture was not reported\n{probe.log()}")
    status, h = probe.health()
    assert status == 503 and h["capture_handles_open"] == 0  # waiting for the interface
    lab.veth(net.pacs, "vgone", net.mod, "vgone2")
    end = time.monotonic() + 15
    while time.monotonic() < end:
        status, h = probe.health()
        if status == 200 and h["capture_handles_open"] == 1:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"capture not reopened: /healthz {status} {h}\n{probe.log()}")
    samples, _ = probe.scrape()
    assert value(samples, "dicom_probe_capture_reopens_total", interface="vgone") == 1
    assert value(samples, "dicom_probe_worker_restarts_total") == 0
    assert "reopening" in probe.log()


TLS_PORT = 2762  # in the default tls_ports


def _pki(d: Path) -> Path:
    """A CA, a server and a client certificate signed by it, and an unrelated CA (openssl CLI)."""
    d.mkdir()

    def ssl(*args):
        N.sh(["openssl", *map(str, args)])

    for ca, cn in (("ca", "Live Test CA"), ("other", "Other Test CA")):
        ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / f"{ca}.key", "-out", d / f"{ca}.crt",
            "-days", "30", "-subj", f"/O=Example Hospital/CN={cn}")
    for name, cn in (("server", "pacs.live.test"), ("client", "ct-local.live.test")):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr",
            "-subj", f"/O=Example Hospital/CN={cn}")
        ssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key", "-CAcreateserial",
            "-out", d / f"{name}.crt", "-days", "20")
    return d


def test_live_tls_handshakes_are_observed(net, probe_factory):
    """DICOM over TLS captured live on the default TLS port: DCMTK echoscu +tls to storescp +tls
    completes (DCMTK negotiates TLS 1.3); a client trusting another CA fails with the alert it
    sends; a plain DICOM client on the TLS port is not-tls. Nothing is decrypted."""
    pki = _pki(net.tmp / "pki")
    scp = net.lab.spawn(net.pacs, [STORESCP, "-aet", CALLED, "+tls", pki / "server.key", pki / "server.crt", "-pw",
                                   "+cf", pki / "ca.crt", "-od", net.tmp / "in", TLS_PORT],
                        stdout=net.tmp / "tls-scp.log", stderr=net.tmp / "tls-scp.err")
    try:
        net.lab.wait_listen(net.pacs, TLS_PORT)
        probe = probe_factory(1).start()
        probe.wait_ready()
        tls = ["+tls", pki / "client.key", pki / "client.crt", "-pw"]
        rc, out = net.lab.run(net.mod, [ECHOSCU, "-v", *tls, "+cf", pki / "ca.crt", "-aet", KNOWN, "-aec", CALLED,
                                        PACS_LOCAL_IP, TLS_PORT])
        assert rc == 0, out
        rc, out = net.lab.run(net.mod, [ECHOSCU, "-v", *tls, "+cf", pki / "other.crt", "-aet", KNOWN, "-aec",
                                        CALLED, PACS_LOCAL_IP, TLS_PORT])
        assert rc != 0, out
        rc, out = net.lab.run(net.mod, [ECHOSCU, "-v", "-aet", KNOWN, "-aec", CALLED, PACS_LOCAL_IP, TLS_PORT])
        assert rc != 0, out

        server = f"{PACS_LOCAL_IP}:{TLS_PORT}"
        end = time.monotonic() + 15
        while time.monotonic() < end:
            samples, _ = probe.scrape()
            if value(samples, "dicom_tls_connections_total") == 3:
                break
            time.sleep(0.25)
        time.sleep(SNAPSHOT_SETTLE)
        samples, _ = probe.scrape()
        assert value(samples, "dicom_tls_connections_total", server=server, site="other") == 3
        assert select(samples, "dicom_tls_handshakes_total") == {
            frozenset({("site", "other"), ("server", server), ("version", "TLSv1.3")}): 1}
        failures = {dict(k)["alert"]: (dict(k)["sent_by"], v)
                    for k, v in select(samples, "dicom_tls_handshake_failures_total").items()}
        assert failures.pop("not-tls") == ("client", 1)
        ((alert, (sent_by, n)),) = failures.items()
        assert alert in ("unknown_ca", "bad_certificate", "encrypted-alert") and sent_by == "client" and n == 1
        assert value(samples, "dicom_probe_kernel_drops_total") == 0
        assert value(samples, "dicom_dimse_requests_total") == 0  # the DICOM inside TLS is not read

        assert_exits_cleanly(probe)
        records = [r for r in probe.event_log() if r.get("event") == "tls-connection"]
        assert sorted(r["outcome"] for r in records) == ["established", "failed", "failed"]
        good = next(r for r in records if r["outcome"] == "established")
        assert good["version"] == "TLSv1.3" and good["server"] == server and good["client"].startswith(LOCAL_IP)
    finally:
        net.lab.stop(scp)
