"""The words the engine gives the model at moments every job has (a job's own words are in its package)."""

from __future__ import annotations

from typing import Any

REPROMPT = "The caller has been silent for a while. Ask, in a few words, whether they are still there."
GOODBYE_SILENCE = (
    "The caller is still silent. Say you will hang up now, that they can call back any time, and goodbye. "
    "Do not call any tool."
)
GOODBYE_MAX = "The call has reached its maximum length. Apologise, say goodbye politely. Do not call any tool."
NO_YES_YET = (
    "The caller has not answered the read-back yet. Do not confirm: wait for the caller to say yes (or "
    "press 1), then call the confirming tool again."
)
RESUME = (
    "The line dropped for a moment and has just come back. Apologise in a few words and continue exactly "
    "where the conversation left off."
)


def restore_context(order_state: dict[str, Any], turns: list[tuple[str, str]]) -> str:
    """A system message that carries a call over to a new Realtime session."""
    lines = ["This call continues from an earlier session that was interrupted.",
             f"The order so far (the bridge's record, authoritative): {order_state}"]
    if turns:
        lines.append("The most recent turns, oldest first:")
        lines += [f"- {role}: {text}" for role, text in turns]
    return "\n".join(lines)
