"""Menu loading, validation messages and forgiving lookups (voicebridge.jobs.pizza.menu)."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicebridge.jobs.pizza.menu import (
    MenuError,
    format_amount,
    format_money,
    load_menu,
    parse_amount,
    parse_menu,
)

SMALL_MENU = """
[shop]
name = "Test Slice"

[sizes.small]
[sizes.large]
aliases = ["lg"]

[items.pepperoni]
name = "pepperoni pizza"
category = "pizza"
aliases = ["pep"]
sizes = { small = "10.00", large = "17.00" }

[items.soda]
price = "2.50"

[toppings.mushrooms]
price = "1.00"

[toppings.sausage]
sizes = { small = "1.50", large = "2.50" }

[hours]
monday = "11:00-22:00"
tuesday = "11:00-22:00"
wednesday = "11:00-22:00"
thursday = "11:00-22:00"
friday = "11:00-23:00"
saturday = "11:00-23:00"
sunday = "closed"
"""


def bad(text: str) -> str:
    """The MenuError message for menu `text` read from menu.toml."""
    with pytest.raises(MenuError) as info:
        parse_menu(text, "menu.toml")
    return str(info.value)


def test_default_menu_has_the_shop_prices_in_cents() -> None:
    """The packaged menu is Bridge Street Pizza with the advertised prices, held as cents."""
    menu = load_menu(None)
    assert menu.shop_name == "Bridge Street Pizza"
    assert menu.size_keys == ("small", "medium", "large")
    assert menu.item("pepperoni").size_prices == (("small", 1200), ("medium", 1450), ("large", 1700))
    assert menu.item("margherita").size_prices == (("small", 1100), ("medium", 1350), ("large", 1600))
    assert {i.key for i in menu.items} >= {"veggie", "hawaiian", "meat-lovers"}
    assert menu.item("garlic-knots").price(None) == 550
    assert menu.item("wings").price(None) == 999
    assert menu.item("soda").price(None) == 250
    assert [t.key for t in menu.toppings] == [
        "extra-cheese", "mushrooms", "onions", "peppers", "olives", "sausage", "bacon", "jalapenos", "pineapple",
    ]
    assert [s.name.lower() for s in menu.specials] == ["garden supreme", "meat lovers", "spicy hawaiian"]
    assert [d.day for d in menu.hours][0] == "monday" and len(menu.hours) == 7


def test_default_menu_pizzas_take_every_topping_in_every_size() -> None:
    """Each topping has a price on each pizza size; sides take no toppings."""
    menu = load_menu(None)
    for item in menu.items:
        if item.category == "pizza":
            assert item.takes_toppings
            for size in item.sizes:
                for topping in menu.toppings:
                    assert topping.price(size) > 0
        else:
            assert not item.takes_toppings and item.sizes == ()


@pytest.mark.parametrize(
    ("said", "key"),
    [
        ("Pepperoni", "pepperoni"),
        ("pepperoni pizzas", "pepperoni"),
        ("PEP", "pepperoni"),
        ("cheese pizza", "margherita"),
        ("Margarita", "margherita"),
        ("meat-lovers", "meat-lovers"),
        ("Meat Lover's Pizza", "meat-lovers"),
        ("meat_lovers", "meat-lovers"),
        ("garlic knots", "garlic-knots"),
        ("Garlic-Knot", "garlic-knots"),
        ("the wings", "wings"),
        ("chicken wings", "wings"),
        ("sodas", "soda"),
        ("a soda", "soda"),
        ("ham and pineapple", "hawaiian"),
    ],
)
def test_item_lookup_forgives_case_plurals_hyphens_and_aliases(said: str, key: str) -> None:
    """What a model says maps to the menu item it means."""
    item = load_menu(None).find_item(said)
    assert item is not None and item.key == key


def test_lookup_does_not_guess_unknown_items() -> None:
    """Things not on the menu are not matched, though a near miss is suggested."""
    menu = load_menu(None)
    assert menu.find_item("calzone") is None
    assert menu.find_item("pizza") is None
    assert menu.find_item("peperoni") is None
    suggestion = menu.suggest_item("peperoni")
    assert suggestion is not None and suggestion.key == "pepperoni"


def test_size_and_topping_lookup_forgive_case_accents_and_aliases() -> None:
    """Sizes and toppings are found by alias, case, plural or accent."""
    menu = load_menu(None)
    assert menu.find_size("LARGE") == "large"
    assert menu.find_size("lg") == "large"
    assert menu.find_size("family") is None
    jalapenos = menu.find_topping("Jalapeños")
    assert jalapenos is not None and jalapenos.key == "jalapenos"
    mushrooms = menu.find_topping("mushroom")
    assert mushrooms is not None and mushrooms.key == "mushrooms"
    cheese = menu.find_topping("Extra-Cheese")
    assert cheese is not None and cheese.key == "extra-cheese"


def test_topping_prices_flat_or_per_size() -> None:
    """A flat topping costs the same on every size; a per-size one follows the size."""
    menu = parse_menu(SMALL_MENU, "menu.toml")
    assert menu.topping("mushrooms").price("small") == menu.topping("mushrooms").price("large") == 100
    assert menu.topping("sausage").price("small") == 150
    assert menu.topping("sausage").price("large") == 250


def test_menu_from_a_file_path(tmp_path: Path) -> None:
    """load_menu reads a TOML file given by path."""
    path = tmp_path / "menu.toml"
    path.write_text(SMALL_MENU, encoding="utf-8")
    menu = load_menu(path)
    assert menu.shop_name == "Test Slice"
    assert menu.source == str(path)
    assert menu.hours[-1].ranges == ()


def test_missing_menu_file_names_the_file(tmp_path: Path) -> None:
    """A menu path that does not exist is a MenuError naming it."""
    path = tmp_path / "nope.toml"
    with pytest.raises(MenuError, match=r"nope\.toml: no such file"):
        load_menu(path)


def test_menu_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 give a clear error naming the file."""
    path = tmp_path / "menu.toml"
    path.write_bytes(b"[shop]\nname = \"\xff\"\n")
    with pytest.raises(MenuError, match=r"menu\.toml: not UTF-8"):
        load_menu(path)


