"""Frame decoding: every supported link layer, IPv4 options and fragments, IPv6 extension headers.

Frames are built with dpkt here (unit level); the real captures in tests/fixtures cover the same
link layers as recorded by tcpdump.
"""

from __future__ import annotations

import struct

import dpkt
import pytest

from probe import decode as D

SRC4, DST4 = bytes([198, 19, 1, 21]), bytes([198, 18, 0, 10])
SRC6 = bytes.fromhex("fd00019800180000000000000000002a")
DST6 = bytes.fromhex("fd000198001800000000000000000001")
PAYLOAD = b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03"  # an A-ASSOCIATE-RJ


def tcp(payload=PAYLOAD, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, opts=b""):
    t = dpkt.tcp.TCP(sport=40000, dport=104, seq=1000, ack=2000, flags=flags, opts=opts, data=payload)
    t.off = (20 + len(opts)) // 4
    return t


def ipv4(t, opts=b"", **kw):
    ip = dpkt.ip.IP(src=SRC4, dst=DST4, p=6, opts=opts, data=t, **kw)
    ip.hl = (20 + len(opts)) // 4
    ip.len = 20 + len(opts) + len(bytes(t))
    return ip


def ipv6(t, ext=b"", first=6):
    body = ext + bytes(t)
    hdr = struct.pack(">IHBB", 6 << 28, len(body), first, 64) + SRC6 + DST6
    return hdr + body


def eth(l3: bytes, ethertype=0x0800, tags=()):
    head = b"\x02" * 6 + b"\x04" * 6
    for tpid, vid in tags:
        head += struct.pack(">HH", tpid, vid)
    return head + struct.pack(">H", ethertype) + l3


def check(seg, src=SRC4, dst=DST4, payload=PAYLOAD):
    assert seg is not None
    s, d, sport, dport, seq, ack, flags, data = seg
    assert (bytes(s), bytes(d), sport, dport, seq, ack) == (src, dst, 40000, 104, 1000, 2000)
    assert bytes(data) == payload


def test_ethernet_ipv4_tcp_with_options_and_padding():
    t = tcp(opts=b"\x01\x01\x08\x0a" + b"\x00" * 8)  # NOP NOP timestamps
    frame = eth(bytes(ipv4(t, opts=b"\x01\x01\x01\x00"))) + b"\x00" * 12  # Ethernet padding
    check(D.Decoder(D.DLT_EN10MB).decode(frame))


@pytest.mark.parametrize("tags", [[(0x8100, 100)], [(0x88A8, 200), (0x8100, 100)], [(0x9100, 7), (0x8100, 8)]])
def test_vlan_and_qinq(tags):
    check(D.Decoder(D.DLT_EN10MB).decode(eth(bytes(ipv4(tcp())), tags=tags)))


def test_linux_sll_and_sll2():
    l3 = bytes(ipv4(tcp()))
    sll = struct.pack(">HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800) + l3
    check(D.Decoder(D.DLT_LINUX_SLL).decode(sll))
    sll2 = struct.pack(">HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02" * 8) + l3
    check(D.Decoder(D.DLT_LINUX_SLL2).decode(sll2))


@pytest.mark.parametrize("linktype", [D.DLT_RAW, D.LINKTYPE_RAW, D.DLT_IPV4])
def test_raw_ip(linktype):
    check(D.Decoder(linktype).decode(bytes(ipv4(tcp()))))


def test_bsd_loopback_both_byte_orders_and_ipv6():
    l3 = bytes(ipv4(tcp()))
    check(D.Decoder(D.DLT_NULL).decode(struct.pack("<I", 2) + l3))
    check(D.Decoder(D.DLT_NULL).decode(struct.pack(">I", 2) + l3))
    check(D.Decoder(D.DLT_LOOP).decode(struct.pack(">I", 2) + l3))
    check(D.Decoder(D.DLT_NULL).decode(struct.pack("<I", 30) + ipv6(tcp())), SRC6, DST6)


def test_ipv6_with_extension_headers():
    t = tcp()
    hop = bytes([60, 0]) + b"\x01\x04\x00\x00\x00\x00"  # hop-by-hop -> destination options
    dst = bytes([51, 0]) + b"\x01\x04\x00\x00\x00\x00"  # destination options -> AH
    ah = bytes([6, 1, 0, 0]) + b"\x00" * 8  # AH: (1 + 2) * 4 = 12 bytes -> TCP
    frame = eth(ipv6(t, hop + dst + ah, first=0), 0x86DD)
    check(D.Decoder(D.DLT_EN10MB).decode(frame), SRC6, DST6)


@pytest.mark.parametrize("frame,kind", [
    (eth(b"\x00" * 28, 0x0806), "non-ip"),  # ARP
    (eth(bytes(dpkt.ip.IP(src=SRC4, dst=DST4, p=17, data=dpkt.udp.UDP(data=b"x")))), "non-tcp"),
    (eth(bytes(ipv4(tcp(), mf=1))), "ipv4-fragment"),
    (eth(bytes(ipv4(tcp(), offset=40))), "ipv4-fragment"),
    (eth(ipv6(tcp(), bytes([6, 0, 0, 0, 0, 0, 0, 1]), first=44), 0x86DD), "ipv6-fragment"),
    (eth(ipv6(tcp(), b"\x00" * 8, first=50), 0x86DD), "ipv6-unsupported-extension"),
    (eth(bytes(ipv4(tcp()))[:30]), "truncated"),  # cut by the snap length
    (b"\x02" * 10, "truncated"),
    (eth(b"\x45" + bytes(ipv4(tcp()))[1:2] + b"\x00\x05" + bytes(ipv4(tcp()))[4:]), "bad-ip-header"),
    (eth(b"\x55" + bytes(ipv4(tcp()))[1:]), "bad-ip-header"),
])
def test_skipped_frames_are_counted_by_kind(frame, kind):
    d = D.Decoder(D.DLT_EN10MB)
    assert d.decode(frame) is None
    assert d.skipped == {kind: 1}


def test_bad_tcp_header_and_unsupported_link():
    t = tcp()
    raw = bytearray(bytes(ipv4(t)))
    raw[20 + 12] = 0x40  # data offset 4 words < 5
    d = D.Decoder(D.DLT_EN10MB)
    assert d.decode(eth(bytes(raw))) is None and d.skipped == {"bad-tcp-header": 1}
    w = D.Decoder(105)  # 802.11
    assert w.decode(b"\x00" * 60) is None and w.skipped == {"unsupported-link": 1}
    assert not D.Decoder.supports(105)
