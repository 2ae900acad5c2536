"""The configuration's schema: every section and key of the TOML file, declared once.

The declaration (scanner/appliance/configschema.py) validates a file and fills in defaults
(scanner/appliance/config.py), tells which keys a reload (SIGHUP) applies, and writes both
docs/configuration.md (`checkpoint config docs`) and scanner/appliance/settings.py, the typed
section classes the code reads the values through (``python -m scanner.appliance.schema >
scanner/appliance/settings.py``). It imports no generated code, so it can always regenerate it.
"""
from __future__ import annotations

from typing import Any

from hardware import keymaps
from hardware.camera import BACKENDS as CAMERA_BACKENDS
from hardware.decode import NAMES as DECODER_NAMES
from hardware.decode import check_roi
from hardware.feedback_config import FeedbackConfigError, gpio_number
from hardware.readers import parse_terminator
from scanner.appliance import configschema as cs
from scanner.appliance import runtime
from scanner.appliance.configschema import REQUIRED, Key, Section
from scanner.base.i18n import LANGS, Text, text
from scanner.base.paths import DEFAULT_STATE_DIR
from scanner.cards.scan import DIRECTIONS

DEFAULT_LISTEN = "127.0.0.1:8080"
POLICIES = ("open", "closed")
LAYOUTS = tuple(keymaps.LAYOUTS)


# ---------------------------------------------------------------- checkers specific to this file

def _direction() -> cs.Check:
    return cs.optional(cs.choice(*DIRECTIONS))


def _pin() -> cs.Check:
    """A GPIO pin: BCM number (17), "GPIO17", "BCM17", or a header pin ("BOARD11", "J8:11")."""
    def check(v):
        if type(v) not in (int, str):
            return None, cs.must_be("a_pin", v)
        try:
            gpio_number(v)
        except FeedbackConfigError as exc:
            return None, exc.text or str(exc).removeprefix("pin: ")
        return v, None
    return cs.Check(check, "int | str")


def _roi() -> cs.Check:
    def check(v):
        value, problem = cs.list_of(cs.number(0, 1), min_items=4, max_items=4)(v)
        if problem:
            return None, problem
        try:
            check_roi(value)
        except ValueError as exc:
            return None, str(exc)
        return value, None
    return cs.Check(check, "tuple[float, float, float, float]")


def _levels() -> cs.Check:
    return cs.list_of(cs.number(0, 1), min_items=3, max_items=3)


def _terminator() -> cs.Check:
    def check(v):
        value, problem = cs.string(min_len=1, max_len=16)(v)
        if problem:
            return None, problem
        try:
            parse_terminator(value)
        except (ValueError, UnicodeDecodeError) as exc:
            return None, str(exc)
        return value, None
    return cs.Check(check, "str")


def K(name: str, check: cs.Check, type_doc: str, default: Any = REQUIRED, doc: str = "", *,
      live: bool = False, fix: str | Text = "", example: str | None = None) -> Key:
    return Key(name, check, type_doc, default, doc, fix, example, live)


def _led(name: str) -> Section:
    return Section(f"feedback.{name}", (
        K("pin", _pin(), "GPIO", doc="The LED's pin.", example="17"),
        K("active_high", cs.boolean(), "boolean", True,
          "false when the LED is wired from 3V3 to the pin (lit when the pin is low)."),
    ), doc=f"The {name} LED (docs/wiring.md).", optional=True, type_name="FeedbackLed",
        type_doc="One LED: green, red or amber (docs/wiring.md).")


# ---------------------------------------------------------------- the schema

