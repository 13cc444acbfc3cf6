"""One TCP connection: two reassembled directions, two PDU framers, one association machine.

Sans-IO: ``segment()`` takes a decoded TCP segment and appends what happened to ``out``: the
association machine's notifications, PDU framing errors and stream gaps (see :mod:`probe.pipeline`
for who consumes them).
"""

from __future__ import annotations

from dataclasses import dataclass

from .decode import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from .dicom import pdu as P
from .dicom.association import AssociationMachine
from .stream import Budget, StreamReassembler


@dataclass(frozen=True, slots=True)
class StreamGap:
    """``nbytes`` of one direction were never seen by the capture."""

    nbytes: int
    framing_kept: bool  # the framer could skip the hole (it fell inside data) and stayed in sync


@dataclass(frozen=True, slots=True)
class PDataBytes:
    """An association's first P-DATA-TF PDU. Its P-DATA bytes are then counted in
    ``association.pdata_bytes`` (no notification per PDU: there are many); the metrics layer
    publishes them when it syncs and when the association ends."""

    association: object


@dataclass(frozen=True, slots=True)
class Limits:
    max_stream_buffer: int = 256 * 1024  # out-of-order bytes held per direction
    max_buffer_total: int = 64 << 20  # ... and by all connections of a flow table together
    max_control_pdu: int = 1 << 20
    max_command_bytes: int = 1 << 16


_CONTROL_EVENTS = (P.AssociateRequest, P.AssociateAccept, P.AssociateReject, P.PDataTF,
                   P.ReleaseRequest, P.ReleaseReply, P.Abort)


class TcpConnection:
    """What every tracked TCP connection shares: two reassembled directions, SYN/FIN/RST handling.

    Subclasses say what the in-order bytes mean (``_deliver``) and what the end of the transport
    means (``_transport_closed``, ``_timed_out``, ``_capture_ended``).
    """

    __slots__ = ("client", "server", "streams", "fin", "fin_seq", "closed", "last_ts", "deadline", "limits",
                 "syn_seen", "evidence", "closed_by", "reset")

    def __init__(self, client: str, server: str, *, limits: Limits, budget: Budget | None = None):
        self.client = client
        self.server = server
        self.limits = limits
        self.streams = (StreamReassembler(limits.max_stream_buffer, budget),
                        StreamReassembler(limits.max_stream_buffer, budget))
        self.syn_seen = [False, False]
        self.fin = [False, False]
        self.fin_seq: list[int | None] = [None, None]
        self.closed = False
        self.closed_by: int | None = None  # direction (0 client, 1 server) of the first FIN or RST
        self.reset = False  # an RST ended the connection
        self.last_ts = 0.0
        self.deadline = 0  # timing-wheel bucket, owned by the flow table
        self.evidence: list | None = None  # (ts, frame) kept for an evidence pcap (probe.evidence)

    def segment(self, from_client: bool, seq: int, ack: int, flags: int, payload: bytes, ts: float,
                out: list) -> None:
        self.last_ts = ts
        d = 0 if from_client else 1
        if flags & TCP_SYN:
            # A SYN fixes where this direction's stream starts; its payload (TCP Fast Open) is rare
            # for DICOM and ignored.
            stream = self.streams[d]
            if stream.next_seq is None:
                stream.next_seq = (seq + 1) & 0xFFFFFFFF
                self.syn_seen[d] = True
            return
        if flags & TCP_ACK:
            other = self.streams[1 - d]
            if other._ooo:  # cheap check on the per-packet path
                chunks = other.acked(ack)
                if chunks:
                    self._deliver(1 - d, chunks, ts, out)
        if payload:
            chunks = self.streams[d].accept(seq, payload)
            if chunks:
                self._deliver(d, chunks, ts, out)
        if flags & (TCP_FIN | TCP_RST):
            if self.closed_by is None:
                self.closed_by = d
            if flags & TCP_FIN:
                # Where the sender's stream ends. Retransmissions may still fill holes before it
                # (a FIN can overtake them), so holes are settled only when the connection closes.
                self.fin_seq[d] = (seq + len(payload)) & 0xFFFFFFFF
                self.fin[d] = True
            else:
                self.reset = True
                self.fin[0] = self.fin[1] = True  # an RST's sequence number proves nothing
            if self.fin[0] and self.fin[1]:
                self.close(ts, out)

    def close(self, ts: float, out: list) -> None:
        """The transport ended (FIN both ways or RST): flush both directions, then say so."""
        if self.closed:
            return
        self._flush(ts, out)
        self.closed = True
        self._transport_closed(ts, out)

    def timeout(self, ts: float, out: list) -> None:
        self._flush(ts, out)
        if self.fin[0] or self.fin[1]:
            self.closed = True
            self._transport_closed(ts, out)  # a FIN was seen: the connection did end
        else:
            self._timed_out(ts, out)

    def end(self, ts: float, out: list) -> None:
        """The capture ended with this connection still open."""
        self._flush(ts, out)
        self._capture_ended(ts, out)

    @property
    def answered(self) -> bool:
        """The server side has answered (the flow table evicts unanswered connections first)."""
        raise NotImplementedError

    # -- internals ------------------------------------------------------------------------------

    def _flush(self, ts: float, out: list) -> None:
        """Settle both directions: what is still buffered is delivered, holes become gaps (up to
        the FIN, when one was seen)."""
        for d in (0, 1):
            stream, end = self.streams[d], self.fin_seq[d]
            chunks = stream.flush() if end is None else stream.finish(end)
            if chunks:
                self._deliver(d, chunks, ts, out)

    def _deliver(self, d: int, chunks: list, ts: float, out: list) -> None:
        raise NotImplementedError

    def _transport_closed(self, ts: float, out: list) -> None:
        raise NotImplementedError

    def _timed_out(self, ts: float, out: list) -> None:
        raise NotImplementedError

    def _capture_ended(self, ts: float, out: list) -> None:
        raise NotImplementedError


