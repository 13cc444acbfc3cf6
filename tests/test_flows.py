"""The flow table: roles, idle timeouts by packet time, closed-connection linger, 4-tuple reuse, cap."""

from __future__ import annotations

import struct

from probe.connection import Limits
from probe.decode import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from probe.dicom import association as A
from probe.flows import FlowSettings, FlowTable

CLIENT, SERVER = bytes([198, 19, 1, 21]), bytes([198, 18, 0, 10])
RQ_BODY = struct.pack(">HH", 1, 0) + b"PACS_MAIN".ljust(16) + b"CT_REMOTE1".ljust(16) + b"\0" * 32
RQ = struct.pack(">BxI", 1, len(RQ_BODY)) + RQ_BODY
RJ = bytes([3, 0, 0, 0, 0, 4, 0, 1, 1, 3])
RELEASE_RP = bytes([6, 0, 0, 0, 0, 4, 0, 0, 0, 0])
RELEASE_RQ = bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0])
AC_MIN = struct.pack(">BxI", 2, len(RQ_BODY)) + RQ_BODY  # an AC with no items


def seg(from_client, seq, ack, flags, payload=b"", sport=40000):
    if from_client:
        return (CLIENT, SERVER, sport, 104, seq, ack, flags, payload)
    return (SERVER, CLIENT, 104, sport, seq, ack, flags, payload)


def ended(out):
    return [n.association for n in out if isinstance(n, A.AssociationEnded)]


def handshake(table, out, ts=0.0, sport=40000):
    table.segment(seg(True, 100, 0, TCP_SYN, sport=sport), ts, out)
    table.segment(seg(False, 500, 101, TCP_SYN | TCP_ACK, sport=sport), ts, out)


def test_rejected_association_over_a_full_connection():
    t, out = FlowTable(), []
    handshake(t, out)
    t.segment(seg(True, 101, 501, TCP_ACK, RQ), 1.0, out)
    t.segment(seg(False, 501, 101 + len(RQ), TCP_ACK, RJ), 1.01, out)
    t.segment(seg(True, 101 + len(RQ), 511, TCP_FIN | TCP_ACK), 1.02, out)
    t.segment(seg(False, 511, 102 + len(RQ), TCP_FIN | TCP_ACK), 1.03, out)
    (a,) = ended(out)
    assert a.outcome == A.REJECTED and a.client == "198.19.1.21:40000" and a.server == "198.18.0.10:104"
    assert t.active == 0 and t.evicted == {"closed": 1}


def test_idle_timeout_by_packet_time_makes_no_response():
    t, out = FlowTable(FlowSettings(idle_timeout=60)), []
    handshake(t, out)
    t.segment(seg(True, 101, 501, TCP_ACK, RQ), 1.0, out)
    t.expire(30.0, out)
    assert ended(out) == []
    t.expire(62.5, out)
    (a,) = ended(out)
    assert a.outcome == A.NO_RESPONSE and t.active == 0 and t.evicted["idle"] == 1


def test_activity_postpones_the_timeout():
    t, out = FlowTable(FlowSettings(idle_timeout=60)), []
    handshake(t, out)
    t.segment(seg(True, 101, 501, TCP_ACK, RQ), 1.0, out)
    t.segment(seg(False, 501, 101 + len(RQ), TCP_ACK), 50.0, out)  # a pure ACK is activity
    t.expire(70.0, out)
    assert ended(out) == [] and t.active == 1
    t.expire(111.0, out)
    assert [a.outcome for a in ended(out)] == [A.NO_RESPONSE]


def test_late_segments_of_a_closed_connection_are_ignored_until_reused():
    t, out = FlowTable(FlowSettings(closed_linger=30)), []
    handshake(t, out)
    t.segment(seg(True, 101, 501, TCP_ACK, RQ), 1.0, out)
    t.segment(seg(False, 501, 101 + len(RQ), TCP_ACK | TCP_RST, RJ), 1.01, out)
    assert [a.outcome for a in ended(out)] == [A.REJECTED]
    out.clear()
    t.segment(seg(False, 501, 101 + len(RQ), TCP_ACK, RJ), 2.0, out)  # a late retransmission
    t.segment(seg(False, 501, 101 + len(RQ), TCP_ACK, RELEASE_RP), 3.0, out)  # junk after close
    assert out == [] and len(t) == 1
    handshake(t, out, ts=4.0)  # the same 4-tuple, a new connection
    t.segment(seg(True, 101, 501, TCP_ACK, RQ), 5.0, out)
    assert [type(n).__name__ for n in out][:2] == ["AssociationOpened", "AssociationRequested"]
    t.expire(400.0, out)  # the new connection idles out too
    assert len(t) == 0


