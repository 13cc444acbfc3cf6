"""TLS 1.0–1.3 handshakes seen from the wire, without keys (RFC 5246, RFC 8446): a sans-IO observer.

Theory of operation
-------------------
One :class:`TlsSession` observes one TCP connection. The caller hands it each direction's in-order
bytes (``data``), the holes in them (``gap``) and how the connection ended (``tcp_closed``,
``timeout``, ``end``); the session appends notifications to the caller's list and keeps one
:class:`TlsRecord` that says what the handshake was and how it went.

Each direction has a record framer (RFC 8446 §5.1, RFC 5246 §6.2.1): 5-byte headers are collected,
bodies are walked by length. Only the cleartext handshake is kept and reassembled (a message may span
records, a record may hold several): ClientHello (offered versions, SNI, cipher count), ServerHello
(chosen version and cipher; a HelloRetryRequest is noted, the next ServerHello decides) and, in
TLS <= 1.2 only, Certificate (the leaf summarised by :class:`probe.tlscert.CertParser`). Every
other record body is skipped by length, never copied; application_data bodies are skipped in the
framer state ``probe.dicom.pdu._DATA`` so that the capture pipeline's fast lane can skip them for us.

What is encrypted: in TLS <= 1.2 a direction's records after its ChangeCipherSpec. In TLS 1.3
everything after the ServerHello, both ways (the ChangeCipherSpec records of middlebox
compatibility mode, RFC 8446 Appendix D.4, are ignored). An alert record of exactly 2 bytes that
does not follow its sender's TLS <= 1.2 ChangeCipherSpec is a clear alert; any other alert record
is an encrypted alert. (TLS 1.3 encrypted records all look like application_data, so an alert
record there is in clear: OpenSSL's client, for one, sends its alert about a server certificate it
rejects in clear, before it has switched to its handshake keys.)

``resumed``: in TLS <= 1.2 the server sent its ChangeCipherSpec without a Certificate (the
abbreviated handshake, RFC 5246 §7.3); in TLS 1.3 the ServerHello accepted a pre-shared key
(RFC 8446 §4.2.11, a session ticket).

When is a handshake *established*? Nothing after the TLS 1.3 ServerHello can be read, so both
criteria are heuristics on application_data records:

* TLS <= 1.2: both sides have sent an application_data record (those follow both Finished).
* TLS 1.3 (and an unknown version): after the ServerHello, the client has sent an application_data
  record (its Finished is one) and after that the server has sent either one longer than 40 bytes
  or a second one. A single short record is not enough: a server that rejects the client's
  certificate answers the client's Finished with one encrypted alert (2 bytes + content type + a
  16-byte AEAD tag = 19 bytes); a server that accepts it sends NewSessionTickets (~200 bytes) or its
  application's answer.

How did an unestablished handshake fail? A clear alert (the first fatal one, else the first
warning other than close_notify) or an encrypted alert names the failure and its sender. In TLS
1.3 the alert is inside an application_data record: if the side that closed the connection last
sent a short (<= 40-byte) application_data record after the ServerHello, that was most likely its
alert ("encrypted-alert"). Otherwise a connection that carried a ClientHello and then closed
failed with "tcp-close", "tcp-reset" or "timeout". Bytes that are not TLS at all give "not-tls".
A capture that ends (``end``) or misses data (unsynced direction, a gap in the handshake) cannot
say: "incomplete".

Gaps: a gap inside a record body whose end is known keeps the framing (lost application_data
bytes still count in ``app_bytes``); if that body was handshake or alert, that direction's handshake
is no longer parsed and a handshake that is not seen completing ends "incomplete" (unless an alert
was seen). A gap that swallows a record header stops that direction's framing.

Malformed input gives :class:`TlsError` notifications (counted by the caller), never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .dicom import pdu as _pdu
from .tlscert import CertParser, CertSummary, sanitise

# --------------------------------------------------------------------------------------------
# Code tables (IANA TLS parameters).

VERSIONS: dict[int, str] = {
    0x0300: "SSLv3",
    0x0301: "TLSv1.0",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}


def version_name(v: int) -> str:
    return VERSIONS.get(v) or f"0x{v:04x}"


# RFC 8446 §6 and RFC 5246 §7.2 (plus RFC 8446's certificate_required and RFC 7301's ALPN alert).
ALERTS: dict[int, str] = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    21: "decryption_failed",
    22: "record_overflow",
    30: "decompression_failure",
    40: "handshake_failure",
    41: "no_certificate",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    60: "export_restriction",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation",
    109: "missing_extension",
    110: "unsupported_extension",
    111: "certificate_unobtainable",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    114: "bad_certificate_hash_value",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}


def alert_name(desc: int) -> str:
    return ALERTS.get(desc) or f"alert-{desc}"


CIPHER_SUITES: dict[int, str] = {
    # TLS 1.3 (RFC 8446 §B.4)
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
    # ECDHE (RFC 8422, RFC 5289, RFC 7905)
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0xC009: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    0xC00A: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    0xC023: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    0xC024: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
    0xC027: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    0xC028: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
    0xC012: "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    # DHE-RSA
    0x009E: "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    0x009F: "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCAA: "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0x0033: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA",
    0x0039: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA",
    0x0067: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256",
    0x006B: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256",
    # RSA key transport
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256",
    0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA",
    0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
    0x003C: "TLS_RSA_WITH_AES_128_CBC_SHA256",
    0x003D: "TLS_RSA_WITH_AES_256_CBC_SHA256",
    0x000A: "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    # Signalling values (RFC 5746, RFC 7507)
    0x00FF: "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
    0x5600: "TLS_FALLBACK_SCSV",
}


def cipher_name(code: int) -> str:
    return CIPHER_SUITES.get(code) or f"0x{code:04X}"


_SCSVS = (0x00FF, 0x5600)

# RFC 8446 §4.1.3: a ServerHello with this random is a HelloRetryRequest.
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")

CT_CHANGE_CIPHER_SPEC = 20
CT_ALERT = 21
CT_HANDSHAKE = 22
CT_APPLICATION_DATA = 23
CT_HEARTBEAT = 24

HS_CLIENT_HELLO = 1
HS_SERVER_HELLO = 2
HS_CERTIFICATE = 11

EXT_SERVER_NAME = 0
EXT_SUPPORTED_VERSIONS = 43
EXT_PRE_SHARED_KEY = 41

TLS13 = 0x0304
RECORD_HEADER_LEN = 5
MAX_RECORD_LEN = (1 << 14) + 2048  # RFC 5246 §6.2.3: TLSCiphertext.length
SHORT_RECORD = 40  # application_data bodies this short may be a TLS 1.3 encrypted alert (19 bytes)


def _is_grease(v: int) -> bool:
    """RFC 8701: 0x0A0A, 0x1A1A, ... 0xFAFA."""
    return v & 0x0F0F == 0x0A0A and v >> 8 == v & 0xFF


# --------------------------------------------------------------------------------------------
# The record and the notifications.


@dataclass(slots=True)
class TlsRecord:
    """What one connection's handshake was and how it went (one per TCP connection)."""

    client: str  # "addr:port", as given by the caller
    server: str
    start_ts: float
    end_ts: float | None = None
    established_ts: float | None = None
    offered_versions: tuple[str, ...] = ()  # first ClientHello: supported_versions (no GREASE), else legacy_version
    sni: str | None = None  # server_name host_name, sanitised, <= 255 characters
    cipher_suites_offered: int = 0  # GREASE and signalling values not counted
    version: str | None = None  # chosen by the ServerHello (its supported_versions first)
    cipher: str | None = None  # cipher_name(cipher_code)
    cipher_code: int | None = None
    resumed: bool = False  # see the module docstring
    server_cert: CertSummary | None = None  # leaf of the server's Certificate message (TLS <= 1.2)
    client_cert: CertSummary | None = None  # leaf of the client's (None if empty or absent)
    chain_lengths: tuple[int, int] = (0, 0)  # certificates in the (server, client) Certificate messages
    alert: str | None = None  # first fatal clear alert before established, else "encrypted-alert", else a warning
    alert_level: str | None = None  # "warning" / "fatal"; None for an encrypted alert
    alert_sent_by: str | None = None  # "client" / "server"
    outcome: str | None = None  # None while open, then "established" | "failed" | "incomplete"
    failure: str | None = None  # outcome "failed": alert name, "encrypted-alert", "tcp-reset", "tcp-close",
    #                             "timeout" or "not-tls"
    failure_sent_by: str | None = None  # "client" / "server" / None (unknown)
    app_bytes: list[int] = field(default_factory=lambda: [0, 0])  # application_data records, headers included,
    #                                                              [client->server, server->client]; see sync()


