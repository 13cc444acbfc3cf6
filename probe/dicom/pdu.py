"""DICOM Upper Layer PDUs (PS3.8 §9.3): an incremental, sans-IO framer and the PDU decoders.

Theory of operation
-------------------
One :class:`PduFramer` observes one direction of one TCP connection. ``feed(data, ts)`` takes the
next in-order bytes (and the timestamp of the packet that carried them) and returns the PDU events
completed by them; ``gap(n, ts)`` says that ``n`` bytes at the current position were never seen.

Only what the monitor needs is kept: control PDUs (A-ASSOCIATE-RQ/AC/RJ, A-RELEASE-RQ/RP, A-ABORT)
are buffered up to ``max_control_pdu`` bytes and decoded; P-DATA-TF PDUs are walked PDV by PDV:
command fragments (message control header bit 0 set) are buffered up to ``max_command_bytes`` and
handed out, data fragments are skipped by length, never copied (they carry patient data).

Because every PDU and PDV carries its length, a gap that falls inside a data PDV costs nothing: the
framer subtracts it and stays in sync. A gap inside a control PDU loses that PDU (``PduLost``) but
keeps the framing. Only a gap that swallows a PDU header, or a header that makes no sense, puts the
framer into resynchronisation: it then scans for the next *plausible* PDU header (type 1–7,
reserved byte 0, a length that fits the type, and the first bytes of the body consistent with it)
instead of misparsing the rest of the stream. A framer created with ``synced=False`` starts that way,
for streams picked up mid-way.

Every decoder bounds-checks every length before slicing: malformed input gives :class:`PduError`
with a short ``kind`` (counted by the caller), never another exception.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import NamedTuple

from . import codes

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PDU_HEADER_STRUCT = struct.Struct(">BxI")  # type, reserved, length
_PDV_HEADER_STRUCT = struct.Struct(">IBB")  # item length, presentation context id, message control header

PDU_HEADER_LEN = 6
PDV_HEADER_LEN = 6
ASSOCIATE_FIXED_LEN = 68  # protocol version .. reserved, PS3.8 Table 9-11

# Upper bounds used only to judge plausibility while resynchronising; a framer that is in sync
# follows whatever length the peer announces (negotiated maximum PDU sizes can be large).
RESYNC_MAX_ASSOCIATE_LEN = 1 << 20
RESYNC_MAX_PDATA_LEN = 1 << 26


class PduError(Exception):
    """A malformed PDU or item; ``kind`` is a short stable name used as a metric label."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


# --------------------------------------------------------------------------------------------
# Events. Small, slotted, treated as immutable (frozen, except the two built per PDU: PDataTF and
# CommandFragment, where a frozen dataclass's __init__ costs ~4x a plain one); none carries P-DATA
# data values.


# Per-context records are NamedTuples: immutable like the events, but ~7x cheaper to build, and a
# storescu A-ASSOCIATE-RQ carries ~128 of them.
class PresentationContextRQ(NamedTuple):
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


class PresentationContextAC(NamedTuple):
    context_id: int
    result: int  # PS3.8 Table 9-18, see codes.context_result_name
    transfer_syntax: str


class RoleSelection(NamedTuple):
    sop_class_uid: str
    scu_role: int
    scp_role: int


@dataclass(frozen=True, slots=True)
class UserInformation:
    max_pdu_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    max_operations_invoked: int | None = None
    max_operations_performed: int | None = None
    role_selections: tuple[RoleSelection, ...] = ()
    extended_negotiation_sop_classes: tuple[str, ...] = ()
    common_extended_negotiation: tuple[tuple[str, str], ...] = ()  # (SOP class, service class)
    # User identity negotiation: only the type and whether a response was requested (RQ), or
    # whether the acceptor answered (AC). The identity values are never stored.
    user_identity_type: int | None = None
    user_identity_response_requested: bool | None = None
    user_identity_server_response: bool = False


