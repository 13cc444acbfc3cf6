"""Coverage-guided fuzzing of the whole decode path with atheris (libFuzzer for Python).

One input is a sequence of frames for one Ethernet capture: each frame is a 2-byte big-endian length
followed by that many bytes (a frame shorter than its length is taken as it is). The frames go
through the real Pipeline (decode, flows, reassembly, PDU framer, association machine, DIMSE,
metrics), then the capture ends and the metrics are rendered. The contract: no exception, no hang;
and, where the compiled fast lane (probe/_lane.c) is built, the same input through the lane gives
the same records and metrics as the pure-Python path (a difference is reported as a crash).

    pip install atheris
    python3 fuzz/fuzz_pipeline.py fuzz/corpus -max_total_time=600     # or -runs=N
    python3 fuzz/make_corpus.py                                         # (re)build the seed corpus

A crash leaves crash-<hash> in the working directory: add it to tests/test_fuzz_regressions.py.
"""

import struct
import sys

import atheris

from functools import partial

with atheris.instrument_imports():
    from probe import pipeline as PL
    from probe.decode import DLT_EN10MB
    from probe.pipeline import Pipeline
    from probe.report import association_json, record_json, tls_record


def frames(data: bytes):
    pos = 0
    while pos + 2 <= len(data):
        (n,) = struct.unpack_from(">H", data, pos)
        pos += 2
        yield data[pos : pos + n]
        pos += n


def _one(data: bytes, lane: bool):
    records = []
    pipe = Pipeline(on_association=lambda a: records.append(association_json(a)))
    pipe.on_tls = lambda r: records.append(record_json(tls_record(r)))  # DICOM over TLS (port 2762)
    dec = pipe.decoder(DLT_EN10MB)
    feed = pipe.callback(dec) if lane else partial(pipe.packet, dec)
    ts = 1_000_000.0
    for frame in frames(data):
        ts += 0.001
        feed(ts, frame)
    pipe.finish()
    return records, pipe.store.render()


def run_one(data: bytes) -> None:
    pure = _one(data, lane=False)
    if PL._lane is not None:  # differential: the compiled lane must give exactly the same
        lane = _one(data, lane=True)
        if lane != pure:
            raise AssertionError("probe._lane and the pure-Python path disagree on this input")


def main() -> None:
    atheris.Setup(sys.argv, run_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
