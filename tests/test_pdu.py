"""PduFramer and the PDU decoders (probe/dicom/pdu.py) against the goldens of tests/encoded_pdus.py."""

from __future__ import annotations

import dataclasses
import random
import struct
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import encoded_pdus as E
from probe.dicom import codes
from probe.dicom import pdu as P

EVENT_TYPES = (
    P.AssociateRequest, P.AssociateAccept, P.AssociateReject, P.ReleaseRequest, P.ReleaseReply, P.Abort,
    P.PDataTF, P.CommandFragment, P.PduLost, P.ProtocolError, P.Resynchronised,
)


# ------------------------------------------------------------------------------------------------
# Helpers


def norm(ev):
    """The event with its timestamps zeroed, to compare events whatever packets carried them."""
    kw = {"ts": 0.0}
    if isinstance(ev, (P.AssociateRequest, P.AssociateAccept)):
        kw["start_ts"] = 0.0
    return dataclasses.replace(ev, **kw)


def norms(events):
    return [norm(e) for e in events]


def feed_chunks(framer, chunks, ts0: float = 0.0):
    """Feed chunks with ts = ts0 + chunk index; return all events."""
    out = []
    for i, c in enumerate(chunks):
        out.extend(framer.feed(c, ts0 + i))
    return out


def split_at(data: bytes, cuts) -> list[bytes]:
    cuts = sorted(set(c for c in cuts if 0 < c < len(data)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def random_chunks(data: bytes, rng: random.Random, max_chunk: int = 37) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, max_chunk)
        out.append(data[pos : pos + n])
        pos += n
    return out


def frame(data: bytes, **kw):
    return P.PduFramer(**kw).feed(data, 1.0)


def patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, *values)
    return bytes(b)


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body) if length is None else length) + body