@dataclass(frozen=True, slots=True)
class AssociateRequest:
    ts: float  # packet that completed the PDU
    start_ts: float  # packet that carried its first byte
    protocol_version: int
    called_ae: bytes  # raw 16-byte field; labels are made by the metrics layer
    calling_ae: bytes
    application_context: str
    contexts: tuple[PresentationContextRQ, ...]
    user_info: UserInformation


@dataclass(frozen=True, slots=True)
class AssociateAccept:
    ts: float
    start_ts: float
    protocol_version: int
    called_ae: bytes  # echoed from the RQ by the acceptor (PS3.8 Table 9-17: "not tested")
    calling_ae: bytes
    application_context: str
    contexts: tuple[PresentationContextAC, ...]
    user_info: UserInformation


@dataclass(frozen=True, slots=True)
class AssociateReject:
    ts: float
    result: int
    source: int
    reason: int


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    ts: float


@dataclass(frozen=True, slots=True)
class ReleaseReply:
    ts: float


@dataclass(frozen=True, slots=True)
class Abort:
    ts: float
    source: int
    reason: int


@dataclass(slots=True)  # not frozen: built per PDU (see above)
class PDataTF:
    """A P-DATA-TF PDU header was seen; its PDVs follow (or are skipped)."""

    ts: float
    length: int


@dataclass(slots=True)  # not frozen: built per PDU (see above)
class CommandFragment:
    """A command PDV's value (a DIMSE command set fragment: group 0000, never patient data)."""

    ts: float
    context_id: int
    last: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class PduLost:
    """A PDU whose header was seen but whose body was partly lost in a capture gap."""

    ts: float
    pdu_type: int


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A counted decoding problem; ``kind`` is a stable label value."""

    ts: float
    kind: str
    pdu_type: int | None = None


@dataclass(frozen=True, slots=True)
class Resynchronised:
    """The framer found a plausible PDU header again after ``skipped`` unusable bytes."""

    ts: float
    skipped: int


# --------------------------------------------------------------------------------------------
# Item decoding, PS3.8 §9.3.2–9.3.3 and Annex D.


def _iter_items(buf: bytes, pos: int, end: int):
    """The items in buf[pos:end] as a list of (item_type, value_start, value_end).

    Items have a 1-byte type, a reserved byte and a 2-byte length (PS3.8 §9.3.2.x).
    """
    items = []
    unpack = _U16.unpack_from
    while pos < end:
        if end - pos < 4:
            raise PduError("item-truncated", f"item header at {pos} needs 4 bytes")
        stop = pos + 4 + unpack(buf, pos + 2)[0]
        if stop > end:
            raise PduError("item-overrun", f"item 0x{buf[pos]:02x} overruns its parent")
        items.append((buf[pos], pos + 4, stop))
        pos = stop
    return items


def _context_sub_items(body: bytes, pos: int, end: int, uids: dict) -> list[tuple[int, str]]:
    """(sub-item type, UID) pairs of a presentation context item: the hot part of a large RQ/AC
    (storescu proposes ~128 contexts), hence a tight loop and a per-PDU UID cache."""
    out = []
    unpack = _U16.unpack_from
    while pos < end:
        if end - pos < 4:
            raise PduError("item-truncated", "sub-item header cut short")
        stop = pos + 4 + unpack(body, pos + 2)[0]
        if stop > end:
            raise PduError("item-overrun", f"sub-item 0x{body[pos]:02x} overruns its context")
        raw = body[pos + 4 : stop]
        uid = uids.get(raw)
        if uid is None:
            uid = uids[raw] = raw.rstrip(b"\x00 ").decode("ascii", "replace")
        out.append((body[pos], uid))
        pos = stop
    return out


def _uid(buf: bytes, start: int, stop: int) -> str:
    """A UID value: ASCII, possibly padded with a trailing NUL (PS3.8 Annex F). Non-ASCII bytes are
    replaced so that junk never becomes an exception."""
    return bytes(buf[start:stop]).rstrip(b"\x00 ").decode("ascii", "replace")


def _u16_prefixed(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A 2-byte length followed by that many bytes; returns (value_start, value_end)."""
    if end - pos < 2:
        raise PduError("item-truncated", "length field cut short")
    (length,) = _U16.unpack_from(buf, pos)
    if pos + 2 + length > end:
        raise PduError("item-overrun", "sub-field overruns its item")
    return pos + 2, pos + 2 + length


