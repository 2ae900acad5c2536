"""The appliance's configuration: one TOML file, checked all at once against the schema
(scanner/appliance/schema.py).

``load(path)`` gives a `Config`, whose sections are the typed values generated from the schema
(scanner/appliance/settings.py: ``config.scan.cooldown_s``, ``config.camera[0].device``), or
raises `ConfigError` listing every problem (key, problem, fix). The hardware modules' own
dataclasses (CameraConfig, SerialReaderConfig, HidReaderConfig, FeedbackConfig) are built from
the typed sections here, one function each. Spec: docs/configuration.md.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware.camera import CameraConfig
from hardware.feedback_config import (
    ButtonConfig,
    BuzzerConfig,
    FeedbackConfig,
    FeedbackConfigError,
    LedConfig,
    PassageSensorConfig,
    RelayConfig,
    RgbLedConfig,
    gpio_number,
)
from hardware.feedback_patterns import Patterns, Timings
from hardware.readers import SerialReaderConfig
from hardware.readers_hid import HidReaderConfig
from scanner.appliance import configschema as cs
from scanner.appliance import settings
from scanner.appliance.configschema import Problem
from scanner.appliance.schema import SECTIONS
from scanner.appliance.settings import Settings
from scanner.base import i18n
from scanner.base.errors import CheckpointError, os_error_words
from scanner.store import admission

DEFAULT_PATH = "/etc/checkpoint/checkpoint.toml"


class ConfigError(CheckpointError):
    """A configuration that cannot be used; ``problems`` has one entry per thing wrong."""

    code = "config"

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        first = problems[0].line(source) if problems else "invalid configuration"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more)

    def lines(self, lang: str | None = "en") -> list[str]:
        """One line per problem, in ``lang`` (English, as logs have it, unless a reader's language is given)."""
        return [p.line(self.source, lang) for p in self.problems]


def _section(config: Settings, name: str) -> Any:
    """A section's value by its dotted name ("feedback.timings"); None for an absent optional table."""
    node: Any = config
    for part in name.split("."):
        node = getattr(node, part)
    return node


def _typed(values: dict) -> dict[str, Any]:
    """The top-level sections of validated values, as the generated classes (children inside their parents)."""
    built: dict[str, Any] = {}
    for section in sorted(SECTIONS, key=lambda s: -s.name.count(".")):  # the tables inside others first
        cls = settings.TYPES[section.name]
        inner = {c.name.rpartition(".")[2]: built.pop(c.name) for c in cs.children_of(section, SECTIONS)}
        raw = values[section.name]
        if section.array:
            built[section.name] = tuple(cls(**table) for table in raw)
        elif raw is None:
            built[section.name] = None
        else:
            built[section.name] = cls(**raw, **inner)
    return built


def _plain(config: Settings) -> dict:
    """The validated values again ({section: {key: value}}, as `cs.validate` gives them)."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        value = _section(config, section.name)
        if section.array:
            out[section.name] = tuple({k.name: getattr(t, k.name) for k in section.keys} for t in value)
        else:
            out[section.name] = None if value is None else {k.name: getattr(value, k.name) for k in section.keys}
    return out


# ---------------------------------------------------------------- the hardware modules' configs

def camera_config(c: settings.CameraSection, scan: settings.ScanSection) -> CameraConfig:
    live = {"auto": None, "live": True, "file": False}[c.kind]
    return CameraConfig(c.device, name=c.name, backend=c.backend, width=c.width, height=c.height, fps=c.fps,
                        exposure=c.exposure, focus=c.focus, gain=c.gain,
                        exposure_mode=c.exposure_mode, detail_width=c.detail_width,
                        detail_height=c.detail_height, roi=c.roi, decoder=c.decoder or scan.decoder,
                        direction=c.direction, live=live, pace=c.pace, loop=c.loop)


def serial_reader_config(s: settings.SerialSection) -> SerialReaderConfig:
    return SerialReaderConfig(s.port, name=s.name, baud=s.baud, terminator=s.terminator, timeout=s.timeout_s,
                              direction=s.direction)


def hid_reader_config(h: settings.HidSection) -> HidReaderConfig:
    return HidReaderConfig(h.device, name=h.name, layout=h.layout, suffix=h.suffix, timeout=h.timeout_s,
                           grab=h.grab, direction=h.direction)


def feedback_config(fb: settings.FeedbackSection, device: settings.DeviceSection) -> FeedbackConfig:
    """The FeedbackConfig of [feedback] and its part tables (hardware/feedback_config.py)."""
    rgb, buzzer, relay, button, passage = fb.rgb, fb.buzzer, fb.relay, fb.button, fb.passage
    return FeedbackConfig(
        green=LedConfig(fb.green.pin, fb.green.active_high) if fb.green else None,
        red=LedConfig(fb.red.pin, fb.red.active_high) if fb.red else None,
        amber=LedConfig(fb.amber.pin, fb.amber.active_high) if fb.amber else None,
        rgb=RgbLedConfig(rgb.red, rgb.green, rgb.blue, rgb.active_high, rgb.pwm, rgb.amber) if rgb else None,
        buzzer=BuzzerConfig(buzzer.pin, buzzer.active_high, buzzer.tonal, buzzer.mid_tone_hz, buzzer.octaves)
        if buzzer else None,
        relay=RelayConfig(relay.pin, relay.active_high, relay.pulse_s, relay.fail_safe) if relay else None,
        button=ButtonConfig(button.pin, button.pull_up, button.bounce_s or None, button.hold_s, button.press,
                            button.hold) if button else None,
        passage=PassageSensorConfig(passage.pin, {"up": True, "down": False, "none": None}[passage.pull],
                                    (passage.active == "high") if passage.pull == "none" else None,
                                    passage.bounce_s or None, passage.timeout_s) if passage else None,
        patterns=Patterns.default(Timings(**dataclasses.asdict(fb.timings)), alarm=fb.alarm),
        direction=device.direction,
        pin_factory=fb.pin_factory,
    )



# ---------------------------------------------------------------- loading

@dataclass(frozen=True, slots=True)
class Config(Settings):
    """A validated configuration: every section as a typed value (scanner/appliance/settings.py), so
    ``config.scan.cooldown_s`` is checked by the type checker and a misspelt name raises.
    ``path`` is None for the built-in defaults."""

    path: Path | None = None

    @classmethod
    def from_values(cls, values: dict, path: Path | None = None) -> Config:
        """The configuration of validated values ({section name: table}, as `cs.validate` gives them)."""
        return cls(**_typed(values), path=path)

    @property
    def state_dir(self) -> Path:
        return Path(self.device.state_dir)

    @property
    def db_path(self) -> Path:
        return Path(self.log.db) if self.log.db else self.state_dir / "entries.db"

    @property
    def has_inputs(self) -> bool:
        """Whether the file lists any input (without one, inputs are found by their udev names)."""
        return bool(self.camera or self.serial or self.hid or self.stdin)

    def api_token(self) -> str | None:
        """The API token (from `token` or the first line of `token_file`), or None."""
        if self.api.token:
            return self.api.token
        if self.api.token_file:
            text = Path(self.api.token_file).read_text(encoding="utf-8").strip().splitlines()
            return text[0].strip() if text and text[0].strip() else None
        return None

    def input_names(self) -> list[str]:
        return ([c.name or c.device for c in self.camera] + [s.name or s.port for s in self.serial]
                + [h.name or h.device for h in self.hid] + [s.name for s in self.stdin])

    def cameras(self) -> list[CameraConfig]:
        return [camera_config(c, self.scan) for c in self.camera]

    def serial_readers(self) -> list[SerialReaderConfig]:
        return [serial_reader_config(s) for s in self.serial]

    def hid_readers(self) -> list[HidReaderConfig]:
        return [hid_reader_config(h) for h in self.hid]

    def feedback_config(self) -> FeedbackConfig:
        return feedback_config(self.feedback, self.device)

    def admission_policy(self) -> admission.Policy:
        """The degraded-mode policy of the ``trust``, ``clock`` and ``sync`` sections."""
        return admission.Policy(self.trust.max_age_h * 3600, self.trust.when_stale,
                                self.clock.max_unconfirmed_h * 3600, self.clock.when_unconfirmed,
                                self.sync.backlog_max, self.sync.backlog_max_age_h * 3600)

    def summary(self) -> dict:
        """What the status page shows of the configuration: no secrets, no file contents."""
        fb = self.feedback
        return {
            "path": str(self.path) if self.path else None,
            "state_dir": str(self.state_dir),
            "name": self.device.name,
            "inputs": self.input_names(),
            "sync": self.sync.enabled,
            "api_listen": self.api.listen[0] + ":" + str(self.api.listen[1]),
            "api_token": bool(self.api.token or self.api.token_file),
            "trust_policy": {"max_age_h": self.trust.max_age_h, "when_stale": self.trust.when_stale},
            "clock_policy": {"max_unconfirmed_h": self.clock.max_unconfirmed_h,
                             "when_unconfirmed": self.clock.when_unconfirmed},
            "feedback": [part for part in ("green", "red", "amber", "rgb", "buzzer", "relay", "button", "passage")
                         if getattr(fb, part) is not None],
            "kiosk": {"enabled": self.kiosk.enabled, "lang": self.kiosk.lang, "occupancy": self.kiosk.occupancy,
                      "preview": self.kiosk.preview},
        }

    def live_changes(self, new: Config) -> tuple[list[str], list[str]]:
        """Keys that differ in ``new``: (those a reload applies, those that need a restart)."""
        live: list[str] = []
        restart: list[str] = []
        for section in SECTIONS:
            old_v, new_v = _section(self, section.name), _section(new, section.name)
            if section.array or old_v is None or new_v is None:
                if old_v != new_v:
                    restart.append(section.name)
                continue
            for key in section.keys:
                if getattr(old_v, key.name) != getattr(new_v, key.name):
                    (live if key.live else restart).append(f"{section.name}.{key.name}")
        return live, restart

    def with_live_keys(self, new: Config) -> Config:
        """This configuration with the live keys of ``new`` (a reload): the other keys keep their
        running values until a restart."""
        old_values, new_values = _plain(self), _plain(new)
        merged: dict[str, Any] = {}
        for section in SECTIONS:
            old_t, new_t = old_values[section.name], new_values[section.name]
            if section.array or old_t is None or new_t is None:
                merged[section.name] = old_t
            else:
                merged[section.name] = {k.name: (new_t if k.live else old_t)[k.name] for k in section.keys}
        return Config.from_values(merged, self.path)


def _cross_checks(values: dict) -> list[Problem]:
    """Checks across keys and tables: inputs, pins used twice, the API token, the hardware dataclasses."""
    problems: list[Problem] = []
    # inputs: names unique; each must make a valid hardware config
    seen: dict[str, str] = {}
    for kind, ident in (("camera", "device"), ("serial", "port"), ("hid", "device"), ("stdin", "name")):
        for i, table in enumerate(values.get(kind, ())):
            name = table.get("name") or table.get(ident) or kind  # an unnamed [[stdin]] is "stdin"
            where = f"{kind}[{i}]"
            if name in seen:
                problems.append(Problem(f"{where}.name", i18n.text("config.name_used", name=repr(name), by=seen[name]),
                                        i18n.text("config.fix_name")))
            seen[name] = where
    for i, table in enumerate(values.get("camera", ())):  # a video file or a folder of pictures must be there
        device = str(table.get("device") or "")
        as_file = table.get("kind") == "file" or (table.get("kind", "auto") == "auto" and "/" in device
                                                   and "://" not in device and not device.startswith("/dev/"))
        if as_file and device and not os.path.exists(device):
            problems.append(Problem(f"camera[{i}].device", i18n.text("config.not_exist", path=device),
                                    i18n.text("config.fix_camera")))
    state = (values.get("device") or {}).get("state_dir")
    if state is not None and os.path.exists(state) and not os.path.isdir(state):
        problems.append(Problem("device.state_dir", i18n.text("config.not_dir", path=state),
                                i18n.text("config.fix_state_dir")))
    stdin_dash = [i for i, t in enumerate(values.get("stdin", ())) if t.get("path") == "-"]
    if len(stdin_dash) > 1:
        problems.append(Problem(f"stdin[{stdin_dash[1]}].path", i18n.text("config.stdin_twice"),
                                i18n.text("config.fix_stdin_twice")))
    for i, table in enumerate(values.get("stdin", ())):
        if table.get("path") not in (None, "-") and not os.path.exists(table["path"]):
            problems.append(Problem(f"stdin[{i}].path", i18n.text("config.not_exist", path=table["path"]),
                                    i18n.text("config.fix_stdin_path")))
    # pins: every use named by its key, a pin used twice names both keys
    uses: dict[int, str] = {}
    pin_keys = [(f"feedback.{c}", "pin") for c in ("green", "red", "amber")]
    pin_keys += [("feedback.rgb", c) for c in ("red", "green", "blue")]
    pin_keys += [(f"feedback.{p}", "pin") for p in ("buzzer", "relay", "button", "passage")]
    for section, key in pin_keys:
        table = values.get(section)
        if not table or key not in table:
            continue
        try:
            number = gpio_number(table[key])
        except FeedbackConfigError:
            continue  # already reported by the key's own check
        full = f"{section}.{key}"
        if number in uses:
            problems.append(Problem(full, i18n.text("config.pin_used", pin=f"GPIO{number}", by=uses[number]),
                                    i18n.text("config.fix_pin")))
        else:
            uses[number] = full
    if values.get("feedback.rgb") and any(values.get(f"feedback.{c}") for c in ("green", "red", "amber")):
        problems.append(Problem("feedback.rgb", i18n.text("config.rgb_and_leds"), i18n.text("config.fix_rgb_and_leds")))
    if values.get("feedback.passage") and not values.get("feedback.relay"):
        problems.append(Problem("feedback.passage", i18n.text("config.passage_relay"),
                                i18n.text("config.fix_passage_relay")))
    button = values.get("feedback.button")
    if button and button.get("press") is None and button.get("hold") is None:
        problems.append(Problem("feedback.button", i18n.text("config.button_idle"),
                                i18n.text("config.fix_button_idle")))
    site = values.get("site")
    if site and site.get("peer_timeout_s", 5.0) < 2 * site.get("heartbeat_s", 1.0):
        problems.append(Problem("site.peer_timeout_s", i18n.text("config.peer_timeout"),
                                i18n.text("config.fix_peer_timeout")))
    # the API: a token for anything but loopback, and not two of them
    api = values.get("api") or {}
    listen = api.get("listen")
    if api.get("token") and api.get("token_file"):
        problems.append(Problem("api.token", i18n.text("config.two_tokens"), i18n.text("config.fix_two_tokens")))
    if api.get("enabled") and listen and not cs.is_loopback(listen[0]) \
            and not (api.get("token") or api.get("token_file")):
        problems.append(Problem("api.token_file", i18n.text("config.api_open", host=listen[0]),
                                i18n.text("config.fix_api_open")))
    return problems


def _hardware_checks(config: Config) -> list[Problem]:
    """What the hardware modules' own dataclasses refuse (their checks stay the authority)."""
    problems = []
    for kind, build in (("camera", config.cameras), ("serial", config.serial_readers), ("hid", config.hid_readers)):
        try:
            build()
        except ValueError as exc:
            problems.append(Problem(kind, str(exc), i18n.text("config.see", where="docs/configuration.md#" + kind)))
    try:
        config.feedback_config().validate()
    except (FeedbackConfigError, ValueError) as exc:
        problems.append(Problem("feedback", str(exc), i18n.text("config.see", where="docs/wiring.md")))
    return problems


def parse(data: dict, path: Path | None = None) -> Config:
    """Validate parsed TOML; ConfigError with every problem."""
    values, problems = cs.validate(data, SECTIONS)
    source = str(path) if path else ""
    problems += _cross_checks(values)
    if problems:
        raise ConfigError(problems, source)
    config = Config.from_values(values, path)
    problems = _hardware_checks(config)
    if problems:
        raise ConfigError(problems, source)
    return config


def parse_text(text: str, path: Path | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem("(file)", _toml_problem(str(exc)), i18n.text("config.fix_toml"))],
                          str(path) if path else "") from None
    return parse(data, path)


