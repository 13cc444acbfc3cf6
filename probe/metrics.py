"""Metric families (the public contract), AE-title label policy, and an additive store.

Every family is declared once in :data:`FAMILIES`; README's metric reference is checked against
this table by the tests. Values live in a :class:`MetricStore` — plain dicts keyed by label tuples —
so that worker snapshots can be merged by addition and rendered by prometheus_client's exposition
code (:meth:`MetricStore.render`).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import __version__
from .dicom import association as A
from . import connection as C
from .dicom import codes
from .dicom import dimse as D
from .dicom.sopclasses import sop_class_label
from .sites import SiteMap
from . import tls as T

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

SETUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RESPONSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0)

# Every per-association family: the AE pair, and the site of the requestor's address (config `sites`).
PAIR = ("calling_ae", "called_ae", "site")


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()
    merge: str = "sum"  # how worker snapshots combine: "sum", or "max" (a timestamp every worker may report)


FAMILIES: tuple[Family, ...] = (
    Family("dicom_association_requests_total", COUNTER, PAIR, "A-ASSOCIATE-RQ PDUs seen."),
    Family("dicom_association_accepts_total", COUNTER, PAIR, "A-ASSOCIATE-AC PDUs seen."),
    Family("dicom_association_rejects_total", COUNTER, PAIR + ("result", "source", "reason"),
           "A-ASSOCIATE-RJ PDUs seen, by result, source and reason (PS3.8 Table 9-21)."),
    Family("dicom_association_aborts_total", COUNTER, PAIR + ("by", "source", "reason", "phase"),
           "A-ABORT PDUs ending an association, by sender (requestor/acceptor), source, reason and phase (setup/established)."),
    Family("dicom_association_releases_total", COUNTER, PAIR,
           "Associations released (A-RELEASE-RP seen, even when its RQ was lost)."),
    Family("dicom_association_closed_without_release_total", COUNTER, PAIR,
           "Accepted associations whose TCP connection closed (FIN/RST) with neither release nor abort."),
    Family("dicom_association_no_response_total", COUNTER, PAIR,
           "A-ASSOCIATE-RQs never answered: the connection closed or timed out first."),
    Family("dicom_association_setup_seconds", HISTOGRAM, ("called_ae",),
           "Time from the first byte of A-ASSOCIATE-RQ to the A-ASSOCIATE-AC or -RJ.", SETUP_BUCKETS),
    Family("dicom_associations_active", GAUGE, (), "Associations requested or established and not yet ended."),
    Family("dicom_presentation_contexts_total", COUNTER, PAIR + ("abstract_syntax", "result"),
           "Presentation contexts answered in an A-ASSOCIATE-AC, by SOP class keyword and result (PS3.8 Table 9-18)."),
    Family("dicom_pdata_bytes_total", COUNTER, PAIR + ("direction",),
           "P-DATA-TF bytes (PDU headers included), to_server (requestor to acceptor) or to_client."),
    Family("dicom_dimse_requests_total", COUNTER, PAIR + ("command",),
           "DIMSE request messages (C-STORE, C-FIND, ..., C-CANCEL), from either side."),
    Family("dicom_dimse_responses_total", COUNTER, PAIR + ("command", "status_class", "status"),
           "DIMSE responses by status class (success, pending, cancel, warning, failure; PS3.7 Annex C) and code."),
    Family("dicom_dimse_response_seconds", HISTOGRAM, ("command",),
           "Time from a DIMSE request to its final (non-pending) response.", RESPONSE_BUCKETS),
    Family("dicom_dimse_suboperations_total", COUNTER, PAIR + ("command", "outcome"),
           "C-MOVE/C-GET sub-operations completed, failed or warning, from the final response."),
    Family("dicom_dimse_unanswered_total", COUNTER, PAIR + ("command",),
           "DIMSE requests without a final response when their association ended."),
    Family("dicom_dimse_unmatched_responses_total", COUNTER, PAIR + ("command",),
           "DIMSE responses whose request was not seen (capture started mid-operation)."),
    Family("dicom_tls_connections_total", COUNTER, ("site", "server"),
           "TCP connections to a TLS port (config tls_ports) that carried bytes, by the client's site and server address:port."),
    Family("dicom_tls_handshakes_total", COUNTER, ("site", "server", "version"),
           "TLS handshakes completed (both sides sent application data), by negotiated version (TLSv1.0 ... TLSv1.3)."),
    Family("dicom_tls_handshake_failures_total", COUNTER, ("site", "server", "alert", "sent_by"),
           "TLS connections that ended before the handshake completed: by the alert seen in clear (unknown_ca, "
           "certificate_expired, protocol_version, handshake_failure, ...), or encrypted-alert, tcp-reset, tcp-close, "
           "timeout, not-tls; sent_by client, server or unknown."),
    Family("dicom_tls_incomplete_total", COUNTER, ("site", "server"),
           "TLS connections whose handshake the capture did not show whole (picked up mid-stream, loss, capture end)."),
    Family("dicom_tls_handshake_seconds", HISTOGRAM, ("server",),
           "Time from the first byte of the ClientHello to the handshake's completion.", SETUP_BUCKETS),
    Family("dicom_tls_certificate_not_after_timestamp_seconds", GAUGE, ("server", "role", "subject", "issuer"),
           "Expiry (notAfter, Unix time) of the leaf certificates seen in clear (TLS <= 1.2 handshakes), by the "
           "server of the connection, role (server or client certificate), subject and issuer (common name, else "
           "organisation).", merge="max"),
    Family("dicom_probe_tls_errors_total", COUNTER, ("kind",),
           "TLS records or handshake messages that could not be parsed, by kind (not-tls, record-malformed, ...)."),
    Family("dicom_probe_tls_label_overflow_total", COUNTER, (),
           "TLS server or certificate label values shown as (overflow) because the distinct-value cap was reached."),
    Family("dicom_probe_packets_total", COUNTER, ("interface",), "Frames received from the capture (after the BPF filter)."),
    Family("dicom_probe_bytes_total", COUNTER, ("interface",), "Bytes of the frames received from the capture."),
    Family("dicom_probe_frames_skipped_total", COUNTER, ("kind",),
           "Frames not decoded as TCP, by kind (non-ip, non-tcp, ipv4-fragment, truncated, ...)."),
    Family("dicom_probe_stream_gaps_total", COUNTER, (), "Holes in a TCP byte stream: bytes the capture never saw."),
    Family("dicom_probe_stream_gap_bytes_total", COUNTER, (), "Bytes missing in those holes."),
    Family("dicom_probe_retransmitted_segments_total", COUNTER, (), "TCP segments carrying only bytes already seen."),
    Family("dicom_probe_resyncs_total", COUNTER, (),
           "Times the PDU framer found a plausible PDU header again after losing the framing."),
    Family("dicom_probe_pdu_errors_total", COUNTER, ("kind",), "Malformed PDUs or items, by kind."),
    Family("dicom_probe_dimse_errors_total", COUNTER, ("kind",),
           "Command sets that could not be used: malformed, unknown command field, status missing, ..."),
    Family("dicom_probe_protocol_violations_total", COUNTER, ("kind",),
           "Well-formed PDUs the association state machine does not allow where they were seen."),
    Family("dicom_probe_flows_active", GAUGE, (), "TCP connections tracked."),
    Family("dicom_probe_flows_evicted_total", COUNTER, ("reason",),
           "TCP connections removed from the flow table, by reason (closed, idle, capture-end, table-full)."),
    Family("dicom_probe_ae_titles_invalid_total", COUNTER, (),
           "Distinct AE title values seen with bytes outside the DICOM default repertoire (shown as %XX in labels)."),
    Family("dicom_probe_ae_title_overflow_total", COUNTER, (),
           "AE title sightings shown as (overflow) because the distinct-title cap was reached."),
    Family("dicom_probe_kernel_drops_total", COUNTER, ("interface",),
           "Frames dropped by the kernel because a capture buffer was full (libpcap ps_drop), all workers."),
    Family("dicom_probe_interface_drops_total", COUNTER, ("interface",),
           "Frames dropped by the interface or its driver (libpcap ps_ifdrop), all workers."),
    Family("dicom_probe_worker_restarts_total", COUNTER, (), "Capture workers that died and were restarted."),
    Family("dicom_probe_workers_alive", GAUGE, (), "Capture worker processes running."),
    Family("dicom_probe_evidence_files_total", COUNTER, (), "Evidence pcaps written (rejected/aborted associations)."),
    Family("dicom_probe_evidence_suppressed_total", COUNTER, ("reason",),
           "Evidence pcaps not written: rate cap, too large for the byte cap, or a write error."),
    Family("dicom_probe_capture_reopens_total", COUNTER, ("interface",),
           "Live captures lost (interface down or gone, handle error) and reopened."),
    Family("dicom_probe_event_log_errors_total", COUNTER, (),
           "Event log batches that could not be written (e.g. disk full); their records are dropped."),
    Family("dicom_probe_worker_lag_seconds", GAUGE, ("worker",),
           "Live capture: wall-clock time minus the timestamp of the last packet a worker processed."),
    Family("dicom_probe_last_packet_age_seconds", GAUGE, (), "Seconds since any worker last received a packet."),
    Family("dicom_probe_new_ae_titles_total", COUNTER, ("role", "known"),
           "AE titles seen for the first time as calling or called title; known = listed in known_ae_titles."),
    Family("dicom_ae_title_first_seen_timestamp_seconds", GAUGE, ("ae_title", "role", "known"),
           "When the daemon first saw each AE title (Unix time), as calling or called title."),
    Family("dicom_probe_start_time_seconds", GAUGE, (), "When the daemon started (Unix time)."),
    Family("dicom_probe_build_info", GAUGE, ("version",), "Always 1; the probe's version."),
)
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}


def markdown_table() -> str:
    """README's metric reference, generated from FAMILIES (``python -m probe.metrics``)."""
    rows = ["| name | type | labels | meaning |", "|---|---|---|---|"]
    for f in FAMILIES:
        labels = ", ".join(f"`{label}`" for label in f.labels) or "—"
        rows.append(f"| `{f.name}` | {f.kind} | {labels} | {f.help} |")
    return "\n".join(rows)

