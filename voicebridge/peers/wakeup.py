"""A re-armable wake-up for the local peers and the replayer."""

from __future__ import annotations

import trio


class Wakeup:
    """`fire()` wakes every task waiting now; later waiters wait for the next `fire()`."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, deadline: float) -> None:
        """Wait for the next `fire()`, or until `deadline` (trio time), whichever comes first."""
        event = self._event
        with trio.move_on_at(deadline):
            await event.wait()
