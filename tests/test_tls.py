"""probe.tls and probe.tlscert on real TLS bytes, made without sockets.

Both ends are Python ``ssl`` objects over ``ssl.MemoryBIO``: bytes are pumped between them in
memory and each side's output is recorded in order, which gives the exact wire bytes of both
directions. The PKI is made here with ``cryptography`` (EC P-256, milliseconds): a CA, a server
certificate "pacs.example.test" / "Example Hospital", a client certificate, an expired server
certificate and a self-signed one that nobody trusts.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import ssl
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

import encoded_pdus
from probe import tls
from probe.dicom import pdu
from probe.tls import TlsEnded, TlsError, TlsEstablished, TlsSession
from probe.tlscert import CertParser, CertSummary, sanitise

ROOT = Path(__file__).resolve().parent.parent
HOST = "pacs.example.test"
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
T0 = 1000.0  # timestamp of the first wire chunk; chunk i is at T0 + i
FUZZ = settings(max_examples=300, deadline=None)

# --------------------------------------------------------------------------------------------
# PKI


def _name(cn: str, o: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if o:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o))
    return x509.Name(attrs)


def _cert(subject, key, issuer, issuer_key, *, ca=False, days=(-1, 30), san=None) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(NOW + dt.timedelta(days=days[0])).not_valid_after(NOW + dt.timedelta(days=days[1]))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    certs: dict  # name -> x509.Certificate
    files: dict  # name -> (cert path, key path)

    def summary(self, name: str) -> CertSummary:
        c = self.certs[name]

        def attr(n, oid):
            a = n.get_attributes_for_oid(oid)
            return a[0].value if a else ""

        return CertSummary(attr(c.subject, NameOID.COMMON_NAME), attr(c.subject, NameOID.ORGANIZATION_NAME),
                           attr(c.issuer, NameOID.COMMON_NAME), attr(c.issuer, NameOID.ORGANIZATION_NAME),
                           c.not_valid_after_utc.timestamp())

    def der(self, name: str) -> bytes:
        return self.certs[name].public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("ca", "server", "client", "expired", "rogue")}
    ca = _name("Example Test CA", "Example Hospital IT")
    rogue = _name("rogue.example.test")
    certs = {
        "ca": _cert(ca, keys["ca"], ca, keys["ca"], ca=True),
        "server": _cert(_name(HOST, "Example Hospital"), keys["server"], ca, keys["ca"], san=HOST),
        "client": _cert(_name("modality-01", "Example Imaging"), keys["client"], ca, keys["ca"]),
        "expired": _cert(_name(HOST, "Example Hospital"), keys["expired"], ca, keys["ca"], days=(-30, -1), san=HOST),
        "rogue": _cert(rogue, keys["rogue"], rogue, keys["rogue"], san=HOST),
    }
    files = {}
    for n, c in certs.items():
        (d / f"{n}.crt").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        (d / f"{n}.key").write_bytes(keys[n].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        files[n] = (str(d / f"{n}.crt"), str(d / f"{n}.key"))
    return Pki(certs, files)


# --------------------------------------------------------------------------------------------
# Handshakes in memory


def contexts(pki: Pki, *, client_max=None, client_min=None, client_ciphers=None, server_max=None,
             server_min=None, mutual=False, trust="ca", server_cert="server", client_cert="client"):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.load_verify_locations(pki.files[trust][0])
    s = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    s.load_cert_chain(*pki.files[server_cert])
    if mutual:
        c.load_cert_chain(*pki.files[client_cert])
        s.verify_mode = ssl.CERT_REQUIRED
        s.load_verify_locations(pki.files["ca"][0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1
        for ctx, attr, v in ((c, "maximum_version", client_max), (c, "minimum_version", client_min),
                             (s, "maximum_version", server_max), (s, "minimum_version", server_min)):
            if v is not None:
                setattr(ctx, attr, v)
    if client_ciphers:
        c.set_ciphers(client_ciphers)
    return c, s


@dataclass
class Run:
    client: ssl.SSLObject
    server: ssl.SSLObject
    wire: list  # [(from_client, bytes)] in the order they were sent
    failed_by: str | None  # the side whose handshake failed first (it sent the alert and closes)


def pump(cctx, sctx, *, session=None, exchange=((b"Q" * 20000, b"R" * 300),)) -> Run:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = cctx.wrap_bio(c_in, c_out, server_hostname=HOST, session=session)
    s = sctx.wrap_bio(s_in, s_out, server_side=True)
    wire: list = []

    def flush(from_client: bool) -> None:
        out, peer = (c_out, s_in) if from_client else (s_out, c_in)
        data = out.read()
        if data:
            wire.append((from_client, data))
            peer.write(data)

    failed = None
    done = {True: False, False: False}
    for _ in range(10):
        for from_client, obj in ((True, c), (False, s)):
            if done[from_client]:
                continue
            try:
                obj.do_handshake()
                done[from_client] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                done[from_client] = True
                failed = failed or ("client" if from_client else "server")
            flush(from_client)
        if all(done.values()):
            break
    if failed is None:
        for up, down in exchange:
            c.write(up)
            flush(True)
            got = b""
            while len(got) < len(up):
                got += s.read()
            s.write(down)
            flush(False)
            got = b""
            while len(got) < len(down):
                got += c.read()
    return Run(c, s, wire, failed)


def new_session(**kw) -> TlsSession:
    return TlsSession("10.0.0.1:50000", "10.0.0.2:2762", T0 - 1, **kw)


def observe(wire, *, close=("fin", "client"), split=None, certs=None, synced=(True, True)):
    """Feed a wire to a fresh session (chunk i at T0 + i, optionally split) and close it.

    close: ("fin"|"rst", by) | ("timeout",) | ("end",) | None. Returns (record, notifications)."""
    s = new_session(certs=certs, synced=synced)
    out: list = []
    for i, (from_client, data) in enumerate(wire):
        for piece in (split(data) if split else (data,)):
            s.data(from_client, piece, T0 + i, out)
    close_session(s, close, T0 + len(wire), out)
    return s.record, out


def close_session(s: TlsSession, close, ts: float, out: list) -> None:
    if close is None:
        return
    if close[0] in ("fin", "rst"):
        s.tcp_closed(ts, reset=close[0] == "rst", by=close[1], out=out)
    elif close[0] == "timeout":
        s.timeout(ts, out)
    else:
        s.end(ts, out)


def kinds(out) -> list[str]:
    return [n.kind for n in out if isinstance(n, TlsError)]


def of_type(out, cls) -> list:
    return [n for n in out if isinstance(n, cls)]


def record_types(chunk: bytes) -> list[int]:
    """Content types of the records in a record-aligned chunk."""
    types, pos = [], 0
    while pos + 5 <= len(chunk):
        types.append(chunk[pos])
        pos += 5 + (chunk[pos + 3] << 8 | chunk[pos + 4])
    return types


def iana_code(ctx: ssl.SSLContext, openssl_name: str) -> int:
    """The IANA code of an OpenSSL cipher name, according to OpenSSL itself."""
    return {c["name"]: c["id"] & 0xFFFF for c in ctx.get_ciphers()}[openssl_name]


V = ssl.TLSVersion


@pytest.fixture(scope="module")
def runs(pki) -> dict[str, Run]:
    """The handshakes that several tests use, made once."""
    r = {
        "tls12_mutual": pump(*contexts(pki, server_max=V.TLSv1_2, mutual=True)),
        "tls13": pump(*contexts(pki)),
        "tls12_untrusted": pump(*contexts(pki, server_max=V.TLSv1_2, trust="rogue")),
        "tls12_expired": pump(*contexts(pki, server_max=V.TLSv1_2, server_cert="expired")),
        "tls13_untrusted": pump(*contexts(pki, trust="rogue")),
        "tls13_client_rejected": pump(*contexts(pki, mutual=True, client_cert="rogue")),
    }
    c, s = contexts(pki, server_max=V.TLSv1_2)
    first = pump(c, s)
    r["tls12_resumed"] = pump(c, s, session=first.client.session)
    c, s = contexts(pki)
    s.set_ecdh_curve("secp384r1")  # the client's first key share (X25519) is refused: HelloRetryRequest
    r["tls13_hrr"] = pump(c, s)
    return r


def closer(run: Run):
    return ("fin", run.failed_by or "client")


# --------------------------------------------------------------------------------------------
# 1-7, 12: real handshakes


def test_tls12_mutual_auth_established(pki, runs):
    run = runs["tls12_mutual"]
    assert run.failed_by is None and run.client.version() == "TLSv1.2"
    rec, out = observe(run.wire, close=("fin", "client"))
    openssl_name = run.client.cipher()[0]
    code = iana_code(run.client.context, openssl_name)
    assert code == {"ECDHE-ECDSA-AES256-GCM-SHA384": 0xC02C, "ECDHE-RSA-AES256-GCM-SHA384": 0xC030}[openssl_name]
    assert rec.cipher_code == code
    assert rec.cipher == tls.CIPHER_SUITES[code] == "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
    assert rec.version == "TLSv1.2"
    assert rec.sni == HOST == run.client.server_hostname
    assert rec.offered_versions[:2] == ("TLSv1.3", "TLSv1.2")
    assert rec.cipher_suites_offered == 17  # Python's default client list, SCSV not counted
    assert rec.server_cert == pki.summary("server")
    assert rec.server_cert.subject_cn == HOST and rec.server_cert.subject_o == "Example Hospital"
    assert rec.server_cert.issuer_cn == "Example Test CA" and rec.server_cert.issuer_o == "Example Hospital IT"
    assert rec.client_cert == pki.summary("client")
    # OpenSSL completes each side's chain from the store it verifies its peer with: leaf + CA.
    assert rec.chain_lengths == (2, 2)
    assert rec.resumed is False and rec.alert is None
    assert (rec.outcome, rec.failure, rec.failure_sent_by) == ("established", None, None)
    app_index = [i for i, (fc, data) in enumerate(run.wire) if 23 in record_types(data)]
    assert rec.established_ts == T0 + app_index[1]  # the server's first application_data record
    assert rec.start_ts == T0 - 1 and rec.end_ts == T0 + len(run.wire)
    # 20000 bytes in two records (16384 + 3616), 300 back; AES-GCM adds 8 + 16 bytes per record.
    assert rec.app_bytes == [20000 + 2 * (5 + 24), 300 + 5 + 24]
    assert of_type(out, TlsEstablished) == [TlsEstablished(rec)]
    assert out[-1] == TlsEnded(rec) and len(of_type(out, TlsEnded)) == 1
    assert kinds(out) == []


@pytest.mark.parametrize("name", ["tls13", "tls13_hrr"])
def test_tls13_established(runs, name):
    run = runs[name]
    assert run.failed_by is None and run.client.version() == "TLSv1.3"
    rec, out = observe(run.wire)
    assert rec.version == "TLSv1.3"
    assert rec.cipher_code == iana_code(run.client.context, run.client.cipher()[0]) == 0x1302
    assert rec.cipher == "TLS_AES_256_GCM_SHA384"
    assert rec.offered_versions == ("TLSv1.3", "TLSv1.2") and rec.sni == HOST
    assert rec.server_cert is None and rec.client_cert is None and rec.chain_lengths == (0, 0)  # encrypted
    assert rec.outcome == "established" and rec.alert is None and rec.resumed is False
    assert kinds(out) == []
    # Established by the server's first record after the client's Finished (its session tickets).
    client_finished = next(i for i, (fc, data) in enumerate(run.wire) if fc and 23 in record_types(data))
    assert rec.established_ts == T0 + client_finished + 1
    if name == "tls13_hrr":
        assert run.wire[1][1][11:43] == tls.HRR_RANDOM  # the bytes really hold a HelloRetryRequest


def test_tls12_untrusted_server_ca(pki, runs):
    run = runs["tls12_untrusted"]
    assert run.failed_by == "client"
    rec, out = observe(run.wire, close=closer(run))
    assert (rec.outcome, rec.failure, rec.failure_sent_by) == ("failed", "unknown_ca", "client")
    assert (rec.alert, rec.alert_level, rec.alert_sent_by) == ("unknown_ca", "fatal", "client")
    assert rec.server_cert == pki.summary("server") and rec.chain_lengths == (1, 0)
    assert rec.version == "TLSv1.2" and rec.established_ts is None
    assert of_type(out, TlsEstablished) == [] and kinds(out) == []


def test_tls12_expired_server_cert(pki, runs):
    run = runs["tls12_expired"]
    rec, out = observe(run.wire, close=closer(run))
    assert (rec.outcome, rec.failure, rec.failure_sent_by) == ("failed", "certificate_expired", "client")
    assert rec.server_cert == pki.summary("expired")
    assert rec.server_cert.not_after < NOW.timestamp()


def test_version_mismatch(pki):
    run = pump(*contexts(pki, client_max=V.TLSv1_1, client_min=V.TLSv1, client_ciphers="DEFAULT:@SECLEVEL=0",
                         server_min=V.TLSv1_2))
    assert run.failed_by == "server"
    rec, out = observe(run.wire, close=closer(run))
    # The TLS 1.1 ClientHello has no supported_versions extension: legacy_version 0x0302 speaks.
    assert run.wire[0][1][9:11] == b"\x03\x02"
    assert rec.offered_versions == ("TLSv1.1",)
    assert (rec.outcome, rec.failure, rec.failure_sent_by) == ("failed", "protocol_version", "server")
    assert rec.alert_level == "fatal" and rec.version is None and rec.cipher is None


def test_tls13_untrusted_server_alert_is_in_clear(runs):
    """OpenSSL's client has not switched to its handshake keys when it rejects the server's
    certificate: its alert goes out as a plaintext 2-byte alert record, even in TLS 1.3."""
    run = runs["tls13_untrusted"]
    assert run.failed_by == "client"
    assert run.wire[-1] == (True, b"\x15\x03\x03\x00\x02\x02\x30")  # fatal unknown_ca, in clear
    rec, out = observe(run.wire, close=closer(run))
    assert rec.version == "TLSv1.3" and rec.server_cert is None and rec.chain_lengths == (0, 0)
    assert (rec.outcome, rec.failure, rec.failure_sent_by) == ("failed", "unknown_ca", "client")


def test_tls13_encrypted_alert_heuristic(runs):
    """The server rejects the client's certificate: its alert is an encrypted 19-byte record that
    follows the client's Finished; the server closes."""
    run = runs["tls13_client_rejected"]
    assert run.failed_by == "server"
    assert run.wire[-1][0] is False and len(run.wire[-1][1]) == 5 + 19 and run.wire[-1][1][0] == 23
    rec, out = observe(run.wire, close=closer(run))
    assert (rec.outcome, rec.failure, rec.failure_sent_by) == ("failed", "encrypted-alert", "server")
    assert (rec.alert, rec.alert_level, rec.alert_sent_by) == ("encrypted-alert", None, "server")  # inferred
    assert rec.established_ts is None and of_type(out, TlsEstablished) == []
    assert rec.server_cert is None and rec.client_cert is None
    # Without knowing who closed, nothing can be said.
    assert observe(run.wire, close=("timeout",))[0].failure == "timeout"
    assert observe(run.wire, close=("end",))[0].outcome == "incomplete"
    # The same short record is no failure if the client is the one that closes.
    assert observe(run.wire, close=("fin", "client"))[0].failure == "tcp-close"


