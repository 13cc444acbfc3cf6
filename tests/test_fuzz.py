"""Hostile input through the whole pipeline: mutated real captures and random frames.

The contract (as for h11): every input gives events and counted errors, never an exception, never a
hang; and the compiled fast lane (probe/_lane.c) gives exactly what the pure-Python path gives.
fuzz/fuzz_pipeline.py runs the same harness coverage-guided with atheris; this is the
deterministic part that runs in CI.
"""

from __future__ import annotations

import random
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path

import dpkt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent.parent / "fuzz"))

from probe import pipeline as PL  # noqa: E402
from probe.decode import DLT_EN10MB  # noqa: E402
from probe.pipeline import Pipeline  # noqa: E402
from probe.report import association_json, record_json, tls_record  # noqa: E402

CAPTURES = Path(__file__).parent / "fixtures" / "captures"


def _frames(name: str) -> list[bytes]:
    with open(CAPTURES / name, "rb") as f:
        return [bytes(buf) for _ts, buf in dpkt.pcap.Reader(f)]


SEEDS = {name: _frames(name) for name in (
    "seed_incident.pcap", "store_dcmtk_veth.pcap", "dimse_get.pcap", "dimse_ncommit.pcap", "abort.pcap",
    "transient_reject.pcap", "vlan_dcmtk.pcap",
    # DICOM over TLS (port 2762): handshakes, certificates, alerts, plain DICOM on the TLS port.
    "tls/tls_mixed.pcap", "tls/tls12_dcmtk_echo.pcap", "tls/tls_expired.pcap", "tls/tls_plain_to_tls.pcap",
)}


def _one(frames: list[bytes], lane: bool) -> tuple[Pipeline, list, bytes]:
    records = []
    pipe = Pipeline(on_association=lambda a: records.append(association_json(a)))
    pipe.on_tls = lambda r: records.append(record_json(tls_record(r)))
    dec = pipe.decoder(DLT_EN10MB)
    feed = pipe.callback(dec) if lane else partial(pipe.packet, dec)
    ts = 1_000_000.0
    for frame in frames:
        ts += 0.001
        feed(ts, frame)
    pipe.finish()
    text = pipe.store.render()
    list(text_string_to_metric_families(text.decode()))  # always a valid exposition
    return pipe, records, text


def run(frames: list[bytes]) -> Pipeline:
    """The pure-Python path and, where it is built, the compiled lane (probe/_lane.c): both must
    survive the input and give the same records and metrics."""
    pipe, records, text = _one(frames, lane=False)
    if PL._lane is not None:
        _lane_pipe, lane_records, lane_text = _one(frames, lane=True)
        assert lane_records == records
        assert lane_text.splitlines() == text.splitlines()
    return pipe


def mutate(frames: list[bytes], rng: random.Random, n: int) -> list[bytes]:
    frames = list(frames)
    for _ in range(n):
        i = rng.randrange(len(frames))
        f = bytearray(frames[i])
        op = rng.randrange(6)
        if op == 0 and f:  # flip bytes (often inside a PDU header or length)
            for _ in range(rng.randint(1, 4)):
                f[rng.randrange(len(f))] = rng.randrange(256)
        elif op == 1:  # truncate
            f = f[: rng.randrange(len(f) + 1)]
        elif op == 2:  # insert junk
            pos = rng.randrange(len(f) + 1)
            f[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif op == 3:  # drop the frame
            del frames[i]
            continue
        elif op == 4:  # duplicate it elsewhere
            frames.insert(rng.randrange(len(frames) + 1), bytes(f))
        else:  # swap with a neighbour
            j = min(len(frames) - 1, i + 1)
            frames[i], frames[j] = frames[j], frames[i]
            continue
        frames[i] = bytes(f)
    return frames


@settings(max_examples=150, deadline=timedelta(seconds=10), suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SEEDS)), st.integers(0, 2**32 - 1), st.integers(1, 40))
def test_mutated_real_captures_never_raise(name, seed, n):
    run(mutate(SEEDS[name], random.Random(seed), n))


@settings(max_examples=150, deadline=timedelta(seconds=10))
@given(st.lists(st.binary(max_size=200), max_size=50))
def test_random_frames_never_raise(frames):
    run(frames)


def test_seed_corpus_inputs_replay_cleanly():
    corpus = Path(__file__).parent.parent / "fuzz" / "corpus"
    inputs = sorted(corpus.iterdir())
    assert inputs, "fuzz/corpus is empty: run fuzz/make_corpus.py"
    import struct

    for path in inputs:
        data = path.read_bytes()
        frames, pos = [], 0
        while pos + 2 <= len(data):
            (n,) = struct.unpack_from(">H", data, pos)
            frames.append(data[pos + 2 : pos + 2 + n])
            pos += 2 + n
        pipe = run(frames)
        assert pipe.packets == len(frames)
