"""The protected endpoint (http.tls, http.basic_auth_users) with real TLS clients: curl, Python's ssl
and a real Prometheus scraping `dicom-probe run` over HTTPS with basic auth and a client certificate.

The PKI is made with the openssl command line in a temporary directory: a CA, a server certificate
for 127.0.0.1/localhost, a client certificate, and a second CA with its own client certificate that
the server must not trust. EC P-256 keys: generated in milliseconds.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from probe import config
from probe.cli import main
from probe.http import MetricsServer
from probe.metrics import MetricStore

bcrypt = pytest.importorskip("bcrypt")

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests" / "fixtures" / "captures" / "seed_incident.pcap"
OPENSSL, CURL = shutil.which("openssl"), shutil.which("curl")
PROMETHEUS, PROBE = shutil.which("prometheus"), shutil.which("dicom-probe")
pytestmark = pytest.mark.skipif(OPENSSL is None or CURL is None, reason="needs the openssl and curl commands")

USER, PASSWORD = "prometheus", "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
REALM = 'Basic realm="dicom-probe"'

LEAF_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = {usage}
subjectAltName = {san}
"""


def openssl(*args, cwd):
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=dicom-probe test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_leaf(d: Path, name: str, ca: str, serial: int, usage: str, san: str) -> None:
    (d / f"{name}.ext").write_text(LEAF_EXT.format(usage=usage, san=san))
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-set_serial", str(serial),
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    server_san = "IP:127.0.0.1, DNS:localhost"
    make_leaf(d, "server", "ca", 0x1001, "serverAuth", server_san)
    make_leaf(d, "server2", "ca", 0x1002, "serverAuth", server_san)  # the renewal, for the reload test
    make_leaf(d, "client", "ca", 0x2001, "clientAuth", "DNS:prometheus")
    make_leaf(d, "intruder", "other-ca", 0x3001, "clientAuth", "DNS:intruder")
    make_leaf(d, "other-server", "other-ca", 0x3002, "serverAuth", server_san)
    openssl("ec", "-in", "server.key", "-aes128", "-passout", "pass:x", "-out", "encrypted.key", cwd=d)
    return d


@pytest.fixture(scope="module")
def store():
    s = MetricStore()
    s.inc("dicom_association_requests_total", ("CT_REMOTE1", "PACS_MAIN"), 40)
    return s


def tls_settings(pki: Path, **extra) -> dict:
    return {"cert_file": str(pki / "server.crt"), "key_file": str(pki / "server.key"), **extra}


@contextmanager
def serving(store, **kwargs):
    srv = MetricsServer("127.0.0.1:0", store.render, lambda: (True, {"workers": 1}), **kwargs)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def curl(url: str, *args: str) -> tuple[int, int, str, bytes, str]:
    """(exit code, HTTP status, response headers, body, stderr) of one curl run (no ~/.curlrc, no proxy)."""
    p = subprocess.run([CURL, "-q", "-sS", "--noproxy", "*", "--max-time", "10", "-D", "-", "-w", "\n%{http_code}",
                        *args, url], capture_output=True, timeout=30)
    out, _, code = p.stdout.rpartition(b"\n")
    head, _, body = out.partition(b"\r\n\r\n")
    return p.returncode, int(code or 0), head.decode("latin-1"), body, p.stderr.decode(errors="replace")


def url(srv, path="/metrics", scheme="https") -> str:
    return f"{scheme}://127.0.0.1:{srv.address[1]}{path}"


