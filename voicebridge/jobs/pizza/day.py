"""The menu's day: what staff have marked sold out, and whether the shop is closed right now.

Pure data. The daemon loads it from the store and puts each new snapshot in the job's `DayBox`
(a holder shared with live calls), so a call's next tool run sees a change at once; the job
itself never reads the store.
"""

from __future__ import annotations

import attrs

from voicebridge.i18n import ENGLISH, Translator
from voicebridge.jobs.pizza.menu import Menu


@attrs.frozen
class Availability:
    sold_out_items: frozenset[str] = frozenset()  # menu item keys
    sold_out_sizes: frozenset[str] = frozenset()  # size keys, for every item
    closed: bool = False  # staff closed the shop now, overriding the opening hours
    closed_message: str = ""  # what a caller is offered while closed ("We open again at 5 pm...")

    def refusal(self, menu: Menu, item: str, size: str | None, tr: Translator = ENGLISH.default) -> str | None:
        """Why `item` in `size` cannot be sold now, in words the model can say (in `tr`'s language); None if it can."""
        if self.closed:
            return self.closed_text(tr)
        if item in self.sold_out_items:
            name = next((i.name for i in menu.items if i.key == item), item)
            return tr("Sorry, the {name} is sold out for today; offer the caller something else.", name=name)
        if size is not None and size in self.sold_out_sizes:
            return tr("Sorry, {size} is sold out for today; offer the caller another size.", size=size)
        return None

    def closed_text(self, tr: Translator = ENGLISH.default) -> str:
        """The closed line; staff's own message (`closed_message`) follows as they typed it."""
        offer = f" {self.closed_message}" if self.closed_message else ""
        return tr("The shop is closed right now and cannot take orders.") + offer

    def note_for_model(self, menu: Menu) -> str:
        """The day's state as a system note (empty when everything is available and the shop is open)."""
        parts = []
        if self.closed:
            parts.append(self.closed_text() + " Tell the caller so, kindly, and offer what is said here, or "
                                              "a transfer to the shop if they want a person.")
        if self.sold_out_items:
            known = {i.key: i.name for i in menu.items}
            names = sorted(known.get(k, k) for k in self.sold_out_items)
            parts.append(f"Sold out today: {', '.join(names)}; do not offer them.")
        if self.sold_out_sizes:
            parts.append(f"Sizes sold out today: {', '.join(sorted(self.sold_out_sizes))}.")
        return " ".join(parts)


@attrs.define
class DayBox:
    """The current Availability, replaced whole (never mutated) whenever staff change it."""

    current: Availability = attrs.field(factory=Availability)
