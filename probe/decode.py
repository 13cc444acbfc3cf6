"""Frame decoding on the per-packet path: link layer, IPv4/IPv6 and TCP headers with struct/slices.

``Decoder(linktype).decode(frame)`` returns a :data:`Segment` tuple
``(src, dst, sport, dport, seq, ack, flags, payload)`` — addresses as packed bytes — or ``None``,
having counted why the frame was skipped in ``Decoder.skipped`` (kind → frames). The kinds are
stable label values (see README, ``dicom_probe_frames_skipped_total``).

Supported: Ethernet II with any stack of 802.1Q / 802.1ad (QinQ) tags, Linux cooked capture v1 and
v2 (SLL, SLL2), BSD loopback (NULL/LOOP), raw IP; IPv4 with options (fragments are counted and
skipped: DICOM stacks do not fragment TCP, and reassembling IP is not worth its cost here), IPv6 with
extension headers walked; TCP with options. Link padding beyond the IP length is trimmed.
"""

from __future__ import annotations

import struct

# Link types (pcap LINKTYPE_* / DLT_* values as libpcap reports them).
DLT_NULL = 0
DLT_EN10MB = 1
DLT_RAW = 12  # Linux/most BSDs map LINKTYPE_RAW (101) to this
DLT_RAW_OPENBSD = 14
DLT_LOOP = 108
DLT_LINUX_SLL = 113
LINKTYPE_RAW = 101
DLT_IPV4 = 228
DLT_IPV6 = 229
DLT_LINUX_SLL2 = 276

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

_IPV6_EXT_8 = frozenset((0, 43, 60, 135, 139, 140))  # hop-by-hop, routing, dst opts, mobility, HIP, shim6
_IPV6_AH = 51
_IPV6_FRAGMENT = 44
_PROTO_TCP = 6

_U16 = struct.Struct(">H")
_TCP = struct.Struct(">HHIIBB")  # sport, dport, seq, ack, data offset, flags

# BSD loopback address families seen in the wild for IPv6 (NetBSD/OpenBSD 24, FreeBSD 28, macOS 30).
_AF_INET = 2
_AF_INET6 = frozenset((10, 24, 28, 30))

Segment = tuple  # (src, dst, sport, dport, seq, ack, flags, payload)

SKIP_KINDS = (
    "unsupported-link",
    "non-ip",
    "non-tcp",
    "ipv4-fragment",
    "ipv6-fragment",
    "ipv6-unsupported-extension",
    "truncated",
    "bad-ip-header",
    "bad-tcp-header",
)


