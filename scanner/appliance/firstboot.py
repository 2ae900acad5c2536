"""Provisioning from the SD card: the files a technician puts on the image's boot partition
(checkpoint.toml, and optionally trust-root.pem and enroll.txt) are installed into the configuration
directory all together, after checking them in place, or not at all.

`apply_card` runs at every boot (checkpoint-firstboot.service) before the daemon starts. Files that
are the ones applied last time change nothing. New files are copied in under a journal (the old
files kept, a plan written, then each file renamed into place); the result is checked exactly as
`checkpoint config check` checks it, plus what ties the files together; a problem puts the old
files back. A crash at any step is undone at the next boot, before anything else, so the daemon
never sees half of a set. The problems are reported as the lines of `config check`, and what
shows them on the LEDs and the kiosk screen is here too (`error_feedback`, `error_page`).
docs/raspberry-pi.md#what-runs-at-boot.
"""
from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from hardware.feedback_config import FeedbackConfig, FeedbackConfigError
from hardware.feedback_patterns import Pattern, blink
from scanner.appliance.config import Config, ConfigError, load, parse
from scanner.appliance.configschema import Problem
from scanner.appliance.provisioning import service_owner
from scanner.base import i18n
from scanner.base.errors import CheckpointError, os_error_words
from scanner.base.fsutil import Dir, UnsafePathError
from scanner.cards.trust import load_root
from sync.wire import enrollcode

CONFIG_NAME = "checkpoint.toml"
TRUST_ROOT_NAME = "trust-root.pem"
ENROLL_NAME = "enroll.txt"
CARD_FILES = (CONFIG_NAME, TRUST_ROOT_NAME, ENROLL_NAME)
# the largest file of each kind the card may hold (read no further)
MAX_BYTES = {CONFIG_NAME: 256 * 1024, TRUST_ROOT_NAME: 16 * 1024, ENROLL_NAME: enrollcode.MAX_TEXT + 64}
RECORD_NAME = ".card-applied.json"  # in the configuration directory: what the card held when applied
JOURNAL_NAME = ".card-apply"        # the journal directory of an apply in progress
PLAN_NAME = "plan.json"             # in the journal: present from the first rename to the commit

# the LEDs while the card's files are refused: red and green in turn, a pattern no state has
CONFIG_ERROR = Pattern("config_error", red=blink(0.25, 0.25), green=((0.0, 0.25), (1.0, 0.25)), repeat=True)


class CardConfigError(CheckpointError):
    """The card's files were not applied; ``problems`` are the lines `config check` would print."""

    code = "card_config"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__((problems[0] if problems else "the card's files were not applied") + more)