def test_plain_dicom_is_not_tls():
    rq = encoded_pdus.A_ASSOCIATE_RQ
    assert rq[:2] == b"\x01\x00"
    rec, out = observe([(True, rq)], close=("fin", "client"))
    assert kinds(out) == ["not-tls"]
    assert (rec.outcome, rec.failure, rec.failure_sent_by) == ("failed", "not-tls", "client")
    # Decided on the first byte: a 1-byte stream is enough.
    rec, out = observe([(True, b"\x01")], close=("rst", "server"))
    assert kinds(out) == ["not-tls"] and rec.failure == "not-tls" and rec.failure_sent_by == "client"


def test_server_answering_in_clear_is_not_tls(runs):
    hello = runs["tls13"].wire[0]
    rec, out = observe([hello, (False, encoded_pdus.A_ASSOCIATE_RQ[:10])], close=("fin", "server"))
    assert kinds(out) == ["not-tls"]
    assert (rec.failure, rec.failure_sent_by, rec.sni) == ("not-tls", "server", HOST)


def test_sslv2_client_hello():
    # SSLv2-compatible CLIENT-HELLO (RFC 5246 Appendix E.2): length 0x2e, type 1, version 3.1, ...
    hello = bytes.fromhex("802e0103010015000000100700c0") + bytes(34)
    rec, out = observe([(True, hello)], close=("fin", "client"))
    assert kinds(out) == ["sslv2-hello"]
    assert (rec.failure, rec.failure_sent_by) == ("not-tls", "client")
    # A high first byte alone does not decide: wait for 5 bytes, which here never come.
    rec, out = observe([(True, b"\x80\x2e")], close=("fin", "client"))
    assert kinds(out) == [] and rec.outcome == "incomplete"