def test_roles_without_a_syn_come_from_the_server_port():
    t, out = FlowTable(), []
    t.segment(seg(False, 900, 100, TCP_ACK, RJ), 1.0, out)  # first packet from the server
    (a,) = ended(out)
    assert a.outcome == A.REJECTED and a.rq_seen is False
    assert a.requestor_is_client and a.client == "198.19.1.21:40000"


def test_pure_acks_of_unknown_connections_create_nothing():
    t, out = FlowTable(), []
    t.segment(seg(True, 1, 1, TCP_ACK), 1.0, out)
    t.segment(seg(True, 1, 1, TCP_FIN | TCP_ACK), 1.0, out)
    assert len(t) == 0 and t.ignored_no_flow == 2


def test_full_table_evicts_handshake_only_flows_first():
    t, out = FlowTable(FlowSettings(max_flows=2)), []
    handshake(t, out, sport=40000)
    t.segment(seg(True, 101, 501, TCP_ACK, RQ, sport=40000), 1.0, out)  # a real association
    for port in range(50000, 50010):  # a SYN flood
        t.segment(seg(True, 7, 0, TCP_SYN, sport=port), 2.0, out)
    assert len(t) == 2 and t.evicted == {"pressure-handshake": 9}
    t.segment(seg(False, 501, 101 + len(RQ), TCP_ACK, RJ, sport=40000), 3.0, out)
    assert [a.outcome for a in ended(out)] == [A.REJECTED]  # the association survived the flood


def test_half_open_associations_go_before_established_ones():
    t, out = FlowTable(FlowSettings(max_flows=3)), []
    handshake(t, out, sport=40000)
    t.segment(seg(True, 101, 501, TCP_ACK, RQ, sport=40000), 1.0, out)
    t.segment(seg(False, 501, 101 + len(RQ), TCP_ACK, AC_MIN, sport=40000), 1.1, out)  # established
    for port in range(50000, 50005):  # RQs never answered
        t.segment(seg(True, 7, 0, TCP_SYN, sport=port), 2.0, out)
        t.segment(seg(True, 8, 0, TCP_ACK, RQ, sport=port), 2.0, out)
    assert t.evicted == {"pressure-unanswered": 3}
    assert [a.outcome for a in ended(out)] == [A.INCOMPLETE] * 3
    t.segment(seg(True, 101 + len(RQ), 501 + len(AC_MIN), TCP_ACK, RELEASE_RQ, sport=40000), 3.0, out)
    t.segment(seg(False, 501 + len(AC_MIN), 111 + len(RQ), TCP_ACK, RELEASE_RP, sport=40000), 3.1, out)
    assert ended(out)[-1].outcome == A.RELEASED  # the established association was kept


def test_full_table_evicts_the_least_recently_active_association():
    t, out = FlowTable(FlowSettings(max_flows=2)), []
    for i, port in enumerate((40000, 40001)):
        handshake(t, out, ts=float(i), sport=port)
        t.segment(seg(True, 101, 501, TCP_ACK, RQ, sport=port), 10.0 * (i + 1), out)
        t.segment(seg(False, 501, 101 + len(RQ), TCP_ACK, AC_MIN, sport=port), 10.0 * (i + 1), out)
    handshake(t, out, ts=30.0, sport=40002)  # a third connection pushes out the older one (40000)
    (a,) = ended(out)
    assert a.client.endswith(":40000") and a.outcome == A.INCOMPLETE
    assert t.evicted == {"pressure": 1} and len(t) == 2 and t.active == 2


def test_capture_end_makes_open_associations_incomplete():
    t, out = FlowTable(), []
    handshake(t, out)
    t.segment(seg(True, 101, 501, TCP_ACK, RQ), 1.0, out)
    t.end(2.0, out)
    (a,) = ended(out)
    assert a.outcome == A.INCOMPLETE and t.evicted == {"capture-end": 1} and t.active == 0


