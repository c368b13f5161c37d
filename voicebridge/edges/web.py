"""The Quart-Trio app: Twilio's webhooks, the Media Streams WebSocket, health and metrics.

Routes:
- `POST /incoming-call` (Twilio voice webhook): TwiML `<Connect action=/stream-ended><Stream>`
  with the call's parameters and a single-use stream token; pre-warms the Realtime session.
- `WS /media-stream`: one call, run by `voicebridge.engine.session.run_call`. In production the
  public port is `edges.front`, which serves this endpoint's upgrades itself (same checks, no
  framework in the audio path) and pipes every other request here; this route is what serves
  them under `VOICEBRIDGE_FRAMEWORK_SOCKETS=1`, the debugging fallback.
- `POST /stream-ended` (the `<Connect>` action): continues the call by its outcome: hang up,
  dial the shop, or apologise and take a message. No other route changes a live call.
- `POST /dial-ended` (the `<Dial>` action): the shop answered (hang up when they are done), or
  nobody did (no-answer, busy, failed, canceled): the caller is offered voicemail.
- `POST /voicemail` (the `<Record>` action) and `POST /voicemail-status` (its
  recordingStatusCallback): the recording is kept on the call's row and the business notified
  (`voicemail.received`) once, however often Twilio calls.
- `POST /recording-status` (the status callback of the call recording started through the REST
  API when `VOICEBRIDGE_AUDIO_RECORDING` has `twilio`): the recording is kept, once, and its
  download queued (`voicebridge.edges.twilio_recording`).
- `GET /healthz`, `GET /readyz`, `GET /metrics`.
- `GET /calendar/<token>.ics`: a business's bookings as an iCalendar feed a calendar app subscribes
  to, for each `CalendarFeed` given, each behind its own token (404 for any other token, compared in
  constant time).
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime, timezone
from typing import Any, Sequence

from quart import Response, request, websocket
from quart_trio import QuartTrio
from twilio.twiml.voice_response import VoiceResponse

from voicebridge.config import Config
from voicebridge.edges.ical import CalendarFeed, feed_calendar
from voicebridge.edges.security import token_binding
from voicebridge.edges.service import CallService
from voicebridge.edges.transport import QuartWebSocketStream
from voicebridge.edges.twilio_recording import RECORDING_SID
from voicebridge.i18n import twilio_language
from voicebridge.ops.logs import mask_number

log = logging.getLogger("voicebridge.edges.web")

HANGUP_OUTCOMES = frozenset({"completed", "ended_no_order", "caller_hung_up", "silence_timeout", "max_duration",
                             "refused", "shutdown", "ended_by_staff"})
SORRY = "We're sorry, our ordering assistant is having trouble right now."
LEAVE_MESSAGE = "Please leave your name, number and order after the tone, and we'll call you back."
THANKS = "Thank you. We'll call you back soon. Goodbye."
NOBODY_FREE = "We're sorry, nobody at the shop could take your call."
VOICEMAIL_MAX_S = 120
DIAL_UNANSWERED = frozenset({"no-answer", "busy", "failed", "canceled"})
CALL_BACK_SOON = "We're sorry, we can't take your call right now. Please call back in a minute."
CONNECTING = "Let me connect you with the shop."
UNKNOWN_NUMBER = "We're sorry, this number is not in service with us. Please check the number and call again. Goodbye."


def _twiml(vr: VoiceResponse, status: int = 200) -> Response:
    return Response(str(vr), status=status, content_type="text/xml")


def _plain(text: str, status: int) -> Response:
    return Response(text + "\n", status=status, content_type="text/plain")


def _small_int(raw: str) -> int | None:
    """A count of seconds (or channels) from a callback form: 0 to a day, else None (unknown)."""
    return int(raw) if raw.isdigit() and len(raw) < 6 and int(raw) <= 86_400 else None


def _path_qs() -> str:
    qs = request.query_string.decode("latin-1")
    return request.path + ("?" + qs if qs else "")


def our_number(form: dict[str, str]) -> str | None:
    """The business's own number in a call: the number called, or for a call we placed (`voicebridge
    call`, Direction outbound-api) the caller ID it was placed from."""
    return form.get("From") if form.get("Direction", "").startswith("outbound") else form.get("To")


def create_app(daemon: CallService, *, feed: CalendarFeed | None = None,
               feeds: Sequence[CalendarFeed] = ()) -> QuartTrio:
    """The app; `feeds` (or the one `feed`) are the businesses' iCalendar feeds, each behind its own token."""
    cfg = daemon.config
    all_feeds = (*feeds, *((feed,) if feed is not None else ()))
    app = QuartTrio("voicebridge")
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    async def signed_form() -> dict[str, str] | None:
        form = (await request.form).to_dict()
        if daemon.signatures.check_http(_path_qs(), form, request.headers.get("X-Twilio-Signature")):
            return form
        log.warning("rejected a webhook with a missing or wrong Twilio signature",
                    extra={"event": "bad_signature", "route": request.path})
        daemon.metrics.protocol_errors_total.labels("twilio").inc()
        return None

    def say(vr: VoiceResponse, business: Any, text: str) -> None:
        """Twilio speaks `text` in the business's default language (its catalog's words, Twilio's
        voice for that language); an English business's TwiML is as it always was."""
        translators = getattr(business.job, "translators", None) if business is not None else None
        tr = translators.default if translators is not None else None
        if tr is None or tr.english:
            vr.say(text)
        else:
            vr.say(tr(text), language=twilio_language(tr.language))

    def dial_shop(vr: VoiceResponse, business_cfg: Config, number: str) -> None:
        """Ring the shop for a while; whatever happens, Twilio comes back to /dial-ended."""
        vr.dial(number, timeout=business_cfg.dial_timeout_s, action=cfg.public("/dial-ended"))

    def take_message(vr: VoiceResponse, business: Any) -> None:
        say(vr, business, LEAVE_MESSAGE)
        vr.record(max_length=VOICEMAIL_MAX_S, play_beep=True, action=cfg.public("/voicemail"),
                  recording_status_callback=cfg.public("/voicemail-status"))
        vr.hangup()

    async def keep_voicemail(form: dict[str, str]) -> Response | None:
        """Store the recording named in a signed callback; a 400 response if the form is unusable."""
        call_sid, url = form.get("CallSid", ""), form.get("RecordingUrl", "")
        if not call_sid or len(call_sid) > 64 or not url.startswith("https://") or len(url) > 2000:
            return _plain("CallSid or RecordingUrl missing or malformed", 400)
        raw = form.get("RecordingDuration", "")
        duration = int(raw) if raw.isdigit() and len(raw) < 6 else None
        business = daemon.businesses.for_number(our_number(form)) or daemon.businesses.default
        fresh = await daemon.voicemail_received(call_sid, url=url, duration_s=duration,
                                                from_number=form.get("From") or None, business=business.slug)
        log.info("voicemail kept" if fresh else "voicemail callback repeated",
                 extra={"event": "voicemail", "call_sid": call_sid, "duration_s": duration, "new": fresh})
        return None

    @app.post("/incoming-call")
    async def incoming_call() -> Response:
        form = await signed_form()
        if form is None:
            return _plain("forbidden", 403)
        call_sid = form.get("CallSid", "")
        if not call_sid or len(call_sid) > 64 or not call_sid.replace("_", "").isalnum():
            return _plain("CallSid missing or malformed", 400)
        vr = VoiceResponse()
        business = daemon.businesses.for_number(our_number(form))
        if business is None:  # never another business's menu: a polite goodbye
            daemon.metrics.unknown_numbers_total.inc()
            log.warning("refused a call to a number no business answers",
                        extra={"event": "unknown_number", "to": mask_number(our_number(form))})
            vr.say(UNKNOWN_NUMBER)
            vr.hangup()
            return _twiml(vr)
        if daemon.draining:
            say(vr, business, CALL_BACK_SOON)
            if business.config.transfer_number:
                dial_shop(vr, business.config, business.config.transfer_number)
            else:
                vr.hangup()
            return _twiml(vr)
        if daemon.signatures.unsigned:
            log.warning("call accepted without a Twilio signature check (VOICEBRIDGE_ALLOW_UNSIGNED=1)",
                        extra={"event": "unsigned_call"})
        token = daemon.tokens.mint(call_sid, bound=token_binding(business.slug))
        daemon.prewarm(call_sid, business)
        if business.config.audio_recording:  # the caller is told before anything is recorded
            vr.say(business.config.audio_recording_consent)
        stream = vr.connect(action=cfg.public("/stream-ended")).stream(url=cfg.stream_url)
        for name in ("CallSid", "From", "To", "Direction"):
            if form.get(name):
                stream.parameter(name=name, value=form[name][:450])
        stream.parameter(name="business", value=business.slug)  # signed into the token: checked with it
        stream.parameter(name="token", value=token)
        return _twiml(vr)

    @app.websocket("/media-stream")
    async def media_stream() -> Response | None:
        if not daemon.signatures.check_websocket(websocket.path, websocket.headers.get("X-Twilio-Signature")):
            log.warning("refused a media stream with a missing or wrong Twilio signature",
                        extra={"event": "bad_signature", "route": "/media-stream"})
            return _plain("forbidden", 403)
        if daemon.draining:
            return _plain("draining", 503)
        await websocket.accept()
        await daemon.handle_stream(QuartWebSocketStream(websocket))
        return None

    @app.post("/stream-ended")
    async def stream_ended() -> Response:
        form = await signed_form()
        if form is None:
            return _plain("forbidden", 403)
        call_sid = form.get("CallSid", "")
        vr = VoiceResponse()
        if form.get("RecordingUrl"):  # a <Record> given out before /voicemail existed (a call across an upgrade)
            bad = await keep_voicemail(form)
            if bad is not None:
                return bad
            say(vr, daemon.businesses.for_number(our_number(form)), THANKS)
            vr.hangup()
            return _twiml(vr)
        outcome = await daemon.outcome_of(call_sid)
        log.info("stream ended", extra={"event": "stream_ended", "outcome": outcome, "call_sid": call_sid})
        business = daemon.businesses.for_number(our_number(form)) or daemon.businesses.default
        transfer_number = business.config.transfer_number
        if outcome in HANGUP_OUTCOMES:
            vr.hangup()
        elif outcome == "transferred":
            if transfer_number:
                dial_shop(vr, business.config, transfer_number)
            else:
                say(vr, business, NOBODY_FREE)
                take_message(vr, business)
        else:  # the AI side failed (or we never saw the stream): apologise, then a person or voicemail
            say(vr, business, SORRY)
            if transfer_number:
                say(vr, business, CONNECTING)
                dial_shop(vr, business.config, transfer_number)
            else:
                take_message(vr, business)
        return _twiml(vr)

    @app.post("/dial-ended")
    async def dial_ended() -> Response:
        form = await signed_form()
        if form is None:
            return _plain("forbidden", 403)
        status = form.get("DialCallStatus", "")
        log.info("transfer ended", extra={"event": "dial_ended", "call_sid": form.get("CallSid"),
                                          "status": status[:20]})
        vr = VoiceResponse()
        business = daemon.businesses.for_number(our_number(form)) or daemon.businesses.default
        if status in DIAL_UNANSWERED:
            say(vr, business, NOBODY_FREE)
            take_message(vr, business)
        else:  # completed (or answered): the caller talked with the shop
            vr.hangup()
        return _twiml(vr)

    @app.post("/voicemail")
    async def voicemail() -> Response:
        form = await signed_form()
        if form is None:
            return _plain("forbidden", 403)
        if form.get("RecordingUrl"):  # none when the caller hung up before saying anything
            # The caller is still on the line: whatever happens here, they hear a goodbye, not an
            # error; the status callback (retried by Twilio) keeps the voicemail if this could not.
            try:
                if await keep_voicemail(form) is not None:
                    log.warning("voicemail action without a usable recording", extra={"event": "voicemail_bad"})
            except Exception as exc:
                log.error("could not keep a voicemail: %s", exc, extra={"event": "store_error"})
        vr = VoiceResponse()
        say(vr, daemon.businesses.for_number(our_number(form)) or daemon.businesses.default, THANKS)
        vr.hangup()
        return _twiml(vr)

    @app.post("/voicemail-status")
    async def voicemail_status() -> Response:
        form = await signed_form()
        if form is None:
            return _plain("forbidden", 403)
        if form.get("RecordingStatus", "completed") != "completed":
            return Response("", status=204)
        bad = await keep_voicemail(form)
        return bad if bad is not None else Response("", status=204)

    @app.post("/recording-status")
    async def recording_status() -> Response:
        """Twilio's callback for a call recording: keep it, queue its download, answer at once."""
        form = await signed_form()
        if form is None:
            return _plain("forbidden", 403)
        call_sid, recording_sid = form.get("CallSid", ""), form.get("RecordingSid", "")
        if not call_sid or len(call_sid) > 64 or not call_sid.replace("_", "").isalnum() \
                or not RECORDING_SID.fullmatch(recording_sid):
            return _plain("CallSid or RecordingSid missing or malformed", 400)
        status = form.get("RecordingStatus", "")
        if status not in ("completed", "absent", "failed"):
            return _plain("RecordingStatus must be completed, absent or failed", 400)
        duration = _small_int(form.get("RecordingDuration", ""))
        channels = _small_int(form.get("RecordingChannels", ""))
        fresh = await daemon.recording_received(recording_sid, call_sid, status=status, duration_s=duration,
                                                channels=channels)
        log.info("call recording kept" if fresh else "call recording callback repeated",
                 extra={"event": "recording_status", "call_sid": call_sid, "recording_sid": recording_sid,
                        "status": status, "duration_s": duration, "new": fresh})
        return Response("", status=204)

    @app.post("/call-status")
    async def call_status() -> Response:
        """Twilio's status callback for calls placed with `voicebridge call` (unanswered ones end here)."""
        form = await signed_form()
        if form is None:
            return _plain("forbidden", 403)
        status = form.get("CallStatus", "")
        log.info("outbound call status", extra={"event": "call_status", "call_sid": form.get("CallSid"),
                                                "status": status[:20]})
        if status in ("busy", "no-answer", "failed", "canceled"):
            daemon.metrics.calls_total.labels(f"outbound_{status.replace('-', '_')}").inc()
        return Response("", status=204)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok\n", content_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        problem = await daemon.not_ready_reason()
        if problem:
            return Response(f"not ready: {problem}\n", status=503, content_type="text/plain")
        return Response("ready\n", content_type="text/plain")

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = daemon.metrics.render()
        return Response(body, content_type=content_type)

    @app.get("/calendar/<token>.ics")
    async def calendar_feed(token: str) -> Response:
        # every feed's token is compared (in constant time), so the answer's timing names none
        matches = [f for f in all_feeds if hmac.compare_digest(token.encode(), f.token.encode())]
        if not matches:
            return _plain("not found", 404)
        found = matches[0]
        try:
            events = await found.events()
        except Exception as exc:
            log.error("could not read the bookings for the calendar feed: %s", exc, extra={"event": "feed_error"})
            return _plain("the bookings cannot be read right now", 503)
        body, problems = feed_calendar(events, stamp=datetime.now(timezone.utc), name=found.name)
        for problem in problems:
            log.warning("a booking left out of the calendar feed: %s", problem, extra={"event": "feed_skipped"})
        return Response(body, content_type="text/calendar; charset=utf-8",
                        headers={"Cache-Control": "private, max-age=60"})

    # The staff page (voicebridge.edges.staff): the pizza shops' order boards, calls and menus; a
    # business of another job (appointments) gets its calls and a page saying the board is pizza's.
    if getattr(daemon, "staff_tables", False):
        from voicebridge.edges.staff.routes import staff_blueprint

        app.register_blueprint(staff_blueprint(daemon))
    return app
