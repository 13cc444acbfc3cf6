"""The flow table: TCP segments to connections, who is client and server, idle timeouts, a cap.

Both orientations of a connection's 4-tuple are keys of one dict, so each packet costs one lookup.
Client and server come from the SYN; without one, from the configured server ports; and the
association machine corrects it if the other side turns out to send the A-ASSOCIATE-RQ.

Idle connections expire by packet time through a timing wheel (one bucket per second, a heap of
bucket numbers): a connection is looked at once per idle-timeout period, never per packet.
Closed connections linger briefly so that late retransmissions and final ACKs are not mistaken
for new connections picked up mid-stream. When the table is full, a new connection evicts the oldest
one that never carried a byte (SYN floods, scans), then the oldest whose association was never
answered, else the least recently active one: a flood cannot stop the probe from following new
associations.
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
from .decode import TCP_ACK, TCP_SYN
from .dicom.pdu import ItemCache
from .stream import Budget


_PORTS = struct.Struct(">HH")


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
        self._handshake: OrderedDict[int, Connection] = OrderedDict()  # no payload yet, oldest first
        self._unanswered: OrderedDict[int, Connection] = OrderedDict()  # payload, but no association answered
        self._heap: list[int] = []
        self.active = 0  # connections not yet closed
        self.evicted: dict[str, int] = {}
        self.ignored_no_flow = 0  # segments without payload for an unknown connection
        self.retransmitted = 0

    def __len__(self) -> int:
        return len(self._keys)

    def segment(self, seg: tuple, ts: float, out: list) -> None:
        src, dst, sport, dport, seq, ack, flags, payload = seg
        hit = self._table.get((src, sport, dst, dport))
        if hit is not None:
            conn, from_client = hit
            if conn.closed:
                if flags & TCP_SYN and not flags & TCP_ACK:
                    self._remove(conn, "closed")  # the 4-tuple is reused by a new connection
                else:
                    return
            else:
                key = id(conn)
                if payload and self._handshake.pop(key, None) is not None:
                    self._unanswered[key] = conn
                conn.segment(from_client, seq, ack, flags, payload, ts, out)
                if key in self._unanswered and conn.answered:
                    del self._unanswered[key]
                if conn.closed:
                    self._closed(conn, ts)
                return
        if not payload and not flags & TCP_SYN:
            self.ignored_no_flow += 1
            return
        if len(self._keys) >= self.settings.max_flows:
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
            client, server = endpoint(src, sport), endpoint(dst, dport)
        else:
            client, server = endpoint(dst, dport), endpoint(src, sport)
        server_port = dport if src_is_client else sport
        if server_port in self._tls_ports:
            conn = TlsConnection(client, server, limits=self.settings.limits, budget=self.budget,
                                 certs=self.cert_parser)
        else:
            conn = Connection(client, server, from_syn=bool(flags & TCP_SYN), limits=self.settings.limits,
                              cache=self.item_cache, budget=self.budget)
        fwd, rev = (src, sport, dst, dport), (dst, dport, src, sport)
        self._table[fwd] = (conn, src_is_client)
        self._table[rev] = (conn, not src_is_client)
        if len(src) == 4:
            d = 0 if src_is_client else 1
            ports = _PORTS.pack
            self.fast[bytes(src) + bytes(dst) + ports(sport, dport)] = (conn, d, conn.streams[d], conn.streams[1 - d])
            self.fast[bytes(dst) + bytes(src) + ports(dport, sport)] = (conn, 1 - d, conn.streams[1 - d], conn.streams[d])
        self._keys[id(conn)] = fwd
        (self._unanswered if payload else self._handshake)[id(conn)] = conn
        self.active += 1
        self._schedule(conn, ts + self.settings.idle_timeout)
        conn.segment(src_is_client, seq, ack, flags, payload, ts, out)
        if conn.closed:
            self._closed(conn, ts)

    def expire(self, now: float, out: list) -> None:
        """Time out connections idle for longer than the idle timeout (by packet time)."""
        heap, wheel = self._heap, self._wheel
        idle, linger = self.settings.idle_timeout, self.settings.closed_linger
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
        if self._handshake:
            conn = self._handshake.popitem(last=False)[1]
            reason = "pressure-handshake"
        elif self._unanswered:
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
        self._handshake.pop(id(conn), None)
        self._unanswered.pop(id(conn), None)
        src, sport, dst, dport = fwd
        self._table.pop(fwd, None)
        self._table.pop((dst, dport, src, sport), None)
        if len(src) == 4:
            self.fast.pop(bytes(src) + bytes(dst) + _PORTS.pack(sport, dport), None)
            self.fast.pop(bytes(dst) + bytes(src) + _PORTS.pack(dport, sport), None)
        if reason is not None:
            self.evicted[reason] = self.evicted.get(reason, 0) + 1
