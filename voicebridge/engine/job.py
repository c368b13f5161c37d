"""The Job seam: what a business wants done on the phone, as the call engine sees it.

A job (the pizza shop's orders, the appointment book, ...) gives the engine:
- its words: the session instructions (with the business's local date and time at call start)
  and the few fixed prompts the flow asks the model to say (`JobPrompts`);
- its tools: the GA function definitions and a pure runner `run_tool(task, name, arguments)`
  that validates every argument server-side and answers a `ToolResult`;
- its task: the thing being built during the call (an order, a booking request), created
  empty per call, and its state as the model is told it after a reconnect;
- its commit: `commit(tx, call_sid, task, now)`, run by the store inside ONE transaction
  together with the outbox events it queues, and only after the caller's yes;
- its schema: the job's own tables, as migrations the store applies.

The engine (flow, session, edges, store plumbing, outbox) imports no job; a job imports no I/O:
its commit only calls the `Transaction` it is handed.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Awaitable, Callable, Protocol, Sequence

import attrs

# What a successful tool call asks the flow to do next.
INTENTS = ("review", "confirm", "reject", "transfer", "end_call")


@attrs.frozen
class ToolResult:
    """The outcome of one tool call."""

    output: dict[str, Any]  # JSON-able; sent as the function_call_output's `output` (a JSON string)
    ok: bool  # False when arguments were invalid; output then has "error": text the model can say back
    intent: str | None  # None or one of INTENTS
    changed: bool  # True when the task (order, booking request) was modified

    def output_json(self) -> str:
        """`output` as the JSON string the Realtime API expects."""
        return json.dumps(self.output, ensure_ascii=False)


@attrs.frozen
class JobPrompts:
    """The per-response instructions the flow gives the model at fixed moments of every call."""

    greeting: str
    confirmed_by_keypad: str  # the caller pressed 1 and the commit succeeded
    save_failed: str  # the commit failed: apologise, offer a person
    not_read_back: str  # a confirm before the read-back was heard: the tool error the model says
    transfer: str  # the caller asked for a person: what to say before the transfer
    saved_as: str  # a system note after a keypad confirmation, with "{id}": "The order is saved as number {id}."


@attrs.frozen
class Committed:
    """What a commit made: its id (order number, booking number) and a summary for the model."""

    id: int
    summary: dict[str, Any]


class Transaction(Protocol):
    """The store's open transaction, as a job's commit sees it (`?` placeholders in every dialect)."""

    business: str  # the business (slug) the task is for: a job stores it on its rows

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run one statement; returns its rows (empty for statements without rows)."""
        ...

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT into a table with an integer `id` key; returns the new row's id."""
        ...

    def enqueue(self, event: str, subject: str, payload: dict[str, Any], target: str = "webhook") -> None:
        """Queue a delivery in this transaction: a signed webhook event (`event`, e.g. "order.created"),
        or with another `target` (e.g. "calendar") a write that target's sender performs."""
        ...


# Awaited by the call before a tool runs: (task, tool name, arguments json). It loads what the
# tool needs from outside the pure job (stored bookings, a calendar's busy times) into the task.
PrepareTool = Callable[[Any, str, str], Awaitable[None]]


class BusySource(Protocol):
    """An external calendar's busy times (events booked by hand block those slots for the phone too)."""

    async def busy(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """Busy intervals overlapping [start, end), as UTC-aware (start, end) pairs."""
        ...


class CommitError(Exception):
    """The task cannot be committed (incomplete, or no longer valid); the message can be said back."""


class Job(Protocol):
    """One job of the phone line. Implementations live in `voicebridge.jobs.<name>`."""

    @property
    def name(self) -> str:
        """"pizza", "appointments": the key of the job's tables and settings."""
        ...

    @property
    def business_name(self) -> str: ...

    @property
    def languages(self) -> tuple[str, ...]:
        """The business's languages, the first the default: one is the transcription's language; with
        several the transcription detects it and the model says the caller's with a `set_language` tool."""
        ...

    @property
    def prompts(self) -> JobPrompts: ...

    @property
    def schema(self) -> tuple[tuple[str, ...], ...]:
        """The job's own migrations, in order; never edit a released one."""
        ...

    def instructions(self, now: datetime) -> str:
        """The session instructions, given the business's local time when the call starts."""
        ...

    def tool_definitions(self) -> list[dict[str, Any]]: ...

    def new_task(self, caller_number: str | None) -> Any:
        """The empty task of a new call (knowing the caller's number, if any)."""
        ...

    def run_tool(self, task: Any, name: str, arguments: str, now: datetime) -> ToolResult: ...

    def state_for_model(self, task: Any) -> dict[str, Any]:
        """The task as the model is told it when a call moves to a new Realtime session."""
        ...

    def commit(self, tx: Transaction, call_sid: str | None, task: Any, now: datetime) -> Committed:
        """Write the confirmed task and its outbox events through `tx`; raise CommitError if it cannot."""
        ...