_NOT_ANSWERED = ("idle", "requested")  # association.IDLE, association.REQUESTED


class Connection(TcpConnection):
    """A DICOM connection: two PDU framers, one association machine."""

    __slots__ = ("machine", "framers", "cache")

    def __init__(self, client: str, server: str, *, from_syn: bool, limits: Limits, cache: P.ItemCache | None = None,
                 budget: Budget | None = None):
        super().__init__(client, server, limits=limits, budget=budget)
        self.cache = cache
        self.machine = AssociationMachine(client, server, from_syn=from_syn, cache=cache)
        self.framers: list[P.PduFramer | None] = [None, None]  # made at the direction's first byte

    @property
    def answered(self) -> bool:
        return self.machine.state not in _NOT_ANSWERED

    def _transport_closed(self, ts: float, out: list) -> None:
        self.machine.closed(ts, out)

    def _timed_out(self, ts: float, out: list) -> None:
        self.machine.timeout(ts, out)

    def _capture_ended(self, ts: float, out: list) -> None:
        self.machine.end(ts, out)

    def _framer(self, d: int) -> P.PduFramer:
        f = self.framers[d]
        if f is None:
            # Without this direction's SYN the first byte need not start a PDU: resynchronise.
            lim = self.limits
            f = self.framers[d] = P.PduFramer(synced=self.syn_seen[d], max_control_pdu=lim.max_control_pdu,
                                              max_command_bytes=lim.max_command_bytes, cache=self.cache)
        return f

    def _deliver(self, d: int, chunks: list, ts: float, out: list) -> None:
        framer = self._framer(d)
        from_client = d == 0
        machine = self.machine
        for chunk in chunks:
            if chunk.__class__ is int:
                events = framer.gap(chunk, ts)
                kept = framer.synced and not events
                out.append(StreamGap(chunk, kept))
                if not kept:
                    machine.lost()
            else:
                events = framer.feed(chunk, ts)
            for ev in events:
                cls = ev.__class__
                if cls is P.CommandFragment:
                    machine.command(ev, from_client, out)
                elif cls is P.PDataTF:
                    machine.pdu(ev, from_client, out)
                    a = machine.current
                    if a is not None and a.outcome is None:
                        counts = a.pdata_bytes
                        if not counts[0] and not counts[1]:
                            out.append(PDataBytes(a))
                        counts[0 if from_client == a.requestor_is_client else 1] += ev.length + 6
                elif isinstance(ev, _CONTROL_EVENTS):
                    machine.pdu(ev, from_client, out)
                else:
                    if ev.__class__ is P.PduLost:
                        machine.lost()
                    elif ev.__class__ is P.Resynchronised:
                        if ev.skipped:
                            machine.lost()
                    elif ev.__class__ is P.ProtocolError and machine.current is not None:
                        machine.current.protocol_errors += 1
                    out.append(ev)
