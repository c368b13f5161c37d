"""Recordings, the Twilio side: consent, the REST request that starts a dual-channel recording, the
signed `/recording-status` callback, the download into the recordings folder (retried when it
fails), retention, and `voicebridge calls show` naming the files.

Against a local stand-in of Twilio's REST API on 127.0.0.1 (h11) that records each request and
serves a WAV; the whole call runs on the real daemon on loopback (as in test_daemon.py).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
import time
import urllib.parse
import wave
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import h11
import httpx
import pytest
import trio
from trio.testing import MockClock

from test_daemon import PUBLIC, TOKEN, form, running
from voicebridge.cli import main
from voicebridge.config import Config, ConfigError
from voicebridge.edges.recording_files import retention_task
from voicebridge.edges.twilio_recording import RecordingDownloader
from voicebridge.ops.store import Store
from voicebridge.peers.scenario import load_scenario
from voicebridge.peers.twiml import Connect, Say
from voicebridge.peers.twilio_caller import new_sid, place_call

ACCOUNT = "AC" + "0123456789abcdef" * 2
RECORDING_SID = "RE" + "89abcdef01234567" * 2
CONSENT = "This call is recorded for quality."


def a_wav(seconds: float = 1.5) -> bytes:
    """A dual-channel 8 kHz 16-bit WAV, as Twilio serves a dual-channel recording."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(range(256)) * int(seconds * 8000 * 4 / 256))
    return out.getvalue()


WAV = a_wav()


@attrs.define
class Seen:
    method: str
    path: str
    authorization: str | None
    form: dict[str, list[str]]