def test_tls12_empty_client_certificate(pki):
    """The server asks for a certificate, the client has none: an empty Certificate message."""
    c, s = contexts(pki, server_max=V.TLSv1_2)
    s.verify_mode = ssl.CERT_OPTIONAL
    s.load_verify_locations(pki.files["ca"][0])
    run = pump(c, s)
    assert run.failed_by is None and run.server.getpeercert() is None
    assert any(fc and b"\x0b\x00\x00\x03\x00\x00\x00" in data for fc, data in run.wire)
    rec, out = observe(run.wire)
    assert rec.outcome == "established" and rec.client_cert is None and rec.chain_lengths == (2, 0)  # leaf + CA
    assert rec.server_cert == pki.summary("server") and kinds(out) == []


def test_tls12_resumption(runs):
    run = runs["tls12_resumed"]
    assert run.client.session_reused
    rec, out = observe(run.wire)
    assert rec.resumed is True and rec.outcome == "established" and rec.version == "TLSv1.2"
    assert rec.server_cert is None and rec.client_cert is None and rec.chain_lengths == (0, 0)
    full, _ = observe(runs["tls12_mutual"].wire)
    assert full.resumed is False


def test_tls13_resumption_seen_in_server_hello(pki):
    """An addition to "resumed": a TLS 1.3 ServerHello that carries pre_shared_key accepted a ticket."""
    c, s = contexts(pki)
    first = pump(c, s)
    again = pump(c, s, session=first.client.session)
    assert again.client.session_reused
    assert observe(again.wire)[0].resumed is True
    assert observe(first.wire)[0].resumed is False


