"""The local Realtime server's strict checks of what a client sends, and small text helpers."""

from __future__ import annotations

import json
import re
from typing import Any


from voicebridge.peers.asr import PCM, PCMA, PCMU



SEMANTIC_SILENCE_MS = {"high": 300, "medium": 600, "auto": 600, "low": 1000}
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
_FORMATS = ({"type": PCMU}, {"type": PCMA}, {"type": PCM, "rate": 24000})
WORDS = re.compile(r"\S+\s*")

def _raw_type(text: str) -> str:
    """The `type` of a raw client frame for the log (never its content)."""
    try:
        kind = json.loads(text).get("type")
    except (ValueError, AttributeError):
        return "invalid"
    return kind[:60] if isinstance(kind, str) else "invalid"


def _spoken_text(output: str) -> str | None:
    """`read_back` (or `error`) text of a tool output: what the model reads out next."""
    try:
        data = json.loads(output)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for key in ("read_back", "error"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            return str(value["message"])
    return None


def _words_upto(transcript: str, fraction: float) -> str:
    """The words of `transcript` heard when `fraction` of its audio played."""
    words = WORDS.findall(transcript.strip())
    total = max(1, sum(len(w) for w in words))
    out, chars = [], 0
    for word in words:
        chars += len(word)
        if chars / total > fraction:
            break
        out.append(word)
    return "".join(out).rstrip()


def _session_problem(s: dict[str, Any]) -> tuple[str, str, str] | None:
    """(message, code, param) for a value the service rejects, beyond what `parse_client` checks."""
    audio = s.get("audio") or {}
    audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
    vad = audio_in.get("turn_detection")
    base = "session.audio.input.turn_detection."
    if isinstance(vad, dict):
        if vad.get("type") not in ("server_vad", "semantic_vad"):
            return "Invalid value for 'turn_detection.type'.", "invalid_value", base + "type"
        checks = [("threshold", 0.0, 1.0), ("prefix_padding_ms", 0, 10_000), ("silence_duration_ms", 0, 10_000),
                  ("idle_timeout_ms", 0, 3_600_000)]
        for key, lo, hi in checks:
            value = vad.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"Invalid type for '{base}{key}': expected a number.", "invalid_type", base + key
            if not lo <= value <= hi:
                return (f"Invalid '{base}{key}': expected a value between {lo} and {hi}, but got {value} instead.",
                        "invalid_value", base + key)
        for key in ("create_response", "interrupt_response"):
            if key in vad and not isinstance(vad[key], bool):
                return f"Invalid type for '{base}{key}': expected a boolean.", "invalid_type", base + key
        if vad.get("type") == "semantic_vad" and vad.get("eagerness", "auto") not in SEMANTIC_SILENCE_MS:
            return "Invalid value for 'turn_detection.eagerness'.", "invalid_value", base + "eagerness"
    elif vad is not None:
        return "Invalid type for 'turn_detection': expected an object or null.", "invalid_type", base.rstrip(".")
    voice = audio_out.get("voice")
    if voice is not None and not (voice in VOICES or (isinstance(voice, dict) and isinstance(voice.get("id"), str))):
        return f"Invalid value: '{voice}'. Supported values are: " + ", ".join(f"'{v}'" for v in VOICES) + ".", \
            "invalid_value", "session.audio.output.voice"
    speed = audio_out.get("speed")
    bad_speed = isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 1.5
    if speed is not None and bad_speed:
        return "Invalid 'session.audio.output.speed': expected a value between 0.25 and 1.5.", "invalid_value", \
            "session.audio.output.speed"
    tools = s.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "Invalid type for 'session.tools': expected an array.", "invalid_type", "session.tools"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                return f"Invalid value for 'session.tools[{i}].type'.", "invalid_value", f"session.tools[{i}].type"
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                return (f"Missing required parameter: 'session.tools[{i}].name'.", "missing_required_parameter",
                        f"session.tools[{i}].name")
    tokens = s.get("max_output_tokens")
    if tokens is not None and tokens != "inf" and (isinstance(tokens, bool) or not isinstance(tokens, int)
                                                   or not 1 <= tokens <= 4096):
        return "Invalid 'session.max_output_tokens': expected an integer 1-4096 or 'inf'.", "invalid_value", \
            "session.max_output_tokens"
    return None


def _response_problem(params: dict[str, Any]) -> tuple[str, str, str] | None:
    """(message, code, param) for response.create parameters the service rejects."""
    metadata = params.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or len(metadata) > 16 or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                for k, v in metadata.items()):
            return ("Invalid 'response.metadata': expected at most 16 string keys (64 characters) with string values "
                    "(512 characters).", "invalid_type", "response.metadata")
    fmt = ((params.get("audio") or {}).get("output") or {}).get("format")
    if fmt is not None and fmt not in _FORMATS:
        return "Invalid value for 'response.audio.output.format'.", "invalid_value", "response.audio.output.format"
    modalities = params.get("output_modalities")
    if modalities is not None and modalities not in (["audio"], ["text"]):
        return "Invalid value for 'response.output_modalities'.", "invalid_value", "response.output_modalities"
    if params.get("conversation", "auto") not in ("auto", "none"):
        return "Invalid value for 'response.conversation'.", "invalid_value", "response.conversation"
    return None
