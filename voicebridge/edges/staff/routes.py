"""The staff page's routes: a Quart blueprint under /staff (registered by `edges.web.create_app`).

Every route but the login form answers a redirect to the login (pages) or 401 (the event stream,
POSTs) without a valid session, and every POST needs the session's CSRF token (403 otherwise); the
login form's POST needs the token its GET set in a cookie (double submit). An account sees only its
own business: another business's order or call answers 404, as one that does not exist. An
operator sees every business and picks one with `?business=SLUG` (all of them without it).

Why this module is long: it is the whole page's routes in one blueprint, sharing the gate's
session, the business scope and the event stream; split up, each part would reach back for them.
Pages carry a strict Content-Security-Policy (scripts and styles only from /staff/static), may
not be framed, and are never cached.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable

import trio
from quart import Blueprint, Response, g, redirect, render_template, request, stream_with_context

from voicebridge.edges import sms
from voicebridge.edges.outbound import OutboundError
from voicebridge.edges.staff import auth
from voicebridge.edges.staff.hub import StaffHub
from voicebridge.jobs.pizza import board
from voicebridge.jobs.pizza.menu import format_money
from voicebridge.jobs.pizza.records import get_order
from voicebridge.ops import staff_store as ss
from voicebridge.ops.store import StoreError

log = logging.getLogger("voicebridge.staff")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
KEEPALIVE_S = 15.0
CALLS_REFRESH_S = 2.0  # how often a stream re-reads the shared registry for other processes' calls
CATCH_UP_BATCH = 200  # stored events read at a time by a (re)connecting stream
BOARD_DONE_SHOWN = 12  # finished orders still shown at the foot of the board
LOGIN_COOKIE = "vb_staff_login"  # the login form's CSRF token (double submit: cookie and form field)


class NotYours(Exception):
    """The order or call is another business's (or does not exist): answered 404, nothing changed."""


def _local(value: datetime | None) -> str:
    return value.astimezone().strftime("%H:%M") if value else ""


