"""Frames in, metrics and association records out: decode → flows → streams → PDUs → associations.

The same :class:`Pipeline` serves ``analyze`` (files) and the daemon (live capture): it has no clock
and does no IO; the caller owns the capture loop and reads ``store`` / receives records.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from functools import partial

from . import connection as C
from .decode import Decoder
from .dicom import association as A
from .dicom import codes
from .dicom import dimse as D
from .dicom import pdu as P
from .flows import FlowSettings, FlowTable
from .metrics import AeLabeler, AssociationMetrics, MetricStore, TlsMetrics
from . import tls as T
from .sites import SiteMap

try:  # the optional compiled fast lane (probe/_lane.c); DICOM_PROBE_PURE_PYTHON=1 turns it off
    from . import _lane
except ImportError:
    _lane = None
if os.environ.get("DICOM_PROBE_PURE_PYTHON", "") not in ("", "0"):
    _lane = None

# From the ethertype: ethertype, IPv4 version/IHL, total length, flags/fragment offset, protocol,
# the 12 bytes (addresses, ports) that key FlowTable.fast, sequence number, data offset, TCP flags.
_FAST = struct.Struct(">HBxH2xHxB2x12sI4xBB").unpack_from
_DATA = P._DATA  # the framer state "skipping a data PDV value"
# Association machine states in which a P-DATA-TF PDU changes nothing (the compiled lane's data phase).
_QUIET_STATES = frozenset(state for (state, inp), (action, _next) in A.TRANSITIONS.items()
                          if inp == A.PDATA and action == "ignore")

_NOTIFICATIONS = frozenset((
    A.AssociationOpened, A.AssociationEnded, A.AssociationRequested, A.AssociationAccepted, A.AssociationRejected,
    A.AssociationAborted, A.ReleaseCompleted, A.ClosedWithoutRelease, A.NoResponse, A.ProtocolViolation,
    C.PDataBytes, D.DimseRequest, D.DimseResponse, D.SubOperations, D.Unanswered, D.DimseError,
))
_TLS_NOTIFICATIONS = frozenset((T.TlsEstablished, T.TlsEnded, T.TlsError))


class Pipeline:
    def __init__(self, settings: FlowSettings = FlowSettings(), labeler: AeLabeler | None = None,
                 on_association: Callable[[A.Association], None] | None = None, interface: str | None = "offline",
                 sites: SiteMap | None = None):
        self.store = MetricStore()
        self.labeler = labeler or AeLabeler()
        self.metrics = AssociationMetrics(self.store, self.labeler, sites)
        self.tls_metrics = TlsMetrics(self.store, sites, self.labeler.max_titles)
        # Called with each finished TLS connection's probe.tls.TlsRecord (event log, reports).
        self.on_tls: Callable[[T.TlsRecord], None] | None = None
        self.flows = FlowTable(settings)
        self.on_association = on_association
        self.interface = interface
        self._packets = 0  # frames and bytes fed to packet() (the compiled lanes count their own)
        self._bytes = 0
        self.associations = 0  # ended associations
        self._last_ts = 0.0
        self._next_expiry = 0.0
        self._lanes: list = []  # compiled fast lanes handed out by callback()
        self._decoders: dict[int, Decoder] = {}
        self._out: list = []
        self.per_interface: dict[str, list[int]] = {}  # live capture: packets, bytes per interface
        self.evidence = None  # optional probe.evidence.EvidenceWriter (evidence pcaps)

    def count_interface(self, name: str, packets: int, nbytes: int) -> None:
        """Attribute frames just fed (by a capture loop reading several interfaces) to ``name``."""
        c = self.per_interface.setdefault(name, [0, 0])
        c[0] += packets
        c[1] += nbytes

    def decoder(self, linktype: int) -> Decoder:
        d = self._decoders.get(linktype)
        if d is None:
            d = self._decoders[linktype] = Decoder(linktype)
        return d

    @property
    def packets(self) -> int:
        return self._packets + sum(lane.packets for lane in self._lanes)

    @property
    def bytes(self) -> int:
        return self._bytes + sum(lane.bytes for lane in self._lanes)

    @property
    def last_ts(self) -> float:
        return max([self._last_ts, *(lane.last_ts for lane in self._lanes)])

    def callback(self, decoder: Decoder) -> Callable[[float, bytes], None]:
        """The capture callback ``cb(ts, frame)`` for frames of ``decoder``'s link type: the compiled
        fast lane (probe._lane) where it is built and the link layer has a fixed layout, else
        ``packet`` bound to the decoder. Both give the same results."""
        if _lane is None or decoder.fast_offset < 0:
            return partial(self.packet, decoder)
        lane = _lane.Lane(self.flows.fast, decoder.fast_offset, partial(self._full, decoder), _DATA,
                          self._next_expiry, P.PduFramer, _QUIET_STATES, self._commands,
                          partial(self._full_seg, decoder))
        self._lanes.append(lane)
        return lane

    def packet(self, decoder: Decoder, ts: float, frame: bytes) -> None:
        """One captured frame (decoder first, so ``functools.partial(packet, decoder)`` is the
        capture callback). The pure-Python path; see also :meth:`callback`."""
        self._packets += 1
        self._bytes += len(frame)
        if ts > self._last_ts:
            self._last_ts = ts
            if ts >= self._next_expiry:
                self._expire(ts)
        # Fast lane: an untagged IPv4/TCP segment of a known connection that lies inside a P-DATA
        # data value, or a pure ACK: one unpack of the headers, one lookup and a subtraction.
        # Anything else (and any doubt) takes the full path below, which gives the same result.
        off = decoder.fast_offset
        if off >= 0 and len(frame) >= off + 34:
            ethertype, vihl, total, frag, proto, key, seq, doff, flags = _FAST(frame, off - 2)
            if (ethertype == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x3FFF and not flags & 0x07
                    and doff >= 0x50):
                entry = self.flows.fast.get(key)
                if entry is not None:
                    conn, d, stream, other = entry
                    n = total - 20 - ((doff >> 4) << 2)
                    if not other._ooo:
                        if n <= 0:
                            conn.last_ts = ts
                            return
                        framer = conn.framers[d]
                        if (framer is not None and framer._state == _DATA and n < framer._pdv_left
                                and seq == stream.next_seq and not stream._ooo and off + total <= len(frame)):
                            stream.next_seq = (seq + n) & 0xFFFFFFFF
                            framer._pdv_left -= n
                            framer._pdu_left -= n
                            framer.data_bytes += n
                            conn.last_ts = ts
                            return
        self._segment(decoder, ts, frame, decoder.decode(frame))

    def _full(self, decoder: Decoder, ts: float, frame: bytes) -> None:
        """A frame a compiled lane did not finish (it has counted it): due timeouts, then the full path."""
        self._full_seg(decoder, ts, frame, decoder.decode(frame))

    def _full_seg(self, decoder: Decoder, ts: float, frame: bytes, seg: tuple | None) -> None:
        """As :meth:`_full`, with the headers already parsed: ``seg`` is what ``decoder.decode(frame)``
        returns (the lane parses untagged IPv4/TCP frames itself)."""
        if ts >= self._next_expiry:
            self._expire(ts)
        self._segment(decoder, ts, frame, seg)

    def _commands(self, conn: C.Connection, from_client: bool, commands: list, ts: float) -> None:
        """Command PDV values a compiled lane framed in an established association's data phase
        (whole in one segment or collected across several), as ``(context_id, last, value)``: to the
        association machine, as Connection._deliver does."""
        sink, out = conn.machine.command_sink(), self._out
        if sink is None:
            return
        for context_id, last, value in commands:
            sink(from_client, context_id, last, value, ts, out)
        if out:
            self._handle(out)
            out.clear()

    def _expire(self, ts: float) -> None:
        self._next_expiry = ts + 1.0
        for lane in self._lanes:
            lane.next_expiry = self._next_expiry
        self.flows.expire(ts, self._out)

    def _segment(self, decoder: Decoder, ts: float, frame: bytes, seg: tuple | None) -> None:
        if seg is not None:
            self.flows.segment(seg, ts, self._out)
            if self.evidence is not None:
                self._keep_evidence(seg, ts, frame, decoder.linktype)
        if self._out:
            self._handle(self._out)
            self._out.clear()

    def _keep_evidence(self, seg: tuple, ts: float, frame: bytes, linktype: int) -> None:
        """Keep a connection's frames while its association is being set up; on A-ASSOCIATE-RJ or
        A-ABORT write them (and the frame carrying it) as an evidence pcap."""
        hit = self.flows._table.get((seg[0], seg[2], seg[1], seg[3]))
        if hit is None:
            return
        conn = hit[0]
        if conn.__class__ is not C.Connection:
            return  # TLS: the handshake is not DICOM evidence
        frames = conn.evidence
        if frames is None:
            frames = conn.evidence = []
        ended = [n for n in self._out if n.__class__ in (A.AssociationRejected, A.AssociationAborted)]
        setting_up = conn.machine.state in (A.IDLE, A.REQUESTED)
        if ended or (setting_up and len(frames) < self.evidence.settings.max_packets):
            frames.append((ts, frame))
        for n in ended:
            a = n.association
            calling, called = self.labeler.label(a.calling_ae), self.labeler.label(a.called_ae)
            if n.__class__ is A.AssociationRejected:
                reason = codes.reject_reason_name(n.source, n.reason)
            else:
                reason = f"abort-{codes.abort_source_name(n.source)}-{codes.abort_reason_name(n.source, n.reason)}"
            self.evidence.linktype = linktype
            if self.evidence.write(frames, calling, called, reason):
                self.store.inc("dicom_probe_evidence_files_total")
            conn.evidence = []

    def tick(self, now: float) -> None:
        """Live capture on a quiet link: let idle timeouts run on the wall clock (which packet
        timestamps follow) even when no packet arrives."""
        if now >= self._next_expiry and now > self.last_ts:
            self._expire(now)
            if self._out:
                self._handle(self._out)
                self._out.clear()

    def finish(self) -> None:
        """End of input: every open connection ends (``incomplete`` where undecided)."""
        self.flows.end(self.last_ts, self._out)
        self._handle(self._out)
        self._out.clear()
        self.sync()

    def sync(self) -> None:
        """Copy the cumulative counters kept on the hot path into the metric store."""
        s = self.store
        if self.per_interface:
            for name, (packets, nbytes) in self.per_interface.items():
                s.set("dicom_probe_packets_total", (name,), packets)
                s.set("dicom_probe_bytes_total", (name,), nbytes)
        elif self.interface is not None:
            s.set("dicom_probe_packets_total", (self.interface,), self.packets)
            s.set("dicom_probe_bytes_total", (self.interface,), self.bytes)
        skipped: dict[str, int] = {}
        for d in self._decoders.values():
            for kind, n in d.skipped.items():
                skipped[kind] = skipped.get(kind, 0) + n
        for kind, n in skipped.items():
            s.set("dicom_probe_frames_skipped_total", (kind,), n)
        s.set("dicom_probe_flows_active", (), self.flows.active)
        for reason, n in self.flows.evicted.items():
            s.set("dicom_probe_flows_evicted_total", (reason,), n)
        s.set("dicom_probe_retransmitted_segments_total", (), self.flows.retransmitted)
        if self.evidence is not None:
            for why, n in self.evidence.suppressed.items():
                s.set("dicom_probe_evidence_suppressed_total", (why,), n)
        self.metrics.sync_pdata()
        self.metrics.sync_label_counters()
        self.tls_metrics.sync_label_counters()

    def _handle(self, out: list) -> None:
        s = self.store
        for n in out:
            cls = n.__class__
            if cls in _NOTIFICATIONS:
                self.metrics.handle(n)
                if cls is A.AssociationEnded:
                    self.associations += 1
                    if self.on_association is not None:
                        self.on_association(n.association)
            elif cls in _TLS_NOTIFICATIONS:
                self.tls_metrics.handle(n)
                if cls is T.TlsEnded and self.on_tls is not None:
                    self.on_tls(n.record)
            elif cls is C.StreamGap:
                s.inc("dicom_probe_stream_gaps_total")
                s.inc("dicom_probe_stream_gap_bytes_total", (), n.nbytes)
            elif cls is P.ProtocolError:
                s.inc("dicom_probe_pdu_errors_total", (n.kind,))
            elif cls is P.Resynchronised:
                if n.skipped:  # a stream picked up mid-way at a PDU boundary lost nothing
                    s.inc("dicom_probe_resyncs_total")
