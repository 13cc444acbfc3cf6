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

DIMSE layer (PS3.7), from the command sets tshark decodes (``-T pdml`` with
``-o dicom.tag_tree:TRUE``: without it tshark 4.0 puts no ``dicom.tag``
fields in its output; the command field is tag (0000,0100), the status
(0000,0900)):

    dimse_counts(pcap, ports)
        -> {(calling_ae, called_ae): {command: {"requests": n,
                                                "responses": {"FF00": n, ...}}}}
    dimse_associations(pcap, ports) -> associations() entries with
        "messages", "operations", "suboperations" and "unanswered" added
    dimse_counts_from_truth(truth_dict) -> the same shape as dimse_counts()

A command is counted once its command set is complete: the PDV that carries
its last fragment (flags bits 0 and 1 set); the elements of earlier command
fragments of the same TCP direction are merged in.  tshark's own PDV
reassembly is switched off (``dicom.pdv_reassemble:FALSE``): with it on,
tshark 4.0 carries the state of a data set that spans several PDVs (the
~200 KB C-STORE of store_dcmtk_veth.pcap) over into the next command PDV of
the connection - even one sent the other way - and decodes the C-STORE-RSP
that follows as the rest of the Pixel Data ("Early termination of tag"), so
that response would be lost.  Without reassembly, an element split across
two command PDVs would be lost instead; no fixture has one (commands are
small and go in one PDV).  ``command`` is the DIMSE name without -RQ/-RSP ("C-STORE",
"N-EVENT-REPORT", "C-CANCEL", ...); ``requests`` counts request messages from
either side (a C-CANCEL-RQ counts as a request of command "C-CANCEL");
``responses`` counts response messages keyed by their (0000,0900) status as
four upper-case hex digits, pending FF00/FF01 included.  Per association,
``unanswered`` counts requests (C-CANCEL excluded) whose final, non-pending
response with the same Message ID Being Responded To never came back from
the other side, and ``suboperations`` sums (0000,1021/1022/1023) completed /
failed / warning of the final C-MOVE / C-GET responses that carry them.
Pairs with no DIMSE message are absent from dimse_counts().
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


