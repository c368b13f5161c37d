"""JSON/text log lines with call ids and redaction (voicebridge.ops.logs)."""

from __future__ import annotations

import base64
import io
import json
import logging
from typing import Iterator

import pytest
import trio

from voicebridge.ops.logs import call_sid_var, setup_logging

SECRET = "sk-test-0123456789abcdefghij"
AUDIO_B64 = base64.b64encode(bytes(range(256)) * 4).decode()


@pytest.fixture
def restore_root() -> Iterator[None]:
    """Put the root logger (and twilio's) back as they were after each test."""
    root = logging.getLogger()
    twilio = logging.getLogger("twilio.http_client")
    saved = (root.handlers[:], root.level, twilio.level)
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in saved[0]:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(saved[1])
        twilio.setLevel(saved[2])


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_root")
def test_secret_and_audio_in_extra_never_reach_the_line() -> None:
    """A record with a token, a key and an audio payload prints neither value."""
    out = io.StringIO()
    setup_logging("INFO", "json", out)
    logging.getLogger("voicebridge.test").info(
        "media forwarded",
        extra={"auth_token": SECRET, "api_key": SECRET, "signature": "c2lnbmF0dXJl", "payload": AUDIO_B64,
               "audio": b"\xff" * 160, "frames": 3},
    )
    text = out.getvalue()
    assert SECRET not in text and AUDIO_B64[:40] not in text and "c2lnbmF0dXJl" not in text
    (line,) = lines(out)
    assert line["msg"] == "media forwarded" and line["level"] == "INFO" and line["logger"] == "voicebridge.test"
    assert line["auth_token"] == line["api_key"] == line["signature"] == "[redacted]"
    assert "payload" not in line and "audio" not in line
    assert line["frames"] == 3
    assert str(line["ts"]).endswith("Z")


@pytest.mark.usefixtures("restore_root")
def test_nested_secrets_and_audio_deltas_are_removed() -> None:
    """Headers and events passed as dicts lose their Authorization and delta fields."""
    out = io.StringIO()
    setup_logging("INFO", "json", out)
    event = {"type": "response.output_audio.delta", "item_id": "item_1", "delta": AUDIO_B64}
    logging.getLogger("t").warning(
        "odd event", extra={"event": event, "headers": {"Authorization": f"Bearer {SECRET}", "Accept": "x"}}
    )
    text = out.getvalue()
    assert SECRET not in text and AUDIO_B64[:40] not in text
    (line,) = lines(out)
    assert line["event"] == {"type": "response.output_audio.delta", "item_id": "item_1"}
    assert line["headers"] == {"Authorization": "[redacted]", "Accept": "x"}


@pytest.mark.usefixtures("restore_root")
def test_long_strings_are_cut_and_bytes_shown_by_length() -> None:
    """Strings over 500 chars (message or field) are truncated; bytes print as a length."""
    out = io.StringIO()
    setup_logging("INFO", "json", out)
    logging.getLogger("t").info("raw frame %s", "x" * 2000, extra={"note": "y" * 900, "blob": b"\x00" * 33})
    (line,) = lines(out)
    assert len(str(line["msg"])) < 540 and str(line["msg"]).endswith("[+1510 chars]")
    assert str(line["note"]).startswith("y" * 500) and str(line["note"]).endswith("[+400 chars]")
    assert line["blob"] == "<33 bytes>"


@pytest.mark.usefixtures("restore_root")
def test_registered_secret_values_are_masked_anywhere() -> None:
    """A known secret inside a message or a traceback is replaced by [redacted]."""
    out = io.StringIO()
    setup_logging("INFO", "json", out, secrets=[SECRET, None, "short"])
    log = logging.getLogger("t")
    log.info("connecting with %s", SECRET)
    try:
        raise RuntimeError(f"auth failed for {SECRET}")
    except RuntimeError:
        log.exception("upstream refused")
    text = out.getvalue()
    assert SECRET not in text
    first, second = lines(out)
    assert first["msg"] == "connecting with [redacted]"
    assert "RuntimeError: auth failed for [redacted]" in str(second["exc"])


@pytest.mark.usefixtures("restore_root")
async def test_call_sid_follows_the_call_into_child_tasks() -> None:
    """call_sid set in a call's task appears on lines from its child tasks, not on others."""
    out = io.StringIO()
    setup_logging("INFO", "json", out)
    log = logging.getLogger("voicebridge.engine.session")

    async def child() -> None:
        log.info("child line")

    async def call(sid: str) -> None:
        call_sid_var.set(sid)
        log.info("call line")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "CA" + "1" * 32)
            nursery.start_soon(call, "CA" + "2" * 32)
    log.info("app line")
    by_sid: dict[object, list[str]] = {}
    for line in lines(out):
        by_sid.setdefault(line.get("call_sid"), []).append(str(line["msg"]))
    assert sorted(by_sid["CA" + "1" * 32]) == ["call line", "child line"]
    assert sorted(by_sid["CA" + "2" * 32]) == ["call line", "child line"]
    assert by_sid[None] == ["app line"]


@pytest.mark.usefixtures("restore_root")
def test_text_format_is_one_readable_line_with_fields() -> None:
    """Text format prints level, logger, call id, message and key=value fields, redacted."""
    out = io.StringIO()
    setup_logging("DEBUG", "text", out)
    token = call_sid_var.set("CA" + "3" * 32)
    try:
        logging.getLogger("voicebridge.edges.web").debug("stream refused", extra={"reason": "reused", "stream_token": SECRET})
    finally:
        call_sid_var.reset(token)
    line = out.getvalue().rstrip("\n")
    assert "\n" not in line
    assert " DEBUG   voicebridge.edges.web [CA33333333333333333333333333333333] stream refused" in line
    assert 'reason="reused"' in line and 'stream_token="[redacted]"' in line and SECRET not in line


@pytest.mark.usefixtures("restore_root")
def test_level_filters_and_setup_is_idempotent() -> None:
    """Below-level records are dropped; a second setup replaces, not duplicates, the handler."""
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", "json", first)
    setup_logging("warning", "json", second)
    log = logging.getLogger("t")
    log.info("quiet")
    log.warning("loud")
    assert first.getvalue() == ""
    assert [line["msg"] for line in lines(second)] == ["loud"]


@pytest.mark.usefixtures("restore_root")
def test_bad_arguments_are_clear_errors() -> None:
    """An unknown level or format raises ValueError naming the choices."""
    with pytest.raises(ValueError, match="log level"):
        setup_logging("LOUD", "json", io.StringIO())
    with pytest.raises(ValueError, match="json or text"):
        setup_logging("INFO", "xml", io.StringIO())


@pytest.mark.usefixtures("restore_root")
def test_bad_format_arguments_keep_the_line() -> None:
    """A record whose %-args do not match still produces a line instead of a crash."""
    handler = setup_logging("INFO", "json", io.StringIO())
    record = logging.makeLogRecord({"name": "t", "levelname": "INFO", "msg": "two %s %s", "args": ("only-one",)})
    line = json.loads(handler.format(record))
    assert str(line["msg"]).startswith("two %s %s [unformattable args:")
