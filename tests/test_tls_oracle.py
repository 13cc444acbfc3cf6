"""DICOM-over-TLS fixtures: every committed capture against the peers' own record, via tshark.

The captures and their truth files are made by tests/fixtures/record_tls_fixtures.py with real
DCMTK and pynetdicom/OpenSSL peers (its docstring documents the truth format).  These tests prove
the fixtures - the truth agrees with an independent reading of the wire (tests/tls_oracle.py) -
and do not involve the probe.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tls_oracle
import tshark_oracle

CAPTURES = Path(__file__).parent / "fixtures" / "captures"
# captures/tls/ is where the recorder writes them; captures/tls_* is accepted too
TRUTHS = sorted(set(CAPTURES.glob("tls/tls*.truth.json")) | set(CAPTURES.glob("tls_*.truth.json")))

CERT_KEYS = {"subject_cn", "subject_o", "issuer_cn", "issuer_o", "not_after"}
CONN_KEYS = {"client", "client_port", "server", "outcome", "version", "cipher_iana", "cipher_code",
             "cipher_openssl", "sni", "client_hello", "alert", "alert_code", "alert_sent_by",
             "encrypted_alert", "server_cert", "client_cert", "server_chain", "client_chain",
             "inner", "peer_report"}

needs_tshark = pytest.mark.skipif(not tls_oracle.tshark_available(), reason="tshark not installed")


def _ids(p: Path) -> str:
    return p.name.removesuffix(".truth.json")


def _load(truth_path: Path):
    truth = json.loads(truth_path.read_text())
    return truth, truth_path.parent / truth["capture_file"]


def test_there_are_tls_fixtures():
    assert len(TRUTHS) >= 11, "the recorded TLS captures are missing"


@pytest.mark.parametrize("truth_path", TRUTHS, ids=_ids)
def test_truth_is_well_formed(truth_path):
    truth, pcap = _load(truth_path)
    assert pcap.exists() and pcap.stat().st_size > 24
    assert truth["tls_ports"] == [2762]
    assert truth["connections"]
    for c in truth["connections"]:
        assert set(c) == CONN_KEYS, set(c) ^ CONN_KEYS
        assert c["outcome"] in ("established", "failed")
        assert c["server"] == "198.18.0.1:2762" and c["client"] == "198.18.0.2"
        if c["outcome"] == "established":
            assert c["version"] and c["cipher_code"] and c["alert"] is None and c["alert_sent_by"] is None
        if c["alert"] is not None:
            assert c["alert_sent_by"] in ("client", "server") and isinstance(c["alert_code"], int)
        if c["encrypted_alert"] is not None:
            assert c["alert"] is None and c["version"] == "TLSv1.3" and c["alert_sent_by"]
        for who in ("server", "client"):
            cert, chain = c[f"{who}_cert"], c[f"{who}_chain"]
            assert (cert is None) == (chain is None)
            if cert is not None:
                assert c["version"] not in (None, "TLSv1.3")  # certificates are encrypted in TLS 1.3
                assert chain[0] == cert
                for x in chain:
                    assert set(x) == CERT_KEYS and isinstance(x["not_after"], int)
    if truth["dicom_ports"]:
        assert truth["dicom"], "plain DICOM ports without associations"


def test_fixtures_cover_the_intended_cases():
    conns = [c for p in TRUTHS for c in _load(p)[0]["connections"]]
    established = {c["version"] for c in conns if c["outcome"] == "established"}
    assert {"TLSv1.1", "TLSv1.2", "TLSv1.3"} <= established
    clear = {(c["alert"], c["alert_sent_by"]) for c in conns if c["alert"]}
    assert {("unknown_ca", "client"), ("certificate_expired", "client"), ("protocol_version", "server"),
            ("handshake_failure", "server")} <= clear
    assert any(c["encrypted_alert"] and c["alert_sent_by"] for c in conns), "no encrypted TLS 1.3 alert"
    assert any(not c["client_hello"] for c in conns), "no plain client on the TLS port"
    assert any(c["server_cert"] and c["server_cert"]["not_after"] < 1600000000 for c in conns), "no expired cert"
    assert any(c["client_cert"] and c["client_cert"]["not_after"] >= 2524608000 for c in conns), \
        "no certificate with a GeneralizedTime notAfter (>= 2050)"


@needs_tshark
@pytest.mark.parametrize("truth_path", TRUTHS, ids=_ids)
def test_oracle_agrees_with_truth(truth_path):
    truth, pcap = _load(truth_path)
    got = tls_oracle.tls_connections(str(pcap), truth["tls_ports"])
    assert tls_oracle.compare(truth, got) == []


@needs_tshark
def test_oracle_notices_a_wrong_truth():
    """compare() is not vacuous: a truth with one field changed is caught."""
    path = next(p for p in TRUTHS if _ids(p) == "tls_mixed")
    truth, pcap = _load(path)
    got = tls_oracle.tls_connections(str(pcap), truth["tls_ports"])
    assert tls_oracle.compare(truth, got) == []
    changes = [("outcome", "established"), ("alert_sent_by", "server"), ("version", "TLSv1.3"),
               ("cipher_code", 4866), ("sni", None), ("server_cert", None)]
    failed = next(i for i, c in enumerate(truth["connections"]) if c["alert"] == "unknown_ca")
    for field, value in changes:
        bad = json.loads(json.dumps(truth))
        bad["connections"][failed][field] = value
        problems = tls_oracle.compare(bad, got)
        assert len(problems) == 1 and f" {field}: " in problems[0], (field, problems)
    bad = json.loads(json.dumps(truth))
    bad["connections"].pop()
    assert tls_oracle.compare(bad, got)


@needs_tshark
@pytest.mark.parametrize("truth_path", [p for p in TRUTHS if json.loads(p.read_text())["dicom_ports"]], ids=_ids)
def test_plain_dicom_next_to_tls_matches_tshark(truth_path):
    truth, pcap = _load(truth_path)
    want = tshark_oracle.counts_from_truth({"associations": truth["dicom"]})
    assert tshark_oracle.association_counts(str(pcap), truth["dicom_ports"]) == want
    # decoding the TLS port as DICOM as well finds nothing more: no DICOM in clear there
    both = truth["dicom_ports"] + truth["tls_ports"]
    assert tshark_oracle.association_counts(str(pcap), both) == want


@pytest.mark.parametrize("text, want", [
    ("2036-01-01 00:00:00 (UTC)", 2082758400),               # UTCTime as tshark 4.0 shows it
    ("Jan  1, 2051 00:00:00.000000000 UTC", 2556144000),     # GeneralizedTime
    ("Dec 31, 2049 23:59:59.000000000 UTC", 2524607999),
])
def test_x509_time_text(text, want):
    assert tls_oracle.parse_x509_time(text) == want