# --------------------------------------------------------------------------------------------
# How the connection ended


def test_end_causes_after_a_client_hello(runs):
    hello = runs["tls12_mutual"].wire[:1]
    for close, outcome, failure, by in [
        (("fin", "client"), "failed", "tcp-close", "client"),
        (("rst", "server"), "failed", "tcp-reset", "server"),
        (("fin", None), "failed", "tcp-close", None),
        (("timeout",), "failed", "timeout", None),
        (("end",), "incomplete", None, None),
    ]:
        rec, out = observe(hello, close=close)
        assert (rec.outcome, rec.failure, rec.failure_sent_by) == (outcome, failure, by), close
        assert rec.offered_versions and rec.end_ts == T0 + 1


def test_end_without_client_hello_is_incomplete():
    for close in (("fin", "client"), ("rst", "server"), ("timeout",), ("end",)):
        rec, out = observe([], close=close)
        assert rec.outcome == "incomplete" and rec.failure is None and out == [TlsEnded(rec)]


def test_ended_once_and_then_inert(runs):
    run = runs["tls12_mutual"]
    s = TlsSession("c", "s", 0.0)
    out: list = []
    for from_client, data in run.wire:
        s.data(from_client, data, 1.0, out)
    s.end(2.0, out)
    frozen = repr(s.record)
    s.tcp_closed(3.0, reset=True, by="server", out=out)
    s.timeout(4.0, out)
    s.end(5.0, out)
    s.data(True, b"\x17\x03\x03\x00\x01x" * 3, 6.0, out)
    s.gap(False, 10, 7.0, out)
    assert len(of_type(out, TlsEnded)) == 1 and repr(s.record) == frozen
    assert s.record.outcome == "established" and s.record.end_ts == 2.0
    assert all(f._state != pdu._DATA for f in s.framers)


def test_established_alert_after_handshake_is_ignored(runs):
    """close_notify and friends after the handshake (encrypted in TLS 1.2) are not failures."""
    run = runs["tls12_mutual"]
    wire = run.wire + [(True, b"\x15\x03\x03\x00\x1a" + bytes(26))]
    rec, _ = observe(wire)
    assert rec.outcome == "established" and rec.alert is None


def test_alert_ranking():
    """The first fatal alert wins over warnings; close_notify is never kept."""
    hello = _client_hello()
    warn_close = b"\x15\x03\x03\x00\x02\x01\x00"  # warning close_notify
    warn_name = b"\x15\x03\x03\x00\x02\x01\x70"  # warning unrecognized_name
    fatal = b"\x15\x03\x03\x00\x02\x02\x28"  # fatal handshake_failure
    rec, _ = observe([(True, hello), (False, warn_close + warn_name + fatal + b"\x15\x03\x03\x00\x02\x02\x46")])
    assert (rec.alert, rec.alert_level, rec.alert_sent_by, rec.failure) == (
        "handshake_failure", "fatal", "server", "handshake_failure")
    rec, _ = observe([(True, hello), (False, warn_close + warn_name)])
    assert (rec.alert, rec.alert_level, rec.failure) == ("unrecognized_name", "warning", "unrecognized_name")
    rec, _ = observe([(True, hello), (False, warn_close)], close=("fin", "server"))
    assert rec.alert is None and (rec.failure, rec.failure_sent_by) == ("tcp-close", "server")
    rec, _ = observe([(True, hello), (False, b"\x15\x03\x03\x00\x02\x02\xfe")])
    assert rec.alert == "alert-254"


