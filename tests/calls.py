"""Run whole calls in memory: the real call engine (`run_call`) between the two local peers.

Used with trio's MockClock (autojump): every socket is an in-memory stream, so virtual time can
jump whenever all tasks wait, and a 60-second call runs in well under a second.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from voicebridge.config import Config
from voicebridge.daemon import make_call_setup
from voicebridge.engine.job import Committed
from voicebridge.jobs.pizza.job import PizzaJob
from voicebridge.jobs.pizza.menu import load_menu
from voicebridge.peers.realtime_server import RealtimePeer
from voicebridge.peers.scenario import Scenario, load_scenario
from voicebridge.peers.twilio_caller import CallerReport, TwilioCaller
from voicebridge.engine.session import CallHooks, CallResult, CallSetup, run_call
from voicebridge.edges.transport import MessageStream, memory_stream_pair

MENU = load_menu(None)


@attrs.define
class InMemoryCall:
    result: CallResult
    report: CallerReport
    peer: RealtimePeer
    events: list[tuple[str, dict[str, Any]]]
    saved_orders: list[Any]

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


class PeerServer:
    """The local Realtime peer as a server of its own: its connections live in its own nursery."""

    def __init__(self, peer: RealtimePeer) -> None:
        self.peer = peer
        self.nursery: trio.Nursery | None = None

    async def connect(self, call_nursery: trio.Nursery) -> MessageStream:
        assert self.nursery is not None, "run the call inside `async with server.serving():`"
        ours, theirs = memory_stream_pair()
        self.nursery.start_soon(lambda: self.peer.handle(theirs, path="/v1/realtime?model=gpt-realtime",
                                                         headers={"authorization": "Bearer test-key"}))
        return ours


def memory_connector(peer: RealtimePeer) -> Any:
    """A connector whose peer connections are served from the nursery `run_in_memory` opens."""
    server = PeerServer(peer)
    _servers[id(peer)] = server
    return server.connect


_servers: dict[int, PeerServer] = {}


def call_setup(peer: RealtimePeer, **config: Any) -> CallSetup:
    cfg = Config(**config)
    return make_call_setup(cfg, PizzaJob(MENU, cfg.tax_rate_bp), memory_connector(peer))


async def run_in_memory(scenario: str | Scenario, *, peer: RealtimePeer | None = None,
                        setup: CallSetup | None = None, save_fails: bool = False, **config: Any) -> InMemoryCall:
    scen = load_scenario(scenario) if isinstance(scenario, str) else scenario
    peer = peer or RealtimePeer(scen)
    setup = setup or call_setup(peer, **config)
    events: list[tuple[str, dict[str, Any]]] = []
    saved: list[Any] = []

    async def commit(call_sid: str, order: Any) -> Committed:
        if save_fails:
            raise OSError("disk full")
        saved.append(order)
        totals = order.totals(MENU, setup.job.tax_rate_bp)
        return Committed(len(saved), {"order_id": len(saved), "subtotal_cents": totals.subtotal_cents,
                                      "tax_cents": totals.tax_cents, "total_cents": totals.total_cents})

    hooks = CallHooks(on_event=lambda sid, kind, fields: events.append((kind, fields)), commit=commit)
    bridge_end, caller_end = memory_stream_pair()
    caller = TwilioCaller(scen)
    out: dict[str, Any] = {}

    async def bridge() -> None:
        out["result"] = await run_call(bridge_end, setup, hooks)

    async def phone() -> None:
        out["report"] = await caller.run_stream(caller_end, {"From": scen.from_number, "To": scen.to_number})

    server = _servers.get(id(peer))
    with trio.fail_after(scen.max_s + 60):
        async with trio.open_nursery() as peers:
            if server is not None:
                server.nursery = peers
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bridge)
                nursery.start_soon(phone)
            await trio.sleep(1.0)  # let the peer see the close, as a separate server would
            peers.cancel_scope.cancel()
    _servers.pop(id(peer), None)
    return InMemoryCall(out["result"], out["report"], peer, events, saved)
