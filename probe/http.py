"""The daemon's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` for systemd, load balancers
and humans.

Standard library only (``http.server``): the endpoint serves three fixed paths, so a web framework
would add dependencies and attack surface for nothing. The server runs in a daemon thread and only
calls the two callbacks it is given — it knows nothing of capture or metrics, and the callbacks are
called from request threads, so they must be thread-safe (e.g. return a snapshot rendered under a
lock). A callback that raises gives a 500 for that request only; the server keeps serving.

Protection, configured like the Prometheus exporter-toolkit's web config (``http.tls``,
``http.basic_auth_users``): with a certificate and key the port speaks HTTPS only (Python's ``ssl``;
optionally requiring client certificates from a CA), and with users every path asks for HTTP basic
authentication checked against bcrypt hashes. The TLS files are re-read when they change on disk,
checked at each new connection, so a renewed certificate needs no restart.
"""

from __future__ import annotations

import base64
import binascii
import errno
import gzip
import hashlib
import hmac
import ipaddress
import json
import os
import re
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import __version__

# The body comes from prometheus_client's generate_latest, which is text format 0.0.4.
# prometheus_client >= 0.22 changed CONTENT_TYPE_LATEST to "version=1.0.0" but still serves
# generate_latest's output as 0.0.4 (exposition.CONTENT_TYPE_PLAIN_0_0_4) unless the scraper asks for
# 1.0.0 with an escaping scheme; we do the same, so the header matches the bytes on every version.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

INDEX = (
    "dicom-probe " + __version__ + "\n"
    "/metrics  Prometheus metrics\n"
    "/healthz  health as JSON (200 healthy, 503 unhealthy)\n"
    "/         the status page (HTML), when the daemon serves one\n"
).encode("ascii")

_PORT = re.compile(r"[0-9]{1,5}")
# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_LISTEN_FORMS = "expected HOST:PORT, [IPV6]:PORT or :PORT (all interfaces)"

_DRAIN_LIMIT = 64 * 1024  # request body bytes read (and dropped) before a 405, see _drain_body


def parse_listen(s: str) -> tuple[str, int]:
    """Split a listen address into (host, port); host ``""`` means all interfaces.

    Accepted: ``HOST:PORT`` (host name or IPv4 address), ``[IPV6]:PORT`` and ``:PORT``. Port 0 asks
    the kernel for a free port (tests). Raises ValueError naming the address and what is wrong.
    """
    if not isinstance(s, str):
        raise ValueError(f"listen address must be a string, not {type(s).__name__}")
    host, sep, port_text = s.rpartition(":")
    if not sep:
        raise ValueError(f"listen address {s!r}: no port; {_LISTEN_FORMS}")
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise ValueError(f"listen address {s!r}: port {port_text!r} is not a TCP port (0-65535)")
    port = int(port_text)
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"listen address {s!r}: missing ']' after the IPv6 address")
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"listen address {s!r}: {inner!r} is not an IPv6 address") from None
        return inner, port
    if ":" in host:
        raise ValueError(f"listen address {s!r}: an IPv6 address needs brackets, e.g. [::1]:{port}")
    if host == "":
        return "", port
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"listen address {s!r}: {host!r} is not an IPv4 address") from None
        return host, port
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"listen address {s!r}: {host!r} is not a host name or IP address")
    return host, port


