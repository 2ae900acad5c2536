"""`checkpoint scan`: run the scan pipeline from cameras, video files, image folders, readers and stdin.

A thin wrapper over `scanner.appliance.pipeline.Pipeline` and the inputs in `hardware/`: one line per
verdict on stdout (JSON with --json, with source and time), read issues and input state changes
as one line each on stderr. docs/cli.md#checkpoint-scan.
"""
from __future__ import annotations

import datetime as dt
import signal
import sys
import threading
import time

import click

from hardware.camera import CameraConfig, CameraInput
from hardware.decode import NAMES as DECODER_NAMES
from hardware.decode import check_roi
from hardware.inputs import SourceState
from hardware.readers import SerialReader, SerialReaderConfig, StdinReader
from hardware.readers_hid import HidReader, HidReaderConfig
from scanner.appliance.pipeline import Pipeline
from scanner.base import i18n
from scanner.base.safetext import escape, json_line
from scanner.cards.verifier import verify as verify_text
from scanner.cli.common import LANG, fail
from scanner.cli.verdicts import human_verdict, load_cli_trust, trust_options


def _roi(value: str | None):
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("expected four numbers x,y,w,h (fractions of the frame)") from None
    if len(parts) != 4:
        raise click.BadParameter("expected four numbers x,y,w,h (fractions of the frame)")
    try:
        check_roi(parts)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return parts


@click.command("scan")
@click.option("--camera", "cameras", multiple=True, metavar="DEV|FILE",
              help="A camera: V4L2 index or /dev/video path, picamera2[:N], a stream URL; or a file. Repeatable.")
@click.option("--video", "videos", multiple=True, metavar="FILE", help="A video file, every frame decoded. Repeatable.")
@click.option("--images", "folders", multiple=True, metavar="DIR",
              help="A folder of images, one frame each. Repeatable.")
@click.option("--serial", "ports", multiple=True, metavar="PORT", help="A serial / USB CDC-ACM reader. Repeatable.")
@click.option("--hid", "hids", multiple=True, metavar="PATH|VID:PID",
              help="A USB keyboard-wedge reader (/dev/input path or vendor:product). Repeatable.")
@click.option("--stdin", "use_stdin", is_flag=True, help="Read one code per line from stdin.")
@trust_options
@click.option("--cooldown", type=click.FloatRange(0, 3600), default=3.0, show_default=True,
              help="Seconds within which the same card from the same input is one scan.")
@click.option("--decoder", type=click.Choice(DECODER_NAMES), default="auto", show_default=True)
@click.option("--roi", default=None, metavar="X,Y,W,H", help="Camera region of interest, fractions of the frame.")
@click.option("--size", default="640x480", show_default=True, metavar="WxH", help="Camera frame size.")
@click.option("--fps", type=click.FloatRange(1, 120), default=None, help="Camera frame rate.")
@click.option("--layout", default="us", show_default=True,
              help="Keyboard layout HID readers type for (us, uk, de, fr).")
@click.option("--suffix", default="enter", show_default=True,
              help="What ends a code on HID readers (enter, tab, text).")
@click.option("--baud", type=click.IntRange(50, 4_000_000), default=9600, show_default=True, help="Serial baud rate.")
@click.option("--terminator", default="auto", show_default=True, help="Serial line end (auto, cr, lf, crlf, text).")
@click.option("--direction", type=click.Choice(["in", "out"]), default=None, help="Direction of these inputs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per verdict.")
@click.option("--lang", type=LANG, default=None, help="Language of the human lines (default vi).")
@click.option("--once", is_flag=True, help="Stop when the file inputs (video, images, stdin) are exhausted.")
def scan(cameras, videos, folders, ports, hids, use_stdin, trust_paths, roots, at, clock_skew, cooldown,
         decoder, roi, size, fps, layout, suffix, baud, terminator, direction, as_json, lang, once):
    """Scan cards from cameras, files and readers; print one line per verdict until stopped (Ctrl-C)."""
    store = load_cli_trust(trust_paths, roots)
    if not (cameras or videos or folders or ports or hids or use_stdin):
        fail(i18n.text("cli_error.no_input"))
    try:
        inputs = _inputs(cameras, videos, folders, ports, hids, use_stdin, decoder=decoder, roi=_roi(roi),
                         size=size, fps=fps, layout=layout, suffix=suffix, baud=baud, terminator=terminator,
                         direction=direction)
    except (ValueError, click.BadParameter) as exc:
        fail(str(exc.message if isinstance(exc, click.BadParameter) else exc))
    if once and not any(i.finite for i in inputs):
        fail(i18n.text("cli_error.scan_once"))

    printer = _Printer(as_json, lang or i18n.default_lang())
    now = (lambda: float(at)) if at is not None else time.time
    pipe = Pipeline.verifying(store, printer.verdict, cooldown=cooldown, on_issue=printer.issue, clock=now,
                              verify=lambda text, trust, t: verify_text(text, trust, t, clock_skew=clock_skew))
    for inp in inputs:
        pipe.add(inp)
    if not _run(pipe, inputs, until_done=once or all(i.finite for i in inputs), on_trouble=printer.trouble):
        fail(i18n.text("cli_error.inputs_failed"))


