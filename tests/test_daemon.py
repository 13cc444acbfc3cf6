"""`dicom-probe run --read` (the daemon replaying capture files) and `analyze --workers N`, end to end
as subprocesses; no root needed. The live-capture counterpart is tests/test_daemon_live.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from netlab import free_port, parse_metrics, processes_with_arg, select

REPO = Path(__file__).resolve().parent.parent
CAPTURES = Path(__file__).parent / "fixtures" / "captures"
SEED = CAPTURES / "seed_incident.pcap"  # 585 TCP frames on port 104; 55 associations, 50 rejected
SEED_PACKETS, SEED_ASSOCIATIONS, SEED_REJECTS = 585, 55, 50

# Families whose values follow the wall clock or the running processes, not the packets.
WALL_CLOCK = ("dicom_probe_last_packet_age_seconds", "dicom_probe_start_time_seconds", "dicom_ae_title_first_seen_timestamp_seconds",
              "dicom_probe_workers_alive", "dicom_probe_worker_lag_seconds")
# What `analyze` leaves out (probe.daemon.DAEMON_ONLY): it describes a running daemon.
DAEMON_ONLY = WALL_CLOCK + ("dicom_probe_worker_restarts_total", "dicom_probe_new_ae_titles_total")

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(port: int, path: str) -> tuple[int, bytes]:
    try:
        with OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def drop_families(text: str, names) -> str:
    """The exposition without the families ``names`` (their HELP/TYPE lines and every sample)."""
    names = set(names)
    suffixes = ("", "_bucket", "_count", "_sum", "_created")

    def family_of(line: str) -> str:
        if line.startswith("# "):
            return line.split(" ", 3)[2]
        return line.split("{", 1)[0].split(" ", 1)[0]

    def dropped(name: str) -> bool:
        return any(name.endswith(s) and name[:len(name) - len(s)] in names for s in suffixes)

    return "".join(line + "\n" for line in text.splitlines() if not dropped(family_of(line)))


class Run:
    """`python -m probe run ...` in the background, output in files."""

    def __init__(self, tmp: Path, name: str, *args, config: dict | None = None, listen: bool = True):
        """``config``: the configuration file's content; the event log goes to a file in the run's
        directory unless it says otherwise. ``listen``: pass --listen 127.0.0.1:<free port>."""
        self.dir = tmp / name
        self.dir.mkdir()
        self.port = free_port()
        self.config = self.dir / "probe.yaml"
        self.config.write_text(yaml.safe_dump({"event_log": {"destination": str(self.dir / "events.jsonl")},
                                               **(config or {})}))
        self.args = ["--config", str(self.config), *map(str, args)]
        if listen:
            self.args += ["--listen", f"127.0.0.1:{self.port}"]
        self.stdout, self.stderr = self.dir / "stdout", self.dir / "stderr"
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "probe", "run", *self.args], stdout=out,
                                         stderr=err, stdin=subprocess.DEVNULL, cwd=REPO)

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def events(self) -> list[dict]:
        return [json.loads(line) for line in (self.dir / "events.jsonl").read_text().splitlines()]

    def wait_done(self, timeout: float = 20) -> float:
        """Wait until /healthz says every worker finished (200 with no worker alive: the supervisor
        has their final snapshots). Returns the time it first said so."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.log()}"
            status, body = fetch(self.port, "/healthz")
            if status == 200 and json.loads(body)["workers_alive"] == 0:
                return time.time()
            time.sleep(0.05)
        raise AssertionError(f"replay not done in {timeout} s: {status} {body!r}\n{self.log()}")

    def wait(self, timeout: float = 10) -> tuple[int | None, float]:
        t0 = time.monotonic()
        try:
            return self.proc.wait(timeout), time.monotonic() - t0
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None, time.monotonic() - t0

    def terminate(self, timeout: float = 10) -> tuple[int | None, float]:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def leftovers(self) -> list[int]:
        """Processes (the supervisor or forked workers) still running with this run's config file."""
        return processes_with_arg(str(self.config))


@pytest.fixture
def runs(tmp_path):
    made: list[Run] = []

    def start(*args, config=None, listen=True) -> Run:
        r = Run(tmp_path, f"run{len(made)}", *args, config=config, listen=listen)
        made.append(r)
        return r

    yield start
    for r in made:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait(5)
        for pid in r.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- run --read ------------------------------------------------------------------------------------

REPLAY: dict = {}  # workers -> (exposition, time /healthz said done, event log), for the first-seen test


