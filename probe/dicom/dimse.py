"""DIMSE messages (PS3.7): command sets, status classes, and request/response matching, sans-IO.

Command sets (group 0000) are always Implicit VR Little Endian (PS3.7 §6.3.1), whatever transfer
syntax the presentation context negotiated, so they can be decoded even on an association picked up
mid-way. Only the fields the monitor needs are kept; Error Comment, Affected/Requested SOP Instance
UID, Move Originator fields and every data-set value are skipped (they may carry patient data).

:class:`DimseTracker` follows the messages of one association: it joins command fragments per
direction and presentation context, decodes each complete command set, and pairs responses with
requests by Message ID (requests from either side: C-GET's C-STOREs and N-EVENT-REPORTs come from
the acceptor). It appends notifications to ``out``; see the dataclasses below.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache

_ELEMENT = struct.Struct("<HHI")  # group, element, value length (Implicit VR LE)
_US = struct.Struct("<H")

# Command Field values, PS3.7 §9.3 and §10.3 (Table E.1-1).
COMMANDS = {
    0x0001: "C-STORE", 0x0010: "C-GET", 0x0020: "C-FIND", 0x0021: "C-MOVE", 0x0030: "C-ECHO",
    0x0100: "N-EVENT-REPORT", 0x0110: "N-GET", 0x0120: "N-SET", 0x0130: "N-ACTION",
    0x0140: "N-CREATE", 0x0150: "N-DELETE", 0x0FFF: "C-CANCEL",
}
RESPONSE_BIT = 0x8000
CANCEL = 0x0FFF
NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows (PS3.7 §E.1)

# The (0000,eeee) elements kept, by element number -> field name. Values are small integers,
# SOP class UIDs or an AE title: never patient data.
_KEPT_US = {
    0x0100: "command_field", 0x0110: "message_id", 0x0120: "responded_id", 0x0700: "priority",
    0x0800: "data_set_type", 0x0900: "status", 0x1020: "remaining", 0x1021: "completed",
    0x1022: "failed", 0x1023: "warning",
}
_KEPT_UI = {0x0002: "affected_sop_class", 0x0003: "requested_sop_class"}
_MOVE_DESTINATION = 0x0600

MAX_COMMAND_SET = 1 << 16


class CommandError(Exception):
    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Command:
    command_field: int
    message_id: int | None = None
    responded_id: int | None = None  # Message ID Being Responded To
    affected_sop_class: str | None = None
    requested_sop_class: str | None = None
    data_set_type: int | None = None
    status: int | None = None
    priority: int | None = None
    move_destination: str | None = None
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None

    @property
    def is_response(self) -> bool:
        return bool(self.command_field & RESPONSE_BIT) and self.command_field != CANCEL

    @property
    def name(self) -> str:
        """``C-STORE`` for both C-STORE-RQ and C-STORE-RSP."""
        return COMMANDS.get(self.command_field & ~RESPONSE_BIT & 0xFFFF, "unknown")

    @property
    def sop_class(self) -> str | None:
        return self.affected_sop_class or self.requested_sop_class


def decode_command(data: bytes) -> Command:
    """Decode a complete command set; raise CommandError(kind) if it cannot be used."""
    fields: dict = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            raise CommandError("command-truncated")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if length > end - pos:
            raise CommandError("command-element-overrun")
        if group != 0x0000:
            raise CommandError("command-not-group-0000")
        if element in _KEPT_US:
            if length != 2:
                raise CommandError("command-bad-value-length")
            fields[_KEPT_US[element]] = _US.unpack_from(data, pos)[0]
        elif element in _KEPT_UI:
            fields[_KEPT_UI[element]] = data[pos : pos + length].rstrip(b"\x00 ").decode("ascii", "replace")
        elif element == _MOVE_DESTINATION:
            fields["move_destination"] = data[pos : pos + length].strip(b" \x00").decode("ascii", "replace")
        # Anything else (Error Comment, SOP Instance UIDs, attribute lists, unknown tags) is skipped.
        pos += length
    if "command_field" not in fields:
        raise CommandError("command-field-missing")
    return Command(**fields)


# Status classes, PS3.7 Annex C.
SUCCESS, PENDING, CANCELLED, WARNING, FAILURE = "success", "pending", "cancel", "warning", "failure"
STATUS_CLASSES = (SUCCESS, PENDING, CANCELLED, WARNING, FAILURE)


def status_class(status: int) -> str:
    if status == 0x0000:
        return SUCCESS
    if status in (0xFF00, 0xFF01):
        return PENDING
    if status == 0xFE00:
        return CANCELLED
    if status in (0x0001, 0x0107, 0x0116) or status >> 12 == 0xB:
        return WARNING
    return FAILURE


@lru_cache(maxsize=4096)  # per DIMSE response; a capture shows a handful of distinct statuses
def status_code(status: int) -> str:
    return f"{status:04X}"


# -- notifications ----------------------------------------------------------------------------------


@dataclass(slots=True)  # not frozen: built per DIMSE message (frozen init costs 4x)
class DimseRequest:
    association: object
    command: str
    ts: float


@dataclass(slots=True)  # not frozen: built per DIMSE message (frozen init costs 4x)
class DimseResponse:
    association: object
    command: str
    status: int
    status_class: str
    seconds: float | None  # request to final response; None for pending or unmatched responses
    matched: bool


@dataclass(frozen=True, slots=True)
class SubOperations:
    association: object
    command: str
    completed: int
    failed: int
    warning: int


@dataclass(frozen=True, slots=True)
class Unanswered:
    """A request still without its final response when the association ended."""

    association: object
    command: str


@dataclass(frozen=True, slots=True)
class DimseError:
    kind: str


# -- per-association tracking ---------------------------------------------------------------------


@dataclass(slots=True)
class CommandStats:
    """Per-command summary kept for the association record (not exported as metrics)."""

    requests: int = 0
    responses: dict = field(default_factory=dict)  # status code -> count
    times: list = field(default_factory=list)  # response seconds (bounded)
    cancels: int = 0
    unanswered: int = 0
    suboperations: dict = field(default_factory=dict)  # completed/failed/warning -> count


MAX_TIMES_KEPT = 10_000
MAX_PENDING = 4096  # outstanding requests per association (asynchronous operations window)
MAX_REPEATS = 64  # remembered pending-response command sets per association and direction


@dataclass(slots=True)
class _Pending:
    command: str
    ts: float
    cancelled: bool = False


class DimseTracker:
    __slots__ = ("association", "_fragments", "_pending", "stats", "_cache", "_repeats")

    def __init__(self, association, cache=None):
        self.association = association
        # Decoded command sets by their bytes, shared per flow table: a C-FIND's pending responses,
        # every C-ECHO-RQ with Message ID 1, ... are the same bytes again and again.
        self._cache = cache
        self._fragments: dict[tuple[bool, int], bytearray] = {}
        self._pending: dict[tuple[bool, int], _Pending] = {}  # (request sent by client?, message id)
        self.stats: dict[str, CommandStats] = {}
        # Pending responses (a C-FIND's matches, a C-MOVE's progress) repeat the same command set
        # bytes, and while no request starts or ends their outcome cannot change: per direction,
        # command set -> (the command's response counts, status code, the notification to repeat).
        # Emptied whenever ``_pending`` changes.
        self._repeats: tuple[dict, dict] = ({}, {})

    def fragment(self, from_client: bool, context_id: int, last: bool, data: bytes, ts: float, out: list) -> None:
        key = (from_client, context_id)
        buf = self._fragments.get(key)
        if buf is None:
            if last:
                repeat = self._repeats[from_client].get(data) if data.__class__ is bytes else None
                if repeat is not None:
                    responses, code, notification = repeat
                    responses[code] += 1
                    out.append(notification)
                    return
                self._command(from_client, bytes(data), ts, out)
                return
            buf = self._fragments[key] = bytearray()
        buf += data
        if len(buf) > MAX_COMMAND_SET:
            del self._fragments[key]
            out.append(DimseError("command-too-large"))
            return
        if last:
            del self._fragments[key]
            self._command(from_client, bytes(buf), ts, out)

    def lost(self) -> None:
        """Bytes were lost: a command being joined may miss a fragment; start afresh."""
        self._fragments.clear()

    def finish(self, out: list) -> None:
        """The association ended: every request still unanswered is counted."""
        for pending in self._pending.values():
            out.append(Unanswered(self.association, pending.command))
            self._stat(pending.command).unanswered += 1
        self._pending.clear()
        self._forget_repeats()
        self._fragments.clear()
        # The association keeps its tracker (its stats feed the record); dropping the way back
        # breaks the only reference cycle per association, so refcounting frees both at once and
        # the cyclic GC is not left to find tens of thousands of them in a reject storm.
        self.association = None

    def _forget_repeats(self) -> None:
        if self._repeats[0] or self._repeats[1]:
            self._repeats = ({}, {})

    def _stat(self, command: str) -> CommandStats:
        s = self.stats.get(command)
        if s is None:
            s = self.stats[command] = CommandStats()
        return s

    def _command(self, from_client: bool, data: bytes, ts: float, out: list) -> None:
        cache = self._cache
        cmd = cache.get(data) if cache is not None else None
        if cmd is None:
            try:
                cmd = decode_command(data)
            except CommandError as e:
                out.append(DimseError(e.kind))
                return
            if cache is not None:
                cache.put(data, cmd)
        name = cmd.name
        if name == "unknown":
            out.append(DimseError("unknown-command"))
            return
        a = self.association
        if cmd.command_field == CANCEL:
            out.append(DimseRequest(a, name, ts))
            self._stat(name).requests += 1
            target = self._pending.get((from_client, cmd.responded_id))
            if target is not None:
                target.cancelled = True
                self._stat(target.command).cancels += 1
            return
        if not cmd.is_response:
            out.append(DimseRequest(a, name, ts))
            self._stat(name).requests += 1
            if cmd.message_id is not None and len(self._pending) < MAX_PENDING:
                self._pending[(from_client, cmd.message_id)] = _Pending(name, ts)
                self._forget_repeats()
            return
        if cmd.status is None:
            out.append(DimseError("status-missing"))
            return
        cls = status_class(cmd.status)
        key = (not from_client, cmd.responded_id)  # the request came the other way
        pending = self._pending.get(key)
        matched = pending is not None and pending.command == name
        if pending is not None and not matched:
            out.append(DimseError("response-command-mismatch"))
        seconds = None
        if matched and cls != PENDING:
            del self._pending[key]
            self._forget_repeats()
            seconds = max(0.0, ts - pending.ts)
        stat = self._stat(name)
        code = status_code(cmd.status)
        stat.responses[code] = stat.responses.get(code, 0) + 1
        if seconds is not None and len(stat.times) < MAX_TIMES_KEPT:
            stat.times.append(seconds)
        notification = DimseResponse(a, name, cmd.status, cls, seconds, matched)
        out.append(notification)
        if cls == PENDING and (matched or pending is None):
            repeats = self._repeats[from_client]
            if len(repeats) >= MAX_REPEATS:
                repeats.clear()
            repeats[data] = (stat.responses, code, notification)
        if cls != PENDING and name in ("C-MOVE", "C-GET") and (cmd.completed is not None or cmd.failed is not None
                                                               or cmd.warning is not None):
            sub = SubOperations(a, name, cmd.completed or 0, cmd.failed or 0, cmd.warning or 0)
            for k in ("completed", "failed", "warning"):
                stat.suboperations[k] = stat.suboperations.get(k, 0) + getattr(sub, k)
            out.append(sub)