def pdv(context_id: int, control: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack(">IBB", len(value) + 2 if length is None else length, context_id, control) + value


def assert_no_sentinel(events):
    for ev in events:
        r = repr(ev)
        assert "SENTINEL" not in r, r
        for field in dataclasses.fields(ev):
            v = getattr(ev, field.name)
            if isinstance(v, bytes):
                assert b"SENTINEL" not in v, ev


# ------------------------------------------------------------------------------------------------
# Expected decodes of the goldens (timestamps zeroed). Written out independently of the decoder.

AE_ANY_SCP = b"ANY-SCP         "
AE_STORESCU = b"STORESCU        "

EXPECTED_RQ = P.AssociateRequest(
    ts=0.0, start_ts=0.0, protocol_version=1, called_ae=AE_ANY_SCP, calling_ae=AE_STORESCU,
    application_context="1.2.840.10008.3.1.1.1",
    contexts=(
        P.PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")),
        P.PresentationContextRQ(3, "1.2.840.10008.5.1.4.1.1.2",
                                ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")),
        P.PresentationContextRQ(5, "1.2.840.10008.5.1.4.1.1.4", ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.1")),
        P.PresentationContextRQ(7, "1.2.840.10008.5.1.4.1.2.2.1", ("1.2.840.10008.1.2",)),
        P.PresentationContextRQ(9, "1.2.840.10008.5.1.4.1.2.1.2", ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2")),
    ),
    user_info=P.UserInformation(
        max_pdu_length=16384,
        implementation_class_uid="1.2.826.0.1.3680043.9.3811.3.0.4",
        implementation_version_name="PROBE_TEST_01",
        max_operations_invoked=5,
        max_operations_performed=3,
        role_selections=(
            P.RoleSelection("1.2.840.10008.5.1.4.1.1.2", 0, 1),
            P.RoleSelection("1.2.840.10008.5.1.4.1.1.4", 1, 1),
        ),
        extended_negotiation_sop_classes=("1.2.840.10008.5.1.4.1.2.2.1",),
        common_extended_negotiation=(("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.4.2"),),
        user_identity_type=2,
        user_identity_response_requested=True,
        user_identity_server_response=False,
    ),
)

EXPECTED_RQ_ECHO = P.AssociateRequest(
    ts=0.0, start_ts=0.0, protocol_version=1, called_ae=b"ECHO-SCP        ", calling_ae=b"ECHOSCU         ",
    application_context="1.2.840.10008.3.1.1.1",
    contexts=(P.PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),),
    user_info=P.UserInformation(max_pdu_length=0, implementation_class_uid="1.2.826.0.1.3680043.9.3811.3.0.4"),
)

EXPECTED_AC = P.AssociateAccept(
    ts=0.0, start_ts=0.0, protocol_version=1, called_ae=AE_ANY_SCP, calling_ae=AE_STORESCU,
    application_context="1.2.840.10008.3.1.1.1",
    contexts=(
        P.PresentationContextAC(1, 0, "1.2.840.10008.1.2"),
        P.PresentationContextAC(3, 1, "1.2.840.10008.1.2.1"),
        P.PresentationContextAC(5, 2, "1.2.840.10008.1.2.1"),
        P.PresentationContextAC(7, 3, "1.2.840.10008.1.2"),
        P.PresentationContextAC(9, 4, "1.2.840.10008.1.2"),
    ),
    user_info=P.UserInformation(
        max_pdu_length=32768,
        implementation_class_uid="1.2.826.0.1.3680043.9.3811.3.0.4",
        implementation_version_name="PYNETDICOM_304",
        max_operations_invoked=1,
        max_operations_performed=1,
        role_selections=(P.RoleSelection("1.2.840.10008.5.1.4.1.1.2", 0, 1),),
        user_identity_type=None,
        user_identity_response_requested=None,
        user_identity_server_response=True,
    ),
)

EXPECTED_P_DATA_TF = [P.PDataTF(0.0, 174), P.CommandFragment(0.0, 3, True, E.C_STORE_RQ_COMMAND)]
EXPECTED_P_DATA_TF_ECHO = [
    P.PDataTF(0.0, 80),
    P.CommandFragment(0.0, 1, False, E.C_ECHO_RQ_COMMAND[:30]),
    P.CommandFragment(0.0, 1, True, E.C_ECHO_RQ_COMMAND[30:]),
]
EXPECTED_P_DATA_TF_PIXELS = [P.PDataTF(0.0, 1006)]

# (name, bytes, expected events with zeroed timestamps)
GOLDENS = [
    ("A_ASSOCIATE_RQ", E.A_ASSOCIATE_RQ, [EXPECTED_RQ]),
    ("A_ASSOCIATE_RQ_ECHO", E.A_ASSOCIATE_RQ_ECHO, [EXPECTED_RQ_ECHO]),
    ("A_ASSOCIATE_AC", E.A_ASSOCIATE_AC, [EXPECTED_AC]),
    ("A_RELEASE_RQ", E.A_RELEASE_RQ, [P.ReleaseRequest(0.0)]),
    ("A_RELEASE_RP", E.A_RELEASE_RP, [P.ReleaseReply(0.0)]),
    ("P_DATA_TF", E.P_DATA_TF, EXPECTED_P_DATA_TF),
    ("P_DATA_TF_ECHO_FRAGMENTED", E.P_DATA_TF_ECHO_FRAGMENTED, EXPECTED_P_DATA_TF_ECHO),
    ("P_DATA_TF_PIXELS", E.P_DATA_TF_PIXELS, EXPECTED_P_DATA_TF_PIXELS),
]
for (_r, _s, _d), _g in {**E.A_ASSOCIATE_RJ, **E.A_ASSOCIATE_RJ_UNKNOWN}.items():
    GOLDENS.append((f"A_ASSOCIATE_RJ_{_r}_{_s}_{_d}", _g, [P.AssociateReject(0.0, _r, _s, _d)]))
for (_s, _d), _g in {**E.A_ABORT, **E.A_ABORT_UNKNOWN}.items():
    GOLDENS.append((f"A_ABORT_{_s}_{_d}", _g, [P.Abort(0.0, _s, _d)]))

GOLDEN_IDS = [g[0] for g in GOLDENS]
CONTROL_GOLDENS = [g for g in GOLDENS if g[1][0] != codes.PDU_P_DATA_TF]


# ------------------------------------------------------------------------------------------------
# The goldens, decoded several ways


@pytest.mark.parametrize("name,data,expected", GOLDENS, ids=GOLDEN_IDS)
class TestGoldens:
    def test_whole_buffer(self, name, data, expected):
        f = P.PduFramer()
        events = f.feed(data, 7.5)
        assert norms(events) == expected
        assert all(e.ts == 7.5 for e in events)
        assert f.synced and f.pdus == 1 and f.resync_skipped == 0

    def test_byte_by_byte(self, name, data, expected):
        f = P.PduFramer()
        events = feed_chunks(f, [data[i : i + 1] for i in range(len(data))])
        assert norms(events) == expected
        if data[0] != codes.PDU_P_DATA_TF:
            # A control PDU completes with its last byte and started with its first.
            assert events[0].ts == len(data) - 1
            if isinstance(events[0], (P.AssociateRequest, P.AssociateAccept)):
                assert events[0].start_ts == 0.0
        else:
            assert events[0].ts == P.PDU_HEADER_LEN - 1  # PDataTF as soon as its header is complete

    def test_two_pdus_in_one_feed(self, name, data, expected):
        events = P.PduFramer().feed(data + data + E.A_RELEASE_RP, 1.0)
        assert norms(events) == expected + expected + [P.ReleaseReply(0.0)]

    def test_trailing_partial_pdu(self, name, data, expected):
        nxt = E.A_ASSOCIATE_AC
        for k in (1, 5, 6, 70, len(nxt) - 1):
            f = P.PduFramer()
            assert norms(f.feed(data + nxt[:k], 1.0)) == expected
            assert norms(f.feed(nxt[k:], 2.0)) == [EXPECTED_AC]

    def test_many_feeds(self, name, data, expected):
        for seed in range(5):
            rng = random.Random(seed)
            chunks = random_chunks(data, rng, max_chunk=rng.choice((2, 7, 64)))
            f = P.PduFramer()
            events = feed_chunks(f, chunks)
            assert norms(events) == expected, seed
            if data[0] != codes.PDU_P_DATA_TF:
                assert events[0].ts == len(chunks) - 1  # the chunk holding the last byte

    def test_every_split_point(self, name, data, expected):
        for k in range(len(data) + 1):
            f = P.PduFramer()
            first = f.feed(data[:k], 1.0)
            second = f.feed(data[k:], 2.0)
            assert norms(first + second) == expected, k
            if data[0] != codes.PDU_P_DATA_TF:
                assert first == [] or k == len(data)  # an incomplete control PDU gives nothing yet

    def test_no_sentinel_in_events(self, name, data, expected):
        rng = random.Random(1)
        for chunks in ([data], [data[i : i + 1] for i in range(len(data))], random_chunks(data, rng)):
            assert_no_sentinel(feed_chunks(P.PduFramer(), chunks))


# PDUs with codes from the standard's tables: a framer picking up a stream must accept them.
STANDARD_GOLDENS = [g for g in GOLDENS if not g[0].startswith(("A_ASSOCIATE_RJ_", "A_ABORT_"))]
STANDARD_GOLDENS += [(f"A_ASSOCIATE_RJ_{k}", v, [P.AssociateReject(0.0, *k)]) for k, v in E.A_ASSOCIATE_RJ.items()]
STANDARD_GOLDENS += [(f"A_ABORT_{k}", v, [P.Abort(0.0, *k)]) for k, v in E.A_ABORT.items()]


@pytest.mark.parametrize("name,data,expected", STANDARD_GOLDENS, ids=[g[0] for g in STANDARD_GOLDENS])
def test_unsynced_framer_accepts_golden_at_offset_zero(name, data, expected):
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        events = feed_chunks(P.PduFramer(synced=False), chunks)
        assert norms(events) == [P.Resynchronised(0.0, 0)] + expected


def test_golden_stream_start_ts_and_ts():
    """start_ts is the timestamp of the PDU's first byte, ts that of its last."""
    f = P.PduFramer()
    rq = E.A_ASSOCIATE_RQ
    assert f.feed(E.A_RELEASE_RQ + rq[:10], 1.0) == [P.ReleaseRequest(1.0)]
    assert f.feed(rq[10:500], 2.0) == []
    ev = f.feed(rq[500:] + E.A_ASSOCIATE_AC[:3], 3.0)
    assert len(ev) == 1 and ev[0].ts == 3.0 and ev[0].start_ts == 1.0
    ev = f.feed(E.A_ASSOCIATE_AC[3:], 4.0)
    assert len(ev) == 1 and ev[0].ts == 4.0 and ev[0].start_ts == 3.0


def test_all_goldens_concatenated():
    stream = b"".join(g[1] for g in GOLDENS)
    expected = [e for g in GOLDENS for e in g[2]]
    assert norms(P.PduFramer().feed(stream, 1.0)) == expected
    f = P.PduFramer()
    assert norms(feed_chunks(f, random_chunks(stream, random.Random(3), 300))) == expected
    assert f.pdus == len(GOLDENS)
    assert f.data_bytes == 24 + 20 + 1000


# ------------------------------------------------------------------------------------------------
# Field details


class TestAssociateFields:
    def test_rq_user_identity_keeps_only_type_and_flag(self):
        (ev,) = frame(E.A_ASSOCIATE_RQ)
        ui = ev.user_info
        assert ui.user_identity_type == 2
        assert codes.user_identity_type_name(ui.user_identity_type) == "username-passcode"
        assert ui.user_identity_response_requested is True
        assert ui.user_identity_server_response is False
        text = repr(ev) + str(ev)
        assert "SENTINEL_USER" not in text and "SENTINEL_PASS" not in text
        for field in dataclasses.fields(ui):
            assert "SENTINEL" not in repr(getattr(ui, field.name))

    def test_ac_user_identity_server_response_not_kept(self):
        (ev,) = frame(E.A_ASSOCIATE_AC)
        assert ev.user_info.user_identity_server_response is True
        assert "SENTINEL_RESP" not in repr(ev)

    def test_user_identity_username_only_no_response_requested(self):
        # 0x58: type 1 (username), positive response requested 0, primary "SENTINEL_USER", empty secondary
        item = struct.pack(">BBHBBH", 0x58, 0, 2 + 2 + 13 + 2, 1, 0, 13) + E.SENTINEL_USER + b"\x00\x00"
        data = _rq_with_user_info(item)
        (ev,) = frame(data)
        assert ev.user_info.user_identity_type == 1
        assert ev.user_info.user_identity_response_requested is False
        assert "SENTINEL" not in repr(ev)

    def test_called_and_calling_ae_raw_16_bytes(self):
        (ev,) = frame(E.A_ASSOCIATE_RQ_ECHO)
        assert len(ev.called_ae) == 16 and len(ev.calling_ae) == 16
        assert ev.called_ae.rstrip(b" ") == b"ECHO-SCP"
        assert ev.calling_ae.rstrip(b" ") == b"ECHOSCU"

    def test_ae_title_with_control_characters_decodes_raw(self):
        called = b"BAD\x01\x1bAE\x7f\t\x00\xff         "[:16]
        calling = b"\x00" * 16
        data = E.A_ASSOCIATE_RQ_ECHO[:10] + called + calling + E.A_ASSOCIATE_RQ_ECHO[42:]
        (ev,) = frame(data)
        assert isinstance(ev, P.AssociateRequest)
        assert ev.called_ae == called and ev.calling_ae == calling
        assert ev.contexts == EXPECTED_RQ_ECHO.contexts

    def test_uid_padded_with_nul_is_stripped(self):
        # Presentation context 1 with a NUL-padded abstract syntax (18) and transfer syntax (18)
        ctx = (struct.pack(">BBH", 0x20, 0, 4 + 22 + 22) + b"\x01\x00\x00\x00"
               + struct.pack(">BBH", 0x30, 0, 18) + b"1.2.840.10008.1.1\x00"
               + struct.pack(">BBH", 0x40, 0, 18) + b"1.2.840.10008.1.2\x00")
        data = _rq(items=_APP_ITEM + ctx)
        (ev,) = frame(data)
        assert ev.contexts == (P.PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),)
        assert ev.user_info == P.UserInformation()  # no user information item at all

    def test_unknown_and_private_user_info_subitems_skipped(self):
        items = (struct.pack(">BBH", 0x5F, 0, 3) + b"abc" + struct.pack(">BBHI", 0x51, 0, 4, 1234)
                 + struct.pack(">BBH", 0xFF, 0, 0))
        (ev,) = frame(_rq_with_user_info(items))
        assert ev.user_info == P.UserInformation(max_pdu_length=1234)

    def test_non_ascii_uid_replaced_not_raised(self):
        ctx = (struct.pack(">BBH", 0x20, 0, 4 + 8) + b"\x01\x00\x00\x00"
               + struct.pack(">BBH", 0x30, 0, 4) + b"1.\xff\x80")
        (ev,) = frame(_rq(items=_APP_ITEM + ctx))
        assert ev.contexts[0].abstract_syntax == "1.\ufffd\ufffd"

    def test_ac_context_results_map_to_names(self):
        (ev,) = frame(E.A_ASSOCIATE_AC)
        names = [codes.context_result_name(c.result) for c in ev.contexts]
        assert names == ["acceptance", "user-rejection", "no-reason", "abstract-syntax-not-supported",
                         "transfer-syntaxes-not-supported"]

    def test_ac_context_unknown_result(self):
        ctx = struct.pack(">BBH", 0x21, 0, 4 + 21) + b"\x01\x00\x05\x00" + struct.pack(">BBH", 0x40, 0, 17) + b"1.2.840.10008.1.2"
        (ev,) = frame(_rq(items=_APP_ITEM + ctx, pdu_type=2))
        assert ev.contexts == (P.PresentationContextAC(1, 5, "1.2.840.10008.1.2"),)
        assert codes.context_result_name(5) == "unknown-5"

    def test_protocol_version_kept(self):
        data = patched(E.A_ASSOCIATE_RQ_ECHO, 6, ">H", 3)
        (ev,) = frame(data)
        assert ev.protocol_version == 3


_APP_ITEM = struct.pack(">BBH", 0x10, 0, 21) + b"1.2.840.10008.3.1.1.1"


def _rq(items: bytes, pdu_type: int = 1, called=b"ANY-SCP         ", calling=b"STORESCU        ") -> bytes:
    return pdu(pdu_type, b"\x00\x01\x00\x00" + called + calling + bytes(32) + items)


def _rq_with_user_info(subitems: bytes) -> bytes:
    ctx = (struct.pack(">BBH", 0x20, 0, 4 + 21 + 21) + b"\x01\x00\x00\x00"
           + struct.pack(">BBH", 0x30, 0, 17) + b"1.2.840.10008.1.1"
           + struct.pack(">BBH", 0x40, 0, 17) + b"1.2.840.10008.1.2")
    return _rq(_APP_ITEM + ctx + struct.pack(">BBH", 0x50, 0, len(subitems)) + subitems)


# ------------------------------------------------------------------------------------------------
# Reject and abort codes -> canonical names (PS3.8 Tables 9-21 and 9-26)

REJECT_NAMES = {
    (1, 1, 1): ("rejected-permanent", "service-user", "no-reason-given"),
    (1, 1, 2): ("rejected-permanent", "service-user", "application-context-name-not-supported"),
    (1, 1, 3): ("rejected-permanent", "service-user", "calling-ae-title-not-recognized"),
    (1, 1, 7): ("rejected-permanent", "service-user", "called-ae-title-not-recognized"),
    (1, 2, 1): ("rejected-permanent", "service-provider-acse", "no-reason-given"),
    (1, 2, 2): ("rejected-permanent", "service-provider-acse", "protocol-version-not-supported"),
    (1, 3, 1): ("rejected-permanent", "service-provider-presentation", "temporary-congestion"),
    (1, 3, 2): ("rejected-permanent", "service-provider-presentation", "local-limit-exceeded"),
    (2, 1, 1): ("rejected-transient", "service-user", "no-reason-given"),
    (2, 1, 2): ("rejected-transient", "service-user", "application-context-name-not-supported"),
    (2, 1, 3): ("rejected-transient", "service-user", "calling-ae-title-not-recognized"),
    (2, 1, 7): ("rejected-transient", "service-user", "called-ae-title-not-recognized"),
    (2, 2, 1): ("rejected-transient", "service-provider-acse", "no-reason-given"),
    (2, 2, 2): ("rejected-transient", "service-provider-acse", "protocol-version-not-supported"),
    (2, 3, 1): ("rejected-transient", "service-provider-presentation", "temporary-congestion"),
    (2, 3, 2): ("rejected-transient", "service-provider-presentation", "local-limit-exceeded"),
    # outside the table
    (0, 1, 1): ("unknown-0", "service-user", "no-reason-given"),
    (3, 1, 1): ("unknown-3", "service-user", "no-reason-given"),
    (1, 0, 1): ("rejected-permanent", "unknown-0", "unknown-1"),
    (1, 4, 1): ("rejected-permanent", "unknown-4", "unknown-1"),
    (1, 1, 4): ("rejected-permanent", "service-user", "unknown-4"),
    (1, 1, 10): ("rejected-permanent", "service-user", "unknown-10"),
    (2, 2, 3): ("rejected-transient", "service-provider-acse", "unknown-3"),
    (2, 2, 7): ("rejected-transient", "service-provider-acse", "unknown-7"),
    (2, 3, 0): ("rejected-transient", "service-provider-presentation", "unknown-0"),
    (2, 3, 7): ("rejected-transient", "service-provider-presentation", "unknown-7"),
    (255, 255, 255): ("unknown-255", "unknown-255", "unknown-255"),
}

ABORT_NAMES = {
    (0, 0): ("service-user", "not-significant"),
    (2, 0): ("service-provider", "reason-not-specified"),
    (2, 1): ("service-provider", "unrecognized-pdu"),
    (2, 2): ("service-provider", "unexpected-pdu"),
    (2, 4): ("service-provider", "unrecognized-pdu-parameter"),
    (2, 5): ("service-provider", "unexpected-pdu-parameter"),
    (2, 6): ("service-provider", "invalid-pdu-parameter-value"),
    # outside the table
    (0, 2): ("service-user", "not-significant"),
    (1, 0): ("unknown-1", "reason-not-specified"),
    (3, 1): ("unknown-3", "unrecognized-pdu"),
    (2, 3): ("service-provider", "unknown-3"),
    (2, 7): ("service-provider", "unknown-7"),
    (255, 255): ("unknown-255", "unknown-255"),
}


def test_every_reject_golden_is_named():
    assert set(REJECT_NAMES) == set(E.A_ASSOCIATE_RJ) | set(E.A_ASSOCIATE_RJ_UNKNOWN)
    # Table 9-21 has exactly 2 results x 8 (source, reason) pairs
    assert len(E.A_ASSOCIATE_RJ) == 16


@pytest.mark.parametrize("key", sorted(REJECT_NAMES))
def test_reject_codes_to_names(key):
    data = {**E.A_ASSOCIATE_RJ, **E.A_ASSOCIATE_RJ_UNKNOWN}[key]
    (ev,) = frame(data)
    assert (ev.result, ev.source, ev.reason) == key
    names = (codes.reject_result_name(ev.result), codes.reject_source_name(ev.source),
             codes.reject_reason_name(ev.source, ev.reason))
    assert names == REJECT_NAMES[key]


@pytest.mark.parametrize("key", sorted(ABORT_NAMES))
def test_abort_codes_to_names(key):
    data = {**E.A_ABORT, **E.A_ABORT_UNKNOWN}[key]
    (ev,) = frame(data)
    assert (ev.source, ev.reason) == key
    assert (codes.abort_source_name(ev.source), codes.abort_reason_name(ev.source, ev.reason)) == ABORT_NAMES[key]


def test_every_abort_golden_is_named():
    assert set(ABORT_NAMES) == set(E.A_ABORT) | set(E.A_ABORT_UNKNOWN)
    assert len(E.A_ABORT) == 7


def test_reject_reason_depends_on_source():
    # reason 1 and 2 mean different things for each source
    assert codes.reject_reason_name(1, 2) == "application-context-name-not-supported"
    assert codes.reject_reason_name(2, 2) == "protocol-version-not-supported"
    assert codes.reject_reason_name(3, 2) == "local-limit-exceeded"
    assert codes.reject_reason_name(3, 1) == "temporary-congestion"


def test_user_identity_type_names():
    assert [codes.user_identity_type_name(i) for i in range(7)] == [
        "unknown-0", "username", "username-passcode", "kerberos", "saml", "jwt", "unknown-6"]


def test_reject_and_abort_reserved_bytes_ignored():
    # The reserved byte of A-ASSOCIATE-RJ and the two of A-ABORT are not tested (PS3.8 9.3.4/9.3.8).
    assert frame(b"\x03\x00\x00\x00\x00\x04\xff\x01\x01\x07") == [P.AssociateReject(1.0, 1, 1, 7)]
    assert frame(b"\x07\x00\x00\x00\x00\x04\xff\xff\x02\x06") == [P.Abort(1.0, 2, 6)]


# ------------------------------------------------------------------------------------------------
# P-DATA-TF


class TestPData:
    def test_data_values_never_in_events(self):
        stream = E.P_DATA_TF + E.P_DATA_TF_PIXELS + E.P_DATA_TF
        for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))],
                       random_chunks(stream, random.Random(5), 50)):
            f = P.PduFramer()
            events = feed_chunks(f, chunks)
            assert_no_sentinel(events)
            assert [type(e) for e in events] == [P.PDataTF, P.CommandFragment, P.PDataTF, P.PDataTF,
                                                 P.CommandFragment]
            assert f.data_bytes == 44 + 1000 + 44

    def test_only_command_fragments_carry_bytes(self):
        events = frame(E.P_DATA_TF + E.P_DATA_TF_ECHO_FRAGMENTED)
        carrying = [e for e in events if any(isinstance(getattr(e, f.name), bytes) for f in dataclasses.fields(e))]
        assert all(isinstance(e, P.CommandFragment) for e in carrying)
        assert b"".join(e.data for e in carrying) == E.C_STORE_RQ_COMMAND + E.C_ECHO_RQ_COMMAND

    def test_message_control_header_bits(self):
        # 0x00 data, 0x01 command, 0x02 data last, 0x03 command last; bits 2-7 are not looked at
        body = (pdv(1, 0x01, b"AB") + pdv(1, 0x00, b"SENTINEL") + pdv(3, 0x03, b"CD")
                + pdv(5, 0x02, b"SENTINEL") + pdv(7, 0xFD, b"EF"))
        events = frame(pdu(4, body))
        assert norms(events) == [
            P.PDataTF(0.0, len(body)),
            P.CommandFragment(0.0, 1, False, b"AB"),
            P.CommandFragment(0.0, 3, True, b"CD"),
            P.CommandFragment(0.0, 7, False, b"EF"),
        ]

    def test_empty_pdvs(self):
        body = pdv(1, 0x03, b"") + pdv(1, 0x00, b"") + pdv(1, 0x02, b"")
        events = frame(pdu(4, body) + E.A_RELEASE_RQ)
        assert norms(events) == [P.PDataTF(0.0, 18), P.CommandFragment(0.0, 1, True, b""), P.ReleaseRequest(0.0)]

    def test_command_too_large_skipped_and_counted(self):
        f = P.PduFramer(max_command_bytes=100)
        events = f.feed(E.P_DATA_TF + E.P_DATA_TF_ECHO_FRAGMENTED + E.A_RELEASE_RQ, 1.0)
        assert norms(events) == [
            P.PDataTF(0.0, 174),
            P.ProtocolError(0.0, "command-too-large", 4),
            P.PDataTF(0.0, 80),
            *EXPECTED_P_DATA_TF_ECHO[1:],
            P.ReleaseRequest(0.0),
        ]

    def test_command_fragment_across_many_feeds(self):
        f = P.PduFramer()
        data = E.P_DATA_TF
        assert norms(f.feed(data[:8], 1.0)) == [P.PDataTF(0.0, 174)]
        assert f.feed(data[8:60], 2.0) == []
        ev = f.feed(data[60:124], 3.0)  # command value ends at 6 + 6 + 112 = 124
        assert ev == [P.CommandFragment(3.0, 3, True, E.C_STORE_RQ_COMMAND)]
        assert f.feed(data[124:], 4.0) == []
        assert f.data_bytes == 44

    def test_large_data_pdv_fed_in_small_pieces(self):
        f = P.PduFramer()
        events = feed_chunks(f, random_chunks(E.P_DATA_TF_PIXELS * 3 + E.A_RELEASE_RP, random.Random(9), 13))
        assert norms(events) == EXPECTED_P_DATA_TF_PIXELS * 3 + [P.ReleaseReply(0.0)]
        assert f.data_bytes == 3000


