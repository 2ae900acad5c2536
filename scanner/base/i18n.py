"""Vietnamese-first texts for people (scanner/base/translations.toml is the one translation file)."""
from __future__ import annotations

import os
import tomllib
from functools import cache
from importlib import resources

LANGS = ("vi", "en")
DEFAULT_LANG = "vi"


@cache
def _table() -> dict:
    with resources.files("scanner.base").joinpath("translations.toml").open("rb") as fh:
        return tomllib.load(fh)


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
