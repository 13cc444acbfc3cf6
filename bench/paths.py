#!/usr/bin/env python3
"""The probe's per-packet paths, measured without a profiler.

    python3 bench/paths.py CAPTURE [--json FILE]
    python3 bench/paths.py CAPTURE --pure [--json FILE]     # the pure-Python path

Feeds CAPTURE through the probe's own FileSource (libpcap, the same BPF filter) and Pipeline, as
``dicom-probe analyze`` does.

With the compiled lane (probe/_lane.c, the default where it is built) libpcap calls the lane for
every frame; every call it hands to the Python full path (``Pipeline._full``, or ``_full_seg`` with
the headers parsed) is timed with
perf_counter_ns and put in a class: the reason the lane did not finish the frame, found by looking
at the flow table's state just before the call. The lane's own time is the loop's time minus the
full-path calls, the classification and the dispatch floor below: an upper bound, since it also
holds this script's own timing wrappers (it is never timed frame by frame; `perf record` on a plain
`analyze` run sees the lane's own code directly).

With ``--pure`` (or without the extension) every ``Pipeline.packet`` call is timed and put in a class:
"fast lane: ..." when the call returned without decoding the frame (Decoder.decode never ran),
otherwise the full path with the reason the Python fast lane did not take it.

It also measures the floor of any design that calls Python once per packet: libpcap's dispatch
with the same filter into a Python callback that does nothing (best of three passes over a file
already in the page cache).

Nothing in probe/ is modified: the only instrumentation is installed in this process (a counting
wrapper around Decoder.decode; with the lane, timing wrappers on the pipeline's _full and _commands).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probe import pipeline as PL  # noqa: E402
from probe.capture import FileSource  # noqa: E402
from probe.config import load  # noqa: E402
from probe.decode import Decoder  # noqa: E402
from probe.dicom import pdu as P  # noqa: E402
from probe.metrics import AeLabeler  # noqa: E402
from probe.sites import SiteMap  # noqa: E402

STATE_NAMES = {getattr(P, n): n.strip("_").lower().replace("_", "-")
               for n in ("_HEADER", "_CONTROL", "_PDV_HEADER", "_DATA", "_COMMAND", "_SKIP", "_RESYNC")
               if hasattr(P, n)}


SHARDS = (2, 3, 4)


def _shard_hash(frame) -> int | None:
    """The daemon's BPF shard key, (ip[12:4] + ip[16:4] + tcp[0:2] + tcp[2:2]) in 32 bits, for an
    untagged Ethernet IPv4 frame (None otherwise: those go to worker 0 or are rare here)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    t = 14 + ihl
    if len(frame) < t + 4:
        return None
    return (int.from_bytes(frame[26:30], "big") + int.from_bytes(frame[30:34], "big")
            + int.from_bytes(frame[t:t + 2], "big") + int.from_bytes(frame[t + 2:t + 4], "big")) & 0xFFFFFFFF


def _shard_hash_conn(conn) -> int | None:
    """The same shard key from a connection's "a.b.c.d:port" endpoints (IPv4 only)."""
    try:
        total = 0
        for end in (conn.client, conn.server):
            addr, port = end.rsplit(":", 1)
            total += int.from_bytes(bytes(int(x) for x in addr.split(".")), "big") + int(port)
        return total & 0xFFFFFFFF
    except ValueError:
        return None


def _flow_of(pipe, decoder, frame):
    """The fast lanes' first checks: (reason it is not a candidate, None) or (None, (entry, total,
    seq, doff)) for an untagged IPv4/TCP frame without SYN/FIN/RST of a connection in the table."""
    off = decoder.fast_offset
    if off < 0 or len(frame) < off + 34:
        return "link layer without the fast layout / short frame", None
    ethertype, vihl, total, frag, proto, key, seq, doff, flags = PL._FAST(frame, off - 2)
    if ethertype != 0x0800 or vihl != 0x45 or proto != 6 or frag & 0x3FFF:
        return "not plain IPv4/TCP", None
    if flags & 0x07:
        return "SYN, FIN or RST", None
    entry = pipe.flows.fast.get(key)
    if entry is None:
        return "no flow-table entry (handshake, new or closed connection)", None
    return None, (entry, total, seq, doff)