def _decode_user_information(buf: bytes, start: int, stop: int) -> UserInformation:
    fields: dict = {}
    roles: list[RoleSelection] = []
    extended: list[str] = []
    common: list[tuple[str, str]] = []
    for sub_type, s, e in _iter_items(buf, start, stop):
        if sub_type == codes.SUBITEM_MAX_LENGTH:
            if e - s != 4:
                raise PduError("bad-item-length", "maximum length sub-item is not 4 bytes")
            fields["max_pdu_length"] = _U32.unpack_from(buf, s)[0]
        elif sub_type == codes.SUBITEM_IMPLEMENTATION_CLASS_UID:
            fields["implementation_class_uid"] = _uid(buf, s, e)
        elif sub_type == codes.SUBITEM_IMPLEMENTATION_VERSION_NAME:
            fields["implementation_version_name"] = _uid(buf, s, e)
        elif sub_type == codes.SUBITEM_ASYNC_OPERATIONS_WINDOW:
            if e - s != 4:
                raise PduError("bad-item-length", "asynchronous operations window is not 4 bytes")
            fields["max_operations_invoked"] = _U16.unpack_from(buf, s)[0]
            fields["max_operations_performed"] = _U16.unpack_from(buf, s + 2)[0]
        elif sub_type == codes.SUBITEM_ROLE_SELECTION:
            us, ue = _u16_prefixed(buf, s, e)
            if e - ue != 2:
                raise PduError("bad-item-length", "role selection needs SCU and SCP role bytes")
            roles.append(RoleSelection(_uid(buf, us, ue), buf[ue], buf[ue + 1]))
        elif sub_type == codes.SUBITEM_SOP_CLASS_EXTENDED:
            us, ue = _u16_prefixed(buf, s, e)
            extended.append(_uid(buf, us, ue))  # service-class-application-information not kept
        elif sub_type == codes.SUBITEM_SOP_CLASS_COMMON_EXTENDED:
            us, ue = _u16_prefixed(buf, s, e)
            cs, ce = _u16_prefixed(buf, ue, e)
            common.append((_uid(buf, us, ue), _uid(buf, cs, ce)))
        elif sub_type == codes.SUBITEM_USER_IDENTITY_RQ:
            if e - s < 2:
                raise PduError("bad-item-length", "user identity sub-item too short")
            fields["user_identity_type"] = buf[s]
            fields["user_identity_response_requested"] = buf[s + 1] == 1
            # The primary/secondary fields (username, passcode, tickets, tokens) are skipped:
            # only check that they fit, never read them.
            ps, pe = _u16_prefixed(buf, s + 2, e)
            _u16_prefixed(buf, pe, e)
        elif sub_type == codes.SUBITEM_USER_IDENTITY_AC:
            _u16_prefixed(buf, s, e)  # server response value is skipped
            fields["user_identity_server_response"] = True
        # Other sub-items (reserved or private) are skipped by length.
    return UserInformation(
        role_selections=tuple(roles),
        extended_negotiation_sop_classes=tuple(extended),
        common_extended_negotiation=tuple(common),
        **fields,
    )


class ItemCache:
    """Decoded variable items of A-ASSOCIATE-RQ/AC PDUs, by their bytes.

    A modality sends the same ~10 KB list of presentation contexts on every association, and the
    PACS answers with the same AC: decoding it once per distinct list instead of once per
    association is the difference between ~1 ms and ~10 µs. The decoded values are immutable, so
    events may share them. Bounded; the oldest entry goes first.
    """

    def __init__(self, max_entries: int = 256):
        self.max_entries = max_entries
        self._items: dict[tuple[int, bytes], tuple] = {}
        self.hits = 0

    def get(self, key):
        v = self._items.get(key)
        if v is not None:
            self.hits += 1
        return v

    def put(self, key, value) -> None:
        if len(self._items) >= self.max_entries:
            del self._items[next(iter(self._items))]
        self._items[key] = value