@dataclass(frozen=True, slots=True)
class TlsEstablished:
    record: TlsRecord


@dataclass(frozen=True, slots=True)
class TlsEnded:
    record: TlsRecord


@dataclass(frozen=True, slots=True)
class TlsError:
    kind: str


OUTCOMES = ("established", "failed", "incomplete")
ERROR_KINDS = ("record-malformed", "handshake-malformed", "handshake-too-long", "certificate-undecodable",
               "not-tls", "sslv2-hello")

# --------------------------------------------------------------------------------------------
# Bounds-checked reading of handshake messages.


class _Malformed(Exception):
    pass


class _Reader:
    """Reads buf[pos:end]; every read checks the length first and raises _Malformed."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None):
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def left(self) -> int:
        return self.end - self.pos

    def u8(self) -> int:
        if self.end - self.pos < 1:
            raise _Malformed
        self.pos += 1
        return self.buf[self.pos - 1]

    def u16(self) -> int:
        p = self.pos
        if self.end - p < 2:
            raise _Malformed
        self.pos = p + 2
        return self.buf[p] << 8 | self.buf[p + 1]

    def u24(self) -> int:
        p = self.pos
        if self.end - p < 3:
            raise _Malformed
        self.pos = p + 3
        return self.buf[p] << 16 | self.buf[p + 1] << 8 | self.buf[p + 2]

    def take(self, n: int) -> bytes:
        p = self.pos
        if self.end - p < n:
            raise _Malformed
        self.pos = p + n
        return self.buf[p : p + n]

    def vec(self, len_bytes: int) -> _Reader:
        """The next length-prefixed vector (RFC 8446 §3.4) as a sub-reader."""
        n = self.u8() if len_bytes == 1 else self.u16() if len_bytes == 2 else self.u24()
        p = self.pos
        if self.end - p < n:
            raise _Malformed
        self.pos = p + n
        return _Reader(self.buf, p, p + n)

    def rest(self) -> bytes:
        return self.buf[self.pos : self.end]


# --------------------------------------------------------------------------------------------
# The framer: one per direction.

_DATA = _pdu._DATA  # skipping an application_data body: the capture fast lane may do it for us
_HEADER, _HANDSHAKE, _ALERT, _SKIP, _DEAD = 100, 101, 102, 103, 104
assert _DATA not in (_HEADER, _HANDSHAKE, _ALERT, _SKIP, _DEAD)

_SIDES = ("client", "server")


class _Framer:
    """Record framing state of one direction. ``_state``, ``_pdv_left``, ``_pdu_left`` and
    ``data_bytes`` are the fast-lane contract shared with :class:`probe.dicom.pdu.PduFramer`."""

    __slots__ = ("_state", "_pdv_left", "_pdu_left", "data_bytes", "_buf", "_hs", "_app_extra", "records",
                 "ccs", "last_short")

    def __init__(self, synced: bool):
        self._state = _HEADER if synced else _DEAD
        self._pdv_left = 0  # application_data body bytes still to come (state _DATA)
        self._pdu_left = 0  # record body bytes still to come
        self.data_bytes = 0  # application_data body bytes seen
        self._buf = bytearray()  # a record header or an alert body being collected
        self._hs: bytearray | None = bytearray() if synced else None  # handshake reassembly; None: not parsed
        self._app_extra = 0  # application_data header bytes and body bytes lost in gaps
        self.records = 0
        self.ccs = False  # TLS <= 1.2 ChangeCipherSpec sent: what follows is encrypted
        self.last_short = False  # the last record was a short TLS 1.3 application_data record

    def app_bytes(self) -> int:
        return self.data_bytes + self._app_extra


def _prefix_ok(buf) -> bool:
    """Can buf (1 to 5 bytes) be the start of a TLS record header?"""
    n = len(buf)
    if not CT_CHANGE_CIPHER_SPEC <= buf[0] <= CT_HEARTBEAT:
        return False
    if n > 1 and buf[1] != 3:
        return False
    if n > 2 and buf[2] > 4:
        return False
    return n < 5 or (buf[3] << 8 | buf[4]) <= MAX_RECORD_LEN


def _looks_sslv2_hello(buf) -> bool:
    """SSLv2-compatible ClientHello (RFC 5246 Appendix E.2): 2-byte length with the high bit set,
    msg_type 1, version 0x0002 or 3.x."""
    return buf[0] & 0x80 and buf[2] == 1 and (buf[3] == 3 or (buf[3] == 0 and buf[4] == 2))


# --------------------------------------------------------------------------------------------
# The session.


class TlsSession:
    """Observes the TLS handshake of one TCP connection (see the module docstring)."""

    __slots__ = ("record", "framers", "_certs", "_max_hs", "_synced", "_version", "_hrr", "_hello_seen",
                 "_ch_seen", "_cert_seen", "_app_seen", "_c13", "_s13_short", "_alert_rank", "_not_tls", "_lost",
                 "_ended")

    def __init__(self, client: str, server: str, start_ts: float, *, synced: tuple[bool, bool] = (True, True),
                 certs: CertParser | None = None, max_handshake_bytes: int = 1 << 17):
        self.record = TlsRecord(client, server, start_ts)
        self.framers = [_Framer(bool(synced[0])), _Framer(bool(synced[1]))]
        self._certs = certs
        self._max_hs = max_handshake_bytes
        self._synced = bool(synced[0]) and bool(synced[1])
        self._version = 0  # chosen by the ServerHello; 0 until seen
        self._hrr = False  # a HelloRetryRequest was seen
        self._hello_seen = False  # the first ClientHello was parsed (or found malformed)
        self._ch_seen = False  # a ClientHello started on the client side
        self._cert_seen = [False, False]  # Certificate message per direction
        self._app_seen = 0  # bit d: direction d sent application_data (TLS <= 1.2 rule)
        self._c13 = False  # TLS 1.3: the client sent application_data after the ServerHello
        self._s13_short = False  # ... and the server answered with one short record
        self._alert_rank = 0  # 3 fatal, 2 encrypted, 1 warning (close_notify is not kept)
        self._not_tls: str | None = None  # the side whose bytes were not TLS
        self._lost = False  # a gap cost handshake or framing information
        self._ended = False

    # -- public surface ---------------------------------------------------------------------

    def data(self, from_client: bool, chunk, ts: float, out: list) -> None:
        """In-order bytes of one direction."""
        d = 0 if from_client else 1
        f = self.framers[d]
        n = len(chunk)
        state = f._state
        if state == _DATA and n < f._pdv_left:  # what the capture fast lane does
            f._pdv_left -= n
            f._pdu_left -= n
            f.data_bytes += n
            return
        if state == _DEAD:
            return
        pos = 0
        while pos < n:
            state = f._state
            if state == _DATA:
                take = min(f._pdv_left, n - pos)
                pos += take
                f._pdv_left -= take
                f._pdu_left -= take
                f.data_bytes += take
                if f._pdv_left == 0:
                    f._state = _HEADER
            elif state == _SKIP:
                take = min(f._pdu_left, n - pos)
                pos += take
                f._pdu_left -= take
                if f._pdu_left == 0:
                    f._state = _HEADER
            elif state == _HEADER:
                buf = f._buf
                take = min(RECORD_HEADER_LEN - len(buf), n - pos)
                buf += chunk[pos : pos + take]
                pos += take
                if f.records == 0 and not _prefix_ok(buf):
                    if buf[0] & 0x80 and len(buf) < RECORD_HEADER_LEN:
                        continue  # maybe an SSLv2 ClientHello: wait for 5 bytes to tell
                    self._not_tls_seen(d, "sslv2-hello" if len(buf) == 5 and _looks_sslv2_hello(buf) else "not-tls",
                                       out)
                    return
                if len(buf) == RECORD_HEADER_LEN:
                    self._on_header(f, d, ts, out)
                    if f._state == _DEAD:
                        return
            elif state == _HANDSHAKE:
                take = min(f._pdu_left, n - pos)
                if f._hs is not None:
                    f._hs += chunk[pos : pos + take]
                pos += take
                f._pdu_left -= take
                if f._hs is not None:
                    self._on_handshake_bytes(f, d, out)
                if f._pdu_left == 0:
                    f._state = _HEADER
            elif state == _ALERT:
                buf = f._buf
                take = min(2 - len(buf), n - pos)
                buf += chunk[pos : pos + take]
                pos += take
                if len(buf) == 2:
                    level, desc = buf[0], buf[1]
                    buf.clear()
                    f._state = _HEADER
                    self._note_alert(d, alert_name(desc), "warning" if level == 1 else "fatal")
            else:  # cannot happen: the branches that kill the direction return at once
                return

    def gap(self, from_client: bool, nbytes: int, ts: float, out: list) -> None:
        """``nbytes`` of one direction were never seen."""
        if nbytes <= 0:
            return
        f = self.framers[0 if from_client else 1]
        state = f._state
        if state == _DEAD:
            return
        if state == _DATA and nbytes <= f._pdv_left:
            f._pdv_left -= nbytes
            f._pdu_left -= nbytes
            f._app_extra += nbytes  # these bytes were sent, just not seen
            if f._pdv_left == 0:
                f._state = _HEADER
            return
        if state in (_SKIP, _HANDSHAKE, _ALERT) and len(f._buf) + nbytes <= f._pdu_left:
            # Inside a record body whose end is known: keep framing; what it held is lost.
            if state == _ALERT:
                f._pdu_left -= len(f._buf)  # (collected alert bytes were not yet subtracted)
            if state != _SKIP:
                self._lost = True
                f._hs = None  # the handshake stream has a hole: stop parsing it
                f._buf.clear()
            f._pdu_left -= nbytes
            f._state = _SKIP if f._pdu_left else _HEADER
            return
        if state == _DATA:
            f._app_extra += f._pdv_left  # the rest of this record was sent too
        self._lost = True
        f._state = _DEAD
        f._hs = None
        f._buf.clear()

    def tcp_closed(self, ts: float, *, reset: bool, by: str | None, out: list) -> None:
        """The TCP connection ended: RST (``reset``) or FIN both ways; ``by`` sent the RST or the first FIN."""
        self._finish(ts, "tcp-reset" if reset else "tcp-close", by, out)

    def timeout(self, ts: float, out: list) -> None:
        """The connection went idle without a TCP close."""
        self._finish(ts, "timeout", None, out)

    def end(self, ts: float, out: list) -> None:
        """The capture ended with the connection open."""
        self._finish(ts, None, None, out)

    def sync(self) -> None:
        """Bring ``record.app_bytes`` up to date (the fast lane counts in the framers)."""
        a = self.record.app_bytes
        a[0] = self.framers[0].app_bytes()
        a[1] = self.framers[1].app_bytes()

    # -- records ------------------------------------------------------------------------------

    def _on_header(self, f: _Framer, d: int, ts: float, out: list) -> None:
        buf = f._buf
        if not _prefix_ok(buf):
            buf.clear()
            out.append(TlsError("record-malformed"))
            f._state = _DEAD
            f._hs = None
            return
        ctype = buf[0]
        length = buf[3] << 8 | buf[4]
        buf.clear()
        f.records += 1
        if ctype == CT_APPLICATION_DATA:
            f._app_extra += RECORD_HEADER_LEN
            f.last_short = self._version == TLS13 and length <= SHORT_RECORD
            if length:
                f._state = _DATA
                f._pdv_left = f._pdu_left = length
            if self.record.outcome is None:
                self._on_app_data(d, length, ts, out)
            return
        f.last_short = False
        f._pdu_left = length
        f._state = _SKIP if length else _HEADER
        if ctype == CT_HANDSHAKE:
            if f._hs is not None and length:
                f._state = _HANDSHAKE
        elif ctype == CT_ALERT:
            if length == 2 and not f.ccs:
                f._state = _ALERT
            else:
                self._note_alert(d, "encrypted-alert", None)
        elif ctype == CT_CHANGE_CIPHER_SPEC:
            # A client's ChangeCipherSpec before any ServerHello can only be TLS 1.3's (0-RTT or
            # middlebox compatibility): in TLS <= 1.2 the client's follows the server's hello.
            if self._version != TLS13 and not self._hrr and (d == 1 or self._version):
                f.ccs = True
                f._hs = None
                if d == 1 and self._version and not self._cert_seen[1] and not self._lost:
                    self.record.resumed = True  # abbreviated handshake (RFC 5246 §7.3, Figure 2)
        # Heartbeat (RFC 6520) bodies are skipped.

    def _on_app_data(self, d: int, length: int, ts: float, out: list) -> None:
        v = self._version
        if v and v != TLS13:
            self._app_seen |= 1 << d
            if self._app_seen == 3:
                self._established(ts, out)
        elif d == 0:
            self._c13 = True  # (0-RTT data before the ServerHello is forgotten by it)
        elif self._c13:
            if length > SHORT_RECORD or self._s13_short:
                self._established(ts, out)
            else:
                self._s13_short = True

    def _established(self, ts: float, out: list) -> None:
        rec = self.record
        rec.outcome = "established"
        rec.established_ts = ts
        self.sync()
        out.append(TlsEstablished(rec))

    def _note_alert(self, d: int, name: str, level: str | None) -> None:
        if self.record.outcome is not None:
            return  # alerts after the handshake (close_notify, ...) say nothing about it
        if level == "fatal":
            rank = 3
        elif level is None:
            rank = 2
        else:
            rank = 1 if name != "close_notify" else 0
        if rank > self._alert_rank:
            self._alert_rank = rank
            rec = self.record
            rec.alert = name
            rec.alert_level = level
            rec.alert_sent_by = _SIDES[d]

    def _not_tls_seen(self, d: int, kind: str, out: list) -> None:
        out.append(TlsError(kind))
        f = self.framers[d]
        f._state = _DEAD
        f._hs = None
        f._buf.clear()
        if self._not_tls is None:
            self._not_tls = _SIDES[d]

    # -- handshake messages -------------------------------------------------------------------

    def _on_handshake_bytes(self, f: _Framer, d: int, out: list) -> None:
        hs = f._hs
        pos = 0
        while len(hs) - pos >= 4:
            mtype = hs[pos]
            mlen = hs[pos + 1] << 16 | hs[pos + 2] << 8 | hs[pos + 3]
            if mtype == HS_CLIENT_HELLO and d == 0:
                self._ch_seen = True
            if mlen + 4 > self._max_hs:
                out.append(TlsError("handshake-too-long"))
                f._hs = None
                return
            if len(hs) - pos - 4 < mlen:
                break
            start = pos + 4
            pos = start + mlen
            try:
                # Other messages (key exchange, CertificateRequest, ...) are skipped by type.
                if mtype == HS_CLIENT_HELLO:
                    if d == 0 and not self._hello_seen:
                        self._hello_seen = True
                        self._client_hello(bytes(hs[start:pos]))
                elif mtype == HS_SERVER_HELLO:
                    if d == 1:
                        self._server_hello(bytes(hs[start:pos]))
                elif mtype == HS_CERTIFICATE:
                    if not self._cert_seen[d]:
                        self._cert_seen[d] = True
                        self._certificate(d, bytes(hs[start:pos]), out)
            except _Malformed:
                out.append(TlsError("handshake-malformed"))
            if f._hs is None:
                return  # the direction is now encrypted (TLS 1.3 ServerHello)
        if pos:
            del hs[:pos]

    def _client_hello(self, body: bytes) -> None:
        """RFC 8446 §4.1.2 (and RFC 5246 §7.4.1.2, where extensions may be absent)."""
        r = _Reader(body)
        legacy_version = r.u16()
        r.take(32)  # random
        if r.vec(1).left() > 32:  # legacy_session_id
            raise _Malformed
        suites = r.vec(2)
        if suites.left() % 2 or not suites.left():
            raise _Malformed
        count = 0
        buf = suites.buf
        for p in range(suites.pos, suites.end, 2):
            code = buf[p] << 8 | buf[p + 1]
            if not _is_grease(code) and code not in _SCSVS:
                count += 1
        if not r.vec(1).left():  # legacy_compression_methods
            raise _Malformed
        versions: list[str] | None = None
        sni: str | None = None
        if r.left():
            exts = r.vec(2)
            if r.left():
                raise _Malformed
            while exts.left():
                ext_type = exts.u16()
                ext = exts.vec(2)
                if ext_type == EXT_SERVER_NAME:  # RFC 6066 §3
                    names = ext.vec(2)
                    if ext.left():
                        raise _Malformed
                    while names.left():
                        name_type = names.u8()
                        name = names.vec(2)
                        if name_type == 0 and sni is None:
                            sni = sanitise(name.rest(), 255)
                elif ext_type == EXT_SUPPORTED_VERSIONS:  # RFC 8446 §4.2.1
                    lst = ext.vec(1)
                    if ext.left() or lst.left() % 2:
                        raise _Malformed
                    versions = []
                    while lst.left():
                        v = lst.u16()
                        if not _is_grease(v):
                            versions.append(version_name(v))
        rec = self.record
        rec.offered_versions = tuple(versions) if versions else (version_name(legacy_version),)
        rec.sni = sni
        rec.cipher_suites_offered = count

    def _server_hello(self, body: bytes) -> None:
        """RFC 8446 §4.1.3 (and RFC 5246 §7.4.1.3)."""
        r = _Reader(body)
        legacy_version = r.u16()
        random = r.take(32)
        if r.vec(1).left() > 32:
            raise _Malformed
        suite = r.u16()
        r.u8()  # legacy_compression_method
        selected = None
        psk = False
        if r.left():
            exts = r.vec(2)
            if r.left():
                raise _Malformed
            while exts.left():
                ext_type = exts.u16()
                ext = exts.vec(2)
                if ext_type == EXT_SUPPORTED_VERSIONS:
                    selected = ext.u16()
                    if ext.left():
                        raise _Malformed
                elif ext_type == EXT_PRE_SHARED_KEY:
                    psk = True
        if random == HRR_RANDOM:
            self._hrr = True  # the client tries again; the next ServerHello decides
            return
        if self._version:
            return
        v = selected if selected is not None else legacy_version
        self._version = v
        self._c13 = self._s13_short = False
        rec = self.record
        rec.version = version_name(v)
        rec.cipher_code = suite
        rec.cipher = cipher_name(suite)
        if v == TLS13:
            rec.resumed = psk  # RFC 8446 §4.2.11: the server accepted a PSK (a session ticket)
            for f in self.framers:
                f._hs = None  # from here on both directions are encrypted

    def _certificate(self, d: int, body: bytes, out: list) -> None:
        """RFC 5246 §7.4.2: a 24-bit list of 24-bit-length DER certificates, leaf first."""
        if self._version == TLS13:
            return  # (cannot be in clear) the TLS 1.3 format differs
        r = _Reader(body)
        lst = r.vec(3)
        if r.left():
            raise _Malformed
        count = 0
        leaf = None
        while lst.left():
            der = lst.vec(3)
            if count == 0:
                leaf = der.rest()
            count += 1
        rec = self.record
        rec.chain_lengths = (count, rec.chain_lengths[1]) if d == 1 else (rec.chain_lengths[0], count)
        if leaf is None:
            return
        certs = self._certs
        if certs is None:
            certs = self._certs = CertParser(max_cache=4)
        summary = certs.summary(leaf)
        if summary is None:
            out.append(TlsError("certificate-undecodable"))
        elif d == 1:
            rec.server_cert = summary
        else:
            rec.client_cert = summary

    # -- the end ------------------------------------------------------------------------------

    def _finish(self, ts: float, cause: str | None, by: str | None, out: list) -> None:
        if self._ended:
            return
        self._ended = True
        rec = self.record
        rec.end_ts = ts
        self.sync()
        for f in self.framers:
            f._state = _DEAD
            f._hs = None
        if rec.outcome != "established":
            failure = sent_by = None
            if not self._synced:
                pass  # picked up mid-stream: the handshake was not seen
            elif self._alert_rank:
                failure, sent_by = rec.alert, rec.alert_sent_by
            elif self._lost:
                pass
            elif cause in ("tcp-close", "tcp-reset") and by in _SIDES and self.framers[_SIDES.index(by)].last_short:
                failure, sent_by = "encrypted-alert", by  # TLS 1.3: its last record was likely an alert
                rec.alert, rec.alert_sent_by = failure, by
            elif self._not_tls is not None:
                failure, sent_by = "not-tls", self._not_tls
            elif cause is not None and self._ch_seen:
                failure, sent_by = cause, by if by in _SIDES else None
            if failure is None:
                rec.outcome = "incomplete"
            else:
                rec.outcome = "failed"
                rec.failure = failure
                rec.failure_sent_by = sent_by
        out.append(TlsEnded(rec))
