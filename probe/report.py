"""Offline report formats: one JSON object per association, and the per-AE-pair table.

The table is computed from the metric store — the very numbers the daemon exports — never from a
second tally.
"""

from __future__ import annotations

import json
import math
import statistics
import time

from .dicom import association as A
from .dicom import codes
from .metrics import AeLabeler, MetricStore
from .sites import SiteMap


def _ae(raw: bytes | None) -> str | None:
    return None if raw is None else AeLabeler.clean(raw)[0]


def _client_server(a: A.Association) -> tuple[str, str]:
    """The requestor is reported as the client (it is whenever the RQ was seen)."""
    return (a.client, a.server) if a.requestor_is_client else (a.server, a.client)


def association_record(a: A.Association) -> dict:
    client, server = _client_server(a)
    rec: dict = {
        "client": client,
        "server": server,
        "calling_ae": _ae(a.calling_ae),
        "called_ae": _ae(a.called_ae),
        "site": a.site,
        "start": a.start_ts,
        "end": a.end_ts,
        "outcome": a.outcome,
        "rq_seen": a.rq_seen,
        "setup_seconds": None if a.setup_seconds is None else round(a.setup_seconds, 6),
    }
    if a.reject is not None:
        result, source, reason = a.reject
        rec["reject"] = {
            "result": codes.reject_result_name(result),
            "source": codes.reject_source_name(source),
            "reason": codes.reject_reason_name(source, reason),
        }
    if a.abort is not None:
        by, source, reason, phase = a.abort
        rec["abort"] = {
            "by": by,
            "source": codes.abort_source_name(source),
            "reason": codes.abort_reason_name(source, reason),
            "phase": phase,
        }
    rq, ac = a.request, a.accept
    if rq is not None:
        rec["application_context"] = rq.application_context
        rec["proposed_contexts"] = len(rq.contexts)
        ui = rq.user_info
        rec["requestor"] = {
            "max_pdu_length": ui.max_pdu_length,
            "implementation_class_uid": ui.implementation_class_uid,
            "implementation_version_name": ui.implementation_version_name,
        }
        if ui.user_identity_type is not None:
            rec["user_identity"] = {
                "type": codes.user_identity_type_name(ui.user_identity_type),
                "response_requested": ui.user_identity_response_requested,
            }
    if ac is not None:
        abstract = {c.context_id: c.abstract_syntax for c in rq.contexts} if rq is not None else {}
        accepted, rejected = [], []
        for c in ac.contexts:
            if c.result == 0:
                accepted.append({"id": c.context_id, "abstract_syntax": abstract.get(c.context_id),
                                 "transfer_syntax": c.transfer_syntax})
            else:
                rejected.append({"id": c.context_id, "abstract_syntax": abstract.get(c.context_id),
                                 "result": codes.context_result_name(c.result)})
        rec["accepted_contexts"] = accepted
        rec["rejected_contexts"] = rejected
        ui = ac.user_info
        rec["acceptor"] = {
            "max_pdu_length": ui.max_pdu_length,
            "implementation_class_uid": ui.implementation_class_uid,
            "implementation_version_name": ui.implementation_version_name,
        }
    if a.dimse is not None and a.dimse.stats:
        rec["operations"] = {name: _operation_summary(st) for name, st in sorted(a.dimse.stats.items())}
    if a.pdata_bytes[0] or a.pdata_bytes[1]:
        rec["pdata_bytes"] = {"to_server": a.pdata_bytes[0], "to_client": a.pdata_bytes[1]}
    if a.lost_pdus:
        rec["capture_loss"] = a.lost_pdus
    if a.protocol_errors:
        rec["protocol_errors"] = a.protocol_errors
    return rec


def _operation_summary(st) -> dict:
    out: dict = {"requests": st.requests, "responses": dict(sorted(st.responses.items()))}
    if st.times:
        times = sorted(st.times)
        out["response_seconds"] = {"min": round(times[0], 6), "median": round(statistics.median(times), 6),
                                   "max": round(times[-1], 6)}
    for key in ("cancels", "unanswered"):
        if getattr(st, key):
            out[key] = getattr(st, key)
    if st.suboperations:
        out["suboperations"] = dict(st.suboperations)
    return out


