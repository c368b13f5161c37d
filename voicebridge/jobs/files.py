"""Reading a job's TOML file (a menu, a business) with errors that name the file, line and column.

Both jobs' loaders share this, so a shop owner's typo reads the same whichever job the file is for:
`menu.toml: line 3, column 7: TOML syntax error: ...`, `salon.toml: no such file`. Each error is
raised as the job's own error class (`error`), whose message is the whole line to show.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def read_text(path: Path | str, error: type[Exception]) -> str:
    """The UTF-8 text of the file at `path`; `error` with one clear line if it cannot be had."""
    source = str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{source}: no such file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{source}: cannot read: {exc.strerror or exc}") from None


def parse_toml(text: str, source: str, error: type[Exception]) -> dict[str, Any]:
    """TOML `text` as a table; a syntax error raises `error` naming `source`, the line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _TOML_POSITION.search(message)
        if m is None:
            raise error(f"{source}: TOML syntax error: {message}") from None
        raise error(f"{source}: line {m.group(1)}, column {m.group(2)}: TOML syntax error: "
                    f"{message[: m.start()]}") from None
