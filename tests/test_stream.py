"""StreamReassembler (probe/stream.py), alone and feeding a PduFramer."""

from __future__ import annotations

import dataclasses
import functools
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import encoded_pdus as E
from probe.dicom import pdu as P
from probe.stream import StreamReassembler

MASK = 0xFFFFFFFF


def reassembler(next_seq: int | None = 1000, **kw) -> StreamReassembler:
    r = StreamReassembler(**kw)
    r.next_seq = next_seq
    return r


def norm(ev):
    kw = {"ts": 0.0}
    if isinstance(ev, (P.AssociateRequest, P.AssociateAccept)):
        kw["start_ts"] = 0.0
    return dataclasses.replace(ev, **kw)


def frame_chunks(chunks, synced: bool = True):
    f = P.PduFramer(synced=synced)
    events = []
    for i, c in enumerate(chunks):
        events.extend(f.gap(c, float(i)) if isinstance(c, int) else f.feed(c, float(i)))
    return [norm(e) for e in events]


# ------------------------------------------------------------------------------------------------
# In order, retransmissions, out of order


class TestInOrder:
    def test_in_order_passes_through(self):
        r = reassembler()
        assert r.accept(1000, b"abc") == [b"abc"]
        assert r.accept(1003, b"defg") == [b"defg"]
        assert r.next_seq == 1007
        assert (r.retransmitted, r.gaps, r.gap_bytes, r.buffered) == (0, 0, 0, 0)

    def test_first_segment_fixes_start_when_no_syn(self):
        r = StreamReassembler()
        assert r.next_seq is None
        assert r.accept(555, b"hello") == [b"hello"]
        assert r.next_seq == 560
        assert r.accept(560, b"!") == [b"!"]

    def test_advance_for_syn_and_fin(self):
        r = reassembler(99)
        r.advance(1)  # SYN
        assert r.accept(100, b"ab") == [b"ab"]
        r.advance(1)  # FIN
        assert r.next_seq == 103
        r2 = StreamReassembler()
        r2.advance(1)  # nothing known yet: no effect
        assert r2.next_seq is None


class TestRetransmission:
    def test_full_retransmission_dropped(self):
        r = reassembler()
        r.accept(1000, b"abcdef")
        assert r.accept(1000, b"abcdef") == []
        assert r.accept(1002, b"cd") == []
        assert r.accept(1000, b"a") == []
        assert r.retransmitted == 3
        assert r.next_seq == 1006

    def test_partial_overlap_delivers_only_new_bytes(self):
        r = reassembler()
        r.accept(1000, b"abcdef")
        assert r.accept(1004, b"efGHI") == [b"GHI"]
        assert r.next_seq == 1009
        assert r.accept(1000, b"abcdefGHIjk") == [b"jk"]
        assert r.retransmitted == 0

    def test_partial_overlap_then_buffered_segments_drain(self):
        r = reassembler()
        r.accept(1000, b"abc")
        assert r.accept(1010, b"klm") == []
        assert r.accept(1002, b"cdefghij") == [b"defghij", b"klm"]
        assert r.next_seq == 1013 and r.buffered == 0


class TestOutOfOrder:
    def test_future_segment_waits_for_the_hole(self):
        r = reassembler()
        assert r.accept(1005, b"fghij") == []
        assert r.buffered == 5
        assert r.accept(1000, b"abcde") == [b"abcde", b"fghij"]
        assert r.buffered == 0 and r.next_seq == 1010

    def test_reverse_order(self):
        r = reassembler()
        data = bytes(range(100))
        out = []
        for off in range(90, -10, -10):
            out += r.accept(1000 + off, data[off : off + 10])
        assert b"".join(out) == data
        assert r.buffered == 0 and r.gaps == 0

    def test_duplicate_future_segments_buffered_once(self):
        r = reassembler()
        assert r.accept(1004, b"efgh") == []
        assert r.accept(1004, b"efgh") == []
        assert r.buffered == 4
        assert r.accept(1004, b"ef") == []  # shorter copy does not replace the longer one
        assert r.buffered == 4
        assert r.accept(1004, b"efghij") == []  # longer copy does
        assert r.buffered == 6
        assert r.accept(1000, b"abcd") == [b"abcd", b"efghij"]
        assert r.buffered == 0 and r.next_seq == 1010

    def test_overlapping_future_segments(self):
        r = reassembler()
        assert r.accept(1010, b"KLMNO") == []
        assert r.accept(1005, b"fghijKLM") == []
        assert r.accept(1012, b"MNOpq") == []
        out = r.accept(1000, b"abcde")
        assert b"".join(out) == b"abcdefghijKLMNOpq"
        assert r.buffered == 0 and r.next_seq == 1017

    def test_future_segment_fully_covered_by_later_in_order_one(self):
        r = reassembler()
        r.accept(1003, b"de")
        assert r.accept(1000, b"abcdefg") == [b"abcdefg"]
        assert r.buffered == 0 and r.next_seq == 1007
        assert r.retransmitted == 1  # the buffered copy turned out to be already delivered