@dataclass(frozen=True, slots=True)
class CardFiles:
    """The provisioning files found on the card, by name (absent files are not listed)."""

    files: tuple[tuple[str, bytes], ...]
    source: str

    def get(self, name: str) -> bytes | None:
        return dict(self.files).get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.files)

    def digest(self) -> dict[str, str]:
        """SHA-256 of each file: what the record keeps to tell a new set from the one applied."""
        return {name: hashlib.sha256(data).hexdigest() for name, data in self.files}


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What a boot did: ``outcome`` is "applied", "unchanged" or "none" (no files on the card);
    ``installed`` and ``removed`` name files of the configuration directory; ``recovered`` says that
    an interrupted apply was undone first."""

    outcome: str
    installed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    recovered: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _t(key: str, **params: object) -> i18n.Text:
    return i18n.text("card_problem." + key, **params)


# ---------------------------------------------------------------- reading the card


def read_card(boot_dir: str | os.PathLike, lang: str | None = "en") -> CardFiles:
    """The provisioning files in ``boot_dir`` (never through a symlink, each within its size limit);
    CardConfigError naming every file that cannot be read (its lines in ``lang``)."""
    found: list[tuple[str, bytes]] = []
    problems: list[str] = []
    with Dir.open(boot_dir) as d:
        present = set(d.names())
        for name in CARD_FILES:
            if name not in present:
                continue
            try:
                found.append((name, d.read(name, MAX_BYTES[name])))
            except UnsafePathError as exc:
                problems.append(Problem("(file)", exc.text or str(exc), _t("copy_again")).line(d.shown(name), lang))
            except OSError as exc:
                problems.append(Problem("(file)", os_error_words(exc, ""), _t("copy_again")).line(d.shown(name), lang))
    if problems:
        raise CardConfigError(problems)
    return CardFiles(tuple(found), os.fspath(boot_dir))


# ---------------------------------------------------------------- checks of the set as installed


def check_installed(config_dir: Path, card: CardFiles, lang: str | None = "en") -> list[str]:
    """Every problem of the card's files as they now lie in ``config_dir``: `config check` on the
    config (its lines exactly), the trust root's key, the enrollment code, and what ties them
    together (the config uses the trust root; a code pinning a root names this one)."""
    problems: list[str] = []
    config = None
    config_path = config_dir / CONFIG_NAME
    if card.get(CONFIG_NAME) is not None:
        try:
            config = load(config_path)
        except ConfigError as exc:
            problems += exc.lines(lang)
    root_path = config_dir / TRUST_ROOT_NAME
    root_key = None
    if card.get(TRUST_ROOT_NAME) is not None:
        try:
            root_key = load_root(root_path)
        except CheckpointError as exc:
            problems.append(Problem("(file)", exc.text or str(exc).removeprefix(f"{root_path}: "), _t("fix_root"))
                            .line(str(root_path), lang))
        if config is not None and root_path not in _used_roots(config):
            problems.append(Problem("enroll.trust_root", _t("root_unused", name=TRUST_ROOT_NAME),
                                    _t("fix_root_unused", path=str(root_path))).line(str(config_path), lang))
        elif card.get(CONFIG_NAME) is None:
            problems.append(Problem("(file)", _t("root_alone", name=TRUST_ROOT_NAME, config=CONFIG_NAME),
                                    _t("fix_root_alone", config=CONFIG_NAME, path=str(root_path)))
                            .line(str(root_path), lang))
    text = card.get(ENROLL_NAME)
    if text is not None:
        enroll_path = config_dir / ENROLL_NAME
        try:
            code = enrollcode.parse(text.decode("utf-8").strip())
        except UnicodeDecodeError:
            problems.append(Problem("(file)", _t("not_utf8"), _t("fix_not_utf8")).line(str(enroll_path), lang))
            code = None
        except enrollcode.EnrollCodeError as exc:
            problems.append(Problem("(file)", exc.text or _t("not_a_code", code=exc.code), _t("fix_not_a_code"))
                            .line(str(enroll_path), lang))
            code = None
        if config is not None and not config.enroll.qr:
            problems.append(Problem("enroll.qr", _t("enroll_off", name=ENROLL_NAME), _t("fix_enroll_off"))
                            .line(str(config_path), lang))
        pinned = root_key if root_key is not None else _config_root(config)
        if code is not None and code.root_sha256 and pinned is not None \
                and enrollcode.root_fingerprint(pinned) != code.root_sha256:
            problems.append(Problem("(file)", _t("other_root"), _t("fix_other_root")).line(str(enroll_path), lang))
    return problems


def _used_roots(config: Config) -> set[Path]:
    used = {Path(p) for p in config.trust.roots}
    if config.enroll.trust_root:
        used.add(Path(config.enroll.trust_root))
    return used


def _config_root(config: Config | None):
    if config is None or not config.enroll.trust_root:
        return None
    try:
        return load_root(config.enroll.trust_root)
    except CheckpointError:
        return None  # reported by config check already


# ---------------------------------------------------------------- applying, all or nothing


def recover(config_dir: str | os.PathLike) -> bool:
    """Undo an apply that did not finish (a crash or power cut): the files it replaced come back,
    the ones it added go. True if there was one. Safe to run again after a crash in the middle."""
    with Dir.open(config_dir) as d:
        try:
            journal = d.subdir(JOURNAL_NAME)
        except FileNotFoundError:
            return False
        with journal:
            names = journal.names()
            if PLAN_NAME in names:
                plan = json.loads(journal.read(PLAN_NAME, 64 * 1024))
                with journal.subdir("old", create_mode=0o700) as old:
                    saved = set(old.names())
                    for name in plan["touched"]:
                        _check_name_in_plan(name)
                        if name in plan["existed"]:
                            if name in saved:
                                os.rename(name, name, src_dir_fd=old.fd, dst_dir_fd=d.fd)
                        else:
                            _unlink(d, name)
                os.fsync(d.fd)
                os.unlink(PLAN_NAME, dir_fd=journal.fd)
                os.fsync(journal.fd)
        _remove_journal(d)
        return True


def apply(card: CardFiles, config_dir: str | os.PathLike, lang: str | None = "en") -> ApplyResult:
    """Install ``card``'s files into ``config_dir`` (see the module docstring); CardConfigError with
    every problem (in ``lang``), the old files left in place, if the set does not pass."""
    config_dir = Path(config_dir)
    recovered = recover(config_dir)
    with Dir.open(config_dir) as d:
        record = _read_record(d)
        digest = card.digest()
        if digest == record.get("files"):
            return ApplyResult("unchanged", recovered=recovered)
        managed = set(record.get("files", {})) & set(CARD_FILES)
        remove = sorted(managed - set(card.names()))
        touched = sorted(set(card.names()) | set(remove) | {RECORD_NAME})
        present = set(d.names())
        existed = [name for name in touched if name in present]
        _remove_journal(d)
        group = service_owner()
        with d.subdir(JOURNAL_NAME, create_mode=0o700) as journal:
            with journal.subdir("old", create_mode=0o700) as old:
                for name in existed:
                    st = d.lstat(name)
                    old.write(name, d.read(name, 1 << 20), st.st_mode & 0o777)
                    if os.geteuid() == 0:  # put back as it was, owner included
                        os.chown(name, st.st_uid, st.st_gid, dir_fd=old.fd, follow_symlinks=False)
            with journal.subdir("new", create_mode=0o700) as new:
                for name, data in card.files:
                    new.write(name, data, 0o640 if name == ENROLL_NAME else 0o644)
                    if name == ENROLL_NAME and group is not None:  # the token: root and the service only
                        os.chown(name, 0, group[1], dir_fd=new.fd, follow_symlinks=False)
                new.write(RECORD_NAME, (json.dumps({"files": digest, "source": card.source}) + "\n")
                          .encode("utf-8"), 0o644)
                journal.write(PLAN_NAME, json.dumps({"touched": touched, "existed": existed}).encode("utf-8"), 0o600)
                for name in [*card.names(), RECORD_NAME]:
                    os.rename(name, name, src_dir_fd=new.fd, dst_dir_fd=d.fd)
                for name in remove:
                    _unlink(d, name)
                os.fsync(d.fd)
        problems = check_installed(config_dir, card, lang)
        if problems:
            recover(config_dir)
            raise CardConfigError(problems)
        with d.subdir(JOURNAL_NAME) as journal:
            os.unlink(PLAN_NAME, dir_fd=journal.fd)  # the commit: from here on the new set stays
            os.fsync(journal.fd)
        _remove_journal(d)
    return ApplyResult("applied", tuple(card.names()), tuple(remove), recovered)


def apply_card(boot_dir: str | os.PathLike, config_dir: str | os.PathLike, lang: str | None = "en") -> ApplyResult:
    """The boot step: undo an interrupted apply, then apply the card's files if they are new."""
    card = read_card(boot_dir, lang)
    if not card.files:
        return ApplyResult("none", recovered=recover(config_dir))
    return apply(card, config_dir, lang)


