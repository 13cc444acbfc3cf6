#!/usr/bin/env python3
"""Reject-storm benchmark: how many associations a second one worker decodes (the founding incident).

A site whose modalities are not known to the PACS produces A-ASSOCIATE-RQ -> A-ASSOCIATE-RJ
("calling AE title not recognized") associations in a tight retry loop. Each one is a TCP connection
of its own, so the probe's per-connection and per-association work (the full Python path) is what
counts here, not the per-packet fast lane.

The capture is built from the first association of the committed fixture
``tests/fixtures/captures/reject_calling_pynetdicom.pcap`` (pynetdicom 3.0.4 requestor and acceptor
over a veth; 10 frames: handshake, A-ASSOCIATE-RQ, A-ASSOCIATE-RJ, FINs and ACKs): N copies from 200
client addresses (198.19.0.1-200), each with its own client port, starting 1/RATE s apart and keeping
the fixture's own timing within the association (about 8 ms), so about 40 are open at once. The
probe's counts must be exactly N requests and N rejects.

    python3 bench/storm.py [--associations 50000] [--rate 5000] [--repeat 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FIXTURE = REPO / "tests" / "fixtures" / "captures" / "reject_calling_pynetdicom.pcap"
CLIENTS = 200
DEFAULT_ASSOCIATIONS = 50_000
DEFAULT_RATE = 5_000.0


def build(out: Path, associations: int, rate: float) -> Path:
    """Write the storm capture (pcap, Ethernet) to ``out``; returns it."""
    import dpkt  # the bench's own tool for writing captures; never on the probe's hot path

    with open(FIXTURE, "rb") as f:
        frames = [(ts, buf) for ts, buf in dpkt.pcap.Reader(f)]
    tcp = []
    for ts, buf in frames:
        eth = dpkt.ethernet.Ethernet(buf)
        if isinstance(eth.data, dpkt.ip.IP) and isinstance(eth.data.data, dpkt.tcp.TCP):
            tcp.append((ts, eth))
    first = tcp[0][1].data  # the client's SYN
    client, cport = first.src, first.data.sport
    one = [(ts - tcp[0][0], eth) for ts, eth in tcp
           if {(eth.data.src, eth.data.data.sport), (eth.data.dst, eth.data.data.dport)} >= {(client, cport)}]
    assert len(one) == 10, f"expected the 10 frames of one association in {FIXTURE.name}, got {len(one)}"

    # every frame of every copy, in timestamp order (the associations overlap: each lasts ~8 ms)
    order = sorted((1.7e9 + i / rate + dt, i, j) for i in range(associations) for j, (dt, _eth) in enumerate(one))
    with open(out, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, i, j in order:
            eth = one[j][1]
            addr, port = socket.inet_aton(f"198.19.0.{i % CLIENTS + 1}"), 20000 + (i // CLIENTS) % 40000
            ip, seg = eth.data, eth.data.data
            src, sport, dst, dport = ip.src, seg.sport, ip.dst, seg.dport
            if (src, sport) == (client, cport):
                ip.src, seg.sport = addr, port
            else:
                ip.dst, seg.dport = addr, port
            ip.sum = seg.sum = 0  # recomputed by dpkt
            w.writepkt(bytes(eth), ts=ts)
            ip.src, seg.sport, ip.dst, seg.dport = src, sport, dst, dport
    return out


def _series(prom: str, family: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{family}(?:{{[^}}]*}})? (\S+)$", prom, re.M))


def measure(capture: Path, associations: int, repeat: int, extra: list[str] = ()) -> dict:
    """Median wall time of ``dicom-probe analyze`` on the storm, and whether its counts are exact."""
    cmd = [sys.executable, "-m", "probe", "analyze", "-q", "--format", "prom", *extra, str(capture)]
    walls, prom = [], ""
    for _ in range(repeat):
        t = time.perf_counter()
        prom = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
        walls.append(time.perf_counter() - t)
    wall = statistics.median(walls)
    frames = _series(prom, "dicom_probe_packets_total")
    got = {"requests": _series(prom, "dicom_association_requests_total"),
           "rejects": _series(prom, "dicom_association_rejects_total")}
    shown = "python3 " + " ".join(cmd[1:]).replace(f"{REPO}/", "")
    return {"cmd": shown, "walls": walls, "wall": wall, "frames": frames, "counts": got,
            "exact": got == {"requests": associations, "rejects": associations},
            "associations_per_s": associations / wall, "frames_per_s": frames / wall}


def run(associations: int, rate: float, repeat: int, cache: Path) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    capture = cache / f"storm-{associations}-r{int(rate)}.pcap"
    if not capture.exists() or capture.stat().st_mtime < FIXTURE.stat().st_mtime:
        tmp = capture.with_suffix(".tmp")
        build(tmp, associations, rate)
        os.replace(tmp, capture)
    result = {"associations": associations, "rate": rate, "clients": CLIENTS,
              "capture": str(capture.relative_to(REPO)), "file_bytes": capture.stat().st_size,
              "one_worker": measure(capture, associations, repeat),
              "two_workers": measure(capture, associations, repeat, ["--workers", "2"])}
    return result


def text(r: dict) -> str:
    lines = [f"reject storm: {r['associations']:,} associations (A-ASSOCIATE-RQ -> RJ, 10 frames each) from "
             f"{r['clients']} clients, {r['rate']:,.0f} a second of capture time"]
    for key, label in (("one_worker", "1 worker"), ("two_workers", "2 workers")):
        m = r[key]
        lines.append(f"  {label}: {m['wall']:.2f} s = {m['associations_per_s']:,.0f} associations/s "
                     f"({m['frames_per_s']:,.0f} frames/s); counts {'exact' if m['exact'] else 'WRONG: ' + str(m['counts'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--associations", type=int, default=DEFAULT_ASSOCIATIONS)
    ap.add_argument("--rate", type=float, default=DEFAULT_RATE, help="associations started per second of capture time")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    r = run(args.associations, args.rate, args.repeat, HERE / ".cache")
    print(text(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return 0 if r["one_worker"]["exact"] and r["two_workers"]["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