# ------------------------------------------------------------------------------------------------
# Losses: acked(), buffer overflow, flush(), finish()


class TestLoss:
    def test_ack_past_hole_declares_gap_then_buffered_bytes(self):
        r = reassembler()
        r.accept(1000, b"abc")
        r.accept(1010, b"klm")
        assert r.acked(1013) == [7, b"klm"]
        assert (r.gaps, r.gap_bytes, r.next_seq, r.buffered) == (1, 7, 1013, 0)

    def test_ack_at_start_of_buffered_segment(self):
        r = reassembler()
        r.accept(1010, b"klm")
        assert r.acked(1010) == [10, b"klm"]

    def test_ack_inside_hole_declares_only_up_to_ack(self):
        r = reassembler()
        r.accept(1010, b"klm")
        assert r.acked(1004) == [4]
        assert r.next_seq == 1004 and r.buffered == 3
        assert r.accept(1004, b"efghij") == [b"efghij", b"klm"]

    def test_ack_not_past_next_seq_proves_nothing(self):
        r = reassembler()
        r.accept(1000, b"abc")
        r.accept(1010, b"klm")
        assert r.acked(1003) == []
        assert r.acked(1001) == []
        assert r.acked(1003 - 2**31) == []  # far behind (modulo 2**32)
        assert r.buffered == 3 and r.gaps == 0

    def test_ack_without_buffered_data_proves_nothing(self):
        r = reassembler()
        r.accept(1000, b"abc")
        assert r.acked(5000) == []  # nothing buffered: the bytes may still come
        assert r.next_seq == 1003
        assert StreamReassembler().acked(5) == []

    def test_ack_past_two_holes_declares_both(self):
        """An ACK beyond two holes proves both were received by the peer (module doc: "The hole before
        them is declared a gap when the receiver acknowledges past it")."""
        r = reassembler()
        r.accept(1010, b"kkkkk")
        r.accept(1020, b"uuuuu")
        assert r.acked(1030) == [10, b"kkkkk", 5, b"uuuuu"]
        assert r.buffered == 0 and r.next_seq == 1025

    def test_late_segment_after_gap_is_a_retransmission(self):
        r = reassembler()
        r.accept(1010, b"klm")
        r.acked(1013)
        assert r.accept(1000, b"abcdefghij") == []
        assert r.retransmitted == 1

    def test_overflow_forces_gap(self):
        r = reassembler(max_buffer=10)
        assert r.accept(1010, b"123456") == []
        assert r.accept(1020, b"ABCDEF") == [10, b"123456"]
        assert r.overflows == 1 and r.gaps == 1 and r.gap_bytes == 10
        assert r.buffered == 6 and r.next_seq == 1016
        assert r.accept(1016, b"7890") == [b"7890", b"ABCDEF"]

    def test_overflow_by_one_big_segment(self):
        r = reassembler(max_buffer=100)
        assert r.accept(1050, b"x" * 101) == [50, b"x" * 101]
        assert r.overflows == 1 and r.buffered == 0

    def test_overflow_keeps_buffer_bounded(self):
        """The out-of-order buffer is "bounded" (module doc): an overflow must free enough room, not
        just the earliest hole. Here 100 one-byte segments, each behind its own hole, fill the buffer;
        then every 1000-byte segment from further ahead overflows it but frees only one byte."""
        r = reassembler(max_buffer=100)
        for k in range(100):
            assert r.accept(1001 + 2 * k, b"s") == []
        assert r.buffered == 100
        peak = 0
        for k in range(100):
            r.accept(1_000_000 + 2000 * k, b"B" * 1000)
            peak = max(peak, r.buffered)
        assert peak <= 100 + 1000, f"out-of-order buffer grew to {peak} bytes with max_buffer=100"

    def test_flush_declares_every_hole(self):
        r = reassembler()
        r.accept(1000, b"ab")
        r.accept(1005, b"fg")
        r.accept(1010, b"kl")
        assert r.flush() == [3, b"fg", 3, b"kl"]
        assert (r.gaps, r.gap_bytes, r.buffered, r.next_seq) == (2, 6, 0, 1012)
        assert r.flush() == []

    def test_flush_in_order_stream_is_empty(self):
        r = reassembler()
        r.accept(1000, b"ab")
        assert r.flush() == []
        assert StreamReassembler().flush() == []

    def test_finish_declares_hole_before_fin(self):
        r = reassembler()
        r.accept(1000, b"ab")
        assert r.finish(1010) == [8]
        assert r.next_seq == 1010 and r.gap_bytes == 8

    def test_finish_flushes_then_trailing_hole(self):
        r = reassembler()
        r.accept(1005, b"fg")
        assert r.finish(1010) == [5, b"fg", 3]
        assert r.gap_bytes == 8 and r.buffered == 0

    def test_finish_at_or_behind_next_seq(self):
        r = reassembler()
        r.accept(1000, b"abc")
        assert r.finish(1003) == []
        assert r.finish(1001) == []  # retransmitted FIN
        assert r.gaps == 0


