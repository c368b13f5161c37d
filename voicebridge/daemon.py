"""The daemon: shared services around the calls, and `serve_daemon()` which runs it all.

One Trio nursery holds Hypercorn (serving the Quart-Trio app), the webhook outbox worker (and
the calendar one when VOICEBRIDGE_CALDAV_URL is set), the
systemd watchdog and the pre-warmed Realtime sessions waiting for their stream. Each call runs
in its own nursery inside its WebSocket handler (`voicebridge.engine.session.run_call`).
SIGTERM (or `shutdown`) stops new calls, lets live calls finish up to the drain deadline, then
ends the rest with the outcome `shutdown` recorded.

Why one module of this length: it is the composition of a running service (businesses, pre-warm,
calls, stream tokens, the workers that outlive calls and the serve loop); each part is small and
wires pieces that live elsewhere.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from functools import partial
import urllib.parse
from collections import OrderedDict
from datetime import datetime, timezone, tzinfo
from decimal import Decimal
from typing import Any, Callable

import trio

from voicebridge.business import DEFAULT_SLUG, Business, Businesses, packaged_business
from voicebridge.config import Config
from voicebridge.ops.cost import CallCost
from voicebridge.engine.flow import FlowSettings
from voicebridge.business import feed_source, job_time_zone, tool_preparer
from voicebridge.engine.job import BusySource, Committed, Job, PrepareTool
from voicebridge.ops.logs import call_sid_var
from voicebridge.ops.metrics import Metrics
from voicebridge.ops.notify import Notifier, watchdog_task
from voicebridge.ops.outbox import CalendarWorker, OutboxWorker
from voicebridge.edges.outbound import OutboundError
from voicebridge.edges.recording_files import retention_task
from voicebridge.edges.twilio_recording import RecordingDownloader, start_recording
from voicebridge.edges.protocol import realtime as rt
from voicebridge.edges.protocol import twilio_media as tw
from voicebridge.edges.calendar import CalDavCalendar
from voicebridge.edges.call_audio import local_recorder
from voicebridge.edges.ical import CalendarFeed, FeedSource
from voicebridge.edges.security import StreamTokenError, StreamTokens, TwilioSignatures, stream_token_secret, token_binding
from voicebridge.engine.session import Call, CallHooks, CallResult, CallSetup, Connector, SetupError, StreamRefused, connect_session, run_call, utc_now
from voicebridge.jobs.pizza.day import Availability
from voicebridge.ops import staff_store
from voicebridge.ops.live_registry import LiveRegistry
from voicebridge.ops.store import Store
from voicebridge.edges.staff.hub import StaffHub
from voicebridge.edges.transport import MessageStream, TrioWebSocketStream, close_quietly, ws_connect

log = logging.getLogger("voicebridge.daemon")

Observer = Callable[[str, str, dict[str, Any]], None]  # (call_sid, kind, fields)
MAX_REMEMBERED_OUTCOMES = 10_000
OUTCOME_WAIT_S = 5.0
DAY_FOLLOW_S = 1.0  # how soon a staff change made through another process reaches this one's calls
PREWARM_CHECK_S = 1.0  # how often a waiting pre-warmed session looks for its call in another process


def realtime_connector(config: Config) -> Connector:
    """Open a Realtime WebSocket: `OPENAI_REALTIME_URL` with `?model=`, bearer key only (GA)."""
    url = config.realtime_url
    if "model=" not in urllib.parse.urlsplit(url).query:
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"model": config.realtime_model})
    headers = [(b"authorization", f"Bearer {config.openai_api_key or ''}".encode())]

    # The connect deadline is the caller's (connect_session), covering handshake and setup.
    if not config.framework_sockets:
        async def connect_lean(nursery: trio.Nursery) -> MessageStream:
            # Frames are parsed in the reading task, no background reader (see docs/performance.md).
            return await ws_connect(url, headers, max_message_bytes=4 * 1024 * 1024)

        return connect_lean

    from trio_websocket import connect_websocket_url

    async def connect(nursery: trio.Nursery) -> MessageStream:
        # trio-websocket's reader task lives in `nursery`, which must outlive the socket's use.
        ws = await connect_websocket_url(nursery, url, extra_headers=headers, message_queue_size=64,
                                         max_message_size=4 * 1024 * 1024)
        return TrioWebSocketStream(ws)

    return connect


def make_call_setup(config: Config, job: Job, connector: Connector, *,
                    check_start: Callable[[tw.Start], Any] | None = None,
                    prepare_tool: PrepareTool | None = None,
                    wall_clock: Callable[[], datetime] | None = None, business: str = DEFAULT_SLUG) -> CallSetup:
    """How every call is set up: Realtime session settings, the job's tools and words, timers, and
    (VOICEBRIDGE_AUDIO_RECORDING=local) the business's recording of each call's audio."""
    return CallSetup(
        connect=connector,
        session=rt.SessionSettings(
            instructions=job.instructions((wall_clock or utc_now)()),  # re-made for each session
            tools=tuple(job.tool_definitions()), voice=config.voice, audio_format=config.audio_format,
            language=rt.transcription_language(job.languages)),
        flow=FlowSettings(
            silence_timeout_s=config.silence_timeout_s, max_call_s=config.max_call_s,
            response_stall_timeout_s=config.response_stall_timeout_s,
            reconnect_budget_s=config.reconnect_budget_s, session_rotate_s=config.session_rotate_s),
        job=job,
        connect_timeout_s=config.realtime_connect_timeout_s,
        check_start=check_start,
        record_dir=config.record_dir,
        record_settings={"business": name} if (name := packaged_business(config, job.name)) else {},
        prepare_tool=prepare_tool,
        wall_clock=wall_clock or utc_now,
        audio_tap=local_recorder(config.audio_recording_dir, business) if "local" in config.audio_recording else None,
    )


class Daemon:
    def __init__(self, config: Config, *, store: Store, job: Job | None = None, businesses: Businesses | None = None,
                 metrics: Metrics | None = None, connector: Connector | None = None,
                 notifier: Notifier | None = None,
                 calendar_zone: tzinfo | None = None, feed_events: FeedSource | None = None,
                 busy_source: BusySource | None = None, wall_clock: Callable[[], datetime] | None = None) -> None:
        """`businesses` answer the calls (by the number called); `job` alone makes the one default business."""
        if businesses is None:
            if job is None:
                raise ValueError("a Daemon needs a job or businesses")
            businesses = Businesses.single(config, job)
        job = businesses.default.job
        self.config = config
        self.businesses = businesses
        self.job = businesses.default.job
        self.store = store
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier()
        self.signatures = TwilioSignatures(config.twilio_auth_token, config.public_url or "http://127.0.0.1",
                                           allow_unsigned=config.allow_unsigned)
        # Any worker (or instance) holding the deployment's secret verifies any token; the database
        # makes each single-use across all of them (Store.redeem_token).
        self.tokens = StreamTokens(stream_token_secret(config.stream_secret, config.twilio_auth_token),
                                   ttl_s=config.stream_token_ttl_s)
        self.observers: list[Observer] = []
        # The staff page's live updates (voicebridge.edges.staff): every call notice, fanned out.
        self.staff_hub = StaffHub(cart_of=self.cart_of, business_of=self.business_of)
        self.observers.append(self.staff_hub.observe)
        self.staff_tables = False  # the store has the staff tables (checked when serving starts)
        self.draining = False
        self.live: dict[str, Call] = {}
        self.calls_done = trio.Event()  # set whenever the last live call has ended
        self._outcomes_changed = trio.Event()  # set (and replaced) whenever an outcome is known or a call ends
        self.outcomes: OrderedDict[str, str] = OrderedDict()
        self._prewarmed: dict[str, MessageStream] = {}
        self._prewarming: dict[str, trio.Event] = {}
        self.nursery: trio.Nursery | None = None
        # every live call, shared through the database with the other processes (the staff page reads it)
        self.registry = LiveRegistry(store, business=businesses.default.slug)
        self._business_of: dict[str, str] = {}  # call started here (setting up or live) -> business slug
        self._drain_expired = False
        routes = None
        if businesses.catch_all is None:  # business files: each business's events go to its own webhook
            routes = {b.slug: (b.config.order_webhook_url, b.config.order_webhook_secret)
                      for b in businesses if b.config.order_webhook_url and b.config.order_webhook_secret}
        self.outbox = OutboxWorker(store, config.order_webhook_url, config.order_webhook_secret, routes=routes,
                                   max_attempts=config.webhook_max_attempts, timeout_s=config.webhook_timeout_s,
                                   on_result=lambda state: self.metrics.webhook_deliveries_total.labels(state).inc())
        self.outbox.on_settled = self._delivery_settled
        # Each business's CalDAV calendar (its `config.caldav_*`: VOICEBRIDGE_CALDAV_* for the default
        # business, a business file's [calendar] for its own), where its all-day events block the day in
        # its own time zone (`calendar_zone`: the default business's, if given). One worker writes every
        # business's "calendar" rows, each to its business's calendar; a business without one keeps its
        # bookings local (and in its feed).
        default = businesses.default
        self.calendars: dict[str, CalDavCalendar] = {}
        for b in businesses:
            if b.config.caldav_url:
                zone = (calendar_zone if b is default else None) or job_time_zone(b.job) or timezone.utc
                self.calendars[b.slug] = CalDavCalendar(
                    b.config.caldav_url, username=b.config.caldav_username, password=b.config.caldav_password,
                    zone=zone, timeout_s=config.webhook_timeout_s)
        self.calendar: CalDavCalendar | None = self.calendars.get(default.slug)
        self.calendar_outbox: CalendarWorker | None = None
        if self.calendars:
            self.calendar_outbox = CalendarWorker(store, routes=self.calendars, max_attempts=config.webhook_max_attempts,
                                                  timeout_s=config.webhook_timeout_s)
        # Twilio's recordings of the calls (VOICEBRIDGE_AUDIO_RECORDING=twilio), downloaded through the outbox
        self.recording_downloads: RecordingDownloader | None = None
        if "twilio" in config.audio_recording:
            self.recording_downloads = RecordingDownloader(store, config, max_attempts=config.webhook_max_attempts,
                                                           timeout_s=config.webhook_timeout_s)
        # Each business's iCalendar feed, behind its own secret token (`feed_events`: the default's source)
        self.calendar_feeds: dict[str, CalendarFeed] = {}
        for b in businesses:
            events = (feed_events if b is default else None) or feed_source(b.job, store, clock=wall_clock,
                                                                               business=b.slug)
            if b.config.calendar_feed_token and events is not None:
                name = "Bookings" if businesses.catch_all is not None else f"{b.job.business_name} bookings"
                self.calendar_feeds[b.slug] = CalendarFeed(b.config.calendar_feed_token, events, name=name)
        self.calendar_feed: CalendarFeed | None = self.calendar_feeds.get(default.slug)
        # the job's lookups before a tool runs: the business's stored bookings, and its calendar's busy
        # times (`busy_source`, by default its CalDAV calendar) so events booked by hand block slots too
        connect = connector or realtime_connector(config)
        self.setups = {b.slug: make_call_setup(
            b.config, b.job, connect, check_start=self._check_start,
            prepare_tool=tool_preparer(b.job, store, (busy_source if b is default else None) or self.calendars.get(b.slug),
                                       clock=wall_clock, business=b.slug),
            wall_clock=wall_clock, business=b.slug) for b in businesses}
        self.setup = self.setups[businesses.default.slug]

    # -- pre-warm ----------------------------------------------------------------------------

    def prewarm(self, call_sid: str, business: Business | None = None) -> None:
        """Open and configure the call's Realtime session (with its business's job and voice) while
        Twilio fetches TwiML and connects."""
        if self.nursery is None or call_sid in self._prewarming:
            return
        self._prewarming[call_sid] = trio.Event()
        setup = self.setups[(business or self.businesses.default).slug]
        self.nursery.start_soon(self._prewarm, call_sid, setup)

    async def _prewarm(self, call_sid: str, setup: CallSetup) -> None:
        assert self.nursery is not None
        ready = self._prewarming[call_sid]
        try:
            stream = await connect_session(setup, self.nursery)
        except SetupError as exc:
            log.warning("pre-warm failed (the call will connect on its own): %s", exc,
                        extra={"event": "prewarm_failed", "call_sid": call_sid})
            self._prewarming.pop(call_sid, None)
            ready.set()
            return
        self._prewarmed[call_sid] = stream
        ready.set()
        with trio.move_on_after(self.config.prewarm_ttl_s):
            await self._wait_for_stream_elsewhere(call_sid)
        self._prewarming.pop(call_sid, None)
        unused = self._prewarmed.pop(call_sid, None)
        if unused is not None:  # the stream never came, or went to another process: do not leave it open
            self.metrics.prewarm_total.labels("unclaimed").inc()
            log.info("discarded an unused pre-warmed session", extra={"event": "prewarm_discarded", "call_sid": call_sid})
            await close_quietly(unused)

    async def _wait_for_stream_elsewhere(self, call_sid: str) -> None:
        """Return once the call's stream has started in another process (another worker or instance
        recorded the call), so the unneeded pre-warmed session here is closed at once rather than at
        the TTL. One indexed read per second while it waits; once claimed here, it only waits (the
        caller's scope, the TTL, ends it: the CallSid stays known, and is not pre-warmed twice)."""
        while True:
            await trio.sleep(PREWARM_CHECK_S)
            if call_sid not in self._prewarmed or call_sid in self._business_of:  # claimed, or starting here
                continue
            try:
                recorded, _ = await self.store.call_outcome(call_sid)
            except Exception:  # the TTL still bounds it
                continue
            if recorded and call_sid not in self._business_of and call_sid in self._prewarmed:
                return

    async def claim_prewarmed(self, call_sid: str) -> MessageStream | None:
        ready = self._prewarming.get(call_sid)
        if ready is not None:
            with trio.move_on_after(self.config.realtime_connect_timeout_s):
                await ready.wait()
        stream = self._prewarmed.pop(call_sid, None)
        # "hit": the stream came to the process that pre-warmed; "miss": it connects now, the
        # greeting waits for that (with several workers, the webhook may have landed elsewhere).
        self.metrics.prewarm_total.labels("hit" if stream is not None else "miss").inc()
        return stream

    # -- calls -------------------------------------------------------------------------------

    async def redeem_token(self, token: str | None, call_sid: str, business: str = "default") -> None:
        """Use up a stream token for `call_sid` of `business`: valid, and never used before by any
        process sharing the database; StreamTokenError (with its reason) otherwise."""
        nonce, expires_at = self.tokens.verify(token, call_sid, bound=token_binding(business))
        key = hashlib.sha256(nonce.encode("ascii")).hexdigest()
        if not await self.store.redeem_token(key, datetime.fromtimestamp(expires_at, timezone.utc)):
            raise StreamTokenError("reused")

    async def _check_start(self, start: tw.Start) -> CallSetup:
        """The stream's token is for this call and this business, and never used before, anywhere."""
        slug = start.custom_parameters.get("business") or self.businesses.default.slug
        try:
            await self.redeem_token(start.custom_parameters.get("token"), start.call_sid, slug)
        except StreamTokenError as exc:
            raise StreamRefused(exc.reason) from None
        except Exception as exc:  # the database is unreachable: no call we cannot account for
            log.error("could not record the stream token as used: %s", exc, extra={"event": "store_error"})
            raise StreamRefused("store-unavailable") from None
        setup = self.setups.get(slug)
        if setup is None:  # signed for a business this deployment no longer has
            raise StreamRefused("unknown-business")
        return setup

    async def handle_stream(self, twilio: MessageStream) -> CallResult:
        hooks = CallHooks(on_event=self._on_event, on_started=self._on_started, on_transcript=self._on_transcript,
                          commit=self._commit, on_ended=self._on_ended, on_live=self._on_live,
                          on_outcome=self._remember_outcome, on_forward=self._on_forward)
        return await run_call(twilio, self.setup, hooks, prewarmed=self.claim_prewarmed)

    def _on_live(self, call: Call) -> None:
        self.live[call.sid] = call
        self.metrics.live_calls.inc()
        params = call.start.custom_parameters
        self.registry.started(call.sid, call.flow.state,
                              {"direction": params.get("Direction") or "inbound", "job": call.setup.job.name},
                              business=self._business_of.get(call.sid))
        if self._drain_expired:
            call.end_now("shutdown")
        elif self.recording_downloads is not None and self.nursery is not None:
            business = self.businesses.get(self._business_of.get(call.sid)) or self.businesses.default
            if "twilio" in business.config.audio_recording:
                self.nursery.start_soon(self._start_recording, call.sid, business.config)
        if self.signatures.unsigned:
            log.warning("call running without Twilio signature checks (VOICEBRIDGE_ALLOW_UNSIGNED=1)",
                        extra={"event": "unsigned_call", "call_sid": call.sid})

    async def _start_recording(self, call_sid: str, config: Config) -> None:
        """Ask Twilio to record the live call (both channels); its callback brings the file."""
        try:
            with trio.move_on_after(config.webhook_timeout_s + 5):  # the request's own timeout ends it first
                recording_sid = await start_recording(config, call_sid, timeout_s=config.webhook_timeout_s)
                log.info("call recording started", extra={"event": "recording_started", "call_sid": call_sid,
                                                           "recording_sid": recording_sid})
        except OutboundError as exc:
            log.error("could not start the call's recording: %s", exc,
                      extra={"event": "recording_failed", "call_sid": call_sid})

    async def recording_received(self, recording_sid: str, call_sid: str, *, status: str, duration_s: int | None,
                                 channels: int | None) -> bool:
        """Keep a Twilio recording's status callback (once) and wake its download."""
        fresh = await self.store.recording_received(recording_sid, call_sid, status=status, duration_s=duration_s,
                                                    channels=channels, business=self.businesses.default.slug)
        if fresh and self.recording_downloads is not None:
            self.recording_downloads.wake()
        return fresh

    async def _on_started(self, start: tw.Start) -> None:
        # Set in the call's own task before its nursery opens: every task of the call inherits it,
        # so each of the call's log lines carries its call_sid.
        call_sid_var.set(start.call_sid)
        params = start.custom_parameters
        self._business_of[start.call_sid] = params.get("business") or self.businesses.default.slug
        try:
            await self.store.call_started(start.call_sid, stream_sid=start.stream_sid, from_number=params.get("From"),
                                          to_number=params.get("To"), direction=params.get("Direction") or "inbound",
                                          started_at=datetime.now(timezone.utc),
                                          business=self._business_of[start.call_sid])
        except Exception as exc:
            log.error("could not record the call start: %s", exc, extra={"event": "store_error"})

    async def _on_transcript(self, call_sid: str, role: str, text: str, item_id: str | None, position: int) -> None:
        try:
            await self.store.add_transcript(call_sid, role=role, text=text, item_id=item_id,
                                            at=datetime.now(timezone.utc), position=position)
        except Exception as exc:
            log.error("could not store a transcript line: %s", exc, extra={"event": "store_error"})

    async def _commit(self, call_sid: str, task: Any) -> Committed:
        """The caller said yes: the job writes its task and outbox events in one transaction."""
        now = self.setup.wall_clock()
        business = self.businesses.get(self._business_of.get(call_sid)) or self.businesses.default

        def commit(tx: Any) -> Committed:
            done = business.job.commit(tx, call_sid, task, now)
            # The staff board's event, in the same transaction: a board never misses a committed order.
            if self.staff_tables:
                staff_store.record(tx, None, "committed", f"{business.job.name}:{done.id}", {}, now, business.slug)
            return done

        done = await self.store.commit(commit, now=now, business=business.slug)
        self.outbox.wake()
        if self.calendar_outbox is not None:
            self.calendar_outbox.wake()
        return done

    def _on_event(self, call_sid: str, kind: str, fields: dict[str, Any]) -> None:
        m = self.metrics
        if kind == "barge_in":
            m.barge_ins_total.inc()
        elif kind == "realtime_restored":
            m.realtime_reconnects_total.inc()
        elif kind == "model_error":
            m.count_realtime_error(fields.get("code"))
        elif kind == "protocol_error":
            m.protocol_errors_total.labels(fields.get("source", "twilio")).inc()
        elif kind == "first_audio":
            m.time_to_first_audio_seconds.observe(fields["ms"] / 1000)
        elif kind == "state":
            self.registry.state(call_sid, str(fields.get("state")))
        for observe in self.observers:
            observe(call_sid, kind, fields)

    async def _delivery_settled(self, row: Any, state: str) -> None:
        """A webhook delivery was made or given up on: the staff board's event, so its card shows it."""
        if not self.staff_tables:
            return
        now = datetime.now(timezone.utc)
        await self.store.commit(lambda tx: staff_store.record(tx, None, f"delivery.{state}", row.subject, {}, now,
                                                              row.business))
        self.staff_hub.stored()

    def cart_of(self, call_sid: str) -> dict[str, Any] | None:
        """What a live call's task holds now, as the model is told it (the staff page shows it)."""
        call = self.live.get(call_sid)
        return None if call is None else call.setup.job.state_for_model(call.task)

    def business_of(self, call_sid: str) -> str | None:
        """The business (slug) of a call starting or live on this process; None if there is none."""
        return self._business_of.get(call_sid)

    async def refresh_day(self, business: str | None = None) -> Any:
        """Load the menu's day (sold out, closed now) of `business` (of every business if None) from
        the store into its job, telling that business's live calls on this process what changed;
        returns the day of `business` (of the default business if None)."""
        days = await self.store.read(staff_store.availabilities)
        for b in self.businesses:
            if business is None or b.slug == business:
                self._apply_day(b, days.get(b.slug, Availability()))
        return days.get(business or self.businesses.default.slug, Availability())

    def _apply_day(self, business: Business, day: Availability) -> None:
        box = getattr(business.job, "day", None)
        if box is None or box.current == day:
            return
        box.current = day
        menu: Any = getattr(business.job, "menu", None)  # only a job with a menu's day has a `day` box
        note = day.note_for_model(menu) or \
            "Everything on the menu is available again, and the shop is open."
        for sid, call in list(self.live.items()):
            if self.business_of(sid) == business.slug:
                call.tell_model(f"Update from the shop: {note}")

    async def follow_store(self, *, every_s: float = DAY_FOLLOW_S,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow what staff did through another process (another worker, another machine): the
        store is the one truth, read every `every_s` in a few small queries. The menu's day is
        applied where it changed; a take-over or end asked for one of this process's live calls is
        carried out. What staff do through this process's own page is applied at once by the page;
        this loop then finds nothing new."""
        task_status.started()
        failing = False
        while True:
            await trio.sleep(every_s)
            try:
                await self.refresh_day()
                live = set(self.live)
                if await self.store.read(staff_store.call_actions_pending):  # a read; writes only when asked
                    now = datetime.now(timezone.utc)
                    asked = await self.store.commit(partial(staff_store.take_call_actions, call_sids=live, now=now))
                    for sid, outcome in asked.items():
                        call = self.live.get(sid)
                        if call is not None:
                            call.end_now(outcome)
            except Exception as exc:  # the store is down: calls keep the last known day; say so once
                if not failing:
                    log.warning("cannot follow the staff's changes in the store: %s", exc, extra={"event": "store_error"})
                failing = True
            else:
                failing = False

    def _on_forward(self, direction: str, seconds: float) -> None:
        self.metrics.forwarding_latency_seconds.labels(direction).observe(seconds)

    def _remember_outcome(self, call_sid: str, outcome: str) -> None:
        self.outcomes[call_sid] = outcome
        self.outcomes.move_to_end(call_sid)
        while len(self.outcomes) > MAX_REMEMBERED_OUTCOMES:
            self.outcomes.popitem(last=False)
        self._outcomes_changed.set()
        self._outcomes_changed = trio.Event()

    async def _on_ended(self, result: CallResult) -> None:
        sid = result.call_sid
        if sid is None:
            return
        self._remember_outcome(sid, result.outcome)
        business = self._business_of.pop(sid, None)
        if self.live.pop(sid, None) is not None:
            self.metrics.live_calls.dec()
        self.registry.ended(sid)
        if not self._calls_running():
            self.calls_done.set()
        self.metrics.calls_total.labels(result.outcome).inc()
        if result.outcome == "refused":  # a stream that failed its token check: no call to record
            return
        cost = CallCost(self.config.prices)
        for usage in result.usage:
            cost.add_usage(usage)
        for usage in result.transcription_usage:
            try:
                cost.add_transcription_usage(usage)
            except ValueError as exc:  # one odd event must not lose the call's record
                log.warning("transcription usage not priced: %s", exc, extra={"event": "bad_usage"})
        self.metrics.frames_dropped_total.labels("in").inc(result.counts.get("frames_dropped", 0))
        total: Decimal = cost.total_usd(result.duration_s)
        self.metrics.add_call_cost(total)
        details = {**cost.details(), "counts": result.counts, "first_audio_s": result.first_audio_s}
        for observe in self.observers:
            observe(sid, "ended", {"outcome": result.outcome, "cost_usd": str(total), "committed_id": result.committed_id,
                                   "business": business})
        try:
            await self.store.call_ended(sid, outcome=result.outcome, ended_at=result.ended_at or datetime.now(timezone.utc),
                                        cost_usd=total, cost_details=details)
        except Exception as exc:
            log.error("could not record the call end: %s", exc, extra={"event": "store_error"})

    async def voicemail_received(self, call_sid: str, *, url: str, duration_s: int | None,
                                 from_number: str | None, business: str = "default") -> bool:
        """Keep the voicemail on the call's row with its `voicemail.received` delivery; wake the outbox."""
        fresh = await self.store.voicemail_received(call_sid, url=url, duration_s=duration_s, from_number=from_number,
                                                    business=business)
        if fresh:
            self.outbox.wake()
        return fresh

    async def outcome_of(self, call_sid: str) -> str | None:
        """The outcome of a call; if it is still finishing, wait for it (a few seconds at most).

        A call this process did not run (its stream went to another worker or instance) is looked
        up in the shared database, waiting likewise for the process that ran it to record its end.
        """
        with trio.move_on_after(OUTCOME_WAIT_S):
            while call_sid in self.live and call_sid not in self.outcomes:
                await self._outcomes_changed.wait()
        outcome = self.outcomes.get(call_sid)
        if outcome is not None or not call_sid:
            return outcome
        with trio.move_on_after(OUTCOME_WAIT_S):
            while True:
                try:
                    recorded, outcome = await self.store.call_outcome(call_sid)
                except Exception:
                    return None
                if outcome is not None or not recorded:
                    return outcome
                await trio.sleep(0.05)
        return None

    async def not_ready_reason(self) -> str | None:
        if self.draining:
            return "draining"
        try:
            await self.store.check_writable()
        except Exception as exc:
            return f"store not writable ({type(exc).__name__})"
        return None

    # -- life --------------------------------------------------------------------------------

    def _calls_running(self) -> bool:
        """A call is running here from its stream's `start` (`_on_started`), through its Realtime
        setup, until it ends: a drain waits for the ones still setting up too."""
        return bool(self.live or self._business_of)

    async def drain(self) -> None:
        """Stop new calls; let live ones finish up to the drain deadline; end the rest."""
        self.draining = True
        self.notifier.stopping()
        self.staff_hub.close_all()  # staff pages' event streams would otherwise hold the web server open
        log.info("draining", extra={"event": "draining", "live_calls": len(self._business_of.keys() | self.live.keys())})
        if self._calls_running():
            self.calls_done = trio.Event()
            with trio.move_on_after(self.config.drain_timeout_s):
                await self.calls_done.wait()
        self._drain_expired = True  # a call still setting up is ended as soon as it goes live
        for call in list(self.live.values()):
            call.end_now("shutdown")
        if self._calls_running():
            self.calls_done = trio.Event()
            with trio.move_on_after(5):
                await self.calls_done.wait()


class ListenError(Exception):
    """The public address cannot be listened on; the message says which and what to change."""


def listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on (host, port), or ListenError in one line.

    With `reuse_port` each worker of `VOICEBRIDGE_WORKERS` binds the same host:port with
    SO_REUSEPORT (Linux): the kernel spreads new connections across the workers' sockets, and a
    worker that exits takes only its own queue with it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {host!r} is not an address of this machine "
                          f"({exc.strerror}); set --host or VOICEBRIDGE_HOST") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            hint = "another process is listening there; stop it, or choose another port with --port or VOICEBRIDGE_PORT"
        elif exc.errno == errno.EACCES:
            hint = "ports below 1024 need privileges; choose a port >= 1024 with --port or VOICEBRIDGE_PORT"
        else:
            hint = f"{exc.strerror}; check --host/--port (VOICEBRIDGE_HOST/VOICEBRIDGE_PORT)"
        raise ListenError(f"cannot listen on {where}: {hint}") from None
    return sock


async def serve_daemon(daemon: Daemon, *, shutdown: trio.Event | None = None, freeze_gc: bool = False,
                       reuse_port: bool = False, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until SIGTERM/SIGINT (or `shutdown` is set), then drain and stop.

    `freeze_gc` (the `serve` command; not in tests, which start many daemons in one process):
    once everything is loaded, move it out of the cyclic collector's reach (`gc.freeze()`). It
    lives as long as the process, and every full collection would otherwise walk it again while
    all calls wait.

    The public port is the daemon's own listener (`edges.front.serve_front`): media streams are
    served there with no HTTP framework in the audio path, and every other request is piped to
    Hypercorn/Quart-Trio on a private Unix socket. With `VOICEBRIDGE_FRAMEWORK_SOCKETS=1` (a
    debugging fallback) Hypercorn serves the public port itself, `/media-stream` included.

    The public port is bound before anything starts: if it cannot be, `ListenError` says which
    address and what to change.

    `reuse_port` (a worker of `VOICEBRIDGE_WORKERS`): the public socket is bound with SO_REUSEPORT,
    shared with the other workers.
    """
    from hypercorn.config import Config as HyperConfig
    from hypercorn.trio import serve

    from voicebridge.edges.front import serve_front
    from voicebridge.edges.web import create_app

    cfg = daemon.config
    front = listen(cfg.host, cfg.port, reuse_port=reuse_port)
    host, port = front.getsockname()[:2]
    binds = [f"http://[{host}]:{port}" if front.family == socket.AF_INET6 else f"http://{host}:{port}"]
    if cfg.calendar_feed_token and daemon.calendar_feed is None:
        log.warning("VOICEBRIDGE_CALENDAR_FEED_TOKEN is set, but the default business has no bookings to publish"
                    + (" (with VOICEBRIDGE_BUSINESSES, a business file's [calendar] names its own)"
                       if cfg.businesses else ""))
    if cfg.caldav_url and daemon.calendar is None:
        log.warning("VOICEBRIDGE_CALDAV_URL is unused: with VOICEBRIDGE_BUSINESSES, a business file's [calendar] "
                    "names its own calendar")
    lean = not cfg.framework_sockets
    private = tempfile.mkdtemp(prefix="voicebridge-") if lean else None
    backend = os.path.join(private, "http.sock") if private else ""
    hyper = HyperConfig()
    if lean:
        hyper.bind = [f"unix:{backend}"]
    else:
        hyper.bind = [f"fd://{front.detach()}"]  # Hypercorn owns the listening socket from here
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("hypercorn.error")
    hyper.graceful_timeout = 2.0
    hyper.websocket_ping_interval = None
    stop_serving = trio.Event()
    if shutdown is None:
        shutdown = trio.Event()
    front_scope = trio.CancelScope()
    try:
        await daemon.refresh_day()
        daemon.staff_tables = True
    except Exception as exc:  # a store opened without the staff tables: no staff page, calls still work
        log.warning("no staff page: the store has no staff tables (%s)", type(exc).__name__)
    app = create_app(daemon, feeds=tuple(daemon.calendar_feeds.values()))
    async with trio.open_nursery() as nursery:
        daemon.nursery = nursery
        await nursery.start(daemon.outbox.run)
        await nursery.start(daemon.registry.run)
        if daemon.staff_tables:
            await nursery.start(daemon.follow_store)
        if daemon.calendar_outbox is not None:
            await nursery.start(daemon.calendar_outbox.run)
        if daemon.recording_downloads is not None:
            await nursery.start(daemon.recording_downloads.run)
        if cfg.audio_recording:
            await nursery.start(partial(retention_task, cfg.audio_recording_dir, cfg.audio_recording_keep_days))
        served = trio.Event()

        async def run_hypercorn(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await serve(app, hyper, shutdown_trigger=stop_serving.wait, task_status=task_status)
            finally:
                served.set()

        await nursery.start(run_hypercorn)
        if lean:
            async def run_front(listener: socket.socket) -> None:
                with front_scope:
                    async with trio.open_nursery() as conns:
                        await serve_front(daemon, listener, backend, conns, max_message_bytes=cfg.ws_max_message_bytes)

            nursery.start_soon(run_front, front)
        nursery.start_soon(partial(watchdog_task, daemon.notifier, healthy=lambda: not daemon.draining))
        if freeze_gc:
            gc.collect()
            gc.freeze()
        daemon.notifier.ready()
        log.info("serving", extra={"event": "serving", "binds": binds, "public_url": cfg.public_url,
                                   "realtime_url": cfg.realtime_url, "framework_sockets": cfg.framework_sockets})
        task_status.started(binds)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as waiter:
                async def on_signal() -> None:
                    async for _ in signals:
                        shutdown.set()
                        return
                waiter.start_soon(on_signal)
                await shutdown.wait()
                waiter.cancel_scope.cancel()
        await daemon.drain()
        front_scope.cancel()
        if lean:
            front.close()
        stop_serving.set()
        with trio.move_on_after(hyper.graceful_timeout + 1):
            await served.wait()
        while daemon._prewarmed:
            _, stream = daemon._prewarmed.popitem()
            await close_quietly(stream)
        nursery.cancel_scope.cancel()
    if private:
        shutil.rmtree(private, ignore_errors=True)
    if front.fileno() >= 0:
        front.close()
    log.info("stopped", extra={"event": "stopped"})
