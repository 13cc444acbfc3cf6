"""The HTML status page and incident report (probe.statuspage), on the real seed incident capture.

Stores come from the real pipeline over tests/fixtures/captures/seed_incident.pcap (50 rejections
of two remote CTs, 5 good stores of CT_LOCAL); hostile AE titles are put into hand-built stores.
The last tests render the pages in headless Chromium (skipped when /usr/bin/chromium is absent;
Debian package ``chromium``).
"""

from __future__ import annotations

import html
import re
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from probe import config
from probe.metrics import MetricStore
from probe.offline import analyze_files
from probe.report import association_record, pair_rows
from probe.statuspage import (MAX_BUCKETS, MIN_BUCKETS, _iso, render_report, render_status, site_pair_rows,
                              site_rows, time_buckets)

SEED = Path(__file__).parent / "fixtures" / "captures" / "seed_incident.pcap"
SITES = "sites: {remote-hospital: [198.19.1.0/24]}"
HEADLINE = "CT_REMOTE1 \u2192 PACS_MAIN: 40 rejected (calling-ae-title-not-recognized)"
EVIL = "<script>alert(1)</script>&\"'"
EVIL_REASON = "x\"><img src=x onerror=alert(2)>"
HEALTH = {"workers": 4, "workers_alive": 4, "capture_handles_open": 4, "last_packet_age_seconds": 0.4,
          "restarts": 0, "errors": 0}
CHROMIUM = "/usr/bin/chromium"


# -- a strict HTML checker -------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Element:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent = tag, dict(attrs), parent
        self.children: list = []  # Elements and str

    def text(self, skip=()) -> str:
        return "".join(c if isinstance(c, str) else "" if c.tag in skip else c.text(skip) for c in self.children)

    def iter(self, tag=None, **attrs):
        for c in self.children:
            if isinstance(c, Element):
                if (tag is None or c.tag == tag) and all(
                        (v in (c.attrs.get(k.rstrip("_")) or "").split()) if k == "class_" else c.attrs.get(k) == v
                        for k, v in attrs.items()):
                    yield c
                yield from c.iter(tag, **attrs)

    def cells(self) -> list[str]:
        """Cell texts, without the text of inline SVG (its <title> tooltip)."""
        return [" ".join(td.text(skip=("svg",)).split()) for td in self.children
                if isinstance(td, Element) and td.tag in ("td", "th")]


class StrictParser(HTMLParser):
    """Builds a tree; every non-void element must be closed, in order. Errors are collected."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", (), None)
        self.cur = self.root
        self.errors: list[str] = []
        self.doctype = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        el = Element(tag, attrs, self.cur)
        self.cur.children.append(el)
        if tag not in VOID:
            self.cur = el

    def handle_startendtag(self, tag, attrs):  # <rect .../> in SVG, <meta/>
        self.cur.children.append(Element(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append(f"end tag for void element </{tag}>")
        elif self.cur.tag != tag:
            self.errors.append(f"</{tag}> closes <{self.cur.tag}> at {self.getpos()}")
        else:
            self.cur = self.cur.parent

    def handle_data(self, data):
        self.cur.children.append(data)

    def close(self):
        super().close()
        if self.cur is not self.root:
            self.errors.append(f"unclosed <{self.cur.tag}>")


def parse(body: bytes) -> Element:
    text = body.decode("utf-8")
    p = StrictParser()
    p.feed(text)
    p.close()
    assert p.errors == [], p.errors[:5]
    assert p.doctype and p.doctype.lower() == "doctype html"
    roots = [c for c in p.root.children if isinstance(c, Element)]
    assert [r.tag for r in roots] == ["html"]
    html_el = roots[0]
    assert [c.tag for c in html_el.children if isinstance(c, Element)] == ["head", "body"]
    return html_el


def text_of(doc: Element) -> str:
    body = next(doc.iter("body"))
    return " ".join(body.text().split())


def pair_row(doc: Element, calling, called, site) -> Element:
    key = f"{calling}|{called}|{site}"
    rows = [tr for tr in doc.iter("tr") if tr.attrs.get("data-pair") == key]
    assert len(rows) == 1, key
    return rows[0]


def no_external(body: bytes) -> None:
    text = body.decode("utf-8")
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href|action|srcset)\s*=\s*["']?\s*(//|[a-z]+:)""", text, re.I)
    assert "<script" not in text.lower()
    assert "<link" not in text.lower() and "@import" not in text


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed():
    records = []
    pipe = analyze_files([str(SEED)], cfg=config.parse(SITES),
                         on_association=lambda a: records.append(association_record(a)))
    return pipe.store, records