def _accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header lists gzip with a non-zero quality (RFC 9110 §12.5.3)."""
    for item in (header or "").split(","):
        coding, *params = item.split(";")
        if coding.strip().lower() not in ("gzip", "x-gzip"):
            continue
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def _one_line(e: BaseException) -> bytes:
    text = f"internal error: {type(e).__name__}: {e}"
    return (" ".join(text.split())[:300] + "\n").encode("utf-8", "replace")


# -- TLS --------------------------------------------------------------------------------------------

TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
TLS_DEFAULTS = {"cert_file": "", "key_file": "", "client_ca_file": "", "min_version": "TLS12"}
_TLS_FILES = ("cert_file", "key_file", "client_ca_file")
_HTTPS_ONLY = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
               b"Client sent an HTTP request to an HTTPS server.\n")  # Go's net/http says the same


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt for an encrypted key's pass phrase on the terminal.
    return b""


def _ssl_reason(e: ssl.SSLError) -> str:
    return (e.reason or e.strerror or str(e)).lower().replace("_", " ")


def load_tls(settings: Mapping) -> tuple[ssl.SSLContext | None, list[tuple[str, str]]]:
    """The server context for ``http.tls`` and the problems found, as ``(key, message)``.

    No certificate and no key: ``(None, [])``, plain HTTP. Used by the configuration check (so that
    ``check-config`` loads the very chain the server will) and by the server, at start and whenever
    the files change.
    """
    s = {**TLS_DEFAULTS, **settings}
    cert, key, ca = s["cert_file"], s["key_file"], s["client_ca_file"]
    problems: list[tuple[str, str]] = []
    if not cert and not key:
        if ca:
            problems.append(("client_ca_file", "needs cert_file and key_file (client certificates are a TLS feature)"))
        return None, problems
    if not cert:
        problems.append(("cert_file", "must be set together with key_file"))
    if not key:
        problems.append(("key_file", "must be set together with cert_file"))
    contents: dict[str, bytes] = {}
    for name in _TLS_FILES:
        path = s[name]
        if not path:
            continue
        if not os.path.isabs(path):
            problems.append((name, f"{path!r} must be an absolute path (the service runs in /)"))
            continue
        try:
            with open(path, "rb") as f:
                contents[name] = f.read()
        except OSError as e:
            problems.append((name, f"cannot read {path}: {e.strerror or e}"))
    if problems:
        return None, problems

    try:  # the certificate alone first, for a message that names the right file
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=contents["cert_file"].decode("latin-1"))
    except (ssl.SSLError, ValueError):
        return None, [("cert_file", f"{cert} holds no PEM certificate")]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[s["min_version"]]
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)  # client-initiated renegotiation: a CPU sink
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            return None, [("key_file", f"{key} does not match the certificate in {cert}")]
        if b"ENCRYPTED" in contents["key_file"]:
            return None, [("key_file", f"{key} is encrypted: give it unencrypted, readable only by the service user")]
        return None, [("key_file", f"{key} holds no usable PEM private key ({_ssl_reason(e)})")]
    except OSError as e:  # the file went away between the read and the load
        return None, [("key_file", f"cannot read {key}: {e.strerror or e}")]
    if ca:
        try:
            ctx.load_verify_locations(cadata=contents["client_ca_file"].decode("latin-1"))
        except (ssl.SSLError, ValueError):
            return None, [("client_ca_file", f"{ca} holds no PEM CA certificate")]
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx, []


class _TLS:
    """The server's SSLContext, rebuilt when the certificate, key or client CA file changes.

    Like exporter-toolkit, which re-reads its files per connection: each new connection compares the
    files' (inode, size, mtime) with the loaded ones, a few stat calls. Files that fail to load (a
    renewal half written, a key not matching the new certificate yet) leave the previous context in
    use, reported once per change through ``log``; the next change is tried again.
    """

    def __init__(self, settings: Mapping, log: Callable[[str], None]):
        self.settings = {**TLS_DEFAULTS, **settings}
        self.paths = [self.settings[k] for k in _TLS_FILES if self.settings[k]]
        self.log = log
        self._lock = threading.Lock()
        stamp = self._stamp()
        ctx, problems = load_tls(self.settings)
        if problems:
            key, msg = problems[0]
            raise OSError(f"http.tls.{key}: {msg}")
        self._ctx: ssl.SSLContext = ctx
        self._loaded, self._failed = stamp, None

    def _stamp(self) -> tuple:
        out = []
        for path in self.paths:
            try:
                st = os.stat(path)
                out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError as e:
                out.append(e.errno)
        return tuple(out)

    def context(self) -> ssl.SSLContext:
        with self._lock:
            stamp = self._stamp()
            if stamp == self._loaded or stamp == self._failed:
                return self._ctx
            ctx, problems = load_tls(self.settings)
            if problems:
                self._failed = stamp
                self.log("; ".join(f"http.tls.{k}: {m}" for k, m in problems)
                         + "; still serving the previous certificate")
                return self._ctx
            self._ctx, self._loaded, self._failed = ctx, stamp, None
            self.log(f"http.tls: certificate files changed, reloaded {', '.join(self.paths)}")
            return ctx


# -- basic authentication ---------------------------------------------------------------------------

# bcrypt's own format: $2a$, $2b$ or $2y$ (the same algorithm; $2y$ is what htpasswd -B writes),
# a two-digit cost, then 22 characters of salt and 31 of hash in bcrypt's base64 alphabet.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
BCRYPT_MAX_PASSWORD = 72  # bcrypt reads no further; htpasswd and Go's bcrypt (exporter-toolkit) truncate too


def basic_auth_problem(users: Mapping) -> str | None:
    """What is wrong with ``http.basic_auth_users`` (user -> bcrypt hash), or None."""
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user or not user.isprintable():
            return f"user {user!r}: a user name is a non-empty string without ':' or control characters"
        if not isinstance(hashed, str) or not BCRYPT_HASH.fullmatch(hashed):
            got = ""
            if isinstance(hashed, str) and (m := re.match(r"(\$[A-Za-z0-9]{1,8}\$|\{[A-Z0-9-]{1,10}\})", hashed)):
                got = f", not {m.group(1)}"
            return (f"user {user!r}: not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31, 60 characters{got}); "
                    f"make one with: htpasswd -nbBC 10 {user} PASSWORD")
    return None


class _BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes, with a cache of successes.

    bcrypt is slow on purpose (cost 10: about 0.1 s of CPU), so a verified (user, password, hash) is
    remembered, as exporter-toolkit does: by an HMAC under a per-process random key, so the cache
    holds nothing an attacker could test passwords against, and a dict lookup on it leaks no usable
    timing. At most ``cache_size`` entries, least recently used first out; failures are never cached.
    An unknown user costs a bcrypt check too (against a configured hash, result ignored), so the
    answer time does not tell which users exist; bcrypt.checkpw compares in constant time. Checks run
    one at a time, so a password-guessing flood takes one core, not all of them, and cannot slow
    scrapes whose credentials are cached.
    """

    def __init__(self, users: Mapping[str, str], cache_size: int = 256):
        import bcrypt  # only when users are configured

        problem = basic_auth_problem(users)
        if problem or not users:
            raise ValueError(f"basic_auth_users: {problem or 'no users'}")
        self._bcrypt = bcrypt
        self.users = {u.encode("utf-8"): h.encode("ascii") for u, h in users.items()}
        self._decoy = next(iter(self.users.values()))
        self._key = os.urandom(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self.cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()
        self.bcrypt_checks = 0

    @staticmethod
    def credentials(header: str | None) -> tuple[bytes, bytes] | None:
        """(user, password) from an ``Authorization`` header value, or None (RFC 7617)."""
        if not header:
            return None
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(b":")
        return (user, password) if sep else None

    def check(self, header: str | None) -> bool:
        creds = self.credentials(header)
        if creds is None:
            return False
        user, password = creds
        hashed = self.users.get(user)
        digest = hmac.new(self._key, b"".join(struct.pack(">I", len(x)) + x for x in (user, password, hashed or b"")),
                          hashlib.sha256).digest()
        if hashed is not None:
            with self._cache_lock:
                if digest in self._cache:
                    self._cache.move_to_end(digest)
                    return True
        with self._bcrypt_lock:
            self.bcrypt_checks += 1
            try:
                ok = self._bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], hashed or self._decoy)
            except ValueError:  # e.g. a NUL byte in the password
                ok = False
        if not ok or hashed is None:
            return False
        with self._cache_lock:
            self._cache[digest] = None
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return True


