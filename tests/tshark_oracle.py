"""Independent oracle for DICOM Upper Layer captures, built on tshark.

It shares no code with the probe's decoder (nor with
tests/fixtures/record_fixtures.py): Wireshark's own DICOM dissector does the
TCP reassembly and PDU parsing, and this module only pairs the PDUs of one TCP
connection (``tcp.stream``) with the A-ASSOCIATE-RQ that opened it, because
A-ASSOCIATE-RJ, A-ABORT and A-RELEASE PDUs carry no AE titles.

    association_counts(pcap, ports)
        -> {(calling_ae, called_ae): {"requests": n, "accepts": n,
                                      "rejects": {(result, source, reason): n},
                                      "aborts": n, "releases": n}}
    associations(pcap, ports) -> one dict per A-ASSOCIATE-RQ, in capture order
    counts_from_truth(truth_dict) -> the same shape as association_counts(),
        computed from a tests/fixtures/captures/*.truth.json document
    tshark_available() -> bool

"releases" counts A-RELEASE-RP PDUs; "aborts" counts A-ABORT PDUs (either
direction); "rejects" is keyed by the canonical PS3.8 Table 9-21 names
(result, source, reason), e.g. ("rejected-permanent", "service-user",
"calling-ae-title-not-recognized").  AE titles are returned with the padding
spaces stripped.

Known limits of tshark 4.0's DICOM dissector, as seen on these fixtures:

* Only ports given in ``ports`` are decoded as DICOM (``-d tcp.port==N,dicom``;
  104 is registered anyway).  The heuristic dissector is not used.
* tshark's TCP reassembly needs every segment of a PDU.  A PDU with a lost
  or uncaptured segment is not reported at all; tshark does find the PDUs
  that follow it (checked by deleting single frames from store_dcmtk_veth.pcap
  with editcap: dropping one segment of the 9.6 KB A-ASSOCIATE-RQ loses the
  RQ, dropping a segment of the AC loses the accept, dropping one in the
  middle of a P-DATA loses nothing that is counted here, and the A-RELEASE
  PDUs after it are still found).  A stream whose RQ was lost, or a capture
  that starts in the middle of an association, has its other PDUs counted
  under the key (None, None).  None of the committed fixtures loses segments.
* A PDU cut short by the end of the connection (killed_storescu: the P-DATA
  being sent when storescu was SIGKILLed) is never completed, so it is not
  reported at all - which is right for counting purposes.
* For an A-ABORT with source 0 (service-user) the reason byte is "not
  significant" (PS3.8 9.3.8); it is reported as "not-significant" whatever
  its value.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from collections import defaultdict

TSHARK = "tshark"

REJECT_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
REJECT_SOURCE = {1: "service-user", 2: "service-provider-acse",
                 3: "service-provider-presentation"}
REJECT_REASON = {
    1: {1: "no-reason-given", 2: "application-context-name-not-supported",
        3: "calling-ae-title-not-recognized", 7: "called-ae-title-not-recognized"},
    2: {1: "no-reason-given", 2: "protocol-version-not-supported"},
    3: {1: "temporary-congestion", 2: "local-limit-exceeded"},
}
ABORT_SOURCE = {0: "service-user", 2: "service-provider"}
ABORT_REASON = {0: "reason-not-specified", 1: "unrecognized-pdu", 2: "unexpected-pdu",
                4: "unrecognized-pdu-parameter", 5: "unexpected-pdu-parameter",
                6: "invalid-pdu-parameter-value"}

_FIELDS = [
    "frame.number", "frame.time_epoch", "tcp.stream",
    "ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport",
    "dicom.pdu.type",
    "dicom.assoc.ae.calling", "dicom.assoc.ae.called",
    "dicom.assoc.reject.result", "dicom.assoc.reject.source", "dicom.assoc.reject.reason",
    "dicom.assoc.abort.source", "dicom.assoc.abort.reason",
]
_AGG = "\x1f"  # separates several occurrences of one field in a frame


@functools.lru_cache(maxsize=1)
def tshark_available() -> bool:
    """True if a working tshark with the DICOM dissector is on PATH."""
    if shutil.which(TSHARK) is None:
        return False
    try:
        r = subprocess.run([TSHARK, "-G", "protocols"], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and any(
        line.split("\t")[2:3] == ["dicom"] for line in r.stdout.splitlines())


def _reject_names(result, source, reason):
    return (REJECT_RESULT.get(result, f"unknown-result-{result}"),
            REJECT_SOURCE.get(source, f"unknown-source-{source}"),
            REJECT_REASON.get(source, {}).get(reason, f"unknown-reason-{reason}"))


def _abort_names(source, reason):
    if source == 0:
        return ABORT_SOURCE[0], "not-significant"
    return (ABORT_SOURCE.get(source, f"unknown-source-{source}"),
            ABORT_REASON.get(reason, f"unknown-reason-{reason}"))


def _int(v):
    return int(v, 0)


def _frames(pcap_path, ports):
    """Yield one dict per frame holding at least one complete DICOM PDU."""
    cmd = [TSHARK, "-r", str(pcap_path), "-n",
           "-o", "tcp.desegment_tcp_streams:TRUE", "-o", "tcp.analyze_sequence_numbers:TRUE"]
    for p in sorted(set(int(p) for p in ports)):
        cmd += ["-d", f"tcp.port=={p},dicom"]
    cmd += ["-Y", "dicom.pdu.type", "-T", "fields", "-E", "separator=\t",
            "-E", "occurrence=a", "-E", f"aggregator={_AGG}", "-E", "quote=n"]
    for f in _FIELDS:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed ({r.returncode}): {r.stderr}")
    for line in r.stdout.splitlines():
        cols = line.split("\t")
        if len(cols) != len(_FIELDS):
            raise RuntimeError(f"unexpected tshark line: {line!r}")
        row = {f: (c.split(_AGG) if c != "" else []) for f, c in zip(_FIELDS, cols)}
        yield row


def associations(pcap_path, ports):
    """One dict per TCP stream carrying DICOM, ordered by its first PDU:
    calling_ae, called_ae, client, client_port, server, server_port, stream,
    requests, accepts, rejects [(result, source, reason)], aborts
    [{"by", "source", "reason"}], release_requests, releases, outcome."""
    streams = {}
    order = []
    for row in _frames(pcap_path, ports):
        stream = int(row["tcp.stream"][0])
        src = (row["ip.src"] or row["ipv6.src"])[0]
        dst = (row["ip.dst"] or row["ipv6.dst"])[0]
        sport, dport = int(row["tcp.srcport"][0]), int(row["tcp.dstport"][0])
        a = streams.get(stream)
        if a is None:
            a = streams[stream] = {
                "stream": stream, "calling_ae": None, "called_ae": None,
                "client": None, "client_port": None, "server": None, "server_port": None,
                "requests": 0, "accepts": 0, "rejects": [], "aborts": [],
                "release_requests": 0, "releases": 0, "first_frame": int(row["frame.number"][0])}
            order.append(stream)
        aes = list(zip(row["dicom.assoc.ae.calling"], row["dicom.assoc.ae.called"]))
        rjs = list(zip(row["dicom.assoc.reject.result"], row["dicom.assoc.reject.source"],
                       row["dicom.assoc.reject.reason"]))
        abs_ = list(zip(row["dicom.assoc.abort.source"], row["dicom.assoc.abort.reason"]))
        for t in (_int(x) for x in row["dicom.pdu.type"]):
            if t == 0x01:  # A-ASSOCIATE-RQ
                calling, called = aes.pop(0)
                a["requests"] += 1
                a["calling_ae"], a["called_ae"] = calling.strip(), called.strip()
                a["client"], a["client_port"] = src, sport
                a["server"], a["server_port"] = dst, dport
            elif t == 0x02:  # A-ASSOCIATE-AC (carries the titles too)
                if aes:
                    aes.pop(0)
                a["accepts"] += 1
            elif t == 0x03:  # A-ASSOCIATE-RJ
                res, srcv, rsn = (_int(x) for x in rjs.pop(0))
                a["rejects"].append(_reject_names(res, srcv, rsn))
            elif t == 0x05:
                a["release_requests"] += 1
            elif t == 0x06:
                a["releases"] += 1
            elif t == 0x07:  # A-ABORT
                s, rsn = (_int(x) for x in abs_.pop(0))
                source, reason = _abort_names(s, rsn)
                if a["client"] is None:
                    by = None
                else:
                    by = "requestor" if (src, sport) == (a["client"], a["client_port"]) \
                        else "acceptor"
                a["aborts"].append({"by": by, "source": source, "reason": reason})
    out = []
    for s in order:
        a = streams[s]
        if a["rejects"]:
            a["outcome"] = "rejected"
        elif a["aborts"]:
            a["outcome"] = "aborted"
        elif a["releases"]:
            a["outcome"] = "released"
        elif a["accepts"]:
            a["outcome"] = "ended-without-release"
        else:
            a["outcome"] = "no-response"
        out.append(a)
    return out


def association_sequence(pcap_path, ports):
    """associations() restricted to streams with a decoded A-ASSOCIATE-RQ."""
    return [a for a in associations(pcap_path, ports) if a["requests"]]


def _empty():
    return {"requests": 0, "accepts": 0, "rejects": defaultdict(int), "aborts": 0,
            "releases": 0}


def _finish(counts):
    return {k: dict(v, rejects=dict(v["rejects"])) for k, v in counts.items()}


def association_counts(pcap_path, ports):
    """{(calling_ae, called_ae): {"requests", "accepts", "rejects", "aborts",
    "releases"}} as decoded by tshark; see the module docstring."""
    counts = defaultdict(_empty)
    for a in associations(pcap_path, ports):
        c = counts[(a["calling_ae"], a["called_ae"])]
        c["requests"] += a["requests"]
        c["accepts"] += a["accepts"]
        for rj in a["rejects"]:
            c["rejects"][rj] += 1
        c["aborts"] += len(a["aborts"])
        c["releases"] += a["releases"]
    return _finish(counts)


def counts_from_truth(truth):
    """The association_counts() that a *.truth.json document predicts."""
    counts = defaultdict(_empty)
    for a in truth["associations"]:
        c = counts[(a["calling_ae"], a["called_ae"])]
        c["requests"] += 1
        if a["outcome"] in ("released", "ended-without-release") or (
                a["outcome"] == "aborted" and a.get("accepted")):
            c["accepts"] += 1
        if a["outcome"] == "rejected":
            rj = a["reject"]
            c["rejects"][(rj["result"], rj["source"], rj["reason"])] += 1
        if a["outcome"] == "aborted":
            c["aborts"] += 1
        if a["outcome"] == "released":
            c["releases"] += 1
    return _finish(counts)


if __name__ == "__main__":  # python3 tests/tshark_oracle.py F.pcap PORT [PORT...]
    import json
    import sys
    for a in associations(sys.argv[1], [int(p) for p in sys.argv[2:]]):
        print(json.dumps(a))
    for k, v in association_counts(sys.argv[1], [int(p) for p in sys.argv[2:]]).items():
        print(k, v)