def _check_name_in_plan(name: str) -> None:
    if name not in (*CARD_FILES, RECORD_NAME):
        raise CardConfigError([Problem("(file)", _t("journal_name", name=repr(name)),
                                       _t("fix_journal", journal=JOURNAL_NAME)).line()])


def _unlink(d: Dir, name: str) -> None:
    try:
        os.unlink(name, dir_fd=d.fd)
    except FileNotFoundError:
        pass


def _remove_journal(d: Dir) -> None:
    """Remove the journal directory (its two subdirectories and their files; nothing deeper)."""
    try:
        journal = d.subdir(JOURNAL_NAME)
    except FileNotFoundError:
        return
    with journal:
        for name in journal.names():
            if name in ("old", "new"):
                with journal.subdir(name) as sub:
                    for inner in sub.names():
                        os.unlink(inner, dir_fd=sub.fd)
                os.rmdir(name, dir_fd=journal.fd)
            else:
                os.unlink(name, dir_fd=journal.fd)
    os.rmdir(JOURNAL_NAME, dir_fd=d.fd)
    os.fsync(d.fd)


def _read_record(d: Dir) -> dict:
    try:
        doc = json.loads(d.read(RECORD_NAME, 64 * 1024))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # unreadable: the card's files are applied again
    return doc if isinstance(doc, dict) and isinstance(doc.get("files"), dict) else {}


