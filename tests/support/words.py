"""Finds English (or any untranslated text) in what is shown to a Vietnamese reader: every word
must be a word of the catalogue's Vietnamese texts (scanner/base/translations.toml), or a token the
caller names (ids, names, paths it put there itself). Commands in backticks, command-line options
(--listen), paths and URLs (with a slash), file names, configuration sections ([trust]) and tokens
with digits are not words."""
from __future__ import annotations

import re
import tomllib
from functools import cache

from support.paths import ROOT

WORD = re.compile(r"[^\W\d_]+(?:[_'’-][^\W\d_]+)*")  # letters; codes like clock_unconfirmed are one word
NOT_WORDS = re.compile(r"`[^`]*`|\S*[/\\]\S*|\S*\d\S*|\{\w+\}|\[+\w+\]+|\S+\.[a-z]\w*"
                       r"|(?<![\w-])--[a-z][\w-]*|(?<![\w-])-[a-z]\b")  # the last two: options (--listen, -o)


@cache
def vietnamese() -> frozenset[str]:
    """Every word of every Vietnamese text in the catalogue, lower-cased."""
    table = tomllib.loads((ROOT / "scanner" / "base" / "translations.toml").read_text(encoding="utf-8"))
    out: set[str] = set()
    for section in table.values():
        for entry in section.values():
            out.update(w.lower() for w in WORD.findall(NOT_WORDS.sub(" ", entry.get("vi", ""))))
    return frozenset(out)


UNITS = frozenset({"B", "KiB", "MiB", "GiB", "TiB", "ms"})  # symbols, the same in every language


def foreign(text: str, allowed: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The words of ``text`` that are not Vietnamese from the catalogue, after taking out each
    ``allowed`` string (the caller's ids and names)."""
    for a in sorted(allowed, key=len, reverse=True):
        text = text.replace(a, " ")
    words = vietnamese()
    return [w for w in WORD.findall(NOT_WORDS.sub(" ", text)) if w.lower() not in words and w not in UNITS]