def _cert(c) -> dict | None:
    if c is None:
        return None
    return {"subject_cn": c.subject_cn, "subject_o": c.subject_o, "issuer_cn": c.issuer_cn, "issuer_o": c.issuer_o,
            "not_after": c.not_after,
            "not_after_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.not_after))}


def tls_record(r, sites: SiteMap | None = None) -> dict:
    """The event-log record of one connection on a TLS port (probe.tls.TlsRecord). Handshake facts
    only: no key material, no certificate beyond subject, issuer and expiry."""
    rec: dict = {
        "event": "tls-connection",
        "client": r.client,
        "server": r.server,
        "site": (sites or SiteMap()).site_of(r.client),
        "start": r.start_ts,
        "end": r.end_ts,
        "outcome": r.outcome,
        "offered_versions": list(r.offered_versions),
        "sni": r.sni,
        "cipher_suites_offered": r.cipher_suites_offered,
        "version": r.version,
        "cipher": r.cipher,
    }
    if r.resumed:
        rec["resumed"] = True
    if r.established_ts is not None and r.start_ts is not None:
        rec["handshake_seconds"] = round(r.established_ts - r.start_ts, 6)
    if r.failure is not None:
        rec["failure"] = {"reason": r.failure, "sent_by": r.failure_sent_by}
    if r.alert is not None:
        rec["alert"] = {"description": r.alert, "level": r.alert_level, "sent_by": r.alert_sent_by}
    for role in ("server", "client"):
        cert = _cert(getattr(r, f"{role}_cert"))
        if cert is not None:
            rec[f"{role}_certificate"] = cert
    if r.app_bytes[0] or r.app_bytes[1]:
        rec["application_bytes"] = {"to_server": r.app_bytes[0], "to_client": r.app_bytes[1]}
    return rec


def record_json(rec: dict) -> str:
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=True)


def association_json(a: A.Association) -> str:
    return record_json(association_record(a))


# -- the table ---------------------------------------------------------------------------------


def pair_rows(store: MetricStore) -> list[dict]:
    """One row per (calling, called) AE pair, worst first."""
    rows: dict[tuple, dict] = {}

    def row(calling, called):
        r = rows.get((calling, called))
        if r is None:
            r = rows[(calling, called)] = {
                "calling_ae": calling, "called_ae": called, "requests": 0, "accepted": 0, "rejected": 0,
                "aborts": 0, "releases": 0, "no_response": 0, "closed_without_release": 0, "reasons": {},
            }
        return r

    v = store.values
    for fam, col in (("dicom_association_requests_total", "requests"),
                     ("dicom_association_accepts_total", "accepted"),
                     ("dicom_association_aborts_total", "aborts"),
                     ("dicom_association_releases_total", "releases"),
                     ("dicom_association_no_response_total", "no_response"),
                     ("dicom_association_closed_without_release_total", "closed_without_release")):
        for labels, n in v[fam].items():
            row(labels[0], labels[1])[col] += n  # summed over sites and the other labels
    for (calling, called, _site, _res, _src, reason), n in v["dicom_association_rejects_total"].items():
        r = row(calling, called)
        r["rejected"] += n
        r["reasons"][reason] = r["reasons"].get(reason, 0) + n
    out = []
    for r in rows.values():
        answered = r["accepted"] + r["rejected"]
        r["reject_pct"] = 100.0 * r["rejected"] / answered if answered else 0.0
        r["top_reason"] = max(r["reasons"].items(), key=lambda kv: (kv[1], kv[0]))[0] if r["reasons"] else ""
        out.append(r)
    out.sort(key=lambda r: (-r["rejected"], -(r["aborts"] + r["no_response"] + r["closed_without_release"]),
                            -r["reject_pct"], -r["requests"], r["calling_ae"], r["called_ae"]))
    return out


COLUMNS = (
    ("CALLING AE", "calling_ae"), ("CALLED AE", "called_ae"), ("REQUESTS", "requests"),
    ("ACCEPTED", "accepted"), ("REJECTED", "rejected"), ("REJECT %", "reject_pct"),
    ("TOP REJECT REASON", "top_reason"), ("ABORTS", "aborts"), ("RELEASES", "releases"),
    ("NO RESPONSE", "no_response"), ("NO RELEASE", "closed_without_release"),
)


