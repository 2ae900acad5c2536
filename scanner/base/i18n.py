"""Vietnamese-first texts for people (scanner/base/translations.toml is the one translation file)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from scanner.base.lazy import lazy_module

if TYPE_CHECKING:
    from scanner.base import catalogue as generated
else:  # loaded at the first text: ~3 MB a process that says nothing to people (the batch builder) never needs
    generated = lazy_module("scanner.base.catalogue")

LANGS = ("vi", "en")
DEFAULT_LANG = "vi"


@cache
def _table() -> dict:
    """The catalogue, from its generated module (compiled once, then only unmarshalled: parsing
    the 170 KB TOML cost every command ~23 ms at start)."""
    return generated.TABLE


def default_lang() -> str:
    """CHECKPOINT_LANG if it names a supported language, else Vietnamese."""
    lang = os.environ.get("CHECKPOINT_LANG", DEFAULT_LANG)
    return lang if lang in LANGS else DEFAULT_LANG


def t(key: str, lang: str | None = None, **params: object) -> str:
    """The text for a dotted key ("reason.expired") in ``lang``, falling back to English, then the key."""
    section, _, name = key.partition(".")
    entry = _table().get(section, {}).get(name)
    if entry is None:
        return key
    text = entry.get(lang or default_lang()) or entry.get("en") or key
    return text.format(**params) if params else text


def known(key: str) -> bool:
    """Whether the catalogue has a text for the dotted ``key``."""
    section, _, name = key.partition(".")
    return name in _table().get(section, {})


def help_text(english: str, lang: str) -> str | None:
    """A command-line help paragraph in ``lang``: the catalogue's [help] keys them by their English
    (whitespace as one space); None when there is none."""
    entry = _table().get("help", {}).get(english)
    return entry.get(lang) if entry is not None else None


def catalogue(sections: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Every text of ``sections`` as ``{lang: {"section.key": text}}`` (the browser pages' texts,
    served from this one file; a text missing in a language falls back to English)."""
    table = _table()
    out: dict[str, dict[str, str]] = {lang: {} for lang in LANGS}
    for section in sections:
        for name, entry in table.get(section, {}).items():
            for lang in LANGS:
                out[lang][f"{section}.{name}"] = entry.get(lang) or entry.get("en") or f"{section}.{name}"
    return out


@dataclass(frozen=True, slots=True)
class Text:
    """A text for people, not yet put in a language: a catalogue key and its parameters (plain
    values, or Texts themselves). Rendered when the reader's language is known."""

    key: str
    params: tuple[tuple[str, object], ...] = ()

    def __call__(self, lang: str | None = None) -> str:
        return t(self.key, lang, **{k: render(v, lang) for k, v in self.params})


def text(key: str, /, **params: object) -> Text:
    return Text(key, tuple(params.items()))


def render(value: object, lang: str | None = None) -> str:
    """``value`` for a reader of ``lang``: a Text in that language, a ``{lang: text}`` mapping's own
    (else English), anything else as it is."""
    if isinstance(value, Text):
        return value(lang)
    if isinstance(value, dict):
        return str(value.get(lang or default_lang()) or value.get("en") or "")
    return str(value)


def age(seconds: float) -> Text:
    """A duration or an age for people ("47 giây", "5 phút", "3.5 giờ", "2.0 ngày")."""
    if seconds < 120:
        return text("age.s", n=f"{seconds:.0f}")
    if seconds < 7200:
        return text("age.min", n=f"{seconds / 60:.0f}")
    if seconds < 172800:
        return text("age.h", n=f"{seconds / 3600:.1f}")
    return text("age.d", n=f"{seconds / 86400:.1f}")


def problem_text(code: str, lang: str | None = None) -> str:
    """A health problem ("code" or "code:what", scanner/appliance/supervisor.py) in words: [problem]
    of the catalogue, else [readiness], else the code itself. The pages do the same (common.js)."""
    head, _, what = code.partition(":")
    table = _table()
    if head in table.get("problem", {}):
        return t(f"problem.{head}", lang, what=what)
    if code in table.get("readiness", {}):
        return t(f"readiness.{code}", lang)
    return code

