"""The association state machine, seen from the wire (PS3.8 §9.2), sans-IO.

Rules of this module
--------------------
Everything that changes an association's state lives here, and every transition is a row of
:data:`TRANSITIONS`: ``(state, input) -> (action, next state)``. The machine observes *both* peers
of one TCP connection, so its states are the observer's view of PS3.8's Sta1–Sta13:

========================  ====================================================================
``idle``                  connection open, no association seen yet (Sta1/Sta2)
``requested``             A-ASSOCIATE-RQ seen, no answer yet (Sta3/Sta5)
``established``           A-ASSOCIATE-AC seen, or P-DATA seen on a connection picked up mid-way (Sta6)
``releasing``             one side sent A-RELEASE-RQ (Sta7/Sta8)
``release-collision``     both sides sent A-RELEASE-RQ (Sta9–Sta12)
``done``                  the association ended; its outcome is decided
========================  ====================================================================

Inputs are the PDUs of :mod:`probe.dicom.pdu` plus the transport's end: ``closed`` (FIN/RST),
``timeout`` (no packet for the idle timeout) and ``end`` (the capture ended).

Outcomes: ``released``, ``rejected``, ``aborted``, ``no-response`` (the RQ was never answered: the
connection closed or timed out), ``ended-without-release`` (accepted, then TCP closed with neither a
release nor an abort) and ``incomplete`` (the capture ended first, or bytes lost in the capture may
hide the PDU that decided it — a loss is never turned into a wrong outcome).

Time comes only from packet timestamps carried by the events. Setup time is from the first byte
of the A-ASSOCIATE-RQ to the packet completing the A-ASSOCIATE-AC or -RJ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import pdu as P
from .dimse import DimseTracker

# States.
IDLE = "idle"
REQUESTED = "requested"
ESTABLISHED = "established"
RELEASING = "releasing"
COLLISION = "release-collision"
DONE = "done"
STATES = (IDLE, REQUESTED, ESTABLISHED, RELEASING, COLLISION, DONE)

# Inputs.
RQ = "A-ASSOCIATE-RQ"
AC = "A-ASSOCIATE-AC"
RJ = "A-ASSOCIATE-RJ"
PDATA = "P-DATA-TF"
RELEASE_RQ = "A-RELEASE-RQ"
RELEASE_RP = "A-RELEASE-RP"
ABORT = "A-ABORT"
CLOSED = "closed"
TIMEOUT = "timeout"
END = "end"
INPUTS = (RQ, AC, RJ, PDATA, RELEASE_RQ, RELEASE_RP, ABORT, CLOSED, TIMEOUT, END)

INPUT_OF_EVENT = {
    P.AssociateRequest: RQ,
    P.AssociateAccept: AC,
    P.AssociateReject: RJ,
    P.PDataTF: PDATA,
    P.ReleaseRequest: RELEASE_RQ,
    P.ReleaseReply: RELEASE_RP,
    P.Abort: ABORT,
}

# Outcomes.
RELEASED = "released"
REJECTED = "rejected"
ABORTED = "aborted"
NO_RESPONSE = "no-response"
ENDED_WITHOUT_RELEASE = "ended-without-release"
INCOMPLETE = "incomplete"
OUTCOMES = (RELEASED, REJECTED, ABORTED, NO_RESPONSE, ENDED_WITHOUT_RELEASE, INCOMPLETE)

_ANSWER = ("accept", ESTABLISHED)
_VIOLATION = ("violation", None)  # counted, state unchanged
_IGNORE = ("ignore", None)

TRANSITIONS: dict[tuple[str, str], tuple[str, str | None]] = {
    # Nothing seen yet. A first PDU other than an RQ means the RQ was lost or the capture
    # started mid-association: adopt it (rq_seen false) rather than drop it.
    (IDLE, RQ): ("request", REQUESTED),
    (IDLE, AC): ("accept", ESTABLISHED),
    (IDLE, RJ): ("reject", DONE),
    (IDLE, PDATA): ("adopt", ESTABLISHED),
    (IDLE, RELEASE_RQ): ("release_request", RELEASING),
    (IDLE, RELEASE_RP): ("release", DONE),
    (IDLE, ABORT): ("abort", DONE),
    (IDLE, CLOSED): _IGNORE,  # a TCP connection that never carried an association
    (IDLE, TIMEOUT): _IGNORE,
    (IDLE, END): _IGNORE,
    # A-ASSOCIATE-RQ sent, awaiting the answer (Sta5 for the requestor).
    (REQUESTED, RQ): _VIOLATION,
    (REQUESTED, AC): _ANSWER,
    (REQUESTED, RJ): ("reject", DONE),
    (REQUESTED, PDATA): ("adopt", ESTABLISHED),  # the AC was lost in the capture
    (REQUESTED, RELEASE_RQ): ("release_request", RELEASING),  # likewise
    (REQUESTED, RELEASE_RP): ("release", DONE),
    (REQUESTED, ABORT): ("abort", DONE),
    (REQUESTED, CLOSED): ("no_response", DONE),
    (REQUESTED, TIMEOUT): ("no_response", DONE),
    (REQUESTED, END): ("incomplete", DONE),
    # Data transfer (Sta6).
    (ESTABLISHED, RQ): ("request_in_sequence", REQUESTED),
    (ESTABLISHED, AC): _VIOLATION,
    (ESTABLISHED, RJ): _VIOLATION,
    (ESTABLISHED, PDATA): _IGNORE,
    (ESTABLISHED, RELEASE_RQ): ("release_request", RELEASING),
    (ESTABLISHED, RELEASE_RP): ("release", DONE),  # its RQ was lost: the RP still counts
    (ESTABLISHED, ABORT): ("abort", DONE),
    (ESTABLISHED, CLOSED): ("closed_without_release", DONE),
    (ESTABLISHED, TIMEOUT): ("incomplete", DONE),
    (ESTABLISHED, END): ("incomplete", DONE),
    # One side asked to release (Sta7/Sta8); the other may still send P-DATA before answering.
    (RELEASING, RQ): ("request_in_sequence", REQUESTED),
    (RELEASING, AC): _VIOLATION,
    (RELEASING, RJ): _VIOLATION,
    (RELEASING, PDATA): _IGNORE,
    (RELEASING, RELEASE_RQ): ("release_collision", COLLISION),
    (RELEASING, RELEASE_RP): ("release", DONE),
    (RELEASING, ABORT): ("abort", DONE),
    (RELEASING, CLOSED): ("closed_without_release", DONE),
    (RELEASING, TIMEOUT): ("incomplete", DONE),
    (RELEASING, END): ("incomplete", DONE),
    # Release collision (Sta9–Sta12): both sides sent A-RELEASE-RQ; the first RP completes it.
    (COLLISION, RQ): ("request_in_sequence", REQUESTED),
    (COLLISION, AC): _VIOLATION,
    (COLLISION, RJ): _VIOLATION,
    (COLLISION, PDATA): _IGNORE,
    (COLLISION, RELEASE_RQ): _VIOLATION,
    (COLLISION, RELEASE_RP): ("release", DONE),
    (COLLISION, ABORT): ("abort", DONE),
    (COLLISION, CLOSED): ("closed_without_release", DONE),
    (COLLISION, TIMEOUT): ("incomplete", DONE),
    (COLLISION, END): ("incomplete", DONE),
    # Finished. PS3.8 allows one association per TCP connection; a second RQ is counted and
    # followed anyway. The second RP of a release collision is expected.
    (DONE, RQ): ("request_in_sequence", REQUESTED),
    (DONE, AC): _VIOLATION,
    (DONE, RJ): _VIOLATION,
    (DONE, PDATA): _VIOLATION,
    (DONE, RELEASE_RQ): _VIOLATION,
    (DONE, RELEASE_RP): _IGNORE,
    (DONE, ABORT): _IGNORE,  # some stacks abort after a release or reject before closing
    (DONE, CLOSED): _IGNORE,
    (DONE, TIMEOUT): _IGNORE,
    (DONE, END): _IGNORE,
}


@dataclass(slots=True)
class Association:
    """What is known about one association; completed as PDUs arrive, final once ``outcome`` is set."""

    client: str  # "address:port" of the TCP client
    server: str
    requestor_is_client: bool = True
    rq_seen: bool = False
    calling_ae: bytes | None = None  # raw 16-byte fields; None when never seen
    called_ae: bytes | None = None
    start_ts: float | None = None  # A-ASSOCIATE-RQ's first byte, else the first PDU seen
    end_ts: float | None = None
    setup_seconds: float | None = None
    outcome: str | None = None
    reject: tuple[int, int, int] | None = None  # result, source, reason
    abort: tuple[str, int, int, str] | None = None  # by, source, reason, phase
    request: P.AssociateRequest | None = None
    accept: P.AssociateAccept | None = None
    lost_pdus: int = 0
    protocol_errors: int = 0
    dimse: DimseTracker | None = None
    site: str | None = None  # set by the metrics layer (deployment policy, not protocol)
    labels: tuple | None = None  # the metrics layer's label values; cleared when the titles change
    pdata_bytes: list = field(default_factory=lambda: [0, 0])  # P-DATA-TF bytes to the acceptor, to the requestor
    pdata_published: tuple = (0, 0)  # ... of which the metrics layer has counted so far


# Notifications: what the machine tells the sinks. Each carries the association it concerns.
@dataclass(frozen=True, slots=True)
class AssociationRequested:
    association: Association


@dataclass(frozen=True, slots=True)
class AssociationAccepted:
    association: Association


@dataclass(frozen=True, slots=True)
class AssociationRejected:
    association: Association
    result: int
    source: int
    reason: int


@dataclass(frozen=True, slots=True)
class AssociationAborted:
    association: Association
    by: str  # "requestor" or "acceptor"
    source: int
    reason: int
    phase: str  # "setup" or "established"


@dataclass(frozen=True, slots=True)
class ReleaseCompleted:
    association: Association


@dataclass(frozen=True, slots=True)
class ClosedWithoutRelease:
    association: Association


@dataclass(frozen=True, slots=True)
class NoResponse:
    association: Association


@dataclass(frozen=True, slots=True)
class AssociationOpened:
    """A new association record exists (RQ seen, or adopted mid-stream); it is active until Ended."""

    association: Association


@dataclass(frozen=True, slots=True)
class AssociationEnded:
    """The association's outcome is final; the record is complete."""

    association: Association


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """A PDU the standard does not allow here (e.g. an AC after the association ended)."""

    kind: str
    pdu: str
    state: str