# ------------------------------------------------------------------------------------------------
# Malformed input


class TestMalformed:
    @pytest.mark.parametrize("name,data,expected", CONTROL_GOLDENS, ids=[g[0] for g in CONTROL_GOLDENS])
    def test_truncated_control_pdu_waits(self, name, data, expected):
        for k in range(len(data)):
            f = P.PduFramer()
            assert f.feed(data[:k], 1.0) == []
            assert f.synced

    def test_pdu_length_past_end_waits(self):
        for data in (E.A_ASSOCIATE_RQ, E.A_RELEASE_RQ, E.A_ABORT[(2, 1)], E.A_ASSOCIATE_RJ[(1, 1, 1)]):
            longer = patched(data, 2, ">I", len(data) - 6 + 100)
            f = P.PduFramer()
            assert f.feed(longer, 1.0) == []
            assert f.feed(b"\x00" * 99, 2.0) == []
            assert f.synced and f.pdus == 1

    def test_pdata_length_past_end_waits(self):
        longer = patched(E.P_DATA_TF, 2, ">I", 174 + 1000)
        f = P.PduFramer()
        # The PDVs that are there are decoded; the framer then waits for the next PDV header.
        assert norms(f.feed(longer, 1.0)) == [P.PDataTF(0.0, 1174), EXPECTED_P_DATA_TF[1]]
        assert f.feed(b"\x00\x00\x00", 2.0) == []

    def _then_release(self, bad: bytes, pdu_type: int | None, kind: str, **kw):
        events = P.PduFramer(**kw).feed(bad + E.A_RELEASE_RQ + E.A_RELEASE_RP, 1.0)
        assert norms(events) == [P.ProtocolError(0.0, kind, pdu_type), P.ReleaseRequest(0.0), P.ReleaseReply(0.0)]

    def test_application_context_item_overruns_pdu(self):
        off = E.A_ASSOCIATE_RQ.index(b"\x10\x00\x00\x15")
        self._then_release(patched(E.A_ASSOCIATE_RQ, off + 2, ">H", 0xFFFF), 1, "item-overrun")

    def test_transfer_syntax_overruns_presentation_context(self):
        off = E.A_ASSOCIATE_RQ.index(b"\x40\x00\x00\x11")
        self._then_release(patched(E.A_ASSOCIATE_RQ, off + 2, ">H", 200), 1, "item-overrun")

    def test_presentation_context_overruns_pdu(self):
        off = E.A_ASSOCIATE_AC.index(b"\x21\x00\x00\x19")
        self._then_release(patched(E.A_ASSOCIATE_AC, off + 2, ">H", 2000), 2, "item-overrun")

    def test_user_information_overruns_pdu(self):
        off = E.A_ASSOCIATE_AC.index(b"\x50\x00\x00\x7a")
        self._then_release(patched(E.A_ASSOCIATE_AC, off + 2, ">H", 123), 2, "item-overrun")

    def test_user_identity_primary_field_overruns_subitem(self):
        off = E.A_ASSOCIATE_RQ.index(b"\x58\x00\x00\x20")
        self._then_release(patched(E.A_ASSOCIATE_RQ, off + 6, ">H", 0xFF), 1, "item-overrun")

    def test_user_identity_secondary_field_overruns_subitem(self):
        off = E.A_ASSOCIATE_RQ.index(b"\x58\x00\x00\x20")
        self._then_release(patched(E.A_ASSOCIATE_RQ, off + 8 + 13, ">H", 14), 1, "item-overrun")

    def test_role_selection_uid_overruns_subitem(self):
        off = E.A_ASSOCIATE_RQ.index(b"\x54\x00\x00\x1d")
        self._then_release(patched(E.A_ASSOCIATE_RQ, off + 4, ">H", 40), 1, "item-overrun")

    def test_common_extended_service_class_overruns_subitem(self):
        off = E.A_ASSOCIATE_RQ.index(b"\x57\x00\x00\x4d")
        self._then_release(patched(E.A_ASSOCIATE_RQ, off + 4 + 2 + 25, ">H", 200), 1, "item-overrun")

    def test_user_identity_ac_overruns_subitem(self):
        off = E.A_ASSOCIATE_AC.index(b"\x59\x00\x00\x0f")
        self._then_release(patched(E.A_ASSOCIATE_AC, off + 4, ">H", 14), 2, "item-overrun")

    def test_item_header_truncated(self):
        # Two stray bytes after the user information item: not enough for an item header.
        data = E.A_ASSOCIATE_RQ_ECHO + b"\x50\x00"
        data = patched(data, 2, ">I", len(data) - 6)
        self._then_release(data, 1, "item-truncated")

    def test_user_info_subitem_header_truncated(self):
        self._then_release(_rq_with_user_info(b"\x51\x00\x00"), 1, "item-truncated")

    @pytest.mark.parametrize("subitem", [
        struct.pack(">BBHH", 0x51, 0, 2, 16),  # maximum length must be 4 bytes
        struct.pack(">BBHH", 0x53, 0, 2, 1),  # asynchronous operations window must be 4 bytes
        struct.pack(">BBHH", 0x54, 0, 4, 1) + b"1\x00",  # role selection: 1 role byte instead of 2
        struct.pack(">BBHB", 0x58, 0, 1, 2),  # user identity: no room for the response flag
    ])
    def test_bad_user_info_subitem_length(self, subitem):
        self._then_release(_rq_with_user_info(subitem), 1, "bad-item-length")

    def test_user_identity_missing_secondary_length(self):
        item = struct.pack(">BBHBBH", 0x58, 0, 4 + 13, 2, 1, 13) + E.SENTINEL_USER
        self._then_release(_rq_with_user_info(item), 1, "item-truncated")

    def test_presentation_context_item_too_short(self):
        self._then_release(_rq(_APP_ITEM + struct.pack(">BBH", 0x20, 0, 2) + b"\x01\x00"), 1, "bad-item-length")
        self._then_release(_rq(_APP_ITEM + struct.pack(">BBH", 0x21, 0, 3) + b"\x01\x00\x00", pdu_type=2), 2,
                           "bad-item-length")

    def test_wrong_presentation_context_item_for_pdu(self):
        ac_ctx = struct.pack(">BBH", 0x21, 0, 4) + b"\x01\x00\x00\x00"
        self._then_release(_rq(_APP_ITEM + ac_ctx), 1, "unexpected-item")
        rq_ctx = struct.pack(">BBH", 0x20, 0, 4) + b"\x01\x00\x00\x00"
        self._then_release(_rq(_APP_ITEM + rq_ctx, pdu_type=2), 2, "unexpected-item")

    def test_associate_shorter_than_fixed_fields(self):
        self._then_release(pdu(1, b"\x00\x01\x00\x00" + b"A" * 60), 1, "pdu-too-short")
        self._then_release(pdu(2, b"\x00\x01"), 2, "pdu-too-short")

    def test_control_pdu_too_large(self):
        self._then_release(E.A_ASSOCIATE_RQ, 1, "pdu-too-large", max_control_pdu=500)

    @pytest.mark.parametrize("pdu_type", [3, 5, 6, 7])
    @pytest.mark.parametrize("length", [1, 3, 5, 8, 100])
    def test_short_control_pdu_with_wrong_length(self, pdu_type, length):
        self._then_release(pdu(pdu_type, b"\x00\x00\x02\x01" * 25, length)[: 6 + length], pdu_type, "bad-pdu-length")

    @pytest.mark.parametrize("pdu_type", [1, 2, 3, 5, 6, 7])
    def test_control_pdu_with_zero_length(self, pdu_type):
        self._then_release(pdu(pdu_type, b""), pdu_type, "bad-pdu-length")

    @pytest.mark.parametrize("pdu_type", [0, 8, 9, 0x10, 0x7F, 0xFF])
    def test_unknown_pdu_type_then_resync(self, pdu_type):
        bad = bytes([pdu_type]) + b"\x00\x00\x00\x00\x04\x00\x00\x00\x00"
        f = P.PduFramer()
        events = f.feed(E.A_RELEASE_RP + bad + E.A_RELEASE_RQ + E.A_RELEASE_RP, 1.0)
        assert norms(events) == [
            P.ReleaseReply(0.0),
            P.ProtocolError(0.0, "unknown-pdu-type", None),
            P.Resynchronised(0.0, len(bad)),
            P.ReleaseRequest(0.0),
            P.ReleaseReply(0.0),
        ]
        assert f.synced and f.resync_skipped == len(bad)

    @pytest.mark.parametrize("pdu_type", [0, 8, 0xFF])
    def test_unknown_pdu_type_byte_by_byte(self, pdu_type):
        bad = bytes([pdu_type]) + b"\x00\x00\x00\x00\x04\x00\x00\x00\x00"
        stream = bad + E.A_ASSOCIATE_AC + E.A_RELEASE_RQ
        events = feed_chunks(P.PduFramer(), [stream[i : i + 1] for i in range(len(stream))])
        assert norms(events) == [P.ProtocolError(0.0, "unknown-pdu-type", None), P.Resynchronised(0.0, len(bad)),
                                 EXPECTED_AC, P.ReleaseRequest(0.0)]

    def test_pdv_length_overruns_pdu(self):
        body = pdv(1, 0x03, b"cmd") + pdv(1, 0x00, b"SENTINEL" * 4, length=200)
        events = frame(pdu(4, body) + E.A_RELEASE_RQ)
        assert norms(events) == [P.PDataTF(0.0, len(body)), P.CommandFragment(0.0, 1, True, b"cmd"),
                                 P.ProtocolError(0.0, "bad-pdv-length", 4), P.ReleaseRequest(0.0)]
        assert_no_sentinel(events)

    def test_pdv_length_below_two(self):
        for length in (0, 1):
            body = pdv(1, 0x00, b"SENTINEL", length=length)
            events = frame(pdu(4, body) + E.A_RELEASE_RQ)
            assert norms(events) == [P.PDataTF(0.0, len(body)), P.ProtocolError(0.0, "bad-pdv-length", 4),
                                     P.ReleaseRequest(0.0)]

    @pytest.mark.parametrize("length", [0, 1, 5])
    def test_pdata_shorter_than_a_pdv_header(self, length):
        events = frame(pdu(4, b"\x00" * length) + E.A_RELEASE_RQ)
        assert norms(events) == [P.PDataTF(0.0, length), P.ProtocolError(0.0, "bad-pdu-length", 4),
                                 P.ReleaseRequest(0.0)]

    @pytest.mark.parametrize("trailing", [1, 2, 3, 4, 5])
    def test_pdata_with_bytes_after_last_pdv_does_not_eat_next_pdu(self, trailing):
        """A P-DATA-TF whose length leaves 1-5 bytes after its last PDV (too few for a PDV header) is
        malformed; the framer must not read the next PDU's header as the rest of a PDV header."""
        body = pdv(1, 0x00, b"SENTINEL") + b"\x00" * trailing
        events = frame(pdu(4, body) + E.A_RELEASE_RQ + E.A_RELEASE_RP)
        kinds = [e.kind for e in events if isinstance(e, P.ProtocolError)]
        assert len(kinds) == 1 and kinds[0] in ("bad-pdv-length", "bad-pdu-length")
        assert norms([e for e in events if not isinstance(e, P.ProtocolError)]) == [
            P.PDataTF(0.0, len(body)), P.ReleaseRequest(0.0), P.ReleaseReply(0.0)]

    def test_unexpected_item_type_in_associate(self):
        self._then_release(_rq(_APP_ITEM + struct.pack(">BBH", 0x30, 0, 3) + b"1.2"), 1, "unexpected-item")


