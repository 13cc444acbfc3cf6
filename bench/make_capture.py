#!/usr/bin/env python3
"""Generate a deterministic, realistic pcap of DICOM traffic for the performance benchmark.

    python3 bench/make_capture.py [--frames N] [--out FILE] [--seed S] [--verify]

Writes FILE (Ethernet/IPv4/TCP, MTU 1500, MSS 1448 with TCP timestamps) and FILE.truth.json: what
was generated, association by association counted per (calling, called) AE pair, so that a run of
the probe can be checked for exact counts. Same arguments, same bytes (seeded; no clock, no
os.urandom).

Where the bytes come from
-------------------------
Every DICOM PDU is a real one, cut out of the committed fixture captures (tests/fixtures/captures/,
real DCMTK 3.6.7 and pynetdicom 3.0.4 peers) by reassembling their TCP streams with dpkt and walking
the PDUs: A-ASSOCIATE-RQ/AC/RJ, A-RELEASE-RQ/RP, A-ABORT, the C-STORE/C-ECHO/C-FIND command PDVs,
the C-FIND identifiers and the CT data set. Only these fields are changed: the AE titles in the
RQ/AC, Message ID / Message ID Being Responded To and the last digits of the Affected SOP Instance
UID (same length) in command sets, the maximum PDU length in the storescp A-ASSOCIATE-AC (16384 or
65536, as `storescp --max-pdu` would advertise), and Rows/Columns/pixel data length in the data set
so that an object has the wanted size (2-20 MB; pixel values are seeded noise). Data PDVs are
framed like the peers frame them: one PDV per P-DATA-TF, PDU length = max PDU - 6, PDV value =
max PDU - 12, message control header 0x00 and 0x02 on the last, commands 0x03.

How the peers send
------------------
A small TCP model reproduces what the fixtures show:
- DCMTK writes the 12-byte P-DATA-TF + PDV header and the PDV value as two writes; pynetdicom
  writes each PDU in one send. With Nagle on (the default of both; Linux's Minshall variant holds a
  sub-MSS segment while another sub-MSS segment is unacknowledged) an idle DCMTK peer's command
  header leaves as a 12-byte segment of its own and the rest waits for the peer's delayed ACK
  (~40 ms, as in the fixtures), and a bulk sender's PDUs mostly run together in full segments
  (PDU boundaries inside segments, a short PSH tail now and then). Half of the DCMTK storescu
  senders run with DCMTK's TCP_NODELAY setting (the usual cure for those 40 ms stalls): they send
  every P-DATA-TF as a 12-byte header segment, full 1448-byte segments and a short PSH tail.
- Receivers ACK every 1-2 segments (and a PSH tail at once); a host in interactive ("pingpong")
  mode delays the ACK of a lone small segment by 40 ms unless its own reply carries it.
- SYN / SYN-ACK / ACK with MSS, SACK-permitted, timestamps and window scale; FIN handshakes in the
  order each toolkit closes (DCMTK requestor first; pynetdicom acceptor first after a release or a
  reject; the sender of an A-ABORT).
- Timestamps are those of a capture point next to the servers: client reactions are seen one
  round-trip later (LAN 0.1-0.5 ms, remote sites 5-30 ms, routed: router MAC and TTL 62).

The mix (by frames, default): bulk C-STORE of 2-20 MB objects from modalities (DCMTK storescu to a
storescp-like PACS_MAIN on port 104, max PDU 16384 or 65536; pynetdicom to PACS_ARCHIVE on 11112),
the majority; many short associations (DCMTK C-ECHO, pynetdicom rejects 1/1/3 of unknown remote
callers, dcmqrscp rejects 1/1/7 of a wrong called title, A-ABORTs from either side now and then);
C-FIND sessions against a dcmqrscp-like PACS_QR with tens to hundreds of pending responses; and
non-DICOM noise the probe's BPF filter drops (HTTPS and HL7/MLLP TCP, DNS/NTP/syslog UDP, ARP).
Associations arrive as a Poisson process; with their durations (delayed ACKs, slow senders,
browsing pauses) hundreds of connections are open at once, all interleaved by timestamp.

The frame count is exact: associations are planned (each one's frames counted by a dry run of its
seeded script) up to the DICOM share, then noise fills the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import math
import os
import random
import struct
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import dpkt

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "captures"

GENERATOR_VERSION = 5  # bump when the output for the same arguments changes (cache key)

MTU = 1500
MSS = 1448  # 1500 - 20 (IPv4) - 20 (TCP) - 12 (timestamps option)
LINK_BPS = 1e9  # 1 Gbit/s links: a full frame takes ~12 us on the wire
BASE_US = 1_741_003_200_000_000  # 2025-03-03 12:00:00 UTC
DELACK_US = 40_000  # Linux minimum delayed-ACK timeout (TCP_ATO_MIN)

CLIENT, SERVER = 0, 1
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MASK32 = 0xFFFFFFFF

DEFAULT_FRAMES = 1_000_000
DEFAULT_SEED = 1
DEFAULT_FRAME_RATE = 100_000  # aggregate frames per second of capture time (~0.9 Gbit/s)

# Target share of frames per family; the rest of the mix is inside each family.
SHARES = {"bulk": 0.80, "short": 0.08, "find": 0.08}  # noise: the remaining 0.04
NOISE_SHARE = 1.0 - sum(SHARES.values())
SHORT_KINDS = {  # relative weights of the short association kinds (by association)
    "echo": 0.40, "reject_calling": 0.40, "reject_called": 0.10,
    "echo_abort": 0.06, "acceptor_abort": 0.04,
}


# ------------------------------------------------------------------------------------------------
# Fixture extraction: real PDUs from the committed captures.


def _read_conversations(name: str, ports: set[int]) -> list[tuple[list[bytes], list[bytes]]]:
    """Per TCP connection (in order of first packet): (client PDUs, server PDUs), reassembled by
    sequence number (the veth captures hold a few reordered segments) and walked PDU by PDU."""
    conns: dict[tuple, dict] = {}
    order: list[dict] = []
    with open(FIXTURES / name, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            if tcp.dport in ports:
                d, key = CLIENT, (ip.src, tcp.sport, ip.dst, tcp.dport)
            elif tcp.sport in ports:
                d, key = SERVER, (ip.dst, tcp.dport, ip.src, tcp.sport)
            else:
                continue
            c = conns.get(key)
            if c is None:
                c = conns[key] = {"isn": [None, None], "segs": ({}, {})}
                order.append(c)
            if tcp.flags & SYN:
                c["isn"][d] = (tcp.seq + 1) & MASK32
            if tcp.data:
                c["segs"][d][tcp.seq] = bytes(tcp.data)
    out = []
    for c in order:
        pair = []
        for d in (CLIENT, SERVER):
            isn = c["isn"][d]
            if isn is None:
                raise SystemExit(f"{name}: a connection without SYN; cannot extract PDUs")
            stream = bytearray()
            for seq in sorted(c["segs"][d], key=lambda s: (s - isn) & MASK32):
                off, data = (seq - isn) & MASK32, c["segs"][d][seq]
                if off <= len(stream) < off + len(data):
                    stream += data[len(stream) - off:]
            pair.append(_walk_pdus(bytes(stream), name))
        out.append((pair[0], pair[1]))
    return out


def _walk_pdus(stream: bytes, name: str) -> list[bytes]:
    pdus, pos = [], 0
    while pos < len(stream):
        if len(stream) - pos < 6:
            raise SystemExit(f"{name}: stream ends inside a PDU header")
        (length,) = struct.unpack_from(">I", stream, pos + 2)
        if pos + 6 + length > len(stream):
            break  # a PDU cut by the end of the connection (killed peers): not used here
        pdus.append(stream[pos:pos + 6 + length])
        pos += 6 + length
    return pdus


def _pdv(pdu: bytes) -> tuple[int, int, bytes]:
    """(context id, message control header, value) of a single-PDV P-DATA-TF."""
    assert pdu[0] == 4
    (item_len,) = struct.unpack_from(">I", pdu, 6)
    assert 6 + 4 + item_len == len(pdu), "one PDV per PDU expected"
    return pdu[10], pdu[11], pdu[12:]


def _command_elements(pdu: bytes) -> dict[int, tuple[int, int]]:
    """Command set elements (implicit VR little endian, group 0000) -> (value offset, length) in pdu."""
    _ctx, mch, value = _pdv(pdu)
    assert mch & 1, "not a command PDV"
    out, pos = {}, 0
    while pos + 8 <= len(value):
        group, elem, length = struct.unpack_from("<HHI", value, pos)
        assert group == 0
        out[elem] = (12 + pos + 8, length)
        pos += 8 + length
    return out


def _command_field(pdu: bytes) -> int:
    off, _ = _command_elements(pdu)[0x0100]
    return struct.unpack_from("<H", pdu, off)[0]


def _status(pdu: bytes) -> int | None:
    el = _command_elements(pdu).get(0x0900)
    return struct.unpack_from("<H", pdu, el[0])[0] if el else None


class Command:
    """A real command PDU whose Message ID (or Message ID Being Responded To) and Affected SOP
    Instance UID digits can be changed in place (same lengths, so group length stays right)."""

    def __init__(self, pdu: bytes):
        self.pdu = pdu
        els = _command_elements(pdu)
        self.msgid_at = (els.get(0x0110) or els.get(0x0120))[0]
        uid = els.get(0x1000)
        self.uid_at = None
        if uid is not None:
            off, length = uid
            raw = pdu[off:off + length].rstrip(b"\x00")
            self.uid_at = (off + len(raw) - 6, 6)  # the last six digits
            assert raw[-6:].isdigit()
        self.field = _command_field(pdu)

    def make(self, msg_id: int, uid_serial: int | None = None) -> bytes:
        b = bytearray(self.pdu)
        struct.pack_into("<H", b, self.msgid_at, msg_id & 0xFFFF)
        if self.uid_at is not None and uid_serial is not None:
            off, n = self.uid_at
            digits = f"{uid_serial % 10**n:0{n}d}".encode()
            b[off:off + n] = b"1" + digits[1:] if digits[0:1] == b"0" else digits  # no leading zero
        return bytes(b)


def _set_titles(pdu: bytes, called: str, calling: str) -> bytes:
    assert pdu[0] in (1, 2)
    return pdu[:10] + called.encode().ljust(16) + calling.encode().ljust(16) + pdu[42:]


def _set_max_pdu(ac: bytes, max_pdu: int) -> bytes:
    i = ac.find(b"\x51\x00\x00\x04", 74)
    assert i > 0
    return ac[:i + 4] + struct.pack(">I", max_pdu) + ac[i + 8:]


def _max_pdu(pdu: bytes) -> int:
    i = pdu.find(b"\x51\x00\x00\x04", 74)
    return struct.unpack_from(">I", pdu, i + 4)[0]


def _messages(pdus: list[bytes]) -> list[tuple[bytes, list[bytes]]]:
    """P-DATA-TF PDUs grouped into DIMSE messages: (command PDU, [data PDUs])."""
    out: list = []
    for p in pdus:
        if p[0] != 4:
            continue
        _ctx, mch, _v = _pdv(p)
        if mch & 1:
            out.append((p, []))
        else:
            out[-1][1].append(p)
    return out


class Templates:
    """The real PDUs every generated association is built from (see module docstring)."""

    def __init__(self):
        # DCMTK storescu -> storescp: 128-context RQ, AC, C-STORE-RQ/RSP, the CT data set, release.
        c, s = _read_conversations("store_dcmtk_veth.pcap", {104})[0]
        self.dcmtk_store_rq, self.dcmtk_store_ac = c[0], s[0]
        msgs = _messages(c)
        cmd, data = max(msgs, key=lambda m: len(m[1]))
        self.dcmtk_cstore = Command(cmd)
        self.dcmtk_cstore_rsp = Command(_messages(s)[0][0])
        self.ct_context = _pdv(data[0])[0]
        self.dataset = b"".join(_pdv(p)[2] for p in data)
        self.dcmtk_release_rq, self.dcmtk_release_rp = c[-1], s[-1]
        assert c[-1][0] == 5 and s[-1][0] == 6 and self.dcmtk_cstore.field == 0x0001

        # pynetdicom -> pynetdicom store (the seed incident's CT_LOCAL), and its 1/1/3 rejects.
        seed = _read_conversations("seed_incident.pcap", {104})
        stored = next(cv for cv in seed if cv[1][0][0] == 2)
        rejected = next(cv for cv in seed if cv[1][0][0] == 3)
        c, s = stored
        self.pyn_store_rq, self.pyn_store_ac = c[0], s[0]
        cmd, data = _messages(c)[0]
        self.pyn_cstore = Command(cmd)
        self.pyn_cstore_rsp = Command(_messages(s)[0][0])
        self.pyn_ct_context = _pdv(data[0])[0]
        self.pyn_release_rq, self.pyn_release_rp = c[-1], s[-1]
        self.reject_calling_rq, self.reject_calling_rj = rejected[0][0], rejected[1][0]
        assert self.reject_calling_rj[6:10] == b"\x00\x01\x01\x03"

        # DCMTK echoscu -> storescp C-ECHO.
        c, s = _read_conversations("echo_dcmtk_loopback.pcap", {11112})[0]
        self.echo_rq, self.echo_ac = c[0], s[0]
        self.echo_cmd = Command(_messages(c)[0][0])
        self.echo_rsp = Command(_messages(s)[0][0])
        assert self.echo_cmd.field == 0x0030

        # pynetdicom A-ABORTs: the requestor aborting after its C-ECHO, the acceptor aborting in
        # its C-ECHO handler.
        ab = _read_conversations("abort.pcap", {11112})
        by_calling = {cv[0][0][26:42].strip().decode(): cv for cv in ab}
        c, s = by_calling["ABORTING_SCU"]
        self.pyn_echo_rq, self.pyn_echo_ac = c[0], s[0]
        self.pyn_echo_cmd = Command(_messages(c)[0][0])
        self.pyn_echo_rsp = Command(_messages(s)[0][0])
        self.abort_by_requestor = c[-1]
        c, s = by_calling["ABORT_VICTIM"]
        self.abort_by_acceptor = s[-1]
        assert self.abort_by_requestor[0] == 7 and self.abort_by_acceptor[0] == 7

        # dcmqrscp's 1/1/7 reject of an echoscu RQ.
        c, s = _read_conversations("reject_called_dcmqrscp.pcap", {11112})[0]
        self.reject_called_rq, self.reject_called_rj = c[0], s[0]
        assert self.reject_called_rj[6:10] == b"\x00\x01\x01\x07"

        # DCMTK findscu -> dcmqrscp C-FIND with pending responses: the fixture asks two queries (a
        # series-level and a study-level one); each is kept with its own identifiers and matches.
        c, s = _read_conversations("dimse_find_pending.pcap", {11112})[0]
        self.find_rq, self.find_ac = c[0], s[0]
        self.find_queries = []  # (C-FIND-RQ command, identifier PDU, [match identifier PDUs])
        responses = _messages(s)
        for cmd, ident in _messages(c):
            matches = []
            while responses and _status(responses[0][0]) == 0xFF00:
                matches.append(responses.pop(0)[1][0])
            final = responses.pop(0)[0]
            assert _status(final) == 0x0000 and matches
            self.find_queries.append((Command(cmd), ident[0], matches))
        pending = next(cmd for cmd, data in _messages(s) if _status(cmd) == 0xFF00)
        self.find_pending = Command(pending)
        self.find_final = Command(final)
        self.find_release_rq, self.find_release_rp = c[-1], s[-1]
        assert all(q[0].field == 0x0020 for q in self.find_queries)

        # Where Rows, Columns and the pixel data element sit in the CT data set (explicit VR LE).
        ds = self.dataset
        self.rows_at = ds.index(b"\x28\x00\x10\x00US\x02\x00") + 8
        self.cols_at = ds.index(b"\x28\x00\x11\x00US\x02\x00") + 8
        px = ds.index(b"\xe0\x7f\x10\x00OW\x00\x00")
        self.ds_prefix = ds[:px]
        self.sop_uid_at = ds.index(b"\x08\x00\x18\x00UI") + 8  # (0008,0018) value

    def dataset_header(self, rows: int, cols: int, serial: int) -> bytes:
        b = bytearray(self.ds_prefix)
        struct.pack_into("<H", b, self.rows_at, rows)
        struct.pack_into("<H", b, self.cols_at, cols)
        (uid_len,) = struct.unpack_from("<H", b, self.sop_uid_at - 2)
        end = self.sop_uid_at + uid_len
        raw = bytes(b[self.sop_uid_at:end]).rstrip(b"\x00")
        digits = f"{serial % 10**6:06d}".encode()
        tail = self.sop_uid_at + len(raw) - 6
        b[tail:tail + 6] = b"1" + digits[1:] if digits[:1] == b"0" else digits
        return bytes(b) + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", rows * cols * 2)


# ------------------------------------------------------------------------------------------------
# Frames.


def _csum_fold(v: int) -> int:
    """Internet checksum from the big-endian integer value of an even-length byte string
    (2**16 == 1 mod 0xFFFF, so the value mod 0xFFFF is the ones'-complement sum of its words)."""
    r = v % 0xFFFF
    return 0xFFFF - (r if r else 0xFFFF)


_IP = struct.Struct(">BBHHHBBH4s4s")
_TCP = struct.Struct(">HHIIBBHHH")


class Host:
    __slots__ = ("name", "ip", "mac", "gw_mac", "ttl", "rtt_us", "next_port", "ae", "kind", "site")

    def __init__(self, name, ip, mac, rtt_us, ae=None, kind="", gw_mac=None, ttl=64, port0=40000, site="local"):
        self.name, self.ip, self.mac, self.rtt_us, self.ae, self.kind = name, ip, mac, rtt_us, ae, kind
        self.gw_mac, self.ttl, self.next_port, self.site = gw_mac, ttl, port0, site

    def ephemeral(self, rng: random.Random) -> int:
        p = self.next_port
        self.next_port += 1 + (rng.random() < 0.3)
        if self.next_port > 60999:
            self.next_port = 32768
        return p


class Conn:
    """One TCP connection between a client host and a server (at the capture point next to the
    server). Scripts call handshake/send/close; frames come out through ``flush`` in time order.

    ``count_only`` runs the same script (same random draws) without keeping payloads, to count
    frames while planning.
    """

    def __init__(self, rng: random.Random, client: Host, cport: int, server: Host, sport: int,
                 nagle=(True, True), proc_us=(30.0, 20.0)):
        self.rng = rng
        self.client, self.server = client, server
        self.ports = (cport, sport)
        self.rtt = client.rtt_us
        self.nagle = nagle
        self.proc = proc_us
        self.isn = (rng.getrandbits(32), rng.getrandbits(32))
        self.nxt = [self.isn[0], self.isn[1]]
        self.sent_data = [False, False]
        self.pingpong = [False, False]
        # receiver state for data sent by side d (the receiver is 1-d)
        self.unc_n = [0, 0]
        self.unc_t = [0.0, 0.0]
        self.unc_end = [0, 0]
        self.unc_small = [False, False]
        self.unc_delack = [0.0, 0.0]
        self.k = [2, 2]
        self.acked_t = [0.0, 0.0]  # capture time of the last ACK covering all of side d's data
        self.sml_pending = [False, False]  # side d has a sub-MSS segment not yet acknowledged
        self.sml_acked_t = [0.0, 0.0]  # capture time of the ACK that covered it
        self.heap: list = []
        self.n = 0
        self.floor = 0.0  # no frame will be pushed before this time
        self.t_last = 0.0  # time of the last frame pushed (the latest event of the conversation)
        self.t_from = [0.0, 0.0]  # time of the last frame pushed by each side
        # frame building state
        self.ipid = [rng.getrandbits(16), rng.getrandbits(16)]
        self.tsbase = [rng.getrandbits(32), rng.getrandbits(32)]
        self.win = (rng.randrange(480, 520), rng.randrange(480, 520))
        self.frames = 0
        self.start_t = None

    # -- timing helpers ------------------------------------------------------------------------

    def to_reach(self, x: int) -> float:
        """Extra delay before side x's reaction to something seen at the capture point is itself
        seen there: a client is one round-trip away, the server is next to the capture point."""
        return self.rtt if x == CLIENT else 0.0

    def react(self, x: int) -> float:
        return self.to_reach(x) + self.proc[x] * (0.7 + 0.6 * self.rng.random())

    def after(self, x: int, delay_us: float) -> float:
        """When side x acts, ``delay_us`` after the other side's last frame reached it."""
        return max(self.t_from[1 - x] + self.to_reach(x), self.t_from[x]) + delay_us

    # -- pushing frames ---------------------------------------------------------------------------

    def _push(self, t: float, d: int, flags: int, seq: int, ack: int, payload: bytes) -> None:
        if t < self.floor:
            t = self.floor
        self.n += 1
        heapq.heappush(self.heap, (t, self.n, d, flags, seq, ack, payload))
        if t > self.t_last:
            self.t_last = t
        if t > self.t_from[d]:
            self.t_from[d] = t

    def _commit_ack(self, d: int, t: float) -> None:
        """The receiver of side d's data sends a pure ACK for everything uncovered, at t."""
        r = 1 - d
        self._push(t, r, ACK, self.nxt[r], self.unc_end[d], b"")
        self.unc_n[d] = 0
        self.acked_t[d] = t
        if self.sml_pending[d]:
            self.sml_pending[d] = False
            self.sml_acked_t[d] = t
        self.k[d] = 1 if self.rng.random() < 0.25 else 2

    def _pending_ack_time(self, d: int) -> float | None:
        if not self.unc_n[d]:
            return None
        return self.unc_delack[d]

    def _before_push(self, x: int, t: float) -> None:
        """Settle ACKs owed before side x puts a segment on the wire at t: x's own data that the
        peer would have acknowledged by then, and the peer's data that x acknowledges (a pure ACK
        if its timer fired first, else x's segment carries the ACK)."""
        p = 1 - x
        # the peer's pending ACK for x's data
        if self.unc_n[x] and self.unc_delack[x] <= t:
            if self.unc_delack[x] - self.unc_t[x] >= DELACK_US * 0.9:
                self.pingpong[p] = False  # a delayed-ACK timeout ends interactive mode
            self._commit_ack(x, self.unc_delack[x])
        # x's pending ACK for the peer's data
        if self.unc_n[p]:
            if self.unc_delack[p] <= t:
                if self.unc_delack[p] - self.unc_t[p] >= DELACK_US * 0.9:
                    self.pingpong[x] = False
                self._commit_ack(p, self.unc_delack[p])
            else:
                self.unc_n[p] = 0  # piggybacked
                self.acked_t[p] = t
                if self.sml_pending[p]:
                    self.sml_pending[p] = False
                    self.sml_acked_t[p] = t

    def _segment(self, x: int, t: float, payload: bytes, flags: int = ACK) -> float:
        """Side x sends a data segment at t; the receiver's ACK policy runs. Returns t."""
        self._before_push(x, t)
        p = 1 - x
        seq = self.nxt[x]
        self.nxt[x] = (seq + len(payload)) & MASK32
        self._push(t, x, flags, seq, self.nxt[p], payload)
        self.floor = t
        self.unc_n[x] += 1
        self.unc_t[x] = t
        self.unc_end[x] = self.nxt[x]
        small = len(payload) < MSS
        if small:
            self.sml_pending[x] = True
        if self.unc_n[x] >= self.k[x] or (small and not self.pingpong[p]):
            self._commit_ack(x, t + self.react(p))
        else:
            # delayed: a lone small segment to a host in interactive mode waits for the
            # delayed-ACK timer; a lone full segment is acknowledged shortly if nothing follows
            self.unc_delack[x] = (t + DELACK_US + self.rng.random() * 4000 + self.to_reach(p)
                                  if small and self.pingpong[p] and self.unc_n[x] == 1
                                  else t + self.react(p) + 200 + 800 * self.rng.random())
        return t

    def _small_acked_at(self, x: int) -> float:
        """When side x learns that its last sub-MSS segment is acknowledged: Linux's Nagle
        (Minshall's variant) holds a sub-MSS segment only while another one is unacknowledged."""
        if self.sml_pending[x]:
            return self.unc_delack[x] + self.to_reach(x)
        return self.sml_acked_t[x] + self.to_reach(x)

    def flush(self, final: bool = False):
        heap, floor = self.heap, self.floor
        while heap and (final or heap[0][0] <= floor):
            yield heapq.heappop(heap)

    # -- TCP phases -------------------------------------------------------------------------------

    def handshake(self, t0: float):
        self.start_t = t0
        c, s = self.isn
        self._push(t0, CLIENT, SYN, c, 0, b"")
        t1 = t0 + self.proc[SERVER] * (0.5 + self.rng.random())
        self._push(t1, SERVER, SYN | ACK, s, (c + 1) & MASK32, b"")
        t2 = t1 + self.react(CLIENT)
        self.nxt = [(c + 1) & MASK32, (s + 1) & MASK32]
        self._push(t2, CLIENT, ACK, self.nxt[CLIENT], self.nxt[SERVER], b"")
        self.floor = t2
        self.acked_t = [t1, t2]
        self.sml_acked_t = [t1, t2]
        yield from self.flush()

    def send(self, x: int, t0: float, writes, rate: float | None = None):
        """Side x writes each bytes object of ``writes`` (write i is ready at t0, or, with ``rate``
        in bytes per microsecond, once the bytes before it were produced); Nagle per ``self.nagle``."""
        nagle = self.nagle[x]
        if self.sent_data[1 - x] and not self.pingpong[x]:
            self.pingpong[x] = True  # replying to received data: interactive mode
        self.sent_data[x] = True
        t = max(t0, self.floor)
        cum = 0
        pend, off = b"", 0
        wire = 8e6 / LINK_BPS  # microseconds per byte on the wire
        for w in writes:
            ready = t0 + cum / rate if rate else t0
            cum += len(w)
            if off < len(pend):  # a tail held by Nagle: does it leave before this write is ready?
                ta = self._small_acked_at(x)
                if max(t, ta) <= ready:
                    t = max(t, ta)
                    self._segment(x, t, pend[off:], ACK | PSH)
                    t += (len(pend) - off + 66) * wire
                    pend, off = b"", 0
            if ready > t:
                t = ready
            pend = pend[off:] + w if off < len(pend) else w
            off = 0
            n = len(pend)
            while n - off >= MSS:
                end = off + MSS
                self._segment(x, t, pend[off:end], ACK | PSH if end == n else ACK)
                off = end
                t += (MSS + 66) * wire * (1.0 + 0.2 * self.rng.random())
            if off < n and (not nagle or self._small_acked_at(x) <= t):
                self._segment(x, t, pend[off:], ACK | PSH)
                t += (n - off + 66) * wire
                off = n
            yield from self.flush()
        if off < len(pend):
            t = max(t, self._small_acked_at(x)) if nagle else t
            self._segment(x, t, pend[off:], ACK | PSH)
        yield from self.flush()

    def fin(self, x: int, t: float):
        self._before_push(x, t)
        p = 1 - x
        self._push(t, x, FIN | ACK, self.nxt[x], self.nxt[p], b"")
        self.floor = t
        self.nxt[x] = (self.nxt[x] + 1) & MASK32
        yield from self.flush()

    def pure_ack(self, x: int, t: float):
        self._before_push(x, t)
        self._push(t, x, ACK, self.nxt[x], self.nxt[1 - x], b"")
        self.floor = t
        yield from self.flush()

    def close(self, first: int, delay_us: float, second_delay_us: float):
        """FIN from ``first``, then the other side's FIN (acknowledging it), then the last ACK."""
        yield from self.fin(first, self.after(first, delay_us))
        second = 1 - first
        yield from self.fin(second, self.after(second, second_delay_us))
        yield from self.pure_ack(first, self.after(first, self.proc[first]))

    def finish(self):
        for x in (CLIENT, SERVER):
            if self.unc_n[x]:
                self._commit_ack(x, self.unc_delack[x])
        yield from self.flush(final=True)

    # -- frame bytes ------------------------------------------------------------------------------

    def build(self, t_us: int, d: int, flags: int, seq: int, ack: int, payload: bytes) -> bytes:
        src = self.client if d == CLIENT else self.server
        dst = self.server if d == CLIENT else self.client
        sport, dport = (self.ports if d == CLIENT else self.ports[::-1])
        # Ethernet: a routed client's frames carry the router's MAC on the server's LAN
        src_mac = src.gw_mac or src.mac
        dst_mac = dst.gw_mac or dst.mac
        ttl = src.ttl
        tsval = (self.tsbase[d] + t_us // 1000) & MASK32
        if flags & SYN:
            opts = (b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + struct.pack(">II", tsval,
                    0 if d == CLIENT else (self.tsbase[CLIENT] + (t_us - 20) // 1000) & MASK32)
                    + b"\x01\x03\x03\x0a")
            win = 64240 if d == CLIENT else 65160
        else:
            tsecr = (self.tsbase[1 - d] + max(0, t_us - int(self.rtt) - 20) // 1000) & MASK32
            opts = b"\x01\x01\x08\x0a" + struct.pack(">II", tsval, tsecr)
            win = self.win[d]
        hlen = 20 + len(opts)
        tcp = _TCP.pack(sport, dport, seq, ack if flags & ACK else 0, hlen << 2, flags, win, 0, 0) + opts
        tcp_len = hlen + len(payload)
        pv = int.from_bytes(src.ip + dst.ip + b"\x00\x06" + tcp_len.to_bytes(2, "big") + tcp, "big")
        if payload:
            v = int.from_bytes(payload, "big")
            pv += v << 8 if len(payload) & 1 else v
        csum = _csum_fold(pv)
        tcp = tcp[:16] + csum.to_bytes(2, "big") + tcp[18:]
        ipid = self.ipid[d]
        self.ipid[d] = (ipid + 1) & 0xFFFF
        iph = _IP.pack(0x45, 0, 20 + tcp_len, ipid, 0x4000, ttl, 6, 0, src.ip, dst.ip)
        iph = iph[:10] + _csum_fold(int.from_bytes(iph, "big")).to_bytes(2, "big") + iph[12:]
        return dst_mac + src_mac + b"\x08\x00" + iph + tcp + payload


# ------------------------------------------------------------------------------------------------
# The network: servers, clients, AE titles.


def _mac(i: int) -> bytes:
    return bytes((0x02, 0x42, (i >> 24) & 0xFF, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF))


def _ip(s: str) -> bytes:
    return bytes(int(x) for x in s.split("."))


ROUTER_MAC = bytes.fromhex("02000000fe01")


class Network:
    def __init__(self, rng: random.Random):
        self.servers = {
            "PACS_MAIN": (Host("pacs-main", _ip("198.18.0.10"), _mac(10), 0, "PACS_MAIN"), 104),
            "PACS_ARCHIVE": (Host("pacs-archive", _ip("198.18.0.11"), _mac(11), 0, "PACS_ARCHIVE"), 11112),
            "PACS_QR": (Host("pacs-qr", _ip("198.18.0.12"), _mac(12), 0, "PACS_QR"), 11112),
        }
        self.hosts: dict[str, list[Host]] = defaultdict(list)
        n = 100

        def add(kind, count, prefix_names, local_net, remote_net=None, remote_share=0.0):
            nonlocal n
            for i in range(count):
                n += 1
                remote = rng.random() < remote_share
                name = prefix_names(i)
                if remote:
                    ip = _ip(f"{remote_net}.{1 + i % 250}")
                    rtt = rng.uniform(5_000, 30_000)
                    h = Host(name, ip, _mac(n), rtt, name, kind, gw_mac=ROUTER_MAC, ttl=62,
                             port0=rng.randrange(32768, 50000), site="remote")
                else:
                    ip = _ip(f"{local_net}.{1 + i % 250}")
                    h = Host(name, ip, _mac(n), rng.uniform(100, 500), name, kind,
                             port0=rng.randrange(32768, 50000))
                self.hosts[kind].append(h)

        mods = ["CT", "MR", "DX", "CR", "MG", "US", "NM", "PT", "XA", "RF"]
        depts = ["ER", "RAD", "ORTHO", "CARD", "ONC", "PED", "ICU", "OR"]
        add("modality", 96, lambda i: f"{mods[i % len(mods)]}_{depts[(i // 10) % len(depts)]}{i + 1:02d}",
            "198.18.1", "198.19.1", remote_share=0.35)
        add("workstation", 80, lambda i: f"WS_RAD{i + 1:02d}", "198.18.2", "198.19.2", remote_share=0.2)
        add("monitor", 12, lambda i: f"MON_ECHO{i + 1:02d}", "198.18.3")
        add("unknown", 60, lambda i: f"CT_REMOTE{i + 1:02d}", "198.19.10", "198.19.10", remote_share=1.0)
        add("misconfigured", 16, lambda i: f"US_MOBILE{i + 1:02d}", "198.18.4", "198.19.4", remote_share=0.5)
        # non-DICOM peers for noise
        self.web = Host("intranet", _ip("198.18.0.20"), _mac(20), 0)
        self.hl7 = Host("hl7-engine", _ip("198.18.0.30"), _mac(30), 0)
        self.dns = Host("dns", _ip("198.18.0.53"), _mac(53), 0)
        self.ris = Host("ris", _ip("198.18.0.31"), _mac(31), 150)

    def titles(self) -> int:
        return sum(len(v) for v in self.hosts.values()) + len(self.servers) + 1  # + PACS_OLD


# ------------------------------------------------------------------------------------------------
# Association scripts. Each is a generator of frame descriptors (t, n, d, flags, seq, ack, payload)
# driven by its own seeded RNG, and fills ``rec`` (the truth) as it goes.


def _dcmtk_writes(pdu: bytes):
    """DCMTK writes a P-DATA-TF's 12 header bytes (PDU + PDV header) and the PDV value separately."""
    if pdu[0] == 4:
        return (pdu[:12], pdu[12:])
    return (pdu,)


def _data_pdus(header: bytes, pixels: memoryview, max_pdu: int, ctx: int, dcmtk: bool):
    """The data set in P-DATA-TF PDUs of one PDV each, as the sender writes them."""
    vmax = max_pdu - 12
    total = len(header) + len(pixels)
    pos = 0
    while pos < total:
        n = min(vmax, total - pos)
        if pos < len(header):
            value = header[pos:] + bytes(pixels[:n - (len(header) - pos)])
        else:
            value = bytes(pixels[pos - len(header):pos - len(header) + n])
        pos += n
        last = pos == total
        hdr = struct.pack(">BxIIBB", 4, n + 6, n + 2, ctx, 0x02 if last else 0x00)
        if dcmtk:
            yield hdr
            yield value
        else:
            yield hdr + value


class Scripts:
    def __init__(self, tpl: Templates, pool: bytes):
        self.tpl = tpl
        self.pool = memoryview(pool)

    # bulk C-STORE -------------------------------------------------------------------------------

    def bulk(self, c: Conn, rng: random.Random, rec: dict, t0: float, p: dict):
        T = self.tpl
        dcmtk = p["toolkit"] == "dcmtk"
        calling, called = rec["calling_ae"], rec["called_ae"]
        if dcmtk:
            rq, ac = T.dcmtk_store_rq, _set_max_pdu(T.dcmtk_store_ac, p["max_pdu"])
            cstore, rsp, ctx = T.dcmtk_cstore, T.dcmtk_cstore_rsp, T.ct_context
            rel_rq, rel_rp = T.dcmtk_release_rq, T.dcmtk_release_rp
            wr = _dcmtk_writes
        else:
            rq, ac = T.pyn_store_rq, T.pyn_store_ac
            cstore, rsp, ctx = T.pyn_cstore, T.pyn_cstore_rsp, T.pyn_ct_context
            rel_rq, rel_rp = T.pyn_release_rq, T.pyn_release_rp
            wr = lambda pdu: (pdu,)  # noqa: E731
        max_pdu = _max_pdu(ac)
        yield from c.handshake(t0)
        yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(200, 1500)), [_set_titles(rq, called, calling)])
        yield from c.send(SERVER, c.after(SERVER, rng.uniform(800, 8000)), [_set_titles(ac, called, calling)])
        rec["accepted"] = True
        msg_id = p["msg_id"]
        for i, size in enumerate(p["sizes"]):
            pause = rng.uniform(300, 3000) if i == 0 else p["pauses"][i - 1]
            cols = rng.choice((1024, 2048, 2560, 3072))
            rows = max(1, size // (2 * cols))
            start = rng.randrange(0, len(self.pool) - rows * cols * 2)
            serial = rng.getrandbits(24)
            header = T.dataset_header(rows, cols, serial)
            pixels = self.pool[start:start + rows * cols * 2]
            cmd = cstore.make(msg_id, serial)

            def writes():
                yield from wr(cmd)
                yield from _data_pdus(header, pixels, max_pdu, ctx, dcmtk)

            yield from c.send(CLIENT, c.after(CLIENT, pause), writes(), rate=p["rate"])
            rec["dimse"]["C-STORE"] += 1
            # storescp writes the file, then answers
            yield from c.send(SERVER, c.after(SERVER, rng.uniform(500, 4000) + size / 800.0),
                              wr(rsp.make(msg_id)))
            rec["responses"]["C-STORE/success"] += 1
            msg_id += 1
        yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(200, 1500)), [rel_rq])
        yield from c.send(SERVER, c.after(SERVER, rng.uniform(50, 400)), [rel_rp])
        rec["outcome"] = "released"
        if dcmtk:
            yield from c.close(CLIENT, rng.uniform(50, 200), rng.uniform(20, 80))
        else:
            yield from c.close(SERVER, rng.uniform(100, 300), rng.uniform(200, 600))
        yield from c.finish()

    # C-ECHO (DCMTK echoscu -> storescp-like PACS_MAIN) ------------------------------------------

    def echo(self, c: Conn, rng: random.Random, rec: dict, t0: float, p: dict):
        T = self.tpl
        calling, called = rec["calling_ae"], rec["called_ae"]
        yield from c.handshake(t0)
        yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(300, 900)), [_set_titles(T.echo_rq, called, calling)])
        yield from c.send(SERVER, c.after(SERVER, rng.uniform(300, 6000)), [_set_titles(T.echo_ac, called, calling)])
        rec["accepted"] = True
        msg_id = p["msg_id"]
        for _ in range(p["repeat"]):
            yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(300, 900)), _dcmtk_writes(T.echo_cmd.make(msg_id)))
            rec["dimse"]["C-ECHO"] += 1
            yield from c.send(SERVER, c.after(SERVER, rng.uniform(200, 600)), _dcmtk_writes(T.echo_rsp.make(msg_id)))
            rec["responses"]["C-ECHO/success"] += 1
            msg_id += 1
        yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(200, 400)), [T.dcmtk_release_rq])
        yield from c.send(SERVER, c.after(SERVER, rng.uniform(60, 150)), [T.dcmtk_release_rp])
        rec["outcome"] = "released"
        yield from c.close(CLIENT, rng.uniform(60, 120), rng.uniform(20, 60))
        yield from c.finish()

    # pynetdicom C-ECHO then A-ABORT by the requestor, or by the acceptor in its handler ----------

    def echo_abort(self, c: Conn, rng: random.Random, rec: dict, t0: float, p: dict):
        T = self.tpl
        calling, called = rec["calling_ae"], rec["called_ae"]
        by_acceptor = p["by"] == "acceptor"
        yield from c.handshake(t0)
        yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(500, 1100)), [_set_titles(T.pyn_echo_rq, called, calling)])
        yield from c.send(SERVER, c.after(SERVER, rng.uniform(5000, 9000)), [_set_titles(T.pyn_echo_ac, called, calling)])
        rec["accepted"] = True
        yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(4000, 8000)), [T.pyn_echo_cmd.make(p["msg_id"])])
        rec["dimse"]["C-ECHO"] += 1
        if by_acceptor:
            yield from c.send(SERVER, c.after(SERVER, rng.uniform(2500, 3500)), [T.abort_by_acceptor])
            rec["unanswered"]["C-ECHO"] += 1
            rec["outcome"], rec["abort"] = "aborted", {"by": "acceptor", "source": "service-user",
                                                       "reason": "not-significant", "phase": "established"}
            yield from c.close(SERVER, rng.uniform(150, 300), rng.uniform(300, 700))
        else:
            yield from c.send(SERVER, c.after(SERVER, rng.uniform(3000, 4500)), [T.pyn_echo_rsp.make(p["msg_id"])])
            rec["responses"]["C-ECHO/success"] += 1
            yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(2000, 3000)), [T.abort_by_requestor])
            rec["outcome"], rec["abort"] = "aborted", {"by": "requestor", "source": "service-user",
                                                       "reason": "not-significant", "phase": "established"}
            yield from c.close(CLIENT, rng.uniform(100, 200), rng.uniform(500, 1200))
        yield from c.finish()

    # A-ASSOCIATE-RJ ---------------------------------------------------------------------------------

    def reject(self, c: Conn, rng: random.Random, rec: dict, t0: float, p: dict):
        T = self.tpl
        calling, called = rec["calling_ae"], rec["called_ae"]
        yield from c.handshake(t0)
        if p["reason"] == 3:  # pynetdicom SCP with require_calling_aet; it closes first
            yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(700, 3500)), [_set_titles(T.reject_calling_rq, called, calling)])
            yield from c.send(SERVER, c.after(SERVER, rng.uniform(2000, 12000)), [T.reject_calling_rj])
            rec["reject"] = {"result": "rejected-permanent", "source": "service-user",
                             "reason": "calling-ae-title-not-recognized"}
            rec["outcome"] = "rejected"
            yield from c.close(SERVER, rng.uniform(150, 300), rng.uniform(400, 1500))
        else:  # dcmqrscp refusing an unknown called title; echoscu closes first
            yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(150, 500)), [_set_titles(T.reject_called_rq, called, calling)])
            yield from c.send(SERVER, c.after(SERVER, rng.uniform(250, 600)), [T.reject_called_rj])
            rec["reject"] = {"result": "rejected-permanent", "source": "service-user",
                             "reason": "called-ae-title-not-recognized"}
            rec["outcome"] = "rejected"
            yield from c.close(CLIENT, rng.uniform(15, 40), rng.uniform(1500, 3000))
        yield from c.finish()

    # C-FIND (DCMTK findscu -> dcmqrscp-like PACS_QR), one or more queries per association --------

    def find(self, c: Conn, rng: random.Random, rec: dict, t0: float, p: dict):
        T = self.tpl
        calling, called = rec["calling_ae"], rec["called_ae"]
        yield from c.handshake(t0)
        yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(200, 600)), [_set_titles(T.find_rq, called, calling)])
        yield from c.send(SERVER, c.after(SERVER, rng.uniform(250, 2500)), [_set_titles(T.find_ac, called, calling)])
        rec["accepted"] = True
        msg_id = p["msg_id"]
        for q, matches in enumerate(p["queries"]):
            pause = rng.uniform(400, 1500) if q == 0 else p["pauses"][q - 1]
            find_cmd, ident, idents = T.find_queries[p["levels"][q]]
            yield from c.send(CLIENT, c.after(CLIENT, pause),
                              [*_dcmtk_writes(find_cmd.make(msg_id)), *_dcmtk_writes(ident)])
            rec["dimse"]["C-FIND"] += 1
            pending = T.find_pending.make(msg_id)
            per_match = p["per_match_us"]

            def responses():
                for i in range(matches):
                    yield from _dcmtk_writes(pending)
                    yield from _dcmtk_writes(idents[i % len(idents)])
                yield from _dcmtk_writes(T.find_final.make(msg_id))

            # the SCP produces one response per ``per_match`` microseconds (database iteration)
            nbytes = len(pending) + sum(len(m) for m in idents) / len(idents)
            yield from c.send(SERVER, c.after(SERVER, rng.uniform(1000, 20000)), responses(),
                              rate=nbytes / per_match)
            rec["responses"]["C-FIND/pending"] += matches
            rec["responses"]["C-FIND/success"] += 1
            msg_id += 1
        yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(300, 1000)), [T.find_release_rq])
        yield from c.send(SERVER, c.after(SERVER, rng.uniform(60, 200)), [T.find_release_rp])
        rec["outcome"] = "released"
        yield from c.close(CLIENT, rng.uniform(40, 90), rng.uniform(20, 60))
        yield from c.finish()

    # Non-DICOM TCP: HTTPS to the intranet, HL7 v2 over MLLP ----------------------------------------

    def noise_tcp(self, c: Conn, rng: random.Random, rec: dict, t0: float, p: dict):
        yield from c.handshake(t0)
        if p["proto"] == "https":
            yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(100, 400)), [_tls(rng, 512)])
            yield from c.send(SERVER, c.after(SERVER, rng.uniform(300, 900)), [_tls(rng, rng.randrange(3000, 6000))])
            yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(100, 400)), [_tls(rng, 120)])
            for _ in range(p["requests"]):
                yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(200, 20000)), [_tls(rng, rng.randrange(300, 900))])
                body = rng.randrange(2_000, 400_000)
                yield from c.send(SERVER, c.after(SERVER, rng.uniform(500, 15000)),
                                  (_tls(rng, min(16384, body - i)) for i in range(0, body, 16384)), rate=60.0)
            yield from c.close(CLIENT, rng.uniform(1000, 50000), rng.uniform(30, 100))
        else:
            for i in range(p["requests"]):
                msg = (b"\x0bMSH|^~\\&|RIS|HOSP|PACS|HOSP|20250303120000||ORM^O01|" + str(rng.getrandbits(30)).encode()
                       + b"|P|2.3\rPID|1||SENTINEL-PHI-ID-0001||SENTINEL^PHI^NAME\r" + b"OBR|1|" * rng.randrange(20, 200)
                       + b"\r\x1c\r")
                yield from c.send(CLIENT, c.after(CLIENT, rng.uniform(500, 30000)), [msg])
                yield from c.send(SERVER, c.after(SERVER, rng.uniform(300, 3000)),
                                  [b"\x0bMSH|^~\\&|PACS|HOSP|RIS|HOSP|20250303120000||ACK|1|P|2.3\rMSA|AA|1\r\x1c\r"])
            yield from c.close(SERVER, rng.uniform(1000, 5000), rng.uniform(100, 500))
        yield from c.finish()


