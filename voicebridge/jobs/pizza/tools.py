"""The function tools the Realtime model calls to build the order, and their execution.

`tool_definitions(menu)` gives the GA tool list for `session.update`. `execute_tool` runs
one call on the bridge's `Order`: every argument is checked against the menu and types;
a bad one returns `ok=False` with an `error` the model can say back, and changes nothing.

Why it is this long: one module holds every tool's JSON schema beside the checks that enforce it,
so a schema and its checker change together; splitting them would spread each tool over two files.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from voicebridge.engine.job import ToolResult
from voicebridge.i18n import ENGLISH, Translator
from voicebridge.jobs.pizza.menu import Item, Menu, join_words, normalize
from voicebridge.jobs.pizza.order import (
    FULFILLMENTS,
    MAX_LINES,
    MAX_QUANTITY,
    MAX_TOPPINGS,
    Order,
    OrderLine,
    describe,
    price_line,
    read_back,
)

MAX_NAME = 80
MAX_ADDRESS = 200
MAX_NOTES = 140
MAX_REASON = 200

_FULFILLMENT_WORDS = {
    "pickup": "pickup",
    "pick up": "pickup",
    "pick-up": "pickup",
    "collection": "pickup",
    "carryout": "pickup",
    "carry out": "pickup",
    "takeout": "pickup",
    "take out": "pickup",
    "delivery": "delivery",
    "deliver": "delivery",
    "delivered": "delivery",
}

READ_EXACTLY = (
    "Read read_back to the caller exactly as written, then wait. Call confirm_order only after a "
    "clear yes (or the caller pressing 1); call reject_order if they want a change."
)


class _BadArgument(Exception):
    """A tool argument is invalid; the message is said back to the caller by the model."""


# -- definitions ------------------------------------------------------------------------


def tool_definitions(menu: Menu) -> list[dict[str, Any]]:
    """The flat GA tool definitions (`type`, `name`, `description`, `parameters`) for `menu`."""
    item_names = join_words([i.name for i in menu.items], "or")
    topping_names = join_words([t.name for t in menu.toppings], "or") or "none on this menu"
    size: dict[str, Any] = {"type": "string", "description": "Size, for items sold in sizes."}
    if menu.size_keys:
        size["enum"] = list(menu.size_keys)
    line = {"type": "integer", "minimum": 1, "description": "Item number as read back, starting at 1."}
    toppings = {
        "type": "array",
        "items": {"type": "string"},
        "maxItems": MAX_TOPPINGS,
        "description": f"Extra toppings (pizzas only): {topping_names}.",
    }
    reason = {"type": "string", "description": "Short reason, for the shop's records."}
    quantity = {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY}

    def tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        return {
            "type": "function",
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        }

    defs = [
        tool(
            "add_item",
            "Add an item to the order as a new line. Ask for the size first if it has sizes.",
            {
                "item": {"type": "string", "description": f"Menu item: {item_names}."},
                "size": size,
                "quantity": {**quantity, "description": "How many; default 1."},
                "toppings": toppings,
                "notes": {"type": "string", "description": "Short request, such as 'well done'."},
            },
            ["item"],
        ),
        tool(
            "update_item",
            "Change a line already in the order (the caller changed their mind). Toppings replace the old list.",
            {
                "line": line,
                "size": size,
                "quantity": quantity,
                "toppings": toppings,
                "notes": {"type": "string", "description": "Replaces the line's request; empty clears it."},
            },
            ["line"],
        ),
        tool("remove_item", "Take a line off the order.", {"line": line}, ["line"]),
        tool(
            "set_customer",
            "Record the caller's name, pickup or delivery, the delivery address, or a different phone number.",
            {
                "name": {"type": "string", "description": "The name for the order."},
                "fulfillment": {"type": "string", "enum": list(FULFILLMENTS)},
                "address": {"type": "string", "description": "Delivery address, as the caller said it."},
                "phone": {"type": "string", "description": "Only if different from the number they call from."},
            },
            [],
        ),
        tool("get_menu", "The menu: items, prices, toppings, specials and opening hours.", {}, []),
        tool(
            "review_order",
            "When the order is complete, get the exact read-back with the total to read to the caller.",
            {},
            [],
        ),
        tool(
            "confirm_order",
            "The caller said yes to the read-back: place the order. Only after review_order.",
            {},
            [],
        ),
        tool("reject_order", "The caller said no to the read-back and wants a change.", {"reason": reason}, []),
        tool("transfer_to_human", "The caller asks for a person, or you cannot help.", {"reason": reason}, []),
        tool("end_call", "Hang up, after saying goodbye.", {"reason": reason}, []),
    ]
    if menu.opening is not None:  # only a menu that keeps hours takes orders for a later time
        defs.insert(4, tool(
            "set_pickup_time",
            "When the caller wants the order (pickup or delivery), in the shop's local time; 'asap' for as soon "
            "as possible. It must be inside the opening hours.",
            {
                "time": {"type": "string", "description": "24-hour local time such as '18:30', or 'asap'."},
                "date": {"type": "string", "description": "YYYY-MM-DD if not the next such time (today or "
                                                          "tomorrow)."},
            },
            ["time"],
        ))
    return defs


# -- execution --------------------------------------------------------------------------


def execute_tool(order: Order, menu: Menu, name: str, arguments: str, *, tax_rate_bp: int,
                 tr: Translator = ENGLISH.default) -> ToolResult:
    """Run tool `name` with the model's raw JSON `arguments` on `order` (changed in place); texts in `tr`'s language."""
    handler = _HANDLERS.get(name)
    if handler is None:
        return _error(f"There is no tool named {name!r}.")
    try:
        raw = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return _error("The tool arguments were not valid JSON; call the tool again with a JSON object.")
    if not isinstance(raw, dict):
        return _error("The tool arguments must be a JSON object.")
    try:
        return handler(order, menu, _Args(name, raw, tr), tax_rate_bp)
    except _BadArgument as exc:
        return _error(str(exc))


def _error(message: str) -> ToolResult:
    return ToolResult(output={"ok": False, "error": message}, ok=False, intent=None, changed=False)


def _done(output: dict[str, Any], *, intent: str | None = None, changed: bool = False) -> ToolResult:
    return ToolResult(output={"ok": True, **output}, ok=True, intent=intent, changed=changed)


class _Args:
    """Typed access to one call's arguments; JSON null means "not given"."""

    def __init__(self, tool: str, raw: dict[str, Any], tr: Translator = ENGLISH.default) -> None:
        self.tool = tool
        self.raw = raw
        self.tr = tr

    def only(self, *names: str) -> None:
        for key in self.raw:
            if key not in names:
                allowed = ", ".join(names) if names else "no arguments"
                raise _BadArgument(f"{self.tool} has no argument {key!r} (it takes {allowed}).")

    def given(self, name: str) -> bool:
        return self.raw.get(name) is not None

    def text(self, name: str, *, max_len: int, required: bool = False) -> str | None:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise _BadArgument(f"{self.tool} needs {name}.")
            return None
        if not isinstance(value, str):
            raise _BadArgument(f"{name} must be text.")
        value = " ".join(value.split())
        if not value:
            if required:
                raise _BadArgument(f"{self.tool} needs {name}.")
            return None
        if len(value) > max_len:
            raise _BadArgument(f"{name} is too long; keep it under {max_len} characters.")
        return value

    def integer(self, name: str) -> int | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise _BadArgument(f"{name} must be a whole number.")
        return int(value)

    def text_list(self, name: str) -> list[str] | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _BadArgument(f"{name} must be a list of names.")
        return [v for v in (" ".join(v.split()) for v in value) if v]