# ------------------------------------------------------------------------------------------------
# Resynchronisation

JUNK = bytes(range(0x08, 0x100)) + b"\xfe\xed\xfa\xce" * 20  # no byte 0x00-0x07: no candidate header

RESYNC_FIRST = [
    ("A_ASSOCIATE_RQ", E.A_ASSOCIATE_RQ, [EXPECTED_RQ]),
    ("A_ASSOCIATE_AC", E.A_ASSOCIATE_AC, [EXPECTED_AC]),
    ("A_ASSOCIATE_RJ", E.A_ASSOCIATE_RJ[(2, 3, 1)], [P.AssociateReject(0.0, 2, 3, 1)]),
    ("P_DATA_TF", E.P_DATA_TF, EXPECTED_P_DATA_TF),
    ("P_DATA_TF_ECHO_FRAGMENTED", E.P_DATA_TF_ECHO_FRAGMENTED, EXPECTED_P_DATA_TF_ECHO),
    ("P_DATA_TF_PIXELS", E.P_DATA_TF_PIXELS, EXPECTED_P_DATA_TF_PIXELS),
    ("A_RELEASE_RQ", E.A_RELEASE_RQ, [P.ReleaseRequest(0.0)]),
    ("A_RELEASE_RP", E.A_RELEASE_RP, [P.ReleaseReply(0.0)]),
    ("A_ABORT", E.A_ABORT[(2, 6)], [P.Abort(0.0, 2, 6)]),
    ("A_ABORT_USER", E.A_ABORT[(0, 0)], [P.Abort(0.0, 0, 0)]),
]


