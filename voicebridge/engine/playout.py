"""What the caller has been sent and has really heard: per-item audio accounting from named marks.

Pure bookkeeping, no I/O and no clock of its own: every method that needs the time takes `now`
(seconds, the caller's clock). Audio toward Twilio is µ-law 8 kHz, so 8 bytes = 1 ms.

Positions are bytes in one running coordinate of everything sent to Twilio. Each assistant item
owns a range of it. After each media frame the bridge sends a mark named
`"{item_id}@{end}#{seq}"`; Twilio echoes it once the audio before it has played, so an echo
says "at time t the caller had heard up to `end`". Between echoes, playback advances in real
time from the last echo (Twilio plays at 8000 bytes/s), never past what was sent. Until the
first echo after the buffer ran empty, it also stops at the first unechoed mark: when playback
starts is a guess (the network and Twilio's buffer add a delay), but once an echo has anchored
it, Twilio plays without pause while audio is queued, so a late echo (a busy bridge reads it
after the caller's speech) must not hold the estimate back. A `clear` makes Twilio echo every pending mark at once: those echoes prove
nothing, so `clear()` forgets them first and later echoes of unknown names are ignored.

An item's audio need not be one range: when the model pauses mid-answer long enough for the
caller to hear everything sent (an underrun), the item is fully heard *so far*; when its audio
resumes it continues in a new range, and what was heard before the pause still counts toward
`audio_end_ms`.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs

BYTES_PER_S = 8000
BYTES_PER_MS = 8
HEARD_KEPT = 4  # fully heard items remembered, in case their audio resumes after an underrun


@attrs.define
class ItemAudio:
    item_id: str
    response_id: str
    start: int  # position of the first byte of its current range
    sent: int = 0  # µ-law bytes sent to the caller in the current range
    generated_ms: float = 0.0  # audio the model generated for it, in ms (its own format), all ranges
    heard_before: int = 0  # bytes of earlier ranges, all heard (the audio underran and resumed)

    @property
    def end(self) -> int:
        return self.start + self.sent

    def heard_ms(self, played: int) -> int:
        return (self.heard_before + max(0, min(self.sent, played - self.start))) // BYTES_PER_MS


@attrs.frozen
class Truncation:
    item_id: str
    audio_end_ms: int


class Playout:
    def __init__(self) -> None:
        self.sent = 0  # running position: bytes sent to Twilio (including later-cleared ones)
        self.items: OrderedDict[str, ItemAudio] = OrderedDict()  # items not yet fully heard
        self.heard: OrderedDict[str, ItemAudio] = OrderedDict()  # the last few fully heard so far
        self.pending: OrderedDict[str, int] = OrderedDict()  # mark name -> end position
        self.muted: set[str] = set()  # items cut by a barge-in: their late deltas are dropped
        self._anchor_pos = 0  # at _anchor_t, playback was at _anchor_pos ...
        self._anchor_t = 0.0  # ... and advances in real time while audio is queued
        self._confirmed = 0  # highest position proven played by a mark echo
        self._echoed = False  # the anchor is a mark echo (not a guess at when playback started)
        self._seq = 0
        self.cut_at = 0  # position the last `clear` cut the audio at (what was sent after it never played)

    # -- sending -------------------------------------------------------------------------

    def is_muted(self, item_id: str) -> bool:
        return item_id in self.muted

    def on_send(self, item_id: str, response_id: str, n_bytes: int, generated_ms: float, now: float) -> str:
        """Account a chunk about to be sent for `item_id`; returns the mark to send after it."""
        if self.played(now) >= self.sent:  # Twilio's buffer is empty: this chunk starts playing now
            self._anchor_pos, self._anchor_t, self._echoed = self.sent, now, False
        item = self.items.get(item_id)
        if item is None:
            done = self.heard.pop(item_id, None)  # resuming after an underrun: a new range
            item = self.items[item_id] = ItemAudio(
                item_id, response_id, self.sent, generated_ms=done.generated_ms if done else 0.0,
                heard_before=done.heard_before + done.sent if done else 0)
        item.sent += n_bytes
        item.generated_ms += generated_ms
        self.sent += n_bytes
        self._seq += 1
        name = f"{item_id}@{item.sent}#{self._seq}"
        self.pending[name] = self.sent
        return name

    # -- hearing -------------------------------------------------------------------------

    def on_mark(self, name: str, now: float) -> bool:
        """A mark echo. Returns True if it was a live mark (False: flushed by a clear, or unknown)."""
        pos = self.pending.pop(name, None)
        if pos is None:
            return False
        # Marks echo in order: any earlier pending mark has played too.
        for older in [n for n, p in self.pending.items() if p <= pos]:
            del self.pending[older]
        self._confirmed = max(self._confirmed, pos)
        self._anchor_pos, self._anchor_t, self._echoed = pos, now, True
        while self.items and next(iter(self.items.values())).end <= pos:
            _, item = self.items.popitem(last=False)
            self.heard[item.item_id] = item
            if len(self.heard) > HEARD_KEPT:
                self.heard.popitem(last=False)
        return True

    def played(self, now: float) -> int:
        """Best estimate of the position the caller has heard up to at `now`."""
        limit = self.sent
        if self.pending and not self._echoed:
            limit = min(limit, next(iter(self.pending.values())))
        estimate = self._anchor_pos + round((now - self._anchor_t) * BYTES_PER_S)
        return max(self._confirmed, min(limit, estimate))

    @property
    def confirmed(self) -> int:
        """Position proven played (a mark echo) or past a clear: audio before it can no longer be cut."""
        return self._confirmed

    def is_playing(self) -> bool:
        """Audio has been sent that Twilio has not confirmed played (a mark is outstanding)."""
        return bool(self.pending)

    def heard_ms(self, item_id: str, now: float) -> int:
        item = self.items.get(item_id)
        if item is None:
            done = self.heard.get(item_id)
            return (done.heard_before + done.sent) // BYTES_PER_MS if done else 0
        return item.heard_ms(self.played(now))

    # -- barge-in ------------------------------------------------------------------------

    def clear(self, now: float) -> list[Truncation]:
        """The caller interrupted: Twilio's buffer is dropped. Returns what to truncate.

        Every item the caller had not finished hearing is truncated at what was really played,
        clamped to what the model generated, and muted so its late deltas are dropped.
        """
        played = self.cut_at = self.played(now)
        cuts = []
        for item in self.items.values():
            if item.end > played:
                cuts.append(Truncation(item.item_id, int(min(item.heard_ms(played), item.generated_ms))))
            self.muted.add(item.item_id)
        for item_id in self.heard:  # heard to the end so far: nothing to truncate, but no more of it
            self.muted.add(item_id)
        self.items.clear()
        self.heard.clear()
        self.pending.clear()
        self._confirmed = self.sent  # nothing before this position will ever play again
        self._anchor_pos, self._anchor_t, self._echoed = self.sent, now, False
        return cuts

