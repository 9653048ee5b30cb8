"""The shipped systemd units pass `systemd-analyze verify` and keep the hardening issue 5 asks for."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parent.parent / "systemd"
INSTALLED_COMMAND = "/opt/note-gateway/bin/note-gateway"


def _directives(path: Path) -> dict[str, list[str]]:
    """Every Key=value of the [Service] section, repeated keys kept in order."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#") and "=" in line and section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("name", ["note-gateway.service", "note-gateway@.service"])
def test_unit_passes_systemd_analyze_verify(name, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; .ci/run installs it)")
    # verify also checks that ExecStart's program exists. The docs install the gateway in
    # /opt/note-gateway, which this machine does not have; the one substitution is the running
    # Python with `-m gateway`, the same program by another path.
    text = (UNITS / name).read_text()
    assert f"ExecStart={INSTALLED_COMMAND} serve" in text
    (tmp_path / name).write_text(text.replace(INSTALLED_COMMAND, f"{sys.executable} -m gateway"))
    result = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True, text=True,
                            timeout=60)
    # An unknown or misspelled directive is only a warning to systemd ("Unknown key ..., ignoring")
    # with exit status 0, so the output must be empty, not just the status.
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_verify_catches_a_misspelled_directive(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; .ci/run installs it)")
    text = (UNITS / "note-gateway.service").read_text().replace(INSTALLED_COMMAND, f"{sys.executable} -m gateway")
    (tmp_path / "note-gateway.service").write_text(text.replace("ProtectHome=yes", "ProtectHomes=yes"))
    result = subprocess.run([analyze, "verify", str(tmp_path / "note-gateway.service")], capture_output=True,
                            text=True, timeout=60)
    assert "Unknown key 'ProtectHomes'" in result.stdout + result.stderr


@pytest.mark.parametrize("name", ["note-gateway.service", "note-gateway@.service"])
def test_unit_hardening(name):
    service = _directives(UNITS / name)
    assert service["DynamicUser"] == ["yes"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["ProtectHome"] == ["yes"]
    assert service["PrivateTmp"] == ["yes"]
    # Binding port 25 is the only privilege the gateway needs.
    assert service["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert service["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert service["StateDirectory"][0].startswith("note-gateway")
    assert service["ConfigurationDirectory"] == ["note-gateway"]
    assert any(value.startswith("odoo-main:") for value in service["LoadCredential"])
    assert service["Restart"] == ["on-failure"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


@pytest.mark.parametrize("name", ["note-gateway.service", "note-gateway@.service"])
def test_unit_waits_for_a_stop_as_long_as_the_gateway_may_take(name):
    # systemd kills a service that has not stopped after TimeoutStopSec (90 s by default): with the
    # default settings a stop may take the grace, then a post sent to Odoo up to the message
    # deadline, then the supervisor's 10 s (gateway/workers.py _stop_workers).
    from gateway.config import ListenerConfig

    listener = ListenerConfig.model_fields
    longest = listener["shutdown_grace"].default + listener["message_deadline"].default + 10
    (timeout,) = _directives(UNITS / name)["TimeoutStopSec"]
    assert timeout.endswith("s") and float(timeout[:-1]) > longest


def test_template_instances_have_their_own_config_and_state():
    service = _directives(UNITS / "note-gateway@.service")
    assert service["ExecStart"] == [f"{INSTALLED_COMMAND} serve --config /etc/note-gateway/%i/gateway.toml"]
    assert service["StateDirectory"] == ["note-gateway/%i"]
    assert service["LoadCredential"] == ["odoo-main:/etc/note-gateway/%i/credentials/odoo-main",
                                         "address-secrets:/etc/note-gateway/%i/credentials/address-secrets"]



@pytest.mark.parametrize("name", ["note-gateway.service", "note-gateway@.service"])
def test_unit_gives_the_sessions_more_descriptors_than_the_default(name):
    # systemd's soft limit is 1024: a socket per session, and after a reload the journal and Odoo
    # connections of the messages still being filed with the replaced configuration.
    from gateway.config import ListenerConfig

    (limit,) = _directives(UNITS / name)["LimitNOFILE"]
    assert int(limit) >= 16 * ListenerConfig.model_fields["max_sessions"].default and int(limit) > 1024