def _fmt(key: str, value) -> str:
    if key == "reject_pct":
        return f"{value:.1f}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render_table(store: MetricStore, times: "ResponseTimes | None" = None) -> str:
    rows = pair_rows(store)
    lines = []
    if not rows:
        lines.append("No DICOM associations found.")
    else:
        lines += _grid(COLUMNS, rows, {k for _, k in COLUMNS} - {"calling_ae", "called_ae", "top_reason"})
    ops = dimse_rows(store, times)
    if ops:
        lines.append("")
        lines += _grid(DIMSE_COLUMNS, ops, {"requests", "failed", "p50_ms", "p95_ms"})
    tls = tls_rows(store)
    if tls:
        lines.append("")
        lines += _grid(TLS_COLUMNS, tls, {"connections", "completed", "failed", "incomplete"})
    lines.append("")
    lines.extend(health_lines(store))
    return "\n".join(lines) + "\n"


def tls_rows(store: MetricStore) -> list[dict]:
    """One row per TLS server (address:port), from the metric store; failing servers first."""
    v = store.values
    rows: dict[str, dict] = {}

    def row(server):
        r = rows.get(server)
        if r is None:
            r = rows[server] = {"server": server, "connections": 0, "completed": 0, "failed": 0, "incomplete": 0,
                                "versions": {}, "failures": {}, "expiry": None}
        return r

    for (_site, server), n in v["dicom_tls_connections_total"].items():
        row(server)["connections"] += n
    for (_site, server, version), n in v["dicom_tls_handshakes_total"].items():
        r = row(server)
        r["completed"] += n
        r["versions"][version] = r["versions"].get(version, 0) + n
    for (_site, server, alert, sent_by), n in v["dicom_tls_handshake_failures_total"].items():
        r = row(server)
        r["failed"] += n
        key = f"{alert} ({sent_by})"
        r["failures"][key] = r["failures"].get(key, 0) + n
    for (_site, server), n in v["dicom_tls_incomplete_total"].items():
        row(server)["incomplete"] += n
    for (server, role, _subject, _issuer), not_after in v["dicom_tls_certificate_not_after_timestamp_seconds"].items():
        if role == "server":
            r = row(server)
            r["expiry"] = not_after if r["expiry"] is None else min(r["expiry"], not_after)
    out = []
    for r in rows.values():
        r["version_list"] = " ".join(f"{k}x{int(n)}" for k, n in sorted(r["versions"].items())) or "-"
        top = sorted(r["failures"].items(), key=lambda kv: (-kv[1], kv[0]))[:2]
        r["top_failure"] = ", ".join(f"{k} x{int(n)}" for k, n in top) or "-"
        r["cert_expiry"] = "-" if r["expiry"] is None else time.strftime("%Y-%m-%d", time.gmtime(r["expiry"]))
        out.append(r)
    out.sort(key=lambda r: (-r["failed"], -r["connections"], r["server"]))
    return out


TLS_COLUMNS = (
    ("TLS SERVER", "server"), ("CONNECTIONS", "connections"), ("COMPLETED", "completed"), ("FAILED", "failed"),
    ("INCOMPLETE", "incomplete"), ("TOP FAILURE (SENT BY)", "top_failure"), ("VERSIONS", "version_list"),
    ("SERVER CERT EXPIRES", "cert_expiry"),
)


class ResponseTimes:
    """Response times per (calling, called, command) label tuple, for the table's p50/p95.

    A report-side tally: the exported histogram is per command only (bounded cardinality)."""

    def __init__(self, labeler: AeLabeler):
        self.labeler = labeler
        self.times: dict[tuple, list[float]] = {}

    def add(self, a: A.Association) -> None:
        if a.dimse is None:
            return
        pair = (self.labeler.label(a.calling_ae), self.labeler.label(a.called_ae))
        for name, st in a.dimse.stats.items():
            if st.times:
                self.times.setdefault(pair + (name,), []).extend(st.times)

    def merge(self, times: dict) -> None:
        """Add another tally (a worker's ``times``)."""
        for key, values in times.items():
            self.times.setdefault(key, []).extend(values)


def _quantile(sorted_times: list[float], q: float) -> float:
    """Nearest-rank quantile."""
    return sorted_times[max(0, math.ceil(q * len(sorted_times)) - 1)]