def staff_blueprint(daemon: Any) -> Blueprint:
    """`daemon`: the store, live calls, job, config and `staff_hub` (voicebridge.daemon.Daemon)."""
    bp = Blueprint("staff", __name__, url_prefix="/staff", template_folder="templates",
                   static_folder="static", static_url_path="/static")
    limiter = auth.LoginLimiter()
    keys: dict[str, auth.Sessions] = {}
    hub: StaffHub = daemon.staff_hub

    async def sessions() -> auth.Sessions:
        if "s" not in keys:
            keys["s"] = auth.Sessions(await daemon.store.commit(ss.session_key))
        return keys["s"]

    def now() -> datetime:
        return datetime.now(timezone.utc)

    def wants_json() -> bool:
        return "application/json" in request.headers.get("Accept", "")

    @bp.before_request
    async def gate() -> Any:
        if request.endpoint in ("staff.static",):
            return None
        session = (await sessions()).read(request.cookies.get(auth.COOKIE))
        account = None
        if session is not None:
            account = await daemon.store.read(lambda tx: ss.get_account(tx, session.name))
            if account is None or account.disabled or (account.expires_at and account.expires_at < now()):
                session = None
        if request.endpoint in ("staff.login", "staff.login_post"):
            g.staff = session
            return None
        if session is None:
            if request.method != "GET" or request.path.endswith("/events") or wants_json():
                return Response("log in first\n", status=401, content_type="text/plain")
            return redirect("/staff/login")
        if request.method == "POST":
            form = await request.form
            if not auth.csrf_ok(session, request.headers.get("X-CSRF-Token") or form.get("csrf")):
                return Response("bad or missing CSRF token\n", status=403, content_type="text/plain")
        g.staff, g.account = session, account
        if (account is not None and not account.operator and daemon.businesses.get(account.business) is None
                and request.endpoint != "staff.logout"):
            return Response(f"this login belongs to business {account.business!r}, which this deployment does not "
                            "serve; ask for a login of your business (voicebridge staff add NAME --business SLUG)\n",
                            status=403, content_type="text/plain")
        wanted = request.args.get("business")
        g.scope = account.business if account is not None and not account.operator else (
            wanted if daemon.businesses.get(wanted) is not None else None)
        return None

    def scope() -> str | None:
        """The business this request shows (None: every business, for an operator who picked none)."""
        return g.scope  # type: ignore[no-any-return]

    def viewer() -> Callable[[str | None], bool]:
        """Whether this request may see something of a business; bound now, usable in a store thread."""
        account, only = g.account, scope()
        return lambda business: bool(account.sees(business)) and (only is None or business == only)

    def sees(business: str | None) -> bool:
        return viewer()(business)

    def query() -> str:
        """What keeps an operator's business choice on the page's links and forms."""
        return f"?business={scope()}" if g.account.operator and scope() is not None else ""

    def job_of(business: str | None) -> Any:
        found = daemon.businesses.get(business) if business is not None else None
        return (found or daemon.businesses.default).job

    @bp.after_request
    async def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if request.endpoint != "staff.static":
            response.headers["Cache-Control"] = "no-store"
        return response

    async def page(template: str, **context: Any) -> str:
        shop = job_of(scope()).business_name if scope() is not None else "All businesses"
        switch = [{"slug": b.slug, "name": b.job.business_name} for b in daemon.businesses] if g.account.operator else []
        return await render_template(f"staff/{template}", me=g.staff.name, csrf=g.staff.csrf, shop=shop, q=query(),
                                     switch=switch, business=scope(), **context)

    async def not_pizza() -> Any:
        """A business whose job the board and menu cannot show (appointments): say so, show no pizza board."""
        return await page("other_job.html", job=job_of(scope()).name)

    def shows_pizza() -> bool:
        return scope() is None or job_of(scope()).name == "pizza"

    async def audit(action: str, subject: str, business: str | None, detail: dict[str, Any] | None = None) -> int:
        actor = g.staff.name
        event_id: int = await daemon.store.commit(
            lambda tx: ss.record(tx, actor, action, subject, detail or {}, now(), business))
        hub.stored()
        return event_id

    def order_business(tx: Any, order_id: int, may_see: Callable[[str | None], bool]) -> str:
        """The business of order `order_id`, if `may_see` it (see `viewer`); NotYours otherwise."""
        rows = tx.execute("SELECT business FROM orders WHERE id = ?", (order_id,))
        if not rows or not may_see(rows[0]["business"]):
            raise NotYours(f"order #{order_id} does not exist")
        return str(rows[0]["business"])

    def done(back: str) -> Any:
        return Response("", status=204) if wants_json() else redirect(back)

    def refused(message: str, status: int = 409) -> Response:
        return Response(message + "\n", status=status, content_type="text/plain")

    # -- login ------------------------------------------------------------------------------

    async def login_form(error: str | None, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        """The login form with a fresh CSRF token, also set in a cookie its POST must send back."""
        token = secrets.token_urlsafe(32)
        several = len(daemon.businesses.all) > 1  # the login does not say which businesses share it
        body = await render_template("staff/login.html", error=error, csrf=token,
                                     shop="Staff" if several else daemon.job.business_name)
        response = Response(body, status=status, headers=headers or {})
        response.set_cookie(LOGIN_COOKIE, token, max_age=auth.SESSION_MAX_AGE_S, path="/staff", secure=True,
                            httponly=True, samesite="Strict")
        return response

    @bp.get("/login")
    async def login() -> Any:
        if g.staff is not None:
            return redirect("/staff/")
        return await login_form(None)

    @bp.post("/login")
    async def login_post() -> Any:
        form = await request.form
        sent, kept = form.get("csrf") or "", request.cookies.get(LOGIN_COOKIE) or ""
        if not sent or not kept or not hmac.compare_digest(sent.encode(), kept.encode()):
            return await login_form("The login form had expired; log in again.", 403)
        name, password = (form.get("name") or "").strip()[:64], form.get("password") or ""
        address = request.remote_addr or "?"
        wait = limiter.retry_after(name, address)
        if wait > 0:
            log.warning("staff login rate-limited", extra={"event": "staff_login_limited"})
            return await login_form(f"Too many failed logins. Try again in {int(wait) + 1} seconds.", 429,
                                    {"Retry-After": str(int(wait) + 1)})
        account = await daemon.store.read(lambda tx: ss.get_account(tx, name)) if name else None
        ok = auth.verify_password(account.password_hash if account else None, password)
        if not ok or account is None or account.disabled or (account.expires_at and account.expires_at < now()):
            limiter.failed(name, address)
            return await login_form("Wrong name or password.", 401)
        limiter.succeeded(name)
        value, _ = (await sessions()).new(account.name)
        await daemon.store.commit(lambda tx: ss.record(tx, account.name, "staff.login", f"staff:{account.name}", {}, now(),
                                                       None if account.operator else account.business))
        response = redirect("/staff/")
        response.set_cookie(auth.COOKIE, value, max_age=auth.SESSION_MAX_AGE_S, path="/staff", secure=True,
                            httponly=True, samesite="Strict")
        return response

    @bp.post("/logout")
    async def logout() -> Any:
        await audit("staff.logout", f"staff:{g.staff.name}", None if g.account.operator else g.account.business)
        response = redirect("/staff/login")
        response.delete_cookie(auth.COOKIE, path="/staff", secure=True, httponly=True, samesite="Strict")
        return response

    # -- the order board ----------------------------------------------------------------------

    async def order_view(order_id: int, may_see: Callable[[str | None], bool], whose: bool) -> dict[str, Any] | None:
        try:
            business = await daemon.store.read(lambda tx: order_business(tx, order_id, may_see))
        except NotYours:
            return None
        detail = await daemon.store.read(lambda tx: get_order(tx, order_id))
        if detail is None:
            return None
        rows = await daemon.store.read(lambda tx: tx.execute(
            "SELECT status_reason FROM orders WHERE id = ?", (order_id,)))
        texts = await daemon.store.read(lambda tx: tx.execute(
            "SELECT action FROM staff_events WHERE subject = ? AND action IN ('order.text_sent', 'order.text_failed')"
            " ORDER BY id DESC LIMIT 1", (f"order:{order_id}",)))
        return {"o": detail, "label": board.LABEL.get(detail.status, detail.status),
                "next": [s for s in board.NEXT.get(detail.status, ()) if s != "cancelled"],
                "can_cancel": "cancelled" in board.NEXT.get(detail.status, ()),
                "reason": rows[0]["status_reason"] if rows else None, "placed": _local(detail.created_at),
                "text": {"order.text_sent": "sent", "order.text_failed": "failed"}.get(texts[0]["action"]) if texts else None,
                "money": format_money, "labels": board.LABEL,
                "whose": job_of(business).business_name if whose else None}

    def all_shown() -> bool:
        """This page shows several businesses at once (an operator's, with none picked): cards say whose."""
        return scope() is None and len(daemon.businesses.all) > 1

    async def card(order_id: int, csrf: str | None = None, may_see: Callable[[str | None], bool] | None = None,
                   whose: bool | None = None) -> str:
        """An order's card, or "" if `may_see` (this request's `viewer` if None) may not see it."""
        view = await order_view(order_id, may_see or viewer(), all_shown() if whose is None else whose)
        if view is None:
            return ""
        return await render_template("staff/_order.html", csrf=csrf or g.staff.csrf, **view)

    @bp.get("/")
    async def board_page() -> Any:
        if not shows_pizza():
            return await not_pizza()
        whose, only = ("", ()) if scope() is None else (" AND business = ?", (scope(),))

        def ids(tx: Any) -> tuple[list[int], list[int], int]:
            active = [r["id"] for r in tx.execute(
                f"SELECT id FROM orders WHERE status IN ('confirmed', 'preparing', 'ready'){whose} ORDER BY id", only)]
            finished = [r["id"] for r in tx.execute(
                f"SELECT id FROM orders WHERE status IN ('completed', 'cancelled'){whose} ORDER BY id DESC LIMIT ?",
                (*only, BOARD_DONE_SHOWN))]
            return active, finished, ss.last_event_id(tx)

        active, finished, last = await daemon.store.read(ids)
        cards = [await card(i) for i in active]
        done_cards = [await card(i) for i in finished]
        return await page("board.html", cards=cards, done_cards=done_cards, last=last, live=await live_calls())

    @bp.post("/orders/<int:order_id>/status")
    async def order_status(order_id: int) -> Any:
        form = await request.form
        to, reason = form.get("to", ""), form.get("reason")

        may_see, actor = viewer(), g.staff.name

        def run(tx: Any) -> str:
            business = order_business(tx, order_id, may_see)
            old = board.move(tx, order_id, to, now(), reason)
            ss.record(tx, actor, f"order.{to}", f"order:{order_id}",
                      {"from": old, **({"reason": reason.strip()} if to == "cancelled" and reason else {})}, now(),
                      business)
            return business

        try:
            business = await daemon.store.commit(run)
        except NotYours as exc:
            return refused(str(exc), 404)
        except board.StatusError as exc:
            return refused(str(exc))
        hub.stored()
        if to == "ready" and sms.can_text(daemon.config) and daemon.nursery is not None:
            daemon.nursery.start_soon(text_ready, order_id, business)
        return done("/staff/" + query())

    async def text_ready(order_id: int, business: str) -> None:
        """Tell the customer their order is ready (one attempt; the log and board say how it went)."""
        detail = await daemon.store.read(lambda tx: get_order(tx, order_id))
        if detail is None or not detail.phone:
            return
        what = "is ready for pickup" if detail.fulfillment == "pickup" else "is ready and on its way"
        body = f"{job_of(business).business_name}: your order #{order_id} {what}. Thank you!"
        try:
            sid = await sms.send_text(daemon.config, detail.phone, body)
        except OutboundError as exc:
            log.warning("the ready text for order #%d was not sent: %s", order_id, exc,
                        extra={"event": "sms_failed"})
            action, info = "order.text_failed", {"error": str(exc)}
        else:
            action, info = "order.text_sent", {"message_sid": sid}
        await daemon.store.commit(lambda tx: ss.record(tx, None, action, f"order:{order_id}", info, now(), business))
        hub.stored()

    @bp.post("/orders/<int:order_id>/resend")
    async def order_resend(order_id: int) -> Any:
        from voicebridge.ops.store import StoreError

        try:
            may_see = viewer()
            business = await daemon.store.read(lambda tx: order_business(tx, order_id, may_see))
        except NotYours as exc:
            return refused(str(exc), 404)
        try:
            again = await daemon.store.resend(f"order:{order_id}")
        except StoreError as exc:
            return refused(str(exc), 404)
        if not again:
            return refused(f"order #{order_id}'s webhook delivery is not dead: nothing to resend")
        daemon.outbox.wake()
        await audit("order.resend", f"order:{order_id}", business)
        return done("/staff/" + query())

    # -- the event stream -----------------------------------------------------------------------

    async def live_calls(may_see: Callable[[str | None], bool] | None = None) -> list[dict[str, Any]]:
        """The live calls `may_see` allows: this process's, with their carts, and those other processes
        (workers, machines) carry, from the shared registry, with their state."""
        may_see = may_see or viewer()
        calls = []
        for sid, call in list(daemon.live.items()):
            if not may_see(daemon.business_of(sid)):
                continue
            started = time.time() - (trio.current_time() - call.started_at)
            calls.append({"sid": sid, "state": call.flow.state, "started_ms": int(started * 1000),
                          "cart": daemon.cart_of(sid)})
        try:
            shared = await daemon.store.live_calls()
        except StoreError as exc:  # the store is down: this process's calls are still shown
            log.warning("cannot read other processes' live calls: %s", exc)
            shared = []
        for row in shared:
            if row.instance != daemon.store.instance_id and row.call_sid not in daemon.live and may_see(row.business):
                calls.append({"sid": row.call_sid, "state": row.state, "cart": None,
                              "started_ms": int(row.started_at.timestamp() * 1000)})
        return calls

    async def carried_elsewhere(sid: str) -> str | None:
        """The business of `sid` if another process carries it (the shared registry says so), else None."""
        for row in await daemon.store.live_calls():
            if row.call_sid == sid and row.instance != daemon.store.instance_id:
                return str(row.business or daemon.businesses.default.slug)
        return None

    async def act_on_call(sid: str, outcome: str, action: str) -> Any:
        call, business = daemon.live.get(sid), daemon.business_of(sid)
        if call is not None and sees(business):
            call.end_now(outcome)
        else:
            business = await carried_elsewhere(sid) if call is None else None
            if business is None or not sees(business):
                return refused("that call has ended", 404)
            now = datetime.now(timezone.utc)  # the process carrying it takes the request within a second
            await daemon.store.commit(lambda tx: ss.request_call_action(tx, sid, outcome, now))
        await audit(action, f"call:{sid}", business)
        return done("/staff/calls" + query())

    def sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
        head = f"id: {event_id}\n" if event_id is not None else ""
        return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

    async def stored_since(after: int, csrf: str, business: str | None,
                           may_see: Callable[[str | None], bool], whose: bool) -> tuple[list[bytes], int]:
        out = []
        start = after
        for ev in await daemon.store.read(lambda tx: ss.events_after(tx, start, CATCH_UP_BATCH, business=business)):
            after = ev.id
            kind, _, number = ev.subject.partition(":")
            if kind in ("order", "pizza") and number.isdigit():
                out.append(sse("order", {"id": int(number), "action": ev.action, "html": await card(int(number), csrf, may_see, whose)},
                               ev.id))
            else:
                out.append(sse("log", {"action": ev.action, "subject": ev.subject, "actor": ev.actor}, ev.id))
        return out, after

    @bp.get("/events")
    async def events() -> Any:
        raw = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
        if not raw.isdigit() or len(raw) > 18:
            return refused("Last-Event-ID must be a whole number", 400)
        send, receive = hub.subscribe()
        csrf, business, may_see, whose = g.staff.csrf, scope(), viewer(), all_shown()

        @stream_with_context  # the cards are rendered with the request's session (its CSRF token)
        async def stream() -> AsyncIterator[bytes]:
            after = int(raw)
            try:
                yield b"retry: 1000\n\n"
                listed = await live_calls(may_see)
                yield sse("calls", {"calls": listed})
                quiet = 0.0
                while True:
                    chunks, after = await stored_since(after, csrf, business, may_see, whose)
                    for chunk in chunks:
                        yield chunk
                    if len(chunks) >= CATCH_UP_BATCH:  # more to catch up on: no wait
                        continue
                    message = None
                    with trio.move_on_after(CALLS_REFRESH_S):
                        try:
                            message = await receive.receive()
                        except trio.EndOfChannel:  # dropped for falling behind: the browser reconnects
                            return
                    if message is None:  # quiet here: calls on other processes may have come or gone
                        now_listed = await live_calls(may_see)
                        if [(c["sid"], c["state"]) for c in now_listed] != [(c["sid"], c["state"]) for c in listed]:
                            listed = now_listed
                            yield sse("calls", {"calls": listed})
                            quiet = 0.0
                        else:
                            quiet += CALLS_REFRESH_S
                            if quiet >= KEEPALIVE_S:
                                yield b": keepalive\n\n"
                                quiet = 0.0
                    elif message["type"] == "call" and may_see(message.get("business")):
                        yield sse("call", message)
            finally:
                hub.unsubscribe(send)

        response = Response(stream(), content_type="text/event-stream")
        response.timeout = None  # a stream, not a slow response
        response.headers["X-Accel-Buffering"] = "no"
        return response

    # -- calls ------------------------------------------------------------------------------------

    @bp.get("/calls")
    async def calls_page() -> Any:
        finished = [c for c in await daemon.store.list_calls(limit=50, business=scope()) if c.ended_at is not None
                    and sees(c.business)]

        def orders(tx: Any) -> dict[str, int]:
            sids = [c.call_sid for c in finished]
            if not sids:
                return {}
            marks = ",".join("?" * len(sids))
            return {r["call_sid"]: r["id"] for r in tx.execute(
                f"SELECT id, call_sid FROM orders WHERE call_sid IN ({marks})", sids)}

        by_call = await daemon.store.read(orders)
        last = await daemon.store.read(ss.last_event_id)
        rows = [{"c": c, "order": by_call.get(c.call_sid), "placed": _local(c.started_at),
                 "length": _length(c.started_at, c.ended_at)} for c in finished]
        return await page("calls.html", live=await live_calls(), finished=rows, last=last)

    @bp.get("/calls/<sid>")
    async def call_page(sid: str) -> Any:
        found = [c for c in await daemon.store.list_calls(limit=500, business=scope())
                 if c.call_sid == sid and sees(c.business)]
        if not found:
            return refused("no such call", 404)
        c = found[0]
        lines = await daemon.store.transcript(sid)
        order_rows = await daemon.store.read(lambda tx: tx.execute("SELECT id FROM orders WHERE call_sid = ?", (sid,)))
        order_card = await card(order_rows[0]["id"]) if order_rows else None
        return await page("call.html", c=c, lines=lines, order_card=order_card, live=sid in daemon.live,
                          placed=_local(c.started_at), length=_length(c.started_at, c.ended_at))

    @bp.post("/calls/<sid>/takeover")
    async def call_takeover(sid: str) -> Any:
        return await act_on_call(sid, "transferred", "call.takeover")  # /stream-ended then dials TRANSFER_NUMBER

    @bp.post("/calls/<sid>/end")
    async def call_end(sid: str) -> Any:
        return await act_on_call(sid, "ended_by_staff", "call.end")

    # -- the menu's day -----------------------------------------------------------------------------

    def day_business() -> str:
        """The business whose menu day the page shows and changes (an operator's home one if none picked)."""
        own = str(g.account.business)
        return scope() or (own if daemon.businesses.get(own) is not None else daemon.businesses.default.slug)

    async def day_changed(business: str) -> None:
        await daemon.refresh_day(business)  # this process's calls of `business` are told what changed

    @bp.get("/menu")
    async def menu_page() -> Any:
        business = day_business()
        if job_of(business).name != "pizza":
            return await not_pizza()
        day = await daemon.store.read(lambda tx: ss.availability(tx, business))
        menu = job_of(business).menu
        return await page("menu.html", day=day, items=menu.items, sizes=menu.sizes)

    @bp.post("/menu/sold-out")
    async def menu_sold_out() -> Any:
        business = day_business()
        if job_of(business).name != "pizza":
            return refused("this business has no menu", 404)
        form = await request.form
        kind, key, sold_out = form.get("kind", ""), form.get("key", ""), form.get("sold_out") == "1"
        menu = job_of(business).menu
        known = {"item": {i.key for i in menu.items}, "size": set(menu.size_keys)}
        if key not in known.get(kind, set()):
            return refused(f"there is no {kind or 'menu entry'} {key!r} on the menu", 400)
        actor = g.staff.name
        await daemon.store.commit(lambda tx: ss.set_sold_out(tx, actor, kind, key, sold_out, now(), business))
        hub.stored()
        await day_changed(business)
        return done("/staff/menu" + query())

    @bp.post("/menu/closed")
    async def menu_closed() -> Any:
        business = day_business()
        if job_of(business).name != "pizza":
            return refused("this business has no menu", 404)
        form = await request.form
        closed, message = form.get("closed") == "1", (form.get("message") or "").strip()
        if len(message) > 300:
            return refused("the message for callers is longer than 300 characters", 400)
        actor = g.staff.name
        await daemon.store.commit(lambda tx: ss.set_closed(tx, actor, closed, message, now(), business))
        hub.stored()
        await day_changed(business)
        return done("/staff/menu" + query())

    # -- the log ------------------------------------------------------------------------------------------

    @bp.get("/log")
    async def log_page() -> Any:
        business = scope()
        events = await daemon.store.read(lambda tx: ss.recent_events(tx, 300, business=business))
        return await page("log.html", events=[{"e": e, "at": e.at.astimezone().strftime("%Y-%m-%d %H:%M:%S")}
                                              for e in events])

    return bp


def _length(start: datetime, end: datetime | None) -> str:
    if end is None:
        return "live"
    seconds = int((end - start).total_seconds())
    return f"{seconds // 60}:{seconds % 60:02d}"
