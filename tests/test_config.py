"""Configuration: one clear line naming the variable for anything missing or malformed."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from voicebridge.cli import main
from voicebridge.config import Config, ConfigError


def test_defaults_point_at_the_real_services() -> None:
    """With nothing set, the Realtime URL and model are the real GA ones; pass-through audio."""
    cfg = Config.from_env({}, env_file=None)
    assert cfg.realtime_url == "wss://api.openai.com/v1/realtime"
    assert cfg.realtime_model == "gpt-realtime"
    assert cfg.audio_format == "pcmu" and cfg.tax_rate_bp == 800
    assert cfg.prices.audio_out_usd == Decimal("64.00")


@pytest.mark.parametrize(("name", "value", "words"), [
    ("VOICEBRIDGE_PORT", "eighty", "whole number"),
    ("VOICEBRIDGE_PORT", "70000", "whole number"),
    ("OPENAI_REALTIME_URL", "https://api.openai.com/v1/realtime", "wss://"),
    ("PUBLIC_URL", "https://voice.example.com/path", "origin only"),
    ("PUBLIC_URL", "voice.example.com", "https://"),
    ("VOICEBRIDGE_TAX_RATE", "eight", "rate"),
    ("VOICEBRIDGE_TAX_RATE", "1.5", "below 1"),
    ("VOICEBRIDGE_ALLOW_UNSIGNED", "maybe", "true/false"),
    ("TRANSFER_NUMBER", "555-1234", "E.164"),
    ("VOICEBRIDGE_SILENCE_TIMEOUT_S", "-3", "positive"),
    ("VOICEBRIDGE_AUDIO_FORMAT", "mp3", "pcmu"),
    ("VOICEBRIDGE_PRICE_AUDIO_OUT_USD", "cheap", "decimal"),
    ("VOICEBRIDGE_PRICE_TRANSCRIPTION_PER_MIN_USD", "free", "decimal"),
])
def test_malformed_values_name_the_variable(name: str, value: str, words: str) -> None:
    """Each malformed value raises ConfigError starting with the variable's name."""
    with pytest.raises(ConfigError) as info:
        Config.from_env({name: value}, env_file=None)
    message = str(info.value)
    assert message.startswith(f"{name}: ") and words in message


def test_secret_values_are_never_echoed() -> None:
    """An error about a secret never repeats the secret."""
    cfg = Config.from_env({"ORDER_WEBHOOK_URL": "https://hooks.example.com/x", "OPENAI_API_KEY": "sk-live",
                           "PUBLIC_URL": "https://v.example.com", "TWILIO_AUTH_TOKEN": "tok-live"}, env_file=None)
    with pytest.raises(ConfigError) as info:
        cfg.check_serve()
    assert "ORDER_WEBHOOK_SECRET" in str(info.value)
    assert "sk-live" not in str(info.value) and "tok-live" not in str(info.value)
    redacted = Config.from_env({"OPENAI_API_KEY": "sk-very-secret"}, env_file=None).redacted()
    assert redacted["openai_api_key"] == "<set>" and "sk-very-secret" not in repr(redacted)


def test_tax_rate_accepts_fraction_or_percent() -> None:
    """0.08 and 8% are the same 800 basis points; 8.25% is 825."""
    assert Config.from_env({"VOICEBRIDGE_TAX_RATE": "0.08"}, env_file=None).tax_rate_bp == 800
    assert Config.from_env({"VOICEBRIDGE_TAX_RATE": "8%"}, env_file=None).tax_rate_bp == 800
    assert Config.from_env({"VOICEBRIDGE_TAX_RATE": "8.25%"}, env_file=None).tax_rate_bp == 825


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    """Values come from the .env file unless the environment sets them."""
    env_file = tmp_path / "vb.env"
    env_file.write_text("VOICEBRIDGE_PORT=9000\nOPENAI_REALTIME_MODEL=gpt-realtime-2\n")
    cfg = Config.from_env({"VOICEBRIDGE_PORT": "9100"}, env_file=env_file)
    assert cfg.port == 9100 and cfg.realtime_model == "gpt-realtime-2"


def test_stream_url_is_the_wss_form_of_the_public_origin() -> None:
    """Twilio is given (and signs) wss://HOST/media-stream."""
    cfg = Config.from_env({"PUBLIC_URL": "https://voice.example.com"}, env_file=None)
    assert cfg.stream_url == "wss://voice.example.com/media-stream"


def test_serve_without_a_twilio_token_is_refused_unless_unsigned_is_allowed() -> None:
    """No TWILIO_AUTH_TOKEN stops serve, unless the development switch is set."""
    base = {"OPENAI_API_KEY": "k", "PUBLIC_URL": "https://v.example.com"}
    with pytest.raises(ConfigError, match="^TWILIO_AUTH_TOKEN"):
        Config.from_env(base, env_file=None).check_serve()
    Config.from_env({**base, "VOICEBRIDGE_ALLOW_UNSIGNED": "1"}, env_file=None).check_serve()


def test_cli_prints_one_line_and_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`voicebridge serve` with a bad value prints one line naming it and exits with status 2."""
    monkeypatch.setenv("VOICEBRIDGE_PORT", "abc")
    monkeypatch.chdir("/")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "VOICEBRIDGE_PORT" in err[0]


def test_database_is_a_file_or_a_postgresql_url_whose_password_is_never_shown(tmp_path: Path) -> None:
    """VOICEBRIDGE_DB: a path or sqlite:///path is the SQLite file; a postgresql:// URL is kept as
    written (for the driver) but shown without its password; another scheme is refused."""
    assert Config.from_env({"VOICEBRIDGE_DB": str(tmp_path / "a.db")}, env_file=None).db_path == tmp_path / "a.db"
    assert Config.from_env({"VOICEBRIDGE_DB": f"sqlite://{tmp_path}/b.db"}, env_file=None).db_path == tmp_path / "b.db"
    url = "postgresql://vb:hunter2-secret@db.internal:5433/voicebridge?sslmode=require"
    cfg = Config.from_env({"VOICEBRIDGE_DB": url}, env_file=None)
    assert cfg.db_path == url
    assert cfg.redacted()["db_path"] == "postgresql://vb@db.internal:5433/voicebridge"
    assert "hunter2" not in repr(cfg.redacted())
    with pytest.raises(ConfigError, match="VOICEBRIDGE_DB"):
        Config.from_env({"VOICEBRIDGE_DB": "mysql://x@y/z"}, env_file=None)
