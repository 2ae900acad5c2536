"""Appliance config files for the tests: TOML written from tables, and a standalone device's tables."""
from __future__ import annotations

import json
from pathlib import Path

from support.pki import Pki


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def write_config(path: Path, tables: dict) -> Path:
    """A TOML file from {"device": {...}, "feedback.green": {...}, "camera": [{...}, ...]}."""
    lines = []
    for name, body in tables.items():
        for table in (body if isinstance(body, list) else [body]):
            lines.append(f"[[{name}]]" if isinstance(body, list) else f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def standalone(state: Path, pki: Pki, **extra) -> dict:
    """A device without a server: standalone identity, trust from the issuer's public key,
    simulated pins, the API on a free port."""
    tables = {
        "device": {"state_dir": str(state), "checkpoint_id": "gate-test"},
        "sync": {"enabled": False},
        "trust": {"files": [str(pki.pub)]},
        "api": {"listen": "127.0.0.1:0"},
        "feedback": {"pin_factory": "mock"},
        "feedback.green": {"pin": 17}, "feedback.red": {"pin": 27}, "feedback.amber": {"pin": 22},
        "feedback.buzzer": {"pin": 18},
    }
    for k, v in extra.items():
        tables[k.replace("__", ".")] = v
    return tables