class TwilioApi:
    """The REST API's recording routes: `POST .../Calls/{CA}/Recordings.json` and
    `GET .../Recordings/{RE}.wav` (which fails `fail_downloads` times with a 500 first)."""

    def __init__(self, *, fail_downloads: int = 0) -> None:
        self.seen: list[Seen] = []
        self.fail_downloads = fail_downloads
        self.auth = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()

    def creates(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    def downloads(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET"]

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
            seen = Seen(request.method.decode(), request.target.decode(), headers.get("authorization"),
                        urllib.parse.parse_qs(body.decode(), keep_blank_values=True))
            self.seen.append(seen)
            status, content_type, data = self.answer(seen)
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
                ("Content-Type", content_type), ("Content-Length", str(len(data))), ("Connection", "close")])))
            await stream.send_all(conn.send(h11.Data(data=data)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        await stream.aclose()

    def answer(self, seen: Seen) -> tuple[int, str, bytes]:
        if seen.authorization != self.auth:
            return 401, "application/json", b'{"code": 20003, "message": "Authenticate", "status": 401}'
        created = re.fullmatch(rf"/2010-04-01/Accounts/{ACCOUNT}/Calls/(CA\w+)/Recordings\.json", seen.path)
        if seen.method == "POST" and created:
            return 201, "application/json", json.dumps({
                "sid": RECORDING_SID, "account_sid": ACCOUNT, "call_sid": created.group(1), "status": "in-progress",
                "channels": 2, "source": "StartCallRecordingAPI", "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{ACCOUNT}/Recordings/{RECORDING_SID}.json"}).encode()
        if seen.method == "GET" and seen.path == f"/2010-04-01/Accounts/{ACCOUNT}/Recordings/{RECORDING_SID}.wav":
            if self.fail_downloads > 0:
                self.fail_downloads -= 1
                return 500, "application/json", b'{"status": 500}'
            return 200, "audio/x-wav", WAV
        return 404, "application/json", b'{"code": 20404, "status": 404}'


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep requests to 127.0.0.1 local whatever proxy the environment names."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "TWILIO_EDGE", "TWILIO_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


async def serve_api(nursery: trio.Nursery, api: TwilioApi) -> str:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, api.handle, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


def recording_settings(tmp_path: Path, api_url: str) -> dict[str, Any]:
    return {"audio_recording": frozenset({"twilio"}), "audio_recording_dir": tmp_path / "recordings",
            "audio_recording_consent": CONSENT, "twilio_account_sid": ACCOUNT, "twilio_api_base_url": api_url}


def status_form(call_sid: str, **changes: str) -> dict[str, str]:
    return {"AccountSid": ACCOUNT, "CallSid": call_sid, "RecordingSid": RECORDING_SID,
            "RecordingUrl": f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Recordings/{RECORDING_SID}",
            "RecordingStatus": "completed", "RecordingDuration": "75", "RecordingChannels": "2",
            "RecordingSource": "StartCallRecordingAPI", "RecordingStartTime": "Fri, 04 Dec 2026 07:00:00 +0000",
            **changes}


async def until(check: Any, *, seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        while not check():
            await trio.sleep(0.02)


async def test_a_recorded_call_is_announced_recorded_in_two_channels_and_downloaded_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A whole call on the daemon with VOICEBRIDGE_AUDIO_RECORDING=twilio: the caller hears the consent
    line before the stream connects; the REST API is asked for a dual-channel recording with our
    callback; the signed callback (sent twice, as Twilio retries) leaves one row and one file with
    the bytes the API served; a forged one stores nothing; `calls show` names the file and its length."""
    api = TwilioApi()
    with trio.fail_after(60):
        async with trio.open_nursery() as outer:
            api_url = await serve_api(outer, api)
            async with running(tmp_path, **recording_settings(tmp_path, api_url)) as r, \
                    httpx.AsyncClient(base_url=r.base) as http:
                placed_at = datetime.now(timezone.utc)
                result = await place_call(r.base, load_scenario("dtmf_transfer"), public_url=PUBLIC,
                                          auth_token=TOKEN, spoken_verbs=True)
                assert result.incoming_twiml is not None
                verbs = result.incoming_twiml.verbs
                (call,) = await r.store.list_calls()
                said_s = len(CONSENT.split()) / 2.5  # Twilio's voices speak about 150 words a minute
                assert (call.started_at - placed_at).total_seconds() >= said_s  # the stream waits for the Say
                assert isinstance(verbs[0], Say) and verbs[0].text == CONSENT and isinstance(verbs[1], Connect)
                assert result.executed[:2] == list(verbs[:2])  # Twilio says it, then connects the stream
                await until(lambda: api.creates())
                (create,) = api.creates()
                assert create.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{result.call_sid}/Recordings.json"
                assert create.form["RecordingChannels"] == ["dual"]
                assert create.form["RecordingStatusCallback"] == [PUBLIC + "/recording-status"]
                assert create.form["RecordingStatusCallbackEvent"] == ["completed"]

                params = status_form(result.call_sid)
                forged = await http.post("/recording-status", data={**params, "RecordingDuration": "1"},
                                         headers={"X-Twilio-Signature": r.sign("/recording-status", params)})
                assert forged.status_code == 403
                await trio.sleep(0.3)
                assert await r.store.recordings_of(result.call_sid) == [] and not api.downloads()

                for _ in range(2):
                    ok = await http.post("/recording-status", data=params,
                                         headers={"X-Twilio-Signature": r.sign("/recording-status", params)})
                    assert ok.status_code == 204
                business = r.daemon.businesses.default.slug
                final = tmp_path / "recordings" / business / f"{result.call_sid}.twilio.wav"
                await until(final.is_file)
                await trio.sleep(0.5)  # room for a wrong second download to show up
                (row,) = await r.store.recordings_of(result.call_sid)
                assert (row.status, row.duration_s, row.channels) == ("completed", 75, 2)
            outer.cancel_scope.cancel()
    assert final.read_bytes() == WAV
    assert len(api.downloads()) == 1 and api.downloads()[0].authorization == api.auth
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # no temporary file left behind

    monkeypatch.setenv("VOICEBRIDGE_DB", str(tmp_path / "vb.sqlite3"))
    monkeypatch.setenv("VOICEBRIDGE_AUDIO_RECORDING", "twilio")
    monkeypatch.setenv("VOICEBRIDGE_AUDIO_RECORDING_DIR", str(tmp_path / "recordings"))
    assert await trio.to_thread.run_sync(main, ["calls", "show", result.call_sid]) == 0  # the CLI runs its own trio
    out = capsys.readouterr().out
    assert re.search(rf"twilio\s+1:15\s+{business}/{result.call_sid}\.twilio\.wav\s+on disk", out), out
    final.unlink()  # as retention does
    assert await trio.to_thread.run_sync(main, ["calls", "show", result.call_sid, "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)["recordings"]
    assert (shown["kind"], shown["present"], shown["duration_s"]) == ("twilio", False, 75)
    assert shown["state"].startswith("deleted")



async def test_a_failed_download_is_retried_until_the_file_is_there(tmp_path: Path) -> None:
    """The API answers 500 once: the download is retried (the outbox row), the file then lands with
    the served bytes, the row is marked downloaded, and nothing half-written stays in the folder."""
    api = TwilioApi(fail_downloads=1)
    call_sid = new_sid("CA")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            api_url = await serve_api(nursery, api)
            config = Config(twilio_auth_token=TOKEN, **recording_settings(tmp_path, api_url))
            store = await Store.open(tmp_path / "vb.sqlite3")
            try:
                assert await store.recording_received(RECORDING_SID, call_sid, status="completed", duration_s=75,
                                                      channels=2)
                downloader = RecordingDownloader(store, config, backoff_base_s=0.05, rand=lambda: 1.0)
                await nursery.start(downloader.run)
                await until(lambda: len(api.downloads()) >= 2)
                final = tmp_path / "recordings" / "default" / f"{call_sid}.twilio.wav"
                await until(final.is_file)
                for _ in range(100):
                    (row,) = await store.recordings_of(call_sid)
                    if row.downloaded_at is not None:
                        break
                    await trio.sleep(0.02)
                box = await store.outbox_for(f"recording:{RECORDING_SID}", "recording")
            finally:
                nursery.cancel_scope.cancel()
                await store.aclose()
    assert final.read_bytes() == WAV
    assert (row.file_name, row.file_bytes) == (f"default/{call_sid}.twilio.wav", len(WAV))
    assert box is not None and (box.state, box.attempts) == ("delivered", 2) and box.last_error == "HTTP 500"
    assert len(api.downloads()) == 2
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]


async def test_without_recording_there_is_no_consent_line_and_no_recording(tmp_path: Path) -> None:
    """Recordings are off by default: the TwiML connects at once, and no recording is asked for."""
    api = TwilioApi()
    with trio.fail_after(40):
        async with trio.open_nursery() as outer:
            api_url = await serve_api(outer, api)
            async with running(tmp_path, twilio_account_sid=ACCOUNT, twilio_api_base_url=api_url) as r:
                result = await place_call(r.base, load_scenario("dtmf_transfer"), public_url=PUBLIC,
                                          auth_token=TOKEN)
                assert result.incoming_twiml is not None and result.report is not None
                assert isinstance(result.incoming_twiml.verbs[0], Connect)
                assert not result.incoming_twiml.of_type(Say)
                await trio.sleep(0.3)
            outer.cancel_scope.cancel()
    assert api.seen == []


async def test_recording_status_refuses_malformed_callbacks(tmp_path: Path) -> None:
    """A signed callback without a usable RecordingSid or status gets 400 and stores nothing."""
    with trio.fail_after(30):
        async with running(tmp_path, **recording_settings(tmp_path, "http://127.0.0.1:9")) as r, \
                httpx.AsyncClient(base_url=r.base) as http:
            call_sid = form(new_sid("CA"))["CallSid"]
            for bad in (status_form(call_sid, RecordingSid="../../etc"), status_form(call_sid, RecordingStatus="x"),
                        status_form("CA/../x")):
                resp = await http.post("/recording-status", data=bad,
                                       headers={"X-Twilio-Signature": r.sign("/recording-status", bad)})
                assert resp.status_code == 400
            assert await r.store.recordings_of(call_sid) == []


async def test_retention_deletes_old_recordings_at_start_and_then_every_hour(
        tmp_path: Path, autojump_clock: MockClock) -> None:
    """A pass at start deletes recordings older than the kept days and keeps the newer ones (and
    anything that is not a recording); an hour later the next pass catches one that has aged since."""
    folder = tmp_path / "recordings"
    (folder / "default").mkdir(parents=True)
    now = time.time()

    def file(name: str, age_days: float) -> Path:
        path = folder / "default" / name
        path.write_bytes(WAV)
        os.utime(path, (now - age_days * 86_400, now - age_days * 86_400))
        return path

    old_twilio, old_local = file("CA1.twilio.wav", 31), file("CA1.local.wav", 40)
    new = file("CA2.twilio.wav", 29)
    stray = file("notes.txt", 400)
    leftover = file(".CA3.twilio.wav.ab12cd34.part", 31)
    partial = file("CA4.local.partial.wav", 31)
    async def inline(fn: Any) -> Any:  # the pass in the test's own thread: virtual time cannot run past it
        return fn()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(retention_task, folder, 30, run_sync=inline,
                                              wall_clock=lambda: now + trio.current_time() - start))
        await trio.sleep(1)
        assert not old_twilio.exists() and not old_local.exists() and not leftover.exists() and not partial.exists()
        assert new.exists() and stray.exists()
        os.utime(new, (now - 30 * 86_400 + 1800, now - 30 * 86_400 + 1800))  # 30 days old in half an hour
        await trio.sleep(3598)
        assert new.exists()  # old enough by now, but the next pass is an hour after the first
        await trio.sleep(2)
        assert not new.exists() and stray.exists()
        nursery.cancel_scope.cancel()


async def test_keep_days_zero_keeps_everything(tmp_path: Path, autojump_clock: MockClock) -> None:
    folder = tmp_path / "recordings"
    (folder / "default").mkdir(parents=True)
    path = folder / "default" / "CA1.twilio.wav"
    path.write_bytes(WAV)
    os.utime(path, (0, 0))
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(retention_task, folder, 0))
        await trio.sleep(3 * 3600)
        nursery.cancel_scope.cancel()
    assert path.exists()


def test_recording_settings_are_read_and_checked(tmp_path: Path) -> None:
    """The four settings: off by default, the folder beside the SQLite file, bad values named."""
    env = {"VOICEBRIDGE_DB": str(tmp_path / "vb.sqlite3")}
    empty = tmp_path / "empty.env"
    empty.write_text("")
    c = Config.from_env(env, env_file=empty)
    assert c.audio_recording == frozenset()
    assert c.audio_recording_dir == tmp_path / "recordings"
    assert c.audio_recording_keep_days == 30 and c.audio_recording_consent
    c = Config.from_env({**env, "VOICEBRIDGE_AUDIO_RECORDING": "twilio, local",
                         "VOICEBRIDGE_AUDIO_RECORDING_DIR": str(tmp_path / "audio"),
                         "VOICEBRIDGE_AUDIO_RECORDING_KEEP_DAYS": "0",
                         "VOICEBRIDGE_AUDIO_RECORDING_CONSENT": CONSENT}, env_file=empty)
    assert (c.audio_recording, c.audio_recording_dir, c.audio_recording_keep_days, c.audio_recording_consent) == (
        frozenset({"twilio", "local"}), tmp_path / "audio", 0, CONSENT)
    pg = Config.from_env({"VOICEBRIDGE_DB": "postgresql://vb@db/vb", "STATE_DIRECTORY": str(tmp_path / "state")},
                         env_file=empty)
    assert pg.audio_recording_dir == tmp_path / "state" / "recordings"
    with pytest.raises(ConfigError, match="VOICEBRIDGE_AUDIO_RECORDING: unknown kind disk; expected a comma list of twilio, local"):
        Config.from_env({**env, "VOICEBRIDGE_AUDIO_RECORDING": "twilio,disk"}, env_file=empty)
    with pytest.raises(ConfigError, match="VOICEBRIDGE_AUDIO_RECORDING_KEEP_DAYS"):
        Config.from_env({**env, "VOICEBRIDGE_AUDIO_RECORDING_KEEP_DAYS": "-1"}, env_file=empty)
    serve = {**env, "OPENAI_API_KEY": "k", "PUBLIC_URL": "https://voice.example.com", "TWILIO_AUTH_TOKEN": TOKEN,
             "VOICEBRIDGE_AUDIO_RECORDING": "twilio"}
    with pytest.raises(ConfigError, match="TWILIO_ACCOUNT_SID"):
        Config.from_env(serve, env_file=empty).check_serve()
    Config.from_env({**serve, "TWILIO_ACCOUNT_SID": ACCOUNT}, env_file=empty).check_serve()


async def test_a_recording_is_kept_once_on_either_engine(db_target: Path | str) -> None:
    """SQLite and PostgreSQL: a repeated completed callback adds no row and no second download; the
    recording takes its call's business; a failed recording is kept with no download queued."""
    store = await Store.open(db_target)
    try:
        call_sid, other = new_sid("CA"), new_sid("CA")
        await store.call_started(call_sid, stream_sid=None, from_number=None, to_number=None, direction="inbound",
                                 started_at=datetime.now(timezone.utc), business="north")
        for fresh in (True, False):
            assert await store.recording_received(RECORDING_SID, call_sid, status="completed", duration_s=75,
                                                  channels=2) is fresh
        failed = "RE" + "f" * 32
        assert await store.recording_received(failed, other, status="failed", duration_s=None, channels=None)
        (row,) = await store.recordings_of(call_sid)
        assert (row.business, row.status, row.duration_s, row.file_name) == ("north", "completed", 75, None)
        box = await store.outbox_for(f"recording:{RECORDING_SID}", "recording")
        assert box is not None and box.business == "north" and box.state == "pending"
        assert await store.outbox_for(f"recording:{failed}", "recording") is None
        await store.recording_downloaded(RECORDING_SID, file_name=f"north/{call_sid}.twilio.wav", file_bytes=10)
        (row,) = await store.recordings_of(call_sid)
        assert (row.file_name, row.file_bytes) == (f"north/{call_sid}.twilio.wav", 10) and row.downloaded_at
    finally:
        await store.aclose()


def test_calls_show_names_the_local_file_and_one_retention_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`calls show` names the bridge's own WAV with its length read from the file, and says so when an
    old call's file is gone (deleted by retention)."""
    db, folder = tmp_path / "vb.sqlite3", tmp_path / "recordings"
    recent, old = "CA" + "1" * 32, "CA" + "2" * 32

    async def seed() -> None:
        store = await Store.open(db)
        await store.call_started(recent, stream_sid=None, from_number=None, to_number=None, direction="inbound",
                                 started_at=datetime.now(timezone.utc))
        await store.call_started(old, stream_sid=None, from_number=None, to_number=None, direction="inbound",
                                 started_at=datetime(2020, 1, 1, tzinfo=timezone.utc))
        await store.aclose()

    trio.run(seed)
    (folder / "default").mkdir(parents=True)
    (folder / "default" / f"{recent}.local.wav").write_bytes(a_wav(seconds=64))
    monkeypatch.setenv("VOICEBRIDGE_DB", str(db))
    monkeypatch.setenv("VOICEBRIDGE_AUDIO_RECORDING", "local")
    monkeypatch.setenv("VOICEBRIDGE_AUDIO_RECORDING_KEEP_DAYS", "30")
    assert main(["calls", "show", recent]) == 0
    out = capsys.readouterr().out
    assert f"Recordings (in {folder}):" in out
    assert re.search(rf"local\s+1:04\s+default/{recent}\.local\.wav\s+on disk", out), out
    assert main(["calls", "show", old]) == 0
    assert re.search(rf"local\s+-\s+default/{old}\.local\.wav\s+deleted \(older than 30 days\)",
                     capsys.readouterr().out)
