"""The local recording of a call: a stereo WAV the bridge writes itself (`VOICEBRIDGE_AUDIO_RECORDING=local`).

`<dir>/<business slug>/<CallSid>.local.wav`, 8 kHz, 16-bit PCM, two channels on one timeline
(sample 0 = the stream's `start`):

- LEFT: what the caller said, every inbound media frame placed at its Twilio `timestamp` (a gap
  in the frames is silence, not closed up);
- RIGHT: what the caller heard: the audio sent to Twilio, each chunk where it started playing
  (when it was sent if Twilio's buffer was empty, else right after the audio before it), with
  what a barge-in's `clear` dropped taken out again. The cut is where the call's playout
  accounting (engine/playout.py) put it, the same figure the Realtime `conversation.item.truncate`
  was given, so the file and the model agree on what the caller heard.

Twilio's side of a call is always G.711 µ-law at 8 kHz, whatever `VOICEBRIDGE_AUDIO_FORMAT` the
model speaks (PCM16 is converted before it is sent), so both channels are decoded from µ-law.

Bounded memory and no long blocking: audio is kept (as µ-law, one byte a sample) only until it
is final: the caller's up to the last frame received, the caller-heard audio until a mark echo
proves it played (a later `clear` can no longer cut it), at most `MAX_PENDING_S` behind the
present (then it is written as it stands) and `MAX_PENDING_S` ahead of it (audio queued further
ahead, which no model sends in one answer, is left out with a warning). Final
audio goes to the file in blocks of `BLOCK_S`: one small write to the page cache (32 KiB a
second of call) plus the header's two length fields, never an fsync; that costs microseconds,
less than handing it to a thread would.

A crash leaves a playable file: the call is written to `<CallSid>.local.partial.wav` and renamed
to `<CallSid>.local.wav` when the call ends (however it ends); as the WAV header's lengths are
updated with every block, a `.partial.wav` left by a killed process is a valid WAV of the call
up to its last second. The name says it is incomplete, and it is not mistaken for a whole call.
Caller audio is never logged.
"""

from __future__ import annotations

import array
import logging
import sys
import wave
from pathlib import Path
from typing import BinaryIO, Callable

import attrs

from voicebridge.edges import audio

log = logging.getLogger("voicebridge.edges.call_audio")

RATE = 8000
SILENCE = 0xFF  # µ-law code of 0
BLOCK_S = 1.0  # final audio is written in blocks of this length
MAX_PENDING_S = 60.0  # audio held back (unconfirmed playout) before it is written anyway
SUFFIX = ".local.wav"
PARTIAL_SUFFIX = ".local.partial.wav"


def recording_path(directory: Path, business: str, call_sid: str) -> Path:
    """Where a call's local recording is kept (its final name)."""
    if not call_sid or "/" in call_sid or "\\" in call_sid or call_sid.startswith("."):
        raise ValueError("a CallSid that is not a plain file name")
    return directory / business / f"{call_sid}{SUFFIX}"


def partial_path(final: Path) -> Path:
    return final.with_name(final.name[: -len(SUFFIX)] + PARTIAL_SUFFIX)


@attrs.define
class _Sent:
    """Caller-heard audio not yet proven played: `length` bytes from playout position `position`,
    placed at timeline sample `at`."""

    position: int
    at: int
    length: int