def decode_associate(pdu_type: int, body: bytes, ts: float, start_ts: float, cache: ItemCache | None = None):
    """Decode the body (after the 6-byte PDU header) of an A-ASSOCIATE-RQ or -AC."""
    if len(body) < ASSOCIATE_FIXED_LEN:
        raise PduError("pdu-too-short", f"{len(body)} bytes, need {ASSOCIATE_FIXED_LEN}")
    (version,) = _U16.unpack_from(body, 0)
    called = bytes(body[4:20])
    calling = bytes(body[20:36])
    key = (pdu_type, bytes(body[ASSOCIATE_FIXED_LEN:])) if cache is not None else None
    items = cache.get(key) if cache is not None else None
    if items is None:
        items = _decode_associate_items(pdu_type, bytes(body))
        if cache is not None:
            cache.put(key, items)
    app_context, contexts, user_info = items
    if pdu_type == codes.PDU_ASSOCIATE_RQ:
        return AssociateRequest(ts, start_ts, version, called, calling, app_context, contexts, user_info)
    return AssociateAccept(ts, start_ts, version, called, calling, app_context, contexts, user_info)


def _decode_associate_items(pdu_type: int, body: bytes) -> tuple:
    """(application context, presentation contexts, user information) of an RQ/AC body."""
    app_context = ""
    rq_contexts: list[PresentationContextRQ] = []
    ac_contexts: list[PresentationContextAC] = []
    user_info = UserInformation()
    is_rq = pdu_type == codes.PDU_ASSOCIATE_RQ
    uids: dict[bytes, str] = {}  # each distinct UID decoded once per PDU
    for item_type, s, e in _iter_items(body, ASSOCIATE_FIXED_LEN, len(body)):
        if item_type == codes.ITEM_APPLICATION_CONTEXT:
            app_context = _uid(body, s, e)
        elif item_type == codes.ITEM_PRESENTATION_CONTEXT_RQ and is_rq:
            if e - s < 4:
                raise PduError("bad-item-length", "presentation context item too short")
            abstract = ""
            transfers: list[str] = []
            for sub_type, uid in _context_sub_items(body, s + 4, e, uids):
                if sub_type == codes.ITEM_ABSTRACT_SYNTAX:
                    abstract = uid
                elif sub_type == codes.ITEM_TRANSFER_SYNTAX:
                    transfers.append(uid)
            rq_contexts.append(PresentationContextRQ(body[s], abstract, tuple(transfers)))
        elif item_type == codes.ITEM_PRESENTATION_CONTEXT_AC and not is_rq:
            if e - s < 4:
                raise PduError("bad-item-length", "presentation context item too short")
            transfer = ""
            for sub_type, uid in _context_sub_items(body, s + 4, e, uids):
                if sub_type == codes.ITEM_TRANSFER_SYNTAX:
                    transfer = uid
            ac_contexts.append(PresentationContextAC(body[s], body[s + 2], transfer))
        elif item_type == codes.ITEM_USER_INFORMATION:
            user_info = _decode_user_information(body, s, e)
        else:
            raise PduError("unexpected-item", f"item 0x{item_type:02x} in {codes.PDU_NAMES[pdu_type]}")
    return app_context, tuple(rq_contexts if is_rq else ac_contexts), user_info


def decode_control(pdu_type: int, body: bytes, ts: float, start_ts: float, cache: ItemCache | None = None):
    """Decode one complete control PDU body into its event; raise PduError if malformed."""
    if pdu_type in (codes.PDU_ASSOCIATE_RQ, codes.PDU_ASSOCIATE_AC):
        return decode_associate(pdu_type, body, ts, start_ts, cache)
    if len(body) != 4:
        raise PduError("bad-pdu-length", f"{codes.PDU_NAMES[pdu_type]} length {len(body)}, expected 4")
    if pdu_type == codes.PDU_ASSOCIATE_RJ:
        return AssociateReject(ts, body[1], body[2], body[3])
    if pdu_type == codes.PDU_RELEASE_RQ:
        return ReleaseRequest(ts)
    if pdu_type == codes.PDU_RELEASE_RP:
        return ReleaseReply(ts)
    if pdu_type == codes.PDU_ABORT:
        return Abort(ts, body[2], body[3])
    raise PduError("unknown-pdu-type", str(pdu_type))  # not reached: the framer checks the type


