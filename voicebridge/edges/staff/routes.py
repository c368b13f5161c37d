"""The staff page's routes: a Quart blueprint under /staff (registered by `edges.web.create_app`).

Every route but the login form answers a redirect to the login (pages) or 401 (the event stream,
POSTs) without a valid session, and every POST needs the session's CSRF token (403 otherwise).
Pages carry a strict Content-Security-Policy (scripts and styles only from /staff/static), may
not be framed, and are never cached.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator

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

log = logging.getLogger("voicebridge.staff")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
KEEPALIVE_S = 15.0
CATCH_UP_BATCH = 200  # stored events read at a time by a (re)connecting stream
BOARD_DONE_SHOWN = 12  # finished orders still shown at the foot of the board


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
        g.staff = session
        return None

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
        return await render_template(f"staff/{template}", me=g.staff.name, csrf=g.staff.csrf,
                                     shop=daemon.job.business_name, **context)

    async def audit(action: str, subject: str, detail: dict[str, Any] | None = None) -> int:
        event_id: int = await daemon.store.commit(
            lambda tx: ss.record(tx, g.staff.name, action, subject, detail or {}, now()))
        hub.stored()
        return event_id

    def done(back: str) -> Any:
        return Response("", status=204) if wants_json() else redirect(back)

    def refused(message: str, status: int = 409) -> Response:
        return Response(message + "\n", status=status, content_type="text/plain")

    # -- login ------------------------------------------------------------------------------

    @bp.get("/login")
    async def login() -> Any:
        if g.staff is not None:
            return redirect("/staff/")
        return await render_template("staff/login.html", error=None, shop=daemon.job.business_name)

    @bp.post("/login")
    async def login_post() -> Any:
        form = await request.form
        name, password = (form.get("name") or "").strip()[:64], form.get("password") or ""
        address = request.remote_addr or "?"
        wait = limiter.retry_after(name, address)
        if wait > 0:
            log.warning("staff login rate-limited", extra={"event": "staff_login_limited"})
            body = await render_template("staff/login.html", shop=daemon.job.business_name,
                                         error=f"Too many failed logins. Try again in {int(wait) + 1} seconds.")
            return Response(body, status=429, headers={"Retry-After": str(int(wait) + 1)})
        account = await daemon.store.read(lambda tx: ss.get_account(tx, name)) if name else None
        ok = auth.verify_password(account.password_hash if account else None, password)
        if not ok or account is None or account.disabled or (account.expires_at and account.expires_at < now()):
            limiter.failed(name, address)
            body = await render_template("staff/login.html", shop=daemon.job.business_name,
                                         error="Wrong name or password.")
            return Response(body, status=401)
        limiter.succeeded(name)
        value, _ = (await sessions()).new(account.name)
        await daemon.store.commit(lambda tx: ss.record(tx, account.name, "staff.login", f"staff:{account.name}", {}, now()))
        response = redirect("/staff/")
        response.set_cookie(auth.COOKIE, value, max_age=auth.SESSION_MAX_AGE_S, path="/staff", secure=True,
                            httponly=True, samesite="Strict")
        return response

    @bp.post("/logout")
    async def logout() -> Any:
        await audit("staff.logout", f"staff:{g.staff.name}")
        response = redirect("/staff/login")
        response.delete_cookie(auth.COOKIE, path="/staff", secure=True, httponly=True, samesite="Strict")
        return response

    # -- the order board ----------------------------------------------------------------------

    async def order_view(order_id: int) -> dict[str, Any] | None:
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
                "money": format_money, "labels": board.LABEL}

    async def card(order_id: int, csrf: str | None = None) -> str:
        view = await order_view(order_id)
        if view is None:
            return ""
        return await render_template("staff/_order.html", csrf=csrf or g.staff.csrf, **view)

    @bp.get("/")
    async def board_page() -> Any:
        def ids(tx: Any) -> tuple[list[int], list[int], int]:
            active = [r["id"] for r in tx.execute(
                "SELECT id FROM orders WHERE status IN ('confirmed', 'preparing', 'ready') ORDER BY id")]
            finished = [r["id"] for r in tx.execute(
                "SELECT id FROM orders WHERE status IN ('completed', 'cancelled') ORDER BY id DESC LIMIT ?",
                (BOARD_DONE_SHOWN,))]
            return active, finished, ss.last_event_id(tx)

        active, finished, last = await daemon.store.read(ids)
        cards = [await card(i) for i in active]
        done_cards = [await card(i) for i in finished]
        return await page("board.html", cards=cards, done_cards=done_cards, last=last, live=live_calls())

    @bp.post("/orders/<int:order_id>/status")
    async def order_status(order_id: int) -> Any:
        form = await request.form
        to, reason = form.get("to", ""), form.get("reason")

        def run(tx: Any) -> str:
            old = board.move(tx, order_id, to, now(), reason)
            ss.record(tx, g.staff.name, f"order.{to}", f"order:{order_id}",
                      {"from": old, **({"reason": reason.strip()} if to == "cancelled" and reason else {})}, now())
            return old

        try:
            await daemon.store.commit(run)
        except board.StatusError as exc:
            return refused(str(exc))
        hub.stored()
        if to == "ready" and sms.can_text(daemon.config) and daemon.nursery is not None:
            daemon.nursery.start_soon(text_ready, order_id)
        return done("/staff/")

    async def text_ready(order_id: int) -> None:
        """Tell the customer their order is ready (one attempt; the log and board say how it went)."""
        detail = await daemon.store.read(lambda tx: get_order(tx, order_id))
        if detail is None or not detail.phone:
            return
        what = "is ready for pickup" if detail.fulfillment == "pickup" else "is ready and on its way"
        body = f"{daemon.job.business_name}: your order #{order_id} {what}. Thank you!"
        try:
            sid = await sms.send_text(daemon.config, detail.phone, body)
        except OutboundError as exc:
            log.warning("the ready text for order #%d was not sent: %s", order_id, exc,
                        extra={"event": "sms_failed"})
            action, info = "order.text_failed", {"error": str(exc)}
        else:
            action, info = "order.text_sent", {"message_sid": sid}
        await daemon.store.commit(lambda tx: ss.record(tx, None, action, f"order:{order_id}", info, now()))
        hub.stored()

    @bp.post("/orders/<int:order_id>/resend")
    async def order_resend(order_id: int) -> Any:
        from voicebridge.ops.store import StoreError

        try:
            again = await daemon.store.resend(f"order:{order_id}")
        except StoreError as exc:
            return refused(str(exc), 404)
        if not again:
            return refused(f"order #{order_id}'s webhook delivery is not dead: nothing to resend")
        daemon.outbox.wake()
        await audit("order.resend", f"order:{order_id}")
        return done("/staff/")

    # -- the event stream -----------------------------------------------------------------------

    def live_calls() -> list[dict[str, Any]]:
        calls = []
        for sid, call in list(daemon.live.items()):
            started = time.time() - (trio.current_time() - call.started_at)
            calls.append({"sid": sid, "state": call.flow.state, "started_ms": int(started * 1000),
                          "cart": daemon.cart_of(sid)})
        return calls

    def sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
        head = f"id: {event_id}\n" if event_id is not None else ""
        return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

    async def stored_since(after: int, csrf: str) -> tuple[list[bytes], int]:
        out = []
        start = after
        for ev in await daemon.store.read(lambda tx: ss.events_after(tx, start, CATCH_UP_BATCH)):
            after = ev.id
            kind, _, number = ev.subject.partition(":")
            if kind in ("order", daemon.job.name) and number.isdigit():
                out.append(sse("order", {"id": int(number), "action": ev.action, "html": await card(int(number), csrf)}, ev.id))
            else:
                out.append(sse("log", {"action": ev.action, "subject": ev.subject, "actor": ev.actor}, ev.id))
        return out, after

    @bp.get("/events")
    async def events() -> Any:
        raw = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
        if not raw.isdigit() or len(raw) > 18:
            return refused("Last-Event-ID must be a whole number", 400)
        send, receive = hub.subscribe()
        csrf = g.staff.csrf

        @stream_with_context  # the cards are rendered with the request's session (its CSRF token)
        async def stream() -> AsyncIterator[bytes]:
            after = int(raw)
            try:
                yield b"retry: 1000\n\n"
                yield sse("calls", {"calls": live_calls()})
                while True:
                    chunks, after = await stored_since(after, csrf)
                    for chunk in chunks:
                        yield chunk
                    if len(chunks) >= CATCH_UP_BATCH:  # more to catch up on: no wait
                        continue
                    message = None
                    with trio.move_on_after(KEEPALIVE_S):
                        try:
                            message = await receive.receive()
                        except trio.EndOfChannel:  # dropped for falling behind: the browser reconnects
                            return
                    if message is None:
                        yield b": keepalive\n\n"
                    elif message["type"] == "call":
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
        finished = [c for c in await daemon.store.list_calls(limit=50) if c.ended_at is not None]

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
        return await page("calls.html", live=live_calls(), finished=rows, last=last)

    @bp.get("/calls/<sid>")
    async def call_page(sid: str) -> Any:
        found = [c for c in await daemon.store.list_calls(limit=500) if c.call_sid == sid]
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
        call = daemon.live.get(sid)
        if call is None:
            return refused("that call has ended", 404)
        call.end_now("transferred")  # /stream-ended then dials TRANSFER_NUMBER
        await audit("call.takeover", f"call:{sid}")
        return done("/staff/calls")

    @bp.post("/calls/<sid>/end")
    async def call_end(sid: str) -> Any:
        call = daemon.live.get(sid)
        if call is None:
            return refused("that call has ended", 404)
        call.end_now("ended_by_staff")
        await audit("call.end", f"call:{sid}")
        return done("/staff/calls")

    # -- the menu's day -----------------------------------------------------------------------------

    async def day_changed() -> None:
        day = await daemon.refresh_day()
        note = day.note_for_model(daemon.job.menu) or "Everything on the menu is available again, and the shop is open."
        for call in list(daemon.live.values()):
            call.tell_model(f"Update from the shop: {note}")

    @bp.get("/menu")
    async def menu_page() -> Any:
        day = await daemon.store.read(ss.availability)
        menu = daemon.job.menu
        return await page("menu.html", day=day, items=menu.items, sizes=menu.sizes)

    @bp.post("/menu/sold-out")
    async def menu_sold_out() -> Any:
        form = await request.form
        kind, key, sold_out = form.get("kind", ""), form.get("key", ""), form.get("sold_out") == "1"
        menu = daemon.job.menu
        known = {"item": {i.key for i in menu.items}, "size": set(menu.size_keys)}
        if key not in known.get(kind, set()):
            return refused(f"there is no {kind or 'menu entry'} {key!r} on the menu", 400)
        await daemon.store.commit(lambda tx: ss.set_sold_out(tx, g.staff.name, kind, key, sold_out, now()))
        hub.stored()
        await day_changed()
        return done("/staff/menu")

    @bp.post("/menu/closed")
    async def menu_closed() -> Any:
        form = await request.form
        closed, message = form.get("closed") == "1", (form.get("message") or "").strip()
        if len(message) > 300:
            return refused("the message for callers is longer than 300 characters", 400)
        await daemon.store.commit(lambda tx: ss.set_closed(tx, g.staff.name, closed, message, now()))
        hub.stored()
        await day_changed()
        return done("/staff/menu")

    # -- the log ------------------------------------------------------------------------------------------

    @bp.get("/log")
    async def log_page() -> Any:
        events = await daemon.store.read(lambda tx: ss.recent_events(tx, 300))
        return await page("log.html", events=[{"e": e, "at": e.at.astimezone().strftime("%Y-%m-%d %H:%M:%S")}
                                              for e in events])

    return bp


def _length(start: datetime, end: datetime | None) -> str:
    if end is None:
        return "live"
    seconds = int((end - start).total_seconds())
    return f"{seconds // 60}:{seconds % 60:02d}"
