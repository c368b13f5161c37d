"""The shop's menu, parsed from TOML and validated: sizes, items, toppings, specials, hours.

Prices are written as decimal strings ("17.00") and held as int cents. A bad menu raises
`MenuError`; its message names the file, then the TOML line (syntax errors) or the field
path (schema errors, e.g. `items.pepperoni.sizes.large`). Unknown keys are errors.

Lookups forgive how a model or a caller names things: case, plurals, spaces or hyphens,
accents, a trailing category word ("pepperoni pizza"), and the aliases the menu lists.

Why one module of this length: loading a menu is mostly validation with a line and field in
every error message; the checks live beside the data they check.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import attrs

from voicebridge.jobs.hours import (
    DAY_MIN,
    Interval,
    OpeningHours,
    check_time_zone,
    parse_closure,
    parse_intervals,
)
from voicebridge.i18n import LanguageError, parse_languages
from voicebridge.jobs import files

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_MENU_NAME = "default_menu.toml"

_AMOUNT = re.compile(r"(\d{1,7})(?:\.(\d{1,2}))?")
_ID = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")
# What a caller is offered while the shop is closed (the menu's hours.when_closed).
WHEN_CLOSED = ("message", "call_back", "order_ahead")
_ARTICLES = ("a", "an", "the", "some")


class MenuError(Exception):
    """The menu file is unreadable or invalid; the message names the file and line or field."""


# -- money ------------------------------------------------------------------------------


def parse_amount(text: str) -> int:
    """Cents from a decimal string such as "17.00" or "5.5"; ValueError otherwise."""
    m = _AMOUNT.fullmatch(text)
    if m is None:
        raise ValueError(f"not a decimal amount: {text!r}")
    whole, frac = m.group(1), (m.group(2) or "").ljust(2, "0")
    return int(whole) * 100 + int(frac)


def format_amount(cents: int) -> str:
    """A decimal string from cents: 3294 -> "32.94"."""
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def format_money(cents: int) -> str:
    """Dollars for speech and screens: 3294 -> "$32.94", 123456 -> "$1,234.56"."""
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}${cents // 100:,}.{cents % 100:02d}"


# -- names ------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """A lookup key: accents and case folded, punctuation dropped, each word singular."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("&", " and ").replace("'", "").replace("\u2019", "")
    return " ".join(_singular(w) for w in re.findall(r"[a-z0-9]+", text))


def _singular(word: str) -> str:
    if len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "oes")):
        return word[:-2]
    return word[:-1]


def pluralize(name: str) -> str:
    """English plural of a display name's last word ("pizza" -> "pizzas")."""
    if name.endswith(("s", "x", "z", "ch", "sh")):
        return name + "es"
    if len(name) > 1 and name.endswith("y") and name[-2] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


def join_words(words: list[str], conj: str = "and") -> str:
    """ "a", "a and b", "a, b and c" (or with "or")."""
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + f" {conj} " + words[-1]


# -- the model --------------------------------------------------------------------------


@attrs.frozen
class Size:
    """A size the shop sells (small, medium, large), with spoken aliases."""

    key: str
    description: str = ""
    aliases: tuple[str, ...] = ()


@attrs.frozen
class Item:
    """One thing to order: either one price, or a price per size."""

    key: str
    name: str
    plural: str
    category: str
    description: str
    aliases: tuple[str, ...]
    price_cents: int | None  # one-size items
    size_prices: tuple[tuple[str, int], ...]  # in menu order; empty for one-size items
    takes_toppings: bool

    @property
    def sizes(self) -> tuple[str, ...]:
        return tuple(size for size, _ in self.size_prices)

    def price(self, size: str | None) -> int:
        """Cents for one of this item in `size` (None for one-size items); KeyError if not sold."""
        if not self.size_prices:
            if size is not None:
                raise KeyError(size)
            assert self.price_cents is not None
            return self.price_cents
        return _sized_price(self.size_prices, size)


@attrs.frozen
class Topping:
    """An extra topping: one flat price, or a price per size."""

    key: str
    name: str
    aliases: tuple[str, ...]
    price_cents: int | None
    size_prices: tuple[tuple[str, int], ...]

    def price(self, size: str | None) -> int:
        """Cents on an item of `size`; KeyError when it has no price for that size."""
        if self.price_cents is not None:
            return self.price_cents
        return _sized_price(self.size_prices, size)


