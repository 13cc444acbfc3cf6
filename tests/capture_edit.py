"""Derive damaged captures from real ones (tests only): drop, duplicate, reorder or cut frames.

dpkt is used here, off the probe's hot path, to read and write pcap files and to look at TCP.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dpkt


@dataclass
class Frame:
    ts: float
    buf: bytes
    tcp: dpkt.tcp.TCP | None
    src: str | None  # "ip:port" of the sender, for TCP frames

    @property
    def payload(self) -> bytes:
        return bytes(self.tcp.data) if self.tcp is not None else b""


def read(path: Path) -> tuple[list[Frame], int]:
    with open(path, "rb") as f:
        r = dpkt.pcap.Reader(f)
        linktype = r.datalink()
        frames = []
        for ts, buf in r:
            tcp = src = None
            if linktype == dpkt.pcap.DLT_EN10MB:
                eth = dpkt.ethernet.Ethernet(buf)
                ip = eth.data
                if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) and isinstance(ip.data, dpkt.tcp.TCP):
                    tcp = ip.data
                    import socket

                    fam = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
                    src = f"{socket.inet_ntop(fam, ip.src)}:{tcp.sport}"
            frames.append(Frame(ts, buf, tcp, src))
    return frames, linktype


def write(path: Path, frames: list[Frame], linktype: int) -> Path:
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, snaplen=262144, linktype=linktype)
        for fr in frames:
            w.writepkt(fr.buf, ts=fr.ts)
    return path