def _quantity(args: _Args) -> int | None:
    quantity = args.integer("quantity")
    if quantity is None:
        return None
    if quantity < 1:
        raise _BadArgument(args.tr("The quantity must be at least 1; to take something off, remove its line."))
    if quantity > MAX_QUANTITY:
        raise _BadArgument(args.tr(
            "We can take at most {max} of one item on a line; how many would you like?", max=MAX_QUANTITY))
    return quantity


def _item(menu: Menu, text: str, tr: Translator) -> tuple[Item, str | None]:
    """The item `text` names, and a size said inside it ("large pepperoni"), if any."""
    item = menu.find_item(text)
    if item is not None:
        return item, None
    words = text.split()
    for n in (1, 2):
        size = menu.find_size(" ".join(words[:n])) if len(words) > n else None
        if size is not None:
            item = menu.find_item(" ".join(words[n:]))
            if item is not None:
                return item, size
    category = [i for i in menu.items if i.category and normalize(i.category) == normalize(text)]
    if category:
        names = tr.join([i.name for i in category], "or")
        raise _BadArgument(tr("Which {text} would you like: {names}?", text=text, names=names))
    guess = menu.suggest_item(text)
    did = tr(" Did you mean the {name}?", name=guess.name) if guess else ""
    names = tr.join([i.name for i in menu.items])
    raise _BadArgument(tr("We don't have {text}.{did} The menu has {names}.", text=text, did=did, names=names))