def peer_serial(srv, cafile: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", srv.address[1]), timeout=5) as s, \
            ctx.wrap_socket(s, server_hostname="localhost") as t:
        return t.getpeercert()["serialNumber"]


# -- HTTPS ------------------------------------------------------------------------------------------


def test_https_with_the_ca(pki, store):
    with serving(store, tls=tls_settings(pki)) as srv:
        assert srv.scheme == "https"
        rc, status, _, body, err = curl(url(srv), "--cacert", str(pki / "ca.crt"))
        assert (rc, status, err) == (0, 200, "") and body == store.render()
        rc, status, _, body, _ = curl(url(srv, "/healthz"), "--cacert", str(pki / "ca.crt"))
        assert (rc, status) == (0, 200) and json.loads(body) == {"workers": 1}
        # the name in the certificate, resolved to the server's address
        port = srv.address[1]
        rc, status, *_ = curl(f"https://localhost:{port}/metrics", "--cacert", str(pki / "ca.crt"),
                              "--resolve", f"localhost:{port}:127.0.0.1")
        assert (rc, status) == (0, 200)
        assert srv.tls_failures == 0 and srv.errors == 0


def test_plain_http_on_the_https_port_is_refused(pki, store):
    with serving(store, tls=tls_settings(pki)) as srv:
        rc, status, _, body, _ = curl(url(srv, scheme="http"))
        assert status == 400 and body == b"Client sent an HTTP request to an HTTPS server.\n"
        assert b"dicom_" not in body
        assert curl(url(srv, scheme="http"), "--fail")[0] == 22
        # and a raw socket that sends nothing but a request line gets the same, then the close
        with socket.create_connection(("127.0.0.1", srv.address[1]), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            got = b"".join(iter(lambda: s.recv(4096), b""))
        assert got.startswith(b"HTTP/1.0 400 Bad Request\r\n") and b"dicom_" not in got
        # the server still serves HTTPS afterwards
        assert curl(url(srv), "--cacert", str(pki / "ca.crt"))[:2] == (0, 200)


def test_a_client_trusting_another_ca_refuses_the_server(pki, store):
    with serving(store, tls=tls_settings(pki)) as srv:
        rc, status, _, body, err = curl(url(srv), "--cacert", str(pki / "other-ca.crt"))
        assert rc == 60 and status == 0 and body == b"", err  # 60: peer certificate cannot be authenticated
        rc, status, _, _, err = curl(url(srv))  # the system's CAs do not know ours either
        assert (rc, status) == (60, 0), err
        assert _wait_for(lambda: srv.tls_failures >= 1)  # counted as the client's failure, not an error
        assert srv.errors == 0


def test_mutual_tls(pki, store):
    with serving(store, tls=tls_settings(pki, client_ca_file=str(pki / "ca.crt"))) as srv:
        ca = ("--cacert", str(pki / "ca.crt"))
        # No client certificate: TLS 1.3 tells the client after its Finished (curl 56: "alert
        # certificate required"), TLS 1.2 during the handshake (curl 35).
        rc, status, _, body, err = curl(url(srv), *ca)
        assert (rc, status, body) == (56, 0, b"") and "certificate required" in err, err
        rc, status, _, body, err = curl(url(srv), *ca, "--tls-max", "1.2")
        assert (rc, status, body) == (35, 0, b""), err
        # A certificate signed by a CA the server does not trust.
        rc, status, _, body, err = curl(url(srv), *ca, "--cert", str(pki / "intruder.crt"),
                                        "--key", str(pki / "intruder.key"))
        assert rc in (35, 56) and status == 0 and body == b"" and "unknown ca" in err, err
        rc, status, _, body, err = curl(url(srv), *ca, "--cert", str(pki / "client.crt"),
                                        "--key", str(pki / "client.key"))
        assert (rc, status, err) == (0, 200, "") and body == store.render()
        assert _wait_for(lambda: srv.tls_failures >= 3) and srv.errors == 0
        assert "CERTIFICATE" in srv.last_tls_failure.upper()


@pytest.mark.parametrize("min_version,tls12_client_ok", [("TLS12", True), ("TLS13", False)])
def test_min_version(pki, store, min_version, tls12_client_ok):
    with serving(store, tls=tls_settings(pki, min_version=min_version)) as srv:
        ca = ("--cacert", str(pki / "ca.crt"))
        rc, status, *_ = curl(url(srv), *ca, "--tls-max", "1.2")
        assert (rc == 0 and status == 200) == tls12_client_ok
        if not tls12_client_ok:
            assert rc == 35 and status == 0  # 35: TLS handshake failed
        assert curl(url(srv), *ca, "--tlsv1.3")[:2] == (0, 200)
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.set_alpn_protocols(["h2", "http/1.1"])  # as Prometheus (Go) offers them
        with socket.create_connection(("127.0.0.1", srv.address[1]), timeout=5) as s, \
                ctx.wrap_socket(s, server_hostname="localhost") as t:
            assert t.version() == "TLSv1.3"
            assert t.selected_alpn_protocol() == "http/1.1"  # never h2, which the server does not speak


def test_basic_auth_over_https_with_curl(pki, store):
    with serving(store, tls=tls_settings(pki), basic_auth_users={USER: HASH}) as srv:
        ca = ("--cacert", str(pki / "ca.crt"))
        for path in ("/metrics", "/healthz", "/", "/nope"):
            rc, status, headers, body, _ = curl(url(srv, path), *ca)
            assert (rc, status) == (0, 401) and f"WWW-Authenticate: {REALM}" in headers and b"dicom_" not in body
        rc, status, headers, body, _ = curl(url(srv), *ca, "-u", f"{USER}:wrong")
        assert (status, b"dicom_" in body) == (401, False) and REALM in headers
        rc, status, _, body, _ = curl(url(srv), *ca, "-u", f"nobody:{PASSWORD}")
        assert status == 401
        rc, status, _, body, _ = curl(url(srv), *ca, "-u", f"{USER}:{PASSWORD}")
        assert (rc, status) == (0, 200) and body == store.render()
        rc, status, _, body, _ = curl(url(srv, "/healthz"), *ca, "-u", f"{USER}:{PASSWORD}")
        assert (rc, status) == (0, 200) and json.loads(body) == {"workers": 1}
        # credentials in the URL, as some tools give them
        port = srv.address[1]
        rc, status, *_ = curl(f"https://{USER}:{urllib.parse.quote(PASSWORD)}@127.0.0.1:{port}/metrics", *ca)
        assert (rc, status) == (0, 200)


def test_cached_verification_makes_the_second_scrape_fast(pki, store):
    with serving(store, tls=tls_settings(pki), basic_auth_users={USER: HASH}) as srv:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
        header = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
        times = []
        for _ in range(4):
            t0 = time.monotonic()
            with opener.open(urllib.request.Request(url(srv), headers=header), timeout=5) as r:
                assert r.status == 200 and r.read() == store.render()
            times.append(time.monotonic() - t0)
        assert srv.auth.bcrypt_checks == 1
        assert max(times[1:]) < times[0], times


# -- reloading the files ----------------------------------------------------------------------------


def test_renewed_certificate_is_used_without_restart(pki, store, tmp_path):
    for name in ("server.crt", "server.key"):
        shutil.copy(pki / name, tmp_path / name)
    logged = []
    with serving(store, tls=tls_settings(tmp_path), log=logged.append) as srv:
        assert peer_serial(srv, pki / "ca.crt") == "1001"

        # A renewal written file by file: the new certificate first, not matching the old key yet.
        shutil.copy(pki / "server2.crt", tmp_path / "server.crt.new")
        os.replace(tmp_path / "server.crt.new", tmp_path / "server.crt")
        assert peer_serial(srv, pki / "ca.crt") == "1001"  # still the previous certificate
        assert len(logged) == 1 and "does not match" in logged[0] and "previous certificate" in logged[0]
        assert peer_serial(srv, pki / "ca.crt") == "1001" and len(logged) == 1  # reported once per change

        shutil.copy(pki / "server2.key", tmp_path / "server.key.new")
        os.replace(tmp_path / "server.key.new", tmp_path / "server.key")
        assert peer_serial(srv, pki / "ca.crt") == "1002"
        assert len(logged) == 2 and "reloaded" in logged[1]
        assert curl(url(srv), "--cacert", str(pki / "ca.crt"))[:2] == (0, 200)

        # A file that disappears keeps the loaded certificate too.
        os.unlink(tmp_path / "server.key")
        assert peer_serial(srv, pki / "ca.crt") == "1002"
        assert "cannot read" in logged[-1]


def test_start_fails_naming_the_key(pki, store, tmp_path):
    srv = MetricsServer("127.0.0.1:0", store.render, lambda: (True, {}),
                        tls=tls_settings(pki, key_file=str(tmp_path / "gone.key")))
    with pytest.raises(OSError, match=r"http\.tls\.key_file: cannot read .*gone\.key: No such file"):
        srv.start()
    with pytest.raises(RuntimeError, match="not started"):
        srv.address


# -- configuration errors ---------------------------------------------------------------------------


def tls_yaml(**tls) -> str:
    return yaml.safe_dump({"http": {"tls": tls}})


def config_errors(text: str) -> list[tuple[str, str]]:
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, "x.yaml")
    return e.value.errors


def test_valid_tls_config(pki):
    cfg = config.parse(tls_yaml(**tls_settings(pki, client_ca_file=str(pki / "ca.crt"), min_version="TLS13")))
    assert cfg.raw["http"]["tls"]["min_version"] == "TLS13"
    assert config.parse(tls_yaml(**tls_settings(pki))).raw["http"]["tls"]["cert_file"] == str(pki / "server.crt")
    combined = pki / "combined.pem"  # key and certificate in one file, as some tools write them
    combined.write_bytes((pki / "server.key").read_bytes() + (pki / "server.crt").read_bytes())
    config.parse(tls_yaml(cert_file=str(combined), key_file=str(combined)))


@pytest.mark.parametrize("tls,message", [
    ({"cert_file": "/nonexistent/server.crt", "key_file": "{pki}/server.key"},
     "cert_file: cannot read /nonexistent/server.crt: No such file or directory"),
    ({"cert_file": "{pki}/server.crt", "key_file": "/nonexistent/x.key"},
     "key_file: cannot read /nonexistent/x.key: No such file or directory"),
    ({"cert_file": "{pki}/server.crt", "key_file": "{pki}"}, "key_file: cannot read {pki}: Is a directory"),
    ({"cert_file": "{pki}/server.crt", "key_file": "{pki}/client.key"},
     "key_file: {pki}/client.key does not match the certificate in {pki}/server.crt"),
    ({"cert_file": "{pki}/server.crt", "key_file": "{pki}/encrypted.key"},
     "key_file: {pki}/encrypted.key is encrypted"),
    ({"cert_file": "{pki}/server.crt", "key_file": "{pki}/server.crt"},
     "key_file: {pki}/server.crt holds no usable PEM private key"),
    ({"cert_file": "{pki}/server.key", "key_file": "{pki}/server.key"},
     "cert_file: {pki}/server.key holds no PEM certificate"),
    ({"cert_file": "{pki}/server.crt"}, "key_file: must be set together with cert_file"),
    ({"key_file": "{pki}/server.key"}, "cert_file: must be set together with key_file"),
    ({"client_ca_file": "{pki}/ca.crt"}, "client_ca_file: needs cert_file and key_file"),
    ({"cert_file": "{pki}/server.crt", "key_file": "{pki}/server.key", "client_ca_file": "{pki}/ca.key"},
     "client_ca_file: {pki}/ca.key holds no PEM CA certificate"),
    ({"cert_file": "{pki}/server.crt", "key_file": "{pki}/server.key", "client_ca_file": "/nonexistent/ca.pem"},
     "client_ca_file: cannot read /nonexistent/ca.pem: No such file or directory"),
    ({"cert_file": "server.crt", "key_file": "server.key"}, "cert_file: 'server.crt' must be an absolute path"),
    ({"cert_file": "{pki}/server.crt", "key_file": "{pki}/server.key", "min_version": "TLS11"},
     "min_version: must be TLS12 or TLS13, got 'TLS11'"),
    ({"cert_file": "{pki}/server.crt", "key_file": "{pki}/server.key", "min_version": 1.3},
     "min_version: must be a string"),
    ({"cert_file": "{pki}/server.crt", "key_file": "{pki}/server.key", "ca_file": "{pki}/ca.crt"},
     "ca_file: unknown key (did you mean 'client_ca_file', the CA client certificates must chain to?)"),
    ({"cert_file": "{pki}/server.crt", "key_file": "{pki}/server.key",
      "client_auth_type": "RequireAndVerifyClientCert"},
     "client_auth_type: unknown key: setting client_ca_file requires and verifies client certificates"),
    ({"certfile": "{pki}/server.crt"}, "certfile: unknown key (did you mean 'cert_file'?)"),
])
def test_tls_config_errors_name_the_key(pki, tls, message):
    tls = {k: v.replace("{pki}", str(pki)) if isinstance(v, str) else v for k, v in tls.items()}
    ((path, msg),) = config_errors(tls_yaml(**tls))
    assert path == "http.tls"
    assert message.replace("{pki}", str(pki)) in msg


def test_every_tls_problem_is_listed(pki):
    ((path, msg),) = config_errors(tls_yaml(cert_file="/nonexistent/a.crt", key_file="/nonexistent/a.key"))
    assert "cert_file: cannot read" in msg and "; key_file: cannot read" in msg


@pytest.mark.parametrize("users,message", [
    ({"prometheus": "plain password"}, "user 'prometheus': not a bcrypt hash"),
    ({"prometheus": "$apr1$xyz$0123456789abcdefghijkl"}, "not $apr1$"),
    ({"prometheus": "$6$salt$" + "x" * 86}, "not $6$"),
    ({"prometheus": "$2x$" + HASH[4:]}, "not a bcrypt hash"),
    ({"a:b": HASH}, "without ':'"),
])
def test_basic_auth_config_errors(users, message):
    ((path, msg),) = config_errors(yaml.safe_dump({"http": {"basic_auth_users": users}}))
    assert path == "http.basic_auth_users" and message in msg and "plain password" not in msg


def test_check_config_command(pki, tmp_path, capsys):
    good = tmp_path / "good.yaml"
    text = yaml.safe_dump({"http": {"tls": tls_settings(pki, client_ca_file=str(pki / "ca.crt")),
                                    "basic_auth_users": {USER: "$2y$" + HASH[4:]}}})
    good.write_text(text)
    assert main(["check-config", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"http": {"tls": tls_settings(pki, key_file=str(pki / "client.key")),
                                            "basic_auth_users": {USER: "secret"}}}))
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"bad.yaml: http.tls: key_file: {pki}/client.key does not match the certificate in {pki}/server.crt" in err
    assert f"bad.yaml: http.basic_auth_users: user '{USER}': not a bcrypt hash" in err