def _sized_price(size_prices: tuple[tuple[str, int], ...], size: str | None) -> int:
    """The cents listed for `size`; KeyError if it has none."""
    for key, cents in size_prices:
        if key == size:
            return cents
    raise KeyError(size)


@attrs.frozen
class Special:
    """A named suggestion the AI can mention (text only; it is ordered as items)."""

    name: str
    description: str


@attrs.frozen
class DayHours:
    """Opening hours of one weekday: (open, close) minutes after its midnight (close may pass
    midnight, up to 48:00); empty when closed."""

    day: str
    ranges: tuple[Interval, ...]

    def text(self) -> str:
        if not self.ranges:
            return f"{self.day.capitalize()} closed"
        spans = " and ".join(f"{_clock(a)} to {_clock(b % DAY_MIN if b > DAY_MIN else b)}" for a, b in self.ranges)
        return f"{self.day.capitalize()} {spans}"


def _clock(minutes: int) -> str:
    h, m = divmod(minutes, 60)
    suffix = "am" if h < 12 or h == 24 else "pm"
    h12 = h % 12 or 12
    return f"{h12}{suffix}" if m == 0 else f"{h12}:{m:02d}{suffix}"


@attrs.frozen
class Menu:
    """A validated menu. Build it with `parse_menu` or `load_menu`."""

    source: str
    shop_name: str
    sizes: tuple[Size, ...]
    items: tuple[Item, ...]
    toppings: tuple[Topping, ...]
    specials: tuple[Special, ...]
    hours: tuple[DayHours, ...]
    # The hours enforced in the shop's time zone; None when the menu gives no hours.timezone (then
    # the hours are only words for the model, as before enforcement existed).
    opening: OpeningHours | None = attrs.field(kw_only=True, default=None)
    when_closed: str = attrs.field(kw_only=True, default="message")
    _item_index: dict[str, str] = attrs.field(repr=False, eq=False)
    _topping_index: dict[str, str] = attrs.field(repr=False, eq=False)
    _size_index: dict[str, str] = attrs.field(repr=False, eq=False)
    languages: tuple[str, ...] | None = None  # the file's `languages` (first = default); None: not given

    @property
    def size_keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.sizes)

    def item(self, key: str) -> Item:
        """The item with id `key`; KeyError if there is none."""
        for item in self.items:
            if item.key == key:
                return item
        raise KeyError(key)

    def topping(self, key: str) -> Topping:
        """The topping with id `key`; KeyError if there is none."""
        for topping in self.toppings:
            if topping.key == key:
                return topping
        raise KeyError(key)

    def find_item(self, text: str) -> Item | None:
        """The item a caller or model means by `text`, or None."""
        key = _lookup(self._item_index, text)
        return None if key is None else self.item(key)

    def find_topping(self, text: str) -> Topping | None:
        """The topping meant by `text` ("Jalapeños", "mushroom"), or None."""
        key = _lookup(self._topping_index, text)
        return None if key is None else self.topping(key)

    def find_size(self, text: str) -> str | None:
        """The size key meant by `text` ("Large", "lg"), or None."""
        return _lookup(self._size_index, text)

    def suggest_item(self, text: str) -> Item | None:
        """The closest item name to a misheard `text`, if any is close."""
        close = difflib.get_close_matches(normalize(text), list(self._item_index), n=1, cutoff=0.75)
        return self.item(self._item_index[close[0]]) if close else None

    def sizes_phrase(self, sizes: tuple[str, ...] | None = None) -> str:
        """ "small, medium or large" for the given sizes (default: all)."""
        return join_words(list(self.size_keys if sizes is None else sizes), "or")

    def summary_text(self) -> str:
        """The menu as short text for the model: items, prices, toppings, specials, hours."""
        parts = [f"{self.shop_name} menu."]
        for category in dict.fromkeys(item.category for item in self.items):
            entries = []
            for item in (i for i in self.items if i.category == category):
                if item.size_prices:
                    prices = ", ".join(f"{s} {format_money(c)}" for s, c in item.size_prices)
                    entries.append(f"{item.name} ({prices})")
                else:
                    assert item.price_cents is not None
                    entries.append(f"{item.name} {format_money(item.price_cents)}")
            label = pluralize(category).capitalize() if category else "Items"
            parts.append(f"{label}: " + "; ".join(entries) + ".")
        if self.toppings:
            entries = []
            for t in self.toppings:
                if t.price_cents is not None:
                    entries.append(f"{t.name} {format_money(t.price_cents)}")
                else:
                    prices = ", ".join(f"{s} {format_money(c)}" for s, c in t.size_prices)
                    entries.append(f"{t.name} ({prices})")
            parts.append("Extra toppings: " + "; ".join(entries) + ".")
        if self.specials:
            parts.append("Specials: " + " ".join(f"{s.name}: {s.description}" for s in self.specials))
        parts.append("Hours: " + "; ".join(d.text() for d in self.hours) + ".")
        return " ".join(parts)


