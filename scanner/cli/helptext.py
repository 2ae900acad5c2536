"""`-h`/`--help` in the reader's language. The commands' help is written in English beside the code
(click's decorators and docstrings); its words in another language are in the catalogue's [help],
keyed by the English paragraph itself, as gettext keys a message by its text (a paragraph without a
translation is shown as it is, and tests/test_untranslated.py finds it). click's own words (Usage,
Options, defaults) are the catalogue's [help_ui]. English help is click's own, unchanged.
"""
from __future__ import annotations

import inspect

import click

from scanner.base import i18n

HELP_OPTIONS = ("-h", "--help")


def words(english: str, lang: str) -> str:
    """``english`` (a help text, one or more paragraphs) in ``lang``: each paragraph's catalogue text,
    else the paragraph as it is."""
    if lang == "en":
        return english
    out = []
    for paragraph in inspect.cleandoc(english).split("\n\n"):
        key = " ".join(paragraph.split())
        out.append(i18n.help_text(key, lang) or paragraph)
    return "\n\n".join(out)


def asks_help(args: list[str]) -> bool:
    """Whether the command line asks for help (before a ``--``)."""
    head = args[:args.index("--")] if "--" in args else args
    return any(a in HELP_OPTIONS for a in head)


def lang_of(args: list[str]) -> str:
    """The reader's language for help: ``--lang X`` on the command line, else CHECKPOINT_LANG, else Vietnamese."""
    for i, a in enumerate(args):
        value = a.partition("=")[2] if a.startswith("--lang=") else args[i + 1] if a == "--lang" and i + 1 < len(args) \
            else None
        if value in i18n.LANGS:
            return value
    return i18n.default_lang()


def context_for(group: click.Group, prog: str, args: list[str]) -> click.Context:
    """The context of the command ``args`` name (their words that are subcommands, in turn), parsed
    no further: what its help describes."""
    ctx = group.make_context(prog, [], resilient_parsing=True)
    for word in args:
        command = ctx.command
        if word.startswith("-") or not isinstance(command, click.Group):
            continue
        sub = command.get_command(ctx, word)
        if sub is None:
            break
        ctx = sub.make_context(word, [], parent=ctx, resilient_parsing=True)
    return ctx


def render(ctx: click.Context, lang: str, summaries: dict[str, str] | None = None) -> str:
    """The help of ``ctx``'s command as click lays it out, in ``lang``. ``summaries``: a group's
    commands not loaded yet, with their one-line English summaries."""
    command = ctx.command
    ui = lambda key, **kw: i18n.t("help_ui." + key, lang, **kw)  # noqa: E731
    f = ctx.make_formatter()
    f.write_usage(ctx.command_path, " ".join(command.collect_usage_pieces(ctx)), prefix=ui("usage") + " ")
    if command.help:
        f.write_paragraph()
        with f.indentation():
            f.write_text(words(command.help, lang))
    records = [_option(p, ctx, lang) for p in command.get_params(ctx) if not isinstance(p, click.Argument)]
    rows = [r for r in records if r is not None]
    if rows:
        with f.section(ui("options")):
            f.write_dl(rows)
    if isinstance(command, click.Group):
        names = command.list_commands(ctx)
        limit = f.width - 6 - max(map(len, names), default=0)
        lines = []
        for name in names:
            summary = (summaries or {}).get(name)
            if summary is None:
                sub = command.get_command(ctx, name)
                if sub is None or sub.hidden:
                    continue
                summary = (sub.help or "").split("\n\n")[0]
            short = click.Command(name, help=words(summary, lang).split("\n\n")[0]).get_short_help_str(limit)
            lines.append((name, short))
        if lines:
            with f.section(ui("commands")):
                f.write_dl(lines)
    return f.getvalue()


def _option(param: click.Parameter, ctx: click.Context, lang: str) -> tuple[str, str] | None:
    """An option's line: its names, its help in ``lang``, click's [default: ...; required] in ``lang``."""
    record = param.get_help_record(ctx)
    if record is None:
        return None
    names, rest = record
    english = getattr(param, "help", None) or ""
    extra = rest[len(english):] if english and rest.startswith(english) else rest if not english else ""
    extra = extra.replace("[default: ", f"[{i18n.t('help_ui.default', lang)}: ").replace(
        "required]", f"{i18n.t('help_ui.required', lang)}]")
    return names, words(english, lang) + extra if english else extra.strip()