# -- a real Prometheus --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float = 5.0, step: float = 0.05):
    end = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > end:
            return result
        time.sleep(step)


@pytest.mark.skipif(PROMETHEUS is None or PROBE is None, reason="needs prometheus and dicom-probe on PATH")
def test_prometheus_scrapes_over_tls_with_basic_auth_and_a_client_certificate(pki, tmp_path):
    t0 = time.monotonic()
    probe_port, prom_port = free_port(), free_port()
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump({
        "workers": 1,
        "event_log": {"destination": "none"},
        "http": {"listen": f"127.0.0.1:{probe_port}",
                 "tls": tls_settings(pki, client_ca_file=str(pki / "ca.crt"), min_version="TLS13"),
                 "basic_auth_users": {USER: "$2y$" + HASH[4:]}},  # as htpasswd -B writes it
    }))
    target = {"static_configs": [{"targets": [f"127.0.0.1:{probe_port}"]}], "scheme": "https"}
    tls_config = {"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "client.crt"),
                  "key_file": str(pki / "client.key")}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [
            {"job_name": "dicom-probe", **target, "tls_config": tls_config,
             "basic_auth": {"username": USER, "password": PASSWORD}},
            {"job_name": "wrong-password", **target, "tls_config": tls_config,
             "basic_auth": {"username": USER, "password": "guess"}},
            {"job_name": "no-client-cert", **target, "tls_config": {"ca_file": str(pki / "ca.crt")},
             "basic_auth": {"username": USER, "password": PASSWORD}},
        ],
    }))
    probe_log, prom_log = open(tmp_path / "probe.log", "wb"), open(tmp_path / "prometheus.log", "wb")
    procs = []
    try:
        procs.append(subprocess.Popen([PROBE, "run", "--read", str(SEED), "--config", str(tmp_path / "probe.yaml")],
                                      stdout=probe_log, stderr=subprocess.STDOUT, start_new_session=True))
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=prom_log, stderr=subprocess.STDOUT, start_new_session=True))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def api(path: str, **params):
            try:
                with opener.open(f"http://127.0.0.1:{prom_port}/api/v1/{path}?{urllib.parse.urlencode(params)}",
                                 timeout=2) as r:
                    return json.loads(r.read())["data"]
            except (urllib.error.URLError, OSError, ValueError):
                return None

        def targets():
            for proc in procs:
                assert proc.poll() is None, ((tmp_path / "probe.log").read_text()
                                             + (tmp_path / "prometheus.log").read_text())
            data = api("targets", state="active")
            got = {t["labels"]["job"]: t for t in (data or {}).get("activeTargets", [])}
            return got if len(got) == 3 and all(t["health"] != "unknown" for t in got.values()) else None

        def seed_scraped():
            result = api("query", query='sum(dicom_association_requests_total{job="dicom-probe"})')
            return result and result["result"] and float(result["result"][0]["value"][1]) == 55

        got = _wait_for(targets, 25, 0.2)
        assert got, "Prometheus did not scrape the probe:\n" + (tmp_path / "prometheus.log").read_text()
        assert _wait_for(seed_scraped, 10, 0.2), (got, (tmp_path / "probe.log").read_text())
        got = _wait_for(targets, 5, 0.2)
        assert got["dicom-probe"]["health"] == "up", got["dicom-probe"]["lastError"]
        assert got["dicom-probe"]["scrapeUrl"] == f"https://127.0.0.1:{probe_port}/metrics"
        up = {s["metric"]["job"]: s["value"][1] for s in api("query", query="up")["result"]}
        assert up == {"dicom-probe": "1", "wrong-password": "0", "no-client-cert": "0"}
        assert "401" in got["wrong-password"]["lastError"]
        assert "certificate" in got["no-client-cert"]["lastError"].lower()
        print(f"\nrefused scrapes: {got['wrong-password']['lastError']!r}, {got['no-client-cert']['lastError']!r}")
        print(f"Prometheus scraped the probe over TLS 1.3 with basic auth and mTLS in {time.monotonic() - t0:.1f} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        probe_log.close()
        prom_log.close()
    assert "listening on 127.0.0.1" in (tmp_path / "probe.log").read_text()
