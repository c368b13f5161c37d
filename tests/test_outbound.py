"""Placing outbound calls against a local fake of Twilio's REST API (voicebridge.edges.outbound)."""

from __future__ import annotations

import argparse
import base64
import functools
import json
import socket
import urllib.parse
from typing import Any

import attrs
import h11
import pytest
import trio

from voicebridge.commands import call as call_command
from voicebridge.config import Config
from voicebridge.edges.outbound import OutboundError, place_call
from voicebridge.edges import sms, twilio_recording

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "fake-auth-token-5f2c9a"
FROM = "+15550001111"
TO = "+15551234567"
INVALID_TO = "+15005550001"  # the fake answers 400 for it, as Twilio does for its magic invalid number
NEW_SID = "CA" + "fedcba9876543210" * 2


@attrs.define
class Received:
    method: str
    target: str
    headers: dict[str, str]
    form: dict[str, list[str]]


class FakeTwilio:
    """Twilio's `POST /2010-04-01/Accounts/{AC}/Calls.json`, over HTTP/1.1 on 127.0.0.1."""

    def __init__(self, *, hang: bool = False) -> None:
        self.received: list[Received] = []
        self.hang = hang

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        with trio.move_on_after(10):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            assert request is not None
            headers = {k.decode().lower(): v.decode() for k, v in request.headers}
            self.received.append(
                Received(request.method.decode(), request.target.decode(), headers,
                         urllib.parse.parse_qs(body.decode(), keep_blank_values=True))
            )
            if self.hang:
                await trio.sleep_forever()
            status, payload = self.answer(self.received[-1])
            data = json.dumps(payload).encode()
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
                ("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Connection", "close")])))
            await stream.send_all(conn.send(h11.Data(data=data)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        await stream.aclose()

    def answer(self, req: Received) -> tuple[int, dict[str, Any]]:
        expected = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
        if req.headers.get("authorization") != expected:
            return 401, {"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003",
                         "status": 401}
        if req.method != "POST" or req.target != f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json":
            return 404, {"code": 20404, "message": "The requested resource was not found", "status": 404}
        to = req.form.get("To", [""])[0]
        if to == INVALID_TO:
            return 400, {"code": 21211, "message": f"Invalid 'To' Phone Number: {to}",
                         "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}
        return 201, {"sid": NEW_SID, "account_sid": ACCOUNT, "status": "queued", "to": to,
                     "from": req.form["From"][0], "direction": "outbound-api", "api_version": "2010-04-01",
                     "uri": f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{NEW_SID}.json"}


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep requests to 127.0.0.1 local whatever proxy the environment names."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "TWILIO_EDGE", "TWILIO_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def config_for(port: int, **changes: Any) -> Config:
    values: dict[str, Any] = dict(
        twilio_account_sid=ACCOUNT, twilio_auth_token=TOKEN, twilio_from_number=FROM,
        public_url="https://voice.example.com", twilio_api_base_url=f"http://127.0.0.1:{port}",
    )
    values.update(changes)
    return Config(**values)


async def start_fake(nursery: trio.Nursery, fake: FakeTwilio) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, fake.handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="voicebridge")
    call_command.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


async def run_cli(config: Config, *argv: str) -> int:
    """Run `voicebridge call ...` as the CLI would (its own trio.run, here in a worker thread)."""
    args = parse_cli("call", *argv)
    return int(await trio.to_thread.run_sync(args.func, args, config))


async def test_call_is_posted_with_auth_and_form_fields() -> None:
    """The REST request carries Basic auth, To/From, our webhook URL and status callbacks."""
    fake = FakeTwilio()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_fake(nursery, fake)
            placed = await place_call(config_for(port), TO)
            nursery.cancel_scope.cancel()
    assert (placed.sid, placed.status) == (NEW_SID, "queued")
    (req,) = fake.received
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert req.form == {
        "To": [TO], "From": [FROM], "Url": ["https://voice.example.com/incoming-call"], "Method": ["POST"],
        "StatusCallback": ["https://voice.example.com/call-status"], "StatusCallbackMethod": ["POST"],
        "StatusCallbackEvent": ["initiated", "ringing", "answered", "completed"],
    }


async def test_cli_prints_the_new_call_sid(capsys: pytest.CaptureFixture[str]) -> None:
    """`voicebridge call NUMBER` exits 0 and prints exactly the Call SID on stdout."""
    fake = FakeTwilio()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_fake(nursery, fake)
            code = await run_cli(config_for(port), TO)
            nursery.cancel_scope.cancel()
    out, err = capsys.readouterr()
    assert code == 0
    assert out == NEW_SID + "\n"
    assert "queued" in err


async def test_cli_from_option_sets_the_caller_id(capsys: pytest.CaptureFixture[str]) -> None:
    """--from replaces TWILIO_FROM_NUMBER, and works when that setting is absent."""
    fake = FakeTwilio()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_fake(nursery, fake)
            code = await run_cli(config_for(port, twilio_from_number=None), TO, "--from", "+15559998888")
            nursery.cancel_scope.cancel()
    assert code == 0
    assert fake.received[0].form["From"] == ["+15559998888"]


async def test_wrong_credentials_give_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A 401 from Twilio: exit 1, one stderr line naming the settings, no secret shown."""
    fake = FakeTwilio()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_fake(nursery, fake)
            code = await run_cli(config_for(port, twilio_auth_token="wrong-token-123456"), TO)
            nursery.cancel_scope.cancel()
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert "HTTP 401, error 20003" in err and "TWILIO_AUTH_TOKEN" in err
    assert "wrong-token-123456" not in err


async def test_invalid_number_refused_by_twilio_gives_its_message(capsys: pytest.CaptureFixture[str]) -> None:
    """A 400 (error 21211) prints Twilio's reason on one line and exits 1."""
    fake = FakeTwilio()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_fake(nursery, fake)
            code = await run_cli(config_for(port), INVALID_TO)
            nursery.cancel_scope.cancel()
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err == (
        "voicebridge call: Twilio refused the call (HTTP 400, error 21211): "
        f"Invalid 'To' Phone Number: {INVALID_TO}\n"
    )


async def test_connection_refused_gives_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening at the API base URL: exit 1 with 'connection refused'."""
    port = closed_port()
    with trio.fail_after(10):
        code = await run_cli(config_for(port), TO)
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err == f"voicebridge call: cannot reach the Twilio API at http://127.0.0.1:{port}: connection refused\n"


async def test_silent_api_times_out() -> None:
    """An API that accepts the request but never answers fails after the timeout."""
    fake = FakeTwilio(hang=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_fake(nursery, fake)
            with pytest.raises(OutboundError, match=r"did not answer within 0\.3 s"):
                await place_call(config_for(port), TO, timeout_s=0.3)
            nursery.cancel_scope.cancel()
    assert len(fake.received) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("5551234567",), "number to call '5551234567' is not an E.164 number"),
        (("+1555",), "number to call '+1555' is not an E.164 number"),
        ((TO, "--from", "+1-555-000"), "--from '+1-555-000' is not an E.164 number"),
    ],
)
async def test_bad_numbers_are_refused_before_any_request(
    argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A number that is not E.164 exits 2 with a clear line, and nothing reaches Twilio."""
    fake = FakeTwilio()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_fake(nursery, fake)
            code = await run_cli(config_for(port), *argv)
            nursery.cancel_scope.cancel()
    _, err = capsys.readouterr()
    assert code == 2
    assert message in err
    assert fake.received == []


async def test_missing_settings_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    """Without an account SID the command exits 2 naming TWILIO_ACCOUNT_SID."""
    code = await run_cli(config_for(closed_port(), twilio_account_sid=None), TO)
    _, err = capsys.readouterr()
    assert code == 2
    assert "TWILIO_ACCOUNT_SID" in err


async def test_place_call_without_caller_id_or_public_url_sends_nothing() -> None:
    """Missing caller ID or PUBLIC_URL raise OutboundError naming the setting, before any request."""
    fake = FakeTwilio()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_fake(nursery, fake)
            with pytest.raises(OutboundError, match="TWILIO_FROM_NUMBER"):
                await place_call(config_for(port, twilio_from_number=None), TO)
            with pytest.raises(OutboundError, match="PUBLIC_URL"):
                await place_call(config_for(port, public_url=None), TO)
            nursery.cancel_scope.cancel()
    assert fake.received == []


async def test_the_text_and_the_recording_say_in_one_line_why_twilio_could_not() -> None:
    """The ready text and the call recording share one mapping of REST failures: a refusal with
    Twilio's status and code (here the stand-in knows neither resource: 404), a silent API, a
    closed port; each is one OutboundError line naming what was refused."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await start_fake(nursery, FakeTwilio())
            with pytest.raises(OutboundError) as text:
                await sms.send_text(config_for(port), TO, "Your order is ready")
            assert str(text.value) == "Twilio refused the text (HTTP 404, error 20404)"
            with pytest.raises(OutboundError) as recording:
                await twilio_recording.start_recording(config_for(port), "CA" + "0" * 32)
            assert str(recording.value) == "Twilio refused to record the call (HTTP 404, error 20404)"
            silent = await start_fake(nursery, FakeTwilio(hang=True))
            with pytest.raises(OutboundError, match=r"did not answer within 0\.3 s"):
                await sms.send_text(config_for(silent), TO, "Your order is ready", timeout_s=0.3)
            nursery.cancel_scope.cancel()
    port = closed_port()
    with pytest.raises(OutboundError) as unreachable:
        await twilio_recording.start_recording(config_for(port), "CA" + "0" * 32)
    assert str(unreachable.value) == f"cannot reach the Twilio API at http://127.0.0.1:{port}: ConnectionError"
