"""DICOM over TLS on real captures: the probe against what the peers reported and against tshark.

The captures in tests/fixtures/captures/tls/ were recorded by tests/fixtures/record_tls_fixtures.py
with DCMTK and pynetdicom peers (Python ssl / OpenSSL 3.0) in network namespaces; each
*.truth.json holds what the peers themselves logged (handshake result, version, cipher, the
alert they sent or received, the certificates they sent in clear). tests/tls_oracle.py reads the
same files with tshark's TLS and X.509 dissectors.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from probe.config import load, parse, ConfigError
from probe.metrics import MetricStore, TlsMetrics
from probe.offline import open_sources, run
from probe.report import record_json, render_table, tls_record
from probe.sites import SiteMap
from probe import tls as T

sys.path.insert(0, str(Path(__file__).parent))
import capture_edit  # noqa: E402
import tls_oracle  # noqa: E402

TLS_DIR = Path(__file__).parent / "fixtures" / "captures" / "tls"
TRUTHS = sorted(TLS_DIR.glob("*.truth.json"))
SITES = {"remote-site": ["198.18.0.2/32"]}


def truth_of(path: Path) -> dict:
    return json.loads(path.read_text())


def pcap_of(truth_path: Path) -> Path:
    return TLS_DIR / truth_of(truth_path)["capture_file"]


def analyze(pcap: Path, cfg_text: str = ""):
    cfg = parse(cfg_text or "sites: {remote-site: [198.18.0.2/32]}")
    records: list = []
    assocs: list = []
    pipe = run(open_sources([str(pcap)], cfg.capture_ports()), cfg, on_association=assocs.append,
               on_tls=records.append)
    return pipe, records, assocs


def by_port(records) -> dict[int, T.TlsRecord]:
    out = {}
    for r in records:
        out[int(r.client.rsplit(":", 1)[1])] = r
    return out


def matched(truth: dict, records) -> list[tuple[dict, T.TlsRecord]]:
    """Truth connections with the probe's records: by client port where the peers logged it (a
    DCMTK client does not), else by order of the connections' start."""
    ports = by_port(records)
    in_order = sorted(records, key=lambda r: r.start_ts)
    return [(c, ports[c["client_port"]] if c.get("client_port") else in_order[i])
            for i, c in enumerate(truth["connections"])]


def cert_dict(c):
    if c is None:
        return None
    return {"subject_cn": c.subject_cn, "subject_o": c.subject_o, "issuer_cn": c.issuer_cn,
            "issuer_o": c.issuer_o, "not_after": int(c.not_after)}


def expected_failure(conn: dict) -> tuple[str | None, str | None]:
    """(failure, sent_by) the probe must report for a failed connection of the truth."""
    if conn["alert"] is not None:
        return conn["alert"], conn["alert_sent_by"]
    if conn.get("encrypted_alert"):
        return "encrypted-alert", conn["alert_sent_by"]
    return None, None


def test_fixtures_present():
    names = {p.name.removesuffix(".truth.json") for p in TRUTHS}
    for must in ("tls12_pynetdicom", "tls13_pynetdicom", "tls_unknown_ca", "tls_expired", "tls_version_mismatch",
                 "tls13_untrusted", "tls_dcmtk_store", "tls_mixed", "tls_plain_to_tls"):
        assert must in names


@pytest.mark.parametrize("truth_path", TRUTHS, ids=lambda p: p.name.removesuffix(".truth.json"))
def test_each_connection_matches_the_peers(truth_path):
    truth = truth_of(truth_path)
    pipe, records, _ = analyze(pcap_of(truth_path))
    conns = truth["connections"]
    assert len(records) == len(conns), [r.client for r in records]
    pairs = matched(truth, records)
    for conn, r in pairs:
        where = f"{truth['scenario']} :{r.client}"
        assert r.server == conn["server"], where
        assert r.outcome == conn["outcome"], (where, r)
        if conn["client_hello"]:
            assert r.version == conn["version"], where
            assert r.cipher_code == conn["cipher_code"], where
            if conn["cipher_iana"] is not None:
                assert r.cipher == conn["cipher_iana"], where
            assert r.sni == conn["sni"], where
        assert cert_dict(r.server_cert) == conn["server_cert"], where
        assert cert_dict(r.client_cert) == conn["client_cert"], where
        if conn["outcome"] == "established":
            assert r.failure is None and r.established_ts is not None, where
            assert r.app_bytes[0] > 0 and r.app_bytes[1] > 0, where
        else:
            failure, sent_by = expected_failure(conn)
            if failure is not None:
                assert (r.failure, r.failure_sent_by) == (failure, sent_by), (where, r)
            elif not conn["client_hello"]:
                assert r.failure == "not-tls", (where, r)
            assert r.established_ts is None, where
    # The metrics say the same.
    v = pipe.store.values
    assert sum(v["dicom_tls_connections_total"].values()) == len(conns)
    versions: dict = {}
    failures: dict = {}
    for c, r in pairs:
        if c["outcome"] == "established":
            versions[c["version"]] = versions.get(c["version"], 0) + 1
        else:
            failures[(r.failure, r.failure_sent_by or "unknown")] = failures.get(
                (r.failure, r.failure_sent_by or "unknown"), 0) + 1
    assert {k[2]: n for k, n in v["dicom_tls_handshakes_total"].items()} == versions
    assert {(k[2], k[3]): n for k, n in v["dicom_tls_handshake_failures_total"].items()} == failures
    for k in v["dicom_tls_connections_total"]:
        assert k[0] == "remote-site"  # every client is 198.18.0.2
    certs = v["dicom_tls_certificate_not_after_timestamp_seconds"]
    for c in conns:
        for role in ("server", "client"):
            cert = c[f"{role}_cert"]
            if cert is not None:
                key = (c["server"], role, cert["subject_cn"], cert["issuer_cn"])
                assert certs[key] == cert["not_after"]
    assert not v["dicom_probe_tls_errors_total"] or truth["scenario"] == "tls_plain_to_tls"


