"""A text message through the Twilio REST API: the staff page tells a caller their order is ready.

Sent from `TWILIO_FROM_NUMBER` with the account's credentials (`TWILIO_ACCOUNT_SID`,
`TWILIO_AUTH_TOKEN`) at `TWILIO_API_BASE_URL`, like outbound calls; the blocking request runs in a
worker thread with a deadline. The number texted is never logged.
"""

from __future__ import annotations

import functools

import trio

from voicebridge.config import Config
from voicebridge.edges.outbound import E164, OutboundError, rest_errors, twilio_client

DEFAULT_TIMEOUT_S = 15.0


def can_text(config: Config) -> bool:
    return bool(config.twilio_from_number and config.twilio_account_sid and config.twilio_auth_token)


def send_text_blocking(config: Config, to: str, body: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Send `body` to `to`; returns the message SID. OutboundError with one clear line otherwise."""
    if not E164.fullmatch(to):
        raise OutboundError("the customer's number is not an E.164 number, so no text was sent")
    if not config.twilio_from_number:
        raise OutboundError("TWILIO_FROM_NUMBER is not set")
    client = twilio_client(config, timeout_s=timeout_s)
    base = config.twilio_api_base_url
    with rest_errors(config, timeout_s, "the text"):
        message = client.messages.create(to=to, from_=config.twilio_from_number, body=body)
    if not message.sid:
        raise OutboundError(f"unexpected answer from the Twilio API at {base}: no message SID")
    return str(message.sid)


async def send_text(config: Config, to: str, body: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """`send_text_blocking` in a worker thread; the request itself times out after `timeout_s`."""
    job = functools.partial(send_text_blocking, config, to, body, timeout_s=timeout_s)
    return await trio.to_thread.run_sync(job)
