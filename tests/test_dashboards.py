"""The Grafana dashboards in grafana-dashboards/: structure, data source use, metric names, provisioning.

That the queries parse and return data on real traffic is tests/test_prometheus_live.py's job.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from probe.metrics import FAMILIES, HISTOGRAM

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana-dashboards"
NAMES = ("dicom-overview.json", "dicom-ae-pair.json", "dicom-dimse.json", "dicom-probe-health.json", "dicom-tls.json")
DS_REF = {"type": "prometheus", "uid": "${datasource}"}

# Series that are not the probe's own families but that the dashboards may read.
PROMETHEUS_SERIES = {"up", "scrape_samples_scraped", "scrape_duration_seconds", "ALERTS"}


def probe_metric_names() -> set[str]:
    names = set()
    for f in FAMILIES:
        if f.kind == HISTOGRAM:
            names |= {f.name + s for s in ("_bucket", "_count", "_sum")}
        else:
            names.add(f.name)
    return names


def load(name):
    return json.loads((DASHBOARD_DIR / name).read_text())


def all_panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", ())  # panels inside a collapsed row


def all_targets(dash):
    for p in all_panels(dash):
        for t in p.get("targets", ()):
            yield p, t


def metric_names_in(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (identifiers followed by { or [ or a space/paren)."""
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    no_strings = re.sub(r"\{[^}]*\}", "{}", no_strings)
    no_strings = re.sub(r"\[[^\]]*\]", "[]", no_strings)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", no_strings))
    return {w for w in words if w.startswith("dicom_") or w in PROMETHEUS_SERIES}


@pytest.fixture(params=NAMES)
def dash(request):
    return load(request.param)