# Fixed AE label values. They cannot collide with a real title: a real title starting with "(" has
# that character escaped as %28 (see AeLabeler).
AE_NOT_SEEN = "(not-seen)"
AE_EMPTY = "(empty)"
AE_OVERFLOW = "(overflow)"

_AE_OK = frozenset(range(0x20, 0x7F)) - {0x5C, 0x25}  # default repertoire, minus backslash; % is our escape


class AeLabeler:
    """Turns raw 16-byte AE title fields into bounded, printable label values.

    Padding (spaces, and NULs sent by some stacks) is stripped; bytes outside the DICOM default
    repertoire are replaced by ``%XX`` and counted; beyond ``max_titles`` distinct titles every new
    one becomes ``(overflow)``, counted. ``aliases`` maps a cleaned title to the label to use.
    """

    def __init__(self, max_titles: int = 500, aliases: dict[str, str] | None = None):
        self.max_titles = max_titles
        self.aliases = dict(aliases or {})
        self._cache: dict[bytes, str] = {}
        self._titles: set[str] = set()
        self.invalid = 0
        self.overflow = 0

    @staticmethod
    def clean(raw: bytes) -> tuple[str, bool]:
        """(printable title, whether a byte had to be escaped). No cap, no alias."""
        title = raw.strip(b" \x00")
        if not title:
            return AE_EMPTY, False
        if all(b in _AE_OK for b in title) and title[0] != 0x28:
            return title.decode("ascii"), False
        out = []
        invalid = False
        for i, b in enumerate(title):
            if b in _AE_OK and not (i == 0 and b == 0x28):
                out.append(chr(b))
            else:
                out.append(f"%{b:02X}")
                invalid = invalid or b not in (0x25, 0x28)
        return "".join(out), invalid

    def label(self, raw: bytes | None) -> str:
        if raw is None:
            return AE_NOT_SEEN
        cached = self._cache.get(raw)
        if cached is not None:
            return cached
        title, invalid = self.clean(raw)
        if invalid:
            self.invalid += 1
        title = self.aliases.get(title, title)
        if title not in self._titles and title not in (AE_EMPTY,):
            if len(self._titles) >= self.max_titles:
                self.overflow += 1
                return AE_OVERFLOW  # not cached: every further sighting is counted
            self._titles.add(title)
        if len(self._cache) < 4 * self.max_titles:
            self._cache[raw] = title
        return title


