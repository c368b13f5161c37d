"""The model's function tools: definitions, validation, and changes of mind (voicebridge.jobs.pizza.tools)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from voicebridge.jobs.pizza.menu import load_menu
from voicebridge.jobs.pizza.order import MAX_QUANTITY, Order, OrderLine, read_back
from voicebridge.jobs.pizza.tools import ToolResult, execute_tool, tool_definitions

MENU = load_menu(None)
TAX = 800


def call(order: Order, name: str, args: dict[str, Any] | str | None = None) -> ToolResult:
    """Run tool `name` with `args` (a dict is sent as JSON, a str as is)."""
    raw = args if isinstance(args, str) else json.dumps(args or {})
    return execute_tool(order, MENU, name, raw, tax_rate_bp=TAX)


def two_pizzas() -> Order:
    """An order with a large pepperoni and a medium margherita, no customer yet."""
    order = Order.empty(caller_number="+15550100111")
    assert call(order, "add_item", {"item": "pepperoni", "size": "large"}).ok
    assert call(order, "add_item", {"item": "margherita", "size": "medium"}).ok
    return order


def test_definitions_are_flat_ga_function_tools() -> None:
    """Each tool is {type, name, description, parameters} with an object schema; sizes are enumerated."""
    tools = tool_definitions(MENU)
    json.dumps(tools)
    assert [t["name"] for t in tools] == [
        "add_item", "update_item", "remove_item", "set_customer", "get_menu",
        "review_order", "confirm_order", "reject_order", "transfer_to_human", "end_call",
    ]
    for tool in tools:
        assert set(tool) == {"type", "name", "description", "parameters"}
        assert tool["type"] == "function" and tool["description"]
        assert tool["parameters"]["type"] == "object"
    add = tools[0]["parameters"]
    assert add["required"] == ["item"]
    assert add["properties"]["size"]["enum"] == ["small", "medium", "large"]
    assert "meat lovers pizza" in add["properties"]["item"]["description"]
    assert "jalapenos" in add["properties"]["toppings"]["description"]


def test_full_order_reviews_to_the_read_back() -> None:
    """Adding items and the customer, then review, gives intent review and the exact read-back."""
    order = two_pizzas()
    result = call(order, "set_customer", {"name": "Sam", "fulfillment": "pickup"})
    assert result.ok and result.changed and result.intent is None
    review = call(order, "review_order")
    assert review.ok and review.intent == "review" and not review.changed
    assert review.output["read_back"] == read_back(order, MENU, TAX)
    assert review.output["read_back"].endswith("total $32.94. Is that correct? Say yes, or press 1 to confirm.")
    assert "exactly" in review.output["instruction"]
    assert json.loads(review.output_json())["read_back"] == review.output["read_back"]


def test_add_item_reports_the_line_and_price() -> None:
    """add_item says what was added as which line, with the running order."""
    order = Order.empty()
    result = call(order, "add_item", {"item": "Pepperoni Pizzas", "size": "LG", "quantity": 2, "toppings": ["Mushroom"]})
    assert result.ok and result.changed
    assert order.lines == [OrderLine("pepperoni", "large", 2, ("mushrooms",))]
    assert result.output["message"] == "Added item 1: two large pepperoni pizzas with mushrooms, $36.00."
    assert result.output["order"] == ["1. two large pepperoni pizzas with mushrooms, $36.00"]


def test_size_said_inside_the_item_name_is_used() -> None:
    """ "large pepperoni" without a size argument is a large pepperoni."""
    order = Order.empty()
    assert call(order, "add_item", {"item": "large pepperoni"}).ok
    assert order.lines == [OrderLine("pepperoni", "large", 1)]


def test_null_optional_arguments_mean_not_given() -> None:
    """JSON null for an optional argument is treated as absent."""
    order = Order.empty()
    result = call(order, "add_item", {"item": "soda", "size": None, "quantity": None, "toppings": None, "notes": None})
    assert result.ok and order.lines == [OrderLine("soda", None, 1)]


BAD_CALLS: list[tuple[str, str, dict[str, Any] | str, str]] = [
    ("unknown item", "add_item", {"item": "calzone", "size": "large"}, "We don't have calzone."),
    ("near miss", "add_item", {"item": "peperoni", "size": "large"}, "Did you mean the pepperoni pizza?"),
    ("category only", "add_item", {"item": "pizza", "size": "large"}, "Which pizza would you like:"),
    ("family size", "add_item", {"item": "pepperoni", "size": "family"}, "We don't have a family size; small, medium or large?"),
    ("no size", "add_item", {"item": "pepperoni"}, "What size would you like the pepperoni pizza: small, medium or large?"),
    ("size on a soda", "add_item", {"item": "soda", "size": "large"}, "The soda comes in one size"),
    ("quantity 0", "add_item", {"item": "soda", "quantity": 0}, "at least 1"),
    ("quantity 500", "add_item", {"item": "soda", "quantity": 500}, f"at most {MAX_QUANTITY}"),
    ("quantity text", "add_item", {"item": "soda", "quantity": "two"}, "quantity must be a whole number"),
    ("quantity bool", "add_item", {"item": "soda", "quantity": True}, "quantity must be a whole number"),
    ("quantity fraction", "add_item", {"item": "soda", "quantity": 1.5}, "quantity must be a whole number"),
    ("item not text", "add_item", {"item": 5}, "item must be text"),
    ("no item", "add_item", {"size": "large"}, "add_item needs item"),
    ("unknown topping", "add_item", {"item": "pepperoni", "size": "large", "toppings": ["anchovies"]}, "We don't have anchovies as a topping"),
    ("toppings on soda", "add_item", {"item": "soda", "toppings": ["mushrooms"]}, "We can't add toppings to the soda"),
    ("topping twice", "add_item", {"item": "pepperoni", "size": "small", "toppings": ["olives", "black olives"]}, "Olives is listed twice"),
    ("unknown argument", "add_item", {"item": "soda", "colour": "red"}, "add_item has no argument 'colour'"),
    ("bad JSON", "add_item", '{"item": "soda"', "not valid JSON"),
    ("JSON list", "add_item", '["soda"]', "must be a JSON object"),
    ("unknown tool", "order_pizza", {}, "There is no tool named 'order_pizza'"),
    ("line 9 of 2", "update_item", {"line": 9, "size": "large"}, "There is no item 9; the order has 2 items."),
    ("line 0", "remove_item", {"line": 0}, "There is no item 0"),
    ("no line", "remove_item", {}, "remove_item needs the item number"),
    ("nothing to update", "update_item", {"line": 1}, "Say what to change on item 1"),
    ("update to family", "update_item", {"line": 2, "size": "family"}, "We don't have a family size"),
    ("update quantity 500", "update_item", {"line": 1, "quantity": 500}, f"at most {MAX_QUANTITY}"),
    ("delivery without address", "set_customer", {"name": "Sam", "fulfillment": "delivery"}, "what is the delivery address?"),
    ("odd fulfillment", "set_customer", {"fulfillment": "teleport"}, "pickup or delivery?"),
    ("short phone", "set_customer", {"phone": "12"}, "phone number doesn't look right"),
    ("empty customer", "set_customer", {}, "Give at least one of name"),
    ("long name", "set_customer", {"name": "x" * 200}, "name is too long"),
    ("menu with arguments", "get_menu", {"page": 2}, "get_menu has no argument 'page'"),
    ("review without customer", "review_order", {}, "we still need: the name and pickup or delivery."),
    ("confirm without customer", "confirm_order", {}, "we still need"),
    ("reason not text", "end_call", {"reason": 42}, "reason must be text"),
]


@pytest.mark.parametrize(("why", "name", "args", "error"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_arguments_return_a_sayable_error_and_change_nothing(
    why: str, name: str, args: dict[str, Any] | str, error: str
) -> None:
    """Invalid calls return ok=False with an error to say back, and the order is untouched."""
    order = two_pizzas()
    before = copy.deepcopy(order)
    result = call(order, name, args)
    assert not result.ok and not result.changed and result.intent is None
    assert error in result.output["error"]
    assert result.output["ok"] is False
    assert order == before


def test_review_of_an_empty_order_asks_for_items() -> None:
    """Reviewing nothing says the order is empty."""
    result = call(Order.empty(), "review_order")
    assert not result.ok and "The order is empty" in result.output["error"]


def test_change_of_mind_update_size_then_review() -> None:
    """Changing line 2 from medium to large reprices it and the read-back follows."""
    order = two_pizzas()
    call(order, "set_customer", {"name": "Sam", "fulfillment": "pickup"})
    result = call(order, "update_item", {"line": 2, "size": "large"})
    assert result.ok and result.changed
    assert order.lines[1] == OrderLine("margherita", "large", 1)
    assert result.output["message"] == "Item 2 is now one large margherita pizza, $16.00."
    review = call(order, "review_order")
    assert "one large margherita pizza, $16.00" in review.output["read_back"]
    assert "Subtotal $33.00, tax $2.64, total $35.64." in review.output["read_back"]


def test_update_replaces_toppings_and_keeps_what_was_not_mentioned() -> None:
    """Toppings are replaced as a list; size and quantity stay unless given."""
    order = Order.empty()
    call(order, "add_item", {"item": "veggie", "size": "small", "toppings": ["olives"], "notes": "crispy"})
    assert call(order, "update_item", {"line": 1, "toppings": ["extra cheese", "bacon"], "quantity": 3}).ok
    assert order.lines == [OrderLine("veggie", "small", 3, ("extra-cheese", "bacon"), "crispy")]
    assert call(order, "update_item", {"line": 1, "toppings": []}).ok
    assert order.lines[0].toppings == ()
    assert call(order, "update_item", {"line": 1, "notes": ""}).ok
    assert order.lines[0].notes is None


def test_update_to_the_same_values_is_not_a_change() -> None:
    """An update that changes nothing reports changed=False."""
    order = two_pizzas()
    result = call(order, "update_item", {"line": 1, "size": "large"})
    assert result.ok and not result.changed


def test_remove_item_renumbers_the_rest() -> None:
    """Removing line 1 leaves the margherita as item 1."""
    order = two_pizzas()
    result = call(order, "remove_item", {"line": 1})
    assert result.ok and result.changed
    assert result.output["message"].startswith("Removed one large pepperoni pizza.")
    assert order.lines == [OrderLine("margherita", "medium", 1)]
    assert result.output["order"] == ["1. one medium margherita pizza, $13.50"]
    assert not call(order, "remove_item", {"line": 2}).ok


def test_delivery_with_address_then_back_to_pickup() -> None:
    """Delivery needs an address; once given, switching to pickup leaves the address out of the read-back."""
    order = two_pizzas()
    result = call(order, "set_customer", {"name": "Sam", "fulfillment": "deliver", "address": " 12  Oak Street "})
    assert result.ok and order.fulfillment == "delivery" and order.address == "12 Oak Street"
    assert "For delivery to 12 Oak Street, name Sam." in call(order, "review_order").output["read_back"]
    assert call(order, "set_customer", {"fulfillment": "pick up"}).ok
    assert "For pickup, name Sam." in call(order, "review_order").output["read_back"]


def test_set_customer_reports_what_is_still_needed() -> None:
    """A name alone is stored, and the output says pickup or delivery is still needed."""
    order = two_pizzas()
    result = call(order, "set_customer", {"name": "Sam"})
    assert result.ok and order.customer_name == "Sam"
    assert result.output["still_needed"] == ["pickup or delivery"]


def test_phone_defaults_to_caller_id_and_can_be_changed() -> None:
    """The caller ID is the phone until the caller gives another."""
    order = two_pizzas()
    assert order.phone == "+15550100111"
    assert call(order, "set_customer", {"phone": "(555) 010-0222"}).ok
    assert order.phone == "5550100222"


def test_get_menu_returns_the_menu_text() -> None:
    """get_menu gives the short menu text and changes nothing."""
    result = call(Order.empty(), "get_menu", "")
    assert result.ok and not result.changed and result.intent is None
    assert result.output["menu"] == MENU.summary_text()


@pytest.mark.parametrize(
    ("name", "intent"),
    [("confirm_order", "confirm"), ("reject_order", "reject"), ("transfer_to_human", "transfer"), ("end_call", "end_call")],
)
def test_flow_tools_return_their_intent(name: str, intent: str) -> None:
    """confirm, reject, transfer and end_call hand their intent to the state machine."""
    order = two_pizzas()
    call(order, "set_customer", {"name": "Sam", "fulfillment": "pickup"})
    args = {} if name == "confirm_order" else {"reason": "caller asked"}
    result = call(order, name, args)
    assert result.ok and result.intent == intent and not result.changed
    if args:
        assert result.output["reason"] == "caller asked"


def test_too_many_lines_are_refused() -> None:
    """The order stops growing at its line limit, with a sayable error."""
    order = Order.empty()
    for _ in range(30):
        assert call(order, "add_item", {"item": "soda"}).ok
    result = call(order, "add_item", {"item": "soda"})
    assert not result.ok and "30 lines" in result.output["error"]
    assert len(order.lines) == 30