@pytest.mark.skipif(not tls_oracle.tshark_available(), reason="needs tshark")
@pytest.mark.parametrize("truth_path", TRUTHS, ids=lambda p: p.name.removesuffix(".truth.json"))
def test_agrees_with_tshark(truth_path):
    """What tshark reads on the wire (offered versions, SNI, chosen version and suite, clear alerts
    and their sender, certificates in clear) is what the probe reports, connection by connection."""
    _, records, _ = analyze(pcap_of(truth_path))
    got = by_port(records)
    oracle = tls_oracle.tls_connections(str(pcap_of(truth_path)), (2762,))
    assert len(oracle) == len(got)
    for o in oracle:
        r = got[o["client_port"]]
        assert list(r.offered_versions) == list(o["offered_versions"] or []), o["client_port"]
        assert r.sni == o["sni"]
        assert r.version == o["version"] and r.cipher_code == o["cipher_code"]
        clear = [a for a in o["alerts"] if a["clear"]]
        if clear and r.established_ts is None:
            assert r.alert == clear[0]["name"]
        assert cert_dict(r.server_cert) == o["server_cert"]
        assert cert_dict(r.client_cert) == o["client_cert"]


def test_mixed_capture_counts_dicom_and_tls_side_by_side():
    truth_path = TLS_DIR / "tls_mixed.truth.json"
    truth = truth_of(truth_path)
    pipe, records, assocs = analyze(pcap_of(truth_path))
    # The plain association on port 104 is followed as DICOM; the TLS ones are not.
    assert [(a.calling_ae.strip().decode(), a.outcome) for a in assocs] == [
        (d["calling_ae"], d["outcome"]) for d in truth["dicom"]]
    assert len(records) == len(truth["connections"])
    table = render_table(pipe.store)
    assert "TLS SERVER" in table and "198.18.0.1:2762" in table
    row = next(line for line in table.splitlines() if line.startswith("198.18.0.1:2762"))
    established = sum(c["outcome"] == "established" for c in truth["connections"])
    assert f" {len(truth['connections'])} " in row and f" {established} " in row


def test_event_records_have_no_key_material_and_round_trip():
    _, records, _ = analyze(TLS_DIR / "tls_mixed.pcap")
    for r in records:
        rec = json.loads(record_json(tls_record(r, SiteMap(SITES))))
        assert rec["event"] == "tls-connection" and rec["site"] == "remote-site"
        assert set(rec) <= {"event", "client", "server", "site", "start", "end", "outcome", "offered_versions", "sni",
                            "cipher_suites_offered", "version", "cipher", "resumed", "handshake_seconds", "failure",
                            "alert", "server_certificate", "client_certificate", "application_bytes"}
        for role in ("server_certificate", "client_certificate"):
            if role in rec:
                assert set(rec[role]) == {"subject_cn", "subject_o", "issuer_cn", "issuer_o", "not_after",
                                          "not_after_utc"}


def test_cli_json_and_workers_agree():
    pcap = str(TLS_DIR / "tls_mixed.pcap")
    one = subprocess.run(["dicom-probe", "analyze", "-q", "--format", "json", pcap], capture_output=True, text=True,
                         check=True).stdout
    two = subprocess.run(["dicom-probe", "analyze", "-q", "--format", "json", "--workers", "2", pcap],
                         capture_output=True, text=True, check=True).stdout
    key = lambda line: (json.loads(line).get("start") or 0, line)  # noqa: E731
    assert sorted(one.splitlines(), key=key) == sorted(two.splitlines(), key=key)
    tls_lines = [json.loads(x) for x in one.splitlines() if '"tls-connection"' in x]
    assert len(tls_lines) == len(truth_of(TLS_DIR / "tls_mixed.truth.json")["connections"])
    prom1 = subprocess.run(["dicom-probe", "analyze", "-q", "--format", "prom", pcap], capture_output=True, text=True,
                           check=True).stdout
    prom2 = subprocess.run(["dicom-probe", "analyze", "-q", "--format", "prom", "--workers", "2", pcap],
                           capture_output=True, text=True, check=True).stdout
    assert prom1 == prom2 and "dicom_tls_handshake_failures_total{" in prom1