class TestResync:
    @pytest.mark.parametrize("name,first,expected", RESYNC_FIRST, ids=[r[0] for r in RESYNC_FIRST])
    def test_unsynced_finds_first_pdu_after_junk(self, name, first, expected):
        stream = JUNK + first + E.A_ASSOCIATE_AC + E.A_RELEASE_RQ
        want = [P.Resynchronised(0.0, len(JUNK))] + expected + [EXPECTED_AC, P.ReleaseRequest(0.0)]
        rng = random.Random(name)
        for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))], random_chunks(stream, rng, 60)):
            f = P.PduFramer(synced=False)
            assert not f.synced
            assert norms(feed_chunks(f, chunks)) == want
            assert f.synced and f.resync_skipped == len(JUNK)

    def test_unsynced_waits_for_enough_bytes(self):
        f = P.PduFramer(synced=False)
        assert f.feed(JUNK, 1.0) == []
        assert not f.synced
        assert f.feed(E.A_ASSOCIATE_RQ[:30], 2.0) == []  # not enough of the header to judge it
        assert not f.synced
        ev = f.feed(E.A_ASSOCIATE_RQ[30:], 3.0)
        assert norms(ev) == [P.Resynchronised(0.0, len(JUNK)), EXPECTED_RQ]
        assert ev[0].ts == 3.0

    def test_implausible_candidates_in_junk_are_rejected(self):
        fake = [
            b"\x01\x00" + struct.pack(">I", 200) + b"\x00\x02\x00\x00" + b"A" * 32,  # RQ, protocol version 2
            b"\x01\x00" + struct.pack(">I", 200) + b"\x00\x01\x00\x00" + b"A\x01" + b"A" * 30,  # RQ, AE not printable
            b"\x01\x00" + struct.pack(">I", 200) + b"\x00\x01\x00\x00" + b" " * 16 + b"A" * 16,  # RQ, blank called AE
            b"\x01\x00" + struct.pack(">I", 1 << 21) + b"\x00\x01\x00\x00" + b"A" * 32,  # RQ, too long
            b"\x02\x00" + struct.pack(">I", 67) + b"\x00\x01\x00\x00",  # AC shorter than its fixed part
            b"\x03\x00" + struct.pack(">I", 4) + b"\x00\x03\x01\x01",  # RJ, result 3
            b"\x03\x00" + struct.pack(">I", 5) + b"\x00\x01\x01\x01",  # RJ, length 5
            b"\x04\x00" + struct.pack(">I", 20) + struct.pack(">IBB", 10, 2, 0),  # P-DATA, even context id
            b"\x04\x00" + struct.pack(">I", 20) + struct.pack(">IBB", 17, 1, 0),  # P-DATA, PDV longer than PDU
            b"\x04\x00" + struct.pack(">I", 20) + struct.pack(">IBB", 10, 1, 4),  # P-DATA, control bit 2 set
            b"\x05\x00" + struct.pack(">I", 4) + b"\x00\x00\x00\x01",  # RELEASE-RQ, reserved not zero
            b"\x06\x00" + struct.pack(">I", 6) + b"\x00\x00\x00\x00",  # RELEASE-RP, length 6
            b"\x07\x00" + struct.pack(">I", 4) + b"\x00\x00\x02\x07",  # ABORT, reason 7
            b"\x07\x00" + struct.pack(">I", 4) + b"\x00\x00\x03\x00",  # ABORT, source 3
        ]
        junk = b"".join(x + b"\xfe" * 48 for x in fake)
        stream = junk + E.A_RELEASE_RQ + E.A_ASSOCIATE_RQ_ECHO
        for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
            f = P.PduFramer(synced=False)
            events = feed_chunks(f, chunks)
            assert norms(events) == [P.Resynchronised(0.0, len(junk)), P.ReleaseRequest(0.0), EXPECTED_RQ_ECHO]

    def test_picked_up_inside_a_data_pdv(self):
        tail = E.P_DATA_TF_PIXELS[400:]
        stream = tail + E.P_DATA_TF + E.A_RELEASE_RQ
        for chunks in ([stream], random_chunks(stream, random.Random(2), 100)):
            f = P.PduFramer(synced=False)
            events = feed_chunks(f, chunks)
            assert norms(events) == [P.Resynchronised(0.0, len(tail))] + EXPECTED_P_DATA_TF + [P.ReleaseRequest(0.0)]
            assert_no_sentinel(events)

    @pytest.mark.parametrize("candidate", [
        b"\x01\x00",  # RQ whose length would be 0x05000000 (the release header): too long for one
        b"\x02\x00\x00\x00\x00\x10",  # AC of length 16: shorter than its fixed part
        b"\x04\x00\x00\x00\x00\x03",  # P-DATA of length 3: no room for a PDV
        b"\x03\x00\x00\x00\x00\x09",  # RJ of length 9
    ])
    def test_complete_pdu_after_ruled_out_candidate_is_found(self, candidate):
        """A candidate header whose length field already rules it out must not hold back a complete
        PDU that follows it until more bytes arrive (the last PDUs of a connection would be lost)."""
        junk = b"\xff" * 5 + candidate
        for chunks in ([junk + E.A_RELEASE_RQ], [junk, E.A_RELEASE_RQ]):
            events = feed_chunks(P.PduFramer(synced=False), chunks)
            assert norms(events) == [P.Resynchronised(0.0, len(junk)), P.ReleaseRequest(0.0)]

    def test_undecidable_candidate_waits_for_more_bytes(self):
        # An RQ header of plausible length 256: its AE titles are needed to judge it, so wait.
        f = P.PduFramer(synced=False)
        junk = b"\x01\x00\x00\x00\x01\x00"
        assert f.feed(junk + E.A_RELEASE_RQ, 1.0) == []
        assert not f.synced
        events = f.feed(E.A_ASSOCIATE_AC, 2.0)
        assert norms(events) == [P.Resynchronised(0.0, len(junk)), P.ReleaseRequest(0.0), EXPECTED_AC]

    def test_resync_keeps_bounded_buffer_on_endless_junk(self):
        f = P.PduFramer(synced=False)
        for i in range(200):
            assert f.feed(JUNK, float(i)) == []
        assert f.resync_skipped > 200 * len(JUNK) - P.RESYNC_WINDOW
        ev = f.feed(E.A_RELEASE_RQ, 999.0)
        assert norms(ev) == [P.Resynchronised(0.0, 200 * len(JUNK)), P.ReleaseRequest(0.0)]