@pytest.fixture(scope="module")
def now(seed):
    return max(r["end"] for r in seed[1]) + 30.0


@pytest.fixture(scope="module")
def status(seed, now):
    store, records = seed
    return render_status(store, records, HEALTH, now=now)


@pytest.fixture(scope="module")
def report(seed):
    store, records = seed
    return render_report(store, records, title="Seed incident", sources=[str(SEED)])


def evil_store() -> MetricStore:
    s = MetricStore()
    pair = (EVIL, "PACS<&>", "site\"'<x>")
    s.inc("dicom_association_requests_total", pair, 7)
    s.inc("dicom_association_rejects_total", pair + ("rejected-permanent", "service-user", EVIL_REASON), 6)
    s.inc("dicom_association_aborts_total", pair + ("acceptor", "service-provider", EVIL_REASON, "setup"), 1)
    s.inc("dicom_dimse_requests_total", pair + ("C-STORE",), 2)
    s.inc("dicom_dimse_responses_total", pair + ("C-STORE", "failure", "A7<0"), 2)
    s.inc("dicom_probe_pdu_errors_total", ("<b>bold</b>",), 1)
    return s


def evil_record() -> dict:
    return {"client": "<i>10.0.0.1</i>:1", "server": "x&y:104", "calling_ae": EVIL, "called_ae": "PACS<&>",
            "site": "site\"'<x>", "start": 1_700_000_000.0, "end": 1_700_000_000.5, "outcome": "rejected",
            "reject": {"result": "rejected-permanent", "source": "service-user", "reason": EVIL_REASON}}


# -- status page -----------------------------------------------------------------------------------


def test_status_head_title_refresh(status):
    doc = parse(status)
    head = next(doc.iter("head"))
    assert next(head.iter("title")).text() == "dicom-probe"
    metas = [m.attrs for m in head.iter("meta")]
    assert {"http-equiv": "refresh", "content": "10"} in metas
    assert any(m.get("charset") == "utf-8" for m in metas)
    assert any(m.get("http-equiv") == "Content-Security-Policy" and "default-src 'none'" in m["content"]
               for m in metas)
    no_external(status)


def test_status_headline_first_and_red(status):
    doc = parse(status)
    alerts = list(doc.iter("li", class_="alert"))
    assert " ".join(alerts[0].text().split()).startswith(HEADLINE)
    assert "warn" not in alerts[0].attrs["class"].split()  # red, not amber
    assert " ".join(alerts[1].text().split()).startswith(
        "CT_REMOTE2 \u2192 PACS_MAIN: 10 rejected (calling-ae-title-not-recognized)")
    assert len(alerts) == 2  # CT_LOCAL is fine
    text = text_of(doc)
    assert text.index(HEADLINE) < text.index("AE pairs Calling AE") < text.index("Sites Site")
    assert ".alert{color:var(--bad)" in status.decode() and "--bad:#c62828" in status.decode()