def test_replay_exposition_does_not_depend_on_the_worker_count(runs):
    started = {n: runs("--read", SEED, "--workers", n) for n in (1, 2)}  # side by side
    text, done = {}, {}
    for n, r in started.items():
        done_at = r.wait_done()
        time.sleep(0.6)  # the first /metrics request comes well after the replay (see test_first_seen...)
        status, body = fetch(r.port, "/metrics")
        assert status == 200
        status2, body2 = fetch(r.port, "/metrics")
        assert drop_families(body.decode(), WALL_CLOCK) == drop_families(body2.decode(), WALL_CLOCK)  # settled
        text[n] = body.decode()
        done[n] = done_at
        samples = parse_metrics(text[n])
        assert samples[("dicom_probe_packets_total", frozenset({("interface", "offline")}))] == SEED_PACKETS
        assert sum(select(samples, "dicom_association_requests_total").values()) == SEED_ASSOCIATIONS
        assert sum(select(samples, "dicom_association_rejects_total").values()) == SEED_REJECTS
        assert samples[("dicom_probe_workers_alive", frozenset())] == 0
        assert samples[("dicom_probe_worker_restarts_total", frozenset())] == 0
    assert drop_families(text[1], WALL_CLOCK) == drop_families(text[2], WALL_CLOCK)

    # analyze --format prom is "the exposition the daemon would serve after these packets".
    p = subprocess.run([sys.executable, "-m", "probe", "analyze", "--format", "prom", SEED], capture_output=True,
                       text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert drop_families(text[1], DAEMON_ONLY) == drop_families(p.stdout, DAEMON_ONLY)

    for n, r in started.items():
        rc, took = r.terminate()
        assert rc == 0, f"workers={n}: SIGTERM gave {rc}\n{r.log()}"
        assert took < 10
        assert r.log().splitlines()[-1] == (f"dicom-probe: stopped: {SEED_PACKETS} packets, {SEED_ASSOCIATIONS} "
                                             f"associations requested, {SEED_REJECTS} rejected")
        assert not r.leftovers()
        events = r.events()
        assert len([e for e in events if "event" not in e]) == SEED_ASSOCIATIONS
        REPLAY[n] = (text[n], done[n], events)


def test_first_seen_timestamp_is_the_first_association_not_the_scrape():
    """dicom_ae_title_first_seen_timestamp_seconds is "when the daemon first saw each AE title": the
    start of the first association that carried it, as calling or called title (the same time as its
    new-ae-title event) -- not the time /metrics was first asked for (0.6 s after the replay was done)."""
    if not REPLAY:
        pytest.skip("needs test_replay_exposition_does_not_depend_on_the_worker_count")
    for n, (text, done_at, events) in sorted(REPLAY.items()):
        first = {(dict(k)["ae_title"], dict(k)["role"]): v
                 for k, v in select(parse_metrics(text), "dicom_ae_title_first_seen_timestamp_seconds").items()}
        starts: dict = {}
        for rec in (e for e in events if "event" not in e):
            for role in ("calling", "called"):
                key = (rec[f"{role}_ae"], role)
                starts[key] = min(starts.get(key, rec["start"]), rec["start"])
        assert set(first) == set(starts) == {("CT_REMOTE1", "calling"), ("CT_REMOTE2", "calling"),
                                             ("CT_LOCAL", "calling"), ("PACS_MAIN", "called")}
        late = {k: round(v - done_at, 3) for k, v in first.items() if v > done_at}
        assert not late, f"workers={n}: first seen this many seconds after the replay was done: {late}"
        for key, v in first.items():
            assert abs(v - starts[key]) < 0.002, f"workers={n} {key}: first seen {v}, first association {starts[key]}"


def test_exit_when_done(runs):
    r = runs("--read", SEED, "--workers", "2", "--exit-when-done")
    rc, took = r.wait(15)
    assert rc == 0, r.log()
    assert r.log().splitlines()[-1].startswith(f"dicom-probe: stopped: {SEED_PACKETS} packets")
    assert not r.leftovers()
    assocs = [e for e in r.events() if "event" not in e]
    assert len(assocs) == SEED_ASSOCIATIONS
    assert sum(a["outcome"] == "rejected" for a in assocs) == SEED_REJECTS


def test_exit_when_done_logs_the_new_ae_title_events(runs):
    """Nobody asks for /metrics here: the event log must still get one new-ae-title event per title
    and role (PACS_MAIN is the only known title)."""
    r = runs("--read", SEED, "--workers", "2", "--exit-when-done", config={"known_ae_titles": ["PACS_MAIN"]})
    assert r.wait(15)[0] == 0, r.log()
    events = [e for e in r.events() if e.get("event") == "new-ae-title"]
    assert {(e["ae_title"], e["role"], e["known"]) for e in events} == {
        ("CT_REMOTE1", "calling", False), ("CT_REMOTE2", "calling", False), ("CT_LOCAL", "calling", False),
        ("PACS_MAIN", "called", True)}
    assert len(events) == 4


def test_sigterm_mid_replay_exits_0(runs):
    r = runs("--read", SEED, "--realtime", "--workers", "2")  # the capture lasts ~3.1 s at its own pace
    end = time.monotonic() + 10
    while fetch(r.port, "/healthz")[0] != 200 and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.8)
    status, body = fetch(r.port, "/healthz")
    assert status == 200 and json.loads(body)["workers_alive"] == 2  # still replaying
    rc, took = r.terminate()
    assert rc == 0, r.log()
    assert took < 10
    last = r.log().splitlines()[-1]
    assert last.startswith("dicom-probe: stopped: ") and "associations requested" in last
    assert int(last.split()[2]) < SEED_PACKETS  # it did stop mid-way
    assert not r.leftovers()
    assert all(e.get("outcome") or e.get("event") for e in r.events())  # whole JSON lines only