def preload() -> None:
    """Import what rendering needs now (a daemon that drops privileges may not read it later)."""
    import prometheus_client  # noqa: F401
    import prometheus_client.core  # noqa: F401


class BoundedLabels:
    """Label values from the wire that are not AE titles (TLS servers, certificate subjects): kept as
    they come (the caller sanitises them) up to ``max_values`` distinct ones, then ``(overflow)``."""

    def __init__(self, max_values: int = 500):
        self.max_values = max_values
        self._seen: set[str] = set()
        self.overflow = 0

    def label(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.max_values:
            self.overflow += 1
            return AE_OVERFLOW
        self._seen.add(value)
        return value


class MetricStore:
    """Values of every family, keyed by label-value tuples. Additive, so snapshots merge by sum."""

    def __init__(self):
        self.values: dict[str, dict[tuple, object]] = {f.name: {} for f in FAMILIES}

    def inc(self, name: str, labels: tuple = (), value: float = 1) -> None:
        d = self.values[name]
        d[labels] = d.get(labels, 0) + value

    def set(self, name: str, labels: tuple, value: float) -> None:
        self.values[name][labels] = value

    def observe(self, name: str, labels: tuple, value: float) -> None:
        fam = FAMILY_BY_NAME[name]
        d = self.values[name]
        h = d.get(labels)
        if h is None:
            h = d[labels] = [[0] * (len(fam.buckets) + 1), 0.0]
        counts = h[0]
        for i, bound in enumerate(fam.buckets):
            if value <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        h[1] += value

    def get(self, name: str, labels: tuple = ()):
        return self.values[name].get(labels, 0)

    def total(self, name: str, **match) -> float:
        """Sum of a counter/gauge family over the series whose labels match ``match``."""
        fam = FAMILY_BY_NAME[name]
        idx = [(fam.labels.index(k), v) for k, v in match.items()]
        return sum(v for labels, v in self.values[name].items() if all(labels[i] == want for i, want in idx))

    def merge(self, other: "MetricStore", *, counters_only: bool = False) -> None:
        self.merge_values(other.values, counters_only=counters_only)

    def merge_values(self, values: dict, *, counters_only: bool = False, skip: frozenset = frozenset()) -> None:
        """Add another store's ``values`` (e.g. a worker snapshot). Gauges are summed too unless
        ``counters_only`` (a dead worker's gauges no longer describe anything)."""
        for fam in FAMILIES:
            if fam.name in skip or (counters_only and fam.kind == GAUGE):
                continue
            mine = self.values[fam.name]
            for labels, v in values.get(fam.name, {}).items():
                if fam.kind == HISTOGRAM:
                    h = mine.get(labels)
                    if h is None:
                        mine[labels] = [list(v[0]), v[1]]
                    else:
                        h[0] = [a + b for a, b in zip(h[0], v[0])]
                        h[1] += v[1]
                elif fam.merge == "max":
                    mine[labels] = max(mine.get(labels, v), v)
                else:
                    mine[labels] = mine.get(labels, 0) + v

    # -- exposition -----------------------------------------------------------------------------

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        for fam in FAMILIES:
            series = self.values[fam.name]
            if fam.kind == COUNTER:
                mf = CounterMetricFamily(fam.name, fam.help, labels=fam.labels)
                for labels, v in sorted(series.items()):
                    mf.add_metric(labels, v)
            elif fam.kind == GAUGE:
                mf = GaugeMetricFamily(fam.name, fam.help, labels=fam.labels)
                for labels, v in sorted(series.items()):
                    mf.add_metric(labels, v)
            else:
                mf = HistogramMetricFamily(fam.name, fam.help, labels=fam.labels)
                for labels, (counts, total) in sorted(series.items()):
                    cumulative, acc = [], 0
                    for bound, c in zip(fam.buckets + (float("inf"),), counts):
                        acc += c
                        cumulative.append(("+Inf" if bound == float("inf") else repr(bound), acc))
                    mf.add_metric(labels, cumulative, total)
            yield mf

    def render(self) -> bytes:
        """The text exposition. prometheus_client is imported here, not at start-up (most analyze
        runs never render); the daemon imports it before dropping privileges (:func:`preload`)."""
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry)


