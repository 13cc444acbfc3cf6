"""The dashboards and rules against a real Prometheus scraping a real `dicom-probe run` replay.

One module-scoped run (about 30 s):

1. Prometheus (tmp storage, scrape and evaluation every 1 s) with deploy/prometheus/dicom-probe.rules.yml
   loaded unchanged -- no shortened `for:` or windows: the rule windows (5 and 10 minutes) only need
   the seconds of data this run has, and the seed alert only has to become *pending* (for: 1m).
   Prometheus applies new scrape targets only every 5 s, so the probe starts after Prometheus's
   first (failing) scrape of its port: Prometheus then sees the replay from its first snapshot.
2. `dicom-probe run --read ... --realtime` with sites {remote-hospital: [198.19.1.0/24]} and
   known_ae_titles [PACS_MAIN, CT_LOCAL]: first seed_incident.pcap as recorded (3.1 s: CT_REMOTE1 x40
   and CT_REMOTE2 x10 rejected by PACS_MAIN, CT_LOCAL x5 C-STOREs), then copies of a few other fixture
   captures with their timestamps moved to follow it (aborts, no response, closed without release,
   rejected presentation contexts, unanswered operations, DIMSE failure, warning and cancel statuses,
   C-MOVE sub-operations), about 17 s of traffic in all.
   One worker: a replaying worker sends a snapshot only every 256 packets it reads, and with one
   worker the seed's 589 packets give two snapshots before its end, so Prometheus sees the reject
   counters rise instead of appearing at their final values.
3. Once Prometheus has scraped the final counts (they must equal the peers' truth files), every
   panel query of every dashboard is run through the HTTP API (template variables as "All" = ".*",
   $__rate_interval = 1m, $__range = 5m): none may fail, and every panel the replay fills must
   return data. The AE pair dashboard is also run for the seed's two pairs, where the selection
   must both find and exclude data. Template variable queries, recording rules, rule health and
   the alerts (the seed alert pending or firing, with its summary) are checked the same way.

Skipped when prometheus or dicom-probe is not installed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "tests" / "fixtures" / "captures"
DASHBOARD_DIR = ROOT / "grafana-dashboards"
RULES = ROOT / "deploy" / "prometheus" / "dicom-probe.rules.yml"
DASHBOARDS = ("dicom-overview.json", "dicom-ae-pair.json", "dicom-dimse.json", "dicom-probe-health.json",
              "dicom-tls.json")

PROMETHEUS = shutil.which("prometheus")
PROBE = shutil.which("dicom-probe")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROBE is None,
    reason="needs prometheus (Debian package prometheus; bash deploy/install.sh --test) and dicom-probe on PATH")

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

SEED = "seed_incident.pcap"
# Replayed after the seed, in this order: aborts, called AE not recognized, rejected presentation
# contexts, closed without release, no response, unanswered operations; DIMSE failure (A700, C000,
# A801), warning (B000) and cancel (FE00) statuses and C-MOVE sub-operations.
EXTRAS = ("reject_called_dcmqrscp.pcap", "abort.pcap", "all_contexts_rejected.pcap", "no_response.pcap",
          "killed_storescu.pcap", "killed_storescu_storescp.pcap", "dimse_store_mixed.pcap", "dimse_move.pcap",
          "dimse_cancel.pcap")
# DICOM over TLS (port 2762, in the default tls_ports): handshakes that complete with TLS 1.2/1.3 and
# 1.1 (deprecated), fail with clear alerts (unknown_ca, protocol_version, handshake_failure), and
# certificates in clear; tls_mixed also holds one plain C-ECHO on port 104.
TLS_EXTRAS = ("tls/tls_mixed.pcap", "tls/tls_deprecated_server.pcap")
GAP = 0.3  # seconds between one replayed capture's last packet and the next one's first

PROBE_CONFIG = {
    "sites": {"remote-hospital": ["198.19.1.0/24"]},
    "known_ae_titles": ["PACS_MAIN", "CT_LOCAL"],
    "workers": 1,
    "event_log": {"destination": "none"},
}
SUBSTITUTE = {"__rate_interval": "1m", "__range": "5m", "__interval": "15s"}

SEED_ALERT = {
    "alertname": "DicomAETitleNotRecognized",
    "calling_ae": "CT_REMOTE1",
    "site": "remote-hospital",
    "called_ae": "PACS_MAIN",
    "reason": "calling-ae-title-not-recognized",
    "severity": "critical",
}
SEED_SUMMARY = "calling AE CT_REMOTE1 at site remote-hospital is being rejected by PACS_MAIN: calling-ae-title-not-recognized"

# Panels a replay leaves empty: replayed files have no kernel/interface drop counters and no worker
# lag, the fixtures hold no capture loss, malformed PDU or failed sub-operation. Every other panel
# must show data.
EMPTY_ON_REPLAY = {
    ("dicom-probe-health.json", "Kernel and interface drops/s"),
    ("dicom-probe-health.json", "Worker lag"),
    ("dicom-probe-health.json", "Frames skipped/s by kind"),
    ("dicom-probe-health.json", "Stream gaps/s"),
    ("dicom-probe-health.json", "Gap bytes/s"),
    ("dicom-probe-health.json", "Resyncs/s"),
    ("dicom-probe-health.json", "PDU parse errors/s by kind"),
    ("dicom-probe-health.json", "DIMSE decode errors/s by kind"),
    ("dicom-probe-health.json", "Protocol violations/s by kind"),
    ("dicom-dimse.json", "Failed sub-operations/s by AE pair"),
    # The one TLS 1.1 handshake is its series' only increment: rate() never sees it rise (and
    # the ratio has no denominator once the other versions' rates fall back to 0).
    ("dicom-tls.json", "Deprecated versions"),
}
# Recording rules that stay empty on a replay (no drop counters).
RECORDS_EMPTY_ON_REPLAY = {"instance_interface:dicom_probe_dropped_frames:rate5m",
                           "instance_interface:dicom_probe_drop_ratio:ratio_rate5m"}

# The AE pair dashboard for one pair: which panels must have data, which must be empty.
PAIR_SELECTIONS = {
    "CT_REMOTE1": (
        {"site": "remote-hospital", "calling_ae": "CT_REMOTE1", "called_ae": "PACS_MAIN"},
        {"Requests/s", "Accepted", "Rejected", "Aborted", "Outcomes over time", "Requests/s per pair",
         "Reject % per pair", "Reject reasons", "Setup time percentiles", "Setup time distribution"},
        {"Abort reasons", "DIMSE requests/s by command", "DIMSE responses/s by status class",
         "DIMSE failures/s by command and status", "DIMSE failure % by command", "P-DATA throughput",
         "Presentation contexts/s by result", "Unanswered requests and unmatched responses/s"},
    ),
    "CT_LOCAL": (
        {"site": "other", "calling_ae": "CT_LOCAL", "called_ae": "PACS_MAIN"},
        {"Requests/s", "Accepted", "Rejected", "Outcomes over time", "Reject % per pair",
         "DIMSE requests/s by command", "DIMSE responses/s by status class", "DIMSE failure % by command",
         "P-DATA throughput", "Presentation contexts/s by result", "Setup time percentiles"},
        {"Reject reasons", "Abort reasons", "DIMSE failures/s by command and status",
         "Unanswered requests and unmatched responses/s"},
    ),
}


# -- helpers -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with OPENER.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""  # not listening (yet)


def shift_pcap(src: Path, dst: Path, start: float) -> float:
    """Copy a classic pcap file, moving its first packet to ``start`` (epoch seconds); return its new end."""
    data = bytearray(src.read_bytes())
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{src}: not a classic pcap file")
    scale = 1_000_000_000 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1_000_000
    records, off = [], 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(endian + "IIII", data, off)
        records.append((off, sec * scale + frac))
        off += 16 + incl
    first = records[0][1]
    base = round(start * scale)
    last = base
    for off, ts in records:
        new = base + (ts - first)
        struct.pack_into(endian + "II", data, off, new // scale, new % scale)
        last = new
    dst.write_bytes(bytes(data))
    return last / scale


def _timestamps(path: Path):
    data = path.read_bytes()
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    scale = 1e9 if data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e6
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack_from(endian + "IIII", data, off)
        yield sec + frac / scale
        off += 16 + incl


def _last_ts(path: Path) -> float:
    ts = 0.0
    for ts in _timestamps(path):
        pass
    return ts


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variable interpolation, for the variables these dashboards use."""
    values = {**SUBSTITUTE, **values}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"variable left in {expr}"
    return expr


