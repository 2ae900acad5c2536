"""Writes scanner/base/catalogue.py from scanner/base/translations.toml, the one file people edit:
`python -m scanner.base.catalogue_source > scanner/base/catalogue.py` (tests/test_catalogue.py checks it)."""
from __future__ import annotations

import os
import sys
import tomllib


def catalogue_source() -> str:
    """scanner/base/catalogue.py: translations.toml's table as a Python literal (the TOML is the source)."""
    with open(os.path.join(os.path.dirname(__file__), "translations.toml"), "rb") as fh:
        table = tomllib.load(fh)
    lines = ['"""The translation catalogue, generated from scanner/base/translations.toml (edit that file,',
             'then run `python -m scanner.base.catalogue_source > scanner/base/catalogue.py`; a test checks',
             'it is not stale)."""',
             "", "TABLE: dict = {"]
    for section, entries in table.items():
        lines.append(f"    {section!r}: {{")
        lines.extend(f"        {key!r}: {entry!r}," for key, entry in entries.items())
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(catalogue_source())