@functools.lru_cache(maxsize=None)
def tshark_has(*protocols: str) -> bool:
    """True if a working tshark with these dissectors (filter names, e.g. "dicom") is on PATH."""
    if shutil.which(TSHARK) is None:
        return False
    try:
        r = subprocess.run([TSHARK, "-G", "protocols"], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    names = {line.split("\t")[2] for line in r.stdout.splitlines() if line.count("\t") >= 2}
    return r.returncode == 0 and set(protocols) <= names


def tshark_available() -> bool:
    """True if a working tshark with the DICOM dissector is on PATH."""
    return tshark_has("dicom")


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


# ---------------------------------------------------------------------------
# DIMSE (PS3.7)
# ---------------------------------------------------------------------------

DIMSE_COMMANDS = {
    0x0001: "C-STORE", 0x0010: "C-GET", 0x0020: "C-FIND", 0x0021: "C-MOVE",
    0x0030: "C-ECHO", 0x0100: "N-EVENT-REPORT", 0x0110: "N-GET", 0x0120: "N-SET",
    0x0130: "N-ACTION", 0x0140: "N-CREATE", 0x0150: "N-DELETE", 0x0FFF: "C-CANCEL",
}
PENDING = (0xFF00, 0xFF01)
_TAG_FIELD = 0x00000100
_TAG_MSG_ID = 0x00000110
_TAG_RESPONDED_TO = 0x00000120
_TAG_STATUS = 0x00000900
_TAG_SUBOPS = {0x00001020: "remaining", 0x00001021: "completed", 0x00001022: "failed",
               0x00001023: "warning"}


def _pdml_fields(elem):
    """{name: element} for the direct child fields of a PDML element."""
    return {c.get("name"): c for c in elem if c.tag == "field" and c.get("name")}


def _command_set(pdv):
    """{tag: show-string} of the element subtrees directly under a PDV."""
    out = {}
    for item in pdv:
        if item.tag != "field":
            continue
        kids = _pdml_fields(item)
        tag = kids.get("dicom.tag")
        if tag is None:
            continue
        val = None
        for k, v in kids.items():
            if k.startswith("dicom.tag.value."):
                val = v.get("show")
        out[int(tag.get("show"), 16)] = val
    return out


def dimse_messages(pcap_path, ports):
    """Yield one dict per complete DIMSE command set, in capture order:
    frame, stream, src, sport, dst, dport, command, rsp (bool), id (Message ID
    of a request, Message ID Being Responded To of a response or C-CANCEL),
    status (int or None), subops ({"completed", ...} present fields)."""
    import xml.etree.ElementTree as ET
    cmd = [TSHARK, "-r", str(pcap_path), "-n",
           "-o", "tcp.desegment_tcp_streams:TRUE", "-o", "tcp.analyze_sequence_numbers:TRUE",
           "-o", "dicom.tag_tree:TRUE", "-o", "dicom.pdv_reassemble:FALSE"]
    for p in sorted(set(int(p) for p in ports)):
        cmd += ["-d", f"tcp.port=={p},dicom"]
    cmd += ["-Y", "dicom.pdv.flags", "-T", "pdml"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = {}  # (stream, src, sport) -> command elements of earlier fragments
    try:
        for _ev, pkt in ET.iterparse(proc.stdout):
            if pkt.tag != "packet":
                continue
            info = {}
            for f in pkt.iter("field"):
                n = f.get("name")
                if n in ("frame.number", "tcp.stream", "ip.src", "ipv6.src", "ip.dst",
                         "ipv6.dst", "tcp.srcport", "tcp.dstport") and n not in info:
                    info[n] = f.get("show")
            base = {"frame": int(info["frame.number"]), "stream": int(info["tcp.stream"]),
                    "src": info.get("ip.src") or info.get("ipv6.src"),
                    "sport": int(info["tcp.srcport"]),
                    "dst": info.get("ip.dst") or info.get("ipv6.dst"),
                    "dport": int(info["tcp.dstport"])}
            for proto in pkt.iter("proto"):
                if proto.get("name") != "dicom":
                    continue
                for pdv in proto.iter("field"):
                    flags = _pdml_fields(pdv).get("dicom.pdv.flags")
                    if flags is None:
                        continue
                    fl = int(flags.get("show"), 0)
                    if not fl & 0x01:  # a data set fragment
                        continue
                    key = (base["stream"], base["src"], base["sport"])
                    cs = partial.pop(key, {})
                    cs.update(_command_set(pdv))
                    if not fl & 0x02:  # not the last fragment of the command set
                        partial[key] = cs
                        continue
                    if _TAG_FIELD not in cs:
                        continue
                    field = int(cs[_TAG_FIELD])
                    name = DIMSE_COMMANDS.get(field & 0x7FFF, f"0x{field & 0x7FFF:04X}")
                    rsp = bool(field & 0x8000)
                    if rsp or name == "C-CANCEL":
                        mid = cs.get(_TAG_RESPONDED_TO)
                    else:
                        mid = cs.get(_TAG_MSG_ID)
                    status = cs.get(_TAG_STATUS)
                    yield dict(base, command=name, rsp=rsp,
                               id=int(mid) if mid is not None else None,
                               status=int(status) if status is not None else None,
                               subops={v: int(cs[k]) for k, v in _TAG_SUBOPS.items()
                                       if cs.get(k) is not None})
            pkt.clear()
    finally:
        out, err = proc.communicate()
        if proc.returncode not in (0, None):
            raise RuntimeError(f"tshark failed ({proc.returncode}): {err.decode(errors='replace')}")


def summarize_dimse(messages):
    """operations, suboperations, unanswered of one association.  Each
    message needs "command", "rsp", "id", "status", "subops" and "side" (who
    sent it: any two distinct values, e.g. "requestor"/"acceptor")."""
    ops = {}
    subops = {}
    open_rq = []  # [side, message id, command] of requests still waiting
    for m in messages:
        op = ops.setdefault(m["command"], {"requests": 0, "responses": {}})
        if not m["rsp"]:
            op["requests"] += 1
            if m["command"] != "C-CANCEL":
                open_rq.append((m["side"], m["id"], m["command"]))
            continue
        st = m["status"]
        key = "NONE" if st is None else f"{st:04X}"
        op["responses"][key] = op["responses"].get(key, 0) + 1
        if st in PENDING:
            continue
        for i, (side, mid, cmd) in enumerate(open_rq):  # the oldest matching request
            if side != m["side"] and mid == m["id"] and cmd == m["command"]:
                del open_rq[i]
                break
        if m["command"] in ("C-MOVE", "C-GET") and m.get("subops"):
            so = subops.setdefault(m["command"], {"completed": 0, "failed": 0, "warning": 0})
            for k in so:
                so[k] += m["subops"].get(k, 0)
    unanswered = {}
    for _side, _mid, cmd in open_rq:
        unanswered[cmd] = unanswered.get(cmd, 0) + 1
    return ops, subops, unanswered


def dimse_associations(pcap_path, ports):
    """associations() (every stream with a PDU), each with "messages" (its
    DIMSE command sets), "operations", "suboperations", "unanswered"."""
    assocs = associations(pcap_path, ports)
    by_stream = {a["stream"]: a for a in assocs}
    for a in assocs:
        a["messages"] = []
    for m in dimse_messages(pcap_path, ports):
        a = by_stream.get(m["stream"])
        if a is None:  # a stream whose only complete PDUs are P-DATA fragments
            a = by_stream[m["stream"]] = {"stream": m["stream"], "calling_ae": None,
                                         "called_ae": None, "client": None,
                                         "client_port": None, "requests": 0,
                                         "messages": []}
            assocs.append(a)
        if a["client"] is not None:
            side = "requestor" if (m["src"], m["sport"]) == (a["client"], a["client_port"]) \
                else "acceptor"
        else:
            side = f"{m['src']}:{m['sport']}"
        a["messages"].append(dict(m, side=side))
    for a in assocs:
        a["operations"], a["suboperations"], a["unanswered"] = summarize_dimse(a["messages"])
    return assocs


def _add_ops(into, ops):
    for cmd, op in ops.items():
        t = into.setdefault(cmd, {"requests": 0, "responses": {}})
        t["requests"] += op["requests"]
        for st, n in op["responses"].items():
            t["responses"][st] = t["responses"].get(st, 0) + n


def dimse_counts(pcap_path, ports):
    """{(calling_ae, called_ae): {command: {"requests": n, "responses":
    {status_hex: n}}}} as decoded by tshark; see the module docstring."""
    counts = {}
    for a in dimse_associations(pcap_path, ports):
        if a["operations"]:
            _add_ops(counts.setdefault((a["calling_ae"], a["called_ae"]), {}), a["operations"])
    return counts


def dimse_counts_from_truth(truth):
    """The dimse_counts() that a *.truth.json document with "operations" predicts."""
    counts = {}
    for a in truth["associations"]:
        if a.get("operations"):
            _add_ops(counts.setdefault((a["calling_ae"], a["called_ae"]), {}), a["operations"])
    return counts


if __name__ == "__main__":  # python3 tests/tshark_oracle.py F.pcap PORT [PORT...]
    import json
    import sys
    for a in associations(sys.argv[1], [int(p) for p in sys.argv[2:]]):
        print(json.dumps(a))
    for k, v in association_counts(sys.argv[1], [int(p) for p in sys.argv[2:]]).items():
        print(k, v)
    for k, v in dimse_counts(sys.argv[1], [int(p) for p in sys.argv[2:]]).items():
        print(k, json.dumps(v, sort_keys=True))