def has_values(result: list[dict]) -> bool:
    """True if a query result holds at least one sample that is a number (not NaN)."""
    for series in result:
        samples = series.get("values") or ([series["value"]] if "value" in series else [])
        if any(not math.isnan(float(v)) for _, v in samples):
            return True
    return False


@dataclass
class Live:
    prom: str  # base URL
    probe: str
    started: float  # when the probe started (epoch seconds)
    replayed: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(f"{self.prom}/api/v1/{path}?{query}", timeout=30)
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", f"{path} {params}: {status} {doc}"
        return doc["data"]

    def instant(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr, time=f"{time.time():.3f}")
        return data["result"] if data["resultType"] in ("vector", "matrix") else [{"value": data["result"]}]

    def range(self, expr: str) -> list[dict]:
        end = time.time()
        return self.api("query_range", query=expr, start=f"{self.started - 5:.3f}", end=f"{end:.3f}",
                        step="1")["result"]

    def run_target(self, target: dict, values: dict[str, str]) -> list[dict]:
        expr = substitute(target["expr"], values)
        return self.instant(expr) if target.get("instant") else self.range(expr)


def truth_counts(names) -> Counter:
    counts: Counter = Counter()
    for name in names:
        truth = json.loads((CAPTURES / name).with_suffix(".truth.json").read_text())
        for a in truth.get("associations", truth.get("dicom", [])):  # TLS captures: their plain associations
            counts[(a["calling_ae"], a["called_ae"])] += 1
    return counts