class Decoder:
    """Decodes frames of one link type. Not thread-safe; one per capture source."""

    __slots__ = ("linktype", "skipped", "_link", "fast_offset", "fast_ipv4_type")

    def __init__(self, linktype: int):
        self.linktype = linktype
        self.skipped: dict[str, int] = {}
        # Where an untagged IPv4 header starts, and the 2 bytes before it that say "IPv4", for the
        # pipeline's fast lane; -1 where the link layer has no fixed layout.
        self.fast_offset, self.fast_ipv4_type = {
            DLT_EN10MB: (14, b"\x08\x00"),
            DLT_LINUX_SLL: (16, b"\x08\x00"),
        }.get(linktype, (-1, b""))
        self._link = {
            DLT_EN10MB: self._ethernet,
            DLT_LINUX_SLL: self._sll,
            DLT_LINUX_SLL2: self._sll2,
            DLT_NULL: self._null,
            DLT_LOOP: self._loop,
            DLT_RAW: self._raw,
            DLT_RAW_OPENBSD: self._raw,
            LINKTYPE_RAW: self._raw,
            DLT_IPV4: self._raw,
            DLT_IPV6: self._raw,
        }.get(linktype)

    @staticmethod
    def supports(linktype: int) -> bool:
        return linktype in (DLT_EN10MB, DLT_LINUX_SLL, DLT_LINUX_SLL2, DLT_NULL, DLT_LOOP, DLT_RAW,
                            DLT_RAW_OPENBSD, LINKTYPE_RAW, DLT_IPV4, DLT_IPV6)

    def _skip(self, kind: str) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1

    def decode(self, frame: bytes):
        link = self._link
        if link is None:
            self._skip("unsupported-link")
            return None
        r = link(frame)
        if r is None:
            return None
        ethertype, off = r
        if ethertype == ETH_IPV4:
            return self._ipv4(frame, off)
        if ethertype == ETH_IPV6:
            return self._ipv6(frame, off)
        self._skip("non-ip")
        return None

    # -- link layers: return (ethertype, offset of the network header) or None ----------------

    def _ethernet(self, frame: bytes):
        if len(frame) < 14:
            self._skip("truncated")
            return None
        ethertype = (frame[12] << 8) | frame[13]
        off = 14
        while ethertype in ETH_VLAN_TAGS:
            if len(frame) < off + 4:
                self._skip("truncated")
                return None
            ethertype = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
        return ethertype, off

    def _sll(self, frame: bytes):
        if len(frame) < 16:
            self._skip("truncated")
            return None
        return (frame[14] << 8) | frame[15], 16

    def _sll2(self, frame: bytes):
        if len(frame) < 20:
            self._skip("truncated")
            return None
        return (frame[0] << 8) | frame[1], 20

    def _null(self, frame: bytes):
        if len(frame) < 4:
            self._skip("truncated")
            return None
        family = frame[0] | (frame[1] << 8) | (frame[2] << 16) | (frame[3] << 24)  # host order
        if family > 0xFFFF:  # written on a big-endian host
            family = frame[3] | (frame[2] << 8)
        return self._family(family)

    def _loop(self, frame: bytes):
        if len(frame) < 4:
            self._skip("truncated")
            return None
        return self._family((frame[2] << 8) | frame[3])  # network order

    def _family(self, family: int):
        if family == _AF_INET:
            return ETH_IPV4, 4
        if family in _AF_INET6:
            return ETH_IPV6, 4
        return 0, 4  # counted as non-ip by the caller

    def _raw(self, frame: bytes):
        if not frame:
            self._skip("truncated")
            return None
        version = frame[0] >> 4
        return (ETH_IPV4 if version == 4 else ETH_IPV6 if version == 6 else 0), 0

    # -- network and transport ------------------------------------------------------------------

    def _ipv4(self, frame: bytes, off: int):
        if len(frame) < off + 20:
            self._skip("truncated")
            return None
        vihl = frame[off]
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20:
            self._skip("bad-ip-header")
            return None
        (total,) = _U16.unpack_from(frame, off + 2)
        if total < ihl:
            self._skip("bad-ip-header")
            return None
        if frame[off + 9] != _PROTO_TCP:
            self._skip("non-tcp")
            return None
        if (frame[off + 6] & 0x3F) or frame[off + 7]:  # MF flag or a fragment offset
            self._skip("ipv4-fragment")
            return None
        end = off + total
        if end > len(frame):
            self._skip("truncated")
            return None
        return self._tcp(frame, off + ihl, end, frame[off + 12 : off + 16], frame[off + 16 : off + 20])

    def _ipv6(self, frame: bytes, off: int):
        if len(frame) < off + 40:
            self._skip("truncated")
            return None
        if frame[off] >> 4 != 6:
            self._skip("bad-ip-header")
            return None
        (plen,) = _U16.unpack_from(frame, off + 4)
        end = off + 40 + plen
        if end > len(frame):
            self._skip("truncated")
            return None
        src = frame[off + 8 : off + 24]
        dst = frame[off + 24 : off + 40]
        nxt = frame[off + 6]
        pos = off + 40
        while nxt != _PROTO_TCP:
            if nxt in _IPV6_EXT_8 or nxt == _IPV6_AH:
                if pos + 2 > end:
                    self._skip("truncated")
                    return None
                hlen = (frame[pos + 1] + 2) * 4 if nxt == _IPV6_AH else (frame[pos + 1] + 1) * 8
                nxt = frame[pos]
                pos += hlen
                if pos > end:
                    self._skip("truncated")
                    return None
            elif nxt == _IPV6_FRAGMENT:
                self._skip("ipv6-fragment")
                return None
            elif nxt in (17, 1, 58, 59, 132, 136):  # UDP, ICMP, ICMPv6, no next header, SCTP, UDP-Lite
                self._skip("non-tcp")
                return None
            else:
                self._skip("ipv6-unsupported-extension")  # ESP and unknown headers
                return None
        return self._tcp(frame, pos, end, src, dst)

    def _tcp(self, frame: bytes, off: int, end: int, src: bytes, dst: bytes):
        if end - off < 20:
            self._skip("truncated" if len(frame) < off + 20 else "bad-tcp-header")
            return None
        sport, dport, seq, ack, doff, flags = _TCP.unpack_from(frame, off)
        hlen = (doff >> 4) * 4
        if hlen < 20 or off + hlen > end:
            self._skip("bad-tcp-header")
            return None
        return src, dst, sport, dport, seq, ack, flags, frame[off + hlen : end]