def _size(menu: Menu, item: Item, text: str | None, tr: Translator) -> str | None:
    if not item.sizes:
        if text is not None and menu.find_size(text) is None:
            raise _BadArgument(tr("We don't have a {size} size; the {name} comes in one size.", size=text,
                                  name=item.name))
        if text is not None:
            raise _BadArgument(tr("The {name} comes in one size; add it without a size.", name=item.name))
        return None
    phrase = tr.join(list(item.sizes), "or")
    if text is None:
        raise _BadArgument(tr("What size would you like the {name}: {sizes}?", name=item.name, sizes=phrase))
    size = menu.find_size(text)
    if size is None or size not in item.sizes:
        raise _BadArgument(tr("We don't have a {size} size; {sizes}?", size=text, sizes=phrase))
    return size


def _toppings(menu: Menu, item: Item, size: str | None, texts: list[str], tr: Translator) -> tuple[str, ...]:
    if not texts:
        return ()
    if not item.takes_toppings:
        raise _BadArgument(tr("We can't add toppings to the {name}.", name=item.name))
    if len(texts) > MAX_TOPPINGS:
        raise _BadArgument(tr("We can put at most {max} extra toppings on one item.", max=MAX_TOPPINGS))
    keys: list[str] = []
    for text in texts:
        topping = menu.find_topping(text)
        if topping is None:
            names = tr.join([t.name for t in menu.toppings])
            raise _BadArgument(tr("We don't have {text} as a topping. The toppings are {names}.", text=text,
                                  names=names))
        if topping.key in keys:
            raise _BadArgument(tr("{topping} is listed twice; each topping can be added once.",
                                  topping=topping.name.capitalize()))
        try:
            topping.price(size)
        except KeyError:
            raise _BadArgument(tr("We can't put {topping} on the {name} in that size.", topping=topping.name,
                                  name=item.name)) from None
        keys.append(topping.key)
    return tuple(keys)


def _line_number(order: Order, args: _Args) -> int:
    number = args.integer("line")
    if number is None:
        raise _BadArgument(f"{args.tool} needs the item number (line), starting at 1.")
    if not order.lines:
        raise _BadArgument(args.tr("The order is empty; there is no item to change."))
    if not 1 <= number <= len(order.lines):
        count = len(order.lines)
        if count == 1:
            raise _BadArgument(args.tr("There is no item {number}; the order has 1 item.", number=number))
        raise _BadArgument(args.tr("There is no item {number}; the order has {count} items.", number=number,
                                   count=count))
    return number