def _wait(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


# -- the run -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("prometheus-live")
    prom_port, probe_port = free_port(), free_port()

    # The captures: the seed as recorded, the others moved to follow it.
    replayed = [SEED, *EXTRAS]
    files = [str(CAPTURES / SEED)]
    end = _last_ts(CAPTURES / SEED)
    for name in EXTRAS + TLS_EXTRAS:
        out = tmp / Path(name).name
        end = shift_pcap(CAPTURES / name, out, end + GAP)
        files.append(str(out))
    ports = sorted({p for n in replayed
                    for p in json.loads((CAPTURES / n).with_suffix(".truth.json").read_text())["server_ports"]} | {104})
    config = {**PROBE_CONFIG, "ports": ports}
    (tmp / "probe.yaml").write_text(yaml.safe_dump(config))

    (tmp / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{
            "job_name": "dicom-probe",
            "static_configs": [{"targets": [f"127.0.0.1:{probe_port}"], "labels": {"probe": "test-replay"}}],
        }],
    }))
    prom_log = open(tmp / "prometheus.log", "wb")
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=prom_log, stderr=subprocess.STDOUT, start_new_session=True)
    probe = None
    probe_log = open(tmp / "probe.log", "wb")
    base = f"http://127.0.0.1:{prom_port}"
    try:
        _wait(lambda: prom.poll() is None and http_get(f"{base}/-/ready", 1)[0] == 200, 30, "Prometheus ready")
        timings = {"prometheus_ready": time.monotonic() - t0}

        # Prometheus applies new scrape targets every 5 s: wait for its first (failing) scrape of the
        # probe's port, so that it scrapes the replay from its first snapshot on.
        def first_scrape_attempted():
            status, body = http_get(f"{base}/api/v1/targets?state=active", 1)
            targets = json.loads(body)["data"]["activeTargets"] if status == 200 else []
            return any(t["health"] != "unknown" for t in targets)

        _wait(first_scrape_attempted, 30, "Prometheus to try the probe target")
        timings["target_scraped"] = time.monotonic() - t0

        started = time.time()
        probe = subprocess.Popen(
            [PROBE, "run", "--read", *files, "--realtime", "--listen", f"127.0.0.1:{probe_port}",
             "--config", str(tmp / "probe.yaml")],
            stdout=probe_log, stderr=subprocess.STDOUT, start_new_session=True)
        run = Live(prom=base, probe=f"http://127.0.0.1:{probe_port}", started=started, replayed=replayed,
                   timings=timings)

        def replay_done():
            assert probe.poll() is None, (tmp / "probe.log").read_text()
            status, body = http_get(f"{run.probe}/healthz", 1)
            return status == 200 and json.loads(body)["workers_alive"] == 0

        _wait(replay_done, 60, "the replay to finish")
        timings["replay_done"] = time.monotonic() - t0

        # Prometheus has the final counts (then a few more scrapes and rule evaluations).
        want = truth_counts(replayed + list(TLS_EXTRAS))

        def scraped_final():
            got = Counter()
            for s in run.instant("sum by (calling_ae, called_ae) (dicom_association_requests_total)"):
                got[(s["metric"]["calling_ae"], s["metric"]["called_ae"])] = int(float(s["value"][1]))
            return got == want

        _wait(scraped_final, 15, "Prometheus to scrape the final counts")
        time.sleep(3)
        timings["settled"] = time.monotonic() - t0
        yield run
    finally:
        for proc in (probe, prom):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (probe, prom):
            if proc is not None:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        prom_log.close()
        probe_log.close()