def test_small_out_of_order_buffer_declares_gaps():
    t, out = FlowTable(FlowSettings(limits=Limits(max_stream_buffer=8))), []
    handshake(t, out)
    t.segment(seg(True, 101 + 20, 501, TCP_ACK, RQ[20:]), 1.0, out)  # the first 20 bytes never come
    gaps = [n for n in out if type(n).__name__ == "StreamGap"]
    assert gaps and gaps[0].nbytes == 20


def test_handshake_only_flows_cost_under_1_kib_each():
    """A connection without payload yet (a SYN flood, idle handshakes) is a small record, not a
    Connection: measured with tracemalloc, everything the table allocates for it."""
    import tracemalloc

    from probe import stream

    t, out = FlowTable(FlowSettings(max_flows=1_000_000)), []
    n = 20_000
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        client = bytes([10, (i >> 16) & 255, (i >> 8) & 255, i & 255])
        t.segment((client, SERVER, 40000 + i % 20000, 104, 7, 0, TCP_SYN, b""), 1.0, out)
        t.segment((SERVER, client, 104, 40000 + i % 20000, 9, 8, TCP_SYN | TCP_ACK, b""), 1.0, out)
    per_flow = (tracemalloc.get_traced_memory()[0] - base) / n
    tracemalloc.stop()
    assert len(t) == n and t.active == n and out == []
    assert per_flow <= 1024, per_flow
    assert stream._NONE_HELD == {}  # the shared empty out-of-order buffer is never written to


def test_handshake_records_expire_and_promote_with_their_sequence_numbers():
    t, out = FlowTable(FlowSettings(idle_timeout=60)), []
    handshake(t, out, sport=40000)
    handshake(t, out, ts=50.0, sport=40001)
    t.expire(70.0, out)  # the first handshake idled out, the second is younger
    assert len(t) == 1 and t.evicted == {"idle": 1} and t.active == 1
    # The client's first bytes arrive out of order: the SYN's sequence number tells the hole apart.
    t.segment(seg(True, 101 + 10, 501, TCP_ACK, RQ[10:], sport=40001), 71.0, out)
    t.segment(seg(True, 101, 501, TCP_ACK, RQ[:10], sport=40001), 71.1, out)
    t.segment(seg(False, 501, 101 + len(RQ), TCP_ACK, RJ, sport=40001), 71.2, out)
    assert [a.outcome for a in ended(out)] == [A.REJECTED]
    t.segment(seg(True, 1, 1, TCP_SYN, sport=40002), 72.0, out)
    t.segment(seg(False, 1, 2, TCP_RST | TCP_ACK, sport=40002), 72.0, out)  # port closed
    assert t.evicted["closed"] == 1 and len(t) == 1
    t.end(80.0, out)
    assert t.active == 0


def test_a_reused_4_tuple_counts_the_old_connection_closed_once():
    t, out = FlowTable(FlowSettings(closed_linger=30)), []
    handshake(t, out)
    t.segment(seg(True, 101, 501, TCP_ACK, RQ), 1.0, out)
    t.segment(seg(False, 501, 101 + len(RQ), TCP_ACK | TCP_RST, RJ), 1.01, out)
    handshake(t, out, ts=2.0)  # the same 4-tuple again while the closed one lingers
    assert t.evicted == {"closed": 1} and len(t) == 1 and t.active == 1


def test_a_connection_answered_by_its_first_segment_leaves_the_unanswered_list():
    """Picked up mid-way, a connection whose first payload is already P-DATA is answered at once
    (the machine adopts an established association); it must not wait for a later segment to leave
    the list that pressure eviction empties first, since later segments may all take the fast lane."""
    t, out = FlowTable(), []
    pdv = struct.pack(">IBB", 2 + 4, 1, 0x00) + b"data"
    pdata = struct.pack(">BxI", 4, len(pdv)) + pdv
    t.segment(seg(True, 7000, 900, TCP_ACK, pdata), 1.0, out)
    (conn,) = {c for c, _ in t._table.values()}
    assert conn.machine.state == A.ESTABLISHED and conn.answered
    assert not t._unanswered
