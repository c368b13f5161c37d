"""`voicebridge serve` as an operator runs it: the real command in a subprocess, on loopback.

Flags win over the environment; what stops it (a port in use, a bad value, a missing secret,
a PUBLIC_URL that is not https) is one line on stderr saying what to change, and no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from voicebridge.peers.demo import free_port


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("VOICEBRIDGE_", "OPENAI_", "TWILIO_", "PUBLIC_URL",
                                                                       "ORDER_WEBHOOK"))}
    return {**keep, "OPENAI_API_KEY": "sk-test-not-a-key", "PUBLIC_URL": "https://voice.example.com",
            "TWILIO_AUTH_TOKEN": "t" * 32, "VOICEBRIDGE_DB": str(tmp_path / "vb.sqlite3"),
            **extra}


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicebridge", "serve", *args], env=env_for(tmp_path, **env),
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_port_in_use_is_one_line_naming_the_address_and_the_fix(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve(tmp_path, "--port", str(port))
    assert result.returncode == 1
    line = one_line(result)
    assert f"127.0.0.1:{port}" in line and "--port" in line and "VOICEBRIDGE_PORT" in line


@pytest.mark.parametrize(("args", "env", "names"), [
    (["--port", "eighty"], {}, "--port"),
    (["--port", "70000"], {}, "--port"),
    ([], {"VOICEBRIDGE_PORT": "http"}, "VOICEBRIDGE_PORT"),
    ([], {"OPENAI_API_KEY": ""}, "OPENAI_API_KEY"),
    ([], {"TWILIO_AUTH_TOKEN": ""}, "TWILIO_AUTH_TOKEN"),
    ([], {"PUBLIC_URL": "http://voice.example.com"}, "PUBLIC_URL"),
])
def test_bad_settings_stop_it_with_one_line(tmp_path: Path, args: list[str], env: dict[str, str], names: str) -> None:
    result = serve(tmp_path, *args, **env)
    assert result.returncode == 2
    assert names in one_line(result)


def test_an_http_public_url_is_refused_with_the_reason(tmp_path: Path) -> None:
    line = one_line(serve(tmp_path, PUBLIC_URL="http://voice.example.com"))
    assert "not https" in line and "https://" in line


def test_a_host_that_is_not_here_is_one_line(tmp_path: Path) -> None:
    result = serve(tmp_path, "--host", "192.0.2.77", "--port", str(free_port()))  # TEST-NET-1: not on this machine
    assert result.returncode == 1
    assert "192.0.2.77" in one_line(result)


@pytest.mark.parametrize(("flag", "json_lines"), [([], True), (["--log-format", "text"], False)])
def test_flags_win_over_the_environment_and_it_serves(tmp_path: Path, flag: list[str], json_lines: bool) -> None:
    """--host/--port beat VOICEBRIDGE_HOST/PORT; stderr not a terminal: JSON logs unless --log-format text."""
    port, env_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "voicebridge", "serve", "--host", "127.0.0.1", "--port", str(port),
                             *flag], env=env_for(tmp_path, VOICEBRIDGE_HOST="localhost", VOICEBRIDGE_PORT=str(env_port)),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    assert answer.read() == b"ok\n"
                break
            except OSError:
                assert proc.poll() is None, "serve exited"
                assert time.monotonic() < deadline, "serve did not answer /healthz"
                time.sleep(0.2)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", env_port)) != 0  # nothing on the environment's port
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    serving = [line for line in lines if "serving" in line]
    assert serving, stderr
    if json_lines:
        record = json.loads(serving[0])
        assert record["binds"] == [f"http://127.0.0.1:{port}"]
    else:
        assert not any(line.lstrip().startswith("{") for line in lines), stderr
