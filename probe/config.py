"""Configuration: one YAML file, every key optional, validated against :data:`SCHEMA`.

Errors are data — ``(key path, problem)`` — all collected before failing, so ``check-config`` can
list every mistake at once and a typo names the key (with a suggestion).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import yaml

from .connection import Limits
from .flows import FlowSettings


@dataclass(frozen=True)
class Key:
    type: type | tuple[type, ...]
    default: Any
    check: Any = None  # callable(value) -> error message or None
    doc: str = ""


def _positive(v):
    return None if v > 0 else "must be greater than 0"


def _ports(v):
    if not v:
        return "needs at least one port"
    for p in v:
        if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 65535:
            return f"{p!r} is not a TCP port (1-65535)"
    return None


def _aliases(v):
    for k, val in v.items():
        if not isinstance(k, str) or not isinstance(val, str):
            return "maps AE titles (strings) to labels (strings)"
    return None


SCHEMA: dict[str, Any] = {
    "ports": Key(list, [104, 11112], _ports, "TCP ports DICOM servers listen on"),
    "flows": {
        "idle_timeout": Key((int, float), 300, _positive, "seconds without a packet before a connection expires"),
        "closed_linger": Key((int, float), 30, _positive, "seconds a closed connection is remembered"),
        "max_flows": Key(int, 100_000, _positive, "connections tracked at most"),
        "max_stream_buffer": Key(int, 256 * 1024, _positive, "out-of-order bytes held per direction"),
    },
    "limits": {
        "max_control_pdu": Key(int, 1 << 20, _positive, "largest A-ASSOCIATE PDU decoded, bytes"),
    },
    "labels": {
        "max_ae_titles": Key(int, 500, _positive, "distinct AE titles before folding into (overflow)"),
        "ae_aliases": Key(dict, {}, _aliases, "AE title -> label value to show instead"),
    },
}


class ConfigError(Exception):
    def __init__(self, source: str, errors: list[tuple[str, str]]):
        self.source = source
        self.errors = errors
        super().__init__("\n".join(f"{source}: {path}: {msg}" for path, msg in errors))


@dataclass(frozen=True)
class Config:
    raw: dict

    @property
    def ports(self) -> list[int]:
        return list(self.raw["ports"])

    def flow_settings(self, extra_ports=()) -> FlowSettings:
        f = self.raw["flows"]
        return FlowSettings(
            server_ports=frozenset(self.ports) | frozenset(extra_ports),
            idle_timeout=float(f["idle_timeout"]),
            closed_linger=float(f["closed_linger"]),
            max_flows=f["max_flows"],
            limits=Limits(max_stream_buffer=f["max_stream_buffer"],
                          max_control_pdu=self.raw["limits"]["max_control_pdu"]),
        )

    @property
    def max_ae_titles(self) -> int:
        return self.raw["labels"]["max_ae_titles"]

    @property
    def ae_aliases(self) -> dict[str, str]:
        return dict(self.raw["labels"]["ae_aliases"])


def _type_name(t) -> str:
    names = {int: "an integer", float: "a number", list: "a list", dict: "a mapping", str: "a string", bool: "true/false"}
    if isinstance(t, tuple):
        return "a number" if set(t) == {int, float} else " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def _validate(schema: dict, data: Any, path: str, errors: list) -> dict:
    out: dict = {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append((path or "(top level)", "must be a mapping"))
        data = {}
    for key in data:
        if key not in schema:
            hint = difflib.get_close_matches(str(key), list(schema), n=1)
            errors.append((f"{path}{key}", "unknown key" + (f" (did you mean '{path}{hint[0]}'?)" if hint else "")))
    for key, spec in schema.items():
        kpath = f"{path}{key}"
        if isinstance(spec, dict):
            out[key] = _validate(spec, data.get(key), kpath + ".", errors)
            continue
        if key not in data or data[key] is None:
            out[key] = spec.default
            continue
        value = data[key]
        ok = isinstance(value, spec.type) and not isinstance(value, bool)
        if not ok:
            errors.append((kpath, f"must be {_type_name(spec.type)}, got {type(value).__name__} {value!r}"))
            out[key] = spec.default
            continue
        problem = spec.check(value) if spec.check else None
        if problem:
            errors.append((kpath, problem))
            out[key] = spec.default
            continue
        out[key] = value
    return out


def parse(text: str, source: str = "<config>") -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(yaml)"
        raise ConfigError(source, [(where, f"not valid YAML: {getattr(e, 'problem', e)}")]) from None
    errors: list = []
    raw = _validate(SCHEMA, data, "", errors)
    if errors:
        raise ConfigError(source, errors)
    return Config(raw)


def load(path: str | None) -> Config:
    if path is None:
        return parse("", "<defaults>")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, [("(file)", e.strerror or str(e))]) from None
    return parse(text, path)