def test_unsynced_direction_is_ignored_and_incomplete(pki, runs):
    run = runs["tls12_mutual"]
    rec, out = observe(run.wire, synced=(False, True))
    assert rec.outcome == "incomplete" and rec.failure is None and kinds(out) == []
    assert rec.offered_versions == () and rec.app_bytes[0] == 0  # client bytes not framed
    assert rec.server_cert == pki.summary("server")  # the server side was seen from its start
    rec, out = observe([(True, b"garbage"), (False, b"more garbage")], synced=(False, False))
    assert rec.outcome == "incomplete" and kinds(out) == []


# --------------------------------------------------------------------------------------------
# Hand-built handshake messages: parsing details and malformations


def _vec(data: bytes, n: int) -> bytes:
    return len(data).to_bytes(n, "big") + data


def _client_hello(*, legacy=0x0303, suites=(0x1301, 0xC02C), versions=None, sni=None, extra_ext=b"",
                  trailing=b"") -> bytes:
    body = legacy.to_bytes(2, "big") + bytes(32) + _vec(b"", 1) + _vec(b"".join(c.to_bytes(2, "big") for c in suites), 2)
    body += _vec(b"\x00", 1)
    exts = extra_ext
    if sni is not None:
        exts += b"\x00\x00" + _vec(_vec(b"\x00" + _vec(sni, 2), 2), 2)
    if versions is not None:
        exts += b"\x00\x2b" + _vec(_vec(b"".join(v.to_bytes(2, "big") for v in versions), 1), 2)
    if exts:
        body += _vec(exts, 2)
    msg = b"\x01" + _vec(body + trailing, 3)
    return b"\x16\x03\x01" + _vec(msg, 2)


def test_client_hello_grease_scsv_and_sni_sanitising():
    hello = _client_hello(suites=(0x2A2A, 0x1301, 0x00FF, 0x5600, 0xC02C, 0xFAFA), versions=(0x3A3A, 0x0304, 0x0303),
                          sni=b"pacs%\xc3\xa9\x00.test")
    rec, out = observe([(True, hello)])
    assert rec.cipher_suites_offered == 2
    assert rec.offered_versions == ("TLSv1.3", "TLSv1.2")
    assert rec.sni == "pacs%25%C3%A9%00.test"
    assert kinds(out) == []
    rec, _ = observe([(True, _client_hello(legacy=0x0301))])
    assert rec.offered_versions == ("TLSv1.0",) and rec.sni is None
    rec, _ = observe([(True, _client_hello(sni=b"a" * 300))])
    assert rec.sni == "a" * 255


def test_client_hello_in_many_records_and_two_messages_in_one():
    hello = _client_hello(sni=b"split.example")
    msg = hello[5:]
    records = b"".join(b"\x16\x03\x01" + _vec(msg[i : i + 7], 2) for i in range(0, len(msg), 7))
    rec, out = observe([(True, records)])
    assert rec.sni == "split.example" and kinds(out) == []
    # ClientHello and a (ignored) second message in one record
    both = b"\x16\x03\x01" + _vec(msg + b"\x10" + _vec(b"\x00" * 4, 3), 2)
    rec, out = observe([(True, both)])
    assert rec.sni == "split.example" and kinds(out) == []


@pytest.mark.parametrize("hello", [
    _client_hello(trailing=b"\x00"),  # bytes after the extensions
    _client_hello(extra_ext=b"\x00\x2b\x00\x05\x04\x03\x04"),  # supported_versions shorter than it says
    _client_hello(suites=()),
    _client_hello(versions=(0x0304,), extra_ext=b"\x00\x00\x00\x01\x00"),  # server_name list cut short
], ids=["trailing", "versions-overrun", "no-suites", "sni-truncated"])
def test_malformed_client_hello(hello):
    rec, out = observe([(True, hello)])
    assert kinds(out) == ["handshake-malformed"]
    assert rec.offered_versions == () and rec.sni is None and rec.cipher_suites_offered == 0
    assert (rec.outcome, rec.failure) == ("failed", "tcp-close")  # still a ClientHello that went nowhere