def _summary(order: Order, menu: Menu, tr: Translator) -> dict[str, Any]:
    priced = order.priced_lines(menu)
    return {
        "order": [f"{n}. {describe(p, tr)}, {tr.money(p.total_cents)}" for n, p in enumerate(priced, 1)],
        "subtotal": tr.money(sum(p.total_cents for p in priced)),
    }


def _add_item(order: Order, menu: Menu, args: _Args, tax_rate_bp: int) -> ToolResult:
    args.only("item", "size", "quantity", "toppings", "notes")
    text = args.text("item", max_len=100, required=True)
    assert text is not None
    item, said_size = _item(menu, text, args.tr)
    size_text = args.text("size", max_len=40)
    size = _size(menu, item, size_text if size_text is not None else said_size, args.tr)
    quantity = _quantity(args) or 1
    toppings = _toppings(menu, item, size, args.text_list("toppings") or [], args.tr)
    notes = args.text("notes", max_len=MAX_NOTES)
    if len(order.lines) >= MAX_LINES:
        raise _BadArgument(args.tr("The order has reached {max} lines; review it before adding more.", max=MAX_LINES))
    line = OrderLine(item.key, size, quantity, toppings, notes)
    order.lines.append(line)
    n = len(order.lines)
    p = price_line(line, menu, n)
    message = args.tr("Added item {number}: {line}, {price}.", number=n, line=describe(p, args.tr),
                      price=args.tr.money(p.total_cents))
    return _done({"message": message, **_summary(order, menu, args.tr)}, changed=True)


def _update_item(order: Order, menu: Menu, args: _Args, tax_rate_bp: int) -> ToolResult:
    args.only("line", "size", "quantity", "toppings", "notes")
    n = _line_number(order, args)
    old = order.lines[n - 1]
    if not any(args.given(k) for k in ("size", "quantity", "toppings", "notes")):
        raise _BadArgument(args.tr("Say what to change on item {number}: size, quantity, toppings or notes.", number=n))
    item = menu.item(old.item)
    size_text = args.text("size", max_len=40)
    size = _size(menu, item, size_text, args.tr) if size_text is not None else old.size
    quantity = _quantity(args) or old.quantity
    topping_texts = args.text_list("toppings")
    if topping_texts is None:
        toppings = _toppings(menu, item, size, [menu.topping(k).name for k in old.toppings], args.tr)
    else:
        toppings = _toppings(menu, item, size, topping_texts, args.tr)
    notes = args.text("notes", max_len=MAX_NOTES) if "notes" in args.raw else old.notes
    new = OrderLine(item.key, size, quantity, toppings, notes)
    order.lines[n - 1] = new
    p = price_line(new, menu, n)
    changed = new != old
    message = args.tr("Item {number} is now {line}, {price}.", number=n, line=describe(p, args.tr),
                      price=args.tr.money(p.total_cents))
    return _done({"message": message, **_summary(order, menu, args.tr)}, changed=changed)


def _remove_item(order: Order, menu: Menu, args: _Args, tax_rate_bp: int) -> ToolResult:
    args.only("line")
    n = _line_number(order, args)
    removed = price_line(order.lines[n - 1], menu, n)
    del order.lines[n - 1]
    message = args.tr("Removed {line}.", line=describe(removed, args.tr))
    if order.lines:
        message += args.tr(" The remaining items are renumbered.")
    return _done({"message": message, **_summary(order, menu, args.tr)}, changed=True)


_PHONE_CHARS = re.compile(r"[\s().\-]")


def _phone(text: str, tr: Translator) -> str:
    compact = _PHONE_CHARS.sub("", text)
    digits = compact[1:] if compact.startswith("+") else compact
    if not digits.isdigit() or not 7 <= len(digits) <= 15:
        raise _BadArgument(tr("That phone number doesn't look right; please ask for it again with the area code."))
    return compact