def dimse_rows(store: MetricStore, times: ResponseTimes | None) -> list[dict]:
    rows: dict[tuple, dict] = {}
    for (calling, called, _site, command), n in store.values["dicom_dimse_requests_total"].items():
        rows.setdefault((calling, called, command), {"requests": 0, "failures": {}})["requests"] += n
    for (calling, called, _site, command, cls, status), n in store.values["dicom_dimse_responses_total"].items():
        r = rows.setdefault((calling, called, command), {"requests": 0, "failures": {}})
        if cls == "failure":
            r["failures"][status] = r["failures"].get(status, 0) + n
    out = []
    for (calling, called, command), r in rows.items():
        failed = sum(r["failures"].values())
        top = sorted(r["failures"].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        t = sorted(times.times.get((calling, called, command), [])) if times else []
        out.append({
            "calling_ae": calling, "called_ae": called, "command": command, "requests": r["requests"],
            "failed": failed, "top_status": " ".join(f"{code}x{int(n)}" for code, n in top),
            "p50_ms": f"{1000 * _quantile(t, 0.5):.1f}" if t else "-",
            "p95_ms": f"{1000 * _quantile(t, 0.95):.1f}" if t else "-",
        })
    out.sort(key=lambda r: (-r["failed"], -r["requests"], r["calling_ae"], r["called_ae"], r["command"]))
    return out


DIMSE_COLUMNS = (
    ("CALLING AE", "calling_ae"), ("CALLED AE", "called_ae"), ("COMMAND", "command"), ("REQUESTS", "requests"),
    ("FAILED", "failed"), ("TOP FAILURE STATUS", "top_status"), ("P50 MS", "p50_ms"), ("P95 MS", "p95_ms"),
)


def _grid(columns, rows, numeric_keys) -> list[str]:
    cells = [[h for h, _ in columns]] + [[_fmt(k, r[k]) for _, k in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    numeric = {i for i, (_, k) in enumerate(columns) if k in numeric_keys}
    return ["  ".join(c[i].rjust(widths[i]) if i in numeric else c[i].ljust(widths[i])
                      for i in range(len(columns))).rstrip() for c in cells]


def health_lines(store: MetricStore) -> list[str]:
    v = store.values
    packets = sum(v["dicom_probe_packets_total"].values())
    nbytes = sum(v["dicom_probe_bytes_total"].values())
    skipped = v["dicom_probe_frames_skipped_total"]
    errors = v["dicom_probe_pdu_errors_total"]
    lines = [
        f"Probe health: {int(packets)} packets, {int(nbytes)} bytes; "
        f"{int(sum(skipped.values()))} frames skipped"
        + (" (" + ", ".join(f"{k[0]} {int(n)}" for k, n in sorted(skipped.items())) + ")" if skipped else ""),
        f"  stream gaps {int(store.get('dicom_probe_stream_gaps_total'))} "
        f"({int(store.get('dicom_probe_stream_gap_bytes_total'))} bytes), "
        f"resyncs {int(store.get('dicom_probe_resyncs_total'))}, "
        f"retransmitted segments {int(store.get('dicom_probe_retransmitted_segments_total'))}",
        f"  PDU parse errors {int(sum(errors.values()))}"
        + (" (" + ", ".join(f"{k[0]} {int(n)}" for k, n in sorted(errors.items())) + ")" if errors else "")
        + f", protocol violations {int(sum(v['dicom_probe_protocol_violations_total'].values()))}",
    ]
    dimse_errors = v["dicom_probe_dimse_errors_total"]
    if dimse_errors:
        lines.append("  DIMSE command errors " + ", ".join(f"{k[0]} {int(n)}" for k, n in sorted(dimse_errors.items())))
    invalid = int(store.get("dicom_probe_ae_titles_invalid_total"))
    overflow = int(store.get("dicom_probe_ae_title_overflow_total"))
    if invalid or overflow:
        lines.append(f"  AE titles with invalid characters {invalid}, folded into (overflow) {overflow}")
    tls_errors = v["dicom_probe_tls_errors_total"]
    if tls_errors:
        lines.append("  TLS parse errors " + ", ".join(f"{k[0]} {int(n)}" for k, n in sorted(tls_errors.items())))
    return lines
