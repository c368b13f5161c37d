"""The staff page as a person uses it, in a real headless Chromium (Debian's chromium + chromedriver).

The daemon runs for real on loopback with the local Realtime server, the local webhook receiver
and the local Twilio caller; the browser logs in, watches a call's transcript grow and its order
appear on the board without a reload, moves the order to ready, marks pepperoni sold out and sees
the next call refused it. In a deployment of two businesses, one business's staff see only its order.
With VOICEBRIDGE_SCREENSHOTS=1 the test saves docs/staff-board.png and
docs/staff-call.png from the real page.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio

from staff_shop import PASSWORD, STAFF, Shop, open_shop

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
DOCS = Path(__file__).resolve().parent.parent / "docs"

# Selenium blocks: each browser story runs in a worker thread while Trio serves the shop.
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and DRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
           "apt-get install chromium chromium-driver")


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="vb-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, what: Any, timeout_s: float = 10.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(what)


def text_of(driver: Any, css: str) -> str:
    """The text of the element `css` matches now ("" if none): read in one step, as cards are replaced live."""
    return str(driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css))


def screenshot(driver: Any, name: str) -> None:
    if os.environ.get("VOICEBRIDGE_SCREENSHOTS") == "1":
        assert driver.save_screenshot(str(DOCS / name)), f"could not save {name}"


def log_in(driver: Any, shop: Shop, name: str = STAFF) -> None:
    from selenium.webdriver.common.by import By

    driver.get(shop.base + "/staff/")
    assert driver.current_url.endswith("/staff/login")  # nothing shown before the login
    driver.find_element(By.NAME, "name").send_keys(name)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(driver, lambda d: d.current_url.endswith("/staff/"))
    cookie = driver.get_cookie("vb_staff")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    wait_for(driver, lambda d: text_of(d, "#link") == "live")


async def test_an_order_arrives_live_moves_to_ready_and_sold_out_is_refused_on_the_next_call(
        tmp_path: Path, browser: Any) -> None:
    with trio.fail_after(120):
        async with open_shop(tmp_path) as shop:
            await trio.to_thread.run_sync(order_story, shop, browser)


def order_story(shop: Shop, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, shop)
    marker = browser.execute_script("window.notReloaded = true; return 1;")
    assert marker == 1
    assert browser.find_element(By.ID, "empty").is_displayed()

    # A call: its card appears, its transcript grows while it is spoken, then its order pops up.
    first = shop.call()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#live .call"), 15)
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#live .transcript li")) >= 1, 15)
    seen = len(browser.find_elements(By.CSS_SELECTOR, "#live .transcript li"))
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#live .transcript li")) > seen, 15)
    wait_for(browser, lambda d: "pepperoni" in text_of(d, "#live .cart"), 15)
    screenshot(browser, "staff-call.png")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#board #order-1"), 20)
    assert browser.execute_script("return window.notReloaded === true")  # it came without a reload
    text = text_of(browser, "#order-1")
    assert "Sam" in text and "large pepperoni pizza" in text.lower() and "pickup" in text
    assert "Total $18.36" in text and "NEW" in text.upper()
    assert first.wait(20)
    wait_for(browser, lambda d: "delivered" in text_of(d, "#order-1 .delivery"), 15)
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#live .call"), 10)  # the ended call leaves
    screenshot(browser, "staff-board.png")

    # new -> preparing -> ready, each by a button, the card updated in place by the stream.
    for to, label in (("preparing", "PREPARING"), ("ready", "READY")):
        browser.find_element(By.CSS_SELECTOR, f"#order-1 button[data-to={to}]").click()
        wait_for(browser, lambda d, label=label: text_of(d, "#order-1 .badge").upper() == label)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#order-1")) == 1  # shown once
    assert browser.execute_script("return window.notReloaded === true")
    assert shop.results[0].outcome == "hangup"

    # Pepperoni sold out: the next call's add_item is refused and no order is made.
    browser.get(shop.base + "/staff/menu")
    browser.find_element(By.ID, "item-pepperoni").click()
    wait_for(browser, lambda d: text_of(d, "#item-pepperoni") == "Back in")
    browser.get(shop.base + "/staff/")
    wait_for(browser, lambda d: text_of(d, "#link") == "live")
    browser.execute_script("window.notReloaded = true;")
    second = shop.call()
    assert second.wait(60)
    refused = [f for _, kind, f in shop.events if kind == "tool" and f["name"] == "add_item"]
    assert [f["ok"] for f in refused] == [True, False]
    assert not browser.find_elements(By.CSS_SELECTOR, "#order-2")
    assert text_of(browser, "#order-1 .badge").upper() == "READY"

    # The connection is lost (the daemon ends every stream) while an order comes in: the page
    # reconnects with its last event id and shows the order once, still without a reload.
    from voicebridge.jobs.pizza.order import Order, OrderLine

    order = Order.empty(caller_number="+15550100111")
    order.lines.append(OrderLine("margherita", "medium", 2))
    order.customer_name, order.fulfillment = "Robin", "pickup"
    trio.from_thread.run_sync(shop.daemon.staff_hub.close_all)
    trio.from_thread.run(shop.daemon._commit, "CArobin", order)
    wait_for(browser, lambda d: "Robin" in text_of(d, "#board"), 10)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#board .order")) == 2
    assert browser.execute_script("return window.notReloaded === true")

    # The log says who did what.
    browser.get(shop.base + "/staff/log")
    log = browser.find_element(By.TAG_NAME, "table").text
    assert "counter order.ready order:1" in log and "counter menu.sold_out item:pepperoni" in log



async def test_a_business_staff_member_sees_only_that_business_order(tmp_path: Path, browser: Any) -> None:
    from test_businesses import two_businesses

    folder = two_businesses(tmp_path / "businesses")
    with trio.fail_after(60):
        async with open_shop(tmp_path, accounts=(("ann", "luigis", False),), businesses=(folder,)) as shop:
            await trio.to_thread.run_sync(two_businesses_story, shop, browser)


def two_businesses_story(shop: Shop, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, shop, "ann")
    assert "Luigi's Pizza" in text_of(browser, "header .shop")
    rosa = trio.from_thread.run(commit_order, shop, "rosa", "Bob")
    luigi = trio.from_thread.run(commit_order, shop, "luigis", "Ann")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#board #order-{luigi}"), 10)  # live, by the stream
    assert "Ann" in text_of(browser, "#board") and "Bob" not in text_of(browser, "#board")
    browser.refresh()  # and on a fresh page
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#board #order-{luigi}"), 10)
    assert not browser.find_elements(By.CSS_SELECTOR, f"#order-{rosa}") and "Bob" not in text_of(browser, "main")


async def commit_order(shop: Shop, business: str, customer: str) -> int:
    """Commit an order for `business` as the daemon does for its call (its board event in the same transaction)."""
    from datetime import datetime, timezone

    from voicebridge.jobs.pizza.order import Order, OrderLine
    from voicebridge.ops import staff_store as ss

    found = shop.daemon.businesses.get(business)
    assert found is not None
    order = Order.empty(caller_number="+15550100111")
    order.lines.append(OrderLine("margherita", "medium", 1))
    order.customer_name, order.fulfillment = customer, "pickup"
    now = datetime.now(timezone.utc)

    def commit(tx: Any) -> int:
        done = found.job.commit(tx, None, order, now)
        ss.record(tx, None, "committed", f"pizza:{done.id}", {}, now, business)
        return int(done.id)

    order_id = await shop.daemon.store.commit(commit, now=now, business=business)
    shop.daemon.staff_hub.stored()
    return order_id
