"""Twilio's recording of a call (`VOICEBRIDGE_AUDIO_RECORDING=twilio`): started, then downloaded.

Once a call is live (its stream's `start` arrived and its token checked), the daemon asks the REST
API for a dual-channel recording of it (`start_recording`: `POST .../Calls/{CallSid}/Recordings.json`
with `RecordingChannels=dual` and a status callback to `PUBLIC_URL/recording-status`). For an
inbound call Twilio's first channel (left) is the caller and the second (right) is what the call
played to them: the AI.

When the recording is complete Twilio posts `/recording-status`; the web app keeps it
(`Store.recording_received`) with a `recording.download` row in the outbox (target "recording"),
and `RecordingDownloader` fetches `<api>/2010-04-01/Accounts/{AC}/Recordings/{RE}.wav` with the
account's credentials into `<recordings>/<business>/<CallSid>.twilio.wav`. The outbox is what
makes a failed download come back: a row leased to one process at a time, retried with backoff,
kept as dead after `max_attempts` (`VOICEBRIDGE_WEBHOOK_MAX_ATTEMPTS`; the recording then stays at
Twilio, and `voicebridge calls show` names it); the rows are in the database, so a download
pending when the daemon stops resumes at its next start.
The URL is built from the RecordingSid and `TWILIO_API_BASE_URL`, never taken from the callback,
so the credentials only ever go to the configured API.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import trio

from voicebridge.config import Config
from voicebridge.edges.outbound import OutboundError, rest_errors, twilio_client
from voicebridge.edges.recording_files import PartFile, recording_name
from voicebridge.ops.outbox import USER_AGENT, Undeliverable, _Delivery
from voicebridge.ops.store import RECORDING_DOWNLOAD, OutboxRow, Store

log = logging.getLogger("voicebridge.edges.twilio_recording")

RECORDING_SID = re.compile(r"RE[0-9a-zA-Z]{32}")
STATUS_ROUTE = "/recording-status"
START_TIMEOUT_S = 10.0
MAX_RECORDING_BYTES = 512 * 1024 * 1024  # a 4-hour dual-channel call is ~460 MB: anything larger is not one


def start_recording_blocking(config: Config, call_sid: str, *, timeout_s: float = START_TIMEOUT_S) -> str:
    """Start a dual-channel recording of a live call; returns its RecordingSid (OutboundError otherwise)."""
    client = twilio_client(config, timeout_s=timeout_s)
    base = config.twilio_api_base_url
    with rest_errors(config, timeout_s, "to record the call"):
        recording = client.calls(call_sid).recordings.create(
            recording_channels="dual",
            recording_status_callback=config.public(STATUS_ROUTE),
            recording_status_callback_event=["completed"],
            recording_status_callback_method="POST",
        )
    if not recording.sid:
        raise OutboundError(f"unexpected answer from the Twilio API at {base}: no recording SID")
    return str(recording.sid)


async def start_recording(config: Config, call_sid: str, *, timeout_s: float = START_TIMEOUT_S) -> str:
    """`start_recording_blocking` in a worker thread; the request itself times out after `timeout_s`."""
    job = functools.partial(start_recording_blocking, config, call_sid, timeout_s=timeout_s)
    return await trio.to_thread.run_sync(job, abandon_on_cancel=True)  # a stop need not wait for the answer


def media_url(config: Config, recording_sid: str) -> str:
    """Where the recording's WAV is served (the API answers with a redirect to the file)."""
    return (f"{config.twilio_api_base_url}/2010-04-01/Accounts/{config.twilio_account_sid}"
            f"/Recordings/{recording_sid}.wav")


class RecordingDownloader(_Delivery):
    """Downloads the outbox rows with target "recording" into the recordings folder until cancelled."""

    target = "recording"
    label = "recording download"

    def __init__(self, store: Store, config: Config, *, transport: httpx.AsyncBaseTransport | None = None,
                 **options: Any) -> None:
        super().__init__(store, **options)
        self.config = config
        self.folder = Path(config.audio_recording_dir)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Download due rows, sleep until the next is due (or `wake`), forever."""
        auth = (self.config.twilio_account_sid or "", self.config.twilio_auth_token or "")
        async with httpx.AsyncClient(transport=self._transport, timeout=self.timeout_s, auth=auth,
                                     follow_redirects=True, max_redirects=3, trust_env=False,
                                     headers={"User-Agent": USER_AGENT}) as client:
            self._client = client
            task_status.started()
            try:
                await self._deliver_forever()
            finally:
                self._client = None

    def _resend_hint(self, row: OutboxRow) -> str:
        return f"; the recording stays at Twilio as {row.subject.partition(':')[2]}"

    async def _send(self, row: OutboxRow) -> str | None:
        if row.event != RECORDING_DOWNLOAD:
            raise Undeliverable(f"unknown recording event {row.event!r}")
        try:
            payload = json.loads(row.payload)
            sid, call_sid, business = payload["recording_sid"], payload["call_sid"], payload["business"]
            if not isinstance(sid, str) or not RECORDING_SID.fullmatch(sid):
                raise ValueError("recording_sid")
            name = recording_name(business, call_sid, "twilio")
        except (ValueError, KeyError, TypeError) as exc:
            raise Undeliverable(f"the payload is malformed ({exc})") from None
        final = self.folder / name
        assert self._client is not None
        # The request has its timeout per read; this bounds the whole file however slowly it trickles.
        with trio.move_on_after(self.timeout_s * 30) as scope:
            error = await self._download(self._client, media_url(self.config, sid), final)
        if scope.cancelled_caught:
            return f"the download took longer than {self.timeout_s * 30:g} s"
        if error is None:
            await self.store.recording_downloaded(sid, file_name=name, file_bytes=final.stat().st_size)
            log.info("recording downloaded", extra={"event": "recording_downloaded", "call_sid": call_sid,
                                                    "recording_sid": sid})
        return error

    async def _download(self, client: httpx.AsyncClient, url: str, final: Path) -> str | None:
        try:
            part = await trio.to_thread.run_sync(PartFile, final)
        except OSError as exc:
            return f"cannot write in the recordings folder: {exc.strerror}"
        done = False
        try:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    return f"HTTP {response.status_code}"
                async for chunk in response.aiter_bytes(256 * 1024):
                    if part.size == 0 and not (chunk[:4] == b"RIFF" and chunk[8:12] == b"WAVE"):
                        return "the answer is not a WAV file"
                    if part.size + len(chunk) > MAX_RECORDING_BYTES:
                        return f"the recording is larger than {MAX_RECORDING_BYTES} bytes"
                    await trio.to_thread.run_sync(part.write, chunk)
            if part.size == 0:
                return "the answer is empty"
            await trio.to_thread.run_sync(part.commit)
            done = True
            return None
        except httpx.TimeoutException:
            return f"timed out after {self.timeout_s:g} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return f"{type(exc).__name__}"[:300]
        except OSError as exc:
            return f"cannot write the recording: {exc.strerror}"
        finally:
            if not done:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(part.discard)
