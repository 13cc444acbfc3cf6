"""Label safety (issue 6): a million distinct junk AE titles cannot blow up the series count, break
the exposition format or the JSON log."""

from __future__ import annotations

import json
import random

from prometheus_client.parser import text_string_to_metric_families

from probe.dicom import association as A
from probe.metrics import AE_OVERFLOW, AeLabeler, AssociationMetrics, MetricStore
from probe.report import association_json

N = 1_000_000
CAP = 500


def junk_titles(n: int):
    """Control bytes, 16-byte binary, UTF-8, spaces, quotes, backslashes, newlines: all distinct."""
    rng = random.Random(1)
    styles = [
        lambda i: bytes(rng.randrange(256) for _ in range(16)),
        lambda i: f"ÉCHO-{i}".encode()[:16],
        lambda i: b"A\x00\x01\x1b[31m" + str(i).encode(),
        lambda i: b' "\\\n{}' + str(i).encode(),
        lambda i: b"  SP " + str(i).encode() + b"  ",
    ]
    for i in range(n):
        yield styles[i % len(styles)](i)[:16].ljust(16, b"\x00") if i % 7 else styles[i % len(styles)](i)[:16]


def test_a_million_junk_titles_stay_under_the_cap():
    store, labeler = MetricStore(), AeLabeler(max_titles=CAP)
    sink = AssociationMetrics(store, labeler)
    seen = set()
    for raw in junk_titles(N):
        seen.add(raw)
        a = A.Association("198.19.1.21:40000", "198.18.0.10:104", calling_ae=raw, called_ae=b"PACS_MAIN")
        sink.handle(A.AssociationRequested(a))
    sink.sync_label_counters()
    series = store.values["dicom_association_requests_total"]
    callers = {labels[0] for labels in series}
    assert len(callers) <= CAP + 1 and AE_OVERFLOW in callers
    assert sum(series.values()) == N  # nothing lost: the rest is under (overflow)
    assert store.get("dicom_probe_ae_title_overflow_total") == series[(AE_OVERFLOW, "PACS_MAIN", "other")]
    assert store.get("dicom_probe_ae_titles_invalid_total") > 0
    assert len(labeler._cache) <= 4 * CAP and len(labeler._titles) <= CAP  # bounded memory
    text = store.render().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for s in fams["dicom_association_requests"].samples:
        assert all(0x20 <= ord(ch) < 0x7F for ch in s.labels["calling_ae"])


def test_junk_titles_never_break_a_json_line():
    for raw in junk_titles(5000):
        a = A.Association("198.19.1.21:40000", "198.18.0.10:104", calling_ae=raw, called_ae=raw, outcome="rejected")
        line = association_json(a)
        assert "\n" not in line and line.isascii()
        back = json.loads(line)
        assert back["calling_ae"] == AeLabeler.clean(raw)[0]