def load(name: str) -> dict:
    return json.loads((DASHBOARD_DIR / name).read_text())


def panels(dash: dict):
    for p in dash["panels"]:
        if p["type"] != "row":
            yield p
        for inner in p.get("panels", ()):
            yield inner


# -- the tests ---------------------------------------------------------------------------------------


def test_timing(live):
    """The whole run stays well under the 90 s budget (the seed alone replays in 3.1 s)."""
    print(f"\nlive run: {live.timings}, captures {live.replayed}")
    assert live.timings["settled"] < 75


def test_seed_counts_reached_prometheus(live):
    got = {s["metric"]["calling_ae"]: float(s["value"][1]) for s in live.instant(
        'sum by (calling_ae) (dicom_association_rejects_total{called_ae="PACS_MAIN", site="remote-hospital", '
        'reason="calling-ae-title-not-recognized"})')}
    assert got == {"CT_REMOTE1": 40, "CT_REMOTE2": 10}
    (local,) = live.instant('dicom_association_releases_total{calling_ae="CT_LOCAL", called_ae="PACS_MAIN", site="other"}')
    assert float(local["value"][1]) == 5
    assert {s["metric"]["probe"] for s in live.instant("up")} == {"test-replay"}


@pytest.mark.parametrize("name", DASHBOARDS)
def test_template_variables_resolve(live, name):
    """Every label_values() variable finds values (the seed's where it should)."""
    everything = {v["name"]: ".*" for v in load(name)["templating"]["list"]}
    found = {}
    for v in load(name)["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["definition"])
        assert m, v["definition"]
        selector = substitute(m.group(1), everything)
        found[v["name"]] = set(live.api(f"label/{m.group(2)}/values", **{"match[]": selector},
                                        start=f"{live.started - 5:.3f}", end=f"{time.time():.3f}"))
        assert found[v["name"]], f"{v['name']}: {v['definition']} found nothing"
    assert found["job"] == {"dicom-probe"}
    if "server" in found:  # dicom-tls: the TLS clients are all 198.18.0.2 (site other)
        assert found["server"] == {"198.18.0.1:2762"} and found["site"] == {"other"}
    elif "site" in found:
        assert {"remote-hospital", "other"} <= found["site"]
        assert {"CT_REMOTE1", "CT_REMOTE2", "CT_LOCAL"} <= found["calling_ae"]
        assert "PACS_MAIN" in found["called_ae"]
    if "command" in found:
        assert "C-STORE" in found["command"]


def test_chained_variable_follows_the_site(live):
    (v,) = [v for v in load("dicom-overview.json")["templating"]["list"] if v["name"] == "calling_ae"]
    m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["definition"])
    selector = substitute(m.group(1), {"job": ".*", "instance": ".*", "site": "remote-hospital"})
    values = live.api("label/calling_ae/values", **{"match[]": selector})
    assert set(values) == {"CT_REMOTE1", "CT_REMOTE2"}


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_query_runs_and_the_replay_fills_the_panels(live, name):
    dash = load(name)
    everything = {v["name"]: ".*" for v in dash["templating"]["list"]}
    empty, failures = [], []
    for p in panels(dash):
        results = []
        for t in p["targets"]:
            try:
                results.append(live.run_target(t, everything))
            except AssertionError as e:  # a query error: collect them all
                failures.append(f"{p['title']} {t['refId']}: {e}")
        if (name, p["title"]) not in EMPTY_ON_REPLAY and not any(has_values(r) for r in results):
            empty.append(p["title"])
    for a in dash["annotations"]["list"]:
        live.range(substitute(a["expr"], everything))  # parses
    assert not failures, "\n".join(failures)
    assert not empty, f"panels without data: {empty}"