def _tls(rng: random.Random, n: int) -> bytes:
    return b"\x17\x03\x03" + struct.pack(">H", n - 5) + rng.randbytes(n - 5)


# ------------------------------------------------------------------------------------------------
# Non-TCP noise frames (dpkt-built): ARP, DNS, NTP, syslog.


def _udp_frame(rng: random.Random, src: Host, dst: Host, sport: int, dport: int, payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=src.ip, dst=dst.ip, p=17, ttl=src.ttl, id=rng.getrandbits(16), data=udp)
    ip.len = 20 + udp.ulen
    eth = dpkt.ethernet.Ethernet(src=src.gw_mac or src.mac, dst=dst.gw_mac or dst.mac,
                                 type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    return bytes(eth)


def noise_units(rng: random.Random, net: Network, kind: str):
    """A few related non-TCP frames as [(offset_us, frame)]."""
    hosts = [h for k in ("modality", "workstation", "monitor") for h in net.hosts[k] if h.site == "local"]
    h = rng.choice(hosts)
    if kind == "arp":
        req = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REQUEST, sha=h.mac, spa=h.ip, tha=b"\x00" * 6,
                           tpa=rng.choice(list(net.servers.values()))[0].ip)
        frame = dpkt.ethernet.Ethernet(src=h.mac, dst=b"\xff" * 6, type=dpkt.ethernet.ETH_TYPE_ARP, data=req)
        rep = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REPLY, sha=_mac(10), spa=req.tpa, tha=h.mac, tpa=h.ip)
        frame2 = dpkt.ethernet.Ethernet(src=_mac(10), dst=h.mac, type=dpkt.ethernet.ETH_TYPE_ARP, data=rep)
        return [(0, bytes(frame)), (rng.uniform(20, 80), bytes(frame2))]
    if kind == "dns":
        q = dpkt.dns.DNS(id=rng.getrandbits(16), rd=1, qd=[dpkt.dns.DNS.Q(name=rng.choice(
            ["pacs.hospital.example", "ris.hospital.example", "ntp.hospital.example", "intranet.hospital.example"]),
            type=dpkt.dns.DNS_A)])
        sport = rng.randrange(32768, 61000)
        f1 = _udp_frame(rng, h, net.dns, sport, 53, bytes(q))
        q.qr, q.ra = dpkt.dns.DNS_R, 1  # a response (dpkt's ``op`` is the whole flags word)
        q.an = [dpkt.dns.DNS.RR(name=q.qd[0].name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN, ttl=300, rdata=_ip("198.18.0.10"))]
        f2 = _udp_frame(rng, net.dns, h, 53, sport, bytes(q))
        return [(0, f1), (rng.uniform(80, 400), f2)]
    if kind == "ntp":
        pkt = b"\x23" + b"\x00" * 39 + struct.pack(">II", rng.getrandbits(32), rng.getrandbits(32))
        return [(0, _udp_frame(rng, h, net.dns, 123, 123, pkt))]
    msg = f"<134>Mar  3 12:00:00 {h.name.lower()} dicomd[{rng.randrange(100, 9999)}]: study stored".encode()
    return [(0, _udp_frame(rng, h, net.dns, rng.randrange(32768, 61000), 514, msg))]


