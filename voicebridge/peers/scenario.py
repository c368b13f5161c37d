"""Scenarios: what the local caller does and how the local Realtime model answers.

One TOML file per scenario (`voicebridge/peers/scenarios/NAME.toml`) drives both local peers;
`job = "appointments"` says it is a call for that job (default: pizza), and `business =
"example_menu_es.toml"` names the job's packaged business file its calls are for (default: the
configured one):

- `[[caller]]` steps, run in order by the local Twilio caller. Each step waits, then acts:
  - `wait = "heard"`: assistant audio has arrived since the previous step and all of it has
    been played out, followed by `ms` of quiet (the caller answers when the AI has finished);
  - `wait = "playing"`: assistant audio has been playing for `ms` in the current answer
    (a barge-in: the caller talks over the AI);
  - `wait = "time"`: `ms` after the previous step.
  Then exactly one action: `say = "<caller clip>"`, `dtmf = "<digit>"`, `hangup = true`
  (Twilio `stop`, then close), or `silence = true` (do nothing: stay on the line). After the
  last step the caller stays on the line, streaming silence, until the bridge ends the stream.
- `[assistant]` rules, used by the local Realtime server:
  - `[assistant.on_purpose]`: the reply to a `response.create` whose `metadata.purpose` is the key
    (`greeting`, `reprompt`, `goodbye`, `transfer`, `resume`, ...);
  - `[assistant.on_caller]`: the reply to a caller utterance, keyed by the caller clip the
    server recognised in the audio it received;
  - `fallback`: the reply when nothing matches.
  A reply is a chain of responses. Each response speaks (`say = "<assistant clip>"`), calls a
  tool (`call = "<tool>"`, `args = {...}`), or both (spoken first, as a model says "goodbye" and
  then calls `end_call`); after a tool call, the next response of the chain answers the bridge's
  `response.create` that follows the tool output. A spoken reply right after a tool output that
  carries `read_back` (or `error`) has that text as its transcript: the model reads what the
  bridge gave it.
- `[[faults]]`: things the local Realtime server does wrong once, e.g.
  `{ kind = "drop", after_audio_ms = 1200, response = 3 }`: close the socket abruptly 1.2 s of
  audio into the third response of the call; `{ kind = "stall", after_audio_ms = 400,
  resume_after_ms = 1500 }`: pause the first response 400 ms of audio in and go on 1.5 s later
  (without `resume_after_ms` a stall lasts until the response is cancelled).
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from voicebridge.config import JOBS

WAITS = ("heard", "playing", "time")
CALLER_ACTIONS = ("say", "dtmf", "hangup", "silence")
FAULT_KINDS = ("drop", "stall", "refuse")


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and the field."""


@attrs.frozen
class CallerStep:
    wait: str
    ms: int
    say: str | None = None
    dtmf: str | None = None
    hangup: bool = False
    silence: bool = False


@attrs.frozen
class Reply:
    """One response of a chain: speak a clip, call a tool, or both."""

    say: str | None = None
    call: str | None = None
    args: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Fault:
    kind: str  # "drop": close the socket abruptly; "stall": stop sending mid-response; "refuse": reject the next connect
    response: int = 1  # the n-th response of the connection (1-based) it applies to
    after_audio_ms: int = 0
    times: int = 1  # how many times it happens (connections), for "refuse"
    resume_after_ms: int = 0  # "stall": go on sending after this pause (0: stall until cancelled)


@attrs.frozen
class Scenario:
    name: str
    description: str
    from_number: str
    to_number: str
    caller: tuple[CallerStep, ...]
    on_purpose: dict[str, tuple[Reply, ...]]
    on_caller: dict[str, tuple[Reply, ...]]
    fallback: tuple[Reply, ...]
    faults: tuple[Fault, ...]
    max_s: float  # the caller gives up (hangs up) after this long, whatever happens
    job: str = "pizza"  # the job the scenario's calls are for (its tools and words)
    business: str | None = None  # a business file packaged with the job (voicebridge/jobs/<job>/), if the calls need one

    def business_path(self) -> Path | None:
        """The packaged business file the scenario names, as a path (None: the configured one)."""
        if self.business is None:
            return None
        return Path(str(resources.files(f"voicebridge.jobs.{self.job}") / self.business))


def scenario_names() -> list[str]:
    folder = resources.files("voicebridge.peers") / "scenarios"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A packaged scenario by name (`full_order`), or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return parse_scenario(path.read_text(encoding="utf-8"), str(path))
    folder = resources.files("voicebridge.peers") / "scenarios"
    entry = folder / f"{name_or_path}.toml"
    if not entry.is_file():
        raise ScenarioError(f"no scenario named {str(name_or_path)!r}; known: {', '.join(scenario_names())}")
    return parse_scenario(entry.read_text(encoding="utf-8"), f"{name_or_path}.toml")


