"""Every in-memory queue has a bound: a reader that stops cannot make memory grow without end."""

from __future__ import annotations

import trio
import trio.testing

from voicebridge.edges.transport import MEMORY_STREAM_BUFFER, memory_stream_pair


async def test_a_memory_stream_sender_waits_for_a_stalled_reader(autojump_clock: trio.testing.MockClock) -> None:
    """Up to the buffer, sends complete at once; the next one waits until the reader takes one."""
    ours, theirs = memory_stream_pair()
    for n in range(MEMORY_STREAM_BUFFER):
        await ours.send(f"frame {n}")
    with trio.move_on_after(60) as scope:
        await ours.send("one too many")
    assert scope.cancelled_caught  # nothing read: the sender is held, nothing queued beyond the bound
    assert await theirs.receive() == "frame 0"
    with trio.fail_after(1):
        await ours.send("fits again")


async def test_the_bound_is_the_callers_to_choose(autojump_clock: trio.testing.MockClock) -> None:
    ours, theirs = memory_stream_pair(buffer=2)
    await ours.send("a")
    await ours.send("b")
    with trio.move_on_after(5) as scope:
        await ours.send("c")
    assert scope.cancelled_caught
    assert [await theirs.receive(), await theirs.receive()] == ["a", "b"]
