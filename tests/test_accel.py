"""The compiled fast lane (probe/_lane.c) against the pure-Python path it accelerates.

The lane must be invisible: on every fixture capture (real DCMTK / pynetdicom / TLS traffic), on
the benchmark generator's mix and on damaged copies of them (loss, duplicates, reordering, a start
mid-stream, flipped payload bytes), the metrics, association records and TLS records are identical
with and without it. Unit tests cover its bad inputs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture_edit import read, write
from probe import pipeline as PL
from probe.config import load
from probe.decode import DLT_EN10MB, DLT_LINUX_SLL2, Decoder
from probe.dicom import pdu as P
from probe.offline import open_sources, run
from probe.report import association_record, record_json, tls_record

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "tests" / "fixtures" / "captures"
LANE = PL._lane  # None when the extension is not built (or DICOM_PROBE_PURE_PYTHON is set)

needs_lane = pytest.mark.skipif(LANE is None, reason="probe._lane is not built here (pure-Python install)")


def _can_compile() -> bool:
    include = sysconfig.get_paths().get("include") or ""
    return bool(shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")) and \
        (Path(include) / "Python.h").exists()


def test_the_package_build_compiles_the_lane_where_it_can():
    """Where a C compiler and the Python headers exist (CI: install.sh installs gcc and python3-dev)
    the package's own build must have produced the extension; it is optional only where they do not."""
    if os.environ.get("DICOM_PROBE_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("DICOM_PROBE_PURE_PYTHON is set")
    if not _can_compile():
        pytest.skip("no C compiler or Python headers: the pure-Python path is the install")
    import probe._lane  # noqa: F401  (fails the test when the build skipped it)

    assert PL._lane is not None


def test_the_lane_framer_states_match_the_framer():
    """probe/_lane.c hard-codes three PduFramer states; they must be the module's."""
    src = (ROOT / "probe" / "_lane.c").read_text()
    assert (f"F_HEADER = {P._HEADER}, F_PDV_HEADER = {P._PDV_HEADER}, F_DATA = {P._DATA}, "
            f"F_COMMAND = {P._COMMAND}") in src
    assert P.PDU_HEADER_LEN == P.PDV_HEADER_LEN == 6  # UL_HEADER_LEN


@contextmanager
def pure_python():
    saved = PL._lane
    PL._lane = None
    try:
        yield
    finally:
        PL._lane = saved


def outputs(paths: list[Path], server_ports=(), tls_ports=()) -> dict:
    """Everything a run produces that a user sees: metrics text, association and TLS records."""
    cfg = load(None).with_tls_ports(tls_ports)
    assocs: list = []
    tls: list = []
    pipe = run(open_sources([str(p) for p in paths], cfg.capture_ports(server_ports)), cfg, server_ports,
               on_association=lambda a: assocs.append(record_json(association_record(a))),
               on_tls=lambda r: tls.append(record_json(tls_record(r))))
    return {"metrics": pipe.store.render().decode(), "associations": assocs, "tls": tls,
            "packets": pipe.packets, "bytes": pipe.bytes, "last_ts": pipe.last_ts,
            "lanes": [lane.fast_frames for lane in pipe._lanes]}


def assert_same(paths: list[Path], server_ports=(), tls_ports=(), *, expect_fast: bool = False) -> dict:
    fast = outputs(paths, server_ports, tls_ports)
    with pure_python():
        slow = outputs(paths, server_ports, tls_ports)
    assert slow["lanes"] == []
    lanes = fast.pop("lanes")
    slow.pop("lanes")
    assert fast["metrics"].splitlines() == slow["metrics"].splitlines()
    assert fast == slow
    if LANE is not None and expect_fast:
        assert sum(lanes) > 0  # the comparison did exercise the lane
    return fast


def _fixtures() -> list[Path]:
    return sorted(p for p in CAPTURES.rglob("*.truth.json"))


def _capture_of(truth_path: Path) -> tuple[Path, dict]:
    truth = json.loads(truth_path.read_text())
    name = truth.get("capture_file") or truth_path.name.replace(".truth.json", "")
    cands = [truth_path.parent / name] if truth.get("capture_file") else \
        [truth_path.parent / (name + ext) for ext in (".pcap", ".pcapng")]
    return next(c for c in cands if c.exists()), truth


@pytest.mark.parametrize("truth_path", _fixtures(), ids=lambda p: p.name.replace(".truth.json", ""))
def test_every_fixture_capture_gives_identical_output(truth_path):
    pcap, truth = _capture_of(truth_path)
    assert_same([pcap], truth.get("server_ports", ()), truth.get("tls_ports", ()))


def test_several_files_merged_give_identical_output():
    assert_same([CAPTURES / "store_dcmtk_veth.pcap", CAPTURES / "dimse_find_pending.pcap",
                 CAPTURES / "sll_dcmtk.pcap"], (104, 11112), expect_fast=True)


@pytest.fixture(scope="module")
def bench_mix(tmp_path_factory) -> Path:
    """The benchmark generator's traffic mix (bulk C-STORE in 16 KB PDUs, C-FIND bursts, echoes,
    rejects, aborts, hundreds of concurrent flows, noise), 30,000 frames."""
    out = tmp_path_factory.mktemp("bench") / "mix.pcap"
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_capture.py"), "--frames", "30000", "--out", str(out),
                    "--quiet"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def test_benchmark_mix_identical_and_mostly_in_the_lane(bench_mix):
    fast = assert_same([bench_mix], expect_fast=True)
    if LANE is not None:
        # Most data-phase frames never reach Python: pure ACKs, segments inside data values, and
        # the PDU/PDV headers between data values of an established association.
        lanes = outputs([bench_mix])["lanes"]
        assert sum(lanes) / fast["packets"] > 0.6


def _damaged(frames, rng: random.Random, how: str):
    data = [i for i, f in enumerate(frames) if f.payload]
    if how == "loss":
        drop = {i for i in data if rng.random() < 0.03}
        return [f for i, f in enumerate(frames) if i not in drop]
    if how == "duplicates":
        out = []
        for f in frames:
            out.append(f)
            if f.payload and rng.random() < 0.05:
                out.append(f)
        return out
    if how == "reorder":
        out = list(frames)
        for _ in range(len(out) // 20):
            i = rng.randrange(1, len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
        return out
    if how == "midstream":
        return frames[len(frames) // 3:]
    if how == "flipped":
        # Payload bytes flipped: malformed PDU and PDV lengths, commands and headers where the
        # lane reads them. The IPv4/TCP headers stay valid (the probe does not verify checksums).
        from capture_edit import Frame

        out = []
        for f in frames:
            if f.payload and rng.random() < 0.2:
                buf = bytearray(f.buf)
                start = len(buf) - len(f.payload)
                for _ in range(3):
                    buf[rng.randrange(start, len(buf))] = rng.randrange(256)
                f = Frame(f.ts, bytes(buf), f.tcp, f.src)
            out.append(f)
        return out
    raise ValueError(how)


@pytest.mark.parametrize("how", ["loss", "duplicates", "reorder", "midstream", "flipped"])
@pytest.mark.parametrize("name,ports", [("store_dcmtk_veth.pcap", (104,)), ("dimse_find_pending.pcap", (11112,)),
                                        ("concurrent.pcap", (104, 11112)), ("mix", ())])
def test_damaged_captures_give_identical_output(tmp_path, bench_mix, name, ports, how):
    src = bench_mix if name == "mix" else CAPTURES / name
    frames, lt = read(src)
    for seed in (1, 2):
        damaged = write(tmp_path / f"{how}{seed}.pcap", _damaged(frames, random.Random(seed), how), lt)
        assert_same([damaged], ports)


# -- the Lane object itself ------------------------------------------------------------------

def _frame(src=b"\xc6\x12\x00\x01", dst=b"\xc6\x12\x00\x02", sport=40000, dport=104, seq=1000, flags=0x10,
           payload=b"", doff=5, total=None) -> bytes:
    ip_len = 20 + doff * 4 + len(payload) if total is None else total
    ip = bytes([0x45, 0]) + ip_len.to_bytes(2, "big") + b"\x00\x00\x40\x00\x40\x06\x00\x00" + src + dst
    tcp = (sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + seq.to_bytes(4, "big") + b"\x00\x00\x00\x00"
           + bytes([doff << 4, flags]) + b"\xff\xff\x00\x00\x00\x00" + b"\x00" * (doff * 4 - 20))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + payload


class _Obj:
    pass


def _entry(next_seq=1000, state=P._DATA, pdv_left=5000):
    conn, stream, other, framer = _Obj(), _Obj(), _Obj(), _Obj()
    other._ooo = stream._ooo = {}
    stream.next_seq = next_seq
    framer._state, framer._pdv_left, framer._pdu_left, framer.data_bytes = state, pdv_left, pdv_left + 100, 0
    conn.framers = [framer, None]
    conn.last_ts = 0.0
    return conn, stream, other, framer


def _lane(fast, calls, next_expiry=100.0):
    return LANE.Lane(fast, 14, lambda ts, frame: calls.append((ts, frame)), P._DATA, next_expiry)


@needs_lane
def test_lane_inside_a_data_value_and_pure_ack():
    conn, stream, other, framer = _entry()
    fast = {b"\xc6\x12\x00\x01\xc6\x12\x00\x02" + (40000).to_bytes(2, "big") + (104).to_bytes(2, "big"):
            (conn, 0, stream, other)}
    calls: list = []
    lane = _lane(fast, calls)
    lane(1.0, _frame(payload=b"x" * 1000))
    assert (stream.next_seq, framer._pdv_left, framer._pdu_left, framer.data_bytes, conn.last_ts) == \
        (2000, 4000, 4100, 1000, 1.0)
    lane(2.0, _frame(seq=5))  # a pure ACK: only the time
    assert conn.last_ts == 2.0 and stream.next_seq == 2000
    lane(3.0, _frame(seq=2000, doff=8, payload=b"y" * 100))  # TCP options: the payload starts later
    assert (stream.next_seq, framer._pdv_left, framer.data_bytes) == (2100, 3900, 1100)
    assert calls == [] and lane.fast_frames == 3 and lane.packets == 3 and lane.last_ts == 3.0
    assert lane.bytes == 3 * 54 + 1000 + 12 + 100


@needs_lane
@pytest.mark.parametrize("why,frame", [
    ("unknown flow", _frame(sport=1, payload=b"x" * 10)),
    ("out of order", _frame(seq=999, payload=b"x" * 10)),
    ("reaches the value's end", _frame(payload=b"x" * 5000)),
    ("SYN", _frame(flags=0x02)),
    ("FIN", _frame(flags=0x11, payload=b"x")),
    ("RST", _frame(flags=0x04)),
    ("data offset below 5", _frame(doff=4, payload=b"x" * 10)),
    ("IP length beyond the frame", _frame(payload=b"x" * 10, total=1400)),
    ("too short", _frame()[:40]),
    ("not IPv4", _frame()[:12] + b"\x86\xdd" + _frame()[14:]),
    ("empty", b""),
])
def test_lane_hands_everything_else_to_the_full_path_untouched(why, frame):
    conn, stream, other, framer = _entry()
    fast = {b"\xc6\x12\x00\x01\xc6\x12\x00\x02" + (40000).to_bytes(2, "big") + (104).to_bytes(2, "big"):
            (conn, 0, stream, other)}
    calls: list = []
    lane = _lane(fast, calls)
    lane(1.0, frame)
    assert calls == [(1.0, frame)], why
    assert (stream.next_seq, framer._pdv_left, framer.data_bytes, conn.last_ts) == (1000, 5000, 0, 0.0)
    assert lane.packets == 1 and lane.bytes == len(frame) and lane.fast_frames == 0


@needs_lane
def test_lane_odd_state_goes_to_the_full_path_not_a_crash():
    key = b"\xc6\x12\x00\x01\xc6\x12\x00\x02" + (40000).to_bytes(2, "big") + (104).to_bytes(2, "big")
    frame = _frame(payload=b"x" * 10)
    for mutate in (lambda c, s, o, f: setattr(f, "_pdv_left", "many"),
                   lambda c, s, o, f: setattr(s, "next_seq", None),
                   lambda c, s, o, f: setattr(s, "next_seq", 1 << 80),
                   lambda c, s, o, f: setattr(o, "_ooo", {1: b"held"}),
                   lambda c, s, o, f: setattr(c, "framers", [None, None]),
                   lambda c, s, o, f: setattr(c, "framers", "ab"),
                   lambda c, s, o, f: delattr(f, "_state")):
        conn, stream, other, framer = _entry()
        mutate(conn, stream, other, framer)
        calls: list = []
        _lane({key: (conn, 0, stream, other)}, calls)(1.0, frame)
        assert calls == [(1.0, frame)]
    calls = []
    _lane({key: "not an entry"}, calls)(1.0, frame)
    assert calls == [(1.0, frame)]


@needs_lane
def test_lane_due_timeouts_and_non_bytes_frames_take_the_full_path():
    calls: list = []
    lane = _lane({}, calls, next_expiry=5.0)
    lane(4.0, b"\x00" * 60)
    lane(5.0, b"\x00" * 60)  # timeouts due
    lane(3.0, bytearray(70))  # not bytes: counted, judged by the full path
    assert [c[0] for c in calls] == [4.0, 5.0, 3.0]
    assert lane.packets == 3 and lane.bytes == 190 and lane.last_ts == 5.0
    with pytest.raises(TypeError):
        lane(1.0)
    with pytest.raises(TypeError):
        lane("soon", b"")
    with pytest.raises(ValueError):
        LANE.Lane({}, 0, print, 3)
    with pytest.raises(TypeError):
        LANE.Lane({}, 14, "not callable", 3)
    with pytest.raises(TypeError):
        LANE.Lane([], 14, print, 3)
    with pytest.raises(TypeError):  # the data-phase lane needs its states and callback
        LANE.Lane({}, 14, print, 3, 0.0, P.PduFramer)
    with pytest.raises(RuntimeError):
        LANE.Lane.__new__(LANE.Lane)(1.0, b"\x00" * 60)


@needs_lane
def test_lane_errors_in_the_full_path_propagate():
    def boom(ts, frame):
        raise RuntimeError("full path failed")

    lane = LANE.Lane({}, 14, boom, P._DATA)
    with pytest.raises(RuntimeError, match="full path failed"):
        lane(1.0, b"\x00" * 60)


def test_pipeline_uses_the_lane_only_for_fixed_link_layouts():
    pipe = PL.Pipeline()
    cb = pipe.callback(Decoder(DLT_EN10MB))
    assert (type(cb).__name__ == "Lane") == (LANE is not None)
    assert isinstance(pipe.callback(Decoder(DLT_LINUX_SLL2)), partial)  # no fixed offsets: packet() itself


def _seg_lane(calls):
    return LANE.Lane({}, 14, lambda ts, frame: calls.append(("full", frame)), P._DATA, 100.0,
                     full_seg=lambda ts, frame, seg: calls.append(("seg", frame, seg)))


@needs_lane
@pytest.mark.parametrize("why,frame,parsed", [
    ("plain", _frame(payload=b"x" * 10), True),
    ("SYN", _frame(flags=0x02), True),
    ("TCP options", _frame(doff=8, payload=b"y" * 5), True),
    ("link padding after the IP packet", _frame(payload=b"z" * 3) + b"\x00" * 20, True),
    ("IP length beyond the frame (truncated)", _frame(payload=b"x" * 10, total=1400), False),
    ("data offset below 5", _frame(doff=4, payload=b"x" * 10), False),
    ("TCP header beyond the IP length", _frame(payload=b"", total=30), False),
    ("IP options", _frame()[:14] + b"\x46" + _frame()[15:], False),
    ("not IPv4", _frame()[:12] + b"\x86\xdd" + _frame()[14:], False),
    ("too short", _frame()[:40], False),
])
def test_lane_hands_plain_segments_parsed_exactly_as_the_decoder(why, frame, parsed):
    """Frames the lane does not finish reach Python with their headers parsed (full_seg) only when
    the tuple is exactly Decoder.decode's and the decoder would count nothing; else as frames."""
    calls: list = []
    _seg_lane(calls)(1.0, frame)
    (call,) = calls
    dec = Decoder(DLT_EN10MB)
    expected = dec.decode(frame)
    if parsed:
        assert call == ("seg", frame, expected) and not dec.skipped, why
    else:
        assert call == ("full", frame), why


@needs_lane
@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.integers(0, 4))
def test_lane_parsed_segments_equal_the_decoders_on_random_frames(tail, variant):
    base = [_frame(payload=b"p" * 7), _frame(flags=0x12), _frame(doff=6, payload=b"q"), _frame(total=60),
            _frame(payload=b"r" * 30)][variant]
    frame = base[:14 + (len(tail) % 40)] + tail if tail and tail[0] & 1 else base[:34] + tail
    calls: list = []
    _seg_lane(calls)(1.0, frame)
    dec = Decoder(DLT_EN10MB)
    expected = dec.decode(frame)
    if calls[0][0] == "seg":
        assert calls[0][2] == expected and not dec.skipped
