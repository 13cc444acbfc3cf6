"""The daemon's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` for systemd, load balancers
and humans.

Standard library only (``http.server``): the endpoint serves three fixed paths, so a web framework
would add dependencies and attack surface for nothing. The server runs in a daemon thread and only
calls the two callbacks it is given — it knows nothing of capture or metrics, and the callbacks are
called from request threads, so they must be thread-safe (e.g. return a snapshot rendered under a
lock). A callback that raises gives a 500 for that request only; the server keeps serving.
"""

from __future__ import annotations

import errno
import gzip
import ipaddress
import json
import re
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
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


class _Handler(BaseHTTPRequestHandler):
    server_version = "dicom-probe/" + __version__
    sys_version = ""  # do not advertise the Python version
    timeout = 10  # seconds a client may stall mid-request before its thread gives up

    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        """Silenced: a scrape every 15 s would flood the journal. Errors are counted instead."""

    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)

    def __getattr__(self, name: str):
        # BaseHTTPRequestHandler answers 501 for a method without a do_<METHOD>; every method but
        # GET and HEAD is a known one here that this resource does not allow: 405.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self):
        self._drain_body()
        self._send(405, b"method not allowed: use GET or HEAD\n", "text/plain; charset=utf-8",
                   {"Allow": "GET, HEAD"}, head=False)

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
    holds the latest one as a line of text.
    """

    def __init__(self, listen: str, metrics: Callable[[], bytes], health: Callable[[], tuple[bool, dict]],
                 status: Callable[[], bytes] | None = None):
        """``status``, if given, renders the HTML status page served at ``/``."""
        self.listen = listen
        self.host, self.port = parse_listen(listen)
        self.metrics = metrics
        self.health = health
        self.status = status
        self.errors = 0
        self.last_error: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def count_error(self, e: BaseException | None) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = _one_line(e).decode().strip() if e is not None else "unknown error"

    def start(self) -> None:
        """Bind and start serving. Raises OSError naming the address if it cannot listen."""
        if self._server is not None:
            raise RuntimeError(f"metrics server on {self.listen} is already started")
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
