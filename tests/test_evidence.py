"""Evidence pcaps (issue 6): rejected/aborted associations as small captures with no patient data."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import dpkt
import pytest

from probe.config import parse
from probe.evidence import EvidenceSettings, EvidenceWriter, zero_data_values
from probe.offline import analyze_files

CAPTURES = Path(__file__).parent / "fixtures" / "captures"
TSHARK = shutil.which("tshark")


def frames_of(name: str):
    with open(CAPTURES / name, "rb") as f:
        r = dpkt.pcap.Reader(f)
        return [(ts, bytes(buf)) for ts, buf in r], r.datalink()


def run(tmp_path, capture: str, ports, **evidence):
    ev = {"directory": str(tmp_path), **evidence}
    cfg = parse("evidence: " + str(ev).replace("'", '"'))
    pipe = analyze_files([str(CAPTURES / capture)], ports, cfg=cfg)
    return pipe, sorted(tmp_path.glob("*.pcap"))


@pytest.mark.skipif(TSHARK is None, reason="tshark not installed")
def test_rejects_become_evidence_that_tshark_reads_back(tmp_path):
    pipe, files = run(tmp_path, "reject_calling_pynetdicom.pcap", [11112])
    assert len(files) == 5 and pipe.store.get("dicom_probe_evidence_files_total") == 5
    for f in files:
        assert "calling-ae-title-not-recognized" in f.name and "REJ_CALLING_SCP" in f.name
        out = subprocess.run([TSHARK, "-r", str(f), "-d", "tcp.port==11112,dicom", "-T", "fields",
                              "-e", "dicom.assoc.reject.reason", "-e", "dicom.assoc.item.type"],
                             capture_output=True, text=True, check=True).stdout
        assert "3" in {line.split("\t")[0] for line in out.splitlines()}  # the RJ, reason 3
        assert len(list(dpkt.pcap.Reader(open(f, "rb")))) <= 64


def test_data_values_are_zeroed_but_command_sets_kept():
    frames, linktype = frames_of("dimse_store_mixed.pcap")
    raw = b"".join(f for _ts, f in frames)
    assert b"SENTINEL" in raw  # the images carry sentinel patient data
    clean = zero_data_values(frames, linktype)
    assert len(clean) == len(frames)
    joined = b"".join(f for _ts, f in clean)
    assert b"SENTINEL" not in joined and b".999999." not in joined
    assert b"PACS" in joined or b"STORE_MIX" in joined  # the association exchange is kept
    # Command sets survive: every C-STORE-RQ (command field 0x0001 in (0000,0100)) is still there.
    assert joined.count(b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x00") == raw.count(b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x00")


def test_aborts_become_evidence_without_patient_data(tmp_path):
    pipe, files = run(tmp_path, "dimse_unanswered.pcap", [11112])
    assert files and all("abort" in f.name for f in files)
    for f in files:
        assert b"SENTINEL" not in f.read_bytes()


def test_caps_on_files_and_rate(tmp_path):
    _pipe, files = run(tmp_path, "seed_incident.pcap", [104], max_files=3)
    assert len(files) == 3  # the oldest went first
    clock = [0.0]
    w = EvidenceWriter(EvidenceSettings(directory=str(tmp_path / "r"), per_minute=2), clock=lambda: clock[0])
    (tmp_path / "r").mkdir()
    frames, _ = frames_of("reject_calling_pynetdicom.pcap")
    assert w.write(frames[:5], "A", "B", "x") and w.write(frames[:5], "A", "B", "x")
    assert w.write(frames[:5], "A", "B", "x") is None and w.suppressed == {"rate": 1}
    clock[0] = 61.0
    assert w.write(frames[:5], "A/../..", "B", "x")  # names are sanitised
    assert all("/" not in p.name[1:] and ".." not in p.name for p in (tmp_path / "r").iterdir())


def test_write_errors_are_counted_not_raised(tmp_path):
    w = EvidenceWriter(EvidenceSettings(directory=str(tmp_path / "missing")))
    frames, _ = frames_of("reject_calling_pynetdicom.pcap")
    assert w.write(frames[:3], "A", "B", "x") is None and w.suppressed == {"write-error": 1}