SECTIONS: tuple[Section, ...] = (
    Section("device", (
        K("state_dir", cs.path(), "path", DEFAULT_STATE_DIR,
          "Device key, entry log, trust bundle and sync state (systemd's StateDirectory; mode 0700)."),
        K("checkpoint_id", cs.optional(cs.identifier()), "text", None,
          "Only for a device without a server (`[sync] enabled = false`): the checkpoint it serves. "
          "With a server the checkpoint comes from enrollment."),
        K("name", cs.optional(cs.string(max_len=64)), "text", None,
          "A label for the status page (e.g. \"Cổng chợ Đông\")."),
        K("direction", cs.choice(*DIRECTIONS), "`in` / `out`", "in",
          "Direction of inputs that have none of their own, until staff toggle it."),
        K("lang", cs.choice(*LANGS), "`vi` / `en`", "vi", "Language of console lines."),
    ), doc="Who and where this device is."),
    Section("scan", (
        K("cooldown_s", cs.number(0, 3600), "seconds", 3.0,
          "The same card from the same input within this time is one scan.", live=True),
        K("clock_skew_s", cs.integer(0, 86400), "seconds", 300,
          "Tolerance for a card's expiry and not-before times.", live=True),
        K("decoder", cs.choice(*DECODER_NAMES), "`auto` / `zxing` / `pyzbar`", "auto",
          "QR decoder for cameras that do not name one (docs/decoding.md)."),
        K("queue_size", cs.integer(16, 100_000), "integer", 256, "Scans waiting for verification, at most."),
        K("lane_priority", cs.integer(0, 49), "integer", runtime.LANE_PRIORITY,
          "The verdict lane's real-time (SCHED_FIFO) priority: a scan's thread takes a core at once from "
          "normal threads (the sync, a kiosk browser) when it wakes. 0: a normal thread. Above the unit's "
          f"LimitRTPRIO= ({runtime.LANE_PRIORITY}) it is refused and the lane runs as a normal thread (logged)."),
        K("shc_hold_s", cs.number(1, 600), "seconds", 60.0,
          "Parts of a multi-part SMART Health Card are held this long for the next part.", live=True),
    ), doc="The scan pipeline (docs/readers.md, docs/decoding.md)."),
    Section("trust", (
        K("files", cs.list_of(cs.path(must_exist=True)), "array of paths", [],
          "Extra issuer keys, certificates, JWKS files, SHC revocation lists or trust bundles. The "
          "bundle sync installs (STATE/bundle.json) is always used.", fix=text("config.fix_file")),
        K("roots", cs.list_of(cs.path(must_exist=True)), "array of paths", [],
          "Extra Ed25519 root public keys for bundles in `files` and for site credentials ([site]) "
          "(STATE/trust-root.pem is always used).",
          fix=text("config.fix_pem")),
        K("max_age_h", cs.number(1, 24 * 3660), "hours", 168.0,
          "A trust bundle older than this (or past its own expiry) makes the device degraded, and "
          "`when_stale` decides what happens to accepted cards.", live=True),
        K("when_stale", cs.choice(*POLICIES), "`open` / `closed`", "open",
          "`open`: accept, flagged degraded (amber); `closed`: reject with reason `trust_expired`.", live=True),
    ), doc="What the verifier trusts, and how old that may get (docs/configuration.md#degraded-mode)."),
    Section("clock", (
        K("max_unconfirmed_h", cs.number(0.1, 24 * 3660), "hours", 72.0,
          "How long after the clock's last confirmation (NTP, or the server's time) `when_unconfirmed` "
          "applies. Until confirmed the device is degraded.", live=True),
        K("when_unconfirmed", cs.choice(*POLICIES), "`open` / `closed`", "open",
          "`open`: accept, flagged degraded; `closed`: reject with reason `clock_unconfirmed`.", live=True),
        K("max_offset_s", cs.number(0.1, 86400), "seconds", 10.0,
          "The server's time confirms the clock only if the two differ by at most this.", live=True),
        K("persist_interval_s", cs.number(5, 3600), "seconds", 60.0,
          "How often the last time seen is saved (the clock is never allowed to go back before it)."),
    ), doc="A Raspberry Pi has no battery clock (docs/configuration.md#clock)."),
    Section("log", (
        K("db", cs.optional(cs.path()), "path", None, "The entry log (default STATE/entries.db)."),
        K("synchronous", cs.choice("FULL", "NORMAL"), "`FULL` / `NORMAL`", "FULL",
          "SQLite durability (docs/entry-log.md#durability)."),
        K("holder_details", cs.choice("sealed", "none"), "`sealed` / `none`", "sealed",
          "Store the holder's details sealed to the server's key, or not at all."),
        K("passback_window_s", cs.number(0, 86400), "seconds", 120.0,
          "The same card admitted again in the same direction within this time is a `duplicate` (0: off).",
          live=True),
        K("retention_days", cs.integer(0, 3650), "days", 21, "Synced entries older than this are purged.",
          live=True),
        K("min_free_mb", cs.integer(1, 1_000_000), "MiB", 100, "Free disk below this raises a health warning.",
          live=True),
        K("purge_interval_h", cs.number(0.1, 168), "hours", 6.0, "How often retention runs."),
    ), doc="The entry log (docs/entry-log.md)."),
    Section("sync", (
        K("enabled", cs.boolean(), "boolean", True,
          "Deliver entries to the central server and take trust updates (docs/sync-protocol.md)."),
        K("server", cs.optional(cs.url()), "URL", None,
          "The central server for `checkpoint provision` when `--server` is not given (https; plain "
          "http only to 127.0.0.1).", fix=text("config.fix_https")),
        K("ca_file", cs.optional(cs.path(must_exist=True)), "path", None,
          "CA certificate(s) for a server with a private CA (used at provisioning).",
          fix=text("config.fix_pem")),
        K("interval_s", cs.number(1, 86400), "seconds", 30.0, "Idle time between contacts with the server."),
        K("upload_delay_s", cs.number(0, 600), "seconds", 2.0,
          "After a scan, wait this long for more before uploading, so a stream of scans makes one upload, "
          "not one each (50 new entries upload at once). A single scan reaches the server about this long after it."),
        K("trust_interval_s", cs.number(10, 7 * 86400), "seconds", 3600.0,
          "How often to ask for a newer trust bundle."),
        K("builder", cs.choice("process", "inline"), "`process` / `inline`", "process",
          "Build batches in a separate low-priority process (keeps the scan loop smooth; it exits with the daemon "
          "however the daemon ends) or in the sync thread (`inline`: no second process, about 20 MB less, but "
          "scans wait longer while a large backlog uploads: the scan lane's stall goal is missed, "
          "docs/benchmarks.md#sync)."),
        K("connect_timeout_s", cs.number(0.5, 120), "seconds", 5.0, "HTTP connect timeout."),
        K("read_timeout_s", cs.number(1, 600), "seconds", 30.0, "HTTP read timeout."),
        K("backlog_max", cs.integer(1, 100_000_000), "entries", 5000,
          "More unsynced entries than this makes the device degraded.", live=True),
        K("backlog_max_age_h", cs.number(0.1, 24 * 3660), "hours", 24.0,
          "An unsynced entry older than this makes the device degraded.", live=True),
    ), doc="The central server."),
    Section("api", (
        K("enabled", cs.boolean(), "boolean", True, "Serve the local HTTP API (kiosk, status page)."),
        K("listen", cs.listen_address(allow_port_zero=True), "HOST:PORT", DEFAULT_LISTEN,
          "Where the API listens. Anything but a loopback address needs a token.",
          fix=text("config.fix_hostport", example="\"127.0.0.1:8080\"")),
        K("token", cs.optional(cs.string(min_len=16, max_len=200)), "text", None,
          "Bearer token for clients that are not on this machine (prefer `token_file`)."),
        K("token_file", cs.optional(cs.path(must_exist=True)), "path", None,
          "A file holding the token (first line), readable by the service only.",
          fix=text("config.fix_service_file")),
        K("display_s", cs.number(1, 60), "seconds", 5.0,
          "The holder's name and birth year stay on the kiosk (and in memory) this long.", live=True),
        K("max_clients", cs.integer(1, 256), "integer", 16, "Event-stream clients at once, at most."),
    ), doc="The local HTTP API (docs/configuration.md#local-http-api)."),
    Section("kiosk", (
        K("enabled", cs.boolean(), "boolean", True,
          "Serve the kiosk screen at `/` and the technician status page at `/status` (on the API's address)."),
        K("lang", cs.choice(*LANGS), "`vi` / `en`", "vi",
          "Language the pages start in (staff can switch on the screen).", live=True),
        K("occupancy", cs.boolean(), "boolean", False,
          "Show how many people are inside (admitted in minus out today): for venues with entry and exit.",
          live=True),
        K("preview", cs.boolean(), "boolean", True,
          "Offer a live camera preview with the detected code outlined (frames are encoded only while a "
          "screen watches)."),
        K("preview_fps", cs.number(0.2, 15), "frames/s", 3.0, "Preview frames per second, at most."),
        K("preview_width", cs.integer(80, 1280), "pixels", 320, "Preview frames are scaled down to this width."),
    ), doc="The kiosk screen and the status page in the browser (docs/configuration.md#kiosk-screen-and-status-page)."),
    Section("enroll", (
        K("qr", cs.boolean(), "boolean", True,
          "A device that is not provisioned enrolls itself when shown an enrollment QR (`CKENROLL:`), "
          "if it has a trust root."),
        K("trust_root", cs.optional(cs.path(must_exist=True)), "path", None,
          "The operator's Ed25519 root public key (from the installation media): it must have signed the "
          "server's credential and bundles. Without it (or STATE/trust-root.pem) no enrollment QR is accepted.",
          fix=text("config.fix_pem")),
    ), doc="Zero-touch enrollment (docs/provisioning.md#zero-touch-enrollment)."),
    Section("site", (
        K("site_id", cs.identifier(), "text", doc="The site this gate belongs to: the gates of one site share "
          "what they saw (its site credential must name it).", example="\"cho-dong-ba\""),
        K("secret_file", cs.path(must_exist=True), "path",
          doc="The site's shared secret (at least 16 bytes, the same file on every gate of the site, mode 0600): "
              "cards are shared only as a keyed hash of it, the site and the day.",
          fix=text("config.fix_site_secret"), example="\"/etc/checkpoint/site.secret\""),
        K("credential", cs.optional(cs.path(must_exist=True)), "path", None,
          "This gate's site credential, signed by the operator's root (`checkpoint issuer site-credential`); "
          "default STATE/site-credential.json.", fix=text("config.fix_file")),
        K("listen", cs.listen_address(allow_port_zero=True), "HOST:PORT", "0.0.0.0:7410",
          "The UDP address the gate talks to the others on: `0.0.0.0:7410` IPv4, `[::]:7410` IPv6 and IPv4 "
          "(mDNS over both), or one address of this gate.",
          fix=text("config.fix_hostport", example="\"0.0.0.0:7410\" / \"[::]:7410\"")),
        K("peers", cs.list_of(cs.listen_address()), "array of HOST:PORT", [],
          "Other gates' addresses, for a network where mDNS does not reach (the rest are found by mDNS).",
          fix=text("config.fix_hostport", example="\"192.168.1.21:7410\" / \"[fd00::21]:7410\"")),
        K("discovery", cs.boolean(), "boolean", True, "Find the site's other gates with mDNS/DNS-SD."),
        K("heartbeat_s", cs.number(0.05, 60), "seconds", 1.0,
          "How often the gate tells the others which of its entries it holds (lost ones are sent again)."),
        K("peer_timeout_s", cs.number(0.2, 3600), "seconds", 5.0,
          "A gate that has heard no other gate for this long is isolated (amber, `site_isolated`)."),
        K("max_skew_s", cs.number(0.5, 3600), "seconds", 5.0,
          "A message whose sender's clock is further off than this is refused (`site_clock_skew`)."),
        K("when_isolated", cs.choice(*POLICIES), "`open` / `closed`", "open",
          "What an isolated gate does with entries: `open` admits on its own view (flagged degraded); "
          "`closed` refuses entries with reason `site_isolated` (exits always pass).", live=True),
        K("capacity", cs.integer(0, 10_000_000), "people", 0,
          "The site's capacity: entries are refused with reason `site_full` while the site's occupancy is "
          "at it (0: no limit).", live=True),
    ), doc="Gates of one site that share what they saw, without a server (docs/site.md).", optional=True),
    Section("udev", (
        K("extra_readers", cs.list_of(cs.usb_id()), "array of \"vvvv:pppp\"", [],
          "USB readers to add to the built-in list for the udev rules (`checkpoint udev-rules`)."),
    ), doc="USB QR readers that get a stable name and the service's group (docs/provisioning.md#usb-readers)."),
    Section("feedback", (
        K("pin_factory", cs.optional(cs.choice("mock", "lgpio", "rpigpio", "pigpio", "native")), "text", None,
          "gpiozero pin factory (default: gpiozero's choice; `mock` simulates the pins)."),
        K("console", cs.boolean(), "boolean", False, "Also show the lights as a live line on stdout (the demo)."),
        K("alarm", cs.boolean(), "boolean", False,
          "Beep in the device-error state until staff acknowledge (button or kiosk)."),
    ), doc="LEDs, buzzer, gate relay, staff button, passage sensor (docs/wiring.md). A part is "
           "fitted when its table is present."),
    Section("feedback.timings", (
        K("verdict_s", cs.number(0.1, 30), "seconds", 1.5, "How long a verdict's light stays on."),
        K("beep_s", cs.number(0.01, 5), "seconds", 0.1, "One short beep."),
        K("beep_gap_s", cs.number(0.01, 5), "seconds", 0.1, "Silence between beeps."),
        K("fast_blink_s", cs.number(0.05, 5), "seconds", 0.15, "Device error blink."),
        K("slow_blink_s", cs.number(0.1, 10), "seconds", 1.0, "Degraded blink."),
        K("chirp_s", cs.number(0.01, 1), "seconds", 0.05, "Direction-change chirp."),
        K("accept_hz", cs.number(20, 20000), "Hz", 1760.0, "Accept beep (tonal buzzers)."),
        K("reject_hz", cs.number(20, 20000), "Hz", 440.0, "Reject beeps."),
        K("duplicate_hz", cs.number(20, 20000), "Hz", 880.0, "Duplicate beeps."),
        K("chirp_hz", cs.number(20, 20000), "Hz", 2640.0, "Direction chirp."),
        K("alarm_every_s", cs.number(1, 3600), "seconds", 10.0, "Error alarm period."),
    ), doc="Pattern timings (defaults: docs/wiring.md)."),
    _led("green"),
    _led("red"),
    _led("amber"),
    Section("feedback.rgb", (
        K("red", _pin(), "GPIO", example="17"), K("green", _pin(), "GPIO", example="27"),
        K("blue", _pin(), "GPIO", example="22"),
        K("active_high", cs.boolean(), "boolean", True, "true for common cathode, false for common anode."),
        K("pwm", cs.boolean(), "boolean", True, "Dim channels with PWM (amber as a mix)."),
        K("amber", _levels(), "3 numbers 0..1", [1.0, 0.4, 0.0], "The red, green, blue mix shown for amber."),
    ), doc="One RGB LED instead of three.", optional=True),
    Section("feedback.buzzer", (
        K("pin", _pin(), "GPIO", example="18"),
        K("active_high", cs.boolean(), "boolean", True, "Active buzzers: pin level that sounds it."),
        K("tonal", cs.boolean(), "boolean", False, "A passive buzzer driven with PWM tones."),
        K("mid_tone_hz", cs.number(20, 20000), "Hz", 1320.0, "Tonal buzzers: middle of the tone range."),
        K("octaves", cs.integer(1, 9), "integer", 2, "Tonal buzzers: octaves either side."),
    ), doc="The buzzer.", optional=True),
    Section("feedback.relay", (
        K("pin", _pin(), "GPIO", example="23"),
        K("active_high", cs.boolean(), "boolean", True, "false for the common active-low relay boards."),
        K("pulse_s", cs.number(0.05, 60), "seconds", 1.0, "How long the gate opens on an accept."),
        K("fail_safe", cs.choice("locked", "open"), "`locked` / `open`", "locked",
          "What the gate does when the program stops or the power fails (docs/wiring.md#gate-relay)."),
    ), doc="The gate or turnstile relay.", optional=True),
    Section("feedback.button", (
        K("pin", _pin(), "GPIO", example="24"),
        K("pull_up", cs.boolean(), "boolean", True, "Button to ground with the internal pull-up."),
        K("bounce_s", cs.number(0, 1), "seconds", 0.05, "Debounce time."),
        K("hold_s", cs.number(0.1, 30), "seconds", 2.0, "A press this long is a hold."),
        K("press", cs.optional(cs.choice("toggle_direction", "acknowledge")), "action", "toggle_direction",
          "What a short press does (\"\" for nothing)."),
        K("hold", cs.optional(cs.choice("toggle_direction", "acknowledge")), "action", "acknowledge",
          "What a hold does (\"\" for nothing)."),
    ), doc="The staff button.", optional=True),
    Section("feedback.passage", (
        K("pin", _pin(), "GPIO", example="25"),
        K("pull", cs.choice("up", "down", "none"), "`up` / `down` / `none`", "up",
          "Internal pull resistor; `none` for an external one (then set `active`)."),
        K("active", cs.choice("high", "low"), "`high` / `low`", "low",
          "With `pull = \"none\"`: the level that means somebody passed."),
        K("bounce_s", cs.number(0, 1), "seconds", 0.05, "Debounce time."),
        K("timeout_s", cs.number(0.5, 600), "seconds", 10.0,
          "After an accept, nobody passing within this time records \"granted, did not pass\"."),
    ), doc="Turnstile rotation sensor or door contact (needs a relay).", optional=True),
    Section("camera", (
        K("name", cs.optional(cs.identifier()), "text", None,
          "A short name for logs and health (default: the device)."),
        K("device", cs.string(min_len=1, max_len=500), "text",
          doc="V4L2 index (\"0\") or path (/dev/video0, /dev/v4l/by-id/...), \"picamera2\" or "
              "\"picamera2:N\", a stream URL, a video file, or a folder of images.", example="\"picamera2\""),
        K("backend", cs.choice(*CAMERA_BACKENDS), "`auto` / `opencv` / `picamera2` / `files`", "auto",
          "How to read it (auto: from `device`)."),
        K("width", cs.integer(16, 8192), "pixels", 640, "Frame width asked of the camera."),
        K("height", cs.integer(16, 8192), "pixels", 480, "Frame height asked of the camera."),
        K("fps", cs.optional(cs.number(0.1, 1000)), "frames/s", None, "Frame rate asked of the camera."),
        K("exposure", cs.optional(cs.number()), "number", None, "Manual exposure (OpenCV units; picamera2 µs)."),
        K("focus", cs.optional(cs.number()), "number", None, "Manual focus (OpenCV units; picamera2 dioptres)."),
        K("gain", cs.optional(cs.number(0, 1000)), "number", None, "Manual sensor gain (with a manual exposure)."),
        K("exposure_mode", cs.choice("auto", "short"), "`auto` / `short`", "auto",
          "`short`: short exposures and more gain, against motion blur (picamera2)."),
        K("detail_width", cs.optional(cs.integer(16, 8192)), "pixels", None,
          "picamera2: main stream width, cropped by the second pass (docs/decoding.md)."),
        K("detail_height", cs.optional(cs.integer(16, 8192)), "pixels", None, "picamera2: main stream height."),
        K("roi", cs.optional(_roi()), "4 numbers 0..1", None, "Region decoded: x, y, width, height fractions."),
        K("decoder", cs.optional(cs.choice(*DECODER_NAMES)), "text", None, "Decoder (default `[scan] decoder`)."),
        K("direction", _direction(), "`in` / `out`", None, "Direction of this camera's scans."),
        K("kind", cs.choice("auto", "live", "file"), "`auto` / `live` / `file`", "auto",
          "Whether `device` is a live camera (reopened when lost) or a file (ends)."),
        K("pace", cs.optional(cs.number(0.1, 1000)), "frames/s", None, "Play a file at this rate (simulated camera); the scan cooldown then counts in the file's time."),
        K("loop", cs.boolean(), "boolean", False, "Play a file again and again (simulated camera)."),
    ), doc="A camera (repeat the table for several).", array=True),
    Section("serial", (
        K("name", cs.optional(cs.identifier()), "text", None, "A short name (default: the port)."),
        K("port", cs.string(min_len=1, max_len=500), "path",
          doc="Best a /dev/serial/by-id/... or /dev/checkpoint/... path.",
          example="\"/dev/checkpoint/serial-1eab-1306\""),
        K("baud", cs.integer(50, 4_000_000), "integer", 9600, "Baud rate (CDC-ACM readers ignore it)."),
        K("terminator", _terminator(), "text", "auto", "Line end: auto, cr, lf, crlf, or literal text."),
        K("timeout_s", cs.number(0.01, 60), "seconds", 0.5, "A read without its terminator for this long is dropped."),
        K("direction", _direction(), "`in` / `out`", None, "Direction of this reader's scans."),
    ), doc="A serial / USB CDC-ACM reader (docs/readers.md).", array=True),
    Section("hid", (
        K("name", cs.optional(cs.identifier()), "text", None, "A short name (default: the device)."),
        K("device", cs.string(min_len=1, max_len=500), "text",
          doc="/dev/input/by-id/...-event-kbd, /dev/checkpoint/hid-..., or \"vendor:product\".",
          example="\"0c2e:0b61\""),
        K("layout", cs.choice(*LAYOUTS), "`us` / `uk` / `de` / `fr`", "us", "Keyboard layout the reader types for."),
        K("suffix", _terminator(), "text", "enter", "What ends a code: enter, tab, or literal text."),
        K("timeout_s", cs.number(0.01, 60), "seconds", 0.5, "A half-typed code is dropped after this long."),
        K("grab", cs.boolean(), "boolean", True, "Take the device exclusively (its keys never reach a console)."),
        K("direction", _direction(), "`in` / `out`", None, "Direction of this reader's scans."),
    ), doc="A USB keyboard-wedge reader (docs/readers.md).", array=True),
    Section("stdin", (
        K("name", cs.identifier(), "text", "stdin", "A short name."),
        K("path", cs.string(min_len=1, max_len=500), "path", "-",
          "\"-\" for standard input, or a file or named pipe with one code per line (ends with the file)."),
        K("direction", _direction(), "`in` / `out`", None, "Direction of these scans."),
    ), doc="Codes as text lines (scripts, tests).", array=True),
)