def test_handshake_too_long():
    header = b"\x16\x03\x01\x40\x00" + b"\x01\x02\x00\x00"  # a 128 KiB ClientHello
    s = TlsSession("c", "s", 0.0, max_handshake_bytes=1 << 17)
    out: list = []
    s.data(True, header + bytes(0x4000 - 4), 1.0, out)
    assert kinds(out) == ["handshake-too-long"]
    s.data(True, b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", 1.0, out)  # further handshake: not parsed
    s.data(True, b"\x17\x03\x03\x00\x01x", 1.0, out)  # framing goes on
    assert kinds(out) == ["handshake-too-long"] and s.framers[0].records == 3


def test_bad_record_header_later():
    hello = _client_hello()
    rec, out = observe([(True, hello + b"\x63\x03\x03\x00\x01x" + _client_hello())])
    assert kinds(out) == ["record-malformed"] and rec.failure == "tcp-close"
    rec, out = observe([(True, hello + b"\x17\x03\x03\xff\xff")])  # longer than 2^14 + 2048
    assert kinds(out) == ["record-malformed"]


def test_undecodable_certificate(runs):
    """A Certificate message whose leaf is not DER: counted, the handshake goes on."""
    cert_msg = b"\x0b" + _vec(_vec(_vec(b"\x30\x03abc", 3) + _vec(b"junk", 3), 3), 3)
    sh = runs["tls12_mutual"].wire[1][1]
    sh_record = sh[: 5 + (sh[3] << 8 | sh[4])]  # the ServerHello record alone
    rec, out = observe([runs["tls12_mutual"].wire[0], (False, sh_record + b"\x16\x03\x03" + _vec(cert_msg, 2))])
    assert kinds(out) == ["certificate-undecodable"]
    assert rec.server_cert is None and rec.chain_lengths == (2, 0)


# --------------------------------------------------------------------------------------------
# 8: segmentation does not matter


def _splitter(sizes: list[int]):
    def split(data: bytes):
        pieces, pos, i = [], 0, 0
        while pos < len(data):
            n = sizes[i % len(sizes)] if sizes else 1
            pieces.append(data[pos : pos + n])
            pos += n
            i += 1
        return pieces
    return split


ALL_RUNS = ["tls12_mutual", "tls13", "tls12_untrusted", "tls12_expired", "tls13_untrusted", "tls13_client_rejected",
            "tls12_resumed", "tls13_hrr"]


@pytest.mark.parametrize("name", ALL_RUNS)
def test_byte_by_byte(runs, name):
    run = runs[name]
    whole = observe(run.wire, close=closer(run))
    assert observe(run.wire, close=closer(run), split=_splitter([1])) == whole


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_segmentation_same_record(runs, data):
    run = runs[data.draw(st.sampled_from(ALL_RUNS))]
    sizes = data.draw(st.lists(st.integers(1, 2000), min_size=1, max_size=8))
    whole = observe(run.wire, close=closer(run))
    assert observe(run.wire, close=closer(run), split=_splitter(sizes)) == whole


# --------------------------------------------------------------------------------------------
# 9: the capture fast lane


def _feed_with_fast_lane(wire, sizes, rng: random.Random):
    s = new_session()
    out: list = []
    skipped = 0
    for i, (from_client, data) in enumerate(wire):
        f = s.framers[0 if from_client else 1]
        for piece in _splitter(sizes)(data):
            if f._state == pdu._DATA and f._pdv_left > 1:
                assert f._pdu_left == f._pdv_left
                k = rng.randint(1, min(len(piece), f._pdv_left - 1))
                # What probe.pipeline does for a segment that lies inside the body.
                f._pdv_left -= k
                f._pdu_left -= k
                f.data_bytes += k
                skipped += k
                piece = piece[k:]
            if piece:
                s.data(from_client, piece, T0 + i, out)
    s.tcp_closed(T0 + len(wire), reset=False, by="client", out=out)
    return s.record, out, skipped


@pytest.mark.parametrize("name", ["tls12_mutual", "tls13", "tls12_resumed"])
def test_fast_lane_contract(runs, name):
    wire = runs[name].wire
    expected = observe(wire)
    for seed, sizes in enumerate(([1400], [1], [500, 3, 7000], [16389])):
        rec, out, skipped = _feed_with_fast_lane(wire, sizes, random.Random(seed))
        assert skipped > 0
        assert (rec, out) == expected


def test_data_state_only_inside_application_data(runs):
    """_DATA means "inside an application_data body", with _pdv_left == _pdu_left == what is left."""
    s = TlsSession("c", "s", 0.0)
    out: list = []
    seen_data = 0
    for from_client, data in runs["tls12_mutual"].wire:
        f = s.framers[0 if from_client else 1]
        for i in range(len(data)):
            s.data(from_client, data[i : i + 1], 0.0, out)
            if f._state == pdu._DATA:
                seen_data += 1
                assert f._pdv_left == f._pdu_left > 0
    assert seen_data > 20000


# --------------------------------------------------------------------------------------------
# 10: fuzz


def _check_invariants(s: TlsSession, out: list) -> None:
    ended = of_type(out, TlsEnded)
    assert len(ended) == 1 and ended[0].record is s.record
    rec = s.record
    assert rec.outcome in tls.OUTCOMES
    assert (rec.failure is not None) == (rec.outcome == "failed")
    established = of_type(out, TlsEstablished)
    assert len(established) <= 1 and bool(established) == (rec.outcome == "established")
    assert set(kinds(out)) <= set(tls.ERROR_KINDS)
    assert rec.failure_sent_by in (None, "client", "server") and rec.alert_sent_by in (None, "client", "server")
    assert min(rec.app_bytes) >= 0
    n = len(out)
    s.tcp_closed(1e9, reset=True, by="server", out=out)
    s.end(1e9, out)
    s.timeout(1e9, out)
    assert len(out) == n


def _close_any(s: TlsSession, how: int, out: list) -> None:
    close_session(s, [("fin", "client"), ("fin", "server"), ("rst", "client"), ("rst", None), ("timeout",),
                      ("end",)][how], 1e6, out)


@FUZZ
@given(chunks=st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=12), how=st.integers(0, 5),
       prefix=st.sampled_from([b"", b"\x16\x03\x01", b"\x16\x03\x03\x00\x30\x02\x00\x00\x2c\x03\x03", b"\x17\x03\x03"]))
def test_fuzz_random_bytes(chunks, how, prefix):
    s = TlsSession("c", "s", 0.0)
    out: list = []
    for i, (from_client, data) in enumerate(chunks):
        s.data(from_client, (prefix if i < 2 else b"") + data, float(i), out)
    _close_any(s, how, out)
    _check_invariants(s, out)


MUTATION = st.tuples(st.integers(0, 1 << 16), st.integers(0, 1 << 16), st.integers(0, 3), st.binary(min_size=1, max_size=8))


def _mutate(wire: list, mutations) -> list:
    """Flip a bit, overwrite a byte, insert bytes or delete a run, at (chunk, position)."""
    wire = list(wire)
    for which, where, op, blob in mutations:
        i = which % len(wire)
        b = bytearray(wire[i][1])
        pos = where % len(b)
        if op == 0:
            b[pos] ^= 1 << (blob[0] & 7)
        elif op == 1:
            b[pos] = blob[0]
        elif op == 2:
            b[pos:pos] = blob
        else:
            del b[pos : pos + blob[0] % 41 + 1]
        if b:
            wire[i] = (wire[i][0], bytes(b))
    return wire