class AssociationMetrics:
    """Sink: turns the association machine's notifications into metric updates."""

    def __init__(self, store: MetricStore, labeler: AeLabeler, sites: SiteMap | None = None):
        self.store = store
        self.labeler = labeler
        self.sites = sites or SiteMap()
        # (AE label, "calling"/"called") -> packet time of the first association that carried it.
        self.first_seen: dict[tuple[str, str], float] = {}
        self._pdata: dict[int, A.Association] = {}  # open associations that carried P-DATA (see PDataBytes)
        store.set("dicom_probe_build_info", (__version__,), 1)
        store.set("dicom_associations_active", (), 0)
        for name in ("dicom_probe_stream_gaps_total", "dicom_probe_stream_gap_bytes_total", "dicom_probe_resyncs_total"):
            store.set(name, (), 0)  # present from the start, so rate() and absent() behave

    def _pair(self, a: A.Association) -> tuple[str, str, str]:
        labels = a.labels
        if labels is not None:
            return labels
        site = a.site
        if site is None:
            site = a.site = self.sites.site_of(a.client if a.requestor_is_client else a.server)
        calling, called = self.labeler.label(a.calling_ae), self.labeler.label(a.called_ae)
        seen = self.first_seen
        if (calling, "calling") not in seen:
            seen[(calling, "calling")] = a.start_ts or 0.0
        if (called, "called") not in seen:
            seen[(called, "called")] = a.start_ts or 0.0
        labels = (calling, called, site)
        if AE_OVERFLOW not in labels:  # (overflow) is re-decided (and counted) at every sighting
            a.labels = labels
        return labels

    def handle(self, n) -> None:
        s = self.store
        t = type(n)
        if t is D.DimseResponse:  # the most frequent (a C-FIND's pending responses), so first
            pair = self._pair(n.association)
            s.inc("dicom_dimse_responses_total", pair + (n.command, n.status_class, D.status_code(n.status)))
            if n.seconds is not None:
                s.observe("dicom_dimse_response_seconds", (n.command,), n.seconds)
            if not n.matched:
                s.inc("dicom_dimse_unmatched_responses_total", pair + (n.command,))
        elif t is D.DimseRequest:
            s.inc("dicom_dimse_requests_total", self._pair(n.association) + (n.command,))
        elif t is A.AssociationOpened:
            s.inc("dicom_associations_active")
        elif t is A.AssociationEnded:
            s.inc("dicom_associations_active", (), -1)
            a = self._pdata.pop(id(n.association), None)
            if a is not None:
                self._publish_pdata(a)
        elif t is A.AssociationRequested:
            s.inc("dicom_association_requests_total", self._pair(n.association))
        elif t is A.AssociationAccepted:
            a = n.association
            pair = self._pair(a)
            s.inc("dicom_association_accepts_total", pair)
            proposed = {c.context_id: c.abstract_syntax for c in a.request.contexts} if a.request else {}
            for c in a.accept.contexts:
                s.inc("dicom_presentation_contexts_total", pair + (
                    sop_class_label(proposed.get(c.context_id, "")) if proposed else "(not-seen)",
                    codes.context_result_name(c.result)))
            if a.setup_seconds is not None:
                s.observe("dicom_association_setup_seconds", (self.labeler.label(a.called_ae),), a.setup_seconds)
        elif t is A.AssociationRejected:
            a = n.association
            s.inc("dicom_association_rejects_total", self._pair(a) + (
                codes.reject_result_name(n.result),
                codes.reject_source_name(n.source),
                codes.reject_reason_name(n.source, n.reason),
            ))
            if a.setup_seconds is not None:
                s.observe("dicom_association_setup_seconds", (self.labeler.label(a.called_ae),), a.setup_seconds)
        elif t is A.AssociationAborted:
            s.inc("dicom_association_aborts_total", self._pair(n.association) + (
                n.by, codes.abort_source_name(n.source), codes.abort_reason_name(n.source, n.reason), n.phase,
            ))
        elif t is A.ReleaseCompleted:
            s.inc("dicom_association_releases_total", self._pair(n.association))
        elif t is A.ClosedWithoutRelease:
            s.inc("dicom_association_closed_without_release_total", self._pair(n.association))
        elif t is A.NoResponse:
            s.inc("dicom_association_no_response_total", self._pair(n.association))
        elif t is A.ProtocolViolation:
            s.inc("dicom_probe_protocol_violations_total", (n.kind,))
        elif t is C.PDataBytes:
            self._pdata[id(n.association)] = n.association
        elif t is D.SubOperations:
            pair = self._pair(n.association)
            for outcome in ("completed", "failed", "warning"):
                v = getattr(n, outcome)
                if v:
                    s.inc("dicom_dimse_suboperations_total", pair + (n.command, outcome), v)
        elif t is D.Unanswered:
            s.inc("dicom_dimse_unanswered_total", self._pair(n.association) + (n.command,))
        elif t is D.DimseError:
            s.inc("dicom_probe_dimse_errors_total", (n.kind,))

    def _publish_pdata(self, a: A.Association) -> None:
        done = a.pdata_published
        now = a.pdata_bytes
        if now[0] != done[0] or now[1] != done[1]:
            pair = self._pair(a)
            if now[0] != done[0]:
                self.store.inc("dicom_pdata_bytes_total", pair + ("to_server",), now[0] - done[0])
            if now[1] != done[1]:
                self.store.inc("dicom_pdata_bytes_total", pair + ("to_client",), now[1] - done[1])
            a.pdata_published = (now[0], now[1])

    def sync_pdata(self) -> None:
        """Count the P-DATA bytes of the open associations seen since the last call."""
        for a in self._pdata.values():
            self._publish_pdata(a)

    def sync_label_counters(self) -> None:
        """Copy the labeler's counters into the store (they are cumulative)."""
        self.store.set("dicom_probe_ae_titles_invalid_total", (), self.labeler.invalid)
        self.store.set("dicom_probe_ae_title_overflow_total", (), self.labeler.overflow)


