"""The languages a business answers in, and the words the bridge itself says in each.

A business lists its languages (`languages = ["en", "es"]` in its file, or VOICEBRIDGE_LANGUAGES);
the first is the default. A call starts in the default; when there are several, the model tells
the bridge which one the caller speaks with the `set_language` tool (it hears the caller better
than any text detector can on a two-word phone turn), and the bridge keeps only a configured one.

The fixed sentences a job makes itself (read-backs, tool errors, the closed message) are English
msgids translated through the gettext catalogs in `voicebridge/locale/<lang>/LC_MESSAGES/
voicebridge.po`, read with Babel when a business is loaded (`load_translators`, the one function
here that reads files); money, numbers and dates are formatted by Babel for the language.

Importing this module does no I/O: jobs hold a `Translators` handed to them and never load one.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import json
from decimal import Decimal
from typing import Any, Iterable, Mapping

import attrs
from babel import Locale, UnknownLocaleError
from babel.dates import format_skeleton, format_time, get_day_names
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal

from voicebridge.engine.job import ToolResult

DEFAULT_LANGUAGES = ("en",)
SOURCE_LANGUAGE = "en"  # the msgids are English: English needs no catalog
DOMAIN = "voicebridge"
SET_LANGUAGE = "set_language"


class LanguageError(ValueError):
    """A configured language is not a language code, or the bridge has no catalog for it."""


@attrs.frozen
class Translator:
    """One language's words: `tr("Sorry, {name}", name=...)`, money, numbers, dates and times."""

    language: str = SOURCE_LANGUAGE
    messages: Mapping[str, str] = attrs.field(factory=dict, eq=False, repr=False)

    def __call__(self, message: str, **fields: Any) -> str:
        """`message` in this language (the English msgid if the catalog lacks it), with `fields` filled in."""
        text = self.messages.get(message) or message
        return text.format(**fields) if fields else text

    @property
    def english(self) -> bool:
        """English (any region): the msgids themselves, and the read-back's words as they always were."""
        return self.language.partition("_")[0] == SOURCE_LANGUAGE

    def money(self, cents: int, currency: str = "USD") -> str:
        """ "$32.94" in English, "32,94 US$" in Spanish: as Babel formats the currency for the language."""
        return format_currency(Decimal(cents) / 100, currency, locale=self.language)

    def number(self, n: int) -> str:
        return format_decimal(n, locale=self.language)

    def day(self, day: dt.date, with_year: bool = False) -> str:
        """ "viernes, 11 de diciembre" (with the year if asked): the weekday, day and month in words."""
        weekday = self.weekday(day)
        date = format_skeleton("yMMMMd" if with_year else "MMMMd", day, locale=self.language)
        return f"{weekday}, {date}"

    def weekday(self, day: dt.date) -> str:
        """ "viernes": the weekday's name in this language."""
        return str(get_day_names("wide", locale=self.language)[day.weekday()])

    def time(self, t: dt.time | dt.datetime) -> str:
        """ "14:00" in Spanish: the language's short time."""
        return format_time(t if isinstance(t, dt.time) else t.timetz(), "short", locale=self.language)

    def join(self, words: list[str], conj: str = "and") -> str:
        """ "a, b and c" with the language's word for "and" (or "or")."""
        if len(words) <= 1:
            return "".join(words)
        return ", ".join(words[:-1]) + f" {self(conj)} " + words[-1]


@attrs.frozen
class Translators:
    """A business's languages (first = default) and a Translator for each."""

    by_language: Mapping[str, Translator] = attrs.field(factory=lambda: {SOURCE_LANGUAGE: Translator()}, eq=False)
    languages: tuple[str, ...] = DEFAULT_LANGUAGES

    @property
    def default(self) -> Translator:
        return self.by_language[self.languages[0]]

    def get(self, language: str | None) -> Translator:
        """The call's language if the business has it, else the default."""
        return self.by_language.get(language or "", self.default)

    @property
    def several(self) -> bool:
        return len(self.languages) > 1

    def instructions(self) -> str:
        """What the session instructions add about language ("" for an English-only business)."""
        names = [display_name(code) for code in self.languages]
        if self.several:
            return (f"Languages: answer in the caller's language if it is one of {', '.join(names)}; otherwise "
                    f"in {names[0]}. As soon as you know which of these the caller speaks, call {SET_LANGUAGE} "
                    "(again if they switch), so that the texts the tools give you are in that language. The "
                    "bridge's instructions during the call are in English: say what they ask in the caller's "
                    "language.")
        if self.languages == (SOURCE_LANGUAGE,):
            return ""
        return (f"Language: speak {names[0]} with the caller. The bridge's instructions during the call are in "
                f"English: say what they ask in {names[0]}.")

    def language_tool(self) -> dict[str, Any]:
        """The `set_language` function tool (offered only when the business has several languages)."""
        return {
            "type": "function",
            "name": SET_LANGUAGE,
            "description": "Say which of the business's languages the caller speaks; the tools answer in it.",
            "parameters": {
                "type": "object",
                "properties": {"language": {"type": "string", "enum": list(self.languages),
                                            "description": ", ".join(f"{c}: {display_name(c)}"
                                                                     for c in self.languages)}},
                "required": ["language"],
                "additionalProperties": False,
            },
        }

    def chosen_language(self, arguments: Mapping[str, Any]) -> str:
        """The language a `set_language` call names; LanguageError (sayable) if it is not configured."""
        extra = sorted(set(arguments) - {"language"})
        if extra:
            raise LanguageError(f"{SET_LANGUAGE} takes only language, not {', '.join(extra)}.")
        code = arguments.get("language")
        if not isinstance(code, str) or normalize_code(code) not in self.languages:
            raise LanguageError(f"language must be one of {', '.join(self.languages)}; keep speaking "
                                f"{display_name(self.languages[0])} if the caller's language is not among them.")
        return normalize_code(code)


