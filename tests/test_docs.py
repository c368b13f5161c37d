"""The docs and the --help text stay true to the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_architecture_state_diagram_is_drawn_from_the_code() -> None:
    """docs/architecture.md shows the state machine exactly as flow.py defines it."""
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "draw_state_machine.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_documented_environment_variable_exists_in_config() -> None:
    """Each VOICEBRIDGE_/OPENAI_/TWILIO_ variable named in the README and env example is read by config.py."""
    config = (ROOT / "voicebridge" / "config.py").read_text()
    named = set()
    for doc in ("README.md", "systemd/voicebridge.env.example"):
        named |= set(re.findall(r"\b((?:VOICEBRIDGE|OPENAI|TWILIO|ORDER_WEBHOOK)_[A-Z_]+)\b", (ROOT / doc).read_text()))
    named -= {"VOICEBRIDGE_ENV_FILE"}  # read in Config.from_env directly
    missing = sorted(v for v in named if f'"{v}"' not in config)
    assert missing == []


def test_readme_quick_start_commands_exist_in_ci() -> None:
    """CI runs exactly the test command the README gives."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = re.search(r"python -m pytest[^\n`]*", readme)
    assert test_cmd is not None and test_cmd.group(0) in ci