class TlsMetrics:
    """Sink: TLS observer notifications (:mod:`probe.tls`) to metric updates."""

    def __init__(self, store: MetricStore, sites: SiteMap | None = None, max_values: int = 500):
        self.store = store
        self.sites = sites or SiteMap()
        self.servers = BoundedLabels(max_values)
        self.subjects = BoundedLabels(max_values)

    def _labels(self, r) -> tuple[str, str]:
        return self.sites.site_of(r.client), self.servers.label(r.server)

    def handle(self, n) -> None:
        s = self.store
        t = type(n)
        if t is T.TlsEstablished:
            r = n.record
            site, server = self._labels(r)
            s.inc("dicom_tls_connections_total", (site, server))
            s.inc("dicom_tls_handshakes_total", (site, server, r.version or "unknown"))
            if r.established_ts is not None and r.start_ts is not None:
                s.observe("dicom_tls_handshake_seconds", (server,), max(0.0, r.established_ts - r.start_ts))
            self._certificates(r, server)
        elif t is T.TlsEnded:
            r = n.record
            if r.outcome == "established":
                return  # counted when it completed
            site, server = self._labels(r)
            s.inc("dicom_tls_connections_total", (site, server))
            if r.outcome == "failed":
                s.inc("dicom_tls_handshake_failures_total",
                      (site, server, r.failure or "unknown", r.failure_sent_by or "unknown"))
            else:
                s.inc("dicom_tls_incomplete_total", (site, server))
            self._certificates(r, server)
        elif t is T.TlsError:
            s.inc("dicom_probe_tls_errors_total", (n.kind,))

    def _certificates(self, r, server: str) -> None:
        for role, cert in (("server", r.server_cert), ("client", r.client_cert)):
            if cert is not None:
                subject = self.subjects.label(cert.subject_cn or cert.subject_o or "(none)")
                issuer = self.subjects.label(cert.issuer_cn or cert.issuer_o or "(none)")
                self.store.set("dicom_tls_certificate_not_after_timestamp_seconds", (server, role, subject, issuer),
                               cert.not_after)

    def sync_label_counters(self) -> None:
        self.store.set("dicom_probe_tls_label_overflow_total", (), self.servers.overflow + self.subjects.overflow)


if __name__ == "__main__":
    print(markdown_table())