# --------------------------------------------------------------------------------------------
# Plausibility of a PDU header, used to resynchronise.

_CANDIDATE = re.compile(rb"[\x01-\x07]\x00", re.DOTALL)

# How many bytes from a candidate's start are needed to judge it, per PDU type.
_JUDGE_LEN = {
    codes.PDU_ASSOCIATE_RQ: PDU_HEADER_LEN + 36,  # through the calling AE title
    codes.PDU_ASSOCIATE_AC: PDU_HEADER_LEN + 4,
    codes.PDU_ASSOCIATE_RJ: PDU_HEADER_LEN + 4,
    codes.PDU_P_DATA_TF: PDU_HEADER_LEN + PDV_HEADER_LEN,
    codes.PDU_RELEASE_RQ: PDU_HEADER_LEN + 4,
    codes.PDU_RELEASE_RP: PDU_HEADER_LEN + 4,
    codes.PDU_ABORT: PDU_HEADER_LEN + 4,
}
RESYNC_WINDOW = max(_JUDGE_LEN.values())


def _plausible_length(pdu_type: int, length: int) -> bool:
    if pdu_type == codes.PDU_P_DATA_TF:
        return PDV_HEADER_LEN <= length <= RESYNC_MAX_PDATA_LEN
    if pdu_type in (codes.PDU_ASSOCIATE_RQ, codes.PDU_ASSOCIATE_AC):
        return ASSOCIATE_FIXED_LEN <= length <= RESYNC_MAX_ASSOCIATE_LEN
    return length == 4


def _printable_ae(field: bytes) -> bool:
    return all(0x20 <= b < 0x7F for b in field) and field.strip(b" ") != b""


def plausible_header(buf, pos: int) -> bool | None:
    """Is there a plausible PDU at buf[pos:]? None means "need more bytes to tell"."""
    pdu_type = buf[pos]
    if len(buf) - pos < PDU_HEADER_LEN:
        return None
    (length,) = _U32.unpack_from(buf, pos + 2)
    if not _plausible_length(pdu_type, length):
        return False  # decided without waiting for the body
    if len(buf) - pos < _JUDGE_LEN[pdu_type]:
        return None
    body = pos + PDU_HEADER_LEN
    if pdu_type == codes.PDU_P_DATA_TF:
        pdv_len, context_id, control = _PDV_HEADER_STRUCT.unpack_from(buf, body)
        # PS3.8 §9.3.5.1: presentation context IDs are odd; only bits 0-1 of the control header are used.
        return 2 <= pdv_len <= length - 4 and context_id & 1 == 1 and control <= 3
    if pdu_type in (codes.PDU_ASSOCIATE_RQ, codes.PDU_ASSOCIATE_AC):
        if buf[body : body + 4] != b"\x00\x01\x00\x00":  # protocol version 1, reserved
            return False
        if pdu_type == codes.PDU_ASSOCIATE_RQ:
            return _printable_ae(buf[body + 4 : body + 20]) and _printable_ae(buf[body + 20 : body + 36])
        return True
    if pdu_type == codes.PDU_ASSOCIATE_RJ:
        return buf[body] == 0 and buf[body + 1] in (1, 2) and buf[body + 2] in (1, 2, 3)
    if pdu_type == codes.PDU_ABORT:
        return buf[body : body + 2] == b"\x00\x00" and buf[body + 2] in (0, 1, 2) and buf[body + 3] <= 6
    return buf[body : body + 4] == b"\x00\x00\x00\x00"  # A-RELEASE-RQ/RP


