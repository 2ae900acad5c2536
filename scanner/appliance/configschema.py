"""A small declarative schema for TOML configuration: types, ranges, defaults, docs, all problems at once.

Sections and keys are declared once (scanner/appliance/schema.py); the same declaration validates a file,
fills defaults, writes docs/configuration.md (no key exists undocumented) and writes the typed
section classes (scanner/appliance/settings.py) that the rest of the code reads the values through.
"""
from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import textwrap
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from scanner.base.i18n import Text, text
from sync.wire.http import is_loopback


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config file: which key, what is wrong, how to fix it (texts of the
    catalogue, or plain text another part gave)."""

    key: str
    problem: str | Text
    fix: str | Text

    def line(self, source: str = "", lang: str | None = "en") -> str:
        """The problem in one line, in ``lang`` (English, as logs have it, unless a reader's language is given)."""
        where = f"{source}: " if source else ""
        return where + text("config.line", name=self.key, problem=self.problem, fix=self.fix)(lang)


@dataclass(frozen=True, slots=True)
class Check:
    """A checker: turns a raw TOML value into (the validated value, None) or (None, a problem text).
    ``annotation`` is the validated value's Python type as the generated settings module writes it."""

    fn: Callable[[Any], tuple[Any, str | Text | None]]
    annotation: str

    def __call__(self, value: Any) -> tuple[Any, str | Text | None]:
        return self.fn(value)


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: its type (as a checker), default, and the doc line a technician reads."""

    name: str
    check: Check
    type_doc: str
    default: Any = REQUIRED
    doc: str = ""
    fix: str | Text = ""
    example: str | None = None
    live: bool = False  # takes effect on SIGHUP (reload) without a restart


@dataclass(frozen=True, slots=True)
class Section:
    """A TOML table ([name]) or, if ``array``, an array of tables ([[name]]).

    A dotted ``name`` ("feedback.relay") is a table inside another ([feedback.relay]). An
    ``optional`` table that is absent validates to None (a part that is not fitted) instead of
    a table of defaults. Sections of the same keys may share one generated class: ``type_name``
    names it ("FeedbackLed") and ``type_doc`` says what it is.
    """

    name: str
    keys: tuple[Key, ...]
    doc: str = ""
    array: bool = False
    required: bool = False
    optional: bool = False
    type_name: str = ""
    type_doc: str = ""
    # cross-key checks within one table: (table dict, key prefix) -> problems
    checks: tuple[Callable[[dict, str], list[Problem]], ...] = field(default=())

    def key(self, name: str) -> Key | None:
        return next((k for k in self.keys if k.name == name), None)


# ---------------------------------------------------------------- checkers

def _type_name(value: Any) -> Text | str:
    kind = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}.get(type(value))
    return text(f"config.a_{kind}") if kind else type(value).__name__


def must_be(what: str, value: Any) -> Text:
    """"must be WHAT, not (the type of value)": ``what`` names a text of [config] ("a_str", "a_path"...)."""
    return text("config.must_be", what=text(f"config.{what}"), got=_type_name(value))


def string(*, min_len: int = 0, max_len: int = 200, allowed: str | None = None) -> Check:
    def check(v):
        if type(v) is not str:
            return None, must_be("a_str", v)
        if not min_len <= len(v) <= max_len:
            return None, text("config.length", lo=min_len, hi=max_len)
        if allowed is not None and any(c not in allowed for c in v):
            return None, text("config.id_chars")
        return v, None
    return Check(check, "str")


ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."


def identifier() -> Check:
    return string(min_len=1, max_len=64, allowed=ID_CHARS)


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    def check(v):
        if type(v) is not int:
            return None, must_be("a_int", v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return None, text("config.range", lo=lo, hi=hi, got=v)
        return v, None
    return Check(check, "int")


def number(lo: float | None = None, hi: float | None = None) -> Check:
    def check(v):
        if type(v) not in (int, float) or not math.isfinite(v):
            return None, must_be("a_float", v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return None, text("config.range", lo=lo, hi=hi, got=v)
        return float(v), None
    return Check(check, "float")


def boolean() -> Check:
    def check(v):
        if type(v) is not bool:
            return None, must_be("a_bool", v)
        return v, None
    return Check(check, "bool")


def choice(*options: str) -> Check:
    def check(v):
        if v not in options or type(v) is not str:
            return None, text("config.choice", options=", ".join(repr(o) for o in options), got=repr(v))
        return v, None
    return Check(check, "Literal[" + ", ".join(f'"{o}"' for o in options) + "]")


def optional(inner: Check) -> Check:
    """The inner check, or an empty string meaning "not set" (TOML has no null)."""
    def check(v):
        if v == "":
            return None, None
        return inner(v)
    return Check(check, f"{inner.annotation} | None")


def path(*, must_exist: bool = False, kind: str = "file") -> Check:
    def check(v):
        if type(v) is not str or not v:
            return None, must_be("a_path", v)
        p = Path(v)
        if must_exist:
            if not p.exists():
                return None, text("config.not_exist", path=v)
            if kind == "file" and not p.is_file():
                return None, text("config.not_file", path=v)
            if kind == "dir" and not p.is_dir():
                return None, text("config.not_dir", path=v)
            if not os.access(p, os.R_OK):
                return None, text("config.not_readable", path=v)
        return p, None
    return Check(check, "Path")


def list_of(inner: Check, *, min_items: int = 0, max_items: int = 64) -> Check:
    def check(v):
        if type(v) is not list:
            return None, must_be("a_list", v)
        if not min_items <= len(v) <= max_items:
            return None, text("config.items", lo=min_items, hi=max_items)
        out = []
        for i, item in enumerate(v):
            value, problem = inner(item)
            if problem:
                return None, text("config.item", n=i + 1, problem=problem)
            out.append(value)
        return tuple(out), None
    fixed = min_items == max_items and max_items <= 8
    return Check(check, f"tuple[{', '.join([inner.annotation] * max_items)}]" if fixed
                 else f"tuple[{inner.annotation}, ...]")


def url(*, allow_http_loopback: bool = True) -> Check:
    """An https URL; plain http only to a loopback address (tests, a local reference server)."""
    def check(v):
        if type(v) is not str:
            return None, must_be("a_url", v)
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            return None, text("config.not_url", value=repr(v))
        if parts.scheme == "http" and not (allow_http_loopback and is_loopback(parts.hostname)):
            return None, text("config.not_https", value=repr(v))
        return v.rstrip("/"), None
    return Check(check, "str")


def listen_address(*, allow_port_zero: bool = False) -> Check:
    """HOST:PORT with an IP address (or localhost); port 0 (any free port) only if allowed."""
    lowest = 0 if allow_port_zero else 1

    def check(v):
        if type(v) is not str:
            return None, must_be("a_hostport", v)
        host, sep, port = v.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
            return None, text("config.not_hostport", value=repr(v))
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                return None, text("config.not_ip", value=repr(host))
        return (host, int(port)), None
    return Check(check, "tuple[str, int]")


def usb_id() -> Check:
    """A USB "vendor:product" pair in hex, as lsusb shows it ("0c2e:0b61"); stored lowercase."""
    def check(v):
        if type(v) is not str:
            return None, must_be("a_usb", v)
        vendor, sep, product = v.partition(":")
        hexdigits = "0123456789abcdefABCDEF"
        if not (sep and len(vendor) == 4 and len(product) == 4
                and all(c in hexdigits for c in vendor + product)):
            return None, text("config.not_usb", value=repr(v))
        return v.lower(), None
    return Check(check, "str")


# ---------------------------------------------------------------- validation

def _lookup(data: Mapping, dotted: str) -> Any:
    """The value at a dotted path of nested tables, or None if any part is absent."""
    node: Any = data
    for part in dotted.split("."):
        if type(node) is not dict or part not in node:
            return None
        node = node[part]
    return node

def validate(data: Mapping, sections: tuple[Section, ...]) -> tuple[dict, list[Problem]]:
    """Check a parsed TOML document against the sections; return (values with defaults, problems)."""
    problems: list[Problem] = []
    out: dict[str, Any] = {}
    top = sorted({s.name.split(".")[0] for s in sections})
    for name in data:
        if name not in top:
            problems.append(Problem(name, text("config.unknown_section"),
                                    text("config.use_sections", names=", ".join(top))))
    for section in sections:
        raw = _lookup(data, section.name)
        children = {s.name[len(section.name) + 1:] for s in sections
                    if s.name.startswith(section.name + ".") and "." not in s.name[len(section.name) + 1:]}
        if section.array:
            if raw is None:
                raw = []
            if type(raw) is not list or not all(type(t) is dict for t in raw):
                problems.append(Problem(section.name, text("config.array_of_tables"),
                                        text("config.write_array", name=section.name)))
                out[section.name] = ()
                continue
            tables = []
            for i, table in enumerate(raw):
                values, p = _validate_table(table, section, f"{section.name}[{i}]", children)
                problems += p
                tables.append(values)
            out[section.name] = tuple(tables)
        else:
            if raw is None:
                if section.required:
                    problems.append(Problem(section.name, text("config.section_missing"),
                                            text("config.add_section", name=section.name)))
                if section.optional:
                    out[section.name] = None
                    continue
                raw = {}
            if type(raw) is not dict:
                problems.append(Problem(section.name, text("config.a_table"), text("config.write_table",
                                                                                          name=section.name)))
                raw = {}
            values, p = _validate_table(raw, section, section.name, children)
            problems += p
            out[section.name] = values
    return out, problems


def _validate_table(table: dict, section: Section, prefix: str,
                    children: AbstractSet[str] = frozenset()) -> tuple[dict, list[Problem]]:
    problems = []
    values: dict[str, Any] = {}
    for name in table:
        if section.key(name) is None and name not in children:
            names = ", ".join([k.name for k in section.keys] + [f"[{section.name}.{c}]" for c in sorted(children)])
            problems.append(Problem(f"{prefix}.{name}", text("config.unknown_key"), text("config.known_keys",
                                                                                            names=names)))
    for key in section.keys:
        full = f"{prefix}.{key.name}"
        if key.name not in table:
            if key.default is REQUIRED:
                problems.append(Problem(full, text("config.required"),
                                        key.fix or text("config.set_key", name=key.name, example=key.example or "...")))
            else:
                values[key.name] = _default_value(key)
            continue
        value, problem = key.check(table[key.name])
        if problem:
            given = table[key.name]
            if key.check.annotation.startswith("tuple[") and isinstance(given, str):  # one item, not in [ ]
                fix: str | Text = text("config.make_array", name=key.name,
                                       value=json.dumps(given, ensure_ascii=False))
            else:
                fix = key.fix or text("config.see", where=f"docs/configuration.md#{section.name}")
            problems.append(Problem(full, problem, fix))
        else:
            values[key.name] = value
    if not problems:
        for cross in section.checks:
            problems += cross(values, prefix)
    return values, problems


def _default_value(key: Key) -> Any:
    """A default is written as its TOML value and goes through the key's check like a written one
    (so "/var/lib/x" becomes a Path and "HOST:PORT" a pair); None means "not set"."""
    if key.default is None:
        return None
    value, problem = key.check(key.default)
    if problem:
        raise ValueError(f"the default of {key.name} is invalid: {problem}")
    return value


# ---------------------------------------------------------------- docs

def _default_doc(key: Key) -> str:
    if key.default is REQUIRED:
        return "**required**"
    d = key.default
    if isinstance(d, Path):
        d = str(d)
    if isinstance(d, (tuple, list)):
        return "`[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in d) + "]`"
    if d is None:
        return "not set"
    if isinstance(d, bool):
        return f"`{str(d).lower()}`"
    return f'`"{d}"`' if isinstance(d, str) else f"`{d}`"


def markdown(sections: tuple[Section, ...], intro: str) -> str:
    """docs/configuration.md, written from the schema (a test keeps the file in sync)."""
    lines = [intro.rstrip(), ""]
    for s in sections:
        header = f"[[{s.name}]]" if s.array else f"[{s.name}]"
        note = " — required" if s.required else " — optional (absent: not fitted)" if s.optional else ""
        lines += [f"## {s.name}", "", f"`{header}`{note}", ""]
        if s.doc:
            lines += [s.doc, ""]
        lines += ["| key | type | default | live | meaning |", "|---|---|---|---|---|"]
        for k in s.keys:
            live = "yes" if k.live else ""
            lines.append(f"| `{k.name}` | {k.type_doc} | {_default_doc(k)} | {live} | {k.doc} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- typed sections (Python source)

def class_name(section: Section) -> str:
    """The generated class of a section: "feedback.timings" → FeedbackTimingsSection (or its ``type_name``)."""
    name = section.type_name or "".join(part.capitalize() for part in section.name.replace("_", ".").split("."))
    return name + "Section"


def children_of(section: Section, sections: tuple[Section, ...]) -> list[Section]:
    """The tables directly inside ``section`` ([feedback.timings] in [feedback])."""
    return [s for s in sections if s.name.rpartition(".")[0] == section.name]


def field_annotation(section: Section) -> str:
    """How a parent holds a section: the class, a tuple of them (an array), or None when absent (optional)."""
    name = class_name(section)
    return f"tuple[{name}, ...]" if section.array else f"{name} | None" if section.optional else name


def _comment(text: str, indent: str) -> list[str]:
    words = re.sub(r"\s+", " ", text).strip()
    return [f"{indent}# {line}" for line in textwrap.wrap(words, 100 - len(indent) - 2, break_on_hyphens=False,
                                                          break_long_words=False)] if words else []


def python_source(sections: tuple[Section, ...], doc: str) -> str:
    """A module of frozen, slotted dataclasses, one per section, and `Settings` holding the top-level
    ones; ``TYPES`` maps each section's name to its class (a test keeps the file in sync)."""
    annotations = " ".join(k.check.annotation for s in sections for k in s.keys)
    typing = [name for name in ("Literal",) if f"{name}[" in annotations]
    shared: dict[str, list[Section]] = {}
    for s in sections:
        shared.setdefault(class_name(s), []).append(s)
    for name, group in shared.items():
        shapes = {tuple((k.name, k.check.annotation) for k in s.keys) for s in group}
        if len(shapes) > 1 or any(children_of(s, sections) for s in group[1:]):
            raise ValueError(f"sections sharing {name} differ: {', '.join(s.name for s in group)}")
    out = [f'"""{doc}"""', "from __future__ import annotations", "", "from dataclasses import dataclass"]
    if re.search(r"\bPath\b", annotations):
        out.append("from pathlib import Path")
    if typing:
        out.append(f"from typing import {', '.join(typing)}")
    for s in sections:
        group = shared[class_name(s)]
        if s is not group[0]:
            continue  # its class is written already
        header = ", ".join(f"[[{g.name}]]" if g.array else f"[{g.name}]" for g in group)
        about = s.type_doc if len(group) > 1 and s.type_doc else s.doc
        summary = textwrap.wrap(f"{header}: {about}", 96, break_on_hyphens=False, break_long_words=False)
        out += ["", "", "@dataclass(frozen=True, slots=True)", f"class {class_name(s)}:"]
        out += [f'    """{summary[0]}'] + [f"    {line}" for line in summary[1:]]
        out[-1] += '"""'
        out.append("")
        for k in s.keys:
            out += _comment(k.doc, "    ")
            out.append(f"    {k.name}: {k.check.annotation}")
        for child in children_of(s, sections):
            out.append(f"    {child.name.rpartition('.')[2]}: {field_annotation(child)}")
    out += ["", "", "@dataclass(frozen=True, slots=True)", "class Settings:",
            '    """Every section of the configuration file."""', ""]
    out += [f"    {s.name}: {field_annotation(s)}" for s in sections if "." not in s.name]
    out += ["", "", "TYPES: dict[str, type] = {"]
    out += [f'    "{s.name}": {class_name(s)},' for s in sections]
    out += ["}", ""]
    return "\n".join(out)
