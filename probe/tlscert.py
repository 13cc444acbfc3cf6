"""Certificate summaries for the TLS observer (:mod:`probe.tls`): whom a certificate names, who
issued it and when it expires; nothing else (no serial, no key, no subjectAltName).

X.509 (RFC 5280) is decoded with pyca ``cryptography``, imported lazily: importing it costs ~160 ms
and most runs never see a certificate in clear (TLS 1.3 encrypts them). The daemon calls
:func:`preload` before dropping privileges, because site-packages may be unreadable afterwards.

Every text value is passed through :func:`sanitise` before it is kept: certificate names are chosen
by whoever made the certificate, and they end up in metric labels and JSON logs.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from datetime import timezone

# Printable ASCII except '%' (the escape character itself).
_PLAIN = re.compile(rb"[\x20-\x24\x26-\x7e]*")


def sanitise(value: str | bytes, limit: int = 64) -> str:
    """``value`` with printable ASCII kept and every other character (and '%') written as %XX of
    its UTF-8 bytes (of each byte, for bytes), cut to at most ``limit`` characters, never inside a
    character's escapes."""
    if isinstance(value, str):
        head = value[:limit]  # each character shows as at least one
        if _PLAIN.fullmatch(head.encode("utf-8", "surrogatepass")):
            return head
        pieces = (c if " " <= c <= "~" and c != "%" else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
                  for c in head)
    else:
        head = bytes(value[:limit])
        if _PLAIN.fullmatch(head):
            return head.decode("ascii")
        pieces = (chr(b) if 0x20 <= b < 0x7F and b != 0x25 else f"%{b:02X}" for b in head)
    out = []
    size = 0
    for piece in pieces:
        size += len(piece)
        if size > limit:
            break
        out.append(piece)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class CertSummary:
    subject_cn: str
    subject_o: str
    issuer_cn: str
    issuer_o: str
    not_after: float  # Unix seconds, UTC


def preload() -> None:
    """Import ``cryptography`` now (call before dropping privileges)."""
    importlib.import_module("cryptography.x509.oid")  # an ImportError shows here, not later
    # One failed decode imports the rest (the Rust extension's error path).
    _summarise(b"\x30\x00")


def _first(name, oid) -> str:
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return ""
    value = attrs[0].value  # the first of several (rare) is kept
    return sanitise(value if isinstance(value, (str, bytes)) else str(value))


def _summarise(der: bytes) -> CertSummary | None:
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_der_x509_certificate(der)
        try:
            after = cert.not_valid_after_utc  # cryptography >= 42
        except AttributeError:
            after = cert.not_valid_after.replace(tzinfo=timezone.utc)
        subject, issuer = cert.subject, cert.issuer
        return CertSummary(
            _first(subject, NameOID.COMMON_NAME),
            _first(subject, NameOID.ORGANIZATION_NAME),
            _first(issuer, NameOID.COMMON_NAME),
            _first(issuer, NameOID.ORGANIZATION_NAME),
            after.timestamp(),
        )
    except Exception:
        return None
    except BaseException as e:  # pyo3's PanicException derives from BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        return None


_MISSING = object()


class CertParser:
    """Summarises DER certificates, caching by SHA-1 of the DER (a PACS shows the same certificate
    on every connection). Undecodable certificates give None, are cached too and counted once in
    ``errors``. Bounded: a full cache is cleared."""

    __slots__ = ("max_cache", "_cache", "parsed", "cached_hits", "errors")

    def __init__(self, max_cache: int = 1024):
        self.max_cache = max_cache
        self._cache: dict[bytes, CertSummary | None] = {}
        self.parsed = 0
        self.cached_hits = 0
        self.errors = 0

    def summary(self, der: bytes) -> CertSummary | None:
        try:
            der = bytes(der)
            key = hashlib.sha1(der, usedforsecurity=False).digest()
        except Exception:
            self.errors += 1
            return None
        hit = self._cache.get(key, _MISSING)
        if hit is not _MISSING:
            self.cached_hits += 1
            return hit  # type: ignore[return-value]
        result = _summarise(der)
        if result is None:
            self.errors += 1
        else:
            self.parsed += 1
        if len(self._cache) >= self.max_cache:
            self._cache.clear()
        self._cache[key] = result
        return result