def classify(pipe, decoder, frame) -> str:
    """Why the fast lane would (not) take this frame, from the state before the call."""
    try:
        why, flow = _flow_of(pipe, decoder, frame)
        if flow is None:
            return "full: " + why
        (conn, d, stream, other), total, seq, doff = flow
        n = total - 20 - ((doff >> 4) << 2)
        if other._ooo:
            return "full: reverse direction holds out-of-order data"
        if n <= 0:
            return "fast lane: pure ACK"
        framer = conn.framers[d]
        if framer is None:
            return "full: first payload of the direction"
        if framer._state != PL._DATA:
            size = "12-byte segment" if n == 12 else "full-size segment" if n >= 1448 else "short segment"
            return f"full: framer not inside a data PDV ({STATE_NAMES.get(framer._state, framer._state)}), {size}"
        if seq != stream.next_seq or stream._ooo:
            return "full: out of order or retransmitted"
        if n == framer._pdv_left:
            return "full: segment ends exactly at the data PDV's end"
        if n > framer._pdv_left:
            return "full: segment crosses the data PDV's end"
        return "fast lane: inside a data PDV"
    except Exception as e:  # the pipeline changed shape: still count the frame
        return f"unknown ({type(e).__name__})"


def classify_lane(pipe, decoder, ts, frame) -> str:
    """Why the compiled lane handed this frame to the full path, from the state before the call."""
    try:
        if ts >= pipe._next_expiry:
            return "idle-timeout check due (once a second of capture time)"
        why, flow = _flow_of(pipe, decoder, frame)
        if flow is None:
            return why
        (conn, d, stream, other), total, seq, doff = flow
        if other._ooo:
            return "reverse direction holds out-of-order data"
        framer = conn.framers[d]
        if framer is None:
            return "first payload of the direction"
        if seq != stream.next_seq or stream._ooo:
            return "out of order or retransmitted"
        if type(framer) is not P.PduFramer:
            return "TLS record boundary"
        if getattr(conn, "closed", False):
            return "connection closed"
        machine = conn.machine
        if machine.state not in PL._QUIET_STATES:
            return f"association {machine.state} (set-up or end: control PDUs)"
        state = STATE_NAMES.get(framer._state, framer._state)
        if state in ("control", "skip", "resync"):
            return f"framer {state}"
        a = machine.current
        if a is not None and not a.pdata_bytes[0] and not a.pdata_bytes[1]:
            return "the association's first P-DATA-TF"
        n = total - 20 - ((doff >> 4) << 2)
        off = decoder.fast_offset
        payload = frame[off + 20 + ((doff >> 4) << 2): off + total]
        if state == "header" and not framer._buf and payload[:1] and payload[0] != 4:
            return "a control PDU (A-RELEASE, A-ABORT) in the data phase"
        return f"other (framing error or control PDU later in the segment; framer {state}, {n} bytes)"
    except Exception as e:  # the pipeline changed shape: still count the frame
        return f"unknown ({type(e).__name__})"