# ------------------------------------------------------------------------------------------------
# Gaps


class TestGaps:
    def test_gap_inside_data_pdv_keeps_sync(self):
        pix = E.P_DATA_TF_PIXELS
        f = P.PduFramer()
        assert norms(f.feed(pix[:100], 1.0)) == EXPECTED_P_DATA_TF_PIXELS
        assert f.gap(500, 2.0) == []
        assert f.synced
        events = f.feed(pix[600:] + E.P_DATA_TF + E.A_RELEASE_RQ, 3.0)
        assert norms(events) == EXPECTED_P_DATA_TF + [P.ReleaseRequest(0.0)]
        assert f.data_bytes == 88 + 412 + 44  # seen data bytes only

    def test_gap_exactly_to_end_of_data_pdv(self):
        pix = E.P_DATA_TF_PIXELS
        f = P.PduFramer()
        f.feed(pix[:12], 1.0)
        assert f.gap(1000, 2.0) == []
        assert f.synced
        assert norms(f.feed(E.A_RELEASE_RQ, 3.0)) == [P.ReleaseRequest(0.0)]

    def test_several_gaps_in_one_data_pdv(self):
        pix = E.P_DATA_TF_PIXELS
        f = P.PduFramer()
        f.feed(pix[:20], 1.0)
        for _ in range(9):
            assert f.gap(100, 2.0) == []
            assert list(f.feed(b"S" * 10, 2.0)) == []
        assert f.gap(82 - 80 + 0, 2.0) == [] and f.synced  # 8 + 9 * 110 + 2 = 1000 data bytes
        assert norms(f.feed(E.A_ABORT[(0, 0)], 3.0)) == [P.Abort(0.0, 0, 0)]

    def test_gap_over_pdv_boundary_inside_pdu(self):
        body = pdv(1, 0x00, b"x" * 100) + pdv(1, 0x02, b"y" * 100)
        data = pdu(4, body)
        f = P.PduFramer()
        f.feed(data[:30], 1.0)
        f.gap(120, 2.0)  # from inside the first PDV into the second
        assert f.synced
        events = f.feed(data[150:] + E.A_RELEASE_RQ, 3.0)
        assert norms(events) == [P.ReleaseRequest(0.0)]

    def test_gap_inside_command_pdv_loses_pdu_keeps_framing(self):
        f = P.PduFramer()
        data = E.P_DATA_TF
        assert norms(f.feed(data[:20], 1.0)) == [P.PDataTF(0.0, 174)]
        assert f.gap(10, 2.0) == [P.PduLost(2.0, codes.PDU_P_DATA_TF)]
        assert f.synced
        events = f.feed(data[30:] + E.P_DATA_TF_ECHO_FRAGMENTED + E.A_RELEASE_RQ, 3.0)
        assert norms(events) == EXPECTED_P_DATA_TF_ECHO + [P.ReleaseRequest(0.0)]
        assert_no_sentinel(events)

    @pytest.mark.parametrize("data,pdu_type", [
        (E.A_ASSOCIATE_RQ, 1), (E.A_ASSOCIATE_AC, 2), (E.A_ASSOCIATE_RJ[(1, 1, 7)], 3), (E.A_RELEASE_RQ, 5),
        (E.A_RELEASE_RP, 6), (E.A_ABORT[(2, 2)], 7)])
    def test_gap_inside_control_pdu(self, data, pdu_type):
        cut = len(data) // 2 + 3  # past the header
        for hole in (1, len(data) - cut - 1, len(data) - cut):
            if hole < 1:
                continue
            f = P.PduFramer()
            assert f.feed(data[:cut], 1.0) == []
            assert f.gap(hole, 2.0) == [P.PduLost(2.0, pdu_type)]
            assert f.synced
            events = f.feed(data[cut + hole :] + E.A_ASSOCIATE_AC + E.A_RELEASE_RP, 3.0)
            assert norms(events) == [EXPECTED_AC, P.ReleaseReply(0.0)], hole

    def test_gap_swallowing_a_header_then_resync(self):
        f = P.PduFramer()
        assert norms(f.feed(E.A_RELEASE_RQ, 1.0)) == [P.ReleaseRequest(0.0)]
        assert f.gap(3, 2.0) == []
        assert not f.synced
        events = f.feed(E.P_DATA_TF_PIXELS[3:] + E.A_RELEASE_RP + E.A_ABORT[(2, 1)], 3.0)
        assert norms(events) == [P.Resynchronised(0.0, len(E.P_DATA_TF_PIXELS) - 3), P.ReleaseReply(0.0),
                                 P.Abort(0.0, 2, 1)]
        assert f.synced

    def test_gap_over_partial_header(self):
        f = P.PduFramer()
        f.feed(E.A_ASSOCIATE_RQ[:4], 1.0)
        assert f.gap(10, 2.0) == []
        assert not f.synced
        events = f.feed(E.A_ASSOCIATE_RQ[14:] + E.A_RELEASE_RQ + E.A_ASSOCIATE_AC, 3.0)
        assert norms(events) == [P.Resynchronised(0.0, len(E.A_ASSOCIATE_RQ) - 14), P.ReleaseRequest(0.0),
                                 EXPECTED_AC]

    def test_gap_past_end_of_control_pdu_then_resync(self):
        f = P.PduFramer()
        f.feed(E.A_ASSOCIATE_RQ_ECHO[:100], 1.0)
        hole = len(E.A_ASSOCIATE_RQ_ECHO) - 100 + 2  # eats the first 2 bytes of the next PDU too
        assert f.gap(hole, 2.0) == [P.PduLost(2.0, 1)]
        assert not f.synced
        events = f.feed(E.A_RELEASE_RQ[2:] + E.A_RELEASE_RP, 3.0)
        assert norms(events) == [P.Resynchronised(0.0, len(E.A_RELEASE_RQ) - 2), P.ReleaseReply(0.0)]

    def test_gap_past_end_of_data_pdu_then_resync(self):
        f = P.PduFramer()
        f.feed(E.P_DATA_TF_PIXELS[:50], 1.0)
        assert f.gap(len(E.P_DATA_TF_PIXELS) - 50 + 1, 2.0) == []
        assert not f.synced
        events = f.feed(E.A_RELEASE_RQ[1:] + E.A_ASSOCIATE_AC, 3.0)
        assert norms(events) == [P.Resynchronised(0.0, len(E.A_RELEASE_RQ) - 1), EXPECTED_AC]

    def test_gap_at_pdu_boundary_then_resync(self):
        f = P.PduFramer()
        f.feed(E.A_RELEASE_RQ, 1.0)
        assert f.gap(len(E.A_ASSOCIATE_RQ), 2.0) == []  # a whole PDU missing: where the next starts is unknown
        assert norms(f.feed(E.A_ASSOCIATE_AC, 3.0)) == [P.Resynchronised(0.0, 0), EXPECTED_AC]

    def test_gap_while_resynchronising(self):
        f = P.PduFramer(synced=False)
        f.feed(JUNK[:30], 1.0)
        assert f.gap(100, 2.0) == []
        assert not f.synced
        events = f.feed(JUNK + E.A_RELEASE_RP, 3.0)
        assert norms(events)[-1] == P.ReleaseReply(0.0)
        assert isinstance(events[0], P.Resynchronised) and f.synced

    def test_gap_inside_pdv_header(self):
        data = E.P_DATA_TF + E.A_RELEASE_RQ
        f = P.PduFramer()
        f.feed(data[:8], 1.0)  # PDU header + 2 bytes of the first PDV header
        assert f.gap(2, 2.0) == []
        assert f.synced
        assert norms(f.feed(data[10:], 3.0)) == [P.ReleaseRequest(0.0)]