_FUZZ_CERTS = CertParser()


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_handshakes(runs, data):
    wire = _mutate(runs[data.draw(st.sampled_from(ALL_RUNS))].wire,
                   data.draw(st.lists(MUTATION, min_size=1, max_size=6)))
    if data.draw(st.booleans()):
        wire = wire[: data.draw(st.integers(0, len(wire)))]
    sizes = data.draw(st.lists(st.integers(100, 3000), min_size=1, max_size=4))  # (segmentation: test 8)
    s = TlsSession("c", "s", 0.0, certs=_FUZZ_CERTS, max_handshake_bytes=data.draw(st.sampled_from([1 << 17, 600])))
    out: list = []
    for i, (from_client, chunk) in enumerate(wire):
        for piece in _splitter(sizes)(chunk):
            s.data(from_client, piece, float(i), out)
    _close_any(s, data.draw(st.integers(0, 5)), out)
    _check_invariants(s, out)


@FUZZ
@given(data=st.data())
def test_fuzz_gaps(runs, data):
    wire = runs[data.draw(st.sampled_from(ALL_RUNS))].wire
    plan = data.draw(st.lists(st.tuples(st.integers(1, 3000), st.integers(0, 9)), min_size=1, max_size=30))
    s = TlsSession("c", "s", 0.0, certs=_FUZZ_CERTS)
    out: list = []
    step = 0
    for i, (from_client, chunk) in enumerate(wire):
        pos = 0
        while pos < len(chunk):
            n, kind = plan[step % len(plan)]
            step += 1
            if kind == 0:
                s.gap(from_client, n, float(i), out)  # these bytes never reach the session
            else:
                s.data(from_client, chunk[pos : pos + n], float(i), out)
            pos += n
    _close_any(s, data.draw(st.integers(0, 5)), out)
    _check_invariants(s, out)
    assert set(kinds(out)) <= {"certificate-undecodable", "handshake-malformed", "record-malformed", "not-tls",
                               "handshake-too-long"}


# --------------------------------------------------------------------------------------------
# 11: gaps


def _feed_with_gap(wire, index: int, offset: int, nbytes: int, close=("fin", "client")):
    """Feed wire, but lose nbytes of wire[index] starting at offset."""
    s = new_session()
    out: list = []
    for i, (from_client, data) in enumerate(wire):
        if i == index:
            s.data(from_client, data[:offset], T0 + i, out)
            s.gap(from_client, nbytes, T0 + i, out)
            s.data(from_client, data[offset + nbytes :], T0 + i, out)
        else:
            s.data(from_client, data, T0 + i, out)
    close_session(s, close, T0 + len(wire), out)
    return s.record, out


def test_gap_inside_application_data_keeps_framing(runs):
    wire = runs["tls12_mutual"].wire
    i = next(i for i, (fc, d) in enumerate(wire) if fc and d[0] == 23)  # the client's 20000 bytes
    expected, _ = observe(wire)
    rec, out = _feed_with_gap(wire, i, 5 + 100, 16000)
    assert rec.outcome == "established" and rec.established_ts == expected.established_ts
    assert rec.app_bytes == expected.app_bytes  # lost bytes of a known record still count
    assert kinds(out) == []
    # A gap that swallows a record header loses the direction; what was seen before stays seen.
    rec, out = _feed_with_gap(wire, i, 5 + 100, 17000)
    assert rec.outcome == "established" and rec.app_bytes[0] == 5 + 16408  # the record the gap began in
    # Here the server's only application_data record loses its header: never established.
    j = next(j for j, (fc, d) in enumerate(wire) if not fc and d[0] == 23)
    rec, out = _feed_with_gap(wire, j, 2, 10)
    assert rec.outcome == "incomplete" and rec.failure is None and kinds(out) == []
    assert observe(wire[:j])[0].failure == "tcp-close"  # what it would have been without the gap


def test_gap_edges(runs):
    wire = runs["tls12_mutual"].wire
    i = next(i for i, (fc, d) in enumerate(wire) if fc and d[0] == 23)
    expected, _ = observe(wire)
    rec, out = _feed_with_gap(wire, i, 5, 16408)  # exactly the first record's body
    assert rec == expected
    rec, out = _feed_with_gap(wire, i, 5, 0)  # nothing lost
    assert rec == expected


def test_client_change_cipher_spec_before_server_hello_is_tls13():
    """TLS 1.3 clients may send their compatibility ChangeCipherSpec right after the ClientHello;
    it does not make the client's later (clear) alert an encrypted one."""
    hello = _client_hello(versions=(0x0304,))
    rec, out = observe([(True, hello + b"\x14\x03\x03\x00\x01\x01" + b"\x15\x03\x03\x00\x02\x02\x28")])
    assert (rec.alert, rec.failure, rec.failure_sent_by) == ("handshake_failure", "handshake_failure", "client")


def test_gap_in_the_handshake_is_incomplete(runs):
    wire = runs["tls12_untrusted"].wire
    rec, out = _feed_with_gap(wire, 0, 2, 10)  # inside the ClientHello's record header
    assert rec.outcome == "incomplete" and rec.failure is None and kinds(out) == []
    rec, out = _feed_with_gap(wire[:2], 1, 200, 50)  # inside the server's Certificate: framing kept
    assert rec.outcome == "incomplete" and rec.server_cert is None and kinds(out) == []
    assert observe(wire[:2])[0].failure == "tcp-close"  # what it would have been without the gap
    # An alert seen after the gap still names the failure.
    rec, out = _feed_with_gap(wire, 1, 200, 50)
    assert (rec.outcome, rec.failure, rec.server_cert) == ("failed", "unknown_ca", None)
    # With framing kept, the handshake can still be seen completing.
    rec, out = _feed_with_gap(runs["tls12_mutual"].wire, 1, 200, 50)
    assert rec.outcome == "established" and rec.server_cert is None and rec.resumed is False