def parse_scenario(text: str, source: str) -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    p = _P(source)
    p.keys(data, {"name", "description", "job", "business", "from", "to", "caller", "assistant", "faults", "max_s"}, "")
    job = data.get("job", "pizza")
    if job not in JOBS:
        raise p.err("job", f"expected one of {', '.join(JOBS)}, got {job!r}")
    business = data.get("business")
    if business is not None and (not isinstance(business, str) or not business.endswith(".toml")
                                 or "/" in business or "\\" in business
                                 or not (resources.files(f"voicebridge.jobs.{job}") / business).is_file()):
        raise p.err("business", f"expected the name of a business file packaged with the {job} job, got {business!r}")
    steps = tuple(p.step(s, f"caller[{i}]") for i, s in enumerate(p.list(data, "caller")))
    assistant = data.get("assistant", {})
    p.keys(assistant, {"on_purpose", "on_caller", "fallback"}, "assistant.")
    on_purpose = {k: p.chain(v, f"assistant.on_purpose.{k}") for k, v in assistant.get("on_purpose", {}).items()}
    on_caller = {k: p.chain(v, f"assistant.on_caller.{k}") for k, v in assistant.get("on_caller", {}).items()}
    fallback = p.chain(assistant.get("fallback", [{"say": "a_sorry_go_ahead"}]), "assistant.fallback")
    faults = tuple(p.fault(f, f"faults[{i}]") for i, f in enumerate(data.get("faults", [])))
    return Scenario(
        name=str(data.get("name", Path(source).stem)),
        description=str(data.get("description", "")),
        from_number=str(data.get("from", "+15551230001")),
        to_number=str(data.get("to", "+15559870000")),
        caller=steps,
        on_purpose=on_purpose,
        on_caller=on_caller,
        fallback=fallback,
        faults=faults,
        max_s=float(data.get("max_s", 120.0)),
        job=str(job),
        business=business,
    )


class _P:
    def __init__(self, source: str) -> None:
        self.source = source

    def err(self, where: str, msg: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {where}: {msg}")

    def keys(self, obj: Any, allowed: set[str], where: str) -> None:
        if not isinstance(obj, dict):
            raise self.err(where.rstrip(".") or "top level", "expected a table")
        for key in obj:
            if key not in allowed:
                raise self.err(where + key, f"unknown key (expected one of {', '.join(sorted(allowed))})")

    def list(self, data: dict[str, Any], key: str) -> list[Any]:
        value = data.get(key, [])
        if not isinstance(value, list):
            raise self.err(key, "expected an array of tables")
        return value

    def step(self, s: Any, where: str) -> CallerStep:
        self.keys(s, {"wait", "ms", *CALLER_ACTIONS}, where + ".")
        wait = s.get("wait", "time")
        if wait not in WAITS:
            raise self.err(where + ".wait", f"expected one of {', '.join(WAITS)}, got {wait!r}")
        ms = s.get("ms", 0)
        if not isinstance(ms, int) or ms < 0:
            raise self.err(where + ".ms", "expected a whole number of milliseconds >= 0")
        actions = [a for a in CALLER_ACTIONS if a in s]
        if len(actions) != 1:
            raise self.err(where, f"expected exactly one action of {', '.join(CALLER_ACTIONS)}")
        if "dtmf" in s and (not isinstance(s["dtmf"], str) or len(s["dtmf"]) != 1 or s["dtmf"] not in "0123456789*#"):
            raise self.err(where + ".dtmf", "expected one digit 0-9, * or #")
        if "say" in s and not isinstance(s["say"], str):
            raise self.err(where + ".say", "expected a caller clip name")
        return CallerStep(wait=wait, ms=ms, say=s.get("say"), dtmf=s.get("dtmf"),
                          hangup=bool(s.get("hangup", False)), silence=bool(s.get("silence", False)))

    def chain(self, value: Any, where: str) -> tuple[Reply, ...]:
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.err(where, "expected a reply table or a non-empty array of them")
        out = []
        for i, r in enumerate(value):
            w = f"{where}[{i}]"
            self.keys(r, {"say", "call", "args"}, w + ".")
            if "say" not in r and "call" not in r:
                raise self.err(w, "a reply says a clip (say), calls a tool (call), or both (spoken first)")
            args = r.get("args", {})
            if not isinstance(args, dict):
                raise self.err(w + ".args", "expected a table of tool arguments")
            out.append(Reply(say=r.get("say"), call=r.get("call"), args=dict(args)))
        return tuple(out)

    def fault(self, f: Any, where: str) -> Fault:
        self.keys(f, {"kind", "response", "after_audio_ms", "times", "resume_after_ms"}, where + ".")
        if f.get("kind") not in FAULT_KINDS:
            raise self.err(where + ".kind", f"expected one of {', '.join(FAULT_KINDS)}")
        if "resume_after_ms" in f and f["kind"] != "stall":
            raise self.err(where + ".resume_after_ms", "only a stall resumes")
        return Fault(kind=f["kind"], response=int(f.get("response", 1)),
                     after_audio_ms=int(f.get("after_audio_ms", 0)), times=int(f.get("times", 1)),
                     resume_after_ms=int(f.get("resume_after_ms", 0)))
