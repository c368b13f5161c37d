"""Order pricing, half-up tax, the read-back sentence and the webhook body (voicebridge.jobs.pizza.order)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from voicebridge.jobs.pizza.menu import load_menu
from voicebridge.jobs.pizza.order import Order, OrderError, OrderLine, Totals, read_back, tax_cents

MENU = load_menu(None)


def example_order() -> Order:
    """A large pepperoni and a medium margherita for pickup, name Sam."""
    order = Order.empty(caller_number="+15550100111")
    order.lines += [OrderLine("pepperoni", "large", 1), OrderLine("margherita", "medium", 1)]
    order.customer_name = "Sam"
    order.fulfillment = "pickup"
    return order


def test_example_order_totals_are_exact() -> None:
    """$17.00 + $13.50 at 8% is $30.50 + $2.44 = $32.94."""
    assert example_order().totals(MENU, 800) == Totals(3050, 244, 3294)


def test_read_back_is_the_exact_sentence() -> None:
    """The read-back lists items with prices, pickup and name, totals, and how to confirm."""
    assert read_back(example_order(), MENU, 800) == (
        "You ordered: one large pepperoni pizza, $17.00; one medium margherita pizza, $13.50. "
        "For pickup, name Sam. Subtotal $30.50, tax $2.44, total $32.94. "
        "Is that correct? Say yes, or press 1 to confirm."
    )


@pytest.mark.parametrize(
    ("subtotal", "rate_bp", "tax"),
    [
        (200, 825, 17),  # 16.5 cents rounds up (banker's rounding would give 16)
        (1000, 825, 83),  # 82.5 -> 83 (banker's: 82)
        (600, 825, 50),  # 49.5 -> 50
        (199, 825, 16),  # 16.4175 -> 16
        (3050, 800, 244),  # exact
        (1, 5000, 1),  # 0.5 -> 1
        (1, 4999, 0),  # 0.4999 -> 0
        (0, 800, 0),
        (12345, 0, 0),
    ],
)
def test_tax_rounds_half_up_to_the_cent(subtotal: int, rate_bp: int, tax: int) -> None:
    """Tax is subtotal x rate, rounded half-up on the order subtotal."""
    assert tax_cents(subtotal, rate_bp) == tax


def test_tax_is_rounded_once_on_the_subtotal_not_per_line() -> None:
    """Two $2.50 sodas at 8.25% are taxed together: 41.25 -> 41, not 21 + 21."""
    order = Order.empty()
    order.lines += [OrderLine("soda", None, 1), OrderLine("soda", None, 1)]
    # Per line: 250 x 8.25% = 20.625 -> 21 each, 42 in all; on the subtotal 500 -> 41.25 -> 41.
    assert order.totals(MENU, 825) == Totals(500, 41, 541)


def test_bad_tax_rates_are_refused() -> None:
    """A rate outside 0 to 9999 basis points is a ValueError."""
    with pytest.raises(ValueError):
        tax_cents(100, 10_000)
    with pytest.raises(ValueError):
        tax_cents(100, -1)


def test_toppings_and_quantity_price_the_line() -> None:
    """Unit = item + toppings for the size; line = unit x quantity."""
    order = Order.empty()
    order.lines.append(OrderLine("pepperoni", "large", 2, ("sausage", "mushrooms")))
    (p,) = order.priced_lines(MENU)
    assert (p.unit_cents, p.total_cents) == (1700 + 275 + 100, 2 * 2075)
    assert order.totals(MENU, 800) == Totals(4150, 332, 4482)


def test_read_back_for_delivery_with_plurals_toppings_notes_and_other_phone() -> None:
    """Plural names, toppings, notes, the address and a phone given by the caller are read back."""
    order = Order.empty(caller_number="+15550100111")
    order.lines += [
        OrderLine("pepperoni", "small", 2, ("mushrooms", "extra-cheese"), "well done"),
        OrderLine("garlic-knots", None, 3),
    ]
    order.customer_name = "Robin"
    order.fulfillment = "delivery"
    order.address = "12 Oak Street"
    order.phone = "+15550100222"
    text = read_back(order, MENU, 800)
    assert text.startswith(
        "You ordered: two small pepperoni pizzas with mushrooms and extra cheese (well done), $29.00; "
        "three orders of garlic knots, $16.50. For delivery to 12 Oak Street, name Robin, phone +15550100222. "
    )
    assert text.endswith("Subtotal $45.50, tax $3.64, total $49.14. Is that correct? Say yes, or press 1 to confirm.")


def test_phone_defaults_to_the_caller_id() -> None:
    """A new order's phone is the number the caller rang from."""
    order = Order.empty(caller_number="+15550100111")
    assert order.phone == "+15550100111"
    assert Order.empty().phone is None