class LocalCallAudio:
    """One call's stereo WAV. Called from the call's tasks (see engine.session.AudioTap); never blocks long."""

    def __init__(self, path: Path, t0: float) -> None:
        self.path = path
        self.partial = partial_path(path)
        self.t0 = t0  # the caller's clock (trio time) at the stream's start
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = open(self.partial, "wb")
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(RATE)
        self._wav.writeframes(b"")  # the header, so even an empty partial file is a WAV
        self._base = 0  # timeline sample of the first byte of the buffers below (all before it is written)
        self._left = bytearray()  # caller audio, µ-law, from _base
        self._right = bytearray()  # caller-heard audio, µ-law, from _base
        self._left_end = 0  # timeline sample after the last caller frame
        self._cursor = 0  # timeline sample where the audio sent next would start playing
        self._unsure: list[_Sent] = []  # sent audio a `clear` could still cut
        self._block = int(RATE * BLOCK_S)
        self._max_pending = int(RATE * MAX_PENDING_S)
        self.closed = False
        self.failed = False  # a write failed: the rest of the call is not recorded
        self.skipped = 0  # bytes of audio sent so far ahead of playback that they were not kept

    # -- what the call reports ---------------------------------------------------------------

    def caller_audio(self, ulaw: bytes, timestamp_ms: int, now: float) -> None:
        """A media frame from the caller, `timestamp_ms` after the stream's start (Twilio's clock),
        received at `now` (trio time)."""
        if self.closed:
            return
        at = max(timestamp_ms * RATE // 1000, self._base)
        self._put(self._left, at, ulaw)
        self._left_end = max(self._left_end, at + len(ulaw))
        self._flush(self._sample(now))

    def caller_hears(self, position: int, ulaw: bytes, now: float) -> None:
        """Audio sent to the caller, from playout position `position`, at `now` (trio time)."""
        if self.closed or not ulaw:
            return
        at = max(self._cursor, self._sample(now), self._base)
        self._cursor = at + len(ulaw)
        if at - self._sample(now) > self._max_pending:  # queued for later than memory allows: not kept
            if not self.skipped:
                log.warning("the call's local recording leaves out audio queued more than %g s ahead", MAX_PENDING_S,
                            extra={"event": "audio_recording_skipped"})
            self.skipped += len(ulaw)
            return
        self._put(self._right, at, ulaw)
        last = self._unsure[-1] if self._unsure else None
        if last is not None and last.position + last.length == position and last.at + last.length == at:
            last.length += len(ulaw)
        else:
            self._unsure.append(_Sent(position, at, len(ulaw)))
        self._flush(self._sample(now))

    def played_to(self, position: int, now: float) -> None:
        """A mark echo at `now`: everything sent before playout position `position` has played."""
        while self._unsure and self._unsure[0].position + self._unsure[0].length <= position:
            self._unsure.pop(0)
        if self._unsure and self._unsure[0].position < position:
            first = self._unsure[0]
            done = position - first.position
            self._unsure[0] = _Sent(position, first.at + done, first.length - done)
        self._flush(self._sample(now))

    def cut(self, position: int, now: float) -> None:
        """Twilio `clear`: what was sent from playout position `position` on never played."""
        for sent in self._unsure:  # in playout order, which is timeline order: all after the cut goes
            keep = max(0, position - sent.position)
            if keep < sent.length:
                del self._right[max(0, sent.at + keep - self._base):]
                break
        self._unsure.clear()
        self._cursor = max(self._sample(now), self._base)  # Twilio's buffer is empty: the next audio plays when sent
        self._flush(self._sample(now))

    def close(self, heard_to: int | None, now: float) -> Path | None:
        """The call ended: cut what was sent but not heard, write the rest, give the file its final name.

        Returns the final path, or None if the file could not be finished (it stays `.partial.wav`).
        """
        if self.closed:
            return self.path
        self.closed = True
        try:
            try:
                if heard_to is not None:
                    self.cut(heard_to, now)
                self._write(self._end() - self._base)
            finally:  # whatever happened, the file is closed (a partial one keeps its name)
                try:
                    self._wav.close()
                finally:
                    self._file.close()
            if self.failed:
                return None
            self.partial.replace(self.path)
        except OSError as exc:
            log.error("the call's local recording could not be finished: %s", type(exc).__name__,
                      extra={"event": "audio_recording_failed", "error": str(exc)[:200]})
            return None
        return self.path

    # -- the timeline ------------------------------------------------------------------------

    def _sample(self, now: float) -> int:
        return max(0, round((now - self.t0) * RATE))

    def _put(self, track: bytearray, at: int, ulaw: bytes) -> None:
        start = at - self._base
        if len(track) < start + len(ulaw):
            track.extend(bytes([SILENCE]) * (start + len(ulaw) - len(track)))
        track[start:start + len(ulaw)] = ulaw

    def _end(self) -> int:
        return self._base + max(len(self._left), len(self._right))

    def _final(self, now: int) -> int:
        """Timeline sample up to which both channels are final (audio sent later plays from `now` on)."""
        final = min(self._left_end, now)
        if self._unsure:
            final = min(final, self._unsure[0].at)
        if now - final > self._max_pending:  # the echoes stopped coming: do not hold on forever
            final = now - self._max_pending
            while self._unsure and self._unsure[0].at + self._unsure[0].length <= final:
                self._unsure.pop(0)
        return final

    def _flush(self, now: int) -> None:
        n = self._final(now) - self._base
        if n >= self._block:
            self._write(n)

    def _write(self, n: int) -> None:
        if n <= 0:
            return
        left = bytes(self._left[:n]).ljust(n, bytes([SILENCE]))
        right = bytes(self._right[:n]).ljust(n, bytes([SILENCE]))
        del self._left[:n]
        del self._right[:n]
        self._base += n
        if self.failed:
            return
        try:
            self._wav.writeframes(interleave(audio.ulaw_to_pcm16(left), audio.ulaw_to_pcm16(right)))
        except OSError as exc:  # a full disk: the call goes on, the partial file keeps what was written
            self.failed = True
            log.error("the call's local recording stopped: %s", type(exc).__name__,
                      extra={"event": "audio_recording_failed", "error": str(exc)[:200]})


def interleave(left: bytes, right: bytes) -> bytes:
    """Two little-endian PCM16 channels of equal length -> one stereo stream (L R L R ...), as `wave` takes it."""
    lc, rc = array.array("h", left), array.array("h", right)
    out = array.array("h", bytes(len(left) + len(right)))
    out[0::2] = lc
    out[1::2] = rc
    if sys.byteorder == "big":  # `wave` wants native samples (it swaps them to little-endian itself)
        out.byteswap()
    return out.tobytes()


def local_recorder(directory: Path, business: str) -> Callable[[str, float], LocalCallAudio | None]:
    """The factory a call is handed: opens `<directory>/<business>/<CallSid>.local.partial.wav`.

    A recording that cannot be opened (a bad directory, a full disk) is logged and skipped: the
    call goes on unrecorded rather than not at all.
    """

    def open_for(call_sid: str, t0: float) -> LocalCallAudio | None:
        try:
            return LocalCallAudio(recording_path(directory, business, call_sid), t0)
        except (OSError, ValueError) as exc:
            log.error("cannot record the call locally: %s", type(exc).__name__,
                      extra={"event": "audio_recording_failed", "error": str(exc)[:200]})
            return None

    return open_for
