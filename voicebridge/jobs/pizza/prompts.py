"""The pizza shop's words for the model: session instructions and the job's fixed prompts."""

from __future__ import annotations

from voicebridge.engine.job import JobPrompts
from voicebridge.i18n import ENGLISH, Translator


def session_instructions(shop_name: str, menu_text: str) -> str:
    return (
        f"You answer the phone for {shop_name}. Speak briefly and warmly, one or two sentences at a "
        "time, in the caller's language. Take the caller's order with the tools: add_item, "
        "update_item and remove_item change the order; set_customer records the name and pickup or "
        "delivery (the caller's number is already known). Never invent items, sizes or prices and never "
        "compute totals yourself: when the caller is done, call review_order and read its `read_back` "
        "text to the caller exactly as given. If the caller says yes, call confirm_order; if they change "
        "anything, change it and call review_order again. After the order is confirmed, say goodbye and "
        "call end_call. If the caller asks for a person, call transfer_to_human. If a tool returns an "
        "error, tell the caller what it says in your own words and ask again.\n\n"
        f"Menu:\n{menu_text}"
    )


GREETING = "Greet the caller: thank them for calling the shop and ask what you can get started for them."
CONFIRMED_BY_KEYPAD = (
    "The caller pressed 1 to confirm and the order is saved. Tell them it is confirmed, thank them, say "
    "goodbye, then call end_call."
)
TRANSFER = "The caller wants a person. Say in one short sentence that you are connecting them with the shop now."
SAVE_FAILED = "The order could not be saved. Apologise and offer to connect the caller with the shop."
NOT_READ_BACK = ("The order has not been read back yet. Call review_order and read its read_back to the caller, "
                 "then ask them to confirm.")

PROMPTS = JobPrompts(greeting=GREETING, confirmed_by_keypad=CONFIRMED_BY_KEYPAD, save_failed=SAVE_FAILED,
                     not_read_back=NOT_READ_BACK, transfer=TRANSFER,
                     saved_as="The order is saved as number {id}.")


def closed_by_hours(next_opening: str | None, tr: Translator = ENGLISH.default) -> str:
    """The tool error and the model's note while the shop is outside its opening hours."""
    again = " " + tr("We open again {when}.", when=next_opening) if next_opening else ""
    return tr("The shop is closed right now and cannot take orders.") + again


def closed_for_now(next_opening: str | None, tr: Translator = ENGLISH.default) -> str:
    """The note and greeting while closed, for a shop that takes orders ahead."""
    again = " " + tr("We open again {when}.", when=next_opening) if next_opening else ""
    return tr("The shop is closed right now.") + again


def closed_offer(when_closed: str) -> str:
    """What the caller is offered while the shop is closed (the menu's hours.when_closed): a
    direction to the model, which says it in the caller's language."""
    if when_closed == "order_ahead":
        return ("Tell the caller so, kindly, with when the shop opens again, and offer to take their order now "
                "for a time after that: ask when they want it and call set_pickup_time.")
    if when_closed == "call_back":
        return ("Tell the caller so, kindly, with when the shop opens again, and ask them to call back then; "
                "do not offer a transfer, as nobody is at the shop.")
    return ("Tell the caller so, kindly, with when the shop opens again, and offer to connect them with the "
            "shop (call transfer_to_human) where they can leave a message if nobody answers.")


def closed_needs_time(next_opening: str | None, tr: Translator = ENGLISH.default) -> str:
    """confirm_order while closed, for a shop that takes orders ahead, without a time after the opening."""
    if next_opening:
        return tr("The shop is closed right now, so the order needs a time after we open again {when}. Ask the "
                  "caller when they want it and call set_pickup_time.", when=next_opening)
    return tr("The shop is closed right now, so the order needs a time. Ask the caller when they want it and "
              "call set_pickup_time.")


def time_outside_hours(when: str, next_opening: str | None, tr: Translator = ENGLISH.default) -> str:
    """A wanted time the shop is not open at."""
    if next_opening:
        return tr("We are not open {when}. The next opening after that is {next}. Ask the caller for a time when "
                  "we are open.", when=when, next=next_opening)
    return tr("We are not open {when}. Ask the caller for a time when we are open.", when=when)


def time_in_the_past(when: str, tr: Translator = ENGLISH.default) -> str:
    return tr("{when} has already passed. Ask the caller for a later time.", when=f"{when[0].upper()}{when[1:]}")


def time_too_far(days: int, tr: Translator = ENGLISH.default) -> str:
    return tr("We take orders up to {days} days ahead. Ask the caller for a sooner time.", days=days)


def time_arguments() -> str:
    return "set_pickup_time takes a JSON object with time ('18:30' or 'asap') and an optional date (YYYY-MM-DD)."


def date_not_understood(text: str) -> str:
    return f"{text!r} is not a date like 2026-12-05."


def time_not_understood(text: str) -> str:
    return f"{text!r} is not a time like '18:30' (24-hour clock) or 'asap'."


def closed_greeting(closed_text: str, offer: str) -> str:
    """The greeting while the shop is closed."""
    return f"Greet the caller and tell them: {closed_text} {offer}"