def test_missing_says_what_the_read_back_needs() -> None:
    """An empty order needs items, a name and pickup or delivery; delivery needs an address."""
    order = Order.empty()
    assert order.missing() == ["items", "name", "pickup or delivery"]
    order.lines.append(OrderLine("soda", None, 1))
    order.customer_name = "Sam"
    order.fulfillment = "delivery"
    assert order.missing() == ["address"]
    order.address = "1 Main Street"
    assert order.missing() == []


def test_a_line_not_on_the_menu_is_an_order_error() -> None:
    """Pricing a line for an item, size or topping the menu lacks raises OrderError naming the line."""
    for line in (
        OrderLine("calzone", None, 1),
        OrderLine("pepperoni", "family", 1),
        OrderLine("soda", "large", 1),
        OrderLine("pepperoni", "large", 1, ("anchovies",)),
    ):
        order = Order.empty()
        order.lines += [OrderLine("soda", None, 1), line]
        with pytest.raises(OrderError, match="^line 2: "):
            order.totals(MENU, 800)


def test_webhook_body_carries_cents_and_decimal_strings() -> None:
    """to_json gives items, unit and line prices, totals in cents and as strings, and who and when."""
    order = example_order()
    order.lines[0] = OrderLine("pepperoni", "large", 2, ("bacon",), "cut in squares")
    created = datetime(2025, 3, 1, 19, 30, tzinfo=timezone(timedelta(hours=-5)))
    body = order.to_json(MENU, 800, call_sid="CA0123", created_at=created, order_id=7)
    json.dumps(body)  # JSON-able
    assert body["order_id"] == 7
    assert body["call_sid"] == "CA0123"
    assert body["created_at"] == "2025-03-02T00:30:00Z"
    assert body["shop"] == "Bridge Street Pizza"
    assert body["customer"] == {"name": "Sam", "phone": "+15550100111"}
    assert body["fulfillment"] == "pickup" and body["delivery_address"] is None
    first = body["items"][0]
    assert first == {
        "line": 1,
        "item": "pepperoni",
        "name": "pepperoni pizza",
        "size": "large",
        "quantity": 2,
        "toppings": [{"topping": "bacon", "name": "bacon", "price_cents": 275, "price": "2.75"}],
        "notes": "cut in squares",
        "unit_price_cents": 1975,
        "unit_price": "19.75",
        "line_total_cents": 3950,
        "line_total": "39.50",
    }
    assert body["items"][1]["line_total"] == "13.50"
    assert (body["subtotal_cents"], body["subtotal"]) == (5300, "53.00")
    assert (body["tax_cents"], body["tax"]) == (424, "4.24")
    assert (body["total_cents"], body["total"]) == (5724, "57.24")
    assert body["tax_rate_bp"] == 800


def test_webhook_body_needs_an_aware_time() -> None:
    """A naive created_at is refused rather than guessed."""
    with pytest.raises(ValueError):
        example_order().to_json(MENU, 800, call_sid=None, created_at=datetime(2025, 1, 1))