def test_generator_and_json_agree():
    r = subprocess.run([sys.executable, str(DASHBOARD_DIR / "generate.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_schema_and_identity(dash):
    assert dash["schemaVersion"] >= 39
    assert re.fullmatch(r"dicom-[a-z-]+", dash["uid"])
    assert dash["title"] and "dicom-probe" in dash["tags"]
    assert dash.get("id") is None  # provisioned dashboards carry no database id


def test_uids_and_titles_unique():
    dashes = [load(n) for n in NAMES]
    assert len({d["uid"] for d in dashes}) == len(NAMES)
    assert len({d["title"] for d in dashes}) == len(NAMES)


def test_panel_ids_unique_and_grid_positions_valid(dash):
    panels = list(all_panels(dash))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    occupied = set()
    for p in panels:
        g = p["gridPos"]
        assert set(g) == {"h", "w", "x", "y"}
        assert all(isinstance(v, int) and v >= 0 for v in g.values())
        assert 1 <= g["w"] and g["x"] + g["w"] <= 24, p["title"]
        assert g["h"] >= 1
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells


def test_every_panel_has_a_title_and_queries(dash):
    for p in all_panels(dash):
        assert p["title"]
        if p["type"] == "row":
            assert "targets" not in p
            continue
        assert p["type"] in {"timeseries", "stat", "table", "heatmap", "bargauge", "gauge", "text"}
        assert p.get("description"), f"{p['title']}: no description"
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"], p["title"]


def test_datasource_variable_present_and_used(dash):
    variables = dash["templating"]["list"]
    ds = [v for v in variables if v["name"] == "datasource"]
    assert len(ds) == 1 and ds[0]["type"] == "datasource" and ds[0]["query"] == "prometheus"
    for p in all_panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"] == DS_REF, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS_REF, p["title"]
    for v in variables:
        if v["type"] == "query":
            assert v["datasource"] == DS_REF, v["name"]
    for a in dash["annotations"]["list"]:
        assert a["datasource"] == DS_REF


def test_no_hard_coded_datasource_uid(dash):
    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "datasource":
                    assert v in (DS_REF, "${datasource}"), f"{path}.{k} = {v!r}"
                if k == "uid" and path != "":
                    assert v == "${datasource}", f"{path}.uid = {v!r}"
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(dash, "")


def test_template_variables(dash):
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= set(variables)
    if dash["uid"] == "dicom-tls":
        assert {"site", "server"} <= set(variables)
    elif dash["uid"] != "dicom-probe-health":
        assert {"site", "calling_ae", "called_ae"} <= set(variables)
    if dash["uid"] == "dicom-dimse":
        assert "command" in variables
    for name, v in variables.items():
        if v["type"] != "query":
            continue
        assert v["definition"].startswith("label_values(") and v["definition"].endswith(f", {name})")
        assert v["query"]["query"] == v["definition"]
        assert v["includeAll"] and v["allValue"] == ".*" and v["multi"]
    # Every variable a query uses exists (and is matched with =~, as multi-value variables must be).
    names = set(variables) | {"__rate_interval", "__range", "__interval"}
    for p, t in all_targets(dash):
        for used in re.findall(r"\$\{?(\w+)", t["expr"]):
            assert used in names, f"{p['title']}: unknown variable ${used}"
        assert not re.search(r'[^=!]="\$', t["expr"]), f"{p['title']}: use =~ with template variables"


def test_queries_use_only_known_metrics(dash):
    known = probe_metric_names() | PROMETHEUS_SERIES
    for p, t in all_targets(dash):
        used = metric_names_in(t["expr"])
        assert used, f"{p['title']}: no metric in {t['expr']}"
        assert used <= known, f"{p['title']}: unknown metrics {used - known}"
        assert t["expr"].count("(") == t["expr"].count(")"), p["title"]


def test_dashboards_cover_the_requested_views():
    exprs = {n: " ".join(t["expr"] for _, t in all_targets(load(n))) for n in NAMES}
    types = {n: {p["type"] for p in all_panels(load(n))} for n in NAMES}
    ov = exprs["dicom-overview.json"]
    for needle in ("dicom_association_requests_total", "by (called_ae)", "by (calling_ae)", "by (site)",
                   "by (phase, by, reason)", "dicom_associations_active",
                   "dicom_ae_title_first_seen_timestamp_seconds", "dicom_probe_new_ae_titles_total", "up{"):
        assert needle in ov, needle
    pair = exprs["dicom-ae-pair.json"]
    for needle in ("histogram_quantile(0.95", "dicom_association_setup_seconds_bucket",
                   "dicom_association_no_response_total", "dicom_association_closed_without_release_total",
                   "dicom_dimse_requests_total", 'status_class="failure"'):
        assert needle in pair, needle
    dimse = exprs["dicom-dimse.json"]
    for needle in ("dicom_dimse_response_seconds_bucket", "dicom_dimse_suboperations_total",
                   'dicom_presentation_contexts_total{', 'result!="acceptance"'):
        assert needle in dimse, needle
    assert "heatmap" in types["dicom-dimse.json"]
    health = exprs["dicom-probe-health.json"]
    for needle in ("dicom_probe_packets_total", "dicom_probe_kernel_drops_total", "dicom_probe_interface_drops_total",
                   "dicom_probe_stream_gaps_total", "dicom_probe_pdu_errors_total", "dicom_probe_resyncs_total",
                   "dicom_probe_flows_active", "dicom_probe_flows_evicted_total", "dicom_probe_ae_title_overflow_total",
                   "dicom_probe_worker_restarts_total", "dicom_probe_workers_alive", "up{"):
        assert needle in health, needle
    tls = exprs["dicom-tls.json"]
    for needle in ("dicom_tls_connections_total", "by (alert, sent_by)", "by (version)",
                   "dicom_tls_certificate_not_after_timestamp_seconds", "- time()", "dicom_tls_handshake_seconds_bucket",
                   'version=~"SSLv3|TLSv1.0|TLSv1.1"'):
        assert needle in tls, needle


def test_heatmaps_read_buckets_in_heatmap_format():
    for n in NAMES:
        for p in all_panels(load(n)):
            if p["type"] == "heatmap":
                (t,) = p["targets"]
                assert t["format"] == "heatmap" and "_bucket" in t["expr"] and "by (le)" in t["expr"]
                assert p["options"]["calculate"] is False


def test_provisioning_files():
    dashboards = yaml.safe_load((DASHBOARD_DIR / "provisioning" / "dashboards.yaml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    datasources = yaml.safe_load((DASHBOARD_DIR / "provisioning" / "datasources.yaml").read_text())
    assert datasources["apiVersion"] == 1
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"].startswith("http")
    assert "uid" not in ds  # the dashboards find it through their datasource variable
