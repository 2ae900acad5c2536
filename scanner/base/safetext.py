"""Make untrusted text (names on cards, decoded QR text) safe for terminals, logs and JSON.

C0/C1 control characters, DEL, bidirectional overrides and line/paragraph separators could
rewrite a terminal or forge log lines; they are shown as \\uXXXX escapes instead.
"""
from __future__ import annotations

import json
import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def _escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def escape(text: str) -> str:
    """Text with every unsafe character replaced by a visible \\uXXXX escape."""
    return _UNSAFE.sub(_escape, text)


def json_line(obj: object) -> str:
    """Compact one-line JSON, UTF-8 readable (Vietnamese stays legible) with unsafe characters escaped."""
    return _UNSAFE.sub(_escape, json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
