"""Placing an outbound call through the Twilio REST API.

The callee's answer reaches us like an inbound call: Twilio requests
`PUBLIC_URL/incoming-call` (with `Direction=outbound-api`) and the agent takes over.
The blocking REST request runs in a worker thread (`trio.to_thread.run_sync`).
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Iterator

import attrs
import requests
import trio
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from voicebridge.config import Config

E164 = re.compile(r"\+[1-9][0-9]{7,14}")
STATUS_CALLBACK_EVENTS = ("initiated", "ringing", "answered", "completed")
DEFAULT_TIMEOUT_S = 15.0


class OutboundError(Exception):
    """The call could not be placed; `str()` is one line meant for the operator."""


@attrs.frozen
class PlacedCall:
    """A call Twilio accepted: its SID and first status (usually `queued`)."""

    sid: str
    status: str


def check_e164(number: str, what: str = "number") -> str:
    """`number` if it is E.164 (`+` and 8-15 digits); OutboundError otherwise."""
    if not E164.fullmatch(number):
        raise OutboundError(f"{what} {number!r} is not an E.164 number such as +15551234567")
    return number


def twilio_client(config: Config, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Client:
    """A Twilio REST client for `config`'s account, aimed at `config.twilio_api_base_url`."""
    if not config.twilio_account_sid or not config.twilio_auth_token:
        raise OutboundError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are needed for the Twilio REST API")
    client = Client(
        config.twilio_account_sid,
        config.twilio_auth_token,
        http_client=TwilioHttpClient(timeout=timeout_s),
    )
    # The api.twilio.com domain object keeps its base URL in a plain attribute; every
    # request under client.api (calls included) is built from it.
    client.api.base_url = config.twilio_api_base_url
    return client


def place_call_blocking(
    config: Config,
    to: str,
    *,
    from_: str | None = None,
    status_callback_path: str | None = "/call-status",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> PlacedCall:
    """POST a new call to Twilio and wait for its answer (blocking; see `place_call`).

    Twilio fetches `PUBLIC_URL/incoming-call` when the callee answers, and posts call
    progress to `PUBLIC_URL + status_callback_path` (None: no status callbacks).
    Raises OutboundError with one clear line on any failure.
    """
    check_e164(to, "number to call")
    caller = from_ or config.twilio_from_number
    if not caller:
        raise OutboundError("TWILIO_FROM_NUMBER (or --from) is needed: the caller ID of outbound calls")
    caller_id = check_e164(caller, "caller ID")
    if not config.public_url:
        raise OutboundError("PUBLIC_URL is needed: Twilio fetches PUBLIC_URL/incoming-call when the call is answered")
    client = twilio_client(config, timeout_s=timeout_s)
    callback: dict[str, object] = {}
    if status_callback_path is not None:
        callback = {
            "status_callback": config.public(status_callback_path),
            "status_callback_event": list(STATUS_CALLBACK_EVENTS),
            "status_callback_method": "POST",
        }
    base = config.twilio_api_base_url
    try:
        call = client.calls.create(
            to=to, from_=caller_id, url=config.public("/incoming-call"), method="POST", **callback
        )
    except TwilioRestException as exc:
        raise OutboundError(_rest_error(exc.status, exc.code, _strip_prefix(str(exc.msg)))) from None
    except TwilioServiceException as exc:
        raise OutboundError(_rest_error(exc.status, exc.code, exc.detail or exc.title)) from None
    except requests.exceptions.Timeout:
        raise OutboundError(f"the Twilio API at {base} did not answer within {timeout_s:g} s") from None
    except requests.exceptions.ConnectionError as exc:
        raise OutboundError(f"cannot reach the Twilio API at {base}: {_connection_reason(exc)}") from None
    except requests.exceptions.RequestException as exc:
        raise OutboundError(f"request to the Twilio API at {base} failed: {type(exc).__name__}") from None
    except (TwilioException, ValueError) as exc:
        raise OutboundError(f"unexpected answer from the Twilio API at {base}: {_one_line(str(exc))}") from None
    if not call.sid:
        raise OutboundError(f"unexpected answer from the Twilio API at {base}: no call SID")
    return PlacedCall(sid=call.sid, status=str(call.status or "unknown"))


async def place_call(
    config: Config,
    to: str,
    *,
    from_: str | None = None,
    status_callback_path: str | None = "/call-status",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> PlacedCall:
    """Place a call without blocking the event loop; see `place_call_blocking`."""
    job = functools.partial(
        place_call_blocking,
        config,
        to,
        from_=from_,
        status_callback_path=status_callback_path,
        timeout_s=timeout_s,
    )
    return await trio.to_thread.run_sync(job)


@contextlib.contextmanager
def rest_errors(config: Config, timeout_s: float, refused: str) -> Iterator[None]:
    """Turn what a Twilio REST request can raise into one OutboundError line: "Twilio refused
    `refused` (HTTP 400, error 21211)", no answer within `timeout_s`, unreachable, or a strange answer."""
    base = config.twilio_api_base_url
    try:
        yield
    except TwilioRestException as exc:
        raise OutboundError(f"Twilio refused {refused} (HTTP {exc.status}, error {exc.code})") from None
    except requests.exceptions.Timeout:
        raise OutboundError(f"the Twilio API at {base} did not answer within {timeout_s:g} s") from None
    except requests.exceptions.RequestException as exc:
        raise OutboundError(f"cannot reach the Twilio API at {base}: {type(exc).__name__}") from None
    except (TwilioException, ValueError) as exc:
        raise OutboundError(f"unexpected answer from the Twilio API at {base}: {type(exc).__name__}") from None


def _rest_error(status: int, code: int | None, message: str) -> str:
    detail = f"HTTP {status}" + (f", error {code}" if code and code != status else "")
    message = _one_line(message)
    if status == 401:
        return f"Twilio rejected the credentials ({detail}): check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
    if status == 400:
        return f"Twilio refused the call ({detail}): {message}"
    return f"Twilio API error ({detail}): {message}"


def _strip_prefix(message: str) -> str:
    return message.removeprefix("Unable to create record: ")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _connection_reason(exc: BaseException) -> str:
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    return match.group(1).strip().lower() if match else "connection failed"