@pytest.mark.parametrize("config, key", [
    ({"workerz": 2}, "workerz: unknown key (did you mean 'workers'?)"),
    ({"capture": {"interfaces": []}}, "capture.interfaces: needs at least one interface"),
    ({"http": {"listen": "localhost"}}, "http.listen: listen address 'localhost': no port"),
    ({"sites": {"remote-hospital": ["198.19.1.0/33"]}}, "sites: site 'remote-hospital'"),
], ids=["typo", "no-interface", "listen-without-port", "bad-network"])
def test_bad_config_exits_2_naming_the_key(runs, config, key):
    r = runs("--read", SEED, config=config)
    rc, _ = r.wait(10)
    assert rc == 2
    err = r.log()
    assert f"{r.config}: {key}" in err, err
    assert "listening" not in err
    assert r.stdout.read_text() == ""


@pytest.mark.parametrize("content", [b"this is not a capture\n", None])
def test_read_of_a_non_capture_exits_1_with_one_line(runs, tmp_path, content):
    path = tmp_path / ("notes.txt" if content else "missing.pcap")
    if content:
        path.write_bytes(content)
    r = runs("--read", path)
    rc, _ = r.wait(10)
    assert rc == 1
    lines = r.log().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dicom-probe: ") and str(path) in lines[0], lines
    assert not r.leftovers()


def test_listen_address_in_use_exits_2(runs):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = runs("--read", SEED, "--workers", "2", config={"http": {"listen": f"127.0.0.1:{port}"}}, listen=False)
        rc, took = r.wait(10)
    assert rc == 2, r.log()
    assert took < 10
    lines = r.log().splitlines()
    assert lines == [f"dicom-probe: cannot listen on 127.0.0.1:{port}: Address already in use"], lines
    assert not r.leftovers()


# -- analyze --workers N ---------------------------------------------------------------------------


def _truths():
    return sorted(CAPTURES.glob("*.truth.json"))


def _analyze(capture: Path, ports, workers: int, tmp: Path) -> tuple[int, bytes, bytes]:
    """``dicom-probe analyze --format prom --workers N`` in a forked copy of this process: the real
    command (its --workers N forks the real worker processes) without a Python start-up per run, and
    every run starts from the same state. Returns (exit status, stdout, stderr)."""
    from probe.cli import main

    args = ["analyze", "--quiet", "--format", "prom", "--workers", str(workers)]
    for p in ports:
        args += ["--port", str(p)]
    out, err = tmp / f"{capture.name}.{workers}.out", tmp / f"{capture.name}.{workers}.err"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            sys.stdout = open(out, "w")
            sys.stderr = open(err, "w")
            code = main([*args, str(capture)])
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"analyze --workers {workers} {capture.name} did not finish in 60 s")
        time.sleep(0.005)
    return os.waitstatus_to_exitcode(status), out.read_bytes(), err.read_bytes()


@pytest.mark.parametrize("truth", _truths(), ids=lambda p: p.name.removesuffix(".truth.json"))
def test_analyze_prom_is_byte_identical_for_1_2_3_workers(truth, tmp_path):
    t = json.loads(truth.read_text())
    capture = CAPTURES / t.get("capture_file", truth.name.replace(".truth.json", ".pcap"))
    res = {n: _analyze(capture, t["server_ports"], n, tmp_path) for n in (1, 2, 3)}
    assert res[1][0] == 0, res[1][2].decode()
    assert b"dicom_association_requests_total{" in res[1][1]
    for n in (2, 3):
        assert res[n][0] == res[1][0], res[n][2].decode()
        assert res[n][1] == res[1][1], f"--workers {n} differs from --workers 1"