# ------------------------------------------------------------------------------------------------
# Sequence number wraparound at 2**32


class TestWraparound:
    def test_in_order_across_wrap(self):
        r = reassembler(2**32 - 3)
        assert r.accept(2**32 - 3, b"abcde") == [b"abcde"]
        assert r.next_seq == 2
        assert r.accept(2, b"f") == [b"f"]

    def test_out_of_order_across_wrap(self):
        r = reassembler(2**32 - 3)
        assert r.accept(2, b"zz") == []
        assert r.accept(0, b"xy") == []
        assert r.accept(2**32 - 3, b"abc") == [b"abc", b"xy", b"zz"]
        assert r.next_seq == 4

    def test_retransmission_across_wrap(self):
        r = reassembler(2**32 - 3)
        r.accept(2**32 - 3, b"abcde")
        assert r.accept(2**32 - 4, b"_abc") == []
        assert r.accept(2**32 - 1, b"cdefg") == [b"fg"]
        assert r.retransmitted == 1

    def test_ack_and_flush_across_wrap(self):
        r = reassembler(2**32 - 10)
        r.accept(5, b"hello")
        assert r.acked(7) == [15, b"hello"]
        r.accept(20, b"x")
        assert r.flush() == [10, b"x"]
        assert r.next_seq == 21

    def test_earliest_buffered_segment_is_by_sequence_distance(self):
        # 2**32 - 2 is earlier in the stream than 3, although numerically larger.
        r = reassembler(2**32 - 20)
        r.accept(3, b"later")
        r.accept(2**32 - 2, b"soon")
        assert r.flush() == [18, b"soon", 1, b"later"]

    def test_finish_across_wrap(self):
        r = reassembler(2**32 - 2)
        assert r.finish(3) == [5]
        assert r.next_seq == 3


# ------------------------------------------------------------------------------------------------
# Properties: reassembly then framing equals framing the original stream

STREAM_PARTS = [
    E.A_ASSOCIATE_RQ, E.A_ASSOCIATE_AC, E.A_ASSOCIATE_RQ_ECHO, E.P_DATA_TF, E.P_DATA_TF_ECHO_FRAGMENTED,
    E.P_DATA_TF_PIXELS, E.A_RELEASE_RQ, E.A_RELEASE_RP, E.A_ASSOCIATE_RJ[(1, 1, 7)], E.A_ABORT[(2, 6)],
]

ISNS = st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**32 - 100, 2**32 - 2000]), st.integers(0, MASK))


@st.composite
def golden_stream(draw):
    idx = draw(st.lists(st.integers(0, len(STREAM_PARTS) - 1), min_size=2, max_size=6))
    return b"".join(STREAM_PARTS[i] for i in idx)


@st.composite
def segmented(draw, stream):
    cuts = sorted(set(draw(st.lists(st.integers(1, len(stream) - 1), max_size=40))))
    bounds = [0, *cuts, len(stream)]
    return [(a, stream[a:b]) for a, b in zip(bounds, bounds[1:])]


@st.composite
def messy_delivery(draw):
    """A golden stream, and its segments as a capture could see them: reordered locally, some
    duplicated, some retransmitted with different (overlapping) boundaries."""
    stream = draw(golden_stream())
    segs = draw(segmented(stream))
    jitter = draw(st.lists(st.integers(0, 4), min_size=len(segs), max_size=len(segs)))
    order = sorted(range(len(segs)), key=lambda i: i + jitter[i])
    sent = [segs[i] for i in order]
    for src, dst in draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=8)):
        sent.insert(dst % (len(sent) + 1), segs[src % len(segs)])
    for a, n, dst in draw(st.lists(st.tuples(st.integers(0, len(stream) - 1), st.integers(1, 800),
                                             st.integers(0, 10**6)), max_size=8)):
        sent.insert(dst % (len(sent) + 1), (a, stream[a : a + n]))
    syn = draw(st.booleans())
    if not syn:
        sent.insert(0, segs[0])  # without a SYN the first segment seen fixes the stream start
    return stream, sent, draw(ISNS), syn