# ------------------------------------------------------------------------------------------------
# Planning: which associations, when, and how many frames each (dry runs).


def _new_record(kind, client: Host, called: str, server: str, t0: float) -> dict:
    return {"kind": kind, "calling_ae": client.ae, "called_ae": called, "client": client.name,
            "server": server, "start_us": t0, "accepted": False, "outcome": None, "reject": None,
            "abort": None, "dimse": Counter(), "responses": Counter(), "unanswered": Counter()}


class Planner:
    def __init__(self, seed: int, frames: int, frame_rate: float, tpl: Templates):
        self.seed = seed
        self.frames = frames
        self.frame_rate = frame_rate
        self.rng = random.Random(f"plan-{seed}")
        self.net = Network(random.Random(f"net-{seed}"))
        pool_rng = random.Random(f"pixels-{seed}")
        self.pool = pool_rng.randbytes(21 * 1024 * 1024)
        self.scripts = Scripts(tpl, self.pool)

    def _params(self, kind: str, rng: random.Random) -> tuple:
        """(client host, called AE, server name, script name, params) for a new association."""
        net = self.net
        if kind == "bulk":
            h = rng.choice(net.hosts["modality"])
            dcmtk = rng.random() < 0.8
            n_obj = rng.choice((1, 1, 2, 2, 3, 4))
            sizes = [int(math.exp(rng.uniform(math.log(2e6), math.log(20e6)))) for _ in range(n_obj)]
            if h.site == "remote":  # WAN: application- or path-limited senders
                rate = rng.uniform(2, 12)
            else:
                rate = rng.choice((rng.uniform(8, 40), rng.uniform(40, 110)))
            p = {"toolkit": "dcmtk" if dcmtk else "pynetdicom", "max_pdu": rng.choice((16384, 16384, 65536)),
                 "nodelay": dcmtk and rng.random() < 0.5,
                 "sizes": sizes, "rate": rate, "msg_id": rng.choice((1, rng.randrange(1, 30000))),
                 "pauses": [rng.uniform(200_000, 4_000_000) for _ in range(n_obj - 1)]}
            server = "PACS_MAIN" if dcmtk else "PACS_ARCHIVE"
            return h, server, server, "bulk", p
        if kind == "find":
            h = rng.choice(net.hosts["workstation"])
            nq = rng.choice((1, 1, 1, 2, 3, 4))
            queries = [int(math.exp(rng.uniform(math.log(8), math.log(400)))) for _ in range(nq)]
            p = {"queries": queries, "per_match_us": rng.uniform(40, 600), "msg_id": rng.randrange(1, 60000),
                 "levels": [rng.randrange(len(self.scripts.tpl.find_queries)) for _ in queries],
                 "pauses": [rng.uniform(300_000, 6_000_000) for _ in range(nq - 1)]}
            return h, "PACS_QR", "PACS_QR", "find", p
        sub = rng.choices(list(SHORT_KINDS), weights=list(SHORT_KINDS.values()))[0]
        if sub == "echo":
            h = rng.choice(net.hosts["modality"] + net.hosts["workstation"] + net.hosts["monitor"])
            p = {"msg_id": rng.randrange(1, 60000), "repeat": 1 if rng.random() < 0.85 else rng.choice((2, 3))}
            return h, "PACS_MAIN", "PACS_MAIN", "echo", p
        if sub == "reject_calling":
            return rng.choice(net.hosts["unknown"]), "PACS_ARCHIVE", "PACS_ARCHIVE", "reject", {"reason": 3}
        if sub == "reject_called":
            return rng.choice(net.hosts["misconfigured"]), "PACS_OLD", "PACS_QR", "reject", {"reason": 7}
        h = rng.choice(net.hosts["monitor"] + net.hosts["workstation"])
        return h, "PACS_ARCHIVE", "PACS_ARCHIVE", "echo_abort", {
            "by": "acceptor" if sub == "acceptor_abort" else "requestor", "msg_id": rng.randrange(1, 60000)}

    def make(self, item: dict, count_only: bool):
        """A fresh (Conn, generator, record) for a planned item (same draws every time)."""
        rng = random.Random(item["seed"])
        client, cport = item["client"], item["cport"]
        server_host, sport = self.net.servers[item["server"]] if item["script"] != "noise_tcp" else item["server_host"]
        nagle = (not item["params"].get("nodelay", False), True)
        proc = (rng.uniform(15, 60), rng.uniform(10, 30))
        c = Conn(rng, client, cport, server_host, sport, nagle, proc)
        rec = _new_record(item["script"], client, item["called"], item["server"], item["t0"])
        gen = getattr(self.scripts, item["script"])(c, rng, rec, item["t0"], item["params"])
        return c, gen, rec

    def plan(self, log) -> tuple[list, list]:
        rng = self.rng
        target_dicom = int(self.frames * (1.0 - NOISE_SHARE))
        max_dicom = self.frames - max(1, int(self.frames * 0.01))
        fam_frames = Counter()
        fam_count = Counter()
        prior = {"bulk": 15000.0, "find": 250.0, "short": 12.0}
        items, t, total = [], 0.0, 0
        i = 0
        tick = time.monotonic()
        while total < target_dicom:
            # choose a family with probability ~ share / mean frames, so frames follow SHARES
            means = {k: (fam_frames[k] / fam_count[k]) if fam_count[k] >= 5 else prior[k] for k in SHARES}
            weights = [SHARES[k] / means[k] for k in SHARES]
            fam = rng.choices(list(SHARES), weights=weights)[0]
            krng = random.Random(f"{self.seed}-a{i}")
            client, called, server, script, params = self._params(fam, krng)
            item = {"i": i, "family": fam, "script": script, "client": client, "called": called,
                    "server": server, "params": params, "seed": f"{self.seed}-s{i}", "t0": BASE_US + t,
                    "cport": client.ephemeral(krng)}
            i += 1
            c, gen, rec = self.make(item, True)
            n, last = 0, item["t0"]
            for desc in gen:
                n += 1
                last = desc[0]
            if total + n > max_dicom:
                continue  # would leave too little room for noise: try another (smaller) one
            item["frames"], item["end_us"] = n, last
            items.append(item)
            total += n
            fam_frames[fam] += n
            fam_count[fam] += 1
            t += rng.expovariate(self.frame_rate / n) * 1e6  # arrivals paced by frames: aggregate rate
            if log and time.monotonic() - tick > 2:
                tick = time.monotonic()
                log(f"  planned {total:,}/{target_dicom:,} DICOM frames ({len(items):,} associations)")
        span = max(it["end_us"] for it in items) - BASE_US
        noise = self._plan_noise(self.frames - total, span)
        return items, noise

    def _plan_noise(self, budget: int, span: float) -> list:
        rng = random.Random(f"noise-{self.seed}")
        net = self.net
        out, used, i = [], 0, 0
        tcp_budget = int(budget * 0.65)
        while used < tcp_budget:
            proto = "https" if rng.random() < 0.7 else "hl7"
            client = rng.choice(net.hosts["workstation"]) if proto == "https" else net.ris
            server = (net.web, 443) if proto == "https" else (net.hl7, 2575)
            item = {"i": i, "family": "noise", "script": "noise_tcp", "client": client, "called": "",
                    "server": proto, "server_host": server, "params": {"proto": proto, "requests": rng.randrange(1, 6)},
                    "seed": f"{self.seed}-n{i}", "t0": BASE_US + rng.uniform(0, span),
                    "cport": rng.randrange(32768, 61000)}
            i += 1
            c, gen, rec = self.make(item, True)
            n = sum(1 for _ in gen)
            if used + n > budget:
                continue
            item["frames"] = n
            out.append(item)
            used += n
        while used < budget:
            kind = rng.choices(("arp", "dns", "ntp", "syslog"), weights=(2, 4, 1, 3))[0]
            unit = noise_units(rng, net, kind)
            if used + len(unit) > budget:
                unit = unit[:budget - used]
            t0 = BASE_US + rng.uniform(0, span)
            out.append({"i": i, "family": "noise", "script": kind, "frames": len(unit), "t0": t0, "unit": unit})
            i += 1
            used += len(unit)
        out.sort(key=lambda it: it["t0"])
        return out


