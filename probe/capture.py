"""Capture input through libpcap (pypcap): files now, live interfaces later; the BPF filter.

pypcap quirks handled here: a name that is not a readable capture file is silently retried as an
interface name (giving "No such device exists"), so files are checked first; iterating a handle
hides a truncated file, so packets are read with ``dispatch``, whose -1 carries libpcap's error.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Iterator

import pcap

from .decode import DLT_EN10MB

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4",  # microsecond, little/big endian
    b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",  # nanosecond
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

BATCH = 4096


class CaptureError(Exception):
    """A capture that cannot be read (or stopped being readable); the message is one clear line."""


# A pure ACK: no SYN, FIN or RST and no payload (IP length minus the IP and TCP header lengths);
# IPv6 only without extension headers (a frame with them is kept). Ethernet padding does not count.
PURE_ACK_V4 = ("ip and tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) == 0"
               " and ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) == 0")
PURE_ACK_V6 = "ip6 and ip6[6] == 6 and ip6[53] & 7 == 0 and ip6[4:2] - ((ip6[52] & 0xf0) >> 2) == 0"
NO_PURE_ACKS = f"not ({PURE_ACK_V4}) and not ({PURE_ACK_V6})"


def build_filter(ports: Iterable[int], user_filter: str | None = None, *, vlan: bool = True,
                 shard: str | None = None, drop_pure_acks: bool = False) -> str:
    """BPF for TCP on the DICOM ports, ANDed with the user's filter and a worker's shard clause.

    With ``drop_pure_acks`` the kernel (live) or libpcap (files) also drops segments that carry
    nothing but an acknowledgement, a third of the frames of bulk C-STORE traffic. The probe then
    learns of a segment the capture lost from the other side's next data or FIN, or when the
    out-of-order buffer fills, instead of from its next ACK; see README "Capture at high rates".

    With ``vlan`` (Ethernet only) the same test is repeated for 802.1Q/802.1ad tagged and double
    tagged (QinQ) frames. libpcap's ``vlan`` keyword shifts the offsets for everything after it in
    the expression, so every clause must sit inside each branch: ``(X) and (Y)`` with a ``vlan`` in X
    would test Y at the wrong offsets.
    """
    ports = sorted(set(ports))
    if not ports:
        raise ValueError("no DICOM ports configured")
    parts = ["tcp and (" + " or ".join(f"port {p}" for p in ports) + ")"]
    if drop_pure_acks:
        parts.append(NO_PURE_ACKS)
    if shard:
        parts.append(shard)
    if user_filter:
        parts.append(user_filter)
    inner = " and ".join(f"({p})" for p in parts)
    return f"({inner}) or (vlan and (({inner}) or (vlan and ({inner}))))" if vlan else inner


def check_file(path: str) -> None:
    """Raise CaptureError unless ``path`` looks like a pcap or pcapng file."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CaptureError(f"{path}: cannot read: {e.strerror or e}") from None
    if os.path.isdir(path):
        raise CaptureError(f"{path}: is a directory")
    if magic not in PCAP_MAGICS and magic != PCAPNG_MAGIC:
        if len(magic) < 4:
            raise CaptureError(f"{path}: not a capture file (too short)")
        raise CaptureError(f"{path}: not a pcap or pcapng capture file")


class FileSource:
    """One capture file: ``linktype`` and ``batches()`` of (ts, frame) lists."""

    def __init__(self, path: str, ports: Iterable[int], user_filter: str | None = None, shard=None,
                 drop_pure_acks: bool = False):
        """``shard()`` may return a BPF clause selecting one worker's share of the connections;
        ``user_filter`` and ``drop_pure_acks`` are the configuration's (see :func:`build_filter`)."""
        check_file(path)
        self.path = path
        try:
            self._p = pcap.pcap(path, timestamp_in_ns=False)
        except OSError as e:
            raise CaptureError(f"{path}: libpcap cannot open it: {_msg(e)}") from None
        self.linktype = self._p.datalink()
        bpf = build_filter(ports, user_filter, vlan=self.linktype == DLT_EN10MB,
                           shard=shard() if shard is not None else None, drop_pure_acks=drop_pure_acks)
        if bpf:
            try:
                self._p.setfilter(bpf)
            except OSError as e:
                raise CaptureError(f"{path}: bad capture filter {bpf!r}: {_msg(e)}") from None
        self.size = os.path.getsize(path)
        self.error: str | None = None  # set if reading stopped early (e.g. truncated file)

    def batches(self) -> Iterator[list]:
        p = self._p
        while True:
            batch: list = []
            n = p.dispatch(BATCH, lambda ts, pkt: batch.append((ts, pkt)))
            if batch:
                yield batch
            if n == -1:
                self.error = f"{self.path}: {_msg(p.geterr())}"
                return
            if n == 0:
                return

    def dispatch_all(self, callback, tick=None, batch: int | None = None) -> None:
        """Call ``callback(ts, frame)`` for every frame, straight from libpcap; ``tick()`` between batches."""
        p = self._p
        batch = batch or BATCH
        while True:
            n = p.dispatch(batch, callback)
            if n == -1:
                self.error = f"{self.path}: {_msg(p.geterr())}"
                return
            if n == 0:
                return
            if tick is not None:
                tick()

    def packets(self) -> Iterator[tuple]:
        for batch in self.batches():
            yield from batch


def _msg(e) -> str:
    if isinstance(e, bytes):
        return e.decode(errors="replace")
    s = str(e)
    return s[2:-1] if s.startswith("b'") and s.endswith("'") else s


def merged(sources: list[FileSource]) -> Iterator[tuple]:
    """(ts, frame, source) from several files, in timestamp order (stable for equal times)."""
    if len(sources) == 1:
        src = sources[0]
        for batch in src.batches():
            for ts, frame in batch:
                yield ts, frame, src
        return
    iters = [((ts, i, frame, src) for ts, frame in src.packets()) for i, src in enumerate(sources)]
    for ts, _i, frame, src in heapq.merge(*iters, key=lambda t: (t[0], t[1])):
        yield ts, frame, src