def measure_lane(path: str, cfg, ports, floor_s: float, frames: int) -> dict:
    """The compiled lane's run: full-path calls timed and classified, the lane's time estimated."""
    src = FileSource(path, ports)
    pipe = PL.Pipeline(cfg.flow_settings(()), AeLabeler(cfg.max_ae_titles, cfg.ae_aliases), None,
                       sites=SiteMap(cfg.sites))
    dec = pipe.decoder(src.linktype)
    stats: dict[str, list] = defaultdict(lambda: [0, 0])  # class -> [frames, ns]
    full_ns_by_shard = {n: [0] * n for n in SHARDS}
    full_frames_by_shard = {n: [0] * n for n in SHARDS}
    now = time.perf_counter_ns
    overhead = min(-(now() - now()) for _ in range(1000))
    orig_full_seg = pipe._full_seg  # Pipeline._full decodes and goes on there
    classify_ns = [0]

    def full(decoder, ts, frame, seg=None):
        t = now()
        why = classify_lane(pipe, dec, ts, frame)
        t1 = now()
        orig_full_seg(decoder, ts, frame, decoder.decode(frame) if seg is None else seg)
        dt = now() - t1 - overhead
        classify_ns[0] += t1 - t
        s = stats[why]
        s[0] += 1
        s[1] += dt
        h = _shard_hash(frame)
        for k in SHARDS:
            i = h % k if h is not None else 0
            full_ns_by_shard[k][i] += dt
            full_frames_by_shard[k][i] += 1

    orig_commands = pipe._commands
    commands_ns = [0, 0, 0]  # calls, ns, command values

    commands_ns_by_shard = {n: [0] * n for n in SHARDS}

    def commands(conn, from_client, values, ts):
        t = now()
        orig_commands(conn, from_client, values, ts)
        dt = now() - t - overhead
        commands_ns[1] += dt
        commands_ns[0] += 1
        commands_ns[2] += len(values)
        h = _shard_hash_conn(conn)
        for k in SHARDS:
            commands_ns_by_shard[k][h % k if h is not None else 0] += dt

    pipe._full = pipe._full_seg = full  # what Pipeline.callback binds into the lane
    pipe._commands = commands
    lane = pipe.callback(dec)
    t0 = time.perf_counter()
    src.dispatch_all(lane)
    t1 = time.perf_counter()
    pipe.finish()
    finish_s = time.perf_counter() - t1
    loop_s = t1 - t0
    n = lane.packets
    full_frames = sum(v[0] for v in stats.values())
    full_s = sum(v[1] for v in stats.values()) / 1e9
    # The probe's own time: the loop minus the classification (bench only) and libpcap's dispatch
    # into a Python callback (the floor, which a C callable pays in part only: an upper bound).
    probe_s = max(0.0, loop_s - classify_ns[0] / 1e9 - floor_s)
    commands_s = commands_ns[1] / 1e9
    lane_s = max(0.0, probe_s - full_s - commands_s)
    classes = sorted(({"class": "full: " + k, "frames": v[0], "seconds": v[1] / 1e9,
                       "us_per_frame": v[1] / v[0] / 1e3} for k, v in stats.items()), key=lambda c: -c["seconds"])
    classes.insert(0, {"class": "compiled lane: pure ACKs, data values, P-DATA/PDV headers, command values "
                                "(C; an upper bound: the loop's time not in the rows below, the dispatch floor "
                                "and the classification)",
                       "frames": lane.fast_frames, "seconds": lane_s,
                       "us_per_frame": 1e6 * lane_s / lane.fast_frames if lane.fast_frames else 0.0})
    classes.insert(1, {"class": f"of which with command values framed in C: Pipeline._commands in Python "
                                f"(DIMSE, metrics; {commands_ns[2]:,} command values)",
                       "frames": commands_ns[0], "seconds": commands_s,
                       "us_per_frame": 1e6 * commands_s / commands_ns[0] if commands_ns[0] else 0.0})
    # Work per worker of `--workers k`: the full-path time measured per frame, plus the lane's
    # frames at the lane's average cost (their shard counted in a second pass over the file).
    per_shard_frames = {k: [0] * k for k in SHARDS}

    def count(ts, frame):
        h = _shard_hash(frame)
        for k in SHARDS:
            per_shard_frames[k][h % k if h is not None else 0] += 1

    FileSource(path, ports).dispatch_all(count)
    lane_us = lane_s / lane.fast_frames if lane.fast_frames else 0.0
    shard_s = {str(k): [(full_ns_by_shard[k][i] + commands_ns_by_shard[k][i]) / 1e9
                        + (per_shard_frames[k][i] - full_frames_by_shard[k][i]) * lane_us
                        for i in range(k)] for k in SHARDS}
    return {
        "mode": "lane",
        "capture": path,
        "frames_after_filter": n,
        "floor_dispatch_noop_s": floor_s,
        "floor_dispatch_noop_fps": frames / floor_s if floor_s else None,
        "packet_calls_s": probe_s,
        "timed_loop_s": loop_s,
        "classify_s": classify_ns[0] / 1e9,
        "finish_s": finish_s,
        "fast_frames": lane.fast_frames,
        "fast_seconds": lane_s + commands_s,
        "commands_calls": commands_ns[0],
        "commands_values": commands_ns[2],
        "commands_seconds": commands_s,
        "full_frames": full_frames,
        "full_seconds": full_s,
        "classes": classes,
        "classifier_mismatches": 0,
        "packet_seconds_by_worker_shard": shard_s,
    }


