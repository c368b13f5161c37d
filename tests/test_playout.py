"""Playout accounting: what the caller has heard, from named marks and the playout clock."""

from __future__ import annotations

from voicebridge.engine.playout import Playout, Truncation


def send(p: Playout, item: str, ms: int, now: float, response: str = "resp_1") -> str:
    return p.on_send(item, response, ms * 8, float(ms), now)


def test_mark_echo_proves_audio_played() -> None:
    """An echoed mark moves the heard position to the end of the audio before it."""
    p = Playout()
    m1 = send(p, "item_a", 100, now=0.0)
    send(p, "item_a", 100, now=0.0)
    assert p.on_mark(m1, now=0.1)
    assert p.heard_ms("item_a", now=0.1) == 100
    assert p.is_playing()


def test_heard_position_advances_in_real_time_between_echoes() -> None:
    """Between echoes playback advances at 8 bytes/ms, never past the next unechoed mark."""
    p = Playout()
    m1 = send(p, "item_a", 200, now=0.0)
    send(p, "item_a", 200, now=0.0)
    assert p.heard_ms("item_a", now=0.05) == 50
    p.on_mark(m1, now=0.2)
    assert p.heard_ms("item_a", now=0.3) == 300
    assert p.heard_ms("item_a", now=5.0) == 400  # clamped to what was sent


def test_marks_echoed_by_clear_are_ignored() -> None:
    """After a clear, the flushed marks' echoes prove nothing and are not counted."""
    p = Playout()
    m1 = send(p, "item_a", 500, now=0.0)
    m2 = send(p, "item_a", 500, now=0.0)
    cuts = p.clear(now=0.3)
    assert cuts == [Truncation("item_a", 300)]
    assert not p.on_mark(m1, now=0.31)
    assert not p.on_mark(m2, now=0.31)
    assert not p.is_playing()
    assert p.is_muted("item_a")


def test_truncation_is_clamped_to_generated_audio() -> None:
    """audio_end_ms never exceeds what the model generated for the item."""
    p = Playout()
    p.on_send("item_a", "r", 800, 50.0, 0.0)  # 100 ms sent for 50 ms generated (resampler rounding)
    assert p.clear(now=0.075) == [Truncation("item_a", 50)]


def test_items_fully_heard_are_not_truncated() -> None:
    """A clear truncates only the items the caller had not finished hearing."""
    p = Playout()
    m1 = send(p, "item_a", 100, now=0.0)
    send(p, "item_b", 300, now=0.0)
    p.on_mark(m1, now=0.1)
    assert p.clear(now=0.15) == [Truncation("item_b", 50)]


def test_audio_after_a_clear_starts_playing_when_sent() -> None:
    """Twilio's buffer is empty after a clear, so new audio plays from the moment it is sent."""
    p = Playout()
    send(p, "item_a", 1000, now=0.0)
    p.clear(now=0.2)
    send(p, "item_b", 400, now=5.0)
    assert p.heard_ms("item_b", now=5.1) == 100


def test_an_idle_gap_does_not_count_as_playback() -> None:
    """Audio sent after the buffer ran dry starts at its send time, not at the last echo."""
    p = Playout()
    m1 = send(p, "item_a", 100, now=0.0)
    p.on_mark(m1, now=0.1)
    send(p, "item_b", 100, now=3.0)
    assert p.heard_ms("item_b", now=3.05) == 50


def test_audio_that_resumes_after_an_underrun_keeps_what_was_heard_before() -> None:
    """The model pauses mid-answer, the caller hears everything sent, then the answer goes on:
    a cut after that counts the audio heard before the pause too."""
    p = Playout()
    m1 = send(p, "item_a", 500, now=0.0)
    assert p.on_mark(m1, now=0.5)
    assert not p.is_playing()  # the caller's buffer ran dry
    assert p.heard_ms("item_a", now=1.0) == 500
    send(p, "item_a", 300, now=2.0)  # the model goes on 1.5 s later
    assert p.heard_ms("item_a", now=2.1) == 600
    assert p.clear(now=2.1) == [Truncation("item_a", 600)]


def test_a_second_underrun_adds_up_every_range() -> None:
    """Several pauses in one answer: each range heard so far counts once."""
    p = Playout()
    m1 = send(p, "item_a", 200, now=0.0)
    p.on_mark(m1, now=0.2)
    m2 = send(p, "item_a", 200, now=1.0)
    p.on_mark(m2, now=1.2)
    send(p, "item_a", 200, now=2.0)
    assert p.clear(now=2.05) == [Truncation("item_a", 450)]


def test_a_clear_mutes_an_item_heard_to_the_end_so_far() -> None:
    """Cut while the model is paused and nothing is queued: no truncate (all of it was heard), and
    whatever the paused item still sends is dropped."""
    p = Playout()
    m1 = send(p, "item_a", 300, now=0.0)
    p.on_mark(m1, now=0.3)
    assert p.clear(now=0.8) == []
    assert p.is_muted("item_a")


def test_before_the_first_echo_the_estimate_stops_at_the_first_mark() -> None:
    """When playback starts is a guess until an echo comes: the estimate waits at the first mark."""
    p = Playout()
    send(p, "item_a", 100, now=0.0)
    send(p, "item_a", 100, now=0.0)
    assert p.heard_ms("item_a", now=0.15) == 100
    assert p.clear(now=0.15) == [Truncation("item_a", 100)]


def test_a_late_echo_does_not_hold_the_estimate_back_once_playback_is_anchored() -> None:
    """After an echo, Twilio plays on without pause while audio is queued: a busy bridge that has not
    yet read the next echoes still truncates at what the caller heard by now."""
    p = Playout()
    marks = [send(p, "item_a", 100, now=0.0) for _ in range(6)]
    p.on_mark(marks[0], now=0.1)
    # The echoes of marks 1-3 are sitting unread in the socket when the caller speaks at 0.45 s.
    assert p.clear(now=0.45) == [Truncation("item_a", 450)]