# ---------------------------------------------------------------- showing a refused set


def error_report(problems: list[str], card: CardFiles | None, config_dir: str | os.PathLike) -> dict:
    """What checkpoint-config-error.service shows: the problems, and the LED wiring to show them on
    (the card's [feedback] tables if they pass on their own, else the installed config's, else none)."""
    return {"problems": list(problems), "feedback": _feedback_tables(card, Path(config_dir) / CONFIG_NAME)}


def _feedback_tables(card: CardFiles | None, installed: Path) -> dict | None:
    candidates = []
    text = card.get(CONFIG_NAME) if card is not None else None
    if text is not None:
        try:
            candidates.append(tomllib.loads(text.decode("utf-8")).get("feedback"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            pass  # no wiring to take from it; the problem itself is in the report
    try:
        candidates.append(tomllib.loads(installed.read_text(encoding="utf-8")).get("feedback"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        pass
    for tables in candidates:
        if isinstance(tables, dict):
            try:
                parse({"feedback": tables}).feedback_config().validate()
            except (ConfigError, FeedbackConfigError, CheckpointError, ValueError):
                continue
            return tables
    return None


def error_feedback(report: dict) -> FeedbackConfig | None:
    """The FeedbackConfig that shows CONFIG_ERROR as its error state, or None (no wiring known)."""
    if not report.get("feedback"):
        return None
    fb = parse({"feedback": report["feedback"]}).feedback_config()
    return dataclasses.replace(fb, patterns=dataclasses.replace(fb.patterns, error=CONFIG_ERROR, error_alarm=None))


def error_page(report: dict) -> str:
    """The kiosk page for a refused set: every problem, in Vietnamese then English (escaped)."""
    items = "".join(f"<li><code>{html.escape(line)}</code></li>" for line in report.get("problems", []))
    parts = []
    for lang in i18n.LANGS:
        parts.append(f'<section lang="{lang}"><h1>{html.escape(i18n.t("card_config.title", lang))}</h1>'
                     f'<p>{html.escape(i18n.t("card_config.intro", lang))}</p>'
                     f'<p>{html.escape(i18n.t("card_config.fix", lang))}</p></section>')
    return ('<!doctype html><html lang="vi"><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">'
            '<title>checkpoint-edge</title><style>body{font-family:sans-serif;margin:1.5em;background:#fff;'
            'color:#111}h1{color:#a00}section{margin-bottom:1em}li{margin:.4em 0}code{white-space:pre-wrap}'
            f'</style></head><body>{parts[0]}<ul>{items}</ul>{"".join(parts[1:])}</body></html>')
