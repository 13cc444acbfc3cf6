"""The flow table: TCP segments to connections, who is client and server, idle timeouts, a cap.

Both orientations of a connection's 4-tuple are keys of one dict, so each packet costs one lookup.
Client and server come from the SYN; without one, from the configured server ports; and the
association machine corrects it if the other side turns out to send the A-ASSOCIATE-RQ.

Idle connections expire by packet time through a timing wheel (one bucket per second, a heap of
bucket numbers): a connection is looked at once per idle-timeout period, never per packet.
A connection seen only in its handshake (no byte of payload yet) is a small record (client and
server, the initial sequence numbers, last activity; about 0.4 KiB against 2-3 KiB for a
Connection) until its first payload: SYN floods and port scans cost little. Such records expire in
order of last activity. Closed connections linger briefly so that late retransmissions and final
ACKs are not mistaken for new connections picked up mid-stream. When the table is full, a new
connection evicts the oldest one that never carried a byte (SYN floods, scans), then the oldest
whose association was never answered, else the least recently active one: a flood cannot stop the
probe from following new associations.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
import ipaddress
import struct
from dataclasses import dataclass

from .connection import Connection, Limits
from .tlscert import CertParser
from .tlsflow import TlsConnection
from .decode import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from .dicom.pdu import ItemCache
from .stream import Budget


_PORTS = struct.Struct(">HH")
_MASK = 0xFFFFFFFF


class _Handshake:
    """A connection seen only in its handshake so far (SYN, SYN-ACK, ACK; no byte of payload): the
    few facts a Connection will need, so that SYN floods and idle handshakes cost little memory."""

    __slots__ = ("key", "isn", "last_ts")

    def __init__(self, key: tuple, ts: float):
        self.key = key  # (client address, client port, server address, server port)
        self.isn: list = [None, None]  # initial sequence numbers: client's, server's
        self.last_ts = ts


@dataclass(frozen=True, slots=True)
class FlowSettings:
    server_ports: frozenset[int] = frozenset((104, 11112))  # DICOM, and DICOM over TLS (tls_ports)
    tls_ports: frozenset[int] = frozenset((2762,))  # connections to these are observed as TLS
    idle_timeout: float = 300.0
    closed_linger: float = 30.0
    max_flows: int = 100_000
    limits: Limits = Limits()


def endpoint(addr: bytes, port: int) -> str:
    if len(addr) == 4:
        return f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}:{port}"
    return f"[{ipaddress.IPv6Address(addr)}]:{port}"


class FlowTable:
    def __init__(self, settings: FlowSettings = FlowSettings()):
        self.settings = settings
        self._ports = settings.server_ports | settings.tls_ports
        self._tls_ports = settings.tls_ports
        self.cert_parser = CertParser()  # certificate summaries, cached (the same ones recur)
        self._table: dict[tuple, tuple[Connection, bool]] = {}
        # IPv4 connections by the 12 header bytes (source and destination address, then source and
        # destination port) that follow each other in an IPv4 header without options and its TCP
        # header: the pipeline's fast lane finds a connection with one slice and one lookup.
        self.fast: dict[bytes, tuple] = {}
        self.item_cache = ItemCache()
        self.budget = Budget(settings.limits.max_buffer_total)
        self._keys: dict[int, tuple] = {}  # id(conn) -> its forward key, for removal
        # Bucket -> connections due then. OrderedDicts throughout: O(1) removal of any entry and
        # O(1) access to the oldest (a plain dict walks its deleted slots when used as a queue).
        self._wheel: dict[int, OrderedDict[int, Connection]] = {}
        # Connections without payload yet, by client->server 4-tuple, least recently active first.
        self._handshakes: OrderedDict[tuple, _Handshake] = OrderedDict()
        self._unanswered: OrderedDict[int, Connection] = OrderedDict()  # payload, but no association answered
        self._heap: list[int] = []
        self.active = 0  # connections not yet closed
        self.evicted: dict[str, int] = {}
        self.ignored_no_flow = 0  # segments without payload for an unknown connection
        self.retransmitted = 0

    def __len__(self) -> int:
        return len(self._keys) + len(self._handshakes)

    def segment(self, seg: tuple, ts: float, out: list) -> None:
        src, dst, sport, dport, seq, ack, flags, payload = seg
        hit = self._table.get((src, sport, dst, dport))
        if hit is not None:
            conn, from_client = hit
            if conn.closed:
                if flags & TCP_SYN and not flags & TCP_ACK:
                    self._remove(conn, None)  # the 4-tuple is reused by a new connection (counted when it closed)
                else:
                    return
            else:
                conn.segment(from_client, seq, ack, flags, payload, ts, out)
                self._after(conn, ts)
                return
        hs = self._handshakes
        if hs:
            pending = hs.get((src, sport, dst, dport))
            from_client = pending is not None
            if pending is None:
                pending = hs.get((dst, dport, src, sport))
            if pending is not None:
                if not payload:
                    self._handshake_segment(pending, from_client, seq, flags, ts)
                    return
                # The first payload: now it is a connection.
                del hs[pending.key]
                self.active -= 1
                c_addr, c_port, s_addr, s_port = pending.key
                conn = self._new(c_addr, c_port, s_addr, s_port, ts, from_syn=True, fwd_is_client=True)
                for d in (0, 1):
                    if pending.isn[d] is not None:
                        conn.streams[d].next_seq = (pending.isn[d] + 1) & _MASK
                        conn.syn_seen[d] = True
                conn.segment(from_client, seq, ack, flags, payload, ts, out)
                self._after(conn, ts)
                return
        if not payload:
            if not flags & TCP_SYN:
                self.ignored_no_flow += 1
                return
            if len(self._keys) + len(hs) >= self.settings.max_flows:
                self._evict_one(ts, out)
            src_is_client = not flags & TCP_ACK  # a SYN, or a SYN-ACK (the client's SYN was not seen)
            pending = _Handshake((src, sport, dst, dport) if src_is_client else (dst, dport, src, sport), ts)
            pending.isn[0 if src_is_client else 1] = seq
            hs[pending.key] = pending
            self.active += 1
            return
        if len(self._keys) + len(hs) >= self.settings.max_flows:
            self._evict_one(ts, out)
        # Decide who is the client.
        if flags & TCP_SYN:
            src_is_client = not flags & TCP_ACK
        elif dport in self._ports and sport not in self._ports:
            src_is_client = True
        elif sport in self._ports and dport not in self._ports:
            src_is_client = False
        else:
            src_is_client = sport >= dport  # both or neither configured: the ephemeral port is higher
        if src_is_client:
            conn = self._new(src, sport, dst, dport, ts, from_syn=bool(flags & TCP_SYN), fwd_is_client=True)
        else:
            conn = self._new(dst, dport, src, sport, ts, from_syn=bool(flags & TCP_SYN), fwd_is_client=False)
        conn.segment(src_is_client, seq, ack, flags, payload, ts, out)
        self._after(conn, ts)

    def _after(self, conn: Connection, ts: float) -> None:
        """Bookkeeping after a connection took a segment. An answered connection leaves the
        unanswered list here, whichever segment answered it: later segments may all take the
        pipeline's fast lane, which does not come back here."""
        key = id(conn)
        if key in self._unanswered and conn.answered:
            del self._unanswered[key]
        if conn.closed:
            self._closed(conn, ts)

    def _new(self, c_addr, c_port: int, s_addr, s_port: int, ts: float, *, from_syn: bool,
             fwd_is_client: bool) -> Connection:
        """Track a new connection (client -> server given), keyed both ways; ``fwd_is_client``: the
        packet at hand came from the client (its 4-tuple is the one remembered for removal)."""
        client, server = endpoint(c_addr, c_port), endpoint(s_addr, s_port)
        if s_port in self._tls_ports:
            conn = TlsConnection(client, server, limits=self.settings.limits, budget=self.budget,
                                 certs=self.cert_parser)
        else:
            conn = Connection(client, server, from_syn=from_syn, limits=self.settings.limits,
                              cache=self.item_cache, budget=self.budget)
        to_server, to_client = (c_addr, c_port, s_addr, s_port), (s_addr, s_port, c_addr, c_port)
        self._table[to_server] = (conn, True)
        self._table[to_client] = (conn, False)
        if len(c_addr) == 4:
            ports = _PORTS.pack
            self.fast[bytes(c_addr) + bytes(s_addr) + ports(c_port, s_port)] = (conn, 0, conn.streams[0], conn.streams[1])
            self.fast[bytes(s_addr) + bytes(c_addr) + ports(s_port, c_port)] = (conn, 1, conn.streams[1], conn.streams[0])
        self._keys[id(conn)] = to_server if fwd_is_client else to_client
        self._unanswered[id(conn)] = conn
        self.active += 1
        self._schedule(conn, ts + self.settings.idle_timeout)
        return conn

    def _handshake_segment(self, pending: _Handshake, from_client: bool, seq: int, flags: int, ts: float) -> None:
        """A segment without payload of a connection still in its handshake."""
        if flags & (TCP_FIN | TCP_RST):  # closed before any byte: nothing to report
            del self._handshakes[pending.key]
            self.active -= 1
            self.evicted["closed"] = self.evicted.get("closed", 0) + 1
            return
        if flags & TCP_SYN:
            d = 0 if from_client else 1
            if pending.isn[d] is None:
                pending.isn[d] = seq
        pending.last_ts = ts
        self._handshakes.move_to_end(pending.key)

    def expire(self, now: float, out: list) -> None:
        """Time out connections idle for longer than the idle timeout (by packet time)."""
        heap, wheel = self._heap, self._wheel
        idle, linger = self.settings.idle_timeout, self.settings.closed_linger
        hs = self._handshakes
        while hs:
            pending = next(iter(hs.values()))  # the least recently active
            if pending.last_ts + idle > now:
                break
            del hs[pending.key]
            self.active -= 1
            self.evicted["idle"] = self.evicted.get("idle", 0) + 1
        while heap and heap[0] <= now:
            bucket = heapq.heappop(heap)
            due = wheel.pop(bucket, None)
            while due:
                _, conn = due.popitem(last=False)
                conn.deadline = 0
                if conn.closed:
                    if conn.last_ts + linger <= now:
                        self._remove(conn, None)
                    else:
                        self._schedule(conn, conn.last_ts + linger)
                elif conn.last_ts + idle <= now:
                    conn.timeout(now, out)
                    self._collect(conn)
                    if not conn.closed:
                        self.active -= 1
                    self._remove(conn, "idle")
                else:
                    self._schedule(conn, conn.last_ts + idle)

    def end(self, ts: float, out: list) -> None:
        """The capture ended: every open connection ends (outcome ``incomplete`` where undecided)."""
        if self._handshakes:
            self.evicted["capture-end"] = self.evicted.get("capture-end", 0) + len(self._handshakes)
            self.active -= len(self._handshakes)
            self._handshakes.clear()
        for key in list(self._keys.values()):
            conn = self._table[key][0]
            if not conn.closed:
                conn.end(ts, out)
                self._collect(conn)
                self.active -= 1
                self._remove(conn, "capture-end")
            else:
                self._remove(conn, None)

    # -- internals ------------------------------------------------------------------------------

    def _evict_one(self, ts: float, out: list) -> None:
        """The table is full: make room for a new connection (PS: a flood must not blind us).

        First the oldest connection that never carried a byte (a SYN flood, port scans), then the
        oldest whose association was never answered (a flood of half-open associations), else the
        connection whose idle check comes first (roughly the least recently active).
        An evicted association ends ``incomplete``; evictions are counted by reason.
        """
        if self._handshakes:
            self._handshakes.popitem(last=False)
            self.active -= 1
            self.evicted["pressure-handshake"] = self.evicted.get("pressure-handshake", 0) + 1
            return
        if self._unanswered:
            conn = self._unanswered.popitem(last=False)[1]
            reason = "pressure-unanswered"
        else:
            conn = self._least_recent()
            reason = "pressure"
            if conn is None:
                return
        if not conn.closed:
            conn.end(ts, out)
            self._collect(conn)
            self.active -= 1
        self._remove(conn, reason)

    def _least_recent(self) -> Connection | None:
        heap, wheel = self._heap, self._wheel
        while heap:
            due = wheel.get(heap[0])
            if due:
                return next(iter(due.values()))
            wheel.pop(heapq.heappop(heap), None)
        return None

    def _closed(self, conn: Connection, ts: float) -> None:
        self.active -= 1
        self.evicted["closed"] = self.evicted.get("closed", 0) + 1
        self._collect(conn)
        self._schedule(conn, ts + self.settings.closed_linger)

    def _collect(self, conn: Connection) -> None:
        for s in conn.streams:  # gaps are reported as they happen (StreamGap); this is the rest
            self.retransmitted += s.retransmitted
            s.retransmitted = 0

    def _schedule(self, conn: Connection, when: float) -> None:
        self._unschedule(conn)
        bucket = int(when) + 1
        conn.deadline = bucket
        due = self._wheel.get(bucket)
        if due is None:
            due = self._wheel[bucket] = OrderedDict()
            heapq.heappush(self._heap, bucket)
        due[id(conn)] = conn

    def _unschedule(self, conn: Connection) -> None:
        due = self._wheel.get(conn.deadline)
        if due is not None:
            due.pop(id(conn), None)
        conn.deadline = 0

    def _remove(self, conn: Connection, reason: str | None) -> None:
        fwd = self._keys.pop(id(conn), None)
        if fwd is None:
            return
        self._unschedule(conn)  # no reference may outlive the connection's removal
        self._unanswered.pop(id(conn), None)
        src, sport, dst, dport = fwd
        self._table.pop(fwd, None)
        self._table.pop((dst, dport, src, sport), None)
        if len(src) == 4:
            self.fast.pop(bytes(src) + bytes(dst) + _PORTS.pack(sport, dport), None)
            self.fast.pop(bytes(dst) + bytes(src) + _PORTS.pack(dport, sport), None)
        if reason is not None:
            self.evicted[reason] = self.evicted.get(reason, 0) + 1
