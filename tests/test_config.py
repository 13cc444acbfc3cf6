"""Configuration: defaults, the bundled file, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from probe import config
from probe.cli import main

BUNDLED = Path(__file__).parent.parent / "config" / "dicom-probe.yaml"


def test_bundled_config_is_valid_and_equals_the_defaults():
    assert config.load(str(BUNDLED)).raw == config.load(None).raw


def test_empty_file_gives_defaults():
    cfg = config.parse("")
    assert cfg.ports == [104, 11112]
    s = cfg.flow_settings([4242])
    assert s.server_ports == {104, 11112, 4242} and s.idle_timeout == 300


@pytest.mark.parametrize("text,path,words", [
    ("flow:\n  idle_timeout: 3\n", "flow", "did you mean 'flows'"),
    ("flows:\n  idle_timout: 3\n", "flows.idle_timout", "did you mean 'flows.idle_timeout'"),
    ("ports: [104, 70000]\n", "ports", "70000"),
    ("ports: []\n", "ports", "at least one"),
    ("ports: 104\n", "ports", "must be a list"),
    ("labels:\n  max_ae_titles: many\n", "labels.max_ae_titles", "must be an integer"),
    ("labels:\n  max_ae_titles: true\n", "labels.max_ae_titles", "must be an integer"),
    ("flows:\n  idle_timeout: -1\n", "flows.idle_timeout", "greater than 0"),
    ("labels:\n  ae_aliases: {A: 1}\n", "labels.ae_aliases", "maps AE titles"),
    ("flows: [1, 2]\n", "flows", "mapping"),
    ("ports: [104\n", "line", "not valid YAML"),
])
def test_errors_name_the_key(text, path, words):
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, "x.yaml")
    (got_path, msg), *_ = e.value.errors
    assert got_path.startswith(path) and words in msg


def test_all_errors_are_reported_at_once():
    with pytest.raises(config.ConfigError) as e:
        config.parse("flow: 1\nports: [0]\nlabels: {max_ae_titles: x}\n")
    assert len(e.value.errors) == 3


def test_check_config_command(tmp_path, capsys):
    assert main(["check-config", str(BUNDLED)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("flows:\n  max_flow: 10\n")
    assert main(["check-config", str(bad)]) == 2
    assert "flows.max_flow: unknown key (did you mean 'flows.max_flows'?)" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 2


def _leaves(schema, path=""):
    for key, spec in schema.items():
        if isinstance(spec, dict):
            yield from _leaves(spec, f"{path}{key}.")
        else:
            yield f"{path}{key}", spec


LEAVES = list(_leaves(config.SCHEMA))


def _doc(path: str, value) -> dict:
    *parents, last = path.split(".")
    doc = node = {}
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return doc


@pytest.mark.parametrize("path,spec", LEAVES, ids=[p for p, _ in LEAVES])
def test_every_key_rejects_a_wrong_type_naming_the_key(path, spec):
    import yaml

    wrong = {list: "not-a-list", dict: "not-a-mapping", str: 12345, bool: "yes please", int: "many"}
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    bad = [v for t, v in wrong.items() if t not in types and not (t is int and float in types)]
    if str in types:
        bad = [[1, 2]]  # a string key given a list
    with pytest.raises(config.ConfigError) as e:
        config.parse(yaml.safe_dump(_doc(path, bad[0])), "x.yaml")
    assert any(p == path for p, _ in e.value.errors), e.value.errors


@pytest.mark.parametrize("path,spec", LEAVES, ids=[p for p, _ in LEAVES])
def test_every_key_is_documented_in_the_bundled_file(path, spec):
    text = BUNDLED.read_text()
    assert f"{path.split('.')[-1]}:" in text, f"{path} is not in config/dicom-probe.yaml"
    assert spec.doc, f"{path} has no description in SCHEMA"


@pytest.mark.parametrize("text,path", [
    ("capture: {snaplen: 10}\n", "capture.snaplen"),
    ("capture: {interfaces: ['bad name']}\n", "capture.interfaces"),
    ("workers: 0\n", "workers"),
    ("workers: lots\n", "workers"),
    ("http: {listen: 'nope'}\n", "http.listen"),
    ("event_log: {backups: 1000}\n", "event_log.backups"),
    ("sites: {remote: [300.1.1.0/24]}\n", "sites"),
    ("sites: {remote: []}\n", "sites"),
    ("known_ae_titles: ['THIS_TITLE_IS_TOO_LONG']\n", "known_ae_titles"),
    ("known_ae_titles: ['  ']\n", "known_ae_titles"),
    ("flows: {max_flows: 0}\n", "flows.max_flows"),
])
def test_bad_values_name_the_key(text, path):
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, "x.yaml")
    assert e.value.errors[0][0] == path