# ------------------------------------------------------------------------------------------------
# Writing.


def _pair_key(calling: str, called: str) -> str:
    return f"{calling}|{called}"


def generate(frames: int, out: Path, seed: int = DEFAULT_SEED, frame_rate: float = DEFAULT_FRAME_RATE,
             verify: bool = False, quiet: bool = False) -> dict:
    log = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    t_start = time.monotonic()
    tpl = Templates()
    planner = Planner(seed, frames, frame_rate, tpl)
    log(f"planning {frames:,} frames (seed {seed}) ...")
    items, noise = planner.plan(log)
    log(f"planned {len(items):,} associations and {len(noise):,} noise items in {time.monotonic() - t_start:.1f} s; writing {out}")

    # Launch in start order; merge every conversation's frames by time.
    tmp = out.with_name(out.name + ".part")
    heap: list = []
    launch = sorted(items + noise, key=lambda it: (it["t0"], it["family"] == "noise", it["i"]))
    records: list[dict] = []
    n_written = 0
    dicom_frames = dicom_bytes = 0
    all_bytes = 0
    frame_sizes = Counter()
    by_family = Counter()
    max_concurrent = 0
    conc_samples = []
    open_conns = 0
    shards = {n: [0] * n for n in (2, 3, 4)}
    tick = time.monotonic()
    check = []  # frames kept for the dpkt cross-check
    vrng = random.Random(f"verify-{seed}")
    with open(tmp, "wb", buffering=1 << 22) as f:
        w = dpkt.pcap.Writer(f, snaplen=262144, linktype=dpkt.pcap.DLT_EN10MB)
        write = w.writepkt_time
        li = 0
        seq = 0

        def start(it):
            nonlocal seq, open_conns
            seq += 1
            if "unit" in it:
                gen = ((it["t0"] + off, None, frame) for off, frame in it["unit"])
                entry = next(gen)
                heapq.heappush(heap, (entry[0], seq, entry, gen, None, it))
                return
            c, gen, rec = planner.make(it, False)
            rec["family"] = it["family"]
            if it["family"] != "noise":
                records.append(rec)
            desc = next(gen)
            open_conns += 1
            heapq.heappush(heap, (desc[0], seq, desc, gen, c, it))

        while li < len(launch) or heap:
            # launch everything that starts before the next frame due
            while li < len(launch) and (not heap or launch[li]["t0"] <= heap[0][0]):
                start(launch[li])
                li += 1
            t, s, desc, gen, c, it = heap[0]
            if c is None:
                frame = desc[2]
                tcp_dicom = False
            else:
                frame = c.build(int(t), desc[2], desc[3], desc[4], desc[5], desc[6])
                tcp_dicom = it["family"] != "noise"
            write(frame, int(t) / 1e6)
            n_written += 1
            size = len(frame)
            all_bytes += size
            by_family[it["family"]] += 1
            if tcp_dicom:
                c.frames += 1
                dicom_frames += 1
                dicom_bytes += size
                frame_sizes["1514" if size == 1514 else "66-ack" if size == 66 else "78-12B" if size == 78
                            else "other"] += 1
            if (verify or n_written <= 3000) and (n_written <= 3000 or vrng.random() < 0.002):
                check.append(frame)
            nxt = next(gen, None)
            if nxt is None:
                heapq.heappop(heap)
                if c is not None:
                    open_conns -= 1
                    if c.frames:
                        # the daemon's shard clause: (ip[12:4] + ip[16:4] + tcp[0:2] + tcp[2:2]) % n, 32-bit
                        h = (int.from_bytes(c.client.ip, "big") + int.from_bytes(c.server.ip, "big")
                             + c.ports[0] + c.ports[1]) & MASK32
                        for k, v in shards.items():
                            v[h % k] += c.frames
            else:
                heapq.heapreplace(heap, (nxt[0], s, nxt, gen, c, it))
            if open_conns > max_concurrent:
                max_concurrent = open_conns
            if n_written % 1000 == 0:
                conc_samples.append(open_conns)
            if not quiet and n_written % 50000 == 0 and time.monotonic() - tick > 2:
                tick = time.monotonic()
                log(f"  {n_written:,}/{frames:,} frames")
    if n_written != frames:
        raise SystemExit(f"internal error: wrote {n_written} frames, planned {frames}")
    _cross_check(check)
    os.replace(tmp, out)

    # The truth.
    pairs: dict[str, dict] = {}
    outcomes = Counter()
    kinds = Counter()
    for r in records:
        p = pairs.setdefault(_pair_key(r["calling_ae"], r["called_ae"]), {
            "calling_ae": r["calling_ae"], "called_ae": r["called_ae"], "requests": 0, "accepts": 0,
            "rejects": Counter(), "aborts": Counter(), "releases": 0, "dimse_requests": Counter(),
            "dimse_responses": Counter(), "dimse_unanswered": Counter()})
        p["requests"] += 1
        p["accepts"] += r["accepted"]
        if r["reject"]:
            p["rejects"]["/".join((r["reject"]["result"], r["reject"]["source"], r["reject"]["reason"]))] += 1
        if r["abort"]:
            a = r["abort"]
            p["aborts"]["/".join((a["by"], a["source"], a["reason"], a["phase"]))] += 1
        p["releases"] += r["outcome"] == "released"
        p["dimse_requests"].update(r["dimse"])
        p["dimse_responses"].update(r["responses"])
        p["dimse_unanswered"].update(r["unanswered"])
        outcomes[r["outcome"]] += 1
        kinds[f"reject ({r['reject']['reason']})" if r["reject"] else
              f"echo + abort by {r['abort']['by']}" if r["abort"] else r["kind"]] += 1
    for p in pairs.values():
        for k in ("rejects", "aborts", "dimse_requests", "dimse_responses", "dimse_unanswered"):
            p[k] = dict(sorted(p[k].items()))
    span = (max(it["end_us"] for it in items) - BASE_US) / 1e6
    truth = {
        "generator": {"script": "bench/make_capture.py", "version": GENERATOR_VERSION, "seed": seed,
                      "frames": frames, "frame_rate": frame_rate, "shares": SHARES, "noise_share": NOISE_SHARE},
        "capture_file": out.name,
        "frames": n_written,
        "bytes": all_bytes,
        "file_bytes": out.stat().st_size,
        "dicom_frames": dicom_frames,
        "dicom_bytes": dicom_bytes,
        "frames_by_family": dict(by_family),
        "dicom_frame_sizes": dict(frame_sizes),
        "server_ports": [104, 11112],
        "duration_seconds": round(span, 3),
        "associations": len(records),
        "associations_by_kind": dict(sorted(kinds.items())),
        "associations_by_outcome": dict(sorted(outcomes.items())),
        "dimse_requests": dict(sum((Counter(p["dimse_requests"]) for p in pairs.values()), Counter())),
        "dicom_frames_by_worker_shard": {str(k): v for k, v in shards.items()},
        "concurrent_connections": {"max": max_concurrent,
                                   "mean": round(sum(conc_samples) / max(1, len(conc_samples)), 1)},
        "distinct_ae_titles": len({p["calling_ae"] for p in pairs.values()} | {p["called_ae"] for p in pairs.values()}),
        "pairs": dict(sorted(pairs.items())),
        "generation_seconds": round(time.monotonic() - t_start, 1),
    }
    truth_path = out.with_name(out.name + ".truth.json")
    truth_path.write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def _cross_check(frames: list[bytes]) -> None:
    """Every sampled TCP frame parses with dpkt and carries correct IPv4 and TCP checksums
    (dpkt recomputes them when the field is zeroed)."""
    for buf in frames:
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
            continue
        tcp = ip.data
        assert ip.len == len(buf) - 14 and len(buf) <= MTU + 14, "bad length"
        assert len(tcp.data) <= MSS
        want_ip, want_tcp = ip.sum, tcp.sum
        ip.sum = 0
        tcp.sum = 0
        again = dpkt.ethernet.Ethernet(bytes(eth)).data
        if (again.sum, again.data.sum) != (want_ip, want_tcp):
            raise SystemExit(f"checksum mismatch in a generated frame: {buf[:64].hex()}")