def test_status_pair_table(status):
    doc = parse(status)
    table = next(doc.iter("table", class_="pairs"))
    header = next(table.iter("tr")).cells()
    assert header[:10] == ["Calling AE", "Called AE", "Site", "Requests", "Accepted", "Rejected", "Reject %",
                           "Top reject reason", "Aborts", "No response"]
    assert "Last seen" in header
    rows = [tr for tr in table.iter("tr") if "data-pair" in tr.attrs]
    assert [r.attrs["data-pair"] for r in rows] == [  # worst first
        "CT_REMOTE1|PACS_MAIN|remote-hospital", "CT_REMOTE2|PACS_MAIN|remote-hospital", "CT_LOCAL|PACS_MAIN|other"]
    c = rows[0].cells()
    assert c[:9] == ["CT_REMOTE1", "PACS_MAIN", "remote-hospital", "40", "0", "40", "100.0%",
                     "calling-ae-title-not-recognized", "0"]
    assert rows[0].attrs["class"] == "bad" and rows[1].attrs["class"] == "bad"
    assert "class" not in rows[2].attrs
    assert rows[2].cells()[:9] == ["CT_LOCAL", "PACS_MAIN", "other", "5", "5", "0", "0.0%", "", "0"]
    # the reject % bar: an inline SVG whose red bar is the full width
    svg = next(rows[0].iter("svg", class_="rbar"))
    assert svg.attrs["aria-label"] == "reject 100.0%"
    # last seen: an age relative to `now` (30 s after the last association), the UTC time as tooltip
    assert c[header.index("Last seen")].endswith("s ago")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
                        next(rows[0].iter("span")).attrs["title"])


def test_status_site_table(status):
    doc = parse(status)
    table = next(doc.iter("table", class_="sites"))
    rows = {tr.attrs["data-site"]: tr for tr in table.iter("tr") if "data-site" in tr.attrs}
    assert list(rows) == ["remote-hospital", "other"]
    remote = rows["remote-hospital"].cells()
    # site, AE pairs, calling AEs, requests, accepted, rejected, reject %, top reason, aborts
    assert remote[:9] == ["remote-hospital", "2", "2", "50", "0", "50", "100.0%",
                          "calling-ae-title-not-recognized", "0"]
    assert rows["remote-hospital"].attrs["class"] == "bad"
    assert rows["other"].cells()[:7] == ["other", "1", "1", "5", "5", "0", "0.0%"]


def test_status_recent_failures_newest_first(seed, now):
    store, records = seed
    doubled = [dict(r, start=r["start"] - 100, end=r["end"] - 100) for r in records] + list(records)
    doc = parse(render_status(store, doubled, HEALTH, now=now))
    table = next(doc.iter("table", class_="failed"))
    rows = [tr for tr in table.iter("tr") if tr.attrs.get("class") in ("bad", "warn")]
    assert len(rows) == 50  # of 100 failed
    times = [r.cells()[0] for r in rows]
    assert times == sorted(times, reverse=True)
    newest = max((r for r in records if r["outcome"] == "rejected"), key=lambda r: r["start"])
    first = rows[0].cells()
    assert first[1:7] == [newest["client"], newest["server"], newest["calling_ae"], newest["called_ae"],
                          "remote-hospital", "rejected"]
    assert first[7] == "calling-ae-title-not-recognized (rejected-permanent, service-user)"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first[0])
    assert "Showing the newest 50 of 100." in text_of(doc)
    assert all("released" not in r.cells() for r in rows)


def test_status_health(seed, now, status):
    doc = parse(status)
    text = text_of(doc)
    packets = int(sum(seed[0].values["dicom_probe_packets_total"].values()))
    assert packets > 100
    for expect in ("probe healthy", f"Packets {packets:,}", "Workers alive 4 / 4", "Worker restarts 0",
                   "Last packet 0.4 s ago", "Kernel drops 0", "Stream gaps 0", "PDU parse errors 0"):
        assert expect in text, expect
    sick = render_status(seed[0], seed[1], dict(HEALTH, workers_alive=3, restarts=2,
                                                last_packet_age_seconds=None), now=now)
    doc = parse(sick)
    text = text_of(doc)
    assert "probe unhealthy" in text and "Workers alive 3 / 4" in text and "Last packet none yet" in text
    cards = {" ".join(d.text().split()): d.attrs.get("class") for d in next(doc.iter("div", class_="kv")).children
             if not isinstance(d, str)}
    assert cards["Workers alive 3 / 4"] == "bad" and cards["Worker restarts 2"] == "warn"


