"""A real CalDAV server for the tests (Radicale, on 127.0.0.1), and an independent client to check it.

`Radicale` runs `python -m radicale` with its own config in a temporary folder: one port on the
loopback, plain htpasswd login, filesystem storage. `start()` waits (bounded) until it answers;
`stop()` ends it. The checking side speaks plain HTTP (PROPFIND, GET, PUT) with httpx and parses
with icalendar: it shares no code with `voicebridge.edges.calendar`.
"""

from __future__ import annotations

import contextlib

import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import icalendar

USER = "shop"
PASSWORD = "radicale-test-password"
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Radicale:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "users").write_text(f"{USER}:{PASSWORD}\n")
        self.config = root / "radicale.conf"
        self.config.write_text(
            "[server]\n"
            f"hosts = 127.0.0.1:{self.port}\n"
            "[auth]\n"
            "type = htpasswd\n"
            f"htpasswd_filename = {root / 'users'}\n"
            "htpasswd_encryption = plain\n"
            "delay = 0\n"  # no pause after a 401 (clients first ask without a login)
            "[rights]\n"
            "type = owner_only\n"
            "[storage]\n"
            f"filesystem_folder = {root / 'collections'}\n"
            "[web]\n"
            "type = none\n"
            "[logging]\n"
            "level = warning\n"
        )

    def start(self) -> None:
        """Start the server; return once it answers HTTP (at most START_TIMEOUT_S)."""
        assert self.proc is None
        log = open(self.root / "radicale.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "radicale", "--config", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"radicale exited: {(self.root / 'radicale.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):  # not listening yet: poll again until the deadline
                if httpx.get(self.base + "/.well-known/caldav", timeout=1.0).status_code < 500:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"radicale did not answer within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def new_calendar(self) -> str:
        """MKCALENDAR a fresh collection; its URL."""
        url = f"{self.base}/{USER}/{uuid.uuid4().hex}/"
        response = httpx.request("MKCALENDAR", url, auth=(USER, PASSWORD), timeout=10)
        assert response.status_code == 201, response.text
        return url


# -- the independent checking client --------------------------------------------------------

DAV = "{DAV:}"


async def stored_objects(url: str) -> dict[str, icalendar.Calendar]:
    """Every calendar object in the collection at `url`, by href (PROPFIND Depth 1, then GET each)."""
    async with httpx.AsyncClient(auth=(USER, PASSWORD), timeout=10) as http:
        listing = await http.request("PROPFIND", url, headers={"Depth": "1"},
                                     content=b'<?xml version="1.0"?><propfind xmlns="DAV:"><prop><getetag/></prop></propfind>')
        assert listing.status_code == 207, listing.text
        hrefs = [h.text or "" for h in ET.fromstring(listing.content).iter(DAV + "href")]
        out = {}
        for href in hrefs:
            if not href.endswith(".ics"):
                continue
            got = await http.get(httpx.URL(url).join(href))
            assert got.status_code == 200
            assert got.headers["content-type"].startswith("text/calendar")
            out[href] = icalendar.Calendar.from_ical(got.content)
        return out


async def stored_events(url: str) -> list[icalendar.Event]:
    """Every VEVENT stored in the collection."""
    return [ev for cal in (await stored_objects(url)).values() for ev in cal.walk("VEVENT")]


async def put_by_hand(url: str, name: str, ical: str) -> None:
    """What a person's calendar app does: PUT an object of its own."""
    async with httpx.AsyncClient(auth=(USER, PASSWORD), timeout=10) as http:
        response = await http.put(url + name, content=ical.replace("\n", "\r\n").encode(),
                                  headers={"Content-Type": "text/calendar; charset=utf-8"})
        assert response.status_code in (201, 204), response.text
