"""Configuration: one YAML file, every key optional, validated against :data:`SCHEMA`.

Errors are data — ``(key path, problem)`` — all collected before failing, so ``check-config`` can
list every mistake at once and a typo names the key (with a suggestion).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any


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


def _tls_ports(v):
    return _ports(v) if v else None  # may be empty: no TLS observation


def _port_range(lo, hi):
    def check(v):
        return None if lo <= v <= hi else f"must be between {lo} and {hi}"
    return check


def _interfaces(v):
    if not v:
        return "needs at least one interface (or 'any')"
    for name in v:
        if not isinstance(name, str) or not name or len(name) > 15 or "/" in name or " " in name:
            return f"{name!r} is not an interface name"
    return None


def _workers(v):
    if v == "auto":
        return None
    if isinstance(v, int) and 1 <= v <= 256:
        return None
    return "must be 'auto' or a number from 1 to 256"


def _listen(v):
    from .http import parse_listen  # the HTTP module owns the syntax

    try:
        parse_listen(v)
    except ValueError as e:
        return str(e)
    return None


def _tls_version(v):
    from .http import TLS_VERSIONS

    return None if v in TLS_VERSIONS else f"must be {' or '.join(TLS_VERSIONS)}, got {v!r}"


# http.tls: validated as one mapping, because its keys depend on each other (a certificate needs
# its key, and the key must match it). Errors read "http.tls: key_file: ..." and list every problem.
_TLS_SCHEMA = {
    "cert_file": Key(str, "", None, "server certificate (PEM, chain after it), absolute path"),
    "key_file": Key(str, "", None, "its private key (PEM, unencrypted), absolute path"),
    "client_ca_file": Key(str, "", None, "CA certificates (PEM) client certificates must chain to; empty: none asked"),
    "min_version": Key(str, "TLS12", _tls_version, "oldest TLS version accepted: TLS12 or TLS13"),
}


# exporter-toolkit web-config keys someone may copy over, and what to write instead.
_TLS_FOREIGN_KEYS = {
    "ca_file": "unknown key (did you mean 'client_ca_file', the CA client certificates must chain to?)",
    "client_auth_type": "unknown key: setting client_ca_file requires and verifies client certificates",
}


def _tls(v):
    from .http import load_tls

    errors: list = []
    settings = _validate(_TLS_SCHEMA, v, "", errors)  # unknown keys (with a suggestion), types
    errors = [(key, _TLS_FOREIGN_KEYS.get(key, msg) if msg.startswith("unknown key") else msg) for key, msg in errors]
    if not errors:
        _, errors = load_tls(settings)  # files readable, both or neither, the key matches the certificate
    return "; ".join(f"{key}: {msg}" for key, msg in errors) or None


def _basic_auth_users(v):
    from .http import basic_auth_problem

    return basic_auth_problem(v)


def _destination(v):
    return None if v else "must be 'stdout', 'none' or a file path"


def _sites(v):
    import ipaddress

    for name, nets in v.items():
        if not isinstance(name, str) or not name or any(c in name for c in '"\\\n{}'):
            return f"site name {name!r} must be a plain string"
        if isinstance(nets, str):
            nets = [nets]
        if not isinstance(nets, list) or not nets:
            return f"site {name!r} needs a list of networks (CIDR)"
        for net in nets:
            try:
                ipaddress.ip_network(str(net), strict=False)
            except ValueError:
                return f"site {name!r}: {net!r} is not a network (e.g. 198.19.1.0/24)"
    return None


def _titles(v):
    for t in v:
        if not isinstance(t, str) or not t.strip() or len(t.strip()) > 16:
            return f"{t!r} is not an AE title (1-16 characters)"
    return None


def _aliases(v):
    for k, val in v.items():
        if not isinstance(k, str) or not isinstance(val, str):
            return "maps AE titles (strings) to labels (strings)"
    return None


SCHEMA: dict[str, Any] = {
    "ports": Key(list, [104, 11112], _ports, "TCP ports DICOM servers listen on"),
    "tls_ports": Key(list, [2762], _tls_ports, "TCP ports of DICOM over TLS: handshakes observed, content not ([] = off)"),
    "capture": {
        "interfaces": Key(list, ["any"], _interfaces, "interfaces to capture on (a SPAN/TAP port), or any"),
        "snaplen": Key(int, 65535, _port_range(128, 262144), "bytes captured per frame"),
        "buffer_mib": Key(int, 64, _port_range(1, 4096), "kernel capture buffer per worker and interface, MiB"),
        "promiscuous": Key(bool, True, None, "see traffic not addressed to this host (SPAN/TAP)"),
        "filter": Key(str, "", None, "extra BPF expression ANDed with the DICOM port filter"),
        "drop_pure_acks": Key(bool, False, None,
                              "drop segments carrying only an ACK in the capture filter (high rates; see README)"),
    },
    "workers": Key((int, str), "auto", _workers, "capture worker processes; auto = one per core"),
    "http": {
        "listen": Key(str, ":9764", _listen, "HOST:PORT for /metrics and /healthz"),
        "tls": Key(dict, {k: spec.default for k, spec in _TLS_SCHEMA.items()}, _tls,
                   "HTTPS: cert_file and key_file (both or neither), client_ca_file for mTLS, min_version"),
        "basic_auth_users": Key(dict, {}, _basic_auth_users, "user -> bcrypt hash; every path then needs one"),
    },
    "event_log": {
        "destination": Key(str, "stdout", _destination, "stdout (journald), none, or a file path"),
        "max_bytes": Key(int, 50 << 20, _positive, "rotate the file when it would exceed this size"),
        "backups": Key(int, 5, _port_range(0, 100), "rotated files kept"),
    },
    "run_as": {
        "user": Key(str, "", None, "started as root: switch to this user once capture is open ('' = stay)"),
        "group": Key(str, "", None, "... and this group ('' = the user's primary group)"),
    },
    "evidence": {
        "directory": Key(str, "", None, "write evidence pcaps of rejected/aborted associations here ('' = off)"),
        "max_files": Key(int, 200, _positive, "evidence files kept at most (per worker); the oldest go first"),
        "max_bytes": Key(int, 50 << 20, _positive, "bytes of evidence kept at most (per worker)"),
        "per_minute": Key(int, 20, _positive, "evidence files written per minute at most (per worker)"),
        "max_packets": Key(int, 64, _positive, "frames kept per connection while its association is set up"),
    },
    "sites": Key(dict, {}, _sites, "site name -> client networks (CIDR), e.g. remote-hospital: [198.19.1.0/24]"),
    "known_ae_titles": Key(list, [], _titles, "AE titles expected on this network; others are reported as new"),
    "flows": {
        "idle_timeout": Key((int, float), 300, _positive, "seconds without a packet before a connection expires"),
        "closed_linger": Key((int, float), 30, _positive, "seconds a closed connection is remembered"),
        "max_flows": Key(int, 100_000, _positive, "connections tracked at most"),
        "max_stream_buffer": Key(int, 256 * 1024, _positive, "out-of-order bytes held per direction"),
        "max_buffer_total": Key(int, 64 << 20, _positive, "out-of-order bytes held by all connections of a worker"),
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

    @property
    def tls_ports(self) -> list[int]:
        return list(self.raw["tls_ports"])

    def capture_ports(self, extra_ports=(), extra_tls_ports=()) -> list[int]:
        """Every port the capture filter must let through: DICOM and DICOM over TLS."""
        return sorted(set(self.ports) | set(extra_ports) | set(self.tls_ports) | set(extra_tls_ports))

    @property
    def filter_options(self) -> dict:
        """The capture section's keywords for :func:`probe.capture.build_filter` and FileSource."""
        cap = self.raw["capture"]
        return {"user_filter": cap["filter"] or None, "drop_pure_acks": cap["drop_pure_acks"]}

    def with_pure_acks_dropped(self) -> "Config":
        """This configuration with ``capture.drop_pure_acks`` on (``analyze --drop-pure-acks``)."""
        return Config({**self.raw, "capture": {**self.raw["capture"], "drop_pure_acks": True}})

    def with_tls_ports(self, extra) -> "Config":
        """This configuration with more TLS ports (``analyze --tls-port``)."""
        if not extra:
            return self
        return Config({**self.raw, "tls_ports": sorted(set(self.tls_ports) | set(extra))})

    def flow_settings(self, extra_ports=(), extra_tls_ports=()) -> FlowSettings:
        f = self.raw["flows"]
        tls = (frozenset(self.tls_ports) | frozenset(extra_tls_ports)) - frozenset(extra_ports)
        return FlowSettings(
            tls_ports=tls,
            server_ports=(frozenset(self.ports) - tls) | frozenset(extra_ports),
            idle_timeout=float(f["idle_timeout"]),
            closed_linger=float(f["closed_linger"]),
            max_flows=f["max_flows"],
            limits=Limits(max_stream_buffer=f["max_stream_buffer"], max_buffer_total=f["max_buffer_total"],
                          max_control_pdu=self.raw["limits"]["max_control_pdu"]),
        )

    def evidence_writer(self):
        """An EvidenceWriter when evidence.directory is set, else None."""
        ev = self.raw["evidence"]
        if not ev["directory"]:
            return None
        from .evidence import EvidenceSettings, EvidenceWriter

        return EvidenceWriter(EvidenceSettings(**ev))

    @property
    def workers(self) -> int:
        w = self.raw["workers"]
        return max(1, os.cpu_count() or 1) if w == "auto" else w

    @property
    def sites(self) -> dict[str, list[str]]:
        return {name: ([nets] if isinstance(nets, str) else list(nets)) for name, nets in self.raw["sites"].items()}

    @property
    def known_ae_titles(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.raw["known_ae_titles"])

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
        ok = isinstance(value, spec.type) and (spec.type is bool or not isinstance(value, bool))
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
    if not text.strip():  # the built-in defaults (no file): no YAML to read, nor to import
        data = None
    else:
        data = _safe_load(text, source)
    errors: list = []
    raw = _validate(SCHEMA, data, "", errors)
    both = sorted(set(raw["ports"]) & set(raw["tls_ports"]))
    if both:
        errors.append(("tls_ports", f"port {both[0]} is also in ports: a port carries DICOM or DICOM over TLS, not both"))
    if errors:
        raise ConfigError(source, errors)
    return Config(raw)


def _safe_load(text: str, source: str):
    import yaml  # imported here: start-up without a configuration file does not need it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(yaml)"
        raise ConfigError(source, [(where, f"not valid YAML: {getattr(e, 'problem', e)}")]) from None


def load(path: str | None) -> Config:
    if path is None:
        return parse("", "<defaults>")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, [("(file)", e.strerror or str(e))]) from None
    return parse(text, path)