def test_status_sparklines(seed, now):
    store, records = seed
    t0 = now - 600
    history = {
        ("CT_REMOTE1", "PACS_MAIN"): [(t0 + 60 * i, 4 * i, 4 * i) for i in range(11)],  # cumulative
        ("CT_LOCAL", "PACS_MAIN", "other"): [(t0 + 60 * i, i // 2, 0) for i in range(11)],
    }
    doc = parse(render_status(store, records, HEALTH, now=now, history=history))
    header = next(next(doc.iter("table", class_="pairs")).iter("tr")).cells()
    assert header[-1].startswith("Trend")
    remote = pair_row(doc, "CT_REMOTE1", "PACS_MAIN", "remote-hospital")
    spark = next(remote.iter("svg", class_="spark"))
    assert spark.attrs["aria-label"].startswith("40 requests, 40 rejected")  # 10 increases of 4
    assert len(next(spark.iter("polyline")).attrs["points"].split()) == 10
    assert list(pair_row(doc, "CT_LOCAL", "PACS_MAIN", "other").iter("svg", class_="spark"))
    assert not list(pair_row(doc, "CT_REMOTE2", "PACS_MAIN", "remote-hospital").iter("svg", class_="spark"))
    # without history: no trend column at all
    plain = parse(render_status(store, records, HEALTH, now=now))
    assert not list(plain.iter("svg", class_="spark"))


def test_status_empty_store():
    body = render_status(MetricStore(), [], {}, now=1_700_000_000.0)
    doc = parse(body)
    text = text_of(doc)
    assert "No DICOM associations seen yet." in text
    assert "No rejected or aborted associations." in text
    no_external(body)


def test_status_all_good_banner(now):
    s = MetricStore()
    s.inc("dicom_association_requests_total", ("CT_LOCAL", "PACS_MAIN", "other"), 5)
    s.inc("dicom_association_accepts_total", ("CT_LOCAL", "PACS_MAIN", "other"), 5)
    text = text_of(parse(render_status(s, [], HEALTH, now=now)))
    assert "All 1 AE pair OK" in text and "failing" not in text


# -- escaping --------------------------------------------------------------------------------------


def test_hostile_labels_are_escaped_on_status_page():
    body = render_status(evil_store(), [evil_record()], {"note": "<b>x</b>", **HEALTH}, now=1_700_000_100.0)
    text = body.decode("utf-8")
    for raw in (EVIL, EVIL_REASON, "PACS<&>", "<i>10.0.0.1</i>", "<b>bold</b>", "<b>x</b>", "site\"'<x>"):
        assert raw not in text, raw
    assert html.escape(EVIL, quote=True) in text
    doc = parse(body)  # still well-formed: nothing broke out of its element or attribute
    assert not list(doc.iter("script")) and not list(doc.iter("img")) and not list(doc.iter("i"))
    assert not [b for b in doc.iter("b")]
    page = text_of(doc)
    # the round trip gives back the exact labels, as text
    assert f"{EVIL} \u2192 PACS<&>: 6 rejected ({EVIL_REASON}); 1 aborted ({EVIL_REASON})" in page
    row = pair_row(doc, EVIL, "PACS<&>", "site\"'<x>")
    assert row.cells()[:6] == [EVIL, "PACS<&>", "site\"'<x>", "7", "0", "6"]
    failed = [tr.cells() for tr in next(doc.iter("table", class_="failed")).iter("tr", class_="bad")]
    assert failed[0][1:5] == ["<i>10.0.0.1</i>:1", "x&y:104", EVIL, "PACS<&>"]
    no_external(body)


def test_hostile_labels_are_escaped_in_report():
    title = "Ticket <b>#1</b> & \"quotes\""
    sources = ["/tmp/<script>x</script>.pcap", "a&b's.pcapng"]
    body = render_report(evil_store(), [evil_record()], title=title, sources=sources)
    text = body.decode("utf-8")
    for raw in (EVIL, EVIL_REASON, title, sources[0], "A7<0"):
        assert raw not in text, raw
    doc = parse(body)
    assert next(doc.iter("title")).text() == title
    assert not list(doc.iter("script")) and not list(doc.iter("img"))
    page = text_of(doc)
    for s in sources:
        assert s in page
    dimse = next(doc.iter("table", class_="dimse"))
    assert [tr.cells() for tr in dimse.iter("tr")][1][:6] == [EVIL, "PACS<&>", "C-STORE", "2", "2", "A7<0x2"]
    reasons = next(doc.iter("table", class_="reasons"))
    assert [tr.cells() for tr in reasons.iter("tr")][1][:4] == [EVIL_REASON, "rejected-permanent", "service-user", "6"]
    no_external(body)


# -- report ----------------------------------------------------------------------------------------


def test_report_structure_and_metadata(seed, report):
    store, records = seed
    doc = parse(report)
    no_external(report)
    assert next(doc.iter("title")).text() == "Seed incident"
    assert not [m for m in doc.iter("meta") if m.attrs.get("http-equiv") == "refresh"]
    meta = {tr.cells()[0]: tr.cells()[1] for tr in next(doc.iter("table", class_="meta")).iter("tr")}
    assert str(SEED) in meta["Capture files"]
    first = min(r["start"] for r in records)
    last = max(r["end"] for r in records)
    assert meta["Time range (UTC)"].startswith(f"{_iso(first)} \u2013 {_iso(last)}")
    assert meta["Associations"] == "55 (50 rejected, 5 released)"
    text = text_of(doc)
    assert HEADLINE in text
    assert text.index(HEADLINE) < text.index("Outcomes over time")


def test_report_tables(report):
    doc = parse(report)
    row = pair_row(doc, "CT_REMOTE1", "PACS_MAIN", "remote-hospital")
    assert row.cells()[:8] == ["CT_REMOTE1", "PACS_MAIN", "remote-hospital", "40", "0", "40", "100.0%",
                               "calling-ae-title-not-recognized"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row.cells()[-1])  # last seen, absolute
    sites = {tr.attrs["data-site"]: tr.cells() for tr in next(doc.iter("table", class_="sites")).iter("tr")
             if "data-site" in tr.attrs}
    assert sites["remote-hospital"][3:6] == ["50", "0", "50"]
    reasons = [tr.cells() for tr in next(doc.iter("table", class_="reasons")).iter("tr")]
    assert reasons[1][:4] == ["calling-ae-title-not-recognized", "rejected-permanent", "service-user", "50"]
    assert "CT_REMOTE1 \u2192 PACS_MAIN" in reasons[1][4] and "CT_REMOTE2 \u2192 PACS_MAIN" in reasons[1][4]
    assert "No A-ABORT seen." in text_of(doc)
    dimse = [tr.cells() for tr in next(doc.iter("table", class_="dimse")).iter("tr")]
    assert dimse[0] == ["Calling AE", "Called AE", "Command", "Requests", "Failed", "Top failure status",
                        "p50 ms", "p95 ms"]
    assert dimse[1][:5] == ["CT_LOCAL", "PACS_MAIN", "C-STORE", "5", "0"]
    failed = [tr for tr in next(doc.iter("table", class_="failed")).iter("tr") if tr.attrs.get("class")]
    assert len(failed) == 50
    times = [tr.cells()[0] for tr in failed]
    assert times == sorted(times)  # the report reads chronologically


def test_report_time_axis(seed, report):
    store, records = seed
    doc = parse(report)
    svg = next(doc.iter("svg", class_="timeline"))
    n = int(svg.attrs["data-buckets"])
    width, origin = float(svg.attrs["data-width"]), float(svg.attrs["data-origin"])
    buckets = list(svg.iter("g", class_="bucket"))
    assert 20 <= n <= 60 and len(buckets) == n
    starts = [r["start"] for r in records]
    assert (origin, width, n) == time_buckets(starts)
    assert origin <= min(starts) and max(starts) < origin + n * width
    for i, g in enumerate(buckets):  # contiguous, in order
        assert float(g.attrs["data-start"]) == pytest.approx(origin + i * width)
    segs = list(svg.iter("rect", class_="seg"))
    assert sum(int(r.attrs["data-count"]) for r in segs) == len(records) == 55
    by_outcome: dict = {}
    for r in segs:
        by_outcome[r.attrs["data-outcome"]] = by_outcome.get(r.attrs["data-outcome"], 0) + int(r.attrs["data-count"])
    assert by_outcome == {"rejected": 50, "released": 5}
    for i, g in enumerate(buckets):  # each bucket holds exactly the records that started in it
        lo, hi = origin + i * width, origin + (i + 1) * width
        expect = sum(1 for t in starts if lo <= t < hi)
        assert sum(int(r.attrs["data-count"]) for r in g.iter("rect")) == int(g.attrs["data-total"]) == expect
    assert "released 5" in text_of(doc) and "rejected 50" in text_of(doc)


@pytest.mark.parametrize("span", [0.0, 0.004, 3.1, 59, 61, 3600, 86400 * 3, 86400 * 800])
def test_time_buckets_bounds(span):
    t0 = 1_796_402_555.736
    origin, width, n = time_buckets([t0, t0 + span])
    assert MIN_BUCKETS <= n <= MAX_BUCKETS
    assert origin <= t0 and t0 + span < origin + n * width
    assert (origin / width) == pytest.approx(round(origin / width))


def test_report_without_records():
    body = render_report(MetricStore(), [], title="empty", sources=[])
    text = text_of(parse(body))
    assert "No association times to chart." in text and "no associations" in text


# -- rows ------------------------------------------------------------------------------------------


def test_site_pair_rows_agree_with_pair_rows(seed):
    store = seed[0]
    rows = site_pair_rows(store)
    for p in pair_rows(store):
        mine = [r for r in rows if (r["calling_ae"], r["called_ae"]) == (p["calling_ae"], p["called_ae"])]
        for k in ("requests", "accepted", "rejected", "aborts", "releases", "no_response", "closed_without_release"):
            assert sum(r[k] for r in mine) == p[k]
    sites = {s["site"]: s for s in site_rows(rows)}
    assert sites["remote-hospital"]["requests"] == 50 and sites["other"]["requests"] == 5


# -- headless Chromium -----------------------------------------------------------------------------


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _png_rows(data: bytes, nrows: int) -> tuple[int, list[bytes]]:
    """(bytes per pixel, the first ``nrows`` unfiltered rows) of an 8-bit RGB/RGBA PNG."""
    width, _ = _png_size(data)
    depth, color = data[24], data[25]
    assert depth == 8 and color in (2, 6), (depth, color)
    bpp = 3 if color == 2 else 4
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    stride = width * bpp
    raw = zlib.decompressobj().decompress(idat, (stride + 1) * nrows)
    rows, prev = [], bytearray(stride)
    for y in range(nrows):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return bpp, rows


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         *args], capture_output=True, timeout=180, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})


needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="headless browser test: /usr/bin/chromium absent (Debian package chromium)")


@pytest.fixture(scope="module")
def browser_store(seed):
    s = MetricStore()
    s.merge(seed[0])
    s.inc("dicom_association_requests_total", (EVIL, "PACS_MAIN", "other"), 1)
    s.inc("dicom_association_accepts_total", (EVIL, "PACS_MAIN", "other"), 1)
    s.inc("dicom_association_releases_total", (EVIL, "PACS_MAIN", "other"), 1)
    return s


@needs_chromium
def test_status_page_in_chromium(tmp_path, browser_store, seed, now):
    page = tmp_path / "status.html"
    page.write_bytes(render_status(browser_store, seed[1], HEALTH, now=now))
    shot = tmp_path / "shot.png"
    r = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,1000", page.as_uri())
    assert shot.exists(), r.stderr.decode(errors="replace")[-2000:]
    data = shot.read_bytes()
    assert len(data) > 10_000
    assert _png_size(data) == (1400, 1000)
    # the red banner is at the top: strongly red pixels within the first 300 rows
    bpp, rows = _png_rows(data, 300)
    red = sum(1 for row in rows for i in range(0, len(row), bpp)
              if row[i] > 170 and row[i + 1] < 90 and row[i + 2] < 90)
    assert red > 2000, red

    r = _chromium(tmp_path, "--dump-dom", page.as_uri())
    dom = r.stdout.decode("utf-8")
    assert r.returncode == 0 and "</html>" in dom, r.stderr.decode(errors="replace")[-2000:]
    doc = parse_dom(dom)
    assert HEADLINE in text_of(doc)
    row = pair_row(doc, "CT_REMOTE1", "PACS_MAIN", "remote-hospital")
    assert row.cells()[:8] == ["CT_REMOTE1", "PACS_MAIN", "remote-hospital", "40", "0", "40", "100.0%",
                               "calling-ae-title-not-recognized"]
    assert pair_row(doc, EVIL, "PACS_MAIN", "other").cells()[0] == EVIL  # shown as text...
    assert "<script" not in dom  # ...and never became an element


