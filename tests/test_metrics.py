"""Metric families, the AE-title label policy, the exposition, and README's metric reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from probe.metrics import AE_EMPTY, AE_NOT_SEEN, AE_OVERFLOW, FAMILIES, AeLabeler, MetricStore

README = Path(__file__).parent.parent / "README.md"


def test_readme_documents_every_family_with_its_type_and_labels():
    text = README.read_text()
    for f in FAMILIES:
        labels = ", ".join(f"`{l}`" for l in f.labels) or "—"
        row = f"| `{f.name}` | {f.kind} | {labels} |"
        assert row in text, f"README lacks the row for {f.name}: {row}"
    documented = set(re.findall(r"^\| `(dicom_[a-z_]+)` \|", text, re.M))
    assert documented == {f.name for f in FAMILIES}


def test_names_follow_prometheus_conventions():
    for f in FAMILIES:
        assert f.name.startswith("dicom_")
        assert f.name.endswith("_total") == (f.kind == "counter"), f.name
        if f.kind == "histogram":
            assert f.name.endswith("_seconds")


@pytest.mark.parametrize("raw,label,invalid", [
    (b"PACS_MAIN       ", "PACS_MAIN", False),
    (b"  CT 1          ", "CT 1", False),  # inner spaces are significant
    (b"CT_REMOTE1\x00\x00\x00\x00\x00\x00", "CT_REMOTE1", False),  # NUL padding from some stacks
    (b"                ", AE_EMPTY, False),
    (b"", AE_EMPTY, False),
    (b"BAD\x07TITLE", "BAD%07TITLE", True),
    (b"BACK\\SLASH", "BACK%5CSLASH", True),
    (b"\xc3\xa9CHO", "%C3%A9CHO", True),
    (b"100%", "100%25", False),
    (b"(empty)", "%28empty)", False),  # cannot forge the fixed values
])
def test_ae_title_cleaning(raw, label, invalid):
    assert AeLabeler.clean(raw) == (label, invalid)


def test_labeler_counts_invalid_titles_and_caps_distinct_titles():
    lab = AeLabeler(max_titles=3)
    assert lab.label(None) == AE_NOT_SEEN
    assert [lab.label(b"A"), lab.label(b"B"), lab.label(b"C\x01")] == ["A", "B", "C%01"]
    assert lab.invalid == 1
    assert lab.label(b"D") == AE_OVERFLOW and lab.label(b"E") == AE_OVERFLOW
    assert lab.overflow == 2
    assert lab.label(b"A  ") == "A"  # known titles keep their label
    assert lab.label(b"  ") == AE_EMPTY  # the fixed value does not use up the cap


def test_labeler_aliases():
    lab = AeLabeler(aliases={"CT_OLD": "CT_NEW"})
    assert lab.label(b"CT_OLD") == "CT_NEW"


def test_junk_titles_never_break_the_exposition():
    store = MetricStore()
    lab = AeLabeler(max_titles=50)
    junk = [bytes([i, 0x22, 0x5C, 0x0A, 0x7B, 0x7D, 255 - i]) for i in range(256)]
    for raw in junk:
        store.inc("dicom_association_requests_total", (lab.label(raw), "PACS", "other"))
    text = store.render().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = fams["dicom_association_requests"].samples
    assert len(samples) == 51  # 50 titles + (overflow)
    assert sum(s.value for s in samples) == 256
    for s in samples:
        assert all(0x20 <= ord(ch) < 0x7F for ch in s.labels["calling_ae"])


def test_histogram_and_merge_are_additive():
    a, b = MetricStore(), MetricStore()
    a.observe("dicom_association_setup_seconds", ("PACS",), 0.003)
    b.observe("dicom_association_setup_seconds", ("PACS",), 45.0)
    b.inc("dicom_association_requests_total", ("CT", "PACS", "other"), 2)
    a.inc("dicom_association_requests_total", ("CT", "PACS", "other"))
    a.merge(b)
    assert a.get("dicom_association_requests_total", ("CT", "PACS", "other")) == 3
    fams = {f.name: f for f in text_string_to_metric_families(a.render().decode())}
    h = {(s.name, s.labels.get("le")): s.value for s in fams["dicom_association_setup_seconds"].samples}
    assert h[("dicom_association_setup_seconds_bucket", "0.0025")] == 0
    assert h[("dicom_association_setup_seconds_bucket", "0.005")] == 1
    assert h[("dicom_association_setup_seconds_bucket", "30.0")] == 1
    assert h[("dicom_association_setup_seconds_bucket", "+Inf")] == 2
    assert h[("dicom_association_setup_seconds_count", None)] == 2
    assert h[("dicom_association_setup_seconds_sum", None)] == pytest.approx(45.003)