def summary_text(truth: dict) -> str:
    lines = [
        f"{truth['frames']:,} frames, {truth['bytes'] / 1e6:,.1f} MB of frames ({truth['file_bytes'] / 1e6:,.1f} MB file), "
        f"{truth['duration_seconds']:.1f} s of capture time",
        f"  DICOM (TCP 104/11112): {truth['dicom_frames']:,} frames, {truth['dicom_bytes'] / 1e6:,.1f} MB; "
        "by family: " + ", ".join(f"{k} {v:,} ({100 * v / truth['frames']:.1f}%)"
                                   for k, v in sorted(truth["frames_by_family"].items())),
        "  DICOM frame sizes: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(truth["dicom_frame_sizes"].items())),
        f"  associations: {truth['associations']:,}; by kind: " + ", ".join(
            f"{k} {v:,}" for k, v in truth["associations_by_kind"].items()),
        "  by outcome: " + ", ".join(f"{k} {v:,}" for k, v in truth["associations_by_outcome"].items()),
        "  DIMSE requests: " + ", ".join(f"{k} {v:,}" for k, v in sorted(truth["dimse_requests"].items())),
        f"  concurrent TCP connections: max {truth['concurrent_connections']['max']}, "
        f"mean {truth['concurrent_connections']['mean']}; {truth['distinct_ae_titles']} distinct AE titles, "
        f"{len(truth['pairs'])} pairs",
        "  per pair (top 12 by requests): calling -> called: requests / accepts / rejects / aborts / releases",
    ]
    top = sorted(truth["pairs"].values(), key=lambda p: -p["requests"])[:12]
    for p in top:
        lines.append(f"    {p['calling_ae']:>16} -> {p['called_ae']:<13} {p['requests']:5} {p['accepts']:5} "
                     f"{sum(p['rejects'].values()):5} {sum(p['aborts'].values()):4} {p['releases']:5}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="exact number of frames (default 1,000,000)")
    ap.add_argument("--out", type=Path, help="capture to write (default bench/.cache/dicom-<frames>-s<seed>.pcap)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--frame-rate", type=float, default=DEFAULT_FRAME_RATE,
                    help="aggregate frames per second of capture time (sets how densely flows overlap)")
    ap.add_argument("--verify", action="store_true", help="cross-check a sample of frames with dpkt (checksums)")
    ap.add_argument("--quiet", "-q", action="store_true")
    args = ap.parse_args(argv)
    if args.frames < 2000:
        ap.error("--frames must be at least 2000")
    out = args.out or default_path(args.frames, args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    truth = generate(args.frames, out, args.seed, args.frame_rate, args.verify, args.quiet)
    print(f"{out}\n" + summary_text(truth))
    print(f"truth: {out.name}.truth.json (generated in {truth['generation_seconds']} s)")
    return 0


def default_path(frames: int, seed: int = DEFAULT_SEED, frame_rate: float = DEFAULT_FRAME_RATE) -> Path:
    key = hashlib.sha256(
        json.dumps([GENERATOR_VERSION, frames, seed, frame_rate, _fixture_digest()]).encode()).hexdigest()[:10]
    return REPO / "bench" / ".cache" / f"dicom-{frames}-s{seed}-{key}.pcap"


def _fixture_digest() -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    for name in ("store_dcmtk_veth.pcap", "seed_incident.pcap", "echo_dcmtk_loopback.pcap", "abort.pcap",
                 "reject_called_dcmqrscp.pcap", "dimse_find_pending.pcap"):
        h.update((FIXTURES / name).read_bytes())
    return h.hexdigest()


if __name__ == "__main__":
    sys.exit(main())