@needs_chromium
def test_report_in_chromium(tmp_path, seed):
    store, records = seed
    page = tmp_path / "report.html"
    page.write_bytes(render_report(store, records, title="Seed incident", sources=[str(SEED)]))
    shot = tmp_path / "shot.png"
    r = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,1000", page.as_uri())
    assert shot.exists(), r.stderr.decode(errors="replace")[-2000:]
    data = shot.read_bytes()
    assert len(data) > 10_000 and _png_size(data) == (1400, 1000)
    r = _chromium(tmp_path, "--dump-dom", page.as_uri())
    doc = parse_dom(r.stdout.decode("utf-8"))
    svg = next(doc.iter("svg", class_="timeline"))
    assert len(list(svg.iter("g", class_="bucket"))) == int(svg.attrs["data-buckets"])
    assert sum(int(x.attrs["data-count"]) for x in svg.iter("rect", class_="seg")) == 55
    assert pair_row(doc, "CT_REMOTE1", "PACS_MAIN", "remote-hospital").cells()[5] == "40"


def parse_dom(dom: str) -> Element:
    """Chromium's serialised DOM: the same tree checks, lenient on the doctype and void-tag spelling."""
    p = StrictParser()
    p.feed(dom)
    p.close()
    assert p.errors == [], p.errors[:5]
    return next(c for c in p.root.children if isinstance(c, Element) and c.tag == "html")



def test_status_last_seen_of_healthy_pairs_comes_from_seen(seed, now):
    """The daemon keeps only failures as `recent`; each pair's newest record comes as `seen`, so a
    healthy pair has a last-seen time too (and is not listed as a failure)."""
    store, records = seed
    failures = [r for r in records if r["outcome"] in ("rejected", "aborted")]
    healthy = [r for r in records if r["outcome"] == "released"]
    without = parse(render_status(store, failures, HEALTH, now=now))
    with_seen = parse(render_status(store, failures, HEALTH, now=now, seen=healthy[-1:]))

    def local_row(doc):
        table = next(doc.iter("table", class_="pairs"))
        header = next(table.iter("tr")).cells()
        row = next(tr for tr in table.iter("tr") if tr.attrs.get("data-pair") == "CT_LOCAL|PACS_MAIN|other")
        return row.cells()[header.index("Last seen")]

    assert local_row(without) == "-" or not local_row(without).endswith("ago")
    assert local_row(with_seen).endswith("s ago")
    failed = next(with_seen.iter("table", class_="failed"))
    assert "CT_LOCAL" not in " ".join(failed.text().split())