def test_syntax_error_names_file_and_line() -> None:
    """A TOML syntax error gives the file and the line number."""
    text = SMALL_MENU.replace('name = "Test Slice"', 'name = "Test Slice')
    line = text.splitlines().index('name = "Test Slice') + 1
    message = bad(text)
    assert message.startswith(f"menu.toml: line {line}, column")
    assert "TOML syntax error" in message


def test_bad_price_names_the_field_path() -> None:
    """A malformed price is reported with its full field path and value."""
    message = bad(SMALL_MENU.replace('large = "17.00"', 'large = "17.0x"'))
    assert message.startswith('menu.toml: items.pepperoni.sizes.large: price "17.0x" is not a decimal amount')


def test_price_written_as_a_number_is_rejected() -> None:
    """Prices must be quoted strings: a float would lose cents."""
    message = bad(SMALL_MENU.replace('price = "2.50"', "price = 2.5"))
    assert message.startswith("menu.toml: items.soda.price: price 2.5 must be a quoted decimal string")


def test_price_with_three_decimals_is_rejected() -> None:
    """Sub-cent prices are not decimal amounts of money."""
    message = bad(SMALL_MENU.replace('price = "1.00"', 'price = "1.005"'))
    assert message.startswith('menu.toml: toppings.mushrooms.price: price "1.005" is not a decimal amount')


def test_unknown_key_is_an_error_with_a_suggestion() -> None:
    """A typo in a key fails loudly, naming the path and the likely key."""
    message = bad(SMALL_MENU.replace('category = "pizza"', 'catgory = "pizza"'))
    assert message == "menu.toml: items.pepperoni.catgory: unknown key; did you mean 'category'?"


def test_unknown_top_level_section_is_an_error() -> None:
    """An unknown section is not silently ignored."""
    message = bad(SMALL_MENU + '\n[drinks]\ncola = "1.00"\n')
    assert message.startswith("menu.toml: drinks: unknown key")