@functools.lru_cache(maxsize=512)
def _whole(stream: bytes):
    return frame_chunks([stream])


@settings(max_examples=200, deadline=timedelta(milliseconds=1000), suppress_health_check=[HealthCheck.too_slow])
@given(messy_delivery())
def test_reassembled_stream_frames_like_the_original(case):
    stream, sent, isn, syn = case
    r = StreamReassembler()
    if syn:
        r.next_seq = isn
    chunks = []
    for off, payload in sent:
        chunks += r.accept((isn + off) & MASK, payload)
    chunks += r.flush()
    assert all(isinstance(c, bytes) for c in chunks), chunks  # nothing was lost
    assert b"".join(chunks) == stream
    assert r.buffered == 0 and r.gaps == 0 and r.next_seq == (isn + len(stream)) & MASK
    assert frame_chunks(chunks) == _whole(stream)


@settings(max_examples=150, deadline=timedelta(milliseconds=1000), suppress_health_check=[HealthCheck.too_slow])
@given(stream=golden_stream(), cuts=st.lists(st.integers(0, 10000), max_size=60))
def test_any_split_frames_like_the_whole(stream, cuts):
    cuts = sorted(set(c for c in cuts if 0 < c < len(stream)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    assert frame_chunks(chunks) == _whole(stream)


@st.composite
def lossy_delivery(draw):
    stream = draw(golden_stream())
    segs = draw(segmented(stream))
    keep = draw(st.lists(st.booleans(), min_size=len(segs), max_size=len(segs)))
    kept = [s for s, k in zip(segs, keep) if k]
    jitter = draw(st.lists(st.integers(0, 6), min_size=len(kept), max_size=len(kept)))
    kept = [kept[i] for i in sorted(range(len(kept)), key=lambda i: i + jitter[i])]
    return stream, kept, draw(ISNS), draw(st.booleans())


@settings(max_examples=150, deadline=timedelta(milliseconds=1000), suppress_health_check=[HealthCheck.too_slow])
@given(lossy_delivery())
def test_lost_segments_become_exact_gaps(case):
    """Whatever was captured is delivered at its stream position; gaps cover exactly the bytes never
    captured, up to the last captured byte. The framer consumes the result without raising."""
    stream, kept, isn, ack_at_end = case
    r = StreamReassembler()
    r.next_seq = isn
    chunks = []
    for off, payload in kept:
        chunks += r.accept((isn + off) & MASK, payload)
    end = max((off + len(p) for off, p in kept), default=0)
    if ack_at_end:
        chunks += r.acked((isn + end) & MASK)
    chunks += r.flush()
    covered = bytearray(end)
    for off, p in kept:
        covered[off : off + len(p)] = b"\x01" * len(p)
    pos = 0
    for c in chunks:
        if isinstance(c, int):
            assert c > 0 and not any(covered[pos : pos + c])
            pos += c
        else:
            assert c and c == stream[pos : pos + len(c)] and all(covered[pos : pos + len(c)])
            pos += len(c)
    assert pos == end
    assert r.gap_bytes == sum(c for c in chunks if isinstance(c, int))
    assert r.buffered == 0
    for e in frame_chunks(chunks):
        assert "SENTINEL" not in repr(e)


@settings(max_examples=75, deadline=timedelta(milliseconds=1000), suppress_health_check=[HealthCheck.too_slow])
@given(messy_delivery(), st.integers(1, 3000))
def test_small_buffer_never_reorders_bytes(case, max_buffer):
    """With a small out-of-order buffer, overflows may declare gaps, but delivered bytes are always at
    their true stream positions, and the total accounted length never exceeds the stream."""
    stream, sent, isn, syn = case
    r = StreamReassembler(max_buffer=max_buffer)
    if syn:
        r.next_seq = isn
    chunks = []
    for off, payload in sent:
        chunks += r.accept((isn + off) & MASK, payload)
    chunks += r.flush()
    pos = 0
    for c in chunks:
        if isinstance(c, int):
            pos += c
        else:
            assert c == stream[pos : pos + len(c)]
            pos += len(c)
    assert pos == len(stream)
    frame_chunks(chunks)  # must not raise