def set_language(translators: Translators, task: Any, arguments: str) -> ToolResult:
    """`set_language`: the model says which configured language the caller speaks; the call's texts follow it from now on."""
    try:
        raw = json.loads(arguments) if arguments.strip() else {}
        if not isinstance(raw, dict):
            raise LanguageError("The tool arguments must be a JSON object.")
        language = translators.chosen_language(raw)
    except ValueError as exc:  # LanguageError is one; so is bad JSON
        message = str(exc) if isinstance(exc, LanguageError) else "The tool arguments were not valid JSON."
        return ToolResult(output={"ok": False, "error": message}, ok=False, intent=None, changed=False)
    task.language = language  # every job's task has a `language`
    return ToolResult(output={"ok": True, "language": language}, ok=True, intent=None, changed=False)


def normalize_code(code: str) -> str:
    """ "es-mx" -> "es_MX": the language in lower case, a region in upper case."""
    language, _, region = code.strip().replace("-", "_").partition("_")
    return f"{language.lower()}_{region.upper()}" if region else language.lower()


def display_name(code: str) -> str:
    """ "Spanish" for "es": the language's English name (the instructions are English)."""
    name = Locale.parse(code).get_display_name(SOURCE_LANGUAGE)
    return str(name) if name else code


def parse_languages(value: Any, where: str) -> tuple[str, ...]:
    """A languages list as a file or setting gives it: non-empty, known codes, no repeats; LanguageError if not."""
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise LanguageError(f"{where}: expected a non-empty list of language codes like [\"en\", \"es\"]")
    codes = tuple(normalize_code(v) for v in value)
    for code in codes:
        try:
            Locale.parse(code)
        except (UnknownLocaleError, ValueError):
            raise LanguageError(f"{where}: {code!r} is not a language code (like en or es)") from None
    if len(set(codes)) != len(codes):
        raise LanguageError(f"{where}: a language is listed twice")
    return codes


def languages_setting(raw: str) -> tuple[str, ...]:
    """VOICEBRIDGE_LANGUAGES ("es,en"): codes that each have words here; ValueError naming the problem."""
    try:
        codes = parse_languages(raw, "languages")
        load_translators(codes)  # a language without a catalog is a setting error at start, not at the first call
    except LanguageError as exc:
        raise ValueError(str(exc).removeprefix("languages: ")) from None
    return codes


def _catalog(code: str) -> Any:
    """The catalog of `code`, or of its language without the region ("es_MX" -> "es") if it has none."""
    root = importlib.resources.files("voicebridge") / "locale"
    own = root / code / "LC_MESSAGES" / f"{DOMAIN}.po"
    return own if own.is_file() else root / code.partition("_")[0] / "LC_MESSAGES" / f"{DOMAIN}.po"


def available_languages() -> list[str]:
    """English and every language with a catalog under voicebridge/locale/."""
    root = importlib.resources.files("voicebridge") / "locale"
    found = [p.name for p in root.iterdir() if (p / "LC_MESSAGES" / f"{DOMAIN}.po").is_file()] if root.is_dir() else []
    return [SOURCE_LANGUAGE, *sorted(found)]


def load_translators(languages: Iterable[str], where: str = "languages") -> Translators:
    """Read the catalogs of `languages` (codes from `parse_languages`); LanguageError for one without a catalog.

    Fuzzy and untranslated entries are left out (their English msgid is said instead)."""
    codes = tuple(languages) or DEFAULT_LANGUAGES
    by_language: dict[str, Translator] = {}
    for code in codes:
        messages: dict[str, str] = {}
        if code.partition("_")[0] != SOURCE_LANGUAGE:
            if not _catalog(code).is_file():
                raise LanguageError(f"{where}: the bridge has no words for {code!r} yet (it has: "
                                    f"{', '.join(available_languages())})")
            with _catalog(code).open("rb") as f:
                catalog = read_po(f, locale=code, domain=DOMAIN)
            messages = {str(m.id): str(m.string) for m in catalog
                        if m.id and isinstance(m.id, str) and m.string and not m.fuzzy}
        by_language[code] = Translator(code, messages)
    return Translators(by_language, codes)


ENGLISH = Translators()


def twilio_language(language: str) -> str:
    """The `language` of a TwiML `<Say>` for one of ours: "es" -> "es", "es_MX" -> "es-MX"."""
    return language.replace("_", "-")
