#!/usr/bin/env python3
"""Writes the dicom-probe Grafana dashboards (the *.json files next to this script).

    python3 grafana-dashboards/generate.py           # rewrite the JSON files
    python3 grafana-dashboards/generate.py --check   # exit 1 if a JSON file differs from this script

The JSON files are what Grafana provisions (provisioning/dashboards.yaml); this script is their
source, so that every query is written once, with the same label selectors everywhere. Edit here,
run it, commit both. tests/test_dashboards.py checks that they agree.

Conventions: every dashboard has a `datasource` variable (type datasource, Prometheus) and every
panel and query uses "${datasource}" -- no data source UID is stored anywhere. Template variables
come from label_values(); multi-value/All variables are matched with =~ (All is ".*").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"

# Label selectors. B: which probes. P: one AE pair / site selection. H_SETUP, H_DIMSE: the two
# histograms, labelled by called AE and by command only.
B = 'job=~"$job", instance=~"$instance"'
P = B + ', site=~"$site", calling_ae=~"$calling_ae", called_ae=~"$called_ae"'
D = P + ', command=~"$command"'
H_SETUP = B + ', called_ae=~"$called_ae"'
H_DIMSE = B + ', command=~"$command"'
FAILURE, WARNING, CANCEL = 'status_class="failure"', 'status_class="warning"', 'status_class="cancel"'
FINAL = 'status_class!="pending"'
FAILED = 'outcome="failed"'
ACCEPTED, NOT_ACCEPTED = 'result="acceptance"', 'result!="acceptance"'
# DICOM over TLS: one server (address:port) / client site selection.
T = B + ', site=~"$site", server=~"$server"'
TS = B + ', server=~"$server"'
DEPRECATED = 'version=~"SSLv3|TLSv1.0|TLSv1.1"'

PAIR_DASHBOARD_LINK = (
    "/d/dicom-ae-pair/dicom-ae-pair?${__url_time_range}&var-datasource=${datasource}"
    "&var-job=${job}&var-instance=${instance}"
)


# -- building blocks ---------------------------------------------------------------------------------


def target(expr: str, legend: str = "__auto", ref: str = "A", instant: bool = False, fmt: str | None = None) -> dict:
    t = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }
    if fmt:
        t["format"] = fmt
    return t


def targets(*specs) -> list[dict]:
    """targets(("expr", "legend"), ...) with refIds A, B, C, ..."""
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(specs)]


def ratio(num: str, den: str, by: str = "") -> str:
    """num/den as a ratio where a group with a denominator but no numerator series shows 0, at most 1
    (an RQ and its RJ can be counted in different scrapes)."""
    agg = f"sum by ({by}) " if by else "sum "
    return f"clamp_max(({agg}({num}) or {agg}({den}) * 0) / ({agg}({den}) > 0), 1)"


def rate(metric: str, sel: str, extra: str = "") -> str:
    sel = f"{sel}, {extra}" if extra else sel
    return f"rate({metric}{{{sel}}}[{RATE}])"


def in_range(metric: str, sel: str, by: str) -> str:
    """Events in the dashboard's time range, per group, for an instant query (tables).

    A series that appeared within the range counts from zero: the probe creates a series with its
    first event, and increase() cannot see the increments made before a series' first scrape, so a
    new AE pair's first rejects or aborts would never show. (A series missing at the start of the
    range for another reason -- Prometheus or the probe down then, or a range longer than the
    retention -- counts its whole value.)"""
    s = f"{metric}{{{sel}}}"
    return f"sum by ({by}) (({s} unless {s} offset $__range) or increase({s}[$__range]))"


NEW_SERIES_NOTE = " Series that appeared within the range count from zero."


def thresholds(*steps) -> dict:
    out = [{"color": "green", "value": None}]
    out += [{"color": color, "value": value} for value, color in steps]
    return {"mode": "absolute", "steps": out}


def timeseries(title, tgts, unit="short", desc="", w=12, h=8, stack=False, bars=False, links=None,
               min0=True, legend_calcs=("mean", "max")) -> dict:
    custom = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisPlacement": "auto",
        "gradientMode": "none",
    }
    defaults = {"unit": unit, "color": {"mode": "palette-classic"}, "custom": custom}
    if min0:
        defaults["min"] = 0
    if links:
        defaults["links"] = links
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "_size": (w, h),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"showLegend": True, "displayMode": "table", "placement": "bottom",
                       "calcs": list(legend_calcs)},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": tgts,
    }


def stat(title, tgts, unit="short", desc="", w=4, h=4, steps=(), decimals=None, text_mode="auto",
         graph=True) -> dict:
    defaults = {"unit": unit, "thresholds": thresholds(*steps), "color": {"mode": "thresholds"}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "_size": (w, h),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area" if graph else "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": text_mode,
        },
        "targets": tgts,
    }


def table(title, expr, desc="", w=12, h=8, value_name="Value", unit="short", links=None, sort_by=None,
          value_links=None) -> dict:
    """An instant query as a table: one row per series, its labels as columns."""
    overrides = []
    for field, url in (links or {}).items():
        overrides.append({"matcher": {"id": "byName", "options": field},
                          "properties": [{"id": "links", "value": [{"title": "AE pair dashboard", "url": url}]}]})
    return {
        "type": "table",
        "title": title,
        "description": desc,
        "datasource": DS,
        "_size": (w, h),
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"align": "auto", "filterable": True}},
                        "overrides": overrides},
        "options": {"showHeader": True, "cellHeight": "sm",
                    "sortBy": [{"displayName": sort_by or value_name, "desc": True}],
                    "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
        "transformations": [
            {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": {"Value": value_name}}},
        ],
        "targets": [target(expr, "", "A", instant=True, fmt="table")],
    }


def heatmap(title, expr, desc="", w=12, h=8) -> dict:
    return {
        "type": "heatmap",
        "title": title,
        "description": desc,
        "datasource": DS,
        "_size": (w, h),
        "fieldConfig": {"defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False},
                                                "scaleDistribution": {"type": "linear"}}},
                        "overrides": []},
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5, "fill": "dark-orange",
                      "reverse": False, "scale": "exponential"},
            "filterValues": {"le": 1e-9},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"mode": "single", "showColorScale": False, "yHistogram": False},
            "yAxis": {"axisPlacement": "left", "reverse": False, "unit": "s"},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
        },
        "targets": [target(expr, "{{le}}", "A", fmt="heatmap")],
    }


def row(title) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def layout(panels: list[dict]) -> list[dict]:
    """Numbers the panels and places them left to right, top to bottom (rows span the width)."""
    x = y = row_h = 0
    out = []
    for pid, p in enumerate(panels, 1):
        w, h = p.pop("_size")
        if p["type"] == "row" or x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p = {"id": pid, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **p}
        out.append(p)
        if p["type"] == "row":
            y += 1
        else:
            x += w
            row_h = max(row_h, h)
    return out


# -- template variables ------------------------------------------------------------------------------


def datasource_var() -> dict:
    return {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": "", "skipUrlSync": False}


def query_var(name, label, definition, multi=True, include_all=True, hide=0) -> dict:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "definition": definition,
        "query": {"qryType": 1, "query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {},
        "hide": hide,
        "includeAll": include_all,
        "allValue": ".*",
        "multi": multi,
        "options": [],
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
    }


def probe_vars() -> list[dict]:
    return [
        query_var("job", "Job", "label_values(dicom_probe_build_info, job)"),
        query_var("instance", "Probe", 'label_values(dicom_probe_build_info{job=~"$job"}, instance)'),
    ]


def pair_vars() -> list[dict]:
    src = "dicom_association_requests_total"
    return [
        query_var("site", "Site", f"label_values({src}{{{B}}}, site)"),
        query_var("calling_ae", "Calling AE", f'label_values({src}{{{B}, site=~"$site"}}, calling_ae)'),
        query_var("called_ae", "Called AE", f'label_values({src}{{{B}, site=~"$site"}}, called_ae)'),
    ]


def dashboard(uid, title, description, panels, variables, tags=()) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["dicom", "dicom-probe", *tags],
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "weekStart": "",
        "annotations": {"list": [{
            "name": "DICOM alerts",
            "datasource": DS,
            "enable": True,
            "hide": False,
            "iconColor": "red",
            "expr": 'ALERTS{alertname=~"Dicom.*", alertstate="firing"}',
            "step": "60s",
            "titleFormat": "{{alertname}}",
            "textFormat": "{{calling_ae}} {{called_ae}} {{site}} {{reason}}",
            "tagKeys": "severity",
            "useValueForTime": False,
        }]},
        "links": [{"title": "DICOM dashboards", "type": "dashboards", "tags": ["dicom-probe"], "asDropdown": True,
                   "includeVars": False, "keepTime": True, "targetBlank": False, "icon": "external link",
                   "tooltip": "", "url": ""}],
        "templating": {"list": [datasource_var(), *variables]},
        "panels": layout(panels),
    }


# -- dicom-overview ----------------------------------------------------------------------------------


def overview() -> dict:
    req, rej = "dicom_association_requests_total", "dicom_association_rejects_total"
    pair_link = PAIR_DASHBOARD_LINK + "&var-site=${__data.fields.site}&var-calling_ae=${__data.fields.calling_ae}" \
                                      "&var-called_ae=${__data.fields.called_ae}"
    series_link = [{"title": "AE pair dashboard", "url": PAIR_DASHBOARD_LINK
                    + "&var-site=${__field.labels.site}&var-calling_ae=${__field.labels.calling_ae}"
                      "&var-called_ae=${__field.labels.called_ae}"}]
    panels = [
        row("Now"),
        stat("Association requests/s", targets((f"sum({rate(req, P)})", "requests/s")), "reqps",
             "A-ASSOCIATE-RQs seen per second for the selected sites and AE titles."),
        stat("Rejected", targets((ratio(rate(rej, P), rate(req, P)), "rejected")), "percentunit",
             "Share of association requests answered with A-ASSOCIATE-RJ.", steps=((0.05, "orange"), (0.2, "red"))),
        stat("Active associations", targets((f"sum(dicom_associations_active{{{B}}})", "active")), "short",
             "Associations requested or established and not yet ended (all AE titles)."),
        stat("Unknown AE titles", targets((
            f'count(min by (ae_title) (dicom_ae_title_first_seen_timestamp_seconds{{{B}, known="false"}})) or vector(0)',
            "unknown titles")), "short",
             "Distinct AE titles seen that are not in the probe's known_ae_titles (empty known_ae_titles: every title).",
             steps=((1, "orange"),)),
        stat("DICOM alerts firing", targets((
            'count(ALERTS{alertname=~"Dicom.*", alertstate="firing"}) or vector(0)', "firing")), "short",
             "Alerts from deploy/prometheus/dicom-probe.rules.yml firing now.", steps=((1, "red"),), graph=False),
        stat("Probes up / down", targets((f"sum(up{{{B}}})", "up"), (f"count(up{{{B}}} == 0) or vector(0)", "down")),
             "short", "Scrape targets of the probe job answering (up) and not (down).", graph=False),

        row("Associations"),
        timeseries("Associations/s by outcome", targets(
            (f"sum({rate(req, P)})", "requested"),
            (f"sum({rate('dicom_association_accepts_total', P)})", "accepted"),
            (f"sum({rate(rej, P)})", "rejected"),
            (f"sum({rate('dicom_association_aborts_total', P)})", "aborted"),
            (f"sum({rate('dicom_association_releases_total', P)})", "released"),
            (f"sum({rate('dicom_association_no_response_total', P)})", "no response"),
            (f"sum({rate('dicom_association_closed_without_release_total', P)})", "closed without release"),
        ), "ops", "Association PDUs and endings per second."),
        timeseries("Association requests/s by called AE", targets(
            (f"sum by (called_ae) ({rate(req, P)})", "{{called_ae}}")), "reqps",
            "A-ASSOCIATE-RQs per second, by the AE title called.", stack=True),

        row("Rejects"),
        timeseries("Reject % by called AE", targets(
            (ratio(rate(rej, P), rate(req, P), "called_ae"), "{{called_ae}}")), "percentunit",
            "Share of each called AE's association requests it rejected.", w=8),
        timeseries("Reject % by calling AE", targets(
            (ratio(rate(rej, P), rate(req, P), "calling_ae"), "{{calling_ae}}")), "percentunit",
            "Share of each calling AE's association requests that were rejected.", w=8),
        timeseries("Reject % by site", targets(
            (ratio(rate(rej, P), rate(req, P), "site"), "{{site}}")), "percentunit",
            "Share of association requests rejected, by the requestor's site (config `sites`; `other` when none).",
            w=8),
        table("Top reject reasons", f"topk(10, {in_range(rej, P, 'reason, result, source')})",
              "A-ASSOCIATE-RJ in the selected time range, by reason (PS3.8 Table 9-21)." + NEW_SERIES_NOTE, w=8,
              value_name="Rejects"),
        table("Most rejected AE pairs",
              f"topk(20, {in_range(rej, P, 'calling_ae, called_ae, site, reason')})",
              "Rejects in the selected time range per AE pair, site and reason. Click a title for the AE pair "
              "dashboard." + NEW_SERIES_NOTE, w=16, value_name="Rejects", links={"calling_ae": pair_link, "called_ae": pair_link}),
        timeseries("Rejects/s by reason", targets(
            (f"sum by (reason) ({rate(rej, P)})", "{{reason}}")), "ops",
            "A-ASSOCIATE-RJ per second by reason.", w=24, stack=True),

        row("Aborts and unanswered requests"),
        timeseries("Aborts/s by phase and reason", targets(
            (f"sum by (phase, by, reason) ({rate('dicom_association_aborts_total', P)})",
             "{{phase}}: {{reason}} (by {{by}})")), "ops",
            "A-ABORTs ending an association: phase setup (before A-ASSOCIATE-AC) or established, who sent it, "
            "and the reason (service-user aborts carry none: not-significant).", stack=True),
        timeseries("No response and closed without release/s", targets(
            (f"sum by (calling_ae, called_ae) ({rate('dicom_association_no_response_total', P)})",
             "no response: {{calling_ae}} → {{called_ae}}"),
            (f"sum by (calling_ae, called_ae) ({rate('dicom_association_closed_without_release_total', P)})",
             "closed without release: {{calling_ae}} → {{called_ae}}"),
        ), "ops", "A-ASSOCIATE-RQs never answered, and accepted associations whose TCP connection closed with "
                  "neither A-RELEASE nor A-ABORT.", links=series_link),
        table("Aborts by AE pair",
              in_range("dicom_association_aborts_total", P, "calling_ae, called_ae, site, phase, by, reason") + " > 0",
              "A-ABORTs in the selected time range." + NEW_SERIES_NOTE, w=24, h=7, value_name="Aborts",
              links={"calling_ae": pair_link, "called_ae": pair_link}),

        row("AE titles"),
        table("AE titles first seen",
              f'min by (ae_title, role, known) (dicom_ae_title_first_seen_timestamp_seconds{{{B}}}) * 1000',
              "When the probe first saw each AE title as calling or called title (since the probe started). "
              "known = listed in known_ae_titles.", w=12, h=9, value_name="First seen", unit="dateTimeAsIso"),
        timeseries("New AE titles seen", targets(
            (f"sum by (role, known) (increase(dicom_probe_new_ae_titles_total{{{B}}}[{RATE}]))",
             "{{role}}, known={{known}}")), "short",
            "AE titles seen for the first time (dicom_probe_new_ae_titles_total).", h=9, bars=True, stack=True,
            legend_calcs=("sum",)),

        row("Probe health"),
        stat("Packets/s", targets((f"sum(rate(dicom_probe_packets_total{{{B}}}[{RATE}]))", "packets/s")), "pps",
             "Frames received on the DICOM ports (after the capture filter)."),
        stat("Dropped frames/s", targets((
            f"(sum(rate(dicom_probe_kernel_drops_total{{{B}}}[{RATE}])) or vector(0))"
            f" + (sum(rate(dicom_probe_interface_drops_total{{{B}}}[{RATE}])) or vector(0))", "dropped/s")),
             "pps", "Frames the kernel or the interface dropped before the probe saw them (live capture).",
             steps=((0.001, "red"),)),
        stat("Stream gaps/s", targets((
            f"sum(rate(dicom_probe_stream_gaps_total{{{B}}}[{RATE}])) or vector(0)", "gaps/s")), "short",
             "Holes in TCP byte streams: bytes that never reached the capture.", steps=((0.001, "orange"),)),
        stat("Parse errors/s", targets((
            f"(sum(rate(dicom_probe_pdu_errors_total{{{B}}}[{RATE}])) or vector(0))"
            f" + (sum(rate(dicom_probe_dimse_errors_total{{{B}}}[{RATE}])) or vector(0))", "errors/s")), "short",
             "Malformed PDUs and unusable DIMSE command sets.", steps=((0.001, "orange"),)),
        stat("Workers alive", targets((f"sum(dicom_probe_workers_alive{{{B}}})", "workers")), "short",
             "Capture worker processes running (0 after a --read replay has finished)."),
        stat("Last packet", targets((f"max(dicom_probe_last_packet_age_seconds{{{B}}})", "age")), "s",
             "Seconds since any probe worker last received a packet.", steps=((600, "orange"), (3600, "red"))),
    ]
    return dashboard("dicom-overview", "DICOM overview",
                     "Associations, rejects and aborts per AE title and site, new AE titles, probe health "
                     "(dicom-probe).", panels, [*probe_vars(), *pair_vars()])


# -- dicom-ae-pair -----------------------------------------------------------------------------------


def ae_pair() -> dict:
    req = "dicom_association_requests_total"

    def share(metric, name):
        return (f"(sum({rate(metric, P)}) or vector(0)) / (sum({rate(req, P)}) > 0)", name)

    panels = [
        row("Selected AE pair(s) and site(s)"),
        stat("Requests/s", targets((f"sum({rate(req, P)})", "requests/s")), "reqps", "A-ASSOCIATE-RQs per second."),
        stat("Accepted", targets(share("dicom_association_accepts_total", "accepted")), "percentunit",
             "Share of requests accepted (A-ASSOCIATE-AC).", steps=()),
        stat("Rejected", targets(share("dicom_association_rejects_total", "rejected")), "percentunit",
             "Share of requests rejected (A-ASSOCIATE-RJ).", steps=((0.05, "orange"), (0.2, "red"))),
        stat("Aborted", targets(share("dicom_association_aborts_total", "aborted")), "percentunit",
             "Share of requests that ended in an A-ABORT.", steps=((0.02, "orange"), (0.1, "red"))),
        stat("No response", targets(share("dicom_association_no_response_total", "no response")), "percentunit",
             "Share of requests never answered.", steps=((0.01, "orange"), (0.1, "red"))),
        stat("Closed without release", targets(share("dicom_association_closed_without_release_total",
                                                     "closed without release")), "percentunit",
             "Share of requests whose accepted association ended by a TCP close without A-RELEASE or A-ABORT.",
             steps=((0.05, "orange"),)),

        row("Outcomes"),
        timeseries("Outcomes over time", targets(
            (f"sum({rate('dicom_association_accepts_total', P)})", "accepted"),
            (f"sum by (reason) ({rate('dicom_association_rejects_total', P)})", "rejected: {{reason}}"),
            (f"sum by (phase) ({rate('dicom_association_aborts_total', P)})", "aborted ({{phase}})"),
            (f"sum({rate('dicom_association_releases_total', P)})", "released"),
            (f"sum({rate('dicom_association_no_response_total', P)})", "no response"),
            (f"sum({rate('dicom_association_closed_without_release_total', P)})", "closed without release"),
        ), "ops", "What became of the association requests, per second: accepted (then released, aborted or "
                  "closed), rejected by reason, aborted in setup, or never answered.", w=24, h=9, stack=False),
        timeseries("Requests/s per pair", targets(
            (f"sum by (calling_ae, called_ae, site) ({rate(req, P)})", "{{calling_ae}} → {{called_ae}} ({{site}})")),
            "reqps", "A-ASSOCIATE-RQs per second for each AE pair and site."),
        timeseries("Reject % per pair", targets(
            (ratio(rate("dicom_association_rejects_total", P), rate(req, P), "calling_ae, called_ae, site"),
             "{{calling_ae}} → {{called_ae}} ({{site}})")), "percentunit",
            "Share of each pair's requests that were rejected."),

        row("Reasons"),
        table("Reject reasons",
              in_range("dicom_association_rejects_total", P, "calling_ae, called_ae, site, result, source, reason")
              + " > 0",
              "A-ASSOCIATE-RJ in the selected time range by result, source and reason (PS3.8 Table 9-21)."
              + NEW_SERIES_NOTE,
              value_name="Rejects"),
        table("Abort reasons",
              in_range("dicom_association_aborts_total", P, "calling_ae, called_ae, site, by, source, reason, phase")
              + " > 0",
              "A-ABORTs in the selected time range: sender, source, reason and phase." + NEW_SERIES_NOTE, value_name="Aborts"),

        row("Association setup time (by called AE)"),
        timeseries("Setup time percentiles", targets(*[
            (f"histogram_quantile({q}, sum by (called_ae, le) "
             f"(rate(dicom_association_setup_seconds_bucket{{{H_SETUP}}}[{RATE}])))", f"p{round(q * 100)} {{{{called_ae}}}}")
            for q in (0.5, 0.95, 0.99)]), "s",
            "Time from the first byte of A-ASSOCIATE-RQ to the AC or RJ. The histogram is labelled by called AE "
            "only: the calling AE and site selections do not apply here.", legend_calcs=("mean", "max", "lastNotNull")),
        heatmap("Setup time distribution",
                f"sum by (le) (increase(dicom_association_setup_seconds_bucket{{{H_SETUP}}}[{RATE}]))",
                "Association setups per setup-time bucket (selected called AEs)."),

        row("DIMSE operations"),
        timeseries("DIMSE requests/s by command", targets(
            (f"sum by (command) ({rate('dicom_dimse_requests_total', P)})", "{{command}}")), "ops",
            "DIMSE request messages per second, from either side (C-GET's C-STOREs come from the SCP).", w=8),
        timeseries("DIMSE responses/s by status class", targets(
            (f"sum by (status_class) ({rate('dicom_dimse_responses_total', P)})", "{{status_class}}")), "ops",
            "DIMSE responses per second: success, pending, cancel, warning, failure (PS3.7 Annex C).", w=8,
            stack=True),
        timeseries("DIMSE failures/s by command and status", targets(
            (f"sum by (command, status) ({rate('dicom_dimse_responses_total', P, FAILURE)})",
             "{{command}} {{status}}")), "ops", "DIMSE responses with a failure status, by code.", w=8),
        timeseries("DIMSE failure % by command", targets(
            (ratio(rate("dicom_dimse_responses_total", P, FAILURE),
                   rate("dicom_dimse_responses_total", P, FINAL), "command"), "{{command}}")),
            "percentunit", "Share of final (non-pending) responses with a failure status.", w=8),
        timeseries("Unanswered requests and unmatched responses/s", targets(
            (f"sum by (command) ({rate('dicom_dimse_unanswered_total', P)})", "unanswered {{command}}"),
            (f"sum by (command) ({rate('dicom_dimse_unmatched_responses_total', P)})", "unmatched {{command}}"),
        ), "ops", "Requests without a final response when their association ended; responses whose request was "
                  "not seen.", w=8),
        timeseries("P-DATA throughput", targets(
            (f"sum by (direction) ({rate('dicom_pdata_bytes_total', P)})", "{{direction}}")), "Bps",
            "P-DATA-TF bytes per second (PDU headers included): to_server = requestor to acceptor.", w=8),
        timeseries("Presentation contexts/s by result", targets(
            (f"sum by (result) ({rate('dicom_presentation_contexts_total', P)})", "{{result}}")), "ops",
            "Presentation contexts answered in A-ASSOCIATE-AC, by result.", w=24, h=7, stack=True),
    ]
    return dashboard("dicom-ae-pair", "DICOM AE pair / site",
                     "Drill-down for one or more calling/called AE title pairs and sites: outcomes, reasons, "
                     "setup time, DIMSE operations (dicom-probe).", panels, [*probe_vars(), *pair_vars()])


# -- dicom-dimse -------------------------------------------------------------------------------------


def dimse() -> dict:
    resp = "dicom_dimse_responses_total"
    variables = [*probe_vars(), *pair_vars(),
                 query_var("command", "Command", f'label_values(dicom_dimse_requests_total{{{P}}}, command)')]
    panels = [
        row("Operations"),
        timeseries("Operations/s by command", targets(
            (f"sum by (command) ({rate('dicom_dimse_requests_total', D)})", "{{command}}")), "ops",
            "DIMSE request messages per second by command.", stack=True),
        timeseries("Responses/s by status class", targets(
            (f"sum by (status_class) ({rate(resp, D)})", "{{status_class}}")), "ops",
            "Responses per second by status class (pending responses of C-FIND/C-GET/C-MOVE included).",
            stack=True),
        timeseries("Failure statuses/s by code", targets(
            (f"sum by (command, status) ({rate(resp, D, FAILURE)})", "{{command}} {{status}}")),
            "ops", "Responses with a failure status (Axxx, Cxxx, 01xx, 02xx ...), by command and code.", w=8),
        timeseries("Warning statuses/s by code", targets(
            (f"sum by (command, status) ({rate(resp, D, WARNING)})", "{{command}} {{status}}")),
            "ops", "Responses with a warning status (0001, 0107, 0116, Bxxx), by command and code.", w=8),
        timeseries("Failure % by command", targets(
            (ratio(rate(resp, D, FAILURE), rate(resp, D, FINAL), "command"),
             "{{command}}")), "percentunit", "Share of final (non-pending) responses with a failure status.", w=8),
        table("Failures by AE pair and status",
              in_range(resp, f"{D}, {FAILURE}", "calling_ae, called_ae, site, command, status") + " > 0",
              "Failure responses in the selected time range." + NEW_SERIES_NOTE, w=24, h=7, value_name="Failures"),

        row("Response time (by command)"),
        timeseries("Response-time percentiles", targets(*[
            (f"histogram_quantile({q}, sum by (command, le) (rate(dicom_dimse_response_seconds_bucket{{{H_DIMSE}}}[{RATE}])))",
             f"p{round(q * 100)} {{{{command}}}}") for q in (0.5, 0.95, 0.99)]), "s",
            "Time from a DIMSE request to its final response. The histogram is labelled by command only: the site "
            "and AE title selections do not apply here.", legend_calcs=("mean", "max", "lastNotNull")),
        heatmap("Response-time distribution",
                f"sum by (le) (increase(dicom_dimse_response_seconds_bucket{{{H_DIMSE}}}[{RATE}]))",
                "Final DIMSE responses per response-time bucket (selected commands)."),
        timeseries("Mean response time", targets(
            (f"sum by (command) (rate(dicom_dimse_response_seconds_sum{{{H_DIMSE}}}[{RATE}]))"
             f" / (sum by (command) (rate(dicom_dimse_response_seconds_count{{{H_DIMSE}}}[{RATE}])) > 0)",
             "{{command}}")), "s", "Mean time from request to final response.", w=24, h=6),

        row("Sub-operations, cancels, unanswered"),
        timeseries("Sub-operations/s by outcome", targets(
            (f"sum by (command, outcome) ({rate('dicom_dimse_suboperations_total', D)})", "{{command}} {{outcome}}")),
            "ops", "C-MOVE/C-GET sub-operations completed, failed or warning (from the final response).", w=8),
        timeseries("Failed sub-operations/s by AE pair", targets(
            (f"sum by (calling_ae, called_ae, command) ({rate('dicom_dimse_suboperations_total', D, FAILED)})",
             "{{command}} {{calling_ae}} → {{called_ae}}")), "ops",
            "Failed C-MOVE/C-GET sub-operations, per AE pair.", w=8),
        timeseries("Cancels, unanswered, unmatched/s", targets(
            (f"sum by (command) ({rate(resp, D, CANCEL)})", "cancelled {{command}}"),
            (f"sum by (command) ({rate('dicom_dimse_unanswered_total', D)})", "unanswered {{command}}"),
            (f"sum by (command) ({rate('dicom_dimse_unmatched_responses_total', D)})", "unmatched {{command}}"),
        ), "ops", "Operations ended by C-CANCEL (status FE00), requests without a final response when the "
                  "association ended, and responses whose request was not seen.", w=8),

        row("Presentation contexts"),
        timeseries("Presentation-context rejections/s by SOP class", targets(
            (f"sum by (abstract_syntax, result) ({rate('dicom_presentation_contexts_total', P, NOT_ACCEPTED)})",
             "{{abstract_syntax}}: {{result}}")), "ops",
            "Presentation contexts the acceptor did not accept, by SOP class keyword and result (PS3.8 Table 9-18).",
            stack=True),
        table("Rejected presentation contexts",
              in_range("dicom_presentation_contexts_total", f"{P}, {NOT_ACCEPTED}",
                       "calling_ae, called_ae, site, abstract_syntax, result") + " > 0",
              "Rejected presentation contexts in the selected time range." + NEW_SERIES_NOTE, value_name="Contexts"),
        timeseries("Accepted presentation contexts/s by SOP class", targets(
            (f"sum by (abstract_syntax) ({rate('dicom_presentation_contexts_total', P, ACCEPTED)})",
             "{{abstract_syntax}}")), "ops", "Presentation contexts accepted, by SOP class keyword.", stack=True),
        timeseries("P-DATA throughput by AE pair", targets(
            (f"sum by (calling_ae, called_ae, direction) ({rate('dicom_pdata_bytes_total', P)})",
             "{{calling_ae}} → {{called_ae}} {{direction}}")), "Bps",
            "P-DATA-TF bytes per second by pair and direction."),
    ]
    return dashboard("dicom-dimse", "DICOM DIMSE operations",
                     "DIMSE operations, statuses, response times, sub-operations and presentation contexts "
                     "(dicom-probe).", panels, variables)


# -- dicom-probe-health ------------------------------------------------------------------------------


def probe_health() -> dict:
    def by_inst(metric, legend="{{instance}}", extra_by=""):
        by = f"instance, {extra_by}" if extra_by else "instance"
        return (f"sum by ({by}) (rate({metric}{{{B}}}[{RATE}]))", legend)

    panels = [
        row("Status"),
        stat("Targets up / down", targets((f"sum(up{{{B}}})", "up"), (f"count(up{{{B}}} == 0) or vector(0)", "down")),
             "short", "Probe scrape targets answering (up) and not (down).", graph=False),
        stat("Workers alive", targets((f"sum(dicom_probe_workers_alive{{{B}}})", "workers")), "short",
             "Capture worker processes running, all selected probes (0 after a --read replay has finished)."),
        stat("Worker restarts", targets((
            f"sum(increase(dicom_probe_worker_restarts_total{{{B}}}[$__range])) or vector(0)", "restarts")), "short",
             "Capture workers that died and were restarted in the selected time range.", steps=((1, "orange"),)),
        stat("Last packet age", targets((f"max(dicom_probe_last_packet_age_seconds{{{B}}})", "age")), "s",
             "Seconds since a worker last received a packet (worst probe).", steps=((600, "orange"), (3600, "red"))),
        stat("Flows active", targets((f"sum(dicom_probe_flows_active{{{B}}})", "flows")), "short",
             "TCP connections tracked now."),
        stat("Version", targets((f"count by (version) (dicom_probe_build_info{{{B}}})", "{{version}}")), "short",
             "Probes per dicom-probe version.", text_mode="name", graph=False),

        row("Capture"),
        timeseries("Packets/s", targets(by_inst("dicom_probe_packets_total", "{{instance}} {{interface}}", "interface")),
                   "pps", "Frames received (after the BPF filter), per probe and interface."),
        timeseries("Bytes/s", targets(by_inst("dicom_probe_bytes_total", "{{instance}} {{interface}}", "interface")),
                   "Bps", "Bytes of the frames received, per probe and interface."),
        timeseries("Kernel and interface drops/s", targets(
            by_inst("dicom_probe_kernel_drops_total", "kernel {{instance}} {{interface}}", "interface"),
            by_inst("dicom_probe_interface_drops_total", "interface {{instance}} {{interface}}", "interface"),
        ), "pps", "Frames dropped because a capture buffer was full (kernel, libpcap ps_drop) or by the NIC/driver "
                  "(ps_ifdrop). Live capture only. Raise capture.buffer_mib or add workers."),
        timeseries("Frames skipped/s by kind", targets(by_inst("dicom_probe_frames_skipped_total",
                                                               "{{instance}} {{kind}}", "kind")), "pps",
                   "Frames not decoded as TCP (non-ip, non-tcp, ipv4-fragment, truncated ...)."),
        timeseries("Probe up", targets((f"up{{{B}}}", "{{instance}}")), "short",
                   "1 when Prometheus could scrape the probe.", legend_calcs=("min", "lastNotNull")),
        timeseries("Worker lag", targets((f"max by (instance, worker) (dicom_probe_worker_lag_seconds{{{B}}})",
                                          "{{instance}} worker {{worker}}")), "s",
                   "Live capture: wall-clock time minus the timestamp of the last packet a worker processed."),

        row("Reassembly and decoding"),
        timeseries("Stream gaps/s", targets(by_inst("dicom_probe_stream_gaps_total")), "short",
                   "Holes in TCP byte streams: bytes the capture never saw (SPAN/TAP loss upstream, or drops).", w=8),
        timeseries("Gap bytes/s", targets(by_inst("dicom_probe_stream_gap_bytes_total")), "Bps",
                   "Bytes missing in those holes.", w=8),
        timeseries("Retransmitted segments/s", targets(by_inst("dicom_probe_retransmitted_segments_total")), "short",
                   "TCP segments carrying only bytes already seen.", w=8),
        timeseries("Resyncs/s", targets(by_inst("dicom_probe_resyncs_total")), "short",
                   "Times the PDU framer found a plausible PDU header again after losing the framing.", w=8),
        timeseries("PDU parse errors/s by kind", targets(by_inst("dicom_probe_pdu_errors_total",
                                                                 "{{instance}} {{kind}}", "kind")), "short",
                   "Malformed PDUs or items.", w=8),
        timeseries("DIMSE decode errors/s by kind", targets(by_inst("dicom_probe_dimse_errors_total",
                                                                    "{{instance}} {{kind}}", "kind")), "short",
                   "Command sets that could not be used.", w=8),
        timeseries("Protocol violations/s by kind", targets(by_inst("dicom_probe_protocol_violations_total",
                                                                    "{{instance}} {{kind}}", "kind")), "short",
                   "Well-formed PDUs the association state machine does not allow where they were seen.", w=8),

        row("Flows, labels, workers"),
        timeseries("Flows active", targets((f"sum by (instance) (dicom_probe_flows_active{{{B}}})", "{{instance}}")),
                   "short", "TCP connections tracked.", w=8),
        timeseries("Flow evictions/s by reason", targets(by_inst("dicom_probe_flows_evicted_total",
                                                                 "{{instance}} {{reason}}", "reason")), "short",
                   "TCP connections removed from the flow table: closed, idle, capture-end, table-full "
                   "(table-full: raise flows.max_flows).", w=8, stack=True),
        timeseries("AE title label overflow and invalid titles", targets(
            (f"sum by (instance) (increase(dicom_probe_ae_title_overflow_total{{{B}}}[{RATE}]))",
             "overflow {{instance}}"),
            (f"sum by (instance) (increase(dicom_probe_ae_titles_invalid_total{{{B}}}[{RATE}]))",
             "invalid {{instance}}"),
        ), "short", "AE title sightings shown as (overflow) beyond labels.max_ae_titles, and titles with bytes "
                    "outside the DICOM repertoire (%XX).", w=8),
        timeseries("Workers alive and restarts", targets(
            (f"sum by (instance) (dicom_probe_workers_alive{{{B}}})", "alive {{instance}}"),
            (f"sum by (instance) (increase(dicom_probe_worker_restarts_total{{{B}}}[{RATE}]))", "restarts {{instance}}"),
        ), "short", "Capture worker processes running, and restarts of workers that died.", w=8),
        timeseries("Series exposed", targets((f"scrape_samples_scraped{{{B}}}", "{{instance}}")), "short",
                   "Samples per scrape of each probe: grows with AE pairs, sites, reasons and statuses.", w=8),
        timeseries("Scrape duration", targets((f"scrape_duration_seconds{{{B}}}", "{{instance}}")), "s",
                   "How long Prometheus took to scrape each probe.", w=8),
    ]
    return dashboard("dicom-probe-health", "DICOM probe health",
                     "Capture, reassembly, decoding and worker health of the dicom-probe daemons.",
                     panels, probe_vars())


# -- dicom-tls ---------------------------------------------------------------------------------------


def tls() -> dict:
    conn, fail = "dicom_tls_connections_total", "dicom_tls_handshake_failures_total"
    hs = "dicom_tls_handshakes_total"
    cert = "dicom_tls_certificate_not_after_timestamp_seconds"
    variables = [
        *probe_vars(),
        query_var("site", "Site", f"label_values({conn}{{{B}}}, site)"),
        query_var("server", "TLS server", f'label_values({conn}{{{B}, site=~"$site"}}, server)'),
    ]
    panels = [
        row("Now"),
        stat("TLS connections/s", targets((f"sum({rate(conn, T)})", "connections/s")), "reqps",
             "Connections to the TLS ports (config tls_ports) that carried bytes, per second."),
        stat("Handshakes failing", targets((ratio(rate(fail, T), rate(conn, T)), "failing")), "percentunit",
             "Share of TLS connections that ended before the handshake completed.",
             steps=((0.05, "orange"), (0.2, "red"))),
        stat("Handshakes completed/s", targets((f"sum({rate(hs, T)})", "completed/s")), "reqps",
             "TLS handshakes completed (both sides sent application data) per second."),
        stat("Deprecated versions", targets((ratio(rate(hs, T, DEPRECATED), rate(hs, T)), "deprecated")),
             "percentunit", "Share of completed handshakes that used SSLv3, TLS 1.0 or TLS 1.1 (RFC 8996).",
             steps=((0.0001, "orange"),)),
        stat("Soonest certificate expiry", targets((f"min({cert}{{{TS}}}) - time()", "expires in")), "s",
             "Time until the first of the certificates seen (TLS <= 1.2 handshakes) expires; negative: expired.",
             steps=(), graph=False),
        stat("Incomplete/s", targets((f"sum({rate('dicom_tls_incomplete_total', T)}) or vector(0)", "incomplete/s")),
             "reqps", "TLS connections whose handshake the capture did not show whole (mid-stream, loss)."),

        row("Handshakes"),
        timeseries("Handshake failures/s by alert", targets(
            (f"sum by (alert, sent_by) ({rate(fail, T)})", "{{alert}} ({{sent_by}})")), "ops",
            "TLS connections that ended before the handshake completed: by the alert seen in clear (unknown_ca, "
            "certificate_expired, protocol_version, ...) or encrypted-alert, tcp-reset, tcp-close, timeout, not-tls, "
            "and who sent it.", stack=True),
        timeseries("Failure % by server and site", targets(
            (ratio(rate(fail, T), rate(conn, T), "server, site"), "{{server}} from {{site}}")), "percentunit",
            "Share of TLS connections failing their handshake, per server and client site."),
        timeseries("Completed handshakes/s by version", targets(
            (f"sum by (version) ({rate(hs, T)})", "{{version}}")), "ops",
            "Completed TLS handshakes by negotiated version.", stack=True, w=8),
        timeseries("Connections/s by server", targets(
            (f"sum by (server) ({rate(conn, T)})", "{{server}}")), "ops",
            "TLS connections per second by server address:port.", w=8),
        timeseries("Handshake time percentiles", targets(*[
            (f"histogram_quantile({q}, sum by (le) (rate(dicom_tls_handshake_seconds_bucket{{{TS}}}[{RATE}])))",
             f"p{round(q * 100)}") for q in (0.5, 0.95)]), "s",
            "Time from the ClientHello to the handshake's completion (labelled by server only: the site "
            "selection does not apply).", w=8),
        table("Handshake failures by server, site and alert",
              in_range(fail, T, "server, site, alert, sent_by") + " > 0",
              "Failed TLS handshakes in the selected time range." + NEW_SERIES_NOTE, w=24, h=7,
              value_name="Failures"),

        row("Certificates"),
        table("Certificate expiry", f"min by (server, role, subject, issuer) ({cert}{{{TS}}}) - time()",
              "Leaf certificates seen in clear (TLS <= 1.2 handshakes: TLS 1.3 encrypts them), by the server of the "
              "connection, role, subject and issuer: time left until notAfter (negative: expired). Soonest first.",
              w=24, h=7, value_name="Expires in", unit="s"),
    ]
    for p in panels:  # soonest expiry first
        if p["title"] == "Certificate expiry":
            p["options"]["sortBy"] = [{"displayName": "Expires in", "desc": False}]
    return dashboard("dicom-tls", "DICOM over TLS",
                     "TLS handshakes on the DICOM-over-TLS ports: failures by alert, versions, certificate expiry "
                     "(dicom-probe; nothing is decrypted).", panels, variables, tags=("tls",))


DASHBOARDS = {
    "dicom-overview.json": overview,
    "dicom-ae-pair.json": ae_pair,
    "dicom-dimse.json": dimse,
    "dicom-probe-health.json": probe_health,
    "dicom-tls.json": tls,
}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
