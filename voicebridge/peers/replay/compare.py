"""Replay, part 4: comparing what the bridge sent with the recording, message by message."""

from __future__ import annotations

import contextlib

import binascii
import json
import math
from typing import Any

import attrs

from voicebridge.peers.replay.plan import ALIGN_WINDOW, AUDIO_FIELDS, TEXT_DIFFERENCES, Expected, Plan, is_bulk_audio



# -- the replay ----------------------------------------------------------------------------------------


@attrs.frozen
class Difference:
    """One way the bridge's messages on a socket differ from the recording."""

    socket: str
    index: int  # the message's index among the recorded bridge messages on this socket (extra: where it came)
    kind: str  # "content", "missing", "extra", "timing"
    message: str
    t_expected: float | None = None
    t_got: float | None = None

    def line(self) -> str:
        t = self.t_expected if self.t_expected is not None else self.t_got
        at = f" ({t:.3f} s)" if t is not None else ""
        return f"{self.socket} #{self.index}{at}: {self.kind}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class ReplayReport:
    """The outcome of replaying one recording."""

    file: str
    bridge_messages: int = 0  # recorded bridge messages (and bridge closes) compared
    differences: list[Difference] = attrs.field(factory=list)
    error: str | None = None  # the replay itself failed (a webhook answered with an error, ...)
    compared: bool = False  # the stream ran and the bridge's messages were compared
    outcome: str | None = None  # the call's outcome in the daemon
    twiml: list[str] = attrs.field(factory=list)  # the verbs of the TwiML that continues the call
    connections_recorded: int = 0
    connections_replayed: int = 0
    undelivered: int = 0  # recorded peer messages that could not be sent (the socket was gone)
    boundary_frames: int = 0  # caller-audio frames forwarded on the other side of a connection's start or end
    max_skew_s: float = 0.0  # largest time difference of a matching message
    notes: list[str] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.compared and not self.differences

    def summary(self) -> str:
        if not self.compared:
            return f"{self.file}: replay failed: {self.error}"
        plural = "" if len(self.differences) == 1 else "s"
        twiml = "".join(f"<{v}>" for v in self.twiml) or "nothing"
        failed = f"; then the replay failed: {self.error}" if self.error is not None else ""
        return (f"{self.file}: {self.bridge_messages} bridge messages, {len(self.differences)} difference{plural} "
                f"(call outcome {self.outcome}; Twilio continues with {twiml}; largest time skew "
                f"{self.max_skew_s * 1000:.0f} ms){failed}")

    def text(self, limit: int = TEXT_DIFFERENCES) -> str:
        out = [self.summary()]
        out += [f"  {d.line()}" for d in self.differences[:limit]]
        if len(self.differences) > limit:
            out.append(f"  ... and {len(self.differences) - limit} more (--json lists them all)")
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["differences"] = [d.to_json() for d in self.differences]
        data["ok"] = self.ok
        return data



# -- comparison ----------------------------------------------------------------------------------


@attrs.frozen
class _Item:
    t: float
    key: str
    tolerant: dict[str, float]
    msg: dict[str, Any] | None
    text: str | None  # raw, when not JSON
    is_close: bool
    close_code: int | None


def _normalise(msg: dict[str, Any] | None, raw: str | None, is_close: bool,
               code: int | None) -> tuple[str, dict[str, float]]:
    """The comparison key of a message (what legitimately varies dropped) and its time-like fields."""
    if is_close:
        return f"close:{code}", {}
    if msg is None:
        return "raw:" + (raw or ""), {}
    body = {k: v for k, v in msg.items() if k != "event_id"}
    tolerant: dict[str, float] = {}
    end = body.get("audio_end_ms")
    if body.get("type") == "conversation.item.truncate" and isinstance(end, (int, float)) and not isinstance(end, bool):
        tolerant["audio_end_ms"] = float(body.pop("audio_end_ms"))
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False), tolerant


def _expected_items(expected: tuple[Expected, ...]) -> list[_Item]:
    out = []
    for e in expected:
        key, tolerant = _normalise(e.msg, e.raw, e.is_close, e.close_code)
        out.append(_Item(e.t, key, tolerant, e.msg, e.raw, e.is_close, e.close_code))
    return out


def _observed_items(sock: Any, t0: float) -> list[_Item]:
    out = []
    for o in sock.received:
        msg = None
        if o.text is not None:
            with contextlib.suppress(ValueError):  # not JSON: compared as raw text below
                parsed = json.loads(o.text)
                msg = parsed if isinstance(parsed, dict) else None
        raw = o.text if msg is None else None
        key, tolerant = _normalise(msg, raw, o.is_close, o.close_code)
        out.append(_Item(o.t - t0, key, tolerant, msg, raw, o.is_close, o.close_code))
    return out