def _set_customer(order: Order, menu: Menu, args: _Args, tax_rate_bp: int) -> ToolResult:
    args.only("name", "fulfillment", "address", "phone")
    name = args.text("name", max_len=MAX_NAME)
    address = args.text("address", max_len=MAX_ADDRESS)
    fulfillment_text = args.text("fulfillment", max_len=40)
    phone_text = args.text("phone", max_len=40)
    if name is None and address is None and fulfillment_text is None and phone_text is None:
        raise _BadArgument("Give at least one of name, fulfillment, address or phone.")
    fulfillment = order.fulfillment
    if fulfillment_text is not None:
        fulfillment = _FULFILLMENT_WORDS.get(fulfillment_text.lower())
        if fulfillment is None:
            raise _BadArgument(args.tr("Is that for pickup or delivery?"))
    phone = _phone(phone_text, args.tr) if phone_text is not None else order.phone
    if fulfillment == "delivery" and not (address or order.address):
        raise _BadArgument(args.tr("For delivery we need the address: what is the delivery address?"))
    before = (order.customer_name, order.fulfillment, order.address, order.phone)
    if name is not None:
        order.customer_name = name
    if address is not None:
        order.address = address
    order.fulfillment = fulfillment
    order.phone = phone
    after = (order.customer_name, order.fulfillment, order.address, order.phone)
    missing = [m for m in order.missing() if m != "items"]
    out: dict[str, Any] = {
        "name": order.customer_name,
        "fulfillment": order.fulfillment,
        "address": order.address if order.fulfillment == "delivery" else None,
        "phone": order.phone,
    }
    if missing:
        out["still_needed"] = missing
    return _done(out, changed=before != after)


def _get_menu(order: Order, menu: Menu, args: _Args, tax_rate_bp: int) -> ToolResult:
    args.only()
    return _done({"menu": menu.summary_text()})


_MISSING_WORDS = {"address": "the delivery address", "name": "the name", "pickup or delivery": "pickup or delivery"}


def _missing_error(order: Order, tr: Translator) -> str:
    missing = order.missing()
    if "items" in missing:
        return tr("The order is empty; ask what they would like first.")
    return tr("Before the read-back we still need: {what}.", what=tr.join([tr(_MISSING_WORDS[m]) for m in missing]))


def _review_order(order: Order, menu: Menu, args: _Args, tax_rate_bp: int) -> ToolResult:
    args.only()
    if order.missing():
        raise _BadArgument(_missing_error(order, args.tr))
    totals = order.totals(menu, tax_rate_bp)
    return _done(
        {
            "read_back": read_back(order, menu, tax_rate_bp, args.tr),
            "instruction": READ_EXACTLY,
            "total": args.tr.money(totals.total_cents),
        },
        intent="review",
    )


def _confirm_order(order: Order, menu: Menu, args: _Args, tax_rate_bp: int) -> ToolResult:
    args.only()
    if order.missing():
        raise _BadArgument(_missing_error(order, args.tr))
    return _done({"message": "Confirmation requested; wait for the order number before telling the caller."}, intent="confirm")


def _reason_tool(intent: str, message: str) -> Callable[[Order, Menu, _Args, int], ToolResult]:
    def run(order: Order, menu: Menu, args: _Args, tax_rate_bp: int) -> ToolResult:
        args.only("reason")
        reason = args.text("reason", max_len=MAX_REASON)
        out: dict[str, Any] = {"message": message}
        if reason is not None:
            out["reason"] = reason
        return _done(out, intent=intent)

    return run


_HANDLERS: dict[str, Callable[[Order, Menu, _Args, int], ToolResult]] = {
    "add_item": _add_item,
    "update_item": _update_item,
    "remove_item": _remove_item,
    "set_customer": _set_customer,
    "get_menu": _get_menu,
    "review_order": _review_order,
    "confirm_order": _confirm_order,
    "reject_order": _reason_tool("reject", "Ask the caller what they would like to change."),
    "transfer_to_human": _reason_tool("transfer", "Tell the caller you are connecting them to a person now."),
    "end_call": _reason_tool("end_call", "Say a short goodbye; the call will end."),
}
