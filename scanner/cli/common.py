"""What every `checkpoint` command shares: exit statuses, one-line errors, output files, time and
state-directory options, and resources closed when the command ends. Kept light: `checkpoint
--help` and every command load it.

Exit status: 0 accept / success, 1 reject, 2 usage or configuration error (one line on stderr).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import sys
from pathlib import Path
from typing import NoReturn, Protocol, TypeVar

import click
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base import i18n
from scanner.base.errors import CheckpointError, UsageError, error_text
from scanner.base.fsutil import AtomicFile, write_output
from scanner.base.paths import default_state_dir
from scanner.base.safetext import escape
from scanner.cards import keys

EXIT_ACCEPT = 0
EXIT_REJECT = 1
EXIT_USAGE = 2
EXIT_OK, EXIT_INCOMPLETE = 0, 1  # commands that finish a job: all of it done, or some left (sync, import, pull)
EXIT_FATAL = 1  # the appliance stopped on an error, or a doctor check failed



class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


def parse_time(value: str) -> int:
    """Epoch seconds from an integer or an ISO 8601 date/time (UTC unless it says otherwise)."""
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{value!r} is neither epoch seconds nor an ISO 8601 time",
                         text=i18n.text("usage.not_a_time", value=repr(value))) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


class TimeParam(click.ParamType):
    name = "ISO8601|EPOCH"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_time(value)
        except UsageError as exc:
            self.fail(exc.text() if exc.text is not None else str(exc), param, ctx)


TIME = TimeParam()
LANG = click.Choice(i18n.LANGS)


def fail(message: str | i18n.Text, lang: str | None = None) -> NoReturn:
    """One line on stderr, exit status 2 (a catalogue text in ``lang``, else the reader's language)."""
    click.echo(f"checkpoint: error: {escape(i18n.render(message, lang))}", err=True)
    sys.exit(EXIT_USAGE)


def command_lang() -> str:
    """The running command's --lang when it has one, else the reader's language."""
    ctx = click.get_current_context(silent=True)
    lang = ctx.params.get("lang") if ctx is not None else None
    return lang if lang in i18n.LANGS else i18n.default_lang()


def fail_on(exc: BaseException) -> NoReturn:
    """An error a command cannot go on after, in the reader's words (its --lang) with its code: one
    line, exit 2."""
    fail(error_text(exc, command_lang()))


def run_guarded(fn, *args, **kwargs):
    """Call library code; a CheckpointError or unreadable file becomes one line and exit 2."""
    try:
        return fn(*args, **kwargs)
    except CheckpointError as exc:
        fail_on(exc)
    except BrokenPipeError:
        raise  # our reader went away (`... | head`): click ends the command quietly
    except OSError as exc:
        fail_on(exc)


def closing(resource: C) -> C:
    """``resource`` (a storage, a log, a client), closed when the command ends, however it ends
    (click's Context.call_on_close)."""
    click.get_current_context().call_on_close(resource.close)
    return resource


@contextlib.contextmanager
def output_file(path: str, *, encoding: str | None = "utf-8"):
    """A file a person named (-o/--out), mode 0600: written atomically and never through a
    symlink (fsutil.AtomicFile.output); its errors become one line and exit 2."""
    out = run_guarded(AtomicFile.output, path, 0o600, encoding=encoding)
    try:
        yield out.file
        run_guarded(out.commit)
    finally:
        out.abort()


def state_option(fn):
    """--state-dir, for the commands that work on a device's state directory."""
    return click.option("--state-dir", type=click.Path(file_okay=False), default=None,
                        help="The device's state directory (default: $CHECKPOINT_STATE_DIR, "
                             "else /var/lib/checkpoint).")(fn)


def state_dir_of(state_dir: str | None) -> Path:
    """--state-dir as given, else the default state directory."""
    return Path(state_dir) if state_dir else default_state_dir()


def load_root_private(path) -> ed25519.Ed25519PrivateKey:
    """The trust root's private key (Ed25519) from ``path``; one error line and exit 2 otherwise."""
    key = run_guarded(keys.load_private_key, path)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        fail(i18n.text("key_file.root_not_ed25519", path=str(path)))
    return key


def write_out(out: str, data: bytes) -> None:
    """``data`` to stdout ('-') or to the file ``out`` (atomically, mode 0644)."""
    if out == "-":
        sys.stdout.buffer.write(data)
    else:
        run_guarded(write_output, out, data, 0o644)