@pytest.mark.parametrize("who", PAIR_SELECTIONS)
def test_ae_pair_dashboard_for_one_pair(live, who):
    selection, with_data, without = PAIR_SELECTIONS[who]
    dash = load("dicom-ae-pair.json")
    values = {"job": "dicom-probe", "instance": ".*", **selection}
    titles = {p["title"] for p in panels(dash)}
    assert with_data <= titles and without <= titles
    filled = set()
    for p in panels(dash):
        if any(has_values(live.run_target(t, values)) for t in p["targets"]):
            filled.add(p["title"])
    assert with_data - filled == set(), "panels without data"
    assert filled & without == set(), "panels with data that the selection excludes"


def test_recording_rules_return_data(live):
    groups = yaml.safe_load(RULES.read_text())["groups"]
    records = [r["record"] for g in groups for r in g["rules"] if "record" in r]
    empty = []
    for name in records:
        result = live.instant(name)
        if not result and name not in RECORDS_EMPTY_ON_REPLAY:
            empty.append(name)
    assert not empty, f"recording rules without data: {empty}"
    ratio = {s["metric"]["calling_ae"]: float(s["value"][1]) for s in live.instant(
        'pair:dicom_association_reject_ratio:ratio_rate5m{called_ae="PACS_MAIN"}')}
    # Every request of CT_REMOTE1/2 was rejected. (The rates' first samples need not fall between the
    # same RQ and RJ, so the ratio of the two rates is near 1, and clamped to at most 1.)
    assert 0.9 <= ratio["CT_REMOTE1"] <= 1 and 0.9 <= ratio["CT_REMOTE2"] <= 1 and ratio["CT_LOCAL"] == 0
    (site,) = live.instant('site:dicom_association_reject_ratio:ratio_rate5m{site="remote-hospital"}')
    assert 0.9 <= float(site["value"][1]) <= 1


def test_rules_evaluate_without_errors(live):
    data = live.api("rules")
    bad = [(r["name"], r.get("lastError")) for g in data["groups"] for r in g["rules"] if r["health"] != "ok"]
    assert not bad
    assert sum(len(g["rules"]) for g in data["groups"]) == sum(
        len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])


def test_seed_alert_is_pending_or_firing_with_its_summary(live):
    def seed_alert():
        for a in live.api("alerts")["alerts"]:
            if all(a["labels"].get(k) == v for k, v in SEED_ALERT.items()):
                return a
        return None

    alert = _wait(seed_alert, 10, "the seed alert")
    assert alert["state"] in ("pending", "firing")
    assert alert["labels"] == SEED_ALERT  # exactly these labels: aggregated over probes and instances
    assert alert["annotations"]["summary"] == SEED_SUMMARY
    assert float(alert["value"]) >= 3
    print(f"\nseed alert: {alert['state']}, value {alert['value']}: {alert['annotations']['summary']}")


def test_other_alerts_on_the_seed(live):
    alerts = live.api("alerts")["alerts"]
    active = {(a["labels"]["alertname"], a["labels"].get("calling_ae")) for a in alerts}
    # The same incident seen by the ratio and new-title alerts (both pending: for 10m / 1m).
    assert ("DicomAssociationRejectRateHigh", "CT_REMOTE1") in active
    assert ("DicomNewAETitleRejected", "CT_REMOTE1") in active
    # CT_LOCAL is known and accepted; the probe is up, present, seeing traffic and dropping nothing.
    assert not [a for a in alerts if a["labels"].get("calling_ae") == "CT_LOCAL"]
    names = {a["labels"]["alertname"] for a in alerts}
    assert not names & {"DicomProbeDown", "DicomProbeAbsent", "DicomProbeNoTraffic", "DicomProbeDroppingPackets",
                        "DicomProbeStreamGaps", "DicomDimseFailureRateHigh", "DicomAssociationSetupSlow"}
    # Rejects of called AEs the PACS does not know, but only one of each: below the burst threshold.
    assert not [a for a in alerts if a["labels"]["alertname"] == "DicomAETitleNotRecognized"
                and a["labels"].get("reason") == "called-ae-title-not-recognized"]