# ------------------------------------------------------------------------------------------------
# Fuzzing: never anything but events, never a hang

ALL_GOLDEN_BYTES = [g[1] for g in GOLDENS]


def _check_events(events):
    assert isinstance(events, (list, tuple))
    for e in events:
        assert isinstance(e, EVENT_TYPES), e


@settings(max_examples=200, deadline=timedelta(milliseconds=1000), suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=4000), cuts=st.lists(st.integers(0, 4000), max_size=20), synced=st.booleans(),
       gaps=st.lists(st.tuples(st.integers(0, 25), st.integers(1, 2000)), max_size=3))
def test_fuzz_random_bytes(data, cuts, synced, gaps):
    f = P.PduFramer(synced=synced)
    chunks = split_at(data, cuts)
    gap_at = dict(gaps)
    for i, c in enumerate(chunks):
        if i in gap_at:
            _check_events(f.gap(gap_at[i], float(i)))
        _check_events(f.feed(c, float(i)))


@st.composite
def mutated_stream(draw):
    parts = draw(st.lists(st.sampled_from(ALL_GOLDEN_BYTES), min_size=1, max_size=5))
    data = bytearray(b"".join(parts))
    for pos, val in draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)):
        data[pos % len(data)] = val
    if draw(st.booleans()):
        a = draw(st.integers(0, len(data)))
        b = draw(st.integers(a, min(len(data), a + 40)))
        del data[a:b]
    return bytes(data)


@settings(max_examples=200, deadline=timedelta(milliseconds=1000), suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_stream(), cuts=st.lists(st.integers(0, 5000), max_size=30), synced=st.booleans(),
       small=st.booleans())
def test_fuzz_mutated_goldens(data, cuts, synced, small):
    kw = {"max_control_pdu": 300, "max_command_bytes": 50} if small else {}
    f = P.PduFramer(synced=synced, **kw)
    for i, c in enumerate(split_at(data, cuts)):
        _check_events(f.feed(c, float(i)))


# ------------------------------------------------------------------------------------------------
# The goldens against pynetdicom's own encoders and decoders