# --------------------------------------------------------------------------------------------
# The framer.

# States (ints for speed on the per-packet path).
_HEADER = 0  # collecting a 6-byte PDU header
_CONTROL = 1  # collecting a control PDU body
_PDV_HEADER = 2  # inside a P-DATA-TF, collecting a 6-byte PDV header
_DATA = 3  # skipping a data PDV value
_COMMAND = 4  # collecting a command PDV value
_SKIP = 5  # skipping the rest of a PDU we gave up on, then back to _HEADER
_RESYNC = 6  # looking for a plausible PDU header

_NO_EVENTS: tuple = ()


class PduFramer:
    """Frames one direction of a DICOM Upper Layer byte stream into PDU events (see module doc)."""

    __slots__ = (
        "_state", "_buf", "_need", "_pdu_type", "_pdu_left", "_pdv_left", "_pdv_context",
        "_pdv_last", "_start_ts", "_max_control", "_max_command", "_skipped_run", "_cache", "data_bytes",
        "pdus", "resync_skipped",
    )

    def __init__(self, *, synced: bool = True, max_control_pdu: int = 1 << 20, max_command_bytes: int = 1 << 16,
                 cache: ItemCache | None = None):
        self._state = _HEADER if synced else _RESYNC
        self._buf = bytearray()
        self._need = PDU_HEADER_LEN
        self._pdu_type = 0
        self._pdu_left = 0  # bytes of the current PDU body not yet consumed
        self._pdv_left = 0  # bytes of the current PDV value not yet consumed
        self._pdv_context = 0
        self._pdv_last = False
        self._start_ts = 0.0
        self._max_control = max_control_pdu
        self._max_command = max_command_bytes
        self._cache = cache  # shared by the framers of one flow table (see ItemCache)
        self.data_bytes = 0  # P-DATA data PDV value bytes skipped
        self.pdus = 0  # PDU headers framed
        self.resync_skipped = 0  # bytes thrown away while resynchronising
        self._skipped_run = 0  # ... since the current resynchronisation began

    @property
    def synced(self) -> bool:
        return self._state != _RESYNC

    def feed(self, data, ts: float):
        """Consume in-order stream bytes; return a sequence of events (possibly empty)."""
        n = len(data)
        # Fast path: the whole segment lies inside a data PDV value.
        if self._state == _DATA and n < self._pdv_left:
            self._pdv_left -= n
            self._pdu_left -= n
            self.data_bytes += n
            return _NO_EVENTS
        events: list = []
        pos = 0
        buf = self._buf
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._pdv_left, n - pos)
                pos += take
                self._pdv_left -= take
                self._pdu_left -= take
                self.data_bytes += take
                if self._pdv_left == 0:
                    self._end_pdv(events, ts)
            elif state == _SKIP:
                take = min(self._pdu_left, n - pos)
                pos += take
                self._pdu_left -= take
                if self._pdu_left == 0:
                    self._state = _HEADER
                    self._need = PDU_HEADER_LEN
            elif state == _RESYNC:
                buf += data[pos:]
                self._resync(events, ts)
                # On success the plausible header sits at buf[0]: go on framing from there.
                data = bytes(buf)
                buf.clear()
                n = len(data)
                pos = 0
                if self._state == _RESYNC:
                    buf += data  # undecided tail, kept for the next feed
                    break
            elif state == _PDV_HEADER and not buf and n - pos >= PDV_HEADER_LEN:
                pos = self._pdv_at(data, pos, n, events, ts)  # read in place, not collected
            elif state == _HEADER and not buf and n - pos >= 12 and data[pos] == codes.PDU_P_DATA_TF:
                # A P-DATA-TF header and its first PDV header whole in this chunk (the usual case).
                self._start_ts = ts
                length = _PDU_HEADER_STRUCT.unpack_from(data, pos)[1]
                if length < PDV_HEADER_LEN:
                    buf += data[pos : pos + PDU_HEADER_LEN]  # malformed: the general path says so
                    pos += PDU_HEADER_LEN
                    self._on_header(events, ts)
                    continue
                self.pdus += 1
                events.append(PDataTF(ts, length))
                self._pdu_left = length
                pos = self._pdv_at(data, pos + PDU_HEADER_LEN, n, events, ts)
            else:
                # Collecting states: _HEADER, _CONTROL, _PDV_HEADER, _COMMAND.
                if not buf and state == _HEADER:
                    self._start_ts = ts
                take = min(self._need - len(buf), n - pos)
                buf += data[pos : pos + take]
                pos += take
                if len(buf) < self._need:
                    continue
                if state == _HEADER:
                    self._on_header(events, ts)
                elif state == _CONTROL:
                    self._on_control(events, ts)
                elif state == _PDV_HEADER:
                    self._on_pdv_header(events, ts)
                else:
                    self._on_command(events, ts)
        return events

    def gap(self, nbytes: int, ts: float):
        """``nbytes`` at the current stream position were lost; returns events (e.g. PduLost)."""
        events: list = []
        state = self._state
        buffered = len(self._buf)
        if state == _RESYNC:
            self._discard(buffered)  # bytes before the hole cannot join those after it
            return events
        if state in (_DATA, _PDV_HEADER, _COMMAND, _SKIP) and buffered + nbytes <= self._pdu_left:
            # Still inside the current P-DATA-TF (or skipped) PDU, whose end is known.
            if state == _DATA and nbytes <= self._pdv_left:
                self._pdv_left -= nbytes
                self._pdu_left -= nbytes
                if self._pdv_left == 0:
                    self._end_pdv(events, ts)
                return events
            if state == _COMMAND:
                events.append(PduLost(ts, codes.PDU_P_DATA_TF))
            self._pdu_left -= buffered + nbytes  # collected bytes were not yet subtracted
            self._buf.clear()
            self._enter_skip()
            return events
        if state == _CONTROL:
            events.append(PduLost(ts, self._pdu_type))
            left = self._need - buffered  # bytes of this PDU still to come
            if nbytes <= left:
                self._buf.clear()
                self._pdu_left = left - nbytes
                self._enter_skip()
                return events
        # The hole swallowed a PDU header (or we were already lost): find the next one.
        self._buf.clear()
        self._enter_resync()
        return events

    # -- state handlers ------------------------------------------------------------------------

    def _on_header(self, events: list, ts: float) -> None:
        buf = self._buf
        pdu_type, length = _PDU_HEADER_STRUCT.unpack_from(buf, 0)
        self.pdus += 1
        if not codes.PDU_ASSOCIATE_RQ <= pdu_type <= codes.PDU_ABORT:
            events.append(ProtocolError(ts, "unknown-pdu-type"))
            del buf[:1]  # a real header may start a byte later
            self._enter_resync()
            self.resync_skipped += 1
            self._skipped_run = 1
            return
        if pdu_type == codes.PDU_P_DATA_TF:
            buf.clear()
            events.append(PDataTF(ts, length))
            self._pdu_left = length
            if length < PDV_HEADER_LEN:
                events.append(ProtocolError(ts, "bad-pdu-length", pdu_type))
                self._enter_skip()
            else:
                self._state = _PDV_HEADER
                self._need = PDV_HEADER_LEN
            return
        self._pdu_type = pdu_type
        if length > self._max_control:
            events.append(ProtocolError(ts, "pdu-too-large", pdu_type))
            buf.clear()
            self._pdu_left = length
            self._enter_skip()
            return
        if length == 0:
            buf.clear()
            events.append(ProtocolError(ts, "bad-pdu-length", pdu_type))
            self._need = PDU_HEADER_LEN
            return
        self._state = _CONTROL
        self._need = PDU_HEADER_LEN + length  # header stays in buf; body follows it

    def _on_control(self, events: list, ts: float) -> None:
        body = bytes(self._buf[PDU_HEADER_LEN:])
        self._buf.clear()
        self._state = _HEADER
        self._need = PDU_HEADER_LEN
        try:
            events.append(decode_control(self._pdu_type, body, ts, self._start_ts, self._cache))
        except PduError as e:
            events.append(ProtocolError(ts, e.kind, self._pdu_type))

    def _on_pdv_header(self, events: list, ts: float) -> None:
        header = bytes(self._buf)
        self._buf.clear()
        self._pdv_at(header, 0, PDV_HEADER_LEN, events, ts)

    def _pdv_at(self, data, pos: int, n: int, events: list, ts: float) -> int:
        """A whole PDV header at ``data[pos:]`` (``n`` = len(data)): enter the PDV; a command value
        that is whole in ``data`` too is taken from there. Returns the position after what was used."""
        pdv_len, context_id, control = _PDV_HEADER_STRUCT.unpack_from(data, pos)
        pos += PDV_HEADER_LEN
        self._pdu_left -= PDV_HEADER_LEN
        value_len = pdv_len - 2
        if value_len < 0 or value_len > self._pdu_left:
            events.append(ProtocolError(ts, "bad-pdv-length", codes.PDU_P_DATA_TF))
            self._enter_skip()
            return pos
        self._pdv_context = context_id
        self._pdv_last = last = bool(control & 0x02)
        if control & 0x01:
            if value_len > self._max_command:
                events.append(ProtocolError(ts, "command-too-large", codes.PDU_P_DATA_TF))
                self._state = _DATA  # skip it like data; it is counted as an error
                self._pdv_left = value_len
            elif value_len <= n - pos:
                end = pos + value_len
                events.append(CommandFragment(ts, context_id, last, bytes(data[pos:end])))
                self._pdu_left -= value_len
                self._end_pdv(events, ts)
                return end
            else:
                self._state = _COMMAND
                self._need = value_len
                return pos
        else:
            self._state = _DATA
            self._pdv_left = value_len
        if value_len == 0:
            self._end_pdv(events, ts)
        return pos

    def _on_command(self, events: list, ts: float) -> None:
        events.append(CommandFragment(ts, self._pdv_context, self._pdv_last, bytes(self._buf)))
        self._pdu_left -= len(self._buf)
        self._buf.clear()
        self._end_pdv(events, ts)

    def _end_pdv(self, events: list | None = None, ts: float = 0.0) -> None:
        left = self._pdu_left
        if left >= PDV_HEADER_LEN:
            self._state = _PDV_HEADER
            self._need = PDV_HEADER_LEN
        elif left == 0:
            self._state = _HEADER
            self._need = PDU_HEADER_LEN
        else:
            # 1-5 bytes left: too few for a PDV header. Skip them rather than read the next PDU's
            # header as the rest of one.
            if events is not None:
                events.append(ProtocolError(ts, "bad-pdv-length", codes.PDU_P_DATA_TF))
            self._state = _SKIP

    def _enter_skip(self) -> None:
        if self._pdu_left > 0:
            self._state = _SKIP
        else:
            self._state = _HEADER
            self._need = PDU_HEADER_LEN

    def _enter_resync(self) -> None:
        self._state = _RESYNC
        self._skipped_run = 0

    def _resync(self, events: list, ts: float) -> None:
        """Scan self._buf for a plausible PDU header; on success leave it at buf[0], state _HEADER."""
        buf = self._buf
        found = undecided = None
        for m in _CANDIDATE.finditer(bytes(buf)):
            pos = m.start()
            verdict = plausible_header(buf, pos)
            if verdict is None:
                undecided = pos  # not enough bytes to judge: keep from here, wait for more
                break
            if verdict:
                found = pos
                break
        if found is not None:
            self._discard(found)
            events.append(Resynchronised(ts, self._skipped_run))
            self._state = _HEADER
            self._need = PDU_HEADER_LEN
            self._start_ts = ts
        elif undecided is not None:
            self._discard(undecided)
        else:
            # No candidate: keep only a tail that could be the start of a header.
            self._discard(max(0, len(buf) - (RESYNC_WINDOW - 1)))

    def _discard(self, count: int) -> None:
        if count:
            del self._buf[:count]
            self.resync_skipped += count
            self._skipped_run += count