def measure(path: str, pure: bool = False) -> dict:
    cfg = load(None)
    ports = sorted(cfg.ports)

    # 1. The floor: libpcap dispatch (same filter) into a Python callback that does nothing; the
    # file is read once first (page cache), and the best of three passes is kept.
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass

    def noop(ts, frame):
        pass

    floor_s = float("inf")
    for _ in range(3):
        src = FileSource(path, ports)
        t0 = time.perf_counter()
        src.dispatch_all(noop)
        floor_s = min(floor_s, time.perf_counter() - t0)
    src2 = FileSource(path, ports)
    t0 = time.perf_counter()
    frames = 0
    for batch in src2.batches():
        frames += len(batch)
    batches_s = time.perf_counter() - t0

    if PL._lane is not None and not pure:
        r = measure_lane(path, cfg, ports, floor_s, frames)
        r["batches_s"] = batches_s
        return r

    # 2. Every Pipeline.packet call, timed and classified.
    calls = [0]
    orig = Decoder.decode

    def decode(self, frame):
        calls[0] += 1
        return orig(self, frame)

    Decoder.decode = decode
    try:
        src = FileSource(path, ports)
        pipe = PL.Pipeline(cfg.flow_settings(()), AeLabeler(cfg.max_ae_titles, cfg.ae_aliases), None,
                           sites=SiteMap(cfg.sites))
        dec = pipe.decoder(src.linktype)
        packet = pipe.packet
        stats: dict[str, list] = defaultdict(lambda: [0, 0])  # class -> [frames, ns]
        shard_ns = {n: [0] * n for n in SHARDS}  # packet time per worker of `--workers n`
        now = time.perf_counter_ns
        overhead = min(-(now() - now()) for _ in range(1000))
        mismatch = [0]

        def cb(ts, frame):
            why = classify(pipe, dec, frame)
            before = calls[0]
            t = now()
            packet(dec, ts, frame)
            dt = now() - t - overhead
            fast = calls[0] == before
            if fast != why.startswith("fast"):
                mismatch[0] += 1
                why = ("fast lane: other" if fast else "full: other") + " (classifier disagrees)"
            s = stats[why]
            s[0] += 1
            s[1] += dt
            h = _shard_hash(frame)
            for k, v in shard_ns.items():
                v[h % k if h is not None else 0] += dt

        t0 = time.perf_counter()
        src.dispatch_all(cb)
        t1 = time.perf_counter()
        pipe.finish()
        finish_s = time.perf_counter() - t1
    finally:
        Decoder.decode = orig
    total_frames = sum(v[0] for v in stats.values())
    total_ns = sum(v[1] for v in stats.values())
    classes = sorted(({"class": k, "frames": v[0], "seconds": v[1] / 1e9, "us_per_frame": v[1] / v[0] / 1e3}
                      for k, v in stats.items()), key=lambda c: -c["seconds"])
    fast = [c for c in classes if c["class"].startswith("fast")]
    return {
        "mode": "pure",
        "capture": path,
        "frames_after_filter": total_frames,
        "floor_dispatch_noop_s": floor_s,
        "floor_dispatch_noop_fps": frames / floor_s if floor_s else None,
        "batches_s": batches_s,
        "packet_calls_s": total_ns / 1e9,
        "timed_loop_s": t1 - t0,
        "finish_s": finish_s,
        "fast_frames": sum(c["frames"] for c in fast),
        "fast_seconds": sum(c["seconds"] for c in fast),
        "classes": classes,
        "classifier_mismatches": mismatch[0],
        "packet_seconds_by_worker_shard": {str(k): [x / 1e9 for x in v] for k, v in shard_ns.items()},
    }


def text(r: dict) -> str:
    n = r["frames_after_filter"]
    what = "the probe (lane + full path, dispatch floor excluded)" if r.get("mode") == "lane" else "Pipeline.packet"
    lines = [f"{n:,} frames after the BPF filter; {what} total {r['packet_calls_s']:.2f} s "
             f"({1e6 * r['packet_calls_s'] / n:.2f} us/frame); finish {r['finish_s']:.2f} s",
             f"floor: libpcap dispatch into a no-op Python callback {r['floor_dispatch_noop_s']:.2f} s "
             f"({r['floor_dispatch_noop_fps']:,.0f} frames/s)",
             f"fast lane: {r['fast_frames']:,} frames ({100 * r['fast_frames'] / n:.1f}%), "
             f"{r['fast_seconds']:.2f} s ({100 * r['fast_seconds'] / r['packet_calls_s']:.1f}% of packet time)"]
    for c in r["classes"]:
        lines.append(f"  {c['frames']:>9,} {100 * c['frames'] / n:5.1f}%  {c['seconds']:6.2f} s "
                     f"{100 * c['seconds'] / r['packet_calls_s']:5.1f}%  {c['us_per_frame']:7.2f} us/frame  {c['class']}")
    for k, v in r.get("packet_seconds_by_worker_shard", {}).items():
        lines.append(f"  --workers {k}: packet time per worker " + ", ".join(f"{x:.2f} s" for x in v)
                     + f" (busiest {100 * max(v) / sum(v):.0f}%)")
    if r["classifier_mismatches"]:
        lines.append(f"  ({r['classifier_mismatches']} frames where the re-checked conditions disagreed with the "
                     f"probe: probe/pipeline.py's fast lane changed)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("capture")
    ap.add_argument("--json", help="also write the result as JSON to this file")
    ap.add_argument("--pure", action="store_true", help="measure the pure-Python path (Pipeline.packet)")
    args = ap.parse_args(argv)
    r = measure(args.capture, pure=args.pure)
    print(text(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