class TestPynetdicomCrossCheck:
    @staticmethod
    def _ctx(cid, abstract, transfer, result=None):
        from pynetdicom.presentation import PresentationContext

        c = PresentationContext()
        c.context_id = cid
        if abstract:
            c.abstract_syntax = abstract
        c.transfer_syntax = list(transfer)
        if result is not None:
            c.result = result
        return c

    def test_associate_rq_encoded_by_pynetdicom(self):
        from pynetdicom import pdu_primitives as PR
        from pynetdicom.pdu import A_ASSOCIATE_RQ

        a = PR.A_ASSOCIATE()
        a.called_ae_title = "ANY-SCP"
        a.calling_ae_title = "STORESCU"
        a.application_context_name = E.APPLICATION_CONTEXT
        a.presentation_context_definition_list = [
            self._ctx(1, E.VERIFICATION, [E.IMPLICIT_VR_LE, E.EXPLICIT_VR_LE]),
            self._ctx(3, E.CT_IMAGE_STORAGE, [E.EXPLICIT_VR_LE, E.IMPLICIT_VR_LE, E.EXPLICIT_VR_BE]),
            self._ctx(5, E.MR_IMAGE_STORAGE, [E.JPEG_LOSSLESS_SV1, E.EXPLICIT_VR_LE]),
            self._ctx(7, E.STUDY_ROOT_FIND, [E.IMPLICIT_VR_LE]),
            self._ctx(9, E.PATIENT_ROOT_MOVE, [E.JPEG_2000_LOSSLESS, E.IMPLICIT_VR_LE]),
        ]
        ml = PR.MaximumLengthNotification()
        ml.maximum_length_received = 16384
        ic = PR.ImplementationClassUIDNotification()
        ic.implementation_class_uid = E.IMPLEMENTATION_CLASS_UID
        aw = PR.AsynchronousOperationsWindowNegotiation()
        aw.maximum_number_operations_invoked = 5
        aw.maximum_number_operations_performed = 3
        r1 = PR.SCP_SCU_RoleSelectionNegotiation()
        r1.sop_class_uid, r1.scu_role, r1.scp_role = E.CT_IMAGE_STORAGE, False, True
        r2 = PR.SCP_SCU_RoleSelectionNegotiation()
        r2.sop_class_uid, r2.scu_role, r2.scp_role = E.MR_IMAGE_STORAGE, True, True
        vn = PR.ImplementationVersionNameNotification()
        vn.implementation_version_name = E.IMPLEMENTATION_VERSION_RQ
        se = PR.SOPClassExtendedNegotiation()
        se.sop_class_uid = E.STUDY_ROOT_FIND
        se.service_class_application_information = b"\x01\x01\x01"
        ce = PR.SOPClassCommonExtendedNegotiation()
        ce.sop_class_uid = E.MR_IMAGE_STORAGE
        ce.service_class_uid = E.STORAGE_SERVICE_CLASS
        ce.related_general_sop_class_identification = [E.ENHANCED_MR_IMAGE_STORAGE]
        ui = PR.UserIdentityNegotiation()
        ui.user_identity_type = 2
        ui.positive_response_requested = True
        ui.primary_field = E.SENTINEL_USER
        ui.secondary_field = E.SENTINEL_PASS
        a.user_information = [ml, ic, aw, r1, r2, vn, se, ce, ui]
        assert A_ASSOCIATE_RQ(a).encode() == E.A_ASSOCIATE_RQ

    def test_associate_ac_encoded_by_pynetdicom(self):
        from pynetdicom import pdu_primitives as PR
        from pynetdicom.pdu import A_ASSOCIATE_AC

        a = PR.A_ASSOCIATE()
        a.called_ae_title = "ANY-SCP"
        a.calling_ae_title = "STORESCU"
        a.application_context_name = E.APPLICATION_CONTEXT
        a.presentation_context_definition_results_list = [
            self._ctx(1, None, [E.IMPLICIT_VR_LE], 0),
            self._ctx(3, None, [E.EXPLICIT_VR_LE], 1),
            self._ctx(5, None, [E.EXPLICIT_VR_LE], 2),
            self._ctx(7, None, [E.IMPLICIT_VR_LE], 3),
            self._ctx(9, None, [E.IMPLICIT_VR_LE], 4),
        ]
        ml = PR.MaximumLengthNotification()
        ml.maximum_length_received = 32768
        ic = PR.ImplementationClassUIDNotification()
        ic.implementation_class_uid = E.IMPLEMENTATION_CLASS_UID
        aw = PR.AsynchronousOperationsWindowNegotiation()
        aw.maximum_number_operations_invoked = 1
        aw.maximum_number_operations_performed = 1
        r1 = PR.SCP_SCU_RoleSelectionNegotiation()
        r1.sop_class_uid, r1.scu_role, r1.scp_role = E.CT_IMAGE_STORAGE, False, True
        vn = PR.ImplementationVersionNameNotification()
        vn.implementation_version_name = E.IMPLEMENTATION_VERSION_AC
        ui = PR.UserIdentityNegotiation()
        ui.server_response = E.SENTINEL_RESP
        a.user_information = [ml, ic, aw, r1, vn, ui]
        assert A_ASSOCIATE_AC(a).encode() == E.A_ASSOCIATE_AC

    @pytest.mark.parametrize("key", sorted(E.A_ASSOCIATE_RJ))
    def test_associate_rj_encoded_by_pynetdicom(self, key):
        from pynetdicom import pdu_primitives as PR
        from pynetdicom.pdu import A_ASSOCIATE_RJ

        a = PR.A_ASSOCIATE()
        a.result, a.result_source, a.diagnostic = key
        assert A_ASSOCIATE_RJ(a).encode() == E.A_ASSOCIATE_RJ[key]

    @pytest.mark.parametrize("key", sorted(E.A_ABORT))
    def test_abort_encoded_by_pynetdicom(self, key):
        from pynetdicom import pdu_primitives as PR
        from pynetdicom.pdu import A_ABORT_RQ

        if key[0] == 0:
            prim = PR.A_ABORT()
            prim.abort_source = 0
        else:
            prim = PR.A_P_ABORT()
            prim.provider_reason = key[1]
        assert A_ABORT_RQ(prim).encode() == E.A_ABORT[key]

    def test_release_encoded_by_pynetdicom(self):
        from pynetdicom.pdu import A_RELEASE_RP, A_RELEASE_RQ

        assert A_RELEASE_RQ().encode() == E.A_RELEASE_RQ
        assert A_RELEASE_RP().encode() == E.A_RELEASE_RP

    def test_p_data_encoded_by_pynetdicom(self):
        from pynetdicom import pdu_primitives as PR
        from pynetdicom.pdu import P_DATA_TF

        p = PR.P_DATA()
        p.presentation_data_value_list = [[3, b"\x03" + E.C_STORE_RQ_COMMAND], [3, b"\x00" + E.DATA_FRAGMENT_1],
                                          [3, b"\x02" + E.DATA_FRAGMENT_2]]
        assert P_DATA_TF(p).encode() == E.P_DATA_TF
        p = PR.P_DATA()
        p.presentation_data_value_list = [[1, b"\x01" + E.C_ECHO_RQ_COMMAND[:30]],
                                          [1, b"\x03" + E.C_ECHO_RQ_COMMAND[30:]]]
        assert P_DATA_TF(p).encode() == E.P_DATA_TF_ECHO_FRAGMENTED

    def test_pynetdicom_decodes_goldens_to_same_fields(self):
        from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
        from pynetdicom.pdu_items import UserIdentitySubItemAC, UserIdentitySubItemRQ

        rq = A_ASSOCIATE_RQ()
        rq.decode(E.A_ASSOCIATE_RQ)
        assert rq.encode() == E.A_ASSOCIATE_RQ
        assert (rq.called_ae_title, rq.calling_ae_title) == ("ANY-SCP", "STORESCU")
        (uid,) = [i for i in rq.user_information.user_data if isinstance(i, UserIdentitySubItemRQ)]
        assert (uid.user_identity_type, uid.positive_response_requested) == (2, 1)
        assert (uid.primary_field, uid.secondary_field) == (E.SENTINEL_USER, E.SENTINEL_PASS)
        ours = frame(E.A_ASSOCIATE_RQ)[0]
        theirs = [(c.context_id, str(c.abstract_syntax), tuple(str(t) for t in c.transfer_syntax))
                  for c in rq.presentation_context]
        assert theirs == [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in ours.contexts]
        assert rq.user_information.maximum_length == ours.user_info.max_pdu_length
        assert rq.user_information.implementation_class_uid == ours.user_info.implementation_class_uid
        assert rq.user_information.implementation_version_name == ours.user_info.implementation_version_name

        ac = A_ASSOCIATE_AC()
        ac.decode(E.A_ASSOCIATE_AC)
        assert ac.encode() == E.A_ASSOCIATE_AC
        (resp,) = [i for i in ac.user_information.user_data if isinstance(i, UserIdentitySubItemAC)]
        assert resp.server_response == E.SENTINEL_RESP
        ours = frame(E.A_ASSOCIATE_AC)[0]
        assert [(c.context_id, c.result) for c in ac.presentation_context] == [
            (c.context_id, c.result) for c in ours.contexts]

    def test_commands_are_valid_command_sets(self):
        from io import BytesIO

        from pydicom.filereader import read_dataset

        ds = read_dataset(BytesIO(E.C_STORE_RQ_COMMAND), True, True)
        assert (ds.CommandGroupLength, ds.CommandField, ds.MessageID) == (100, 0x0001, 7)
        assert ds.AffectedSOPClassUID == E.CT_IMAGE_STORAGE
        ds = read_dataset(BytesIO(E.C_ECHO_RQ_COMMAND), True, True)
        assert (ds.CommandGroupLength, ds.CommandField, ds.CommandDataSetType) == (56, 0x0030, 0x0101)


def test_gap_while_resynchronising_counts_the_dropped_bytes():
    f = P.PduFramer(synced=False)
    f.feed(b"\xff" * 3 + b"\x01\x00\x00", 1.0)  # an undecided candidate stays buffered
    held = 3
    before = f.resync_skipped
    assert f.gap(100, 2.0) == []
    assert f.resync_skipped == before + held
    events = f.feed(E.A_RELEASE_RQ, 3.0)
    assert norms(events) == [P.Resynchronised(0.0, 6), P.ReleaseRequest(0.0)]
