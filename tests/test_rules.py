"""deploy/prometheus: the rules pass `promtool check rules` and their unit tests (`promtool test rules`),
every alert is tested firing and not firing, the rules read only metrics the probe exports, and the
example Prometheus configuration is valid."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from test_dashboards import metric_names_in, probe_metric_names

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "dicom-probe.rules.yml"
RULE_TESTS = PROM_DIR / "dicom-probe.rules.test.yml"
CONFIG = PROM_DIR / "prometheus.yml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus; "
                                                              "bash deploy/install.sh --test)")


def rules():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def promtool(*args):
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=PROM_DIR, timeout=120)


@needs_promtool
def test_promtool_check_rules():
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


@needs_promtool
def test_promtool_test_rules():
    r = promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@needs_promtool
def test_example_prometheus_config():
    r = promtool("check", "config", str(CONFIG))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    alerts = {r["alert"] for r in rules() if "alert" in r}
    firing, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for t in case.get("alert_rule_test", ()):
            (firing if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested not firing"
    assert (firing | quiet) <= alerts


def test_alerts_are_documented():
    for r in rules():
        if "alert" not in r:
            continue
        assert re.fullmatch(r"Dicom[A-Za-z0-9]+", r["alert"])
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, r["alert"]
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert "(alert: " in r["annotations"]["description"], f"{r['alert']}: the description states no threshold"
        # Per-pair alerts name the pair, site and reason/status through $labels.
        if "calling_ae" in r["expr"] and r["alert"] != "DicomAssociationSetupSlow":
            text = r["annotations"]["summary"]
            for label in ("calling_ae", "called_ae", "site"):
                assert f"$labels.{label}" in text, f"{r['alert']}: summary lacks {label}"
            assert "$labels.reason" in text or "$labels.status" in text, r["alert"]


def test_seed_alert_summary():
    (seed,) = [r for r in rules() if r.get("alert") == "DicomAETitleNotRecognized"]
    assert seed["annotations"]["summary"] == ("calling AE {{ $labels.calling_ae }} at site {{ $labels.site }} is being "
                                              "rejected by {{ $labels.called_ae }}: {{ $labels.reason }}")
    assert "calling-ae-title-not-recognized" in seed["expr"] and "called-ae-title-not-recognized" in seed["expr"]


def test_rules_read_only_exported_metrics():
    recorded = {r["record"] for r in rules() if "record" in r}
    known = probe_metric_names() | {"up"}
    for r in rules():
        expr = re.sub(r"\b\w+:\w+:\w+\b", "", r["expr"])  # recorded series, checked below
        used = metric_names_in(expr)
        assert used <= known, f"{r.get('record') or r.get('alert')}: unknown metrics {used - known}"
        for name in re.findall(r"\b\w+:\w+:\w+\b", r["expr"]):
            assert name in recorded, f"{r.get('record') or r.get('alert')}: {name} is not recorded here"


def test_recording_rule_names_follow_the_convention():
    for r in rules():
        if "record" in r:
            level, metric, ops = r["record"].split(":")
            assert level and metric.startswith("dicom_") and ops, r["record"]
