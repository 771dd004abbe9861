"""The systemd unit (issue #7 item 1): `systemd-analyze verify` is clean, the hardening
holds (offline `systemd-analyze security`), and the lifecycle settings fit the gateway's."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import Settings

UNIT = Path(__file__).parent.parent / "systemd" / "gateway.service"
INSTALLED = "/opt/gateway/.venv/bin/gateway"


@pytest.fixture
def unit(tmp_path) -> Path:
    """The unit as shipped, with ExecStart pointing at this checkout's gateway (verify
    checks that the program exists; the README installs it at /opt/gateway)."""
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is needed (.ci/run installs the systemd package)")
    here = Path(sys.executable).parent / "gateway"
    assert here.exists()
    text = UNIT.read_text()
    assert INSTALLED in text
    copy = tmp_path / "gateway.service"
    copy.write_text(text.replace(INSTALLED, str(here)))
    return copy


def test_unit_verifies_clean(unit):
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_unit_exposure_stays_low(unit):
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for gateway.service: ([\d.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout  # README records the figure


def test_unit_lifecycle_settings():
    directives = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            directives.setdefault(key, []).append(value)
    assert directives["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert directives["Restart"] == ["on-failure"]
    assert directives["User"] == ["gateway"]
    assert directives["StateDirectory"] == ["gateway"]
    assert directives["ConfigurationDirectory"] == ["gateway"]
    stop_seconds = int(directives["TimeoutStopSec"][0].rstrip("s"))
    assert stop_seconds > Settings().grace_period + 5
    for hardening in (
        "NoNewPrivileges",
        "ProtectSystem",
        "PrivateTmp",
        "RestrictAddressFamilies",
        "SystemCallFilter",
        "CapabilityBoundingSet",
    ):
        assert hardening in directives
    assert directives["ProtectSystem"] == ["strict"]
    assert directives["CapabilityBoundingSet"] == [""]