def _lookup(index: dict[str, str], text: str) -> str | None:
    key = normalize(text)
    if key in index:
        return index[key]
    words = key.split(" ")
    if len(words) > 1 and words[0] in _ARTICLES:
        return index.get(" ".join(words[1:]))
    return None


# -- loading ----------------------------------------------------------------------------


def load_menu(path: Path | None) -> Menu:
    """Read and validate the menu at `path`, or the packaged default when None."""
    if path is None:
        text = resources.files(__package__).joinpath(DEFAULT_MENU_NAME).read_text(encoding="utf-8")
        return parse_menu(text, DEFAULT_MENU_NAME)
    return parse_menu(files.read_text(path, MenuError), str(path))


def parse_menu(text: str, source: str) -> Menu:
    """Validate menu TOML `text`; `source` (a file name) prefixes every error message."""
    return _Parser(source).menu(files.parse_toml(text, source, MenuError))


def menu_from_data(data: dict[str, Any], source: str) -> Menu:
    """Validate a menu already read from TOML (a business file's own tables); errors name `source`."""
    return _Parser(source).menu(data)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> NoReturn:
        raise MenuError(f"{self.source}: {path}: {message}")

    # -- generic readers

    def table(self, value: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"expected a table, got {_kind(value)}")
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                did = f"; did you mean {hint[0]!r}?" if hint else f" (allowed: {', '.join(allowed)})"
                self.fail(_join(path, key), f"unknown key{did}")
        for key in required:
            if key not in value:
                self.fail(_join(path, key), "missing")
        return value

    def text(self, value: Any, path: str, *, max_len: int = 500) -> str:
        if not isinstance(value, str):
            self.fail(path, f"expected a string, got {_kind(value)}")
        text: str = value.strip()
        if not text:
            self.fail(path, "must not be empty")
        if len(text) > max_len:
            self.fail(path, f"longer than {max_len} characters")
        return text

    def text_list(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.fail(path, f"expected a list of strings, got {_kind(value)}")
        return tuple(self.text(v, f"{path}[{i}]", max_len=100) for i, v in enumerate(value))

    def amount(self, value: Any, path: str) -> int:
        if not isinstance(value, str):
            self.fail(path, f'price {value!r} must be a quoted decimal string like "17.00"')
        try:
            return parse_amount(value.strip())
        except ValueError:
            self.fail(path, f'price "{value}" is not a decimal amount like "17.00"')

    def ident(self, key: str, path: str) -> str:
        if not _ID.fullmatch(key):
            self.fail(path, "ids are lowercase letters and digits joined by - or _ (like garlic-knots)")
        return key

    # -- sections

    def menu(self, data: dict[str, Any]) -> Menu:
        self.table(data, "", ("job", "shop", "sizes", "items", "toppings", "specials", "hours", "languages"),
                   ("shop", "items", "hours"))
        if data.get("job", "pizza") != "pizza":
            self.fail("job", f'expected "pizza" in a pizza menu, got {data["job"]!r}')
        shop = self.table(data["shop"], "shop", ("name",), ("name",))
        shop_name = self.text(shop["name"], "shop.name", max_len=100)
        sizes = self.sizes(data.get("sizes", {}))
        size_keys = tuple(s.key for s in sizes)
        items = self.items(data["items"], size_keys)
        toppings = self.toppings(data.get("toppings", {}), size_keys)
        self.check_topping_sizes(items, toppings)
        specials = self.specials(data.get("specials", []))
        hours, opening, when_closed = self.hours(data["hours"])
        languages = None
        if "languages" in data:
            try:
                languages = parse_languages(data["languages"], "languages")
            except LanguageError as exc:
                self.fail("languages", str(exc).removeprefix("languages: "))
        return Menu(
            source=self.source,
            shop_name=shop_name,
            sizes=sizes,
            items=items,
            toppings=toppings,
            specials=specials,
            hours=hours,
            opening=opening,
            when_closed=when_closed,
            item_index=self.item_index(items),
            topping_index=self.simple_index(
                "toppings", [(t.key, (t.key.replace("-", " ").replace("_", " "), t.name, *t.aliases)) for t in toppings]
            ),
            size_index=self.simple_index("sizes", [(s.key, (s.key, *s.aliases)) for s in sizes]),
            languages=languages,
        )

    def sizes(self, value: Any) -> tuple[Size, ...]:
        self.table(value, "sizes", tuple(value) if isinstance(value, dict) else ())
        out = []
        for key, spec in value.items():
            path = f"sizes.{key}"
            self.ident(key, path)
            spec = self.table(spec, path, ("description", "aliases"))
            out.append(
                Size(
                    key=key,
                    description=self.text(spec["description"], f"{path}.description") if "description" in spec else "",
                    aliases=self.text_list(spec.get("aliases", []), f"{path}.aliases"),
                )
            )
        return tuple(out)

    def items(self, value: Any, size_keys: tuple[str, ...]) -> tuple[Item, ...]:
        if not isinstance(value, dict) or not value:
            self.fail("items", "expected a table of items with at least one item")
        out = []
        for key, spec in value.items():
            path = f"items.{key}"
            self.ident(key, path)
            spec = self.table(
                spec, path, ("name", "plural", "category", "description", "aliases", "price", "sizes", "toppings")
            )
            name = self.text(spec["name"], f"{path}.name", max_len=100) if "name" in spec else _words(key)
            price_cents, size_prices = self.prices(spec, path, size_keys, what="item")
            takes_toppings = spec.get("toppings", bool(size_prices))
            if not isinstance(takes_toppings, bool):
                self.fail(f"{path}.toppings", f"expected true or false, got {_kind(takes_toppings)}")
            out.append(
                Item(
                    key=key,
                    name=name,
                    plural=self.text(spec["plural"], f"{path}.plural", max_len=100) if "plural" in spec else pluralize(name),
                    category=self.text(spec["category"], f"{path}.category", max_len=40) if "category" in spec else "",
                    description=self.text(spec["description"], f"{path}.description") if "description" in spec else "",
                    aliases=self.text_list(spec.get("aliases", []), f"{path}.aliases"),
                    price_cents=price_cents,
                    size_prices=size_prices,
                    takes_toppings=takes_toppings,
                )
            )
        return tuple(out)

    def prices(
        self, spec: dict[str, Any], path: str, size_keys: tuple[str, ...], *, what: str
    ) -> tuple[int | None, tuple[tuple[str, int], ...]]:
        if "price" in spec and "sizes" in spec:
            self.fail(path, "give either price (one price) or sizes (a price per size), not both")
        if "price" in spec:
            return self.amount(spec["price"], f"{path}.price"), ()
        if "sizes" not in spec:
            self.fail(f"{path}.price", f"missing: give the {what} a price, or sizes with a price per size")
        sizes = spec["sizes"]
        if not isinstance(sizes, dict) or not sizes:
            self.fail(f"{path}.sizes", "expected a table of size = \"price\" with at least one size")
        out = []
        for size, raw in sizes.items():
            if size not in size_keys:
                known = join_words(list(size_keys), "or") if size_keys else "none defined in [sizes]"
                self.fail(f"{path}.sizes.{size}", f"unknown size {size!r} (sizes: {known})")
            out.append((size, self.amount(raw, f"{path}.sizes.{size}")))
        order = {k: i for i, k in enumerate(size_keys)}
        return None, tuple(sorted(out, key=lambda p: order[p[0]]))

    def toppings(self, value: Any, size_keys: tuple[str, ...]) -> tuple[Topping, ...]:
        self.table(value, "toppings", tuple(value) if isinstance(value, dict) else ())
        out = []
        for key, spec in value.items():
            path = f"toppings.{key}"
            self.ident(key, path)
            spec = self.table(spec, path, ("name", "aliases", "price", "sizes"))
            price_cents, size_prices = self.prices(spec, path, size_keys, what="topping")
            out.append(
                Topping(
                    key=key,
                    name=self.text(spec["name"], f"{path}.name", max_len=100) if "name" in spec else _words(key),
                    aliases=self.text_list(spec.get("aliases", []), f"{path}.aliases"),
                    price_cents=price_cents,
                    size_prices=size_prices,
                )
            )
        return tuple(out)

    def check_topping_sizes(self, items: tuple[Item, ...], toppings: tuple[Topping, ...]) -> None:
        for item in items:
            if not item.takes_toppings:
                continue
            sizes: tuple[str | None, ...] = item.sizes or (None,)
            for topping in toppings:
                if topping.price_cents is not None:
                    continue
                for size in sizes:
                    priced = {s for s, _ in topping.size_prices}
                    if size not in priced:
                        what = f"size {size!r}" if size else "one-size items"
                        self.fail(
                            f"toppings.{topping.key}.sizes",
                            f"no price for {what}, which items.{item.key} takes toppings in",
                        )

    def specials(self, value: Any) -> tuple[Special, ...]:
        if not isinstance(value, list):
            self.fail("specials", f"expected an array of tables ([[specials]]), got {_kind(value)}")
        out = []
        for i, spec in enumerate(value):
            path = f"specials[{i}]"
            spec = self.table(spec, path, ("name", "description"), ("name", "description"))
            out.append(
                Special(
                    name=self.text(spec["name"], f"{path}.name", max_len=100),
                    description=self.text(spec["description"], f"{path}.description"),
                )
            )
        return tuple(out)

    def hours(self, value: Any) -> tuple[tuple[DayHours, ...], OpeningHours | None, str]:
        extra = ("timezone", "closures", "when_closed")
        self.table(value, "hours", WEEKDAYS + extra, WEEKDAYS)
        out = []
        for day in WEEKDAYS:
            path = f"hours.{day}"
            raw = value[day]
            if not isinstance(raw, str):
                self.fail(path, f'expected "HH:MM-HH:MM" or "closed", got {_kind(raw)}')
            try:
                out.append(DayHours(day, parse_intervals(raw)))
            except ValueError as exc:
                self.fail(path, str(exc))
        if "timezone" not in value:
            for key in extra[1:]:
                if key in value:
                    self.fail(f"hours.{key}", 'needs hours.timezone (e.g. timezone = "America/New_York") '
                                              "so the hours can be kept in the shop's own time")
            return tuple(out), None, "message"
        try:
            zone = check_time_zone(value["timezone"])
        except ValueError as exc:
            self.fail("hours.timezone", str(exc))
        raw_closures = value.get("closures", [])
        if not isinstance(raw_closures, list):
            self.fail("hours.closures", f'expected a list of dates ("2026-12-25" or "2026-12-24..2026-12-26"), '
                                        f"got {_kind(raw_closures)}")
        closures = []
        for i, raw in enumerate(raw_closures):
            try:
                closures.append(parse_closure(raw))
            except ValueError as exc:
                self.fail(f"hours.closures[{i}]", str(exc))
        when_closed = value.get("when_closed", "message")
        if when_closed not in WHEN_CLOSED:
            self.fail("hours.when_closed", f"expected one of {', '.join(map(repr, WHEN_CLOSED))}, got {when_closed!r}")
        week = tuple(d.ranges for d in out)
        return tuple(out), OpeningHours(zone, week, tuple(closures)), when_closed

    # -- indexes

    def item_index(self, items: tuple[Item, ...]) -> dict[str, str]:
        index: dict[str, str] = {}
        for item in items:
            cat = normalize(item.category) if item.category else ""
            for raw in (_words(item.key), item.name, item.plural, *item.aliases):
                base = normalize(raw)
                variants = {base}
                if cat:
                    if base.endswith(" " + cat):
                        variants.add(base[: -len(cat) - 1])
                    elif base != cat:
                        variants.add(f"{base} {cat}")
                for variant in variants:
                    if not variant:
                        continue
                    other = index.setdefault(variant, item.key)
                    if other != item.key:
                        self.fail(f"items.{item.key}", f"the name {raw!r} also names items.{other}")
        return index

    def simple_index(self, section: str, entries: list[tuple[str, tuple[str, ...]]]) -> dict[str, str]:
        index: dict[str, str] = {}
        for key, names in entries:
            for raw in names:
                variant = normalize(raw)
                other = index.setdefault(variant, key)
                if other != key:
                    self.fail(f"{section}.{key}", f"the name {raw!r} also names {section}.{other}")
        return index


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _words(key: str) -> str:
    return key.replace("-", " ").replace("_", " ")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
