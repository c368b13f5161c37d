"""The order the caller is building, priced exactly in int cents.

Tax is computed once on the order subtotal: subtotal x rate, rounded half-up to the cent
(`tax_cents`). Lines keep menu ids; names and prices come from the menu when priced.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import attrs

from voicebridge.i18n import ENGLISH, Translator
from voicebridge.jobs.pizza.menu import Menu, format_amount

FULFILLMENTS = ("pickup", "delivery")
MAX_QUANTITY = 20  # of one line
MAX_LINES = 30
MAX_TOPPINGS = 10

_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()


class OrderError(ValueError):
    """An order line does not match the menu (unknown item, size or topping)."""


@attrs.frozen
class OrderLine:
    """One line: `quantity` of an item (menu id) in `size`, with extra toppings (menu ids)."""

    item: str
    size: str | None
    quantity: int
    toppings: tuple[str, ...] = ()
    notes: str | None = None


@attrs.frozen
class Totals:
    """Money of a whole order, in cents."""

    subtotal_cents: int
    tax_cents: int
    total_cents: int


@attrs.frozen
class PricedLine:
    """A line with its menu names and prices resolved."""

    line: OrderLine
    name: str  # singular or plural as the quantity needs
    topping_names: tuple[str, ...]
    topping_cents: tuple[int, ...]
    unit_cents: int  # item plus toppings, one of
    total_cents: int  # unit x quantity


@attrs.define
class Order:
    """The order being taken. Tools change it in place; the bridge, not the model, owns it."""

    lines: list[OrderLine] = attrs.Factory(list)
    customer_name: str | None = None
    fulfillment: str | None = None  # "pickup" or "delivery"
    address: str | None = None  # used for delivery only
    phone: str | None = None  # the caller ID unless the caller gives another
    caller_number: str | None = None
    # When the caller wants it (set with set_pickup_time while the menu keeps hours); None: as soon as
    # possible. `wanted_words` is how the read-back says it ("tomorrow at 6:30 pm").
    wanted_at: datetime | None = None
    wanted_words: str | None = None
    language: str | None = None  # the call's language, once the model has said it (set_language)

    @classmethod
    def empty(cls, caller_number: str | None = None) -> Order:
        """A new order whose phone defaults to the caller ID."""
        return cls(phone=caller_number, caller_number=caller_number)

    def missing(self) -> list[str]:
        """What is still needed before a read-back: "items", "name", "pickup or delivery", "address"."""
        out = []
        if not self.lines:
            out.append("items")
        if not self.customer_name:
            out.append("name")
        if self.fulfillment not in FULFILLMENTS:
            out.append("pickup or delivery")
        elif self.fulfillment == "delivery" and not self.address:
            out.append("address")
        return out

    def priced_lines(self, menu: Menu) -> list[PricedLine]:
        """Every line with names and prices from `menu`; OrderError if a line is not on it."""
        return [price_line(line, menu, n) for n, line in enumerate(self.lines, 1)]

    def totals(self, menu: Menu, tax_rate_bp: int) -> Totals:
        """Subtotal, tax (half-up on the subtotal) and total in cents."""
        subtotal = sum(p.total_cents for p in self.priced_lines(menu))
        tax = tax_cents(subtotal, tax_rate_bp)
        return Totals(subtotal, tax, subtotal + tax)

    def to_json(
        self,
        menu: Menu,
        tax_rate_bp: int,
        *,
        call_sid: str | None,
        created_at: datetime,
        order_id: int | None = None,
    ) -> dict[str, Any]:
        """The webhook body: amounts in cents and as decimal strings; `created_at` as UTC ISO-8601."""
        if created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware")
        priced = self.priced_lines(menu)
        totals = self.totals(menu, tax_rate_bp)
        delivery = self.fulfillment == "delivery"
        body: dict[str, Any] = {
            "order_id": order_id,
            "shop": menu.shop_name,
            "call_sid": call_sid,
            "created_at": created_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
            "customer": {"name": self.customer_name, "phone": self.phone},
            "fulfillment": self.fulfillment,
            "delivery_address": self.address if delivery else None,
            "items": [
                {
                    "line": n,
                    "item": p.line.item,
                    "name": menu.item(p.line.item).name,
                    "size": p.line.size,
                    "quantity": p.line.quantity,
                    "toppings": [
                        {"topping": key, "name": name, "price_cents": cents, "price": format_amount(cents)}
                        for key, name, cents in zip(p.line.toppings, p.topping_names, p.topping_cents)
                    ],
                    "notes": p.line.notes,
                    "unit_price_cents": p.unit_cents,
                    "unit_price": format_amount(p.unit_cents),
                    "line_total_cents": p.total_cents,
                    "line_total": format_amount(p.total_cents),
                }
                for n, p in enumerate(priced, 1)
            ],
            "currency": "USD",
            "tax_rate_bp": tax_rate_bp,
            "subtotal_cents": totals.subtotal_cents,
            "subtotal": format_amount(totals.subtotal_cents),
            "tax_cents": totals.tax_cents,
            "tax": format_amount(totals.tax_cents),
            "total_cents": totals.total_cents,
            "total": format_amount(totals.total_cents),
        }
        if self.wanted_at is not None:  # only when asked for: an as-soon-as-possible order's body is unchanged
            body["wanted_at"] = self.wanted_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
        return body


def tax_cents(subtotal_cents: int, tax_rate_bp: int) -> int:
    """subtotal x rate (basis points), rounded half-up to the cent: 200 at 8.25% -> 17 (16.5)."""
    if not 0 <= tax_rate_bp < 10_000:
        raise ValueError(f"tax rate must be 0 to 9999 basis points, got {tax_rate_bp}")
    if subtotal_cents < 0:
        raise ValueError(f"subtotal must not be negative, got {subtotal_cents}")
    return (subtotal_cents * tax_rate_bp + 5_000) // 10_000


def price_line(line: OrderLine, menu: Menu, number: int = 1) -> PricedLine:
    """`line` priced from `menu`; OrderError naming line `number` if it does not fit the menu."""
    try:
        item = menu.item(line.item)
    except KeyError:
        raise OrderError(f"line {number}: {line.item!r} is not on the menu") from None
    try:
        unit = item.price(line.size)
    except KeyError:
        raise OrderError(f"line {number}: the {item.name} is not sold in size {line.size!r}") from None
    names, cents = [], []
    for key in line.toppings:
        try:
            topping = menu.topping(key)
            price = topping.price(line.size)
        except KeyError:
            raise OrderError(f"line {number}: topping {key!r} is not on the menu for this item") from None
        names.append(topping.name)
        cents.append(price)
    if not 1 <= line.quantity <= MAX_QUANTITY:
        raise OrderError(f"line {number}: quantity {line.quantity} is not 1 to {MAX_QUANTITY}")
    unit += sum(cents)
    name = item.name if line.quantity == 1 else item.plural
    return PricedLine(line, name, tuple(names), tuple(cents), unit, unit * line.quantity)


def quantity_words(n: int, tr: Translator = ENGLISH.default) -> str:
    """ "one" to "twenty" in English, digits beyond (and in languages that say numbers from digits)."""
    if not tr.english:
        return tr.number(n)
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def describe(p: PricedLine, tr: Translator = ENGLISH.default) -> str:
    """ "two large pepperoni pizzas with mushrooms (well done)"; Spanish: "2 pizzas de pepperoni grande con ..." """
    quantity = quantity_words(p.line.quantity, tr)
    if p.line.size:
        text = tr("{quantity} {size} {name}", quantity=quantity, size=p.line.size, name=p.name)
    else:
        text = tr("{quantity} {name}", quantity=quantity, name=p.name)
    if p.topping_names:
        text = tr("{line} with {toppings}", line=text, toppings=tr.join(list(p.topping_names)))
    if p.line.notes:
        text += f" ({p.line.notes})"
    return text


def read_back(order: Order, menu: Menu, tax_rate_bp: int, tr: Translator = ENGLISH.default) -> str:
    """The exact sentence the AI reads before asking for a yes (or a press of 1), in the call's language."""
    priced = order.priced_lines(menu)
    totals = order.totals(menu, tax_rate_bp)
    items = "; ".join(f"{describe(p, tr)}, {tr.money(p.total_cents)}" for p in priced)
    if order.fulfillment == "delivery":
        where = tr("For delivery to {address}", address=order.address)
    else:
        where = tr("For pickup")
    if order.wanted_words:
        where += f" {order.wanted_words}"
    who = tr(", name {name}", name=order.customer_name) if order.customer_name else ""
    phone = tr(", phone {phone}", phone=order.phone) if order.phone and order.phone != order.caller_number else ""
    return tr(
        "You ordered: {items}. {where}{who}{phone}. Subtotal {subtotal}, tax {tax}, total {total}. "
        "Is that correct? Say yes, or press 1 to confirm.",
        items=items, where=where, who=who, phone=phone, subtotal=tr.money(totals.subtotal_cents),
        tax=tr.money(totals.tax_cents), total=tr.money(totals.total_cents),
    )