def align(expected: list[str], got: list[str], window: int = ALIGN_WINDOW) -> list[tuple[str, int, int]]:
    """Pair two message sequences in order: ("match"|"change", i, j), ("missing", i, j), ("extra", i, j).

    Greedy and linear: equal keys match; a lone replacement is a change; otherwise the nearest
    resynchronisation within `window` decides whether messages are missing or extra. `j` of a
    missing message (and `i` of an extra one) is where it would have been in the other sequence.
    """
    ops: list[tuple[str, int, int]] = []
    i = j = 0
    while i < len(expected) and j < len(got):
        if expected[i] == got[j]:
            ops.append(("match", i, j))
            i, j = i + 1, j + 1
            continue
        if i + 1 < len(expected) and j + 1 < len(got) and expected[i + 1] == got[j + 1]:
            ops.append(("change", i, j))
            i, j = i + 1, j + 1
            continue
        step: tuple[str, int] | None = None
        for k in range(1, window + 1):
            if i + k < len(expected) and expected[i + k] == got[j]:
                step = ("missing", k)
                break
            if j + k < len(got) and got[j + k] == expected[i]:
                step = ("extra", k)
                break
            if i + k >= len(expected) and j + k >= len(got):
                break
        if step is None:
            ops.append(("change", i, j))
            i, j = i + 1, j + 1
        elif step[0] == "missing":
            ops += [("missing", i + n, j) for n in range(step[1])]
            i += step[1]
        else:
            ops += [("extra", i, j + n) for n in range(step[1])]
            j += step[1]
    ops += [("missing", n, j) for n in range(i, len(expected))]
    ops += [("extra", i, n) for n in range(j, len(got))]
    return ops


def lanes(socket: str, items: list[_Item]) -> dict[str, list[int]]:
    """Positions of a socket's messages per lane, each compared in order on its own.

    On a Realtime socket the forwarded caller audio (paced by Twilio's frames) and the control
    events (driven by the model's events and the bridge's timers) are independent streams: how
    they interleave is a matter of timing, checked separately. Twilio's messages are one lane.
    """
    out: dict[str, list[int]] = {}
    for n, item in enumerate(items):
        lane = "audio" if socket != "twilio" and is_bulk_audio(socket, item.msg) else "control"
        out.setdefault(lane, []).append(n)
    return out


def compare(plan: Plan, got: dict[str, Any], t0: float, tolerance_s: float, report: ReplayReport) -> None:
    """Fill `report` with the differences between the recorded and the replayed bridge messages."""
    sockets = sorted(set(plan.expected) | {name for name, sock in got.items() if sock.received},
                     key=lambda s: (s != "twilio", int(s.split("#")[1]) if "#" in s else 0))
    found: list[Difference] = []
    for name in sockets:
        exp = _expected_items(plan.expected.get(name, ()))
        obs = _observed_items(got[name], t0) if name in got else []
        span = plan.spans.get(name)
        exp_lanes, obs_lanes = lanes(name, exp), lanes(name, obs)
        for lane in sorted(set(exp_lanes) | set(obs_lanes)):
            ei, oi = exp_lanes.get(lane, []), obs_lanes.get(lane, [])

            def at(i: int, ei: list[int] = ei, n_exp: int = len(exp)) -> int:  # lane position -> socket index
                return ei[i] if i < len(ei) else n_exp

            ops = align([exp[i].key for i in ei], [obs[j].key for j in oi])
            for op, i, j in ops:
                if op == "match":
                    e, o = exp[ei[i]], obs[oi[j]]
                    skew = o.t - e.t
                    report.max_skew_s = max(report.max_skew_s, abs(skew))
                    if abs(skew) > tolerance_s:
                        found.append(Difference(
                            name, ei[i], "timing", f"{describe(e)}: sent at {o.t:.3f} s, recorded at {e.t:.3f} s "
                            f"({skew:+.3f} s; tolerance {tolerance_s:g} s)", e.t, o.t))
                    for field, value in e.tolerant.items():
                        other = o.tolerant.get(field, math.nan)
                        if not abs(other - value) <= tolerance_s * 1000:
                            found.append(Difference(
                                name, ei[i], "timing", f"{describe(e)}: {field} {other:g}, recorded {value:g} "
                                f"(more than {tolerance_s * 1000:g} ms apart)", e.t, o.t))
                elif op == "change":
                    found.append(Difference(name, ei[i], "content", content_difference(exp[ei[i]], obs[oi[j]]),
                                            exp[ei[i]].t, obs[oi[j]].t))
                elif op == "missing":
                    e = exp[ei[i]]
                    if lane == "audio" and _near_span([exp[k] for k in ei], i, span, tolerance_s):
                        report.boundary_frames += 1
                        continue
                    found.append(Difference(
                        name, ei[i], "missing", f"{describe(e)} was not sent (recorded at {e.t:.3f} s)", e.t, None))
                else:
                    o = obs[oi[j]]
                    if lane == "audio" and _near_span([obs[k] for k in oi], j, span, tolerance_s):
                        report.boundary_frames += 1
                        continue
                    found.append(Difference(
                        name, at(i), "extra", f"{describe(o)} sent at {o.t:.3f} s is not in the recording", None, o.t))
    report.differences += sorted(found, key=lambda d: (sockets.index(d.socket), d.index))


