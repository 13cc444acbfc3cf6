"""DIMSE command sets (PS3.7 §9, §10, Annex C, Annex E): decoding, status classes, matching."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from probe.dicom import dimse as D

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


def element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, elem, len(value)) + value


def us(elem: int, v: int) -> bytes:
    return element(elem, struct.pack("<H", v))


def ui(elem: int, uid: str) -> bytes:
    raw = uid.encode()
    return element(elem, raw + (b"\x00" if len(raw) % 2 else b""))


def command(field: int, **kw) -> bytes:
    body = b""
    if "sop" in kw:
        body += ui(0x0002, kw["sop"])
    body += us(0x0100, field)
    if "mid" in kw:
        body += us(0x0110, kw["mid"])
    if "rid" in kw:
        body += us(0x0120, kw["rid"])
    if "dest" in kw:
        body += element(0x0600, kw["dest"].ljust(16).encode())
    body += us(0x0800, kw.get("dataset", 0x0101))
    if "status" in kw:
        body += us(0x0900, kw["status"])
    if "comment" in kw:
        body += element(0x0902, kw["comment"].encode())
    if "instance" in kw:
        body += ui(0x1000, kw["instance"])
    for elem, key in ((0x1020, "remaining"), (0x1021, "completed"), (0x1022, "failed"), (0x1023, "warning")):
        if key in kw:
            body += us(elem, kw[key])
    return element(0x0000, struct.pack("<I", len(body))) + body


def test_our_encoding_matches_pydicom():
    ds = Dataset()
    ds.AffectedSOPClassUID = CT
    ds.CommandField = 0x0001
    ds.MessageID = 7
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = "1.2.3.4.5"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    cmd = D.decode_command(fp.getvalue())
    assert (cmd.command_field, cmd.message_id, cmd.affected_sop_class, cmd.data_set_type) == (1, 7, CT, 0)
    assert cmd.name == "C-STORE" and not cmd.is_response


def test_decode_keeps_only_safe_fields():
    raw = command(0x8001, sop=CT, rid=3, status=0xA700, comment="SENTINEL^PATIENT out of memory",
                  instance="1.2.826.0.1.SENTINEL.99")
    cmd = D.decode_command(raw)
    assert cmd.is_response and cmd.name == "C-STORE" and cmd.status == 0xA700 and cmd.responded_id == 3
    assert "SENTINEL" not in repr(cmd)


def test_move_response_fields():
    cmd = D.decode_command(command(0x8021, sop=STUDY_ROOT_MOVE, rid=1, status=0xA801, completed=0, failed=2,
                                   warning=1, remaining=0))
    assert (cmd.name, cmd.status, cmd.completed, cmd.failed, cmd.warning, cmd.remaining) == ("C-MOVE", 0xA801, 0, 2, 1, 0)
    rq = D.decode_command(command(0x0021, sop=STUDY_ROOT_MOVE, mid=1, dest="NOWHERE"))
    assert rq.move_destination == "NOWHERE"


@pytest.mark.parametrize("raw,kind", [
    (command(0x0030, mid=1) + b"\x00\x00\x10", "command-truncated"),
    (command(0x0030, mid=1)[:-1], "command-element-overrun"),
    (struct.pack("<HHI", 0, 0x0100, 50) + b"\x30\x00", "command-element-overrun"),
    (struct.pack("<HHI", 8, 0x0016, 2) + b"AB", "command-not-group-0000"),
    (element(0x0100, b"\x30\x00\x00\x00"), "command-bad-value-length"),
    (us(0x0110, 5), "command-field-missing"),
    (b"", "command-field-missing"),
])
def test_malformed_command_sets(raw, kind):
    with pytest.raises(D.CommandError) as e:
        D.decode_command(raw)
    assert e.value.kind == kind


def test_unknown_tags_are_skipped():
    raw = command(0x0030, mid=2) + element(0x7777, b"whatever")
    assert D.decode_command(raw).message_id == 2


@pytest.mark.parametrize("status,cls", [
    (0x0000, "success"), (0xFF00, "pending"), (0xFF01, "pending"), (0xFE00, "cancel"),
    (0x0001, "warning"), (0x0107, "warning"), (0x0116, "warning"), (0xB000, "warning"), (0xB007, "warning"),
    (0xA700, "failure"), (0xA801, "failure"), (0xC000, "failure"), (0x0122, "failure"), (0x0210, "failure"),
    (0x0211, "failure"), (0x0110, "failure"), (0xFFFF, "failure"),
])
def test_status_classes(status, cls):
    assert D.status_class(status) == cls


def test_status_code_is_four_upper_hex():
    assert D.status_code(0xa801) == "A801" and D.status_code(0) == "0000" and D.status_code(0x107) == "0107"


class Assoc:
    pass


def track():
    a = Assoc()
    return a, D.DimseTracker(a), []


def test_fragments_across_pdvs_and_contexts_are_joined():
    a, t, out = track()
    echo = command(0x0030, mid=1)
    store = command(0x0001, sop=CT, mid=2, dataset=0)
    t.fragment(True, 1, False, echo[:5], 1.0, out)
    t.fragment(True, 3, False, store[:9], 1.0, out)  # another context, interleaved
    t.fragment(True, 1, False, echo[5:20], 1.0, out)
    t.fragment(True, 3, True, store[9:], 1.1, out)
    t.fragment(True, 1, True, echo[20:], 1.2, out)
    assert [(type(n), n.command) for n in out] == [(D.DimseRequest, "C-STORE"), (D.DimseRequest, "C-ECHO")]
    t.fragment(False, 1, True, command(0x8030, rid=1, status=0), 1.5, out)
    resp = out[-1]
    assert isinstance(resp, D.DimseResponse) and resp.seconds == pytest.approx(0.3) and resp.matched


def test_pending_then_final_response_times_the_operation():
    a, t, out = track()
    t.fragment(True, 1, True, command(0x0020, mid=5, dataset=0), 10.0, out)
    for i in range(3):
        t.fragment(False, 1, True, command(0x8020, rid=5, status=0xFF00, dataset=0), 10.1 + i, out)
    t.fragment(False, 1, True, command(0x8020, rid=5, status=0x0000), 14.0, out)
    responses = [n for n in out if isinstance(n, D.DimseResponse)]
    assert [r.status_class for r in responses] == ["pending"] * 3 + ["success"]
    assert [r.seconds for r in responses[:3]] == [None] * 3 and responses[3].seconds == pytest.approx(4.0)
    assert t.stats["C-FIND"].responses == {"FF00": 3, "0000": 1}


def test_move_failure_with_suboperations():
    a, t, out = track()
    t.fragment(True, 1, True, command(0x0021, sop=STUDY_ROOT_MOVE, mid=1, dest="UNKNOWN_DEST", dataset=0), 1.0, out)
    t.fragment(False, 1, True, command(0x8021, rid=1, status=0xA801, completed=0, failed=3, warning=0), 1.2, out)
    sub = out[-1]
    assert isinstance(sub, D.SubOperations) and (sub.completed, sub.failed, sub.warning) == (0, 3, 0)
    assert out[-2].status_class == "failure"


def test_unmatched_response_is_counted_not_timed_and_unanswered_at_end():
    a, t, out = track()
    t.fragment(False, 1, True, command(0x8001, rid=99, status=0), 1.0, out)  # its request was before the capture
    t.fragment(True, 1, True, command(0x0001, sop=CT, mid=100, dataset=0), 2.0, out)
    t.finish(out)
    assert out[0].matched is False and out[0].seconds is None
    assert isinstance(out[-1], D.Unanswered) and out[-1].command == "C-STORE"


def test_cancel_is_recorded_on_its_operation():
    a, t, out = track()
    t.fragment(True, 1, True, command(0x0020, mid=4, dataset=0), 1.0, out)
    t.fragment(True, 1, True, command(0x0FFF, rid=4), 1.5, out)
    t.fragment(False, 1, True, command(0x8020, rid=4, status=0xFE00), 1.6, out)
    assert [n.command for n in out if isinstance(n, D.DimseRequest)] == ["C-FIND", "C-CANCEL"]
    assert out[-1].status_class == "cancel" and out[-1].seconds == pytest.approx(0.6)
    assert t.stats["C-FIND"].cancels == 1


def test_requests_from_the_acceptor_match_responses_from_the_requestor():
    # C-GET: the SCP sends C-STORE-RQs on the same association; the SCU answers them.
    a, t, out = track()
    t.fragment(True, 1, True, command(0x0010, mid=1, dataset=0), 1.0, out)
    t.fragment(False, 3, True, command(0x0001, sop=CT, mid=1, dataset=0), 1.1, out)  # same ID, other side
    t.fragment(True, 3, True, command(0x8001, rid=1, status=0), 1.3, out)
    t.fragment(False, 1, True, command(0x8010, rid=1, status=0, completed=1, failed=0, warning=0), 1.4, out)
    responses = [n for n in out if isinstance(n, D.DimseResponse)]
    assert [(r.command, r.matched, round(r.seconds, 3)) for r in responses] == [("C-STORE", True, 0.2), ("C-GET", True, 0.4)]


def test_mismatched_command_and_missing_status_and_unknown_field():
    a, t, out = track()
    t.fragment(True, 1, True, command(0x0030, mid=1), 1.0, out)
    t.fragment(False, 1, True, command(0x8020, rid=1, status=0), 1.1, out)  # a C-FIND-RSP to a C-ECHO
    t.fragment(False, 1, True, command(0x8030, rid=1), 1.2, out)  # no status
    t.fragment(True, 1, True, command(0x0042, mid=2), 1.3, out)
    errors = [n.kind for n in out if isinstance(n, D.DimseError)]
    assert errors == ["response-command-mismatch", "status-missing", "unknown-command"]


def test_oversized_command_is_dropped_and_lost_clears_fragments():
    a, t, out = track()
    for _ in range(70):
        t.fragment(True, 1, False, b"\x00" * 1000, 1.0, out)
    assert [n.kind for n in out if isinstance(n, D.DimseError)] == ["command-too-large"]
    t.fragment(True, 1, False, command(0x0030, mid=1)[:10], 1.0, out)
    t.lost()
    t.fragment(True, 1, True, command(0x0030, mid=2), 1.0, out)
    assert out[-1].command == "C-ECHO"


# -- repeated pending responses (DimseTracker._repeats) ----------------------------------------------


def test_repeated_pending_responses_before_and_after_their_request_are_matched_correctly():
    # Pending responses seen before their request (capture started mid-operation) are unmatched; once
    # the request is seen the same bytes must count as matched, and after the final response as
    # unmatched again: the remembered outcome may never outlive a change of the outstanding requests.
    a, t, out = track()
    pending = command(0x8020, rid=5, status=0xFF00, dataset=0)
    t.fragment(False, 1, True, pending, 1.0, out)
    t.fragment(False, 1, True, bytes(pending), 1.1, out)
    t.fragment(True, 1, True, command(0x0020, mid=5, dataset=0), 2.0, out)
    t.fragment(False, 1, True, bytes(pending), 2.1, out)
    t.fragment(False, 1, True, bytes(pending), 2.2, out)
    t.fragment(False, 1, True, command(0x8020, rid=5, status=0x0000), 3.0, out)
    t.fragment(False, 1, True, bytes(pending), 3.1, out)
    responses = [(n.status_class, n.matched, n.seconds) for n in out if isinstance(n, D.DimseResponse)]
    assert responses == [("pending", False, None)] * 2 + [("pending", True, None)] * 2 + [
        ("success", True, pytest.approx(1.0)), ("pending", False, None)]
    assert t.stats["C-FIND"].responses == {"FF00": 5, "0000": 1}
    # The same bytes from the other direction answer a request the acceptor never made.
    t.fragment(True, 1, True, bytes(pending), 3.2, out)
    assert out[-1].matched is False


def test_repeats_do_not_hide_a_command_mismatch():
    a, t, out = track()
    t.fragment(True, 1, True, command(0x0030, mid=5), 1.0, out)  # C-ECHO-RQ 5
    for ts in (1.1, 1.2):
        t.fragment(False, 1, True, command(0x8020, rid=5, status=0xFF00, dataset=0), ts, out)
    assert [n.kind for n in out if isinstance(n, D.DimseError)] == ["response-command-mismatch"] * 2


def _reference(ops):
    """What DimseTracker gives without the repeat memory: every command set decoded and matched."""
    a, t, out = track()
    for from_client, data, ts in ops:
        t._command(from_client, data, ts, out)
    t.finish(out)
    return a, t, out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["rq", "pending", "final", "cancel", "echo"]),
                          st.integers(1, 3)), max_size=40))
def test_repeat_memory_changes_no_outcome(steps):
    kinds = {
        "rq": lambda m: command(0x0020, mid=m, dataset=0),
        "pending": lambda m: command(0x8020, rid=m, status=0xFF00, dataset=0),
        "final": lambda m: command(0x8020, rid=m, status=0x0000),
        "cancel": lambda m: command(0x0FFF, rid=m),
        "echo": lambda m: command(0x8030, rid=m, status=0xFF01),  # a pending C-ECHO-RSP: odd, still counted
    }
    ops = [(from_client, kinds[kind](m), float(i)) for i, (from_client, kind, m) in enumerate(steps)]
    _a, ref, ref_out = _reference(ops)
    a, t, out = track()
    for from_client, data, ts in ops:
        t.fragment(from_client, 1, True, data, ts, out)
    t.finish(out)

    def fields(n, assoc):
        return (type(n).__name__,) + tuple(getattr(n, f) for f in n.__slots__ if f != "association")

    assert [fields(n, a) for n in out] == [fields(n, _a) for n in ref_out]
    assert {k: (s.requests, s.responses, s.times, s.cancels, s.unanswered) for k, s in t.stats.items()} == {
        k: (s.requests, s.responses, s.times, s.cancels, s.unanswered) for k, s in ref.stats.items()}