INTRO = """# Configuration

One TOML file, by default `/etc/checkpoint/checkpoint.toml` (`checkpoint run --config FILE`;
without that file the daemon runs on the defaults below). A file without any `[[camera]]`,
`[[hid]]`, `[[serial]]` or `[[stdin]]` table finds its inputs by itself, and keeps looking while
it runs: USB readers named by the udev rules (`/dev/checkpoint/hid-*`, `/dev/checkpoint/serial-*`,
docs/provisioning.md#usb-readers) and the first camera (`/dev/video0`).
Copy an example from `config/` (`kiosk.toml`: a kiosk with a Pi camera; `venue.toml`: one USB
reader; `gate.toml`: entry and exit readers and a relay) and check it:

```sh
checkpoint config check /etc/checkpoint/checkpoint.toml
```

Every problem is reported at once, one line each naming the key, the problem and the fix, and the
exit status is 2; nothing starts with a bad file. Unknown sections and keys are errors (a typo
never silently falls back to a default). Keys marked *live* take effect when the daemon reloads
(`systemctl reload checkpoint`, i.e. SIGHUP); the others need a restart. TOML has no null: an
empty string `""` means "not set" for optional keys.

This page is generated from the schema in `scanner/appliance/schema.py` (`checkpoint config docs`;
a test keeps it in sync); the degraded-mode policy, the clock and the API are described after the
tables. The same schema generates `scanner/appliance/settings.py` (`python -m
scanner.appliance.schema`): one typed class per section, which the code reads
(`config.scan.cooldown_s`, `config.camera[0].device`), so a misspelt key name is an error there
too, never a silent default.
"""

