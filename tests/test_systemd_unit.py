"""The systemd unit verifies cleanly and the env example matches the configuration."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voicebridge.config import Config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "voicebridge.service"
ENV_EXAMPLE = ROOT / "systemd" / "voicebridge.env.example"


def directives(text: str) -> dict[str, list[str]]:
    """Key -> values of every `Key=value` line (comments and sections skipped)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit with no warning about its own lines."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    exe = shutil.which("true") or sys.executable
    original = UNIT.read_text().splitlines()
    rewritten = [re.sub(r"^ExecStart=\S+", f"ExecStart={exe}", line) for line in original]
    assert sum(a != b for a, b in zip(original, rewritten)) == 1  # only ExecStart changed
    copy = tmp_path / "voicebridge.service"
    copy.write_text("\n".join(rewritten) + "\n")
    result = subprocess.run(
        [tool, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    output = result.stdout + result.stderr
    own_lines = [line for line in output.splitlines() if "voicebridge.service" in line]
    assert own_lines == [], output
    assert result.returncode == 0, output


def test_unit_is_a_hardened_notify_service_that_outlives_the_drain() -> None:
    """Type=notify with a watchdog, a sandbox, and a stop timeout above the drain deadline."""
    d = directives(UNIT.read_text())
    single = {k: v[-1] for k, v in d.items()}
    assert single["Type"] == "notify" and single["NotifyAccess"] == "main"
    assert single["WatchdogSec"] == "30"
    assert single["ExecStart"] == "/opt/voicebridge/.venv/bin/voicebridge serve"
    assert single["EnvironmentFile"] == "/etc/voicebridge/voicebridge.env"
    assert "VOICEBRIDGE_DB=/var/lib/voicebridge/voicebridge.sqlite3" in d["Environment"]
    assert float(single["TimeoutStopSec"]) > Config().drain_timeout_s
    assert single["KillMode"] == "mixed" and single["Restart"] == "on-failure"
    for key in ("DynamicUser", "ProtectHome", "NoNewPrivileges", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups"):
        assert single[key] == "yes", key
    assert single["ProtectSystem"] == "strict"
    assert single["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"
    assert "@system-service" in d["SystemCallFilter"]


def config_variables() -> set[str]:
    """Every environment variable `Config.from_env` reads."""
    return set(re.findall(r'g\.get\("([A-Z0-9_]+)"', inspect.getsource(Config._from_mapping)))


def example_lines() -> dict[str, str]:
    """NAME -> value of every `NAME=value` or `#NAME=value` line of the env example."""
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.fullmatch(r"#?([A-Z][A-Z0-9_]+)=(.*)", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_env_example_lists_every_setting_once() -> None:
    """Each variable Config reads appears in the example, with a comment, and nothing else."""
    names = example_lines()
    assert set(names) == config_variables()
    text = ENV_EXAMPLE.read_text().splitlines()
    is_setting = re.compile(r"#?[A-Z][A-Z0-9_]+=")
    for name in names:
        hits = [i for i, line in enumerate(text) if re.match(rf"#?{name}=", line)]
        assert len(hits) == 1, name
        idx = hits[0] - 1
        while idx > 0 and is_setting.match(text[idx]):  # a group of settings shares a comment
            idx -= 1
        assert text[idx].startswith("# "), name


def test_env_example_defaults_are_the_real_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commented values parse, and equal Config's defaults except the documented examples."""
    monkeypatch.chdir(tmp_path)  # no stray ./.env
    values = {k: v for k, v in example_lines().items() if v}
    examples = {"VOICEBRIDGE_DB", "VOICEBRIDGE_RECORD_DIR", "VOICEBRIDGE_MENU", "ORDER_WEBHOOK_URL", "PUBLIC_URL",
                "VOICEBRIDGE_CALDAV_URL", "VOICEBRIDGE_BUSINESSES"}
    documented = Config.from_env({k: v for k, v in values.items() if k not in examples})
    assert documented == Config()
    with_examples = Config.from_env(values)
    assert with_examples.db_path == Path("/var/lib/voicebridge/voicebridge.sqlite3")
    assert with_examples.public_url == "https://voice.example.com"
