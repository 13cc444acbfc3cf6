"""Server-rendered HTML: the daemon's status page and the self-contained incident report.

Standard library only, no external assets: the CSS is inline, the charts are inline SVG, there is
no JavaScript, and a Content-Security-Policy ``<meta>`` forbids scripts and every remote load, so a
page saved to disk or attached to a ticket renders the same anywhere. Every value that comes from
the network — AE titles, reasons, addresses, sites, file names — goes through :func:`_e`
(``html.escape`` with quotes): AE titles may legally contain ``<``, ``&`` and quotes.

- :func:`render_status` — the page served at ``/`` for users without Grafana (auto-refresh 10 s).
- :func:`render_report` — ``analyze --format html``: one file a PACS team can attach to a ticket.

Both are computed from the metric store (the numbers the daemon exports), like the text table in
:mod:`probe.report`; association records only add times (last seen, recent failures, time axis).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from datetime import datetime, timezone

from . import __version__
from .metrics import MetricStore
from .report import ResponseTimes, dimse_rows, pair_rows, tls_rows

RECENT_MAX = 50          # failed associations listed on the status page
REPORT_FAILED_MAX = 200  # failed associations listed in the report
ALERTS_MAX = 12          # pairs named in the red banner
MIN_BUCKETS, MAX_BUCKETS = 20, 60

# Outcomes, stacked bottom (good) to top (bad) in the time chart.
OUTCOME_COLORS = {
    "released": "#2e7d32",
    "ended-without-release": "#f9a825",
    "incomplete": "#9e9e9e",
    "no-response": "#6a1b9a",
    "aborted": "#ef6c00",
    "rejected": "#c62828",
}
OTHER_COLOR = "#455a64"
FAILED_OUTCOMES = ("rejected", "aborted")

# Bucket widths for the time axis (seconds); consecutive ratios <= 2.5, so the chosen one always
# gives between 24 and 60 buckets once the capture spans more than a few milliseconds.
_NICE_WIDTHS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600,
                900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 432000, 864000, 1728000, 4320000,
                8640000, 17280000, 43200000)

_CSS = """
:root{--bad:#c62828;--badbg:#fdecea;--warn:#ef6c00;--warnbg:#fff4e5;--ok:#2e7d32;--okbg:#edf7ed;
--fg:#1f2328;--muted:#59636e;--line:#d0d7de;--head:#f6f8fa}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:var(--fg);
margin:0;padding:12px 18px;background:#fff}
.scroll{overflow-x:auto;max-width:100%}
header{display:flex;align-items:baseline;gap:16px;flex-wrap:wrap;border-bottom:2px solid var(--line);
padding-bottom:8px;margin-bottom:12px}
h1{font-size:22px;margin:0}
h2{font-size:17px;margin:22px 0 8px}
.muted{color:var(--muted)}
.alerts{border:2px solid var(--bad);background:var(--badbg);border-radius:6px;padding:10px 14px;margin:8px 0 14px}
.alerts h2{margin:0 0 6px;color:var(--bad)}
.alerts ul{margin:0;padding-left:20px}
.alert{color:var(--bad);font-size:17px;font-weight:600}
.alert.warn{color:var(--warn)}
.allgood{border:2px solid var(--ok);background:var(--okbg);color:var(--ok);border-radius:6px;padding:10px 14px;
font-size:16px;font-weight:600;margin:8px 0 14px}
.empty{border:2px dashed var(--line);border-radius:6px;padding:10px 14px;color:var(--muted);margin:8px 0 14px}
table{border-collapse:collapse;margin:4px 0 8px}
th,td{border:1px solid var(--line);padding:3px 6px;text-align:left;vertical-align:middle}
table.pairs,table.sites,table.failed,table.dimse{font-size:13px}
th{background:var(--head);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.ae,td.txt{white-space:nowrap}
td.wrap{overflow-wrap:anywhere;max-width:34em}
td.reason{min-width:10em}
tr.bad td{background:var(--badbg)}
tr.bad td.hot{color:var(--bad);font-weight:700}
tr.warn td{background:var(--warnbg)}
tr.warn td.hot{color:var(--warn);font-weight:700}
td.nowrap{white-space:nowrap}
svg{vertical-align:middle}
svg.timeline{max-width:100%;height:auto}
.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:6px;margin:4px 0 8px}
.kv div{border:1px solid var(--line);border-radius:4px;padding:4px 8px}
.kv .k{display:block;color:var(--muted);font-size:12px}
.kv .v{font-size:16px;font-weight:600;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
.kv .bad{border-color:var(--bad);background:var(--badbg)}
.kv .bad .v{color:var(--bad)}
.kv .warn{border-color:var(--warn);background:var(--warnbg)}
.kv .warn .v{color:var(--warn)}
.legend span{display:inline-block;margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
footer{margin-top:24px;border-top:1px solid var(--line);padding-top:6px;color:var(--muted);font-size:12px}
code{font-size:13px}
h3{font-size:15px;margin:14px 0 6px}
.badge{border-radius:10px;padding:1px 10px;font-size:13px;font-weight:600;border:1px solid}
.badge.ok{color:var(--ok);background:var(--okbg);border-color:var(--ok)}
.badge.bad{color:var(--bad);background:var(--badbg);border-color:var(--bad)}
table.meta th{text-align:left;vertical-align:top}
"""

# No scripts, nothing fetched: inline styles only; SVG is inline markup, not an image.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


# -- small helpers -------------------------------------------------------------------------------


def _e(value) -> str:
    """HTML-escape any value for text and (double- or single-quoted) attribute context."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(v) -> str:
    if isinstance(v, bool) or v is None:
        return _e(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return _e(v)
        if v.is_integer():
            v = int(v)
        else:
            return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return _e(v)


def _pct(p: float) -> str:
    return f"{p:.1f}%"


def _iso(t: float | None, ms: bool = True) -> str:
    if t is None:
        return "-"
    try:
        dt = datetime.fromtimestamp(float(t), timezone.utc)
    except (OverflowError, OSError, ValueError, TypeError):
        return _e(t)
    return dt.isoformat(timespec="milliseconds" if ms else "seconds").replace("+00:00", "Z")


def _age(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _ae(title) -> str:
    """AE title of a record: None when the RQ was not seen (the store says (not-seen))."""
    return "(not-seen)" if title is None else str(title)


def _rec_time(rec: dict) -> float | None:
    t = rec.get("start")
    if t is None:
        t = rec.get("end")
    return t if isinstance(t, (int, float)) and math.isfinite(t) else None


def _top(counts: dict) -> str:
    return max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0] if counts else ""


def _reason_of(rec: dict) -> str:
    rj = rec.get("reject")
    if isinstance(rj, dict):
        return f"{rj.get('reason')} ({rj.get('result')}, {rj.get('source')})"
    ab = rec.get("abort")
    if isinstance(ab, dict):
        return f"{ab.get('reason')} (by {ab.get('by')}, {ab.get('source')}, {ab.get('phase')})"
    return ""


def _table(head: list[tuple[str, bool]], body: list[str], cls: str = "") -> str:
    """``head``: (label, numeric); ``body``: ready ``<tr>`` rows."""
    ths = "".join(f'<th class="num">{_e(h)}</th>' if num else f"<th>{_e(h)}</th>" for h, num in head)
    c = f' class="{cls}"' if cls else ""
    return (f'<div class="scroll"><table{c}><thead><tr>{ths}</tr></thead><tbody>\n' + "\n".join(body)
            + "\n</tbody></table></div>\n")


def _td(value, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<td{c}>{value}</td>"


# -- rows from the store -------------------------------------------------------------------------


def site_pair_rows(store: MetricStore) -> list[dict]:
    """One row per (calling AE, called AE, site) — the PAIR labels — worst first.

    Same columns and order as :func:`probe.report.pair_rows`, plus ``site``, per-reason abort counts
    (``abort_reasons``) and ``failures`` (aborts + no response + closed without release)."""
    rows: dict[tuple, dict] = {}

    def row(labels):
        key = tuple(labels[:3])
        r = rows.get(key)
        if r is None:
            r = rows[key] = {
                "calling_ae": key[0], "called_ae": key[1], "site": key[2], "requests": 0, "accepted": 0,
                "rejected": 0, "aborts": 0, "releases": 0, "no_response": 0, "closed_without_release": 0,
                "reasons": {}, "abort_reasons": {},
            }
        return r

    v = store.values
    for fam, col in (("dicom_association_requests_total", "requests"),
                     ("dicom_association_accepts_total", "accepted"),
                     ("dicom_association_releases_total", "releases"),
                     ("dicom_association_no_response_total", "no_response"),
                     ("dicom_association_closed_without_release_total", "closed_without_release")):
        for labels, n in v[fam].items():
            row(labels)[col] += n
    for labels, n in v["dicom_association_rejects_total"].items():
        r = row(labels)
        r["rejected"] += n
        r["reasons"][labels[5]] = r["reasons"].get(labels[5], 0) + n
    for labels, n in v["dicom_association_aborts_total"].items():
        r = row(labels)
        r["aborts"] += n
        r["abort_reasons"][labels[5]] = r["abort_reasons"].get(labels[5], 0) + n
    return _finish_rows(rows.values(), ("calling_ae", "called_ae", "site"))


def site_rows(rows: Iterable[dict]) -> list[dict]:
    """Per-site sums of :func:`site_pair_rows`, worst first; ``pairs`` counts the AE pairs."""
    sites: dict[str, dict] = {}
    for r in rows:
        s = sites.get(r["site"])
        if s is None:
            s = sites[r["site"]] = {"site": r["site"], "pairs": 0, "requests": 0, "accepted": 0, "rejected": 0,
                                    "aborts": 0, "releases": 0, "no_response": 0, "closed_without_release": 0,
                                    "reasons": {}, "abort_reasons": {}, "calling": set()}
        s["pairs"] += 1
        s["calling"].add(r["calling_ae"])
        for k in ("requests", "accepted", "rejected", "aborts", "releases", "no_response", "closed_without_release"):
            s[k] += r[k]
        for k in ("reasons", "abort_reasons"):
            for reason, n in r[k].items():
                s[k][reason] = s[k].get(reason, 0) + n
    for s in sites.values():
        s["calling_aes"] = len(s.pop("calling"))
    return _finish_rows(sites.values(), ("site",))


def _finish_rows(rows: Iterable[dict], names: tuple[str, ...]) -> list[dict]:
    out = []
    for r in rows:
        answered = r["accepted"] + r["rejected"]
        r["reject_pct"] = 100.0 * r["rejected"] / answered if answered else None
        r["top_reason"] = _top(r["reasons"])
        r["top_abort_reason"] = _top(r["abort_reasons"])
        r["failures"] = r["aborts"] + r["no_response"] + r["closed_without_release"]
        out.append(r)
    out.sort(key=lambda r: (-r["rejected"], -r["failures"], -(r["reject_pct"] or 0.0), -r["requests"],
                            *(str(r[n]) for n in names)))
    return out


def _level(r: dict) -> str:
    if r["rejected"]:
        return "bad"
    if r["aborts"] or r["no_response"]:
        return "warn"
    return ""


def _alerts(store: MetricStore) -> tuple[list[tuple[str, str]], int]:
    """(level, HTML line) per failing AE pair (summed over sites), worst first; and the pair count."""
    aborts: dict[tuple, dict] = {}
    for labels, n in store.values["dicom_association_aborts_total"].items():
        d = aborts.setdefault((labels[0], labels[1]), {})
        d[labels[5]] = d.get(labels[5], 0) + n
    rows = pair_rows(store)
    lines = []
    for r in rows:
        parts = []
        if r["rejected"]:
            parts.append(f"{_num(r['rejected'])} rejected ({_e(r['top_reason'])})")
        if r["aborts"]:
            parts.append(f"{_num(r['aborts'])} aborted ({_e(_top(aborts.get((r['calling_ae'], r['called_ae']), {})))})")
        if r["no_response"]:
            parts.append(f"{_num(r['no_response'])} unanswered")
        if not parts:
            continue
        level = "bad" if r["rejected"] else "warn"
        of = f' <span class="muted">of {_num(r["requests"])} requests</span>'
        lines.append((level, f"{_e(r['calling_ae'])} \u2192 {_e(r['called_ae'])}: " + "; ".join(parts) + of))
    return lines, len(rows)


def _alert_block(store: MetricStore) -> str:
    lines, npairs = _alerts(store)
    if not npairs:
        return '<div class="empty">No DICOM associations seen yet.</div>\n'
    if not lines:
        return (f'<div class="allgood">All {npairs} AE pair{"s" if npairs != 1 else ""} OK: '
                "no rejects, aborts or unanswered requests.</div>\n")
    items = "".join(f'<li class="alert {"warn" if lvl == "warn" else ""}">{text}</li>\n'
                    for lvl, text in lines[:ALERTS_MAX])
    more = (f'<p class="muted">… and {len(lines) - ALERTS_MAX} more failing AE pairs below.</p>'
            if len(lines) > ALERTS_MAX else "")
    n = len(lines)
    return (f'<section class="alerts"><h2>{n} AE pair{"s" if n != 1 else ""} failing</h2>\n'
            f"<ul>\n{items}</ul>{more}</section>\n")


# -- SVG pieces ----------------------------------------------------------------------------------


def _reject_bar(pct: float | None) -> str:
    if pct is None:
        return '<span class="muted">-</span>'
    w = max(0.0, min(100.0, pct))
    color = "#c62828" if pct > 0 else "#2e7d32"
    return (f'<svg class="rbar" width="64" height="14" viewBox="0 0 64 14" role="img" '
            f'aria-label="reject {pct:.1f}%"><title>reject {pct:.1f}%</title>'
            f'<rect x="2" y="2" width="60" height="10" fill="#e8eaed"/>'
            f'<rect x="2" y="2" width="{0.6 * w:.1f}" height="10" fill="{color}"/></svg> {_pct(pct)}')


def _deltas(samples) -> list[tuple[float, float, float]]:
    """(time, requests, rejects) increases between cumulative samples; a decrease is a counter reset."""
    pts = []
    try:
        ordered = sorted((float(t), float(q), float(j)) for t, q, j in samples)
    except (TypeError, ValueError):
        return []
    for (_, q0, j0), (t1, q1, j1) in zip(ordered, ordered[1:]):
        pts.append((t1, q1 - q0 if q1 >= q0 else q1, j1 - j0 if j1 >= j0 else j1))
    return [p for p in pts if all(math.isfinite(x) for x in p)]


def _sparkline(samples, t0: float, t1: float) -> str:
    pts = _deltas(samples)
    if len(pts) < 2:  # two increases at least, i.e. three samples
        return '<span class="muted">-</span>'
    W, H = 96, 24
    top = max(max(q, j) for _, q, j in pts) or 1.0
    span = (t1 - t0) or 1.0

    def xy(p, idx):
        return f"{1 + (W - 2) * (p[0] - t0) / span:.1f},{H - 2 - (H - 4) * p[idx] / top:.1f}"

    x_first, x_last = 1 + (W - 2) * (pts[0][0] - t0) / span, 1 + (W - 2) * (pts[-1][0] - t0) / span
    area = f"{x_first:.1f},{H - 2} " + " ".join(xy(p, 1) for p in pts) + f" {x_last:.1f},{H - 2}"
    rejects = " ".join(xy(p, 2) for p in pts)
    req, rej = sum(p[1] for p in pts), sum(p[2] for p in pts)
    label = f"{_num(req)} requests, {_num(rej)} rejected from {_iso(t0, ms=False)} to {_iso(pts[-1][0], ms=False)}"
    return (f'<svg class="spark" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{label}">'
            f"<title>{label}</title>"
            f'<rect x="0" y="0" width="{W}" height="{H}" fill="#f6f8fa"/>'
            f'<polygon points="{area}" fill="#c9d1d9"/>'
            f'<polyline points="{rejects}" fill="none" stroke="#c62828" stroke-width="1.5"/></svg>')


def time_buckets(times: list[float]) -> tuple[float, float, int]:
    """(origin, width, count) of the time axis for ``times``: between 20 and 60 buckets of a round
    width, the origin a multiple of the width; every time t falls in bucket floor((t-origin)/width)."""
    lo, hi = min(times), max(times)
    width = None
    for w in _NICE_WIDTHS:
        if math.floor(hi / w) - math.floor(lo / w) + 1 <= MAX_BUCKETS:
            width = w
            break
    if width is None:  # more than ~1.4 years: plain days
        width = 86400.0 * math.ceil((hi - lo) / 86400.0 / (MAX_BUCKETS - 1))
    origin = math.floor(lo / width) * width
    n = math.floor((hi - origin) / width) + 1
    if n < MIN_BUCKETS:  # a short capture: centre it on the minimum axis
        origin -= ((MIN_BUCKETS - n) // 2) * width
        n = MIN_BUCKETS
    return origin, width, n


def _bucket_index(t: float, origin: float, width: float, n: int) -> int:
    return min(n - 1, max(0, math.floor((t - origin) / width)))


def _clock(t: float, width: float) -> str:
    dt = datetime.fromtimestamp(t, timezone.utc)
    if width < 1:
        return dt.strftime("%H:%M:%S.") + f"{dt.microsecond // 1000:03d}"
    if width < 86400:
        return dt.strftime("%H:%M:%S")
    return dt.strftime("%Y-%m-%d")


def _outcome_color(outcome: str) -> str:
    return OUTCOME_COLORS.get(outcome, OTHER_COLOR)


def _timeline(records: list[dict]) -> str:
    """Inline SVG stacked bars: outcomes per time bucket, by the records' start times."""
    timed = [(t, str(r.get("outcome"))) for r in records if (t := _rec_time(r)) is not None]
    if not timed:
        return '<p class="muted">No association times to chart.</p>\n'
    origin, width, n = time_buckets([t for t, _ in timed])
    counts: list[dict[str, int]] = [{} for _ in range(n)]
    for t, outcome in timed:
        c = counts[_bucket_index(t, origin, width, n)]
        c[outcome] = c.get(outcome, 0) + 1
    order = list(OUTCOME_COLORS) + sorted({o for _, o in timed} - set(OUTCOME_COLORS))
    peak = max(sum(c.values()) for c in counts)
    ML, MR, MT, MB, W, H = 48, 44, 12, 46, 1120, 300
    pw, ph = W - ML - MR, H - MT - MB
    bw = pw / n
    parts = [f'<svg class="timeline" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
             f'aria-label="associations per {_e(_width_text(width))}, by outcome" data-buckets="{n}" '
             f'data-width="{width}" data-origin="{origin}">',
             f'<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="#fafbfc" stroke="#d0d7de"/>']
    # y grid: 0, the middle (a whole count), the peak
    for val in sorted({0, peak // 2 if peak >= 4 else 0, peak}):
        y = MT + ph - ph * val / peak
        parts.append(f'<line x1="{ML}" y1="{y:.1f}" x2="{ML + pw}" y2="{y:.1f}" stroke="#e1e4e8"/>')
        parts.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#59636e">'
                     f"{_num(val)}</text>")
    for i, c in enumerate(counts):
        x = ML + i * bw
        b0 = origin + i * width
        total = sum(c.values())
        tip = f"{_clock(b0, width)}\u2013{_clock(b0 + width, width)} UTC: " + (
            ", ".join(f"{c[o]} {o}" for o in order if o in c) if c else "none")
        parts.append(f'<g class="bucket" data-start="{b0!r}" data-total="{total}"><title>{_e(tip)}</title>')
        y = MT + ph
        for o in order:
            k = c.get(o)
            if not k:
                continue
            h = ph * k / peak
            y -= h
            parts.append(f'<rect class="seg" data-outcome="{_e(o)}" data-count="{k}" x="{x + 0.5:.2f}" '
                         f'y="{y:.2f}" width="{max(0.5, bw - 1):.2f}" height="{h:.2f}" fill="{_outcome_color(o)}"/>')
        parts.append("</g>")
    step = max(1, math.ceil(n / 8))
    for i in range(0, n + 1, step):
        x = ML + i * bw
        parts.append(f'<line x1="{x:.1f}" y1="{MT + ph}" x2="{x:.1f}" y2="{MT + ph + 4}" stroke="#59636e"/>')
        parts.append(f'<text x="{x:.1f}" y="{MT + ph + 17}" font-size="11" text-anchor="middle" fill="#59636e">'
                     f"{_clock(origin + i * width, width)}</text>")
    parts.append(f'<text x="{ML + pw / 2:.1f}" y="{H - 6}" font-size="12" text-anchor="middle" fill="#1f2328">'
                 f"association start (UTC), {n} buckets of {_e(_width_text(width))}</text>")
    parts.append("</svg>")
    totals: dict[str, int] = {}
    for _, o in timed:
        totals[o] = totals.get(o, 0) + 1
    legend = "".join(f'<span><i style="background:{_outcome_color(o)}"></i>{_e(o)} {totals[o]}</span>'
                     for o in order if o in totals)
    untimed = len(records) - len(timed)
    note = f' <span class="muted">({untimed} without a time, not charted)</span>' if untimed else ""
    return "\n".join(parts) + f'\n<p class="legend">{legend}{note}</p>\n'


def _width_text(width: float) -> str:
    if width < 1:
        return f"{width * 1000:g} ms"
    if width < 60:
        return f"{width:g} s"
    if width < 3600:
        return f"{width / 60:g} min"
    if width < 86400:
        return f"{width / 3600:g} h"
    return f"{width / 86400:g} d"


# -- sections ------------------------------------------------------------------------------------


def _last_seen(records: Iterable[dict]) -> dict[tuple, float]:
    """Latest end (else start) per (calling, called, site) and per (calling, called)."""
    out: dict[tuple, float] = {}
    for rec in records:
        t = rec.get("end")
        if not isinstance(t, (int, float)) or not math.isfinite(t):
            t = _rec_time(rec)
        if t is None:
            continue
        pair = (_ae(rec.get("calling_ae")), _ae(rec.get("called_ae")))
        for key in (pair, pair + (rec.get("site"),)):
            if t > out.get(key, -math.inf):
                out[key] = t
    return out


def _pair_section(rows: list[dict], last_seen: dict, now: float | None, history: dict | None) -> str:
    if not rows:
        return '<p class="muted">No AE pairs.</p>\n'
    head = [("Calling AE", False), ("Called AE", False), ("Site", False), ("Requests", True), ("Accepted", True),
            ("Rejected", True), ("Reject %", False), ("Top reject reason", False), ("Aborts", True),
            ("No response", True), ("No release", True),
            ("Last seen", False) if now is not None else ("Last seen (UTC)", False)]
    spark_range = None
    if history:
        ts = [float(s[0]) for samples in history.values() for s in (samples or ())
              if isinstance(s, (tuple, list)) and len(s) >= 3 and isinstance(s[0], (int, float))]
        if ts:
            spark_range = (min(ts), max(ts))
            head.append(("Trend", False))
    body = []
    for r in rows:
        lvl = _level(r)
        seen = last_seen.get((r["calling_ae"], r["called_ae"], r["site"]),
                             last_seen.get((r["calling_ae"], r["called_ae"])))
        if seen is None:
            seen_txt = "-"
        elif now is not None:  # the status page: an age, the time as a tooltip
            seen_txt = f'<span title="{_iso(seen)}">{_age(now - seen)} ago</span>'
        else:
            seen_txt = _iso(seen, ms=False)
        abort_tip = f' title="{_e(r["top_abort_reason"])}"' if r["top_abort_reason"] else ""
        cells = [
            _td(_e(r["calling_ae"]), "ae"), _td(_e(r["called_ae"]), "ae"), _td(_e(r["site"]), "txt"),
            _td(_num(r["requests"]), "num"), _td(_num(r["accepted"]), "num"),
            _td(_num(r["rejected"]), "num hot" if r["rejected"] else "num"),
            _td(_reject_bar(r["reject_pct"]), "nowrap"),
            _td(_e(r["top_reason"]), "reason hot" if r["rejected"] else "reason"),
            f'<td class="num{" hot" if r["aborts"] else ""}"{abort_tip}>{_num(r["aborts"])}</td>',
            _td(_num(r["no_response"]), "num hot" if r["no_response"] else "num"),
            _td(_num(r["closed_without_release"]), "num"), _td(seen_txt, "nowrap"),
        ]
        if spark_range is not None:
            samples = history.get((r["calling_ae"], r["called_ae"], r["site"]))
            if samples is None:
                samples = history.get((r["calling_ae"], r["called_ae"]))
            cells.append(_td(_sparkline(samples or (), *spark_range)))
        cls = f' class="{lvl}"' if lvl else ""
        body.append(f'<tr{cls} data-pair="{_e(r["calling_ae"])}|{_e(r["called_ae"])}|{_e(r["site"])}">'
                    + "".join(cells) + "</tr>")
    note = ('<p class="muted">Trend: requests (grey area) and rejects (red line) per sampling interval, '
            f"{_iso(spark_range[0], ms=False)} to {_iso(spark_range[1], ms=False)}.</p>\n") if spark_range else ""
    return _table(head, body, "pairs") + note


def _site_section(rows: list[dict]) -> str:
    srows = site_rows(rows)
    if not srows:
        return '<p class="muted">No sites.</p>\n'
    head = [("Site", False), ("AE pairs", True), ("Calling AEs", True), ("Requests", True), ("Accepted", True),
            ("Rejected", True), ("Reject %", False), ("Top reject reason", False), ("Aborts", True),
            ("No response", True), ("No release", True), ("Released", True)]
    body = []
    for s in srows:
        lvl = _level(s)
        cls = f' class="{lvl}"' if lvl else ""
        body.append(f'<tr{cls} data-site="{_e(s["site"])}">' + "".join([
            _td(_e(s["site"]), "txt"), _td(_num(s["pairs"]), "num"), _td(_num(s["calling_aes"]), "num"),
            _td(_num(s["requests"]), "num"), _td(_num(s["accepted"]), "num"),
            _td(_num(s["rejected"]), "num hot" if s["rejected"] else "num"),
            _td(_reject_bar(s["reject_pct"]), "nowrap"),
            _td(_e(s["top_reason"]), "txt hot" if s["rejected"] else "txt"),
            _td(_num(s["aborts"]), "num hot" if s["aborts"] else "num"),
            _td(_num(s["no_response"]), "num hot" if s["no_response"] else "num"),
            _td(_num(s["closed_without_release"]), "num"), _td(_num(s["releases"]), "num"),
        ]) + "</tr>")
    return _table(head, body, "sites")


def _failed_section(records: list[dict], limit: int, newest_first: bool) -> str:
    failed = [r for r in records if r.get("outcome") in FAILED_OUTCOMES]
    timed = sorted((r for r in failed if _rec_time(r) is not None), key=_rec_time, reverse=newest_first)
    failed = timed + [r for r in failed if _rec_time(r) is None]
    if not failed:
        return '<p class="muted">No rejected or aborted associations.</p>\n'
    head = [("Time (UTC)", False), ("Client", False), ("Server", False), ("Calling AE", False),
            ("Called AE", False), ("Site", False), ("Outcome", False), ("Reason", False)]
    body = []
    for r in failed[:limit]:
        lvl = "bad" if r.get("outcome") == "rejected" else "warn"
        body.append(f'<tr class="{lvl}">' + "".join([
            _td(_iso(_rec_time(r)), "nowrap"), _td(_e(r.get("client")), "nowrap"), _td(_e(r.get("server")), "nowrap"),
            _td(_e(_ae(r.get("calling_ae"))), "ae"), _td(_e(_ae(r.get("called_ae"))), "ae"),
            _td(_e(r.get("site")), "txt"), _td(_e(r.get("outcome")), "hot"), _td(_e(_reason_of(r)), "wrap"),
        ]) + "</tr>")
    shown = min(limit, len(failed))
    note = (f'<p class="muted">Showing the {"newest" if newest_first else "first"} {shown} of {len(failed)}.</p>\n'
            if len(failed) > shown else "")
    return _table(head, body, "failed") + note


TLS_EVENT = "tls-connection"


def _split(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(association records, TLS connection records)."""
    assoc, tls = [], []
    for r in records:
        (tls if r.get("event") == TLS_EVENT else assoc).append(r)
    return assoc, tls


def _tls_section(store: MetricStore, records: list[dict], limit: int, newest_first: bool) -> str:
    """DICOM over TLS: per server counts from the store, then the failed handshakes (records)."""
    rows = tls_rows(store)
    if not rows:
        return ""
    head = [("Server", False), ("Connections", True), ("Completed", True), ("Failed", True), ("Incomplete", True),
            ("Top failure (sent by)", False), ("Versions", False), ("Server certificate expires", False)]
    body = []
    for r in rows:
        body.append(f'<tr class="{"bad" if r["failed"] else ""}">' + "".join([
            _td(_e(r["server"]), "nowrap"), _td(_num(r["connections"]), "num"), _td(_num(r["completed"]), "num"),
            _td(_num(r["failed"]), "num hot" if r["failed"] else "num"), _td(_num(r["incomplete"]), "num"),
            _td(_e(r["top_failure"]), "txt hot" if r["failed"] else "txt"), _td(_e(r["version_list"]), "txt"),
            _td(_e(r["cert_expiry"]), "nowrap"),
        ]) + "</tr>")
    out = "<h2>DICOM over TLS</h2>\n" + _table(head, body, "tls")
    failed = [r for r in records if r.get("outcome") == "failed"]
    failed.sort(key=lambda r: r.get("start") or 0, reverse=newest_first)
    if failed:
        head = [("Time (UTC)", False), ("Client", False), ("Server", False), ("Site", False), ("SNI", False),
                ("Offered", False), ("Failure", False), ("Sent by", False), ("Server certificate", False)]
        body = []
        for r in failed[:limit]:
            f = r.get("failure") or {}
            cert = r.get("server_certificate") or {}
            cert_txt = f"{cert.get('subject_cn', '')} (issuer {cert.get('issuer_cn', '')}, expires " \
                       f"{cert.get('not_after_utc', '')})" if cert else "-"
            body.append('<tr class="bad">' + "".join([
                _td(_iso(r.get("start")), "nowrap"), _td(_e(r.get("client")), "nowrap"),
                _td(_e(r.get("server")), "nowrap"), _td(_e(r.get("site")), "txt"), _td(_e(r.get("sni") or "-"), "txt"),
                _td(_e(" ".join(r.get("offered_versions") or []) or "-"), "txt"),
                _td(_e(f.get("reason")), "hot"), _td(_e(f.get("sent_by") or "-"), "txt"), _td(_e(cert_txt), "wrap"),
            ]) + "</tr>")
        out += "<h3>Failed TLS handshakes</h3>\n" + _table(head, body, "tls-failed")
    return out


def _kv(items: list[tuple[str, str, str]]) -> str:
    """(label, value HTML, level) cards."""
    cards = []
    for k, v, lvl in items:
        cls = f' class="{lvl}"' if lvl else ""
        cards.append(f'<div{cls}><span class="k">{_e(k)}</span> <span class="v">{v}</span></div>')
    return '<div class="kv">' + "".join(cards) + "</div>\n"


def _by_kind(series: dict) -> str:
    if not series:
        return ""
    return " (" + ", ".join(f"{_e(k[0] if k else '')} {_num(n)}" for k, n in sorted(series.items())) + ")"


def _store_health(store: MetricStore) -> list[tuple[str, str, str]]:
    v = store.values

    def total(name):
        return sum(v[name].values())

    def item(label, n, series=None, level_if_nonzero="warn"):
        return (label, _num(n) + (f' <span class="muted">{_by_kind(series)}</span>' if series and n else ""),
                level_if_nonzero if n else "")

    drops = total("dicom_probe_kernel_drops_total")
    ifdrops = total("dicom_probe_interface_drops_total")
    return [
        ("Packets", _num(total("dicom_probe_packets_total")), ""),
        ("Bytes", _num(total("dicom_probe_bytes_total")), ""),
        item("Kernel drops", drops, v["dicom_probe_kernel_drops_total"], "bad"),
        item("Interface drops", ifdrops, v["dicom_probe_interface_drops_total"], "bad"),
        item("Frames skipped", total("dicom_probe_frames_skipped_total"), v["dicom_probe_frames_skipped_total"], ""),
        ("Stream gaps", _num(store.get("dicom_probe_stream_gaps_total"))
         + f' <span class="muted">({_num(store.get("dicom_probe_stream_gap_bytes_total"))} bytes)</span>',
         "warn" if store.get("dicom_probe_stream_gaps_total") else ""),
        ("Retransmitted segments", _num(store.get("dicom_probe_retransmitted_segments_total")), ""),
        item("Resyncs", store.get("dicom_probe_resyncs_total")),
        item("PDU parse errors", total("dicom_probe_pdu_errors_total"), v["dicom_probe_pdu_errors_total"]),
        item("Protocol violations", total("dicom_probe_protocol_violations_total"),
             v["dicom_probe_protocol_violations_total"]),
        item("DIMSE command errors", total("dicom_probe_dimse_errors_total"), v["dicom_probe_dimse_errors_total"]),
        item("AE titles with invalid bytes", store.get("dicom_probe_ae_titles_invalid_total")),
        item("AE titles folded into (overflow)", store.get("dicom_probe_ae_title_overflow_total")),
    ]


def _daemon_health(store: MetricStore, health: dict) -> tuple[list[tuple[str, str, str]], bool]:
    """Cards from the daemon's /healthz detail (falling back to the store's gauges); and whether healthy."""
    h = health if isinstance(health, dict) else {}
    workers = h.get("workers")
    alive = h.get("workers_alive", store.get("dicom_probe_workers_alive"))
    restarts = h.get("restarts", store.get("dicom_probe_worker_restarts_total"))
    if "last_packet_age_seconds" in h:
        age = h["last_packet_age_seconds"]
    else:
        age = store.values["dicom_probe_last_packet_age_seconds"].get(())
    errors = h.get("errors", 0)
    items = []
    workers_bad = isinstance(workers, (int, float)) and isinstance(alive, (int, float)) and alive < workers
    items.append(("Workers alive", _num(alive) + (f" / {_num(workers)}" if workers is not None else ""),
                  "bad" if workers_bad or alive == 0 else ""))
    items.append(("Worker restarts", _num(restarts), "warn" if restarts else ""))
    if isinstance(age, (int, float)) and math.isfinite(age):
        items.append(("Last packet", f"{_age(age)} ago", "warn" if age > 300 else ""))
    else:
        items.append(("Last packet", "none yet", "warn"))
    if "capture_handles_open" in h:
        items.append(("Capture handles open", _num(h["capture_handles_open"]), ""))
    items.append(("Endpoint errors", _num(errors), "warn" if errors else ""))
    known = {"workers", "workers_alive", "restarts", "last_packet_age_seconds", "capture_handles_open", "errors", "ok"}
    for k in sorted(set(h) - known, key=str):  # anything else the daemon reports
        val = h[k]
        if isinstance(val, (str, int, float, bool)) or val is None:
            items.append((str(k).replace("_", " ").capitalize(), _num(val) if isinstance(val, (int, float))
                          and not isinstance(val, bool) else _e(val), ""))
    ok = h.get("ok")
    if ok is None:
        ok = not workers_bad and not errors and alive != 0
    return items, bool(ok)


def _dimse_section(store: MetricStore, times: ResponseTimes | None) -> str:
    rows = dimse_rows(store, times)
    if not rows:
        return '<p class="muted">No DIMSE operations seen.</p>\n'
    head = [("Calling AE", False), ("Called AE", False), ("Command", False), ("Requests", True), ("Failed", True),
            ("Top failure status", False), ("p50 ms", True), ("p95 ms", True)]
    body = []
    for r in rows:
        cls = ' class="bad"' if r["failed"] else ""
        body.append(f"<tr{cls}>" + "".join([
            _td(_e(r["calling_ae"]), "ae"), _td(_e(r["called_ae"]), "ae"), _td(_e(r["command"])),
            _td(_num(r["requests"]), "num"), _td(_num(r["failed"]), "num hot" if r["failed"] else "num"),
            _td(_e(r["top_status"]), "txt"), _td(_e(r["p50_ms"]), "num"), _td(_e(r["p95_ms"]), "num"),
        ]) + "</tr>")
    return _table(head, body, "dimse")


def _reason_section(store: MetricStore) -> str:
    v = store.values
    rejects: dict[tuple, list] = {}
    for (calling, called, _site, result, source, reason), n in v["dicom_association_rejects_total"].items():
        e = rejects.setdefault((reason, result, source), [0, set()])
        e[0] += n
        e[1].add((calling, called))
    aborts: dict[tuple, list] = {}
    for (calling, called, _site, by, source, reason, phase), n in v["dicom_association_aborts_total"].items():
        e = aborts.setdefault((reason, by, source, phase), [0, set()])
        e[0] += n
        e[1].add((calling, called))

    def pairs(s):
        shown = sorted(s)[:6]
        txt = ", ".join(f"{_e(a)} \u2192 {_e(b)}" for a, b in shown)
        return txt + (f" … (+{len(s) - len(shown)})" if len(s) > len(shown) else "")

    out = "<h3>Reject reasons</h3>\n"
    if rejects:
        body = [f'<tr class="bad">{_td(_e(k[0]), "txt hot")}{_td(_e(k[1]))}{_td(_e(k[2]))}{_td(_num(n), "num")}'
                f'{_td(pairs(s), "wrap")}</tr>'
                for k, (n, s) in sorted(rejects.items(), key=lambda kv: (-kv[1][0], kv[0]))]
        out += _table([("Reason", False), ("Result", False), ("Source", False), ("Count", True),
                       ("AE pairs", False)], body, "reasons")
    else:
        out += '<p class="muted">No A-ASSOCIATE-RJ seen.</p>\n'
    out += "<h3>Abort reasons</h3>\n"
    if aborts:
        body = [f'<tr class="warn">{_td(_e(k[0]), "txt hot")}{_td(_e(k[1]))}{_td(_e(k[2]))}{_td(_e(k[3]))}'
                f'{_td(_num(n), "num")}{_td(pairs(s), "wrap")}</tr>'
                for k, (n, s) in sorted(aborts.items(), key=lambda kv: (-kv[1][0], kv[0]))]
        out += _table([("Reason", False), ("By", False), ("Source", False), ("Phase", False), ("Count", True),
                       ("AE pairs", False)], body, "aborts")
    else:
        out += '<p class="muted">No A-ABORT seen.</p>\n'
    return out


def _page(title: str, body: str, *, refresh: int | None = None) -> bytes:
    meta = f'<meta http-equiv="refresh" content="{refresh}">\n' if refresh else ""
    return ("<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="referrer" content="no-referrer">\n'
            f"{meta}<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"{body}"
            f"<footer>dicom-probe {_e(__version__)} \u00b7 passive DICOM monitor \u00b7 counts are the "
            "probe's Prometheus metrics</footer>\n</body>\n</html>\n").encode("utf-8")


# -- public API ----------------------------------------------------------------------------------


def render_status(store: MetricStore, recent: list[dict], health: dict, *, now: float,
                  history: dict | None = None, seen: Iterable[dict] = ()) -> bytes:
    """The status page served at ``/``: failing AE pairs first, per pair and per site tables, the
    newest rejected/aborted associations and the probe's health. Refreshes itself every 10 s.

    ``recent``: association records (:func:`probe.report.association_record`), any order and
    outcome — they give each pair's last-seen time and the list of recent failures (newest 50);
    TLS connection records (:func:`probe.report.tls_record`) among them give the failed handshakes.
    ``seen``: more association records (e.g. each pair's newest), for last-seen times only.
    ``health``: the daemon's ``/healthz`` detail (``workers``, ``workers_alive``, ``restarts``,
    ``last_packet_age_seconds``, ``capture_handles_open``, ``errors``; an optional ``ok``).
    ``now``: wall-clock time of the rendering (ages, the header). ``history``: optional
    ``{(calling, called[, site]): [(time, requests, rejects), ...]}`` with *cumulative* counter values
    sampled over time; each pair gets a sparkline of the increases between samples.
    """
    recent, recent_tls = _split([r for r in (recent or []) if isinstance(r, dict)])
    seen = [r for r in seen if isinstance(r, dict)]
    rows = site_pair_rows(store)
    cards, ok = _daemon_health(store, health)
    status = ('<span class="badge ok">probe healthy</span>' if ok else '<span class="badge bad">probe unhealthy</span>')
    body = (f'<header><h1>dicom-probe</h1> <span class="muted">status at {_iso(now, ms=False)} \u00b7 '
            f"refreshes every 10 s</span> {status}</header>\n"
            + _alert_block(store)
            + "<h2>AE pairs</h2>\n" + _pair_section(rows, _last_seen([*recent, *seen]), now, history)
            + "<h2>Sites</h2>\n" + _site_section(rows)
            + "<h2>Recent rejected and aborted associations</h2>\n"
            + _failed_section(recent, RECENT_MAX, newest_first=True)
            + _tls_section(store, recent_tls, RECENT_MAX, newest_first=True)
            + "<h2>Probe health</h2>\n" + _kv(cards + _store_health(store)))
    return _page("dicom-probe", body, refresh=10)


def render_report(store: MetricStore, records: list[dict], *, title: str, sources: list[str],
                  times: ResponseTimes | None = None) -> bytes:
    """``analyze --format html``: one self-contained HTML file for a ticket — failing pairs, per pair
    and per site tables, reject and abort reasons, outcomes over the capture's time axis, DIMSE
    operations, the rejected/aborted associations, probe health, and the capture files and time range.

    ``records``: every association record of the capture (:func:`probe.report.association_record`).
    ``times``: optional :class:`probe.report.ResponseTimes` for the DIMSE table's p50/p95 columns.
    """
    records, tls_records = _split([r for r in (records or []) if isinstance(r, dict)])
    rows = site_pair_rows(store)
    starts = [t for r in records if (t := _rec_time(r)) is not None]
    ends = [r["end"] for r in records if isinstance(r.get("end"), (int, float)) and math.isfinite(r["end"])]
    if starts:
        first, last = min(starts), max(starts + ends)
        span = (f"{_iso(first)} \u2013 {_iso(last)} <span class=\"muted\">({_age(last - first)})</span>")
    else:
        span = '<span class="muted">no associations</span>'
    src_items = "".join(f"<li><code>{_e(s)}</code></li>" for s in sources) or "<li>(none)</li>"
    outcomes: dict[str, int] = {}
    for r in records:
        o = str(r.get("outcome"))
        outcomes[o] = outcomes.get(o, 0) + 1
    outcome_txt = ", ".join(f"{n} {_e(o)}" for o, n in sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0])))
    body = (f"<header><h1>{_e(title)}</h1> <span class=\"muted\">dicom-probe incident report</span></header>\n"
            '<table class="meta"><tbody>\n'
            f"<tr><th>Capture files</th><td><ul style=\"margin:0;padding-left:18px\">{src_items}</ul></td></tr>\n"
            f"<tr><th>Time range (UTC)</th><td>{span}</td></tr>\n"
            f"<tr><th>Associations</th><td>{len(records)}"
            + (f' <span class="muted">({outcome_txt})</span>' if outcome_txt else "") + "</td></tr>\n"
            "</tbody></table>\n"
            + _alert_block(store)
            + "<h2>AE pairs</h2>\n" + _pair_section(rows, _last_seen(records), None, None)
            + "<h2>Sites</h2>\n" + _site_section(rows)
            + "<h2>Reject and abort reasons</h2>\n" + _reason_section(store)
            + "<h2>Outcomes over time</h2>\n" + _timeline(records)
            + "<h2>DIMSE operations</h2>\n" + _dimse_section(store, times)
            + "<h2>Rejected and aborted associations</h2>\n"
            + _failed_section(records, REPORT_FAILED_MAX, newest_first=False)
            + _tls_section(store, tls_records, REPORT_FAILED_MAX, newest_first=False)
            + "<h2>Probe health</h2>\n" + _kv(_store_health(store)))
    return _page(title, body)
