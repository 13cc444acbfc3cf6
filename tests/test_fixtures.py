"""Real traffic: every committed capture against the peers' own record and against tshark.

Captures and their truth files are made by tests/fixtures/record_fixtures.py with DCMTK and
pynetdicom peers (see tests/fixtures/README.md).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import tshark_oracle
from probe.offline import analyze_files
from probe.report import association_record

CAPTURES = Path(__file__).parent / "fixtures" / "captures"
TRUTHS = sorted(CAPTURES.glob("*.truth.json"))


def _load(truth_path: Path):
    truth = json.loads(truth_path.read_text())
    pcap = CAPTURES / truth.get("capture_file", truth_path.name.replace(".truth.json", ".pcap"))
    records: list[dict] = []
    pipe = analyze_files([str(pcap)], truth["server_ports"], on_association=lambda a: records.append(association_record(a)))
    return truth, pcap, pipe, records


def _key(a: dict) -> tuple:
    reject = a.get("reject") or {}
    abort = a.get("abort") or {}
    return (
        a["calling_ae"], a["called_ae"], a["outcome"],
        reject.get("result"), reject.get("source"), reject.get("reason"),
        abort.get("by"), abort.get("source"), abort.get("reason"),
    )


def test_there_are_fixtures():
    assert len(TRUTHS) >= 3, "the recorded captures are missing"


@pytest.mark.parametrize("truth_path", TRUTHS, ids=lambda p: p.name.replace(".truth.json", ""))
def test_associations_match_peers_record(truth_path):
    truth, _pcap, pipe, records = _load(truth_path)
    expected = Counter(_key(a) for a in truth["associations"])
    got = Counter(_key(r) for r in records)
    assert got == expected
    # Nothing in these clean captures is lost, malformed or out of place.
    store = pipe.store
    assert store.get("dicom_probe_stream_gaps_total") == 0
    assert sum(store.values["dicom_probe_pdu_errors_total"].values()) == 0
    assert sum(store.values["dicom_probe_protocol_violations_total"].values()) == 0
    assert store.get("dicom_associations_active") == 0
    for r in records:
        assert r["rq_seen"] is True
        if r["outcome"] in ("released", "rejected", "ended-without-release") or (r.get("abort") or {}).get("phase") == "established":
            assert r["setup_seconds"] is not None and 0 <= r["setup_seconds"] < 30


@pytest.mark.parametrize("truth_path", TRUTHS, ids=lambda p: p.name.replace(".truth.json", ""))
def test_exported_counts_match_peers_record(truth_path):
    truth, _pcap, pipe, _records = _load(truth_path)
    store = pipe.store
    for (calling, called), want in tshark_oracle.counts_from_truth(truth).items():
        pair = {"calling_ae": calling, "called_ae": called}
        assert store.total("dicom_association_requests_total", **pair) == want["requests"], (calling, called)
        assert store.total("dicom_association_accepts_total", **pair) == want["accepts"], (calling, called)
        assert store.total("dicom_association_releases_total", **pair) == want["releases"], (calling, called)
        for (result, source, reason), n in want["rejects"].items():
            assert store.total("dicom_association_rejects_total", result=result, source=source, reason=reason, **pair) == n
        assert store.total("dicom_association_rejects_total", **pair) == sum(want["rejects"].values())
    outcomes = Counter(a["outcome"] for a in truth["associations"])
    assert store.total("dicom_association_no_response_total") == outcomes["no-response"]
    assert store.total("dicom_association_closed_without_release_total") == outcomes["ended-without-release"]
    assert store.total("dicom_association_aborts_total") == outcomes["aborted"]
    # Setup time is observed for every RQ answered with AC or RJ.
    answered = sum(sum(h[0]) for h in store.values["dicom_association_setup_seconds"].values())
    assert answered == store.total("dicom_association_accepts_total") + store.total("dicom_association_rejects_total")


@pytest.mark.skipif(not tshark_oracle.tshark_available(), reason="tshark not installed")
@pytest.mark.parametrize("truth_path", TRUTHS, ids=lambda p: p.name.replace(".truth.json", ""))
def test_counts_match_tshark(truth_path):
    truth, pcap, pipe, _records = _load(truth_path)
    oracle = tshark_oracle.association_counts(str(pcap), truth["server_ports"])
    store = pipe.store
    for (calling, called), want in oracle.items():
        if calling is None:
            continue  # PDUs tshark could not attach to an RQ
        pair = {"calling_ae": calling, "called_ae": called}
        assert store.total("dicom_association_requests_total", **pair) == want["requests"]
        assert store.total("dicom_association_accepts_total", **pair) == want["accepts"]
        assert store.total("dicom_association_releases_total", **pair) == want["releases"]
        for (result, source, reason), n in want["rejects"].items():
            assert store.total("dicom_association_rejects_total", result=result, source=source, reason=reason, **pair) == n


# -- DIMSE (PS3.7) -----------------------------------------------------------------------------

DIMSE_TRUTHS = [p for p in TRUTHS if "operations" in json.loads(p.read_text())["associations"][0]]


def _ops_key(a: dict) -> tuple:
    """One association's DIMSE summary in a comparable form (truth or probe record)."""
    ops = {}
    for name, op in (a.get("operations") or {}).items():
        ops[name] = (op["requests"], tuple(sorted(op["responses"].items())))
    subs = {name: tuple(sorted(v.items())) for name, v in (a.get("suboperations") or {}).items()}
    unanswered = dict(a.get("unanswered") or {})
    return a["calling_ae"], a["called_ae"], tuple(sorted(ops.items())), tuple(sorted(subs.items())), tuple(sorted(unanswered.items()))