OUTRO = """## Degraded mode

Two things age on a device that is offline: its **trust bundle** (issuer keys and revocations)
and its **clock** (a Pi has no battery clock). Each has its own limit and its own policy:

| | degraded (amber slow blink) when | past the limit, `open` (default) | past the limit, `closed` |
|---|---|---|---|
| trust bundle | older than `[trust] max_age_h` (from its `issued_at`) or past its own `expires_at` | accept, flagged degraded | reject, reason `trust_expired` |
| clock | not confirmed since start (NTP, or the server's time in this boot) | accept, flagged degraded | reject, reason `clock_unconfirmed` (after `[clock] max_unconfirmed_h` since the last confirmation) |

Only accepted cards are affected (a forged card stays `bad_signature`). The default is to fail
open so that one late bundle never stops a whole fleet at once; a site that must never admit on
stale revocations sets `when_stale = "closed"`. Other degraded causes (no policy, amber only):
sync backlog over `[sync] backlog_max` entries or `backlog_max_age_h`, free disk below
`[log] min_free_mb`. The device **error** state (amber fast blink) is for an input that is down or
an entry log that cannot write; a scan whose entry cannot be committed is never shown as admitted.

## Clock

The daemon never uses a time earlier than the last one it has seen: that time is saved in
`STATE/clock.json` every `persist_interval_s` and at shutdown, and after a restart (or if the
clock steps back) time continues from it. The clock counts as confirmed while the kernel says NTP
has synchronised it, or when the server's time (every sync contact) is within `max_offset_s`.
Entries record `clock = "synced"` only while it is confirmed.

A server answer confirms the clock only in the boot it came in. `sync-state.json` keeps it with
the kernel's boot id (`/proc/sys/kernel/random/boot_id`, new at every boot) and the time since
boot (`CLOCK_BOOTTIME`, which nobody can set). After a reboot the clock stays unconfirmed, however
good the last answer was, until the server answers again or NTP synchronises it: a Pi without a
battery clock starts at the last time saved, or in 1970. A daemon restarted within the same boot
(a crash, `systemctl restart`, a new configuration) takes the last answer again, if the wall clock
has not been stepped since: the answer's offset less the step (the wall clock's elapsed time minus
the boot clock's) must still be within `max_offset_s`. It then counts as confirmed as of the
answer's time, so `max_unconfirmed_h` runs from then, as if the daemon had not restarted. An
answer recorded without a boot (by an older version) is not reused.

## Local HTTP API

Bound to `127.0.0.1:8080` by default (`[api] listen`). Listening on any other address requires a
token (`Authorization: Bearer TOKEN`, or `?token=` for an event stream); requests from this
machine need none. Requests with a foreign `Host` header (DNS rebinding) and cross-site `POST`s are
refused. No endpoint returns anything from the entry log but counts.

| endpoint | what |
|---|---|
| `GET /api/v1/health` | `{"state": "ok"/"degraded"/"error", "problems": [...], "degraded": [...], "mode", "readiness": {"ready", "code", "detail", "message": {"vi", "en"}}}` ([readiness](provisioning.md#device-readiness)) |
| `GET /api/v1/status` | device, direction, today's counts and occupancy, inputs, sync, trust, clock, the site (its occupancy, peers, their last message and clock skew), config summary (no secrets), recent errors |
| `GET /api/v1/doctor` | the `checkpoint doctor` checks as JSON |
| `GET /api/v1/events` | server-sent events: `verdict`, `clear`, `partial`, `state`, `direction`, `silence`, `error`, `enrolling`, `enrolled`, `site` (a gate of a site: its occupancy, isolation, gates heard), `aim` (`{"source_id", "action": "closer"/"further"/"hold_still"/null, "reason"}`: a camera sees a code it cannot read) |
| `POST /api/v1/direction` | `{"direction": "in"/"out"}` sets it, an empty object toggles it |
| `POST /api/v1/silence` | acknowledge the alarm |
| `GET /` and `GET /status` | the kiosk screen and the technician status page (below) |
| `GET /api/v1/kiosk` | what the kiosk page needs: language, occupancy shown, display time, cameras with a preview |
| `GET /api/v1/texts` | the pages' texts in Vietnamese and English, from `scanner/base/translations.toml` |
| `GET /api/v1/preview/CAMERA` | the camera's live preview as Motion-JPEG, the codes it sees outlined |
| `GET /static/FILE` | the pages' CSS and JavaScript (public code: no token needed) |
| `/sync/v1/pull/...` | server pull for sites the server can reach but that cannot reach it ([sync-protocol.md](sync-protocol.md#server-pull)); authenticated by the server's pull key, not by the token above |

A `verdict` event carries the holder's name and birth year (only while `display_s` lasts; they
exist in memory only, never read from the entry log), the decision, the stable reason code, the
format, direction, source and any degraded flags, for an entry refused as `already_inside` where
and when the card entered (`inside`: gate and time, [site.md](site.md#admission)), and `published_ms` (the daemon's wall clock
when it was sent: the kiosk's paint latency is measured against it). After `display_s` a `clear`
event follows and the name is forgotten.

## Kiosk screen and status page

The daemon serves two pages on the API's address (`[kiosk] enabled`); the kiosk unit's Chromium
shows the first full screen (`systemd/checkpoint-kiosk.service` opens `http://127.0.0.1:8080/`).
From another machine add the token: `http://DEVICE:8080/?token=TOKEN` (it is passed on to every
call the page makes, and stored nowhere).

- **`/`, the kiosk screen**, made for the 800x480 Raspberry Pi touchscreen (and usable on a
  phone). The verdict of the card just read fills the screen as a colour field, a symbol and a
  word, so that staff who cannot tell red from green read it as fast: green, a circle with a
  check and CHẤP NHẬN; red, an octagon with a cross and TỪ CHỐI; a striped field with a warning
  triangle and LỖI THIẾT BỊ when the entry could not be logged (do not admit); an amber-striped
  field, the triangle and CHƯA SẴN SÀNG with the reason when the device cannot check cards at
  all ([not ready](provisioning.md#device-readiness): no trust list, no trust root), and then no
  card ever gets a verdict there. Under it the
  holder's name and birth year (from the live `verdict` event only, removed with the `clear`
  event after `[api] display_s`), the reason in plain words, and an amber strip naming why the
  device is degraded, if it is. While a camera sees a code it cannot read (its finder patterns
  found, no text for three frames), the idle screen's prompt becomes what would help: *Đưa mã lại
  gần camera hơn* (modules under 2 pixels), *Đưa mã ra xa camera hơn* (too defocused for a
  fixed-focus camera, or running out of the frame), *Giữ yên mã trước camera* (a motion streak);
  the `aim` event carries it, repeated every 2 s while it holds, withdrawn once the code is read
  or gone ([decoding.md](decoding.md#what-a-fixed-focus-camera-sees-and-the-stream)). At the side:
  the camera preview with the code it sees outlined
  (Motion-JPEG at `preview_fps`, scaled to `preview_width`; frames are scaled and encoded only
  while a screen watches), today's admitted and rejected counts and, with `occupancy = true`, how
  many are inside; the direction, which staff switch by tapping it; *Tắt báo động* (silence the
  alarm) while the device is in its error state. Along the top, health badges: camera, reader,
  sync backlog, trust bundle age, clock (each with a colour and a ✓ / ! / ✗ mark). Vietnamese by
  default (`lang`), English by the button at the top right (or `?lang=en`). Updates arrive over
  the event stream as they happen; when the daemon restarts the page shows that it lost the
  connection (and clears any verdict) and reconnects by itself.
- **`/status`, the technician status page**: the device's state and why, every `checkpoint
  doctor` check with its fix, today's counts, the inputs, sync, trust and clock state, the software
  versions, the configuration summary (no secrets, no file contents) and the last warnings and
  errors (escaped). The same data as JSON: `GET /api/v1/status` and `GET /api/v1/doctor`.

No page shows anything from the entry log but counts, and nothing personal is stored by the
browser. The pages are plain HTML, CSS and JavaScript in `scanner/appliance/web/` (no build step, nothing
loaded from elsewhere: their Content-Security-Policy allows only this device); every word they
show is in `scanner/base/translations.toml`. Screenshots (the kiosk at 800x480: accept, reject, duplicate,
degraded, a long name with the "limited operation" strip, error, not ready, enrolling, a hint to move the card; on a phone; the status page): [docs/screenshots](screenshots/), taken by the browser tests
(`tests/test_kiosk_browser.py`, in a real headless Chromium); to take them again:
`CHECKPOINT_SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_kiosk_browser.py`.
"""


def markdown() -> str:
    """docs/configuration.md (written from the schema; tests/test_config.py keeps the file in sync)."""
    return cs.markdown(SECTIONS, INTRO) + "\n" + OUTRO


SETTINGS_DOC = """The configuration's sections as typed values. Generated from scanner/appliance/schema.py by
`python -m scanner.appliance.schema > scanner/appliance/settings.py`: do not edit (tests/test_config.py
keeps it in sync). Read them through `scanner.appliance.config.Config` (``config.scan.cooldown_s``)."""


def settings_source() -> str:
    """scanner/appliance/settings.py, written from the schema."""
    return cs.python_source(SECTIONS, SETTINGS_DOC)


if __name__ == "__main__":
    print(settings_source(), end="")
