"""A local order webhook receiver, for the demo and the tests (trio + h11, 127.0.0.1).

It checks what a real shop endpoint should check: the HMAC signature over
f"{timestamp}.{body}" and a fresh timestamp; it dedupes by Idempotency-Key and records
each new delivery. Tests can make it answer 500, hang past the client's timeout, record
and then hang (the shop got it, the answer was lost), or go down and come back up on the
same port.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import time
from typing import Any, Callable

import attrs
import h11
import trio

MAX_BODY = 1 << 20
READ_TIMEOUT_S = 30.0
HANG_MAX_S = 300.0


class Behavior(enum.Enum):
    """How the receiver answers a POST."""

    OK = "ok"  # verify, dedupe, record, 200
    FAIL = "fail"  # answer `fail_status` (500) without recording
    HANG = "hang"  # never answer, record nothing (until the client gives up)
    ACCEPT_THEN_HANG = "accept_then_hang"  # verify and record, then never answer


@attrs.frozen
class RequestRecord:
    """One request as the receiver saw it."""

    key: str | None
    status: int | None  # None when it never answered
    duplicate: bool
    problem: str | None  # why it was rejected, if it was


def summary_line(payload: dict[str, Any]) -> str:
    """ "webhook received order #1: 2 items, total $32.94", or for a booking
    "webhook received booking.created #1: haircut at 2026-12-08T14:00:00-05:00 for Sam" """
    if "booking_id" in payload:
        return (f"webhook received {payload.get('event')} #{payload.get('booking_id')}: {payload.get('service_name')} "
                f"at {payload.get('start')} for {payload.get('customer')}")
    items = payload.get("items") or []
    count = sum(int(i.get("quantity", 1)) for i in items if isinstance(i, dict))
    noun = "item" if count == 1 else "items"
    return f"webhook received order #{payload.get('order_id')}: {count} {noun}, total ${payload.get('total')}"


class Receiver:
    """The running receiver: where it listens and what it got."""

    def __init__(
        self,
        *,
        secret: str,
        host: str,
        port: int,
        tolerance_s: float,
        announce: Callable[[str], None] | None,
        clock: Callable[[], float],
    ) -> None:
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}/orders"
        self.received: list[dict[str, Any]] = []  # payloads of new deliveries, in order
        self.requests: list[RequestRecord] = []  # every POST, duplicates and failures too
        self.behavior = Behavior.OK
        self.fail_status = 500
        self._secret = secret.encode()
        self._tolerance_s = tolerance_s
        self._announce = announce
        self._clock = clock
        self._keys: dict[str, int] = {}
        self._changed = trio.Event()
        self._serving: trio.CancelScope | None = None
        self._up = trio.Event()
        self._down = trio.Event()
        self._want_up = trio.Event()
        self._want_up.set()

    @property
    def keys(self) -> list[str]:
        """Idempotency keys of the recorded deliveries, unique, in order."""
        return list(self._keys)

    async def wait_for(self, count: int) -> None:
        """Return once `count` deliveries are recorded (the caller bounds the wait)."""
        while len(self.received) < count:
            await self._changed.wait()

    async def wait_for_requests(self, count: int) -> None:
        """Return once `count` requests arrived, answered or not."""
        while len(self.requests) < count:
            await self._changed.wait()

    async def go_down(self) -> None:
        """Close the port and every open connection; requests are refused until `come_up`."""
        if self._serving is None:
            return
        self._want_up = trio.Event()
        self._down = trio.Event()
        self._serving.cancel()
        await self._down.wait()

    async def come_up(self) -> None:
        """Listen again on the same port."""
        if self._want_up.is_set():
            return
        self._up = trio.Event()
        self._want_up.set()
        await self._up.wait()

    def _note(self, record: RequestRecord) -> None:
        self.requests.append(record)
        self._changed.set()
        self._changed = trio.Event()

    # -- serving

    async def _run(self, first: list[trio.SocketListener]) -> None:
        listeners: list[trio.SocketListener] | None = first
        while True:
            await self._want_up.wait()
            if listeners is None:
                listeners = await trio.open_tcp_listeners(self.port, host=self.host)
            with trio.CancelScope() as scope:
                self._serving = scope
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trio.serve_listeners, self._handle, listeners)
                    self._up.set()
            self._serving = None
            listeners = None  # serve_listeners closed them
            self._down.set()

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16_384)
            for _ in range(1000):  # requests per connection
                try:
                    with trio.fail_after(READ_TIMEOUT_S):
                        request = await _read_request(conn, stream)
                except (trio.TooSlowError, trio.BrokenResourceError, h11.RemoteProtocolError):
                    return
                if request is None:
                    return
                head, body = request
                try:
                    answer = await self._respond(head, body, stream)
                    if answer is None:  # told to hang: the client gave up
                        return
                    await _send(conn, stream, *answer)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return

    async def _respond(
        self, head: h11.Request, body: bytes, stream: trio.SocketStream
    ) -> tuple[int, dict[str, Any]] | None:
        """The status and JSON answer, or None after hanging until the client closed."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
        key = headers.get("idempotency-key")
        if head.method != b"POST":
            self._note(RequestRecord(key, 405, False, "not a POST"))
            return 405, {"error": "POST only"}
        if self.behavior is Behavior.FAIL:
            self._note(RequestRecord(key, self.fail_status, False, "told to fail"))
            return self.fail_status, {"error": "failing on purpose"}
        if self.behavior is Behavior.HANG:
            self._note(RequestRecord(key, None, False, "told to hang"))
            await _wait_closed(stream)
            return None
        problem, payload = self._verify(headers, body)
        if problem is not None:
            status = 400 if problem.startswith("bad request") else 401
            self._note(RequestRecord(key, status, False, problem))
            return status, {"error": problem}
        assert key is not None and payload is not None
        duplicate = key in self._keys
        if not duplicate:
            self._keys[key] = len(self.received)
            self.received.append(payload)
            if self._announce is not None:
                self._announce(summary_line(payload))
        if self.behavior is Behavior.ACCEPT_THEN_HANG:
            self._note(RequestRecord(key, None, duplicate, None))
            await _wait_closed(stream)
            return None
        self._note(RequestRecord(key, 200, duplicate, None))
        return 200, {"ok": True, "duplicate": duplicate}

    def _verify(self, headers: dict[str, str], body: bytes) -> tuple[str | None, dict[str, Any] | None]:
        key = headers.get("idempotency-key")
        if not key:
            return "bad request: no Idempotency-Key header", None
        raw_ts = headers.get("x-voicebridge-timestamp", "")
        if not raw_ts.isdigit():
            return "bad request: X-Voicebridge-Timestamp is not unix seconds", None
        if abs(self._clock() - int(raw_ts)) > self._tolerance_s:
            return "stale timestamp", None
        expected = hmac.new(self._secret, raw_ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        given = headers.get("x-voicebridge-signature", "")
        if not hmac.compare_digest(given.encode(), f"sha256={expected}".encode()):
            return "bad signature", None
        try:
            payload = json.loads(body)
        except ValueError:
            return "bad request: the body is not JSON", None
        if not isinstance(payload, dict):
            return "bad request: the body is not a JSON object", None
        return None, payload


async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> tuple[h11.Request, bytes] | None:
    head: h11.Request | None = None
    body = bytearray()
    for _ in range(10_000):
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65_536))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError("body too large")
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return head, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None
        else:
            return None
    return None


async def _send(conn: h11.Connection, stream: trio.SocketStream, status: int, answer: dict[str, Any]) -> None:
    data = json.dumps(answer).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    await stream.send_all(conn.send(h11.Data(data=data)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _wait_closed(stream: trio.SocketStream) -> None:
    """Read and drop bytes until the client closes (it gave up waiting), at most HANG_MAX_S."""
    with trio.move_on_after(HANG_MAX_S):
        for _ in range(10_000):
            if not await stream.receive_some(65_536):
                return


async def serve_webhook_receiver(
    *,
    secret: str,
    host: str = "127.0.0.1",
    port: int = 0,
    tolerance_s: float = 300.0,
    announce: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[Receiver] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `nursery.start` returns the `Receiver` (with `.url`).

    `announce` gets a one-line summary per new delivery (the demo passes `print`).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    receiver = Receiver(secret=secret, host=host, port=bound, tolerance_s=tolerance_s, announce=announce, clock=clock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver._run, listeners)
        await receiver._up.wait()
        task_status.started(receiver)