def test_tls_off_or_other_port():
    pcap = TLS_DIR / "tls12_pynetdicom.pcap"
    pipe, records, _ = analyze(pcap, "tls_ports: []")
    assert records == [] and not pipe.store.values["dicom_tls_connections_total"]
    # --tls-port: the same capture seen on a port given on the command line.
    cfg = load(None).with_tls_ports([4242])
    assert cfg.tls_ports == [2762, 4242] and 4242 in cfg.flow_settings().tls_ports


def test_config_rejects_a_port_in_both_lists():
    with pytest.raises(ConfigError) as e:
        parse("ports: [104, 2762]\ntls_ports: [2762]")
    assert "tls_ports" in str(e.value) and "2762" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse("tls_ports: [70000]")
    assert "tls_ports" in str(e.value)


@pytest.mark.parametrize("seed", range(12))
def test_lost_frames_never_give_a_wrong_outcome(seed, tmp_path):
    """Frames removed at random: each connection ends as the peers said, or incomplete -- or, when a
    frame carrying the deciding alert was lost, as a TCP-level failure; never established when it
    failed, never failed with another alert."""
    truth_path = TLS_DIR / "tls_mixed.truth.json"
    truth = truth_of(truth_path)
    frames, linktype = capture_edit.read(pcap_of(truth_path))
    rng = random.Random(seed)
    kept = [f for f in frames if f.tcp is None or not f.payload or rng.random() > 0.08]
    damaged = capture_edit.write(tmp_path / "lossy.pcap", kept, linktype)
    _, records, _ = analyze(damaged)
    got = by_port(records)
    for conn in truth["connections"]:
        r = got.get(conn["client_port"])
        if r is None:
            continue  # every payload frame of it lost
        if r.outcome == "established":
            assert conn["outcome"] == "established"
        elif r.outcome == "failed":
            failure, _ = expected_failure(conn)
            assert conn["outcome"] == "failed" or r.failure in ("tcp-close", "tcp-reset", "timeout"), r
            if r.failure not in ("tcp-close", "tcp-reset", "timeout", "not-tls") and failure is not None:
                assert r.failure == failure
        else:
            assert r.outcome == "incomplete"


def test_label_values_are_capped():
    store = MetricStore()
    m = TlsMetrics(store, SiteMap(), max_values=10)
    for i in range(1000):
        rec = T.TlsRecord(client=f"198.18.1.{i % 250}:{40000 + i}", server=f"198.18.{i // 250}.{i % 250}:2762",
                          start_ts=1.0)
        rec.outcome, rec.failure, rec.failure_sent_by = "failed", "tcp-reset", "client"
        m.handle(T.TlsEnded(rec))
    m.sync_label_counters()
    servers = {k[1] for k in store.values["dicom_tls_connections_total"]}
    assert len(servers) == 11 and "(overflow)" in servers
    assert store.get("dicom_probe_tls_label_overflow_total") == 990
    assert sum(store.values["dicom_tls_connections_total"].values()) == 1000


def test_daemon_writes_one_event_record_per_tls_connection(tmp_path):
    """`dicom-probe run --read` (the daemon, 2 workers): the event log holds one tls-connection record
    per connection, next to the plain association's record, and /metrics-equivalent counters agree."""
    events = tmp_path / "events.jsonl"
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(f"event_log: {{destination: {events}}}\nworkers: 2\nhttp: {{listen: '127.0.0.1:0'}}\n"
                   "sites: {remote-site: [198.18.0.2/32]}\n")
    subprocess.run(["dicom-probe", "run", "--config", str(cfg), "--read", str(TLS_DIR / "tls_mixed.pcap"),
                    "--exit-when-done"], check=True, capture_output=True, timeout=60)
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    tls_lines = [x for x in lines if x.get("event") == "tls-connection"]
    truth = truth_of(TLS_DIR / "tls_mixed.truth.json")
    assert len(tls_lines) == len(truth["connections"])
    assert sorted((x["outcome"], (x.get("failure") or {}).get("reason")) for x in tls_lines) == sorted(
        (c["outcome"], expected_failure(c)[0]) for c in truth["connections"])
    assert all(x["site"] == "remote-site" for x in tls_lines)
    assert [x.get("calling_ae") for x in lines if "calling_ae" in x] == ["PLAIN_ECHO_SCU"]


def test_status_page_and_html_report_list_failed_handshakes():
    from probe.statuspage import render_report, render_status

    pipe, records, _ = analyze(TLS_DIR / "tls_mixed.pcap")
    recs = [tls_record(r, SiteMap(SITES)) for r in records]
    page = render_status(pipe.store, recs, {"workers": 1, "workers_alive": 1}, now=max(r.start_ts for r in records)).decode()
    report = render_report(pipe.store, recs, title="t", sources=["tls_mixed.pcap"]).decode()
    for html in (page, report):
        assert "DICOM over TLS" in html and "198.18.0.1:2762" in html
        assert "Failed TLS handshakes" in html
        for reason in ("unknown_ca", "protocol_version", "handshake_failure"):
            assert reason in html
        assert "pacs.example.test" in html  # the server certificate's subject