def test_unknown_size_on_an_item_is_an_error() -> None:
    """An item priced in a size the menu does not define is rejected."""
    message = bad(SMALL_MENU.replace('large = "17.00"', 'large = "17.00", family = "25.00"'))
    assert message == "menu.toml: items.pepperoni.sizes.family: unknown size 'family' (sizes: small or large)"


def test_item_needs_a_price_or_sizes_but_not_both() -> None:
    """Each item has either one price or a price per size."""
    assert bad(SMALL_MENU.replace('price = "2.50"', 'name = "soda"')).startswith(
        "menu.toml: items.soda.price: missing"
    )
    both = SMALL_MENU.replace('price = "2.50"', 'price = "2.50"\nsizes = { small = "2.00" }')
    assert bad(both).startswith("menu.toml: items.soda: give either price")


def test_per_size_topping_must_price_every_pizza_size() -> None:
    """A per-size topping without a price for a size pizzas come in is rejected."""
    message = bad(SMALL_MENU.replace('sizes = { small = "1.50", large = "2.50" }', 'sizes = { small = "1.50" }'))
    assert message.startswith("menu.toml: toppings.sausage.sizes: no price for size 'large'")


def test_missing_day_in_hours_is_an_error() -> None:
    """Every weekday needs hours or "closed"."""
    assert bad(SMALL_MENU.replace('sunday = "closed"\n', "")) == "menu.toml: hours.sunday: missing"


def test_bad_hours_name_the_day() -> None:
    """Malformed or empty hours name the weekday (a close before the open runs past midnight)."""
    assert bad(SMALL_MENU.replace('monday = "11:00-22:00"', 'monday = "11-22"')).startswith(
        'menu.toml: hours.monday: "11-22" is not "HH:MM-HH:MM"'
    )
    assert bad(SMALL_MENU.replace('monday = "11:00-22:00"', 'monday = "11:00-11:00"')).startswith(
        'menu.toml: hours.monday: "11:00-11:00" opens and closes at the same time'
    )
    assert bad(SMALL_MENU.replace('monday = "11:00-22:00"', 'monday = "11:00-25:00"')).startswith(
        'menu.toml: hours.monday: "11:00-25:00" is not a time of day'
    )


def test_alias_used_by_two_items_is_an_error() -> None:
    """One name cannot mean two items."""
    message = bad(SMALL_MENU.replace('price = "2.50"', 'price = "2.50"\naliases = ["pep"]'))
    assert message == "menu.toml: items.soda: the name 'pep' also names items.pepperoni"


def test_item_ids_must_be_lowercase_words() -> None:
    """Ids are lowercase words joined by hyphens."""
    message = bad(SMALL_MENU.replace("[items.soda]", "[items.Soda]"))
    assert message.startswith("menu.toml: items.Soda: ids are lowercase")


def test_menu_needs_a_shop_name() -> None:
    """A missing required section or field is named."""
    assert bad(SMALL_MENU.replace('[shop]\nname = "Test Slice"\n', "")) == "menu.toml: shop: missing"


def test_summary_text_lists_prices_specials_and_hours() -> None:
    """The get_menu text carries items with prices, toppings, specials and hours."""
    text = load_menu(None).summary_text()
    assert "pepperoni pizza (small $12.00, medium $14.50, large $17.00)" in text
    assert "order of wings $9.99" in text
    assert "Garden supreme" in text
    assert "Sunday 12pm to 9pm" in text


def test_money_formatting_round_trips() -> None:
    """Decimal strings parse to cents and format back."""
    assert parse_amount("17.00") == 1700
    assert parse_amount("5.5") == 550
    assert parse_amount("9") == 900
    assert format_amount(3294) == "32.94"
    assert format_money(123456) == "$1,234.56"
    assert format_money(5) == "$0.05"
    for text in ("17.0x", "-1.00", "1.005", "", " 1.00"):
        with pytest.raises(ValueError):
            parse_amount(text)