class _Printer:
    """What `checkpoint scan` prints, one whole line at a time from whichever thread: verdicts on
    stdout, read issues and inputs in trouble on stderr."""

    def __init__(self, as_json: bool, lang: str) -> None:
        self.as_json, self.lang = as_json, lang
        self._lock = threading.Lock()

    def _echo(self, line: str, *, err: bool = False) -> None:
        with self._lock:
            click.echo(line, err=err)
            if not err:
                sys.stdout.flush()

    def verdict(self, scan, verdict) -> None:
        if self.as_json:
            line = json_line({**verdict.to_dict(), "source": scan.source, "source_id": scan.source_id,
                              "at": round(scan.at, 3), "direction": scan.direction})
        else:
            when = dt.datetime.fromtimestamp(scan.at).strftime("%H:%M:%S")
            line = f"{when} {scan.source}:{escape(scan.source_id)} {human_verdict(verdict, self.lang)}"
        self._echo(line)

    def issue(self, issue) -> None:
        hint = issue.hint if self.lang == "en" else i18n.t(f"input_reason.{issue.code}", self.lang)
        self._echo(f"checkpoint: warning: {issue.source} {escape(issue.source_id)}: {issue.code}: "
                   f"{escape(hint)} ({escape(issue.sample)})", err=True)

    def trouble(self, h) -> None:
        """An input in trouble: its state and reason in words (the driver's own detail, English, only in English)."""
        detail = h.detail if self.lang == "en" or not h.reason else i18n.t(f"input_reason.{h.reason}", self.lang)
        state = i18n.t(f"input_state.{h.state}", self.lang)
        self._echo(f"checkpoint: warning: {h.source} {escape(h.source_id)}: {state}"
                   f"{' (' + h.reason + ')' if h.reason else ''}: {escape(detail)}", err=True)


def _run(pipe: Pipeline, inputs: list, *, until_done: bool, on_trouble) -> bool:
    """Run ``pipe`` until SIGINT/SIGTERM, or (``until_done``) until its file inputs are exhausted and
    every scan is answered; ``on_trouble`` once for each input that starts reopening or fails.
    False if every input failed."""
    stop = threading.Event()
    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT), signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    shown: dict[str, tuple] = {}
    try:
        pipe.start()
        while not stop.is_set():
            health = pipe.health()
            for h in health.sources:
                key = (h.state, h.reason)
                if shown.get(h.source_id) != key and h.state in (SourceState.REOPENING, SourceState.FAILED):
                    on_trouble(h)
                shown[h.source_id] = key
            if all(h.state is SourceState.FAILED for h in health.sources):
                return False
            if until_done and all(i.join(0) for i in inputs if i.finite) and pipe.wait_idle(0.0):
                break
            stop.wait(0.05)
    finally:
        pipe.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return True


def _inputs(cameras, videos, folders, ports, hids, use_stdin, *, decoder, roi, size, fps, layout, suffix, baud,
            terminator, direction) -> list:
    """The input objects the options describe (ValueError for a bad combination of values)."""
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {size!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    inputs: list = []
    for dev in cameras:
        inputs.append(CameraInput(CameraConfig(dev, width=width, height=height, fps=fps, roi=roi, decoder=decoder,
                                               direction=direction)))
    for path in videos:
        inputs.append(CameraInput(CameraConfig(path, backend="opencv", live=False, roi=roi, decoder=decoder,
                                               direction=direction)))
    for path in folders:
        inputs.append(CameraInput(CameraConfig(path, backend="files", roi=roi, decoder=decoder, direction=direction)))
    for port in ports:
        inputs.append(SerialReader(SerialReaderConfig(port, baud=baud, terminator=terminator, direction=direction)))
    for dev in hids:
        inputs.append(HidReader(HidReaderConfig(dev, layout=layout, suffix=suffix, direction=direction)))
    if use_stdin:
        inputs.append(StdinReader(direction=direction))
    return inputs
