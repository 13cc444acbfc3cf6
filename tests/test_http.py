"""The HTTP endpoint, over real sockets with urllib (no proxies: the requests must reach our server)."""

import errno
import gzip
import json
import socket
import urllib.error
import urllib.request

import pytest

from probe.http import METRICS_CONTENT_TYPE, MetricsServer, parse_listen
from probe.metrics import MetricStore

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(server, path, method="GET", headers=None, data=None):
    """(status, headers, body) of one request; HTTP errors are answers too."""
    host, port = server.address
    host = f"[{host}]" if ":" in host else host
    req = urllib.request.Request(f"http://{host}:{port}{path}", method=method, headers=headers or {}, data=data)
    try:
        with OPENER.open(req, timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read()


@pytest.fixture(scope="module")
def store():
    s = MetricStore()
    s.inc("dicom_association_requests_total", ("CT_REMOTE1", "PACS_MAIN"), 40)
    s.set("dicom_probe_build_info", ("test",), 1)
    return s


@pytest.fixture(scope="module")
def health_state():
    return {}


@pytest.fixture(autouse=True)
def healthy(health_state):
    health_state.clear()
    health_state.update(ok=True, detail={"capture": "running", "workers": 2})


@pytest.fixture(scope="module")
def server(store, health_state):
    """One server for the tests that only make requests (stopping one takes a poll interval)."""
    srv = MetricsServer("127.0.0.1:0", store.render, lambda: (health_state["ok"], health_state["detail"]))
    srv.start()
    yield srv
    srv.stop()


def test_address_is_the_bound_port(server):
    host, port = server.address
    assert host == "127.0.0.1"
    assert 0 < port < 65536


def test_metrics_plain(server, store):
    status, headers, body = fetch(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == METRICS_CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert headers.get("Content-Encoding") is None
    assert body == store.render()
    assert b'dicom_association_requests_total{called_ae="PACS_MAIN",calling_ae="CT_REMOTE1"} 40.0' in body
    assert int(headers["Content-Length"]) == len(body)


def test_content_type_is_what_prometheus_client_pairs_with_generate_latest():
    from prometheus_client import exposition
    expected = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
    assert METRICS_CONTENT_TYPE == expected
    assert exposition.choose_encoder("")[1] == expected


def test_metrics_gzip(server, store):
    status, headers, body = fetch(server, "/metrics", headers={"Accept-Encoding": "deflate, gzip;q=0.8"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Vary"] == "Accept-Encoding"
    assert int(headers["Content-Length"]) == len(body)
    assert body[:2] == b"\x1f\x8b"
    assert gzip.decompress(body) == store.render()


def test_gzip_refused_with_q0(server, store):
    _, headers, body = fetch(server, "/metrics", headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert headers.get("Content-Encoding") is None
    assert body == store.render()


def test_metrics_query_string_ignored(server, store):
    assert fetch(server, "/metrics?name[]=x")[2] == store.render()


def test_healthz_ok_and_unhealthy(server, health_state):
    status, headers, body = fetch(server, "/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"capture": "running", "workers": 2}

    health_state["ok"] = False
    health_state["detail"] = {"capture": "stalled", "seconds_since_packet": 120}
    status, _, body = fetch(server, "/healthz")
    assert status == 503
    assert json.loads(body) == {"capture": "stalled", "seconds_since_packet": 120}


def test_index(server):
    status, headers, body = fetch(server, "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert b"/metrics" in body and b"/healthz" in body


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/healthz/x", "/metrics.txt", "/METRICS"])
def test_unknown_path_404(server, path):
    status, _, body = fetch(server, path)
    assert status == 404
    assert body.endswith(b"\n") and body.count(b"\n") == 1


@pytest.mark.parametrize("method,data", [("POST", b"a=1"), ("PUT", b"x"), ("DELETE", None), ("OPTIONS", None),
                                         ("PATCH", b"{}"), ("BREW", None)])
def test_other_methods_405(server, method, data):
    status, headers, _ = fetch(server, "/metrics", method=method, data=data)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("path,status", [("/metrics", 200), ("/healthz", 200), ("/", 200), ("/x", 404)])
def test_head(server, path, status):
    got, headers, body = fetch(server, path, method="HEAD")
    assert got == status
    assert body == b""
    assert int(headers["Content-Length"]) == len(fetch(server, path)[2])


def test_head_metrics_gzip_length(server):
    _, get_headers, get_body = fetch(server, "/metrics", headers={"Accept-Encoding": "gzip"})
    _, headers, body = fetch(server, "/metrics", method="HEAD", headers={"Accept-Encoding": "gzip"})
    assert body == b"" and headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) == len(get_body)


def test_callback_errors_give_500_and_server_keeps_running(store):
    calls = {"n": 0}

    def flaky_metrics():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("store locked\nsecond line")
        return store.render()

    def broken_health():
        raise KeyError("workers")

    srv = MetricsServer("127.0.0.1:0", flaky_metrics, broken_health)
    srv.start()
    try:
        status, _, body = fetch(srv, "/metrics")
        assert status == 500
        assert body == b"internal error: RuntimeError: store locked second line\n"
        status, _, body = fetch(srv, "/metrics")
        assert (status, body) == (200, store.render())
        status, _, body = fetch(srv, "/healthz")
        assert status == 500 and body.count(b"\n") == 1 and b"KeyError" in body
        assert srv.errors == 2
        assert "KeyError" in srv.last_error
        assert fetch(srv, "/")[0] == 200
    finally:
        srv.stop()


def test_metrics_callback_returning_text_is_500(store):
    srv = MetricsServer("127.0.0.1:0", lambda: store.render().decode(), lambda: (True, {}))
    srv.start()
    try:
        status, _, body = fetch(srv, "/metrics")
        assert status == 500 and body == b"internal error: TypeError: metrics() returned str, not bytes\n"
    finally:
        srv.stop()


def test_health_detail_not_json_is_500(store):
    srv = MetricsServer("127.0.0.1:0", store.render, lambda: (True, {"when": object()}))
    srv.start()
    try:
        status, _, body = fetch(srv, "/healthz")
        assert status == 500 and b"TypeError" in body
    finally:
        srv.stop()


def test_no_request_logging(server, capfd):
    fetch(server, "/metrics")
    fetch(server, "/nope")
    fetch(server, "/metrics", method="POST", data=b"x")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_client_hanging_up_is_quiet(server, capfd):
    host, port = server.address
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        s.shutdown(socket.SHUT_RDWR)
    assert fetch(server, "/")[0] == 200
    assert capfd.readouterr() == ("", "")


def test_stop_closes_the_port_and_is_idempotent(store):
    srv = MetricsServer("127.0.0.1:0", store.render, lambda: (True, {}))
    srv.start()
    port = srv.address[1]
    srv.stop()
    srv.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(RuntimeError, match="not started"):
        srv.address


def test_start_twice_is_an_error(server):
    with pytest.raises(RuntimeError, match="already started"):
        server.start()


def test_address_in_use(server, store):
    port = server.address[1]
    other = MetricsServer(f"127.0.0.1:{port}", store.render, lambda: (True, {}))
    with pytest.raises(OSError) as info:
        other.start()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "in use" in str(info.value)
    assert info.value.errno == errno.EADDRINUSE
    assert fetch(server, "/")[0] == 200  # the first server is untouched


def test_unresolvable_host(store):
    srv = MetricsServer("no-such-host.invalid:9104", store.render, lambda: (True, {}))
    with pytest.raises(OSError, match=r"cannot listen on no-such-host\.invalid:9104: cannot resolve"):
        srv.start()


def test_invalid_listen_fails_at_construction(store):
    with pytest.raises(ValueError, match="not a TCP port"):
        MetricsServer("127.0.0.1:99999", store.render, lambda: (True, {}))


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback on this host")
def test_ipv6(store):
    srv = MetricsServer("[::1]:0", store.render, lambda: (True, {"ok": 1}))
    srv.start()
    try:
        host, port = srv.address
        assert host == "::1" and port > 0
        status, _, body = fetch(srv, "/metrics")
        assert (status, body) == (200, store.render())
    finally:
        srv.stop()


@pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback on this host")
def test_all_interfaces_serves_ipv4_and_ipv6(store):
    srv = MetricsServer(":0", store.render, lambda: (True, {}))
    srv.start()
    try:
        port = srv.address[1]
        for host in ("127.0.0.1", "[::1]"):
            with OPENER.open(f"http://{host}:{port}/metrics", timeout=5) as r:
                assert r.read() == store.render()
    finally:
        srv.stop()


# -- parse_listen -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9104", ("127.0.0.1", 9104)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    (":9104", ("", 9104)),
    ("localhost:0", ("localhost", 0)),
    ("probe-01.example.org:65535", ("probe-01.example.org", 65535)),
    ("[::1]:9104", ("::1", 9104)),
    ("[::]:9104", ("::", 9104)),
    ("[fe80::1%eth0]:9104", ("fe80::1%eth0", 9104)),
    ("[2001:db8::10]:1", ("2001:db8::10", 1)),
])
def test_parse_listen_valid(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text,message", [
    ("9104", "no port"),
    ("localhost", "no port"),
    ("", "no port"),
    ("127.0.0.1:", "is not a TCP port"),
    ("127.0.0.1:65536", "is not a TCP port"),
    ("127.0.0.1:-1", "is not a TCP port"),
    ("127.0.0.1:http", "is not a TCP port"),
    ("127.0.0.1: 80", "is not a TCP port"),
    ("127.0.0.1:123456", "is not a TCP port"),
    ("::1:9104", "needs brackets"),
    ("[::1:9104", "missing ']'"),
    ("[::1]", "is not a TCP port"),
    ("[::1]x:9104", "missing ']'"),
    ("[127.0.0.1]:9104", "is not an IPv6 address"),
    ("[zz::1]:9104", "is not an IPv6 address"),
    ("256.1.1.1:9104", "is not an IPv4 address"),
    ("1.2.3:9104", "is not an IPv4 address"),
    ("bad host:9104", "is not a host name"),
    ("-x:9104", "is not a host name"),
    ("a_b:9104", "is not a host name"),
])
def test_parse_listen_invalid(text, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_listen(text)
    assert repr(text) in str(info.value)


def test_parse_listen_not_a_string():
    with pytest.raises(ValueError, match="must be a string"):
        parse_listen(9104)


def test_status_page_is_served_at_the_root_when_given():
    import urllib.request

    from probe.http import MetricsServer

    srv = MetricsServer("127.0.0.1:0", lambda: b"x 1\n", lambda: (True, {}), lambda: b"<!doctype html><p>ok</p>")
    srv.start()
    try:
        host, port = srv.address
        with urllib.request.urlopen(f"http://{host}:{port}/") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            assert r.read() == b"<!doctype html><p>ok</p>"
        with urllib.request.urlopen(f"http://{host}:{port}/index.txt") as r:
            assert b"/metrics" in r.read()
    finally:
        srv.stop()


# -- basic authentication (http.basic_auth_users) ---------------------------------------------------

bcrypt = pytest.importorskip("bcrypt")

import base64  # noqa: E402
import time  # noqa: E402

from probe.http import BCRYPT_MAX_PASSWORD, _BasicAuth, basic_auth_problem  # noqa: E402

PASSWORD = "s3cret: with colon"  # only the first ':' splits user from password
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()  # "$2b$10$..."
USERS = {
    "prometheus": HASH,
    "htpasswd": "$2y$" + HASH[4:],  # htpasswd -B writes $2y$: the same algorithm
    "old": "$2a$" + HASH[4:],
    "jürgen": HASH,
}


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def auth_server(store, health_state):
    srv = MetricsServer("127.0.0.1:0", store.render, lambda: (health_state["ok"], health_state["detail"]),
                        lambda: b"<!doctype html><p>status</p>", basic_auth_users=USERS)
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("path", ["/", "/metrics", "/healthz", "/index.txt", "/nope"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_every_path_and_method_needs_credentials(auth_server, path, method):
    status, headers, body = fetch(auth_server, path, method=method, data=b"x=1" if method == "POST" else None)
    assert status == 401  # before 404 and 405: nothing is told without credentials
    assert headers["WWW-Authenticate"] == 'Basic realm="dicom-probe"'
    assert body == (b"" if method == "HEAD" else b"unauthorized: this endpoint needs a user name and password\n")
    assert b"dicom_" not in body


@pytest.mark.parametrize("headers", [
    basic("prometheus", "wrong"),
    basic("prometheus", ""),
    basic("prometheus", PASSWORD + "x"),
    basic("nobody", PASSWORD),
    basic("Prometheus", PASSWORD),  # user names are case-sensitive
    basic("", PASSWORD),
    {"Authorization": "Bearer " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()},
    {"Authorization": "Basic"},
    {"Authorization": "Basic !!!notbase64"},
    {"Authorization": "Basic " + base64.b64encode(b"prometheus").decode()},  # no colon
    {"Authorization": base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()},  # no scheme
])
def test_wrong_or_malformed_credentials_401(auth_server, headers):
    status, resp_headers, body = fetch(auth_server, "/metrics", headers=headers)
    assert status == 401 and resp_headers["WWW-Authenticate"] == 'Basic realm="dicom-probe"'
    assert b"dicom_" not in body


@pytest.mark.parametrize("user", sorted(USERS))
def test_right_credentials_200_on_every_path(auth_server, store, user):
    assert fetch(auth_server, "/metrics", headers=basic(user, PASSWORD))[2] == store.render()
    assert fetch(auth_server, "/healthz", headers=basic(user, PASSWORD))[0] == 200
    assert fetch(auth_server, "/", headers=basic(user, PASSWORD))[2] == b"<!doctype html><p>status</p>"
    assert fetch(auth_server, "/nope", headers=basic(user, PASSWORD))[0] == 404
    assert fetch(auth_server, "/metrics", method="POST", data=b"x", headers=basic(user, PASSWORD))[0] == 405
    gzipped = fetch(auth_server, "/metrics", headers={**basic(user, PASSWORD), "Accept-Encoding": "gzip"})[2]
    assert gzipped[:2] == b"\x1f\x8b"


def test_auth_scheme_is_case_insensitive(auth_server):
    header = "basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    assert fetch(auth_server, "/metrics", headers={"Authorization": header})[0] == 200


def test_successful_checks_are_cached_failures_are_not(store):
    slow = bcrypt.hashpw(b"pw", bcrypt.gensalt(12)).decode()  # about 0.3 s per check
    srv = MetricsServer("127.0.0.1:0", store.render, lambda: (True, {}), basic_auth_users={"p": slow})
    srv.start()
    try:
        t0 = time.monotonic()
        assert fetch(srv, "/metrics", headers=basic("p", "pw"))[0] == 200
        first = time.monotonic() - t0
        t0 = time.monotonic()
        for _ in range(5):
            assert fetch(srv, "/metrics", headers=basic("p", "pw"))[0] == 200
        rest = (time.monotonic() - t0) / 5
        assert srv.auth.bcrypt_checks == 1
        assert rest < first / 4, (first, rest)
        for _ in range(2):
            assert fetch(srv, "/metrics", headers=basic("p", "nope"))[0] == 401
        assert fetch(srv, "/metrics", headers=basic("q", "pw"))[0] == 401  # unknown user: still a bcrypt check
        assert srv.auth.bcrypt_checks == 4
    finally:
        srv.stop()


def test_cache_is_bounded_least_recently_used_first_out():
    auth = _BasicAuth({"a": HASH, "b": HASH, "c": HASH}, cache_size=2)
    for user in ("a", "b", "a", "c"):  # c evicts b, the least recently used
        assert auth.check(basic(user, PASSWORD)["Authorization"])
    assert auth.bcrypt_checks == 3 and len(auth._cache) == 2
    assert auth.check(basic("a", PASSWORD)["Authorization"]) and auth.bcrypt_checks == 3
    assert auth.check(basic("b", PASSWORD)["Authorization"]) and auth.bcrypt_checks == 4


def test_cache_holds_no_password_material():
    auth = _BasicAuth({"a": HASH})
    assert auth.check(basic("a", PASSWORD)["Authorization"])
    (key,) = auth._cache
    assert PASSWORD.encode() not in key and key != __import__("hashlib").sha256(PASSWORD.encode()).digest()


def test_long_passwords_are_cut_at_72_bytes_like_htpasswd():
    long = "x" * 100
    auth = _BasicAuth({"a": bcrypt.hashpw(long[:BCRYPT_MAX_PASSWORD].encode(), bcrypt.gensalt(4)).decode()})
    assert auth.check(basic("a", long)["Authorization"])
    assert not auth.check(basic("a", "x" * 71)["Authorization"])


def test_nul_in_password_is_a_failure_not_an_error():
    auth = _BasicAuth({"a": HASH})
    assert not auth.check(basic("a", "p\0w")["Authorization"])


@pytest.mark.parametrize("users,words", [
    ({"a": "plaintext"}, "not a bcrypt hash"),
    ({"a": "$apr1$abc$defghijklmnopqrstuvwxy"}, "not $apr1$"),
    ({"a": "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="}, "not {SHA}"),
    ({"a": "$2x$" + HASH[4:]}, "not a bcrypt hash"),
    ({"a": HASH[:-1]}, "60 characters"),
    ({"a": "$2b$03$" + HASH[7:]}, "cost 04-31"),
    ({"a": 1234}, "not a bcrypt hash"),
    ({"a:b": HASH}, "without ':'"),
    ({"": HASH}, "non-empty"),
])
def test_bad_users_are_rejected(users, words):
    problem = basic_auth_problem(users)
    assert problem and words in problem
    assert "plaintext" not in problem  # a password put there by mistake is not echoed
    with pytest.raises(ValueError, match="basic_auth_users"):
        MetricsServer("127.0.0.1:0", lambda: b"", lambda: (True, {}), basic_auth_users=users)


def test_no_users_means_no_authentication(server):
    assert server.auth is None
    assert fetch(server, "/metrics")[0] == 200
