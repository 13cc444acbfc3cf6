"""Evidence pcaps: a small capture of each rejected or aborted association, without patient data.

For a connection that ends in A-ASSOCIATE-RJ or A-ABORT, the frames seen up to and including that
PDU (at most ``max_packets`` from the connection's start; the P-DATA frames of a long association
are not kept) are written to a pcap a PACS team can open in Wireshark. Every P-DATA data value is
zeroed first: the file holds protocol headers, the A-ASSOCIATE exchange and DIMSE command sets
only. Files are capped in number, total bytes and rate; names carry time, AE pair and reason.

Off the per-packet fast lane: frames are kept only for connections still being set up.
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections import deque
from dataclasses import dataclass

import dpkt

from .decode import Decoder
from .dicom import codes

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
# Command-set elements whose values are kept (the same ones probe.dicom.dimse reads); every other
# value (Affected/Requested SOP Instance UID, Error Comment, Move Originator, ...) is zeroed.
_KEPT_COMMAND_ELEMENTS = frozenset((0x0000, 0x0002, 0x0003, 0x0100, 0x0110, 0x0120, 0x0600, 0x0700, 0x0800,
                                    0x0900, 0x1020, 0x1021, 0x1022, 0x1023))


@dataclass(frozen=True)
class EvidenceSettings:
    directory: str = ""  # "" = off
    max_files: int = 200
    max_bytes: int = 50 << 20
    per_minute: int = 20
    max_packets: int = 64


def zero_data_values(frames: list[tuple[float, bytes]], linktype: int) -> list[tuple[float, bytes]]:
    """Copies of ``frames`` with every P-DATA-TF data PDV value overwritten with zeros.

    Each direction's in-order TCP payload is walked PDU by PDU; bytes whose role is unknown (a
    stream picked up mid-way, a hole) are zeroed too: when in doubt, nothing is kept.
    """
    dec = Decoder(linktype)
    out = [bytearray(f) for _ts, f in frames]
    streams: dict[tuple, list] = {}  # direction -> [(frame index, payload offset in frame, payload)]
    for i, (_ts, f) in enumerate(frames):
        seg = dec.decode(f)
        if seg is None or not seg[7]:
            continue
        src, dst, sport, dport, seq, _ack, _flags, payload = seg
        start = len(f) - len(payload) - _trailer(f, payload)
        streams.setdefault((bytes(src), sport, bytes(dst), dport), []).append((seq, i, start, bytes(payload)))
    for segs in streams.values():
        segs.sort(key=lambda s: s[0])
        data = b""
        where: list[tuple[int, int]] = []  # stream offset -> (frame index, offset in frame)
        base, expect = segs[0][0], segs[0][0]
        for seq, i, start, payload in segs:
            if seq != expect:  # a hole or overlap: stop trusting the structure here
                for j in range(start, start + len(payload)):
                    out[i][j] = 0
                continue
            for k in range(len(payload)):
                where.append((i, start + k))
            data += payload
            expect = seq + len(payload)
        for lo, hi in _data_ranges(data):
            for k in range(lo, hi):
                i, j = where[k]
                out[i][j] = 0
        del base
    return [(ts, bytes(b)) for (ts, _f), b in zip(frames, out)]


def _trailer(frame: bytes, payload: bytes) -> int:
    idx = frame.rfind(payload) if payload else -1
    return len(frame) - idx - len(payload) if idx >= 0 else 0


def _data_ranges(data: bytes):
    """(start, end) byte ranges of P-DATA data values in a PDU stream; anything unparsable to the end."""
    pos, n = 0, len(data)
    while pos + 6 <= n:
        pdu_type, length = data[pos], struct.unpack_from(">I", data, pos + 2)[0]
        end = pos + 6 + length
        if pdu_type == codes.PDU_P_DATA_TF:
            p = pos + 6
            while p + 6 <= min(end, n):
                pdv_len, control = struct.unpack_from(">I", data, p)[0], data[p + 5]
                value_end = p + 4 + pdv_len
                if pdv_len < 2 or value_end > end:
                    yield p, min(end, n)
                    break
                if not control & 0x01:
                    yield p + 6, min(value_end, n)
                else:
                    yield from _command_ranges(data, p + 6, min(value_end, n))
                p = value_end
        elif not 1 <= pdu_type <= 7:
            yield pos, n
            return
        pos = end
    if pos < n:
        yield pos, n  # a partial PDU at the end: its role is unknown


def _command_ranges(data: bytes, pos: int, end: int):
    """Ranges to zero in a command PDV value (Implicit VR LE elements): all but the kept values.

    A command set split over several PDVs, or anything unparsable, is zeroed from there on."""
    while pos + 8 <= end:
        group, element, length = struct.unpack_from("<HHI", data, pos)
        value = pos + 8
        if group != 0 or value + length > end:
            yield pos, end
            return
        if element not in _KEPT_COMMAND_ELEMENTS:
            yield value, value + length
        pos = value + length
    if pos < end:
        yield pos, end


class EvidenceWriter:
    """Writes the files, within the caps. Counters: ``written``, ``suppressed`` (by reason)."""

    def __init__(self, settings: EvidenceSettings, linktype: int = dpkt.pcap.DLT_EN10MB, clock=time.time):
        self.settings = settings
        self.linktype = linktype
        self.clock = clock
        self.written = 0
        self.suppressed: dict[str, int] = {}
        self._recent: deque[float] = deque()
        self._files: deque[tuple[str, int]] = deque()
        self._bytes = 0

    def _skip(self, why: str) -> None:
        self.suppressed[why] = self.suppressed.get(why, 0) + 1

    def write(self, frames: list[tuple[float, bytes]], calling: str, called: str, reason: str) -> str | None:
        s = self.settings
        now = self.clock()
        while self._recent and now - self._recent[0] > 60:
            self._recent.popleft()
        if len(self._recent) >= s.per_minute:
            self._skip("rate")
            return None
        clean = zero_data_values(frames, self.linktype)
        size = 24 + sum(16 + len(f) for _ts, f in clean)
        while self._files and (len(self._files) >= s.max_files or self._bytes + size > s.max_bytes):
            old, old_size = self._files.popleft()  # the oldest evidence goes first
            try:
                os.unlink(old)
            except OSError:
                pass
            self._bytes -= old_size
        if size > s.max_bytes:
            self._skip("too-large")
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(frames[0][0] if frames else now))
        name = "_".join(_SAFE.sub("-", x)[:40] for x in (stamp, calling, called, reason))
        name += f"_{os.getpid()}-{self.written}.pcap"  # workers share the directory
        path = os.path.join(s.directory, name)
        try:
            with open(path, "wb") as f:
                w = dpkt.pcap.Writer(f, snaplen=262144, linktype=self.linktype)
                for ts, frame in clean:
                    w.writepkt(frame, ts=ts)
        except OSError:
            self._skip("write-error")
            return None
        self._recent.append(now)
        self._files.append((path, size))
        self._bytes += size
        self.written += 1
        return path