def _near_span(items: list[_Item], n: int, span: tuple[float, float] | None, tolerance_s: float) -> bool:
    """Whether unmatched caller audio `items[n]` may be a frame on the other side of its connection's start or end.

    Identical frames (a run of silence) cannot be told apart, so any frame of the run it is in
    counts: the run must come within `tolerance_s` of the connection's first or last recorded line.
    """
    if span is None:
        return False
    lo = hi = n
    while lo > 0 and items[lo - 1].key == items[n].key:
        lo -= 1
    while hi + 1 < len(items) and items[hi + 1].key == items[n].key:
        hi += 1
    first, last = span
    return items[lo].t <= first + tolerance_s or items[hi].t >= last - tolerance_s


def describe(item: _Item) -> str:
    """A short name for a message: its type and what identifies it (never its audio)."""
    if item.is_close:
        return f"close (code {item.close_code})"
    msg = item.msg
    if msg is None:
        return f"non-JSON frame of {len(item.text or '')} characters"
    if "event" in msg:  # Twilio
        kind = str(msg.get("event"))
        if kind == "media":
            return f"media ({_b64_size(_get(msg, 'media', 'payload'))})"
        if kind == "mark":
            return f"mark {str(_get(msg, 'mark', 'name'))[:80]!r}"
        return kind
    kind = str(msg.get("type"))
    if kind == "input_audio_buffer.append":
        return f"{kind} ({_b64_size(msg.get('audio'))})"
    if kind == "conversation.item.truncate":
        return f"{kind} of {msg.get('item_id')}"
    if kind == "response.create":
        purpose = _get(msg, "response", "metadata", "purpose")
        return f"{kind}" + (f" (purpose {purpose})" if purpose else "")
    if kind == "conversation.item.create":
        created: Any = msg.get("item") or {}
        return f"{kind} ({created.get('type')})" if isinstance(created, dict) else kind
    return kind


def _get(msg: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(msg, dict):
            return None
        msg = msg.get(key)
    return msg


def _b64_size(value: Any) -> str:
    try:
        return f"{len(binascii.a2b_base64(str(value), strict_mode=True))} bytes"
    except (binascii.Error, ValueError):
        return "not base64"


def content_difference(expected: _Item, got: _Item) -> str:
    """`expected X, got Y`, naming the first differing field; audio as a byte position, never whole."""
    a, b = describe(expected), describe(got)
    if expected.msg is None or got.msg is None or expected.is_close or got.is_close:
        return f"expected {a}, got {b}"
    kind_a = expected.msg.get("event", expected.msg.get("type"))
    kind_b = got.msg.get("event", got.msg.get("type"))
    if kind_a != kind_b:
        return f"expected {a}, got {b}"
    ea = {k: v for k, v in expected.msg.items() if k != "event_id"}
    eb = {k: v for k, v in got.msg.items() if k != "event_id"}
    found = _first_difference(ea, eb, "")
    if found is None:
        return f"{a}: differs"
    path, va, vb = found
    leaf = path.rsplit(".", 1)[-1].split("[")[0]
    if leaf in AUDIO_FIELDS and isinstance(va, str) and isinstance(vb, str):
        return f"{a}: {path}: {_audio_difference(va, vb)}"
    return f"{a}: {path}: expected {_short(va)}, got {_short(vb)}"


def _first_difference(a: Any, b: Any, path: str) -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else key
            if key not in a:
                return sub, "(absent)", b[key]
            if key not in b:
                return sub, a[key], "(absent)"
            found = _first_difference(a[key], b[key], sub)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for n, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}[{n}]")
            if found is not None:
                return found
        if len(a) != len(b):
            return f"{path} length", len(a), len(b)
        return None
    return None if a == b and type(a) is type(b) else (path, a, b)


def _audio_difference(a: str, b: str) -> str:
    try:
        x, y = binascii.a2b_base64(a, strict_mode=True), binascii.a2b_base64(b, strict_mode=True)
    except (binascii.Error, ValueError):
        return f"audio differs (base64 of {len(a)} vs {len(b)} characters)"
    n = next((k for k, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    if n < min(len(x), len(y)):
        return f"audio differs at byte {n} of {len(x)} (expected 0x{x[n]:02x}, got 0x{y[n]:02x})"
    return f"audio length differs: expected {len(x)} bytes, got {len(y)} (equal up to byte {n})"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) or value != "(absent)" else value
    return text if len(text) <= limit else text[: limit - 3] + "..."
