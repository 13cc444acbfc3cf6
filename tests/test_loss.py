"""Loss, duplication, reordering and mid-stream starts, derived from real captures.

Every association whose control PDUs survive is counted exactly; the rest end ``incomplete``, never
with a wrong outcome; gaps and resynchronisations show in the health metrics.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from capture_edit import read, write
from probe.offline import analyze_files
from probe.report import association_record

CAPTURES = Path(__file__).parent / "fixtures" / "captures"
STORE = CAPTURES / "store_dcmtk_veth.pcap"  # storescu -> storescp, port 104, 3 files, released
REJECTS = CAPTURES / "reject_calling_pynetdicom.pcap"  # 5 rejects + 1 released, port 11112


def run(path, port):
    records = []
    pipe = analyze_files([str(path)], [port], on_association=lambda a: records.append(association_record(a)))
    return pipe.store, records


def bulk_segments(frames):
    """Client data segments of full size after the association was accepted (inside C-STORE data)."""
    client = next(f.src for f in frames if f.tcp is not None and f.tcp.dport == 104)
    full = [i for i, f in enumerate(frames) if f.src == client and len(f.payload) == 1448]
    return full[10:-2]  # the first ones carry the A-ASSOCIATE-RQ


def test_one_lost_data_segment_keeps_framing(tmp_path):
    frames, lt = read(STORE)
    i = bulk_segments(frames)[40]
    damaged = write(tmp_path / "lost1.pcap", frames[:i] + frames[i + 1 :], lt)
    store, recs = run(damaged, 104)
    assert [r["outcome"] for r in recs] == ["released"]
    assert store.get("dicom_probe_stream_gaps_total") == 1
    assert store.get("dicom_probe_stream_gap_bytes_total") == 1448
    assert store.get("dicom_probe_resyncs_total") == 0  # the hole lay inside a data PDV: skipped by length
    assert store.total("dicom_association_releases_total", calling_ae="STORE_VETH_SCU") == 1


@pytest.mark.parametrize("rate,seed", [(0.01, 1), (0.05, 2), (0.05, 3), (0.20, 4)])
def test_random_loss_inside_bulk_data(tmp_path, rate, seed):
    frames, lt = read(STORE)
    rng = random.Random(seed)
    drop = {i for i in bulk_segments(frames) if rng.random() < rate}
    damaged = write(tmp_path / "lossy.pcap", [f for i, f in enumerate(frames) if i not in drop], lt)
    store, recs = run(damaged, 104)
    assert [r["outcome"] for r in recs] == ["released"]  # RQ, AC, release all survived
    assert store.get("dicom_probe_stream_gaps_total") >= 1 if drop else True
    assert store.total("dicom_association_requests_total") == 1
    assert store.total("dicom_association_accepts_total") == 1
    assert store.total("dicom_association_releases_total") == 1


def test_duplicates_and_reordering_change_nothing(tmp_path):
    frames, lt = read(STORE)
    clean_store, clean = run(STORE, 104)
    rng = random.Random(7)
    edited = []
    for f in frames:
        edited.append(f)
        if f.payload and rng.random() < 0.1:
            edited.append(f)  # duplicated (a retransmission seen twice)
    for _ in range(30):  # swap neighbours
        i = rng.randrange(1, len(edited) - 1)
        edited[i], edited[i + 1] = edited[i + 1], edited[i]
    store, recs = run(write(tmp_path / "dup.pcap", edited, lt), 104)
    assert [r["outcome"] for r in recs] == [r["outcome"] for r in clean] == ["released"]
    assert store.get("dicom_probe_stream_gaps_total") == 0
    assert store.get("dicom_probe_retransmitted_segments_total") > 0
    for fam in ("dicom_association_requests_total", "dicom_association_accepts_total", "dicom_association_releases_total"):
        assert store.values[fam] == clean_store.values[fam]


def test_capture_starting_mid_association(tmp_path):
    frames, lt = read(STORE)
    start = bulk_segments(frames)[5] + 3  # well inside the first C-STORE data, not on a PDU boundary
    store, recs = run(write(tmp_path / "mid.pcap", frames[start:], lt), 104)
    (r,) = recs
    assert r["outcome"] == "released" and r["rq_seen"] is False
    assert r["calling_ae"] is None and r["client"].endswith(":" + r["client"].split(":")[-1])
    assert r["server"].endswith(":104")  # roles from the configured port
    assert store.total("dicom_association_requests_total") == 0
    assert store.get("dicom_association_releases_total", ("(not-seen)", "(not-seen)", "other")) == 1
    assert store.get("dicom_probe_resyncs_total") >= 1


def test_lost_reject_is_incomplete_not_no_response(tmp_path):
    frames, lt = read(REJECTS)
    rj = [i for i, f in enumerate(frames) if f.payload[:1] == b"\x03" and len(f.payload) == 10]
    assert len(rj) == 5
    damaged = write(tmp_path / "norj.pcap", [f for i, f in enumerate(frames) if i != rj[0]], lt)
    store, recs = run(damaged, 11112)
    outcomes = sorted(r["outcome"] for r in recs)
    assert outcomes == ["incomplete", "rejected", "rejected", "rejected", "rejected", "released"]
    assert store.total("dicom_association_no_response_total") == 0
    assert store.total("dicom_association_rejects_total") == 4


def test_truncated_frames_are_counted_and_become_gaps(tmp_path):
    frames, lt = read(STORE)
    i = bulk_segments(frames)[20]
    frames[i].buf = frames[i].buf[:200]  # as if captured with a short snap length
    store, recs = run(write(tmp_path / "snap.pcap", frames, lt), 104)
    assert store.get("dicom_probe_frames_skipped_total", ("truncated",)) == 1
    assert [r["outcome"] for r in recs] == ["released"]
    assert store.get("dicom_probe_stream_gaps_total") == 1