class AssociationMachine:
    """Follows the associations of one TCP connection. Feed PDU events with their direction."""

    __slots__ = ("state", "current", "client", "server", "_from_syn", "_uncertain", "_release_rq_from", "_cache")

    def __init__(self, client: str, server: str, *, from_syn: bool, cache=None):
        self._cache = cache  # decoded command sets, shared (see DimseTracker)
        self.state = IDLE
        self.current: Association | None = None
        self.client = client
        self.server = server
        self._from_syn = from_syn  # the connection was seen from its start
        self._uncertain = False  # bytes were lost since the last transition
        self._release_rq_from: bool | None = None

    # -- inputs ---------------------------------------------------------------------------------

    def pdu(self, event, from_client: bool, out: list) -> None:
        self._step(INPUT_OF_EVENT[type(event)], event, from_client, out)

    def lost(self) -> None:
        """Some bytes of this connection were lost in a way that may hide a PDU."""
        self._uncertain = True
        if self.current is not None:
            self.current.lost_pdus += 1
            self.current.dimse.lost()

    def command(self, fragment: P.CommandFragment, from_client: bool, out: list) -> None:
        """A command PDV; DIMSE messages belong to the open association (if any)."""
        sink = self.command_sink()
        if sink is not None:
            sink(from_client, fragment.context_id, fragment.last, fragment.data, fragment.ts, out)

    def command_sink(self):
        """Where command PDV values go now, as ``sink(from_client, context_id, last, data, ts, out)``,
        or None if they are ignored now (no open association). A batch of command values that reach
        the machine together (the compiled lane's, from one segment) share it."""
        if self.current is not None and self.state not in (IDLE, DONE):
            return self.current.dimse.fragment
        return None

    def closed(self, ts: float, out: list) -> None:
        self._step(CLOSED, ts, None, out)

    def timeout(self, ts: float, out: list) -> None:
        self._step(TIMEOUT, ts, None, out)

    def end(self, ts: float, out: list) -> None:
        self._step(END, ts, None, out)

    # -- the machine ----------------------------------------------------------------------------

    def _step(self, inp: str, event, from_client: bool | None, out: list) -> None:
        action, next_state = TRANSITIONS[(self.state, inp)]
        if action == "ignore":
            return
        if action == "violation":
            out.append(ProtocolViolation("unexpected-pdu", inp, self.state))
            return
        override = getattr(self, "_" + action)(event, from_client, out)
        self.state = override or next_state
        self._uncertain = False

    def _ts(self, event) -> float:
        return event if isinstance(event, float) else event.ts

    def _new(self, ts: float, from_client: bool | None, out: list, rq_seen: bool) -> Association:
        a = Association(self.client, self.server, rq_seen=rq_seen, start_ts=ts)
        a.dimse = DimseTracker(a, self._cache)
        if from_client is not None and rq_seen:
            a.requestor_is_client = from_client
        self.current = a
        self._release_rq_from = None
        out.append(AssociationOpened(a))
        return a

    def _ensure(self, event, from_client, out) -> Association:
        """The current association, adopting one (RQ not seen) when none is open."""
        a = self.current
        if a is None or self.state == DONE:
            a = self._new(self._ts(event), from_client, out, rq_seen=False)
        return a

    def _by(self, a: Association, from_client: bool) -> str:
        return "requestor" if from_client == a.requestor_is_client else "acceptor"

    def _finish(self, a: Association, outcome: str, ts: float, out: list) -> None:
        a.outcome = outcome
        a.end_ts = ts
        a.dimse.finish(out)
        out.append(AssociationEnded(a))

    # -- actions (PS3.8 §9.2 names in comments) -------------------------------------------------

    def _request(self, ev: P.AssociateRequest, from_client, out) -> None:
        # AE-2/AE-6: A-ASSOCIATE-RQ sent by the requestor, received by the acceptor.
        a = self._new(ev.start_ts, from_client, out, rq_seen=True)
        a.request = ev
        a.calling_ae = ev.calling_ae
        a.called_ae = ev.called_ae
        out.append(AssociationRequested(a))

    def _request_in_sequence(self, ev, from_client, out) -> None:
        if self.state != DONE:
            self._finish(self.current, ENDED_WITHOUT_RELEASE if not self._uncertain else INCOMPLETE, ev.ts, out)
        out.append(ProtocolViolation("association-in-sequence", RQ, self.state))
        self._request(ev, from_client, out)

    def _accept(self, ev: P.AssociateAccept, from_client, out) -> None:
        # AE-3: A-ASSOCIATE-AC received by the requestor.
        a = self._ensure(ev, from_client, out)
        if a.rq_seen and from_client == a.requestor_is_client:
            out.append(ProtocolViolation("answer-from-requestor", AC, self.state))
        if not a.rq_seen:
            a.requestor_is_client = not from_client
            a.calling_ae = ev.calling_ae  # the acceptor echoes the RQ's titles (PS3.8 Table 9-17)
            a.called_ae = ev.called_ae
            a.labels = a.site = None
        else:
            a.setup_seconds = max(0.0, ev.ts - a.start_ts)
        a.accept = ev
        out.append(AssociationAccepted(a))

    def _reject(self, ev: P.AssociateReject, from_client, out) -> None:
        # AE-4: A-ASSOCIATE-RJ received by the requestor.
        a = self._ensure(ev, from_client, out)
        if a.rq_seen:
            a.setup_seconds = max(0.0, ev.ts - a.start_ts)
        else:
            a.requestor_is_client = not from_client
            a.labels = a.site = None
        a.reject = (ev.result, ev.source, ev.reason)
        out.append(AssociationRejected(a, ev.result, ev.source, ev.reason))
        self._finish(a, REJECTED, ev.ts, out)

    def _adopt(self, ev, from_client, out) -> None:
        self._ensure(ev, from_client, out)

    def _release_request(self, ev: P.ReleaseRequest, from_client, out) -> None:
        # AR-1/AR-2.
        self._ensure(ev, from_client, out)
        self._release_rq_from = from_client

    def _release_collision(self, ev: P.ReleaseRequest, from_client, out) -> str | None:
        if from_client == self._release_rq_from:
            out.append(ProtocolViolation("unexpected-pdu", RELEASE_RQ, self.state))
            return RELEASING  # the same side asked twice: no collision
        # AR-8: A-RELEASE-RQ received while awaiting A-RELEASE-RP: release collision.
        return None

    def _release(self, ev: P.ReleaseReply, from_client, out) -> None:
        # AR-3/AR-4.
        a = self._ensure(ev, from_client, out)
        out.append(ReleaseCompleted(a))
        self._finish(a, RELEASED, ev.ts, out)

    def _abort(self, ev: P.Abort, from_client, out) -> None:
        # AA-3: A-ABORT received. Phase "setup" unless the association was established (or the
        # connection was picked up mid-way and P-DATA was all we could see).
        before = self.state
        a = self._ensure(ev, from_client, out)
        if before == REQUESTED or (before == IDLE and self._from_syn):
            phase = "setup"
        else:
            phase = "established"
        by = self._by(a, from_client)
        a.abort = (by, ev.source, ev.reason, phase)
        out.append(AssociationAborted(a, by, ev.source, ev.reason, phase))
        self._finish(a, ABORTED, ev.ts, out)

    def _no_response(self, ts: float, _from_client, out) -> None:
        a = self.current
        if self._uncertain:
            self._finish(a, INCOMPLETE, ts, out)  # the answer may be in the lost bytes
            return
        out.append(NoResponse(a))
        self._finish(a, NO_RESPONSE, ts, out)

    def _closed_without_release(self, ts: float, _from_client, out) -> None:
        a = self.current
        if self._uncertain:
            self._finish(a, INCOMPLETE, ts, out)  # a release or abort may be in the lost bytes
            return
        out.append(ClosedWithoutRelease(a))
        self._finish(a, ENDED_WITHOUT_RELEASE, ts, out)

    def _incomplete(self, ts: float, _from_client, out) -> None:
        self._finish(self.current, INCOMPLETE, ts, out)
