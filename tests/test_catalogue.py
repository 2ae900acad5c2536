"""The translation catalogue the code reads (scanner/base/catalogue.py) is generated from
scanner/base/translations.toml, the one file people edit: never stale, never hand-edited."""
from __future__ import annotations

import subprocess
import sys
import tomllib

from support.paths import ROOT

from scanner.base import catalogue_source, i18n
from scanner.base.catalogue import TABLE


def test_the_catalogue_module_is_generated_from_the_toml():
    source = (ROOT / "scanner" / "base" / "catalogue.py").read_text(encoding="utf-8")
    assert source == catalogue_source.catalogue_source(), (
        "scanner/base/catalogue.py is stale: run `python -m scanner.base.catalogue_source > scanner/base/catalogue.py`")
    with open(ROOT / "scanner" / "base" / "translations.toml", "rb") as fh:
        assert tomllib.load(fh) == TABLE
    r = subprocess.run([sys.executable, "-m", "scanner.base.catalogue_source"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout == source


def test_the_texts_come_from_the_generated_table():
    assert i18n.t("decision.accept", "vi") == TABLE["decision"]["accept"]["vi"]
    assert i18n.t("decision.accept", "en") == TABLE["decision"]["accept"]["en"]


def test_a_command_does_not_parse_the_toml():
    probe = "import sys, scanner.base.i18n as i; i.t('decision.accept'); print('tomllib' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       check=False)
    assert r.stdout.strip() == "False", r.stderr