class _Handler(BaseHTTPRequestHandler):
    server_version = "dicom-probe/" + __version__
    sys_version = ""  # do not advertise the Python version
    timeout = 10  # seconds a client may stall mid-request before its thread gives up

    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        """Silenced: a scrape every 15 s would flood the journal. Errors are counted instead."""

    def do_GET(self):
        if self._authorized():
            self._serve(head=False)

    def do_HEAD(self):
        if self._authorized():
            self._serve(head=True)

    def __getattr__(self, name: str):
        # BaseHTTPRequestHandler answers 501 for a method without a do_<METHOD>; every method but
        # GET and HEAD is a known one here that this resource does not allow: 405.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self):
        if not self._authorized():
            return
        self._drain_body()
        self._send(405, b"method not allowed: use GET or HEAD\n", "text/plain; charset=utf-8",
                   {"Allow": "GET, HEAD"}, head=False)

    def _authorized(self) -> bool:
        """Every path and method asks for credentials when users are configured (as exporter-toolkit
        does): a 401 before anything else, also before a 404 or 405, so nothing is told for free."""
        auth = self.server.app.auth
        if auth is None or auth.check(self.headers.get("Authorization")):
            return True
        self._drain_body()
        self._send(401, b"unauthorized: this endpoint needs a user name and password\n", "text/plain; charset=utf-8",
                   {"WWW-Authenticate": 'Basic realm="dicom-probe"'}, head=self.command == "HEAD")
        return False

    def _drain_body(self):
        # Closing a socket with unread request bytes makes the kernel send a RST, which can destroy
        # the response before the client reads it. Small bodies are read and dropped first.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return
        if 0 < length <= _DRAIN_LIMIT:
            self.rfile.read(length)

    def _serve(self, head: bool):
        path = self.path.partition("?")[0]  # origin-form request target: path, then the query
        app = self.server.app
        if path == "/metrics":
            try:
                body = app.metrics()
                if not isinstance(body, bytes):
                    raise TypeError(f"metrics() returned {type(body).__name__}, not bytes")
            except Exception as e:  # the callback's bug must not take the endpoint down
                app.count_error(e)
                self._send(500, _one_line(e), "text/plain; charset=utf-8", head=head)
                return
            headers = {"Vary": "Accept-Encoding"}
            if _accepts_gzip(self.headers.get("Accept-Encoding")):
                body = gzip.compress(body, compresslevel=6, mtime=0)
                headers["Content-Encoding"] = "gzip"
            self._send(200, body, METRICS_CONTENT_TYPE, headers, head=head)
        elif path == "/healthz":
            try:
                ok, detail = app.health()
                body = (json.dumps(detail, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
            except Exception as e:
                app.count_error(e)
                self._send(500, _one_line(e), "text/plain; charset=utf-8", head=head)
                return
            self._send(200 if ok else 503, body, "application/json", {"Cache-Control": "no-store"}, head=head)
        elif path == "/" and app.status is not None:
            try:
                body = app.status()
            except Exception as e:
                app.count_error(e)
                self._send(500, _one_line(e), "text/plain; charset=utf-8", head=head)
                return
            self._send(200, body, "text/html; charset=utf-8", {"Cache-Control": "no-store"}, head=head)
        elif path in ("/", "/index.txt"):
            self._send(200, INDEX, "text/plain; charset=utf-8", head=head)
        else:
            self._send(404, b"not found: see / for the paths served\n", "text/plain; charset=utf-8", head=head)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None, *, head: bool):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled client must never keep the process alive at exit
    block_on_close = False

    def __init__(self, address, family: int, app: MetricsServer, dual_stack: bool):
        self.address_family = family
        self.app = app
        self._dual_stack = dual_stack
        super().__init__(address, _Handler)

    def server_bind(self):
        if self._dual_stack:
            # ":PORT" means every interface: one IPv6 socket also accepting IPv4 (mapped) clients.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Not HTTPServer.server_bind: it resolves the host's FQDN, which can stall startup for the
        # DNS timeout, for a name nothing here uses.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request, client_address):
        """Runs in the request's thread: with TLS, the handshake happens here, never in the accepting
        thread, so a client that connects and stalls holds up only itself (for the handler timeout)."""
        tls = self.app.tls
        if tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_Handler.timeout)
        try:
            first = request.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if first != b"\x16":  # not a TLS handshake record: plain HTTP (or nothing) on the HTTPS port
            if first.isalpha():
                self._refuse_plain_http(request)
            return
        conn = tls.context().wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            try:
                conn.do_handshake()
            except (ssl.SSLError, OSError, ValueError) as e:
                # Wrong CA, no or untrusted client certificate, too old a TLS version, a scanner:
                # the client's problem, counted apart from the server's own errors.
                self.app.count_tls_failure(e)
                self._close_gently(conn)
                return
            super().finish_request(conn, client_address)
        finally:
            try:
                conn.settimeout(1)
                conn.unwrap()  # close_notify: the response ended here, it was not truncated
            except (OSError, ValueError):
                pass
            conn.close()

    @staticmethod
    def _close_gently(conn):
        """After a failed handshake: FIN behind the alert already sent, then read what the client
        sent meanwhile (with TLS 1.3 it may be sending its request already). Closing with unread
        bytes would send a RST, which can destroy the alert before the client reads it, leaving it
        with "connection reset" instead of, say, "certificate required"."""
        try:
            conn.shutdown(socket.SHUT_WR)  # also drops the TLS layer: recv reads the raw socket
            drained, deadline = 0, time.monotonic() + 1
            while drained < _DRAIN_LIMIT and (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                data = conn.recv(4096)
                if not data:
                    break
                drained += len(data)
        except (OSError, ValueError):
            pass

    @staticmethod
    def _refuse_plain_http(request):
        try:
            request.settimeout(1)
            request.recv(_DRAIN_LIMIT)  # read the request first: unread bytes make close() send a RST
            request.sendall(_HTTPS_ONLY)
        except OSError:
            pass

    def handle_error(self, request, client_address):
        """socketserver prints a traceback to stderr by default; a client hanging up mid-response is
        routine for a scrape endpoint, anything else is counted."""
        e = sys.exc_info()[1]
        if not isinstance(e, (ConnectionError, TimeoutError)):
            self.app.count_error(e)


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/`` on ``listen`` from a daemon thread.

    ``metrics()`` returns the Prometheus text exposition (e.g. ``MetricStore.render()``);
    ``health()`` returns ``(ok, detail)``, served as JSON ``detail`` with 200 or 503. Both are called
    from request threads. ``errors`` counts callback exceptions and failed requests; ``last_error``
    holds the latest one as a line of text. ``tls_failures`` counts failed TLS handshakes (the
    client's doing: wrong CA, missing client certificate, old TLS version), ``last_tls_failure``
    holds the latest.
    """

    def __init__(self, listen: str, metrics: Callable[[], bytes], health: Callable[[], tuple[bool, dict]],
                 status: Callable[[], bytes] | None = None, *, tls: Mapping | None = None,
                 basic_auth_users: Mapping[str, str] | None = None, log: Callable[[str], None] | None = None):
        """``status``, if given, renders the HTML status page served at ``/``.

        ``tls`` is the ``http.tls`` mapping (``cert_file``, ``key_file``, ``client_ca_file``,
        ``min_version``): with a certificate and key the server speaks HTTPS only; the files are
        loaded by :meth:`start`. ``basic_auth_users`` maps users to bcrypt hashes: every request
        then needs one of them. ``log`` receives a line when the TLS files are reloaded (or fail to).
        """
        self.listen = listen
        self.host, self.port = parse_listen(listen)
        self.metrics = metrics
        self.health = health
        self.status = status
        self.tls_settings = {**TLS_DEFAULTS, **(tls or {})}
        self.tls: _TLS | None = None
        self.auth = _BasicAuth(basic_auth_users) if basic_auth_users else None
        self.log = log or (lambda msg: None)
        self.errors = 0
        self.last_error: str | None = None
        self.tls_failures = 0
        self.last_tls_failure: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def scheme(self) -> str:
        return "https" if self.tls_settings["cert_file"] else "http"

    def count_tls_failure(self, e: BaseException) -> None:
        with self._lock:
            self.tls_failures += 1
            self.last_tls_failure = " ".join(f"{type(e).__name__}: {e}".split())[:300]

    def count_error(self, e: BaseException | None) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = _one_line(e).decode().strip() if e is not None else "unknown error"

    def start(self) -> None:
        """Load the TLS files, bind and start serving. Raises OSError naming the address if it cannot
        listen, or the ``http.tls`` key whose file cannot be used."""
        if self._server is not None:
            raise RuntimeError(f"metrics server on {self.listen} is already started")
        if self.scheme == "https" and self.tls is None:
            self.tls = _TLS(self.tls_settings, self.log)  # OSError naming the key if a file is wrong
        self._server = self._bind()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"http {self.listen}", daemon=True)
        self._thread.start()

    def _bind(self) -> _Server:
        if self.host == "":
            candidates = [(socket.AF_INET6, ("::", self.port), True), (socket.AF_INET, ("0.0.0.0", self.port), False)]
        else:
            try:
                infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            except socket.gaierror as e:
                raise self._error(e, f"cannot resolve {self.host!r}: {e.strerror}") from e
            family, _, _, _, sockaddr = infos[0]
            candidates = [(family, sockaddr, False)]
        for i, (family, sockaddr, dual_stack) in enumerate(candidates):
            try:
                return _Server(sockaddr, family, self, dual_stack)
            except OSError as e:
                # Only "IPv6 is disabled on this host" moves on to the next candidate (all IPv4).
                if i + 1 < len(candidates) and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    continue
                raise self._error(e, e.strerror or str(e)) from e
        raise AssertionError("unreachable")

    def _error(self, e: OSError, why: str) -> OSError:
        err = OSError(f"cannot listen on {self.listen}: {why}")
        err.errno = e.errno  # kept for callers that branch on it (EADDRINUSE, EACCES)
        return err

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound — the port is the real one when 0 was asked for."""
        if self._server is None:
            raise RuntimeError(f"metrics server on {self.listen} is not started")
        host, port = self._server.server_address[:2]
        return host, port

    def stop(self) -> None:
        """Stop serving and close the socket; waits for the serving thread. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
