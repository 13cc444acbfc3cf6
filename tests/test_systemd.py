"""The systemd unit and sysusers file: the hardening we promise is there, and systemd accepts both."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
UNIT = DEPLOY / "dicom-probe.service"
SYSUSERS = DEPLOY / "dicom-probe.sysusers"

EXPECTED_SERVICE = {
    "ExecStart": "/usr/local/bin/dicom-probe run --config /etc/dicom-probe/dicom-probe.yaml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "User": "dicom-probe",
    "Group": "dicom-probe",
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RestartSec": "5",
    "KillSignal": "SIGTERM",
    "TimeoutStopSec": "30",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
    "MemoryMax": "2G",
    "LogsDirectory": "dicom-probe",
}
EXPECTED_SETS = {
    "AmbientCapabilities": {"CAP_NET_RAW"},
    "CapabilityBoundingSet": {"CAP_NET_RAW"},
    "RestrictAddressFamilies": {"AF_PACKET", "AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"},
}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd.syntax(7) reduced to what unit files use: [Section], Key=value, # and ; comments,
    backslash continuations. Every value of a repeated key is kept, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a Key=value line inside a section: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit():
    return parse_unit(UNIT.read_text())


def test_sections(unit):
    assert set(unit) == {"Unit", "Service", "Install"}
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("key", sorted(EXPECTED_SERVICE))
def test_service_setting(unit, key):
    # Exactly once: a second assignment would silently override (or, for lists, extend) the first.
    assert unit["Service"].get(key) == [EXPECTED_SERVICE[key]]


@pytest.mark.parametrize("key", sorted(EXPECTED_SETS))
def test_service_set(unit, key):
    values = unit["Service"].get(key)
    assert values is not None and len(values) == 1
    assert set(values[0].split()) == EXPECTED_SETS[key]


def test_no_root_no_extra_privileges(unit):
    service = unit["Service"]
    for key in ("PermissionsStartOnly", "PrivateUsers", "DynamicUser", "SupplementaryGroups"):
        assert key not in service
    for key, values in service.items():
        assert not any(v.startswith(("+", "!", "-+")) for v in values if key.startswith("Exec")), (
            f"{key} runs with full privileges")


def test_capabilities_are_explained():
    comment = re.search(r"((?:^#.*\n)+)AmbientCapabilities=", UNIT.read_text(), re.M)
    assert comment, "AmbientCapabilities= must follow a comment explaining the capabilities"
    text = comment.group(1)
    assert "CAP_NET_RAW" in text and "promiscuous" in text and "fanout" in text


def test_every_setting_group_is_commented():
    # Each blank-line separated block in [Service] opens with a comment saying why.
    service = UNIT.read_text().split("[Service]\n", 1)[1].split("\n[Install]", 1)[0]
    for block in filter(None, (b.strip() for b in service.split("\n\n"))):
        assert block.startswith("#"), f"uncommented block:\n{block}"


def _systemd_analyze() -> str | None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return None
    try:
        r = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return tool if r.returncode == 0 else None


SYSTEMD_ANALYZE = _systemd_analyze()
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                           reason="systemd-analyze is not installed or cannot run here")


def _testable_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart on a binary that exists here (verify checks that it does)."""
    text, n = re.subn(r"^ExecStart=/usr/local/bin/dicom-probe ", "ExecStart=/bin/true ", text, flags=re.M)
    assert n == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def _verify(path: Path) -> tuple[int, str]:
    try:
        r = subprocess.run([SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("systemd-analyze verify did not finish")
    output = r.stdout + r.stderr
    if "Failed to initialize manager" in output or "Failed to connect" in output:
        pytest.skip(f"systemd-analyze verify cannot run in this container: {output.strip()[:200]}")
    # verify also comments on other units it loads; only lines about ours count.
    ours = "\n".join(line for line in output.splitlines() if UNIT.name in line)
    return r.returncode, ours


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path):
    rc, ours = _verify(_testable_copy(tmp_path, UNIT.read_text()))
    assert rc == 0 and ours == ""


@needs_systemd_analyze
def test_systemd_analyze_verify_would_catch_a_mistake(tmp_path):
    # The check above means something only if verify reports a bad setting in such a copy.
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=stritc")
    rc, ours = _verify(_testable_copy(tmp_path, broken))
    assert "stritc" in ours


@needs_systemd_analyze
def test_security_exposure(tmp_path):
    copy = _testable_copy(tmp_path, UNIT.read_text())
    r = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(copy)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline is not available here: {(r.stdout + r.stderr)[:200]}")
    # 3.9 ("OK") when written; a change that loosens the sandbox noticeably fails here.
    assert float(m.group(1)) <= 4.5


# -- sysusers ----------------------------------------------------------------------------------

def test_sysusers_line():
    lines = [line for line in SYSUSERS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1
    fields = re.findall(r'"[^"]*"|\S+', lines[0])
    assert fields[:3] == ["u", "dicom-probe", "-"]  # a system user, id picked by systemd-sysusers
    assert fields[4:] == ["/", "/usr/sbin/nologin"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_creates_a_system_user(tmp_path):
    (tmp_path / "etc").mkdir()
    r = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()}
    user = passwd["dicom-probe"]
    assert 0 < int(user[2]) < 1000  # system id range
    assert user[3] == groups["dicom-probe"][2]  # primary group of the same name
    assert user[6] == "/usr/sbin/nologin"
