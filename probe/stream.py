"""Per-direction TCP stream reassembly, sans-IO.

A :class:`StreamReassembler` turns the segments of one direction, in capture order, into *chunks*
in stream order: ``bytes`` to be framed, or an ``int`` — that many bytes are missing (a gap). The
caller hands bytes to ``PduFramer.feed`` and ints to ``PduFramer.gap``.

- In-order segments pass straight through (the common case costs one subtraction and a compare).
- Retransmissions and the already-seen part of overlapping segments are dropped.
- Segments from the future wait in a bounded out-of-order buffer. The hole before them is declared a
  gap when the receiver acknowledges past it (it got bytes the capture never saw, so they will not be
  retransmitted), when the buffer exceeds ``max_buffer`` bytes, or when the stream is flushed at its
  end. Whatever was buffered behind the hole is then delivered.

Sequence numbers are compared modulo 2**32 (RFC 793 §3.3).
"""

from __future__ import annotations

_MASK = 0xFFFFFFFF
_HALF = 0x80000000
_NONE_HELD: dict = {}  # every stream's out-of-order buffer until it holds something (never written to)


class Budget:
    """Out-of-order bytes held by all the streams of one flow table, against a cap."""

    __slots__ = ("used", "cap", "overflows")

    def __init__(self, cap: int):
        self.used = 0
        self.cap = cap
        self.overflows = 0  # times a stream gave up its buffer because the total was over the cap


class StreamReassembler:
    __slots__ = ("next_seq", "_ooo", "_ooo_bytes", "max_buffer", "retransmitted", "gap_bytes", "gaps",
                 "overflows", "budget")

    def __init__(self, max_buffer: int = 256 * 1024, budget: "Budget | None" = None):
        self.budget = budget  # out-of-order bytes shared by every stream of a flow table
        self.next_seq: int | None = None  # None until the first SYN or segment
        self._ooo: dict[int, bytes] = _NONE_HELD  # its own dict from the first segment held (memory per flow)
        self._ooo_bytes = 0
        self.max_buffer = max_buffer
        self.retransmitted = 0  # segments carrying only bytes already delivered
        self.gap_bytes = 0
        self.gaps = 0
        self.overflows = 0  # gaps forced by a full out-of-order buffer

    @property
    def buffered(self) -> int:
        return self._ooo_bytes

    def accept(self, seq: int, payload: bytes):
        """A segment with payload; returns a list of chunks (possibly empty)."""
        n = len(payload)
        nxt = self.next_seq
        if nxt is None:
            nxt = self.next_seq = seq  # picked up mid-stream
        d = (seq - nxt) & _MASK
        if d == 0:
            self.next_seq = (seq + n) & _MASK
            if not self._ooo:
                return [payload]
            out = [payload]
            self._drain(out)
            return out
        if d >= _HALF:  # starts before next_seq: a retransmission, maybe with new bytes at its end
            overlap = (nxt - seq) & _MASK
            if overlap >= n:
                self.retransmitted += 1
                return []
            payload = payload[overlap:]
            self.next_seq = (nxt + len(payload)) & _MASK
            out = [payload]
            if self._ooo:
                self._drain(out)
            return out
        # From the future: hold it.
        if self._ooo is _NONE_HELD:
            self._ooo = {}
        old = self._ooo.get(seq)
        if old is None or len(old) < n:
            self._ooo[seq] = payload
            self._account(n - (len(old) if old else 0))
        budget = self.budget
        over_global = budget is not None and budget.used > budget.cap
        if self._ooo_bytes > self.max_buffer or over_global:
            self.overflows += 1
            if over_global:
                budget.overflows += 1
            limit = 0 if over_global else self.max_buffer  # over the global cap: give up all we hold
            out: list = []
            while self._ooo_bytes > limit:
                self._gap_to_earliest(out)
                self._drain(out)
            return out
        return []

    def acked(self, ack: int):
        """The other direction acknowledged up to ``ack``; returns chunks if that proves a loss."""
        if not self._ooo or self.next_seq is None:
            return []
        out: list = []
        # Every hole below ``ack`` was received by the peer but never captured: declare each one.
        while self._ooo:
            d = (ack - self.next_seq) & _MASK
            if d == 0 or d >= _HALF:
                break
            first = self._earliest()
            if ((first - self.next_seq) & _MASK) <= d:
                self._gap_to_earliest(out)
            else:
                self._add_gap(out, d)
            self._drain(out)
        return out

    def flush(self):
        """End of stream: deliver everything buffered, declaring the holes as gaps."""
        out: list = []
        while self._ooo:
            self._gap_to_earliest(out)
            self._drain(out)
        return out

    def finish(self, end_seq: int):
        """FIN or RST at ``end_seq`` (where the sender's stream ends): flush, and a hole before it is a gap."""
        out = self.flush()
        if self.next_seq is not None:
            d = (end_seq - self.next_seq) & _MASK
            if 0 < d < _HALF:
                self._add_gap(out, d)
        return out

    def advance(self, n: int) -> None:
        """Account for ``n`` sequence numbers that carry no bytes (SYN, FIN)."""
        if self.next_seq is not None:
            self.next_seq = (self.next_seq + n) & _MASK

    # -- internals ----------------------------------------------------------------------------------

    def _account(self, delta: int) -> None:
        self._ooo_bytes += delta
        if self.budget is not None:
            self.budget.used += delta

    def _earliest(self) -> int:
        nxt = self.next_seq
        return min(self._ooo, key=lambda s: (s - nxt) & _MASK)

    def _add_gap(self, out: list, n: int) -> None:
        out.append(n)
        self.gaps += 1
        self.gap_bytes += n
        self.next_seq = (self.next_seq + n) & _MASK

    def _gap_to_earliest(self, out: list) -> None:
        first = self._earliest()
        d = (first - self.next_seq) & _MASK
        if 0 < d < _HALF:
            self._add_gap(out, d)

    def _drain(self, out: list) -> None:
        """Deliver buffered segments that now start at or before next_seq."""
        ooo = self._ooo
        progress = True
        while ooo and progress:
            nxt = self.next_seq
            payload = ooo.pop(nxt, None)
            if payload is not None:  # the usual case: the next segment starts right here (O(1))
                self._account(-len(payload))
                out.append(payload)
                self.next_seq = (nxt + len(payload)) & _MASK
                continue
            progress = False
            for seq in list(ooo):
                behind = (nxt - seq) & _MASK
                if behind >= _HALF:
                    continue  # still in the future
                payload = ooo.pop(seq)
                self._account(-len(payload))
                if behind < len(payload):
                    tail = payload[behind:]
                    out.append(tail)
                    self.next_seq = (nxt + len(tail)) & _MASK
                else:
                    self.retransmitted += 1
                progress = True
                break