def _probe_ops(rec: dict) -> dict:
    out = dict(rec)
    ops = rec.get("operations") or {}
    out["suboperations"] = {n: op["suboperations"] for n, op in ops.items() if "suboperations" in op}
    out["unanswered"] = {n: op["unanswered"] for n, op in ops.items() if op.get("unanswered")}
    return out


def test_there_are_dimse_fixtures():
    assert len(DIMSE_TRUTHS) >= 7


@pytest.mark.parametrize("truth_path", DIMSE_TRUTHS, ids=lambda p: p.name.replace(".truth.json", ""))
def test_dimse_operations_match_peers_record(truth_path):
    truth, _pcap, pipe, records = _load(truth_path)
    expected = Counter(_ops_key(a) for a in truth["associations"])
    got = Counter(_ops_key(_probe_ops(r)) for r in records)
    assert got == expected
    assert sum(pipe.store.values["dicom_probe_dimse_errors_total"].values()) == 0
    # The exported counters say the same, per pair and command.
    store = pipe.store
    for a in truth["associations"]:
        pair = {"calling_ae": a["calling_ae"], "called_ae": a["called_ae"]}
        for name, op in a["operations"].items():
            assert store.total("dicom_dimse_requests_total", command=name, **pair) >= op["requests"]
            for status, n in op["responses"].items():
                assert store.total("dicom_dimse_responses_total", command=name, status=status, **pair) >= n


@pytest.mark.parametrize("truth_path", DIMSE_TRUTHS, ids=lambda p: p.name.replace(".truth.json", ""))
def test_dimse_counters_and_response_times(truth_path):
    truth, _pcap, pipe, records = _load(truth_path)
    store = pipe.store
    want = tshark_oracle.dimse_counts_from_truth(truth)
    for (calling, called), commands in want.items():
        pair = {"calling_ae": calling, "called_ae": called}
        for name, op in commands.items():
            assert store.total("dicom_dimse_requests_total", command=name, **pair) == op["requests"]
            for status, n in op["responses"].items():
                assert store.total("dicom_dimse_responses_total", command=name, status=status, **pair) == n
    # Every final response to a seen request is timed, from the capture's own timestamps.
    timed = sum(sum(h[0]) for h in store.values["dicom_dimse_response_seconds"].values())
    finals = sum(n for (_c, _d, _s, _cmd, cls, _st), n in store.values["dicom_dimse_responses_total"].items()
                 if cls != "pending")
    unmatched = store.total("dicom_dimse_unmatched_responses_total")
    assert timed == finals - unmatched
    for r in records:
        for op in (r.get("operations") or {}).values():
            t = op.get("response_seconds")
            if t:
                assert 0 <= t["min"] <= t["median"] <= t["max"] <= r["end"] - r["start"] + 1e-6


@pytest.mark.skipif(not tshark_oracle.tshark_available(), reason="tshark not installed")
@pytest.mark.parametrize("truth_path", DIMSE_TRUTHS, ids=lambda p: p.name.replace(".truth.json", ""))
def test_dimse_counts_match_tshark(truth_path):
    truth, pcap, pipe, _records = _load(truth_path)
    oracle = tshark_oracle.dimse_counts(str(pcap), truth["server_ports"])
    store = pipe.store
    for (calling, called), commands in oracle.items():
        pair = {"calling_ae": calling, "called_ae": called}
        for name, op in commands.items():
            assert store.total("dicom_dimse_requests_total", command=name, **pair) == op["requests"]
            for status, n in op["responses"].items():
                assert store.total("dicom_dimse_responses_total", command=name, status=status, **pair) == n


def test_move_to_unknown_destination_is_a801_with_suboperations():
    _truth, _pcap, pipe, _records = _load(CAPTURES / "dimse_move.truth.json")
    s = pipe.store
    assert s.total("dicom_dimse_responses_total", command="C-MOVE", status="A801", status_class="failure") == 1
    assert s.total("dicom_dimse_suboperations_total", command="C-MOVE", outcome="completed") == 4


# -- patient data never leaves the probe ----------------------------------------------------------

SENTINELS = ("SENTINEL^PHI^NAME", "SENTINEL-PHI-ID-0001", ".999999.", "SENTINEL")


@pytest.mark.parametrize("fmt", ["table", "json", "prom"])
def test_no_patient_data_in_any_output(fmt):
    import subprocess
    import sys

    for truth_path in DIMSE_TRUTHS:
        truth = json.loads(truth_path.read_text())
        pcap = CAPTURES / truth["capture_file"]
        raw = pcap.read_bytes()
        assert b"SENTINEL" in raw  # the capture does carry patient data...
        args = [sys.executable, "-m", "probe", "analyze", str(pcap), "--format", fmt]
        for port in truth["server_ports"]:
            args += ["--port", str(port)]
        p = subprocess.run(args, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        for s in SENTINELS:  # ...and none of it comes out
            assert s not in p.stdout and s not in p.stderr, (truth_path.name, fmt, s)