_TOML_AT = re.compile(r"(?P<why>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)", re.S)


def _toml_problem(message: str) -> i18n.Text:
    """tomllib's message (English only) as a catalogue text: where the syntax breaks, in the reader's
    words; the parser's own words only in English."""
    m = _TOML_AT.fullmatch(message)
    if m is None:
        return i18n.text("config.not_toml", why=message, where="?")
    where = (i18n.text("config.toml_at", line=m["line"], column=m["column"]) if m["line"]
             else i18n.text("config.toml_at_end"))
    return i18n.text("config.not_toml", why=m["why"], where=where)


def load(path: str | os.PathLike) -> Config:
    """Read and validate a config file; ConfigError (every problem) if it cannot be used."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([Problem("(file)", i18n.text("config.not_exist", path=str(path)),
                                   i18n.text("config.fix_no_file"))]) from None
    except OSError as exc:
        raise ConfigError([Problem("(file)", os_error_words(exc, path), i18n.text("config.fix_unreadable"))]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem("(file)", i18n.text("config.not_utf8"), i18n.text("config.fix_utf8"))],
                          str(path)) from None
    return parse_text(text, path)


def check_file(path: str | os.PathLike, lang: str | None = "en") -> list[str]:
    """`checkpoint config check`: one line per problem in ``lang`` ([] when the file is good)."""
    try:
        load(path)
    except ConfigError as exc:
        return exc.lines(lang)
    return []


def defaults(state_dir: str | os.PathLike | None = None, inputs: dict | None = None) -> Config:
    """The built-in configuration of a device without a file: defaults for every key, and the
    given inputs (``{"camera": [...], "hid": [...]}``, see `discover_inputs`)."""
    data: dict = {k: list(v) for k, v in (inputs or {}).items()}
    if state_dir is not None:
        data["device"] = {"state_dir": str(state_dir)}
    values, problems = cs.validate(data, SECTIONS)
    if problems:
        raise ConfigError(problems, "(built-in defaults)")
    return Config.from_values(values, None)


def discover_inputs(dev: str | os.PathLike = "/dev") -> dict:
    """Inputs a configuration without [[camera]], [[hid]], [[serial]] or [[stdin]] tables uses
    (and keeps looking for while it runs): readers with the names the udev rules give
    (/dev/checkpoint/hid-*, /dev/checkpoint/serial-*) and the first camera (/dev/video0)."""
    dev = Path(dev)
    found: dict[str, list] = {"camera": [], "hid": [], "serial": []}
    named = dev / "checkpoint"
    if named.is_dir():
        for p in sorted(named.iterdir()):
            if p.name.startswith("hid-"):
                found["hid"].append({"name": p.name, "device": str(p)})
            elif p.name.startswith("serial-"):
                found["serial"].append({"name": p.name, "port": str(p)})
    if (dev / "video0").exists():
        found["camera"].append({"name": "camera", "device": str(dev / "video0")})
    return {k: v for k, v in found.items() if v}