# --------------------------------------------------------------------------------------------
# 13: certificates


def test_cert_parser_errors_and_cache(pki):
    p = CertParser()
    assert p.summary(b"\x30\x03abc") is None
    assert (p.errors, p.parsed, p.cached_hits) == (1, 0, 0)
    assert p.summary(b"\x30\x03abc") is None  # cached: counted once
    assert (p.errors, p.cached_hits) == (1, 1)
    der = pki.der("server")
    assert p.summary(der) == pki.summary("server")
    assert p.summary(der) is p.summary(der)
    assert (p.parsed, p.cached_hits, p.errors) == (1, 3, 1)
    assert p.summary(b"") is None and p.summary(der[:-1]) is None and p.errors == 3


def test_cert_parser_cache_is_bounded(pki):
    p = CertParser(max_cache=2)
    for name in ("server", "client", "ca", "rogue", "server"):
        p.summary(pki.der(name))
        assert len(p._cache) <= 2
    assert p.parsed == 5 and p.cached_hits == 0


def test_cert_summary_sanitised():
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x" * 60 + "é"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hôpital\n100%")])
    cert = _cert(subject, key, subject, key)
    s = CertParser().summary(cert.public_bytes(serialization.Encoding.DER))
    assert s.subject_cn == "x" * 60  # "%C3%A9" would not fit in 64: a character is never cut in half
    assert s.subject_o == "H%C3%B4pital%0A100%25" and s.issuer_o == s.subject_o
    assert s.not_after == cert.not_valid_after_utc.timestamp()


def test_sanitise():
    assert sanitise("plain text") == "plain text"
    assert sanitise(b"a\x7fb%") == "a%7Fb%25"
    assert sanitise("ü" * 40) == "%C3%BC" * 10  # whole characters only
    assert sanitise(b"\xc3\xbc" * 40) == "%C3%BC" * 10 + "%C3"  # bytes (SNI): whole escapes only
    assert len(sanitise("y" * 500, 255)) == 255


def test_lazy_import_and_preload(pki):
    """Importing probe.tls does not import cryptography; after preload() no import is needed."""
    code = "\n".join([
        "import sys",
        "import probe.tls, probe.tlscert",
        "assert not [m for m in sys.modules if m.startswith('cryptography')]",
        "probe.tlscert.preload()",
        "class Block:",
        "    def find_spec(self, name, path=None, target=None):",
        "        raise ImportError('blocked ' + name)",
        "sys.meta_path.insert(0, Block())",
        "s = probe.tlscert.CertParser().summary(bytes.fromhex(sys.argv[1]))",
        f"assert s is not None and s.subject_cn == {HOST!r}, s",
    ])
    subprocess.run([sys.executable, "-c", code, pki.der("server").hex()], cwd=ROOT, check=True, timeout=60)


def test_tables():
    assert tls.version_name(0x0303) == "TLSv1.2" and tls.version_name(0x7F1C) == "0x7f1c"
    assert tls.alert_name(48) == "unknown_ca" and tls.alert_name(200) == "alert-200"
    assert tls.cipher_name(0x002F) == "TLS_RSA_WITH_AES_128_CBC_SHA" and tls.cipher_name(0xABCD) == "0xABCD"
    assert len(tls.ALERTS) == 34 and all(n == n.lower() for n in tls.ALERTS.values())
    for code in (0x1301, 0x1302, 0x1303, 0x1304, 0x1305, 0xC02F, 0xC030, 0xC02B, 0xC02C, 0xCCA8, 0xCCA9, 0x009E,
                 0x009F, 0x0033, 0x0039, 0x002F, 0x0035, 0x009C, 0x009D, 0x003C, 0x003D, 0x000A, 0x00FF, 0x5600):
        assert code in tls.CIPHER_SUITES


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_cipher_table_agrees_with_openssl():
    """Our IANA names against OpenSSL's own (``openssl ciphers -stdname``) for every code it knows."""
    listing = subprocess.run(["openssl", "ciphers", "-stdname", "-V", "ALL:@SECLEVEL=0"], capture_output=True,
                             text=True, check=True, timeout=30).stdout
    known = {}
    for line in listing.splitlines():
        fields = line.split()  # 0xC0,0x2C - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 - ECDHE-ECDSA-AES256-GCM-SHA384 ...
        hi, lo = fields[0].split(",")
        known[int(hi, 16) << 8 | int(lo, 16)] = fields[2]
    checked = [code for code in tls.CIPHER_SUITES if code in known]
    assert len(checked) >= 25
    for code in checked:
        assert tls.CIPHER_SUITES[code] == known[code], hex(code)


def test_gap_inside_an_alert():
    hello = _client_hello()
    for before, lost in ((0, 2), (1, 1), (0, 1)):
        s = new_session()
        out: list = []
        s.data(True, hello, T0, out)
        alert = b"\x15\x03\x03\x00\x02\x02\x28"
        s.data(False, alert[: 5 + before], T0, out)
        s.gap(False, lost, T0, out)
        s.data(False, alert[5 + before + lost :] + b"\x17\x03\x03\x00\x01x", T0, out)
        assert s.framers[1].records == 2 and s.framers[1].app_bytes() == 6  # framing kept
        s.tcp_closed(T0, reset=False, by="server", out=out)
        assert s.record.outcome == "incomplete" and s.record.alert is None
