"""A flood through the real pipeline, in its own process (for a clean peak RSS). Test helper.

usage: run_flood.py syn|halfopen N [max_flows]

Interleaves, every N/100 flood frames, one real rejected association (SYN, SYN-ACK, A-ASSOCIATE-RQ,
A-ASSOCIATE-RJ, FINs) from a legitimate client, and prints a JSON summary.
"""

import json
import resource
import struct
import sys

from probe.flows import FlowSettings
from probe.pipeline import Pipeline

kind, n = sys.argv[1], int(sys.argv[2])
max_flows = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
pipe = Pipeline(FlowSettings(max_flows=max_flows))
dec = pipe.decoder(1)
ETH = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
PACS = bytes([198, 18, 0, 10])
RQ_BODY = struct.pack(">HH", 1, 0) + b"PACS_MAIN".ljust(16) + b"CT_REMOTE1".ljust(16) + b"\0" * 32
RQ = struct.pack(">BxI", 1, len(RQ_BODY)) + RQ_BODY
RJ = bytes([3, 0, 0, 0, 0, 4, 0, 1, 1, 3])


def frame(src, dst, sport, dport, seq, ack, flags, payload=b""):
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0, 64, 6, 0, src, dst)
    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 1000, 0, 0)
    return ETH + ip + tcp + payload


def legit(k, ts):
    client, port = bytes([198, 19, 1, 21]), 30000 + k
    yield frame(client, PACS, port, 104, 100, 0, 0x02)
    yield frame(PACS, client, 104, port, 500, 101, 0x12)
    yield frame(client, PACS, port, 104, 101, 501, 0x18, RQ)
    yield frame(PACS, client, 104, port, 501, 101 + len(RQ), 0x18, RJ)
    yield frame(client, PACS, port, 104, 101 + len(RQ), 511, 0x11)
    yield frame(PACS, client, 104, port, 511, 102 + len(RQ), 0x11)


ts = 1000.0
every = max(1, n // 100)
legit_count = 0
for i in range(n):
    ts += 1e-5
    src = struct.pack(">I", 0x0A000000 + i)  # 10.x.y.z: a distinct flow per frame
    if kind == "syn":
        pipe.packet(dec, ts, frame(src, PACS, 1024 + i % 60000, 104, i, 0, 0x02))
    else:  # a half-open association: handshake and an RQ that is never answered
        pipe.packet(dec, ts, frame(src, PACS, 1024 + i % 60000, 104, i, 0, 0x02))
        pipe.packet(dec, ts, frame(src, PACS, 1024 + i % 60000, 104, i + 1, 1, 0x18, RQ))
    if i % every == 0:
        for f in legit(legit_count, ts):
            pipe.packet(dec, ts, f)
        legit_count += 1
pipe.sync()
s = pipe.store
print(json.dumps({
    "legit": legit_count,
    "rejects": s.total("dicom_association_rejects_total", calling_ae="CT_REMOTE1"),
    "requests": s.total("dicom_association_requests_total"),
    "flows": len(pipe.flows),
    "evicted": pipe.flows.evicted,
    "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
