"""The call audio recordings folder (`VOICEBRIDGE_AUDIO_RECORDING_DIR`): names, atomic writes, retention.

Each recording is one file, `<dir>/<business slug>/<CallSid>.<kind>.wav`, kind `twilio` (Twilio's
dual-channel recording, downloaded) or `local` (the bridge's own stereo WAV). The folder is the
source of truth for files: what is on disk is what is kept, and retention deletes files, not rows.
A file is written under a hidden temporary name in the same folder and renamed into place, so
a reader never sees half a recording.

Retention (`retention_task`, in the daemon's nursery): one pass at start, then every
`RETENTION_EVERY_S`; a pass deletes the recordings (and leftover temporary files) last modified
more than `keep_days` days ago. `keep_days=0` keeps everything.

Not to be confused with `VOICEBRIDGE_RECORD_DIR` (`voicebridge.edges.recording`): JSONL wire
recordings of the protocol messages, for `voicebridge replay`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import secrets
import time
import wave
from pathlib import Path
from typing import Awaitable, Callable

import attrs
import trio

log = logging.getLogger("voicebridge.edges.recording_files")

KINDS = ("twilio", "local")
RETENTION_EVERY_S = 3600.0
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_SID = re.compile(r"[A-Za-z0-9_]{2,64}")
_PART = ".part"


def recording_name(business: str, call_sid: str, kind: str) -> str:
    """The file's name relative to the recordings folder: `<business>/<CallSid>.<kind>.wav`.

    ValueError for a business slug or CallSid that could not be a plain file name (never a path
    outside the folder)."""
    if kind not in KINDS:
        raise ValueError(f"recording kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not _SLUG.fullmatch(business):
        raise ValueError(f"business {business[:80]!r} is not a slug a folder can be named after")
    if not _SID.fullmatch(call_sid):
        raise ValueError(f"CallSid {call_sid[:80]!r} is malformed")
    return f"{business}/{call_sid}.{kind}.wav"


def recording_path(folder: Path, business: str, call_sid: str, kind: str) -> Path:
    return folder / recording_name(business, call_sid, kind)


class PartFile:
    """A file being written: a hidden temporary name beside `final`, renamed into place by `commit`
    (after an fsync), removed by `discard` (or when the `with` block fails)."""

    def __init__(self, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.final = final
        self.temp = final.with_name(f".{final.name}.{secrets.token_hex(4)}{_PART}")
        self.file = open(self.temp, "xb")
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.size += len(data)

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temp, self.final)

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):  # already gone: nothing left to clean
            self.temp.unlink()


def wav_seconds(path: Path) -> float | None:
    """How long a WAV file plays, from its header; None if it is not a readable PCM WAV."""
    try:
        with wave.open(str(path), "rb") as w:
            rate = w.getframerate()
            return w.getnframes() / rate if rate else None
    except (OSError, EOFError, wave.Error):
        return None


@attrs.frozen
class Swept:
    deleted: int
    kept: int
    errors: int


def _is_ours(name: str) -> bool:
    if name.startswith(".") and name.endswith(_PART) or name.endswith(".local.partial.wav"):
        return True  # a download's or a local recording's leftover (its process died): as old, as gone
    return any(name.endswith(f".{kind}.wav") for kind in KINDS) and not name.startswith(".")


def sweep(folder: Path, keep_days: int, *, now: float | None = None) -> Swept:
    """Delete the recordings under `folder/<business>/` last modified more than `keep_days` days
    before `now` (Unix seconds; default the wall clock). Other files are never touched."""
    if keep_days <= 0:
        return Swept(0, 0, 0)
    cutoff = (time.time() if now is None else now) - keep_days * 86_400
    deleted = kept = errors = 0
    try:
        businesses = [d for d in folder.iterdir() if d.is_dir() and not d.is_symlink()]
    except FileNotFoundError:
        return Swept(0, 0, 0)
    except OSError as exc:
        log.error("cannot read the recordings folder: %s", exc.strerror, extra={"event": "retention_error"})
        return Swept(0, 0, 1)
    for business in businesses:
        try:
            entries = list(os.scandir(business))
        except OSError:
            errors += 1
            continue
        for entry in entries:
            if not _is_ours(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    kept += 1
                    continue
                os.unlink(entry.path)
                deleted += 1
            except FileNotFoundError:
                continue  # deleted meanwhile (another worker's pass)
            except OSError:
                errors += 1
    return Swept(deleted, kept, errors)


async def retention_task(folder: Path, keep_days: int, *, every_s: float = RETENTION_EVERY_S,
                         wall_clock: Callable[[], float] = time.time,
                         run_sync: Callable[[Callable[[], Swept]], Awaitable[Swept]] = trio.to_thread.run_sync,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Delete recordings older than `keep_days` days: a pass now, then every `every_s`, until cancelled.

    Each pass runs in a worker thread (`run_sync`), so a slow disk never holds up a call."""
    task_status.started()
    if keep_days <= 0:
        return
    while True:
        at = wall_clock()
        swept = await run_sync(functools.partial(sweep, folder, keep_days, now=at))
        if swept.deleted or swept.errors:
            log.info("recordings older than %d days deleted: %d (kept %d, %d could not be read or deleted)",
                     keep_days, swept.deleted, swept.kept, swept.errors,
                     extra={"event": "retention", "deleted": swept.deleted, "errors": swept.errors})
        await trio.sleep(every_s)
