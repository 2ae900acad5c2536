"""The configuration's sections as typed values. Generated from scanner/appliance/schema.py by
`python -m scanner.appliance.schema > scanner/appliance/settings.py`: do not edit (tests/test_config.py
keeps it in sync). Read them through `scanner.appliance.config.Config` (``config.scan.cooldown_s``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, slots=True)
class DeviceSection:
    """[device]: Who and where this device is."""

    # Device key, entry log, trust bundle and sync state (systemd's StateDirectory; mode 0700).
    state_dir: Path
    # Only for a device without a server (`[sync] enabled = false`): the checkpoint it serves. With
    # a server the checkpoint comes from enrollment.
    checkpoint_id: str | None
    # A label for the status page (e.g. "Cổng chợ Đông").
    name: str | None
    # Direction of inputs that have none of their own, until staff toggle it.
    direction: Literal["in", "out"]
    # Language of console lines.
    lang: Literal["vi", "en"]


@dataclass(frozen=True, slots=True)
class ScanSection:
    """[scan]: The scan pipeline (docs/readers.md, docs/decoding.md)."""

    # The same card from the same input within this time is one scan.
    cooldown_s: float
    # Tolerance for a card's expiry and not-before times.
    clock_skew_s: int
    # QR decoder for cameras that do not name one (docs/decoding.md).
    decoder: Literal["auto", "zxing", "pyzbar"]
    # Scans waiting for verification, at most.
    queue_size: int
    # The verdict lane's real-time (SCHED_FIFO) priority: a scan's thread takes a core at once from
    # normal threads (the sync, a kiosk browser) when it wakes. 0: a normal thread. Above the unit's
    # LimitRTPRIO= (10) it is refused and the lane runs as a normal thread (logged).
    lane_priority: int
    # Parts of a multi-part SMART Health Card are held this long for the next part.
    shc_hold_s: float


@dataclass(frozen=True, slots=True)
class TrustSection:
    """[trust]: What the verifier trusts, and how old that may get
    (docs/configuration.md#degraded-mode)."""

    # Extra issuer keys, certificates, JWKS files, SHC revocation lists or trust bundles. The bundle
    # sync installs (STATE/bundle.json) is always used.
    files: tuple[Path, ...]
    # Extra Ed25519 root public keys for bundles in `files` and for site credentials ([site])
    # (STATE/trust-root.pem is always used).
    roots: tuple[Path, ...]
    # A trust bundle older than this (or past its own expiry) makes the device degraded, and
    # `when_stale` decides what happens to accepted cards.
    max_age_h: float
    # `open`: accept, flagged degraded (amber); `closed`: reject with reason `trust_expired`.
    when_stale: Literal["open", "closed"]


@dataclass(frozen=True, slots=True)
class ClockSection:
    """[clock]: A Raspberry Pi has no battery clock (docs/configuration.md#clock)."""

    # How long after the clock's last confirmation (NTP, or the server's time) `when_unconfirmed`
    # applies. Until confirmed the device is degraded.
    max_unconfirmed_h: float
    # `open`: accept, flagged degraded; `closed`: reject with reason `clock_unconfirmed`.
    when_unconfirmed: Literal["open", "closed"]
    # The server's time confirms the clock only if the two differ by at most this.
    max_offset_s: float
    # How often the last time seen is saved (the clock is never allowed to go back before it).
    persist_interval_s: float


@dataclass(frozen=True, slots=True)
class LogSection:
    """[log]: The entry log (docs/entry-log.md)."""

    # The entry log (default STATE/entries.db).
    db: Path | None
    # SQLite durability (docs/entry-log.md#durability).
    synchronous: Literal["FULL", "NORMAL"]
    # Store the holder's details sealed to the server's key, or not at all.
    holder_details: Literal["sealed", "none"]
    # The same card admitted again in the same direction within this time is a `duplicate` (0: off).
    passback_window_s: float
    # Synced entries older than this are purged.
    retention_days: int
    # Free disk below this raises a health warning.
    min_free_mb: int
    # How often retention runs.
    purge_interval_h: float


@dataclass(frozen=True, slots=True)
class SyncSection:
    """[sync]: The central server."""

    # Deliver entries to the central server and take trust updates (docs/sync-protocol.md).
    enabled: bool
    # The central server for `checkpoint provision` when `--server` is not given (https; plain http
    # only to 127.0.0.1).
    server: str | None
    # CA certificate(s) for a server with a private CA (used at provisioning).
    ca_file: Path | None
    # Idle time between contacts with the server.
    interval_s: float
    # After a scan, wait this long for more before uploading, so a stream of scans makes one upload,
    # not one each (50 new entries upload at once). A single scan reaches the server about this long
    # after it.
    upload_delay_s: float
    # How often to ask for a newer trust bundle.
    trust_interval_s: float
    # Build batches in a separate low-priority process (keeps the scan loop smooth; it exits with
    # the daemon however the daemon ends) or in the sync thread (`inline`: no second process, about
    # 20 MB less, but scans wait longer while a large backlog uploads: the scan lane's stall goal is
    # missed, docs/benchmarks.md#sync).
    builder: Literal["process", "inline"]
    # HTTP connect timeout.
    connect_timeout_s: float
    # HTTP read timeout.
    read_timeout_s: float
    # More unsynced entries than this makes the device degraded.
    backlog_max: int
    # An unsynced entry older than this makes the device degraded.
    backlog_max_age_h: float


@dataclass(frozen=True, slots=True)
class ApiSection:
    """[api]: The local HTTP API (docs/configuration.md#local-http-api)."""

    # Serve the local HTTP API (kiosk, status page).
    enabled: bool
    # Where the API listens. Anything but a loopback address needs a token.
    listen: tuple[str, int]
    # Bearer token for clients that are not on this machine (prefer `token_file`).
    token: str | None
    # A file holding the token (first line), readable by the service only.
    token_file: Path | None
    # The holder's name and birth year stay on the kiosk (and in memory) this long.
    display_s: float
    # Event-stream clients at once, at most.
    max_clients: int


@dataclass(frozen=True, slots=True)
class KioskSection:
    """[kiosk]: The kiosk screen and the status page in the browser
    (docs/configuration.md#kiosk-screen-and-status-page)."""

    # Serve the kiosk screen at `/` and the technician status page at `/status` (on the API's
    # address).
    enabled: bool
    # Language the pages start in (staff can switch on the screen).
    lang: Literal["vi", "en"]
    # Show how many people are inside (admitted in minus out today): for venues with entry and exit.
    occupancy: bool
    # Offer a live camera preview with the detected code outlined (frames are encoded only while a
    # screen watches).
    preview: bool
    # Preview frames per second, at most.
    preview_fps: float
    # Preview frames are scaled down to this width.
    preview_width: int


@dataclass(frozen=True, slots=True)
class EnrollSection:
    """[enroll]: Zero-touch enrollment (docs/provisioning.md#zero-touch-enrollment)."""

    # A device that is not provisioned enrolls itself when shown an enrollment QR (`CKENROLL:`), if
    # it has a trust root.
    qr: bool
    # The operator's Ed25519 root public key (from the installation media): it must have signed the
    # server's credential and bundles. Without it (or STATE/trust-root.pem) no enrollment QR is
    # accepted.
    trust_root: Path | None


@dataclass(frozen=True, slots=True)
class SiteSection:
    """[site]: Gates of one site that share what they saw, without a server (docs/site.md)."""

    # The site this gate belongs to: the gates of one site share what they saw (its site credential
    # must name it).
    site_id: str
    # The site's shared secret (at least 16 bytes, the same file on every gate of the site, mode
    # 0600): cards are shared only as a keyed hash of it, the site and the day.
    secret_file: Path
    # This gate's site credential, signed by the operator's root (`checkpoint issuer
    # site-credential`); default STATE/site-credential.json.
    credential: Path | None
    # The UDP address the gate talks to the others on: `0.0.0.0:7410` IPv4, `[::]:7410` IPv6 and
    # IPv4 (mDNS over both), or one address of this gate.
    listen: tuple[str, int]
    # Other gates' addresses, for a network where mDNS does not reach (the rest are found by mDNS).
    peers: tuple[tuple[str, int], ...]
    # Find the site's other gates with mDNS/DNS-SD.
    discovery: bool
    # How often the gate tells the others which of its entries it holds (lost ones are sent again).
    heartbeat_s: float
    # A gate that has heard no other gate for this long is isolated (amber, `site_isolated`).
    peer_timeout_s: float
    # A message whose sender's clock is further off than this is refused (`site_clock_skew`).
    max_skew_s: float
    # What an isolated gate does with entries: `open` admits on its own view (flagged degraded);
    # `closed` refuses entries with reason `site_isolated` (exits always pass).
    when_isolated: Literal["open", "closed"]
    # The site's capacity: entries are refused with reason `site_full` while the site's occupancy is
    # at it (0: no limit).
    capacity: int


@dataclass(frozen=True, slots=True)
class UdevSection:
    """[udev]: USB QR readers that get a stable name and the service's group
    (docs/provisioning.md#usb-readers)."""

    # USB readers to add to the built-in list for the udev rules (`checkpoint udev-rules`).
    extra_readers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FeedbackSection:
    """[feedback]: LEDs, buzzer, gate relay, staff button, passage sensor (docs/wiring.md). A part is
    fitted when its table is present."""

    # gpiozero pin factory (default: gpiozero's choice; `mock` simulates the pins).
    pin_factory: Literal["mock", "lgpio", "rpigpio", "pigpio", "native"] | None
    # Also show the lights as a live line on stdout (the demo).
    console: bool
    # Beep in the device-error state until staff acknowledge (button or kiosk).
    alarm: bool
    timings: FeedbackTimingsSection
    green: FeedbackLedSection | None
    red: FeedbackLedSection | None
    amber: FeedbackLedSection | None
    rgb: FeedbackRgbSection | None
    buzzer: FeedbackBuzzerSection | None
    relay: FeedbackRelaySection | None
    button: FeedbackButtonSection | None
    passage: FeedbackPassageSection | None


@dataclass(frozen=True, slots=True)
class FeedbackTimingsSection:
    """[feedback.timings]: Pattern timings (defaults: docs/wiring.md)."""

    # How long a verdict's light stays on.
    verdict_s: float
    # One short beep.
    beep_s: float
    # Silence between beeps.
    beep_gap_s: float
    # Device error blink.
    fast_blink_s: float
    # Degraded blink.
    slow_blink_s: float
    # Direction-change chirp.
    chirp_s: float
    # Accept beep (tonal buzzers).
    accept_hz: float
    # Reject beeps.
    reject_hz: float
    # Duplicate beeps.
    duplicate_hz: float
    # Direction chirp.
    chirp_hz: float
    # Error alarm period.
    alarm_every_s: float


@dataclass(frozen=True, slots=True)
class FeedbackLedSection:
    """[feedback.green], [feedback.red], [feedback.amber]: One LED: green, red or amber
    (docs/wiring.md)."""

    # The LED's pin.
    pin: int | str
    # false when the LED is wired from 3V3 to the pin (lit when the pin is low).
    active_high: bool


@dataclass(frozen=True, slots=True)
class FeedbackRgbSection:
    """[feedback.rgb]: One RGB LED instead of three."""

    red: int | str
    green: int | str
    blue: int | str
    # true for common cathode, false for common anode.
    active_high: bool
    # Dim channels with PWM (amber as a mix).
    pwm: bool
    # The red, green, blue mix shown for amber.
    amber: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class FeedbackBuzzerSection:
    """[feedback.buzzer]: The buzzer."""

    pin: int | str
    # Active buzzers: pin level that sounds it.
    active_high: bool
    # A passive buzzer driven with PWM tones.
    tonal: bool
    # Tonal buzzers: middle of the tone range.
    mid_tone_hz: float
    # Tonal buzzers: octaves either side.
    octaves: int


@dataclass(frozen=True, slots=True)
class FeedbackRelaySection:
    """[feedback.relay]: The gate or turnstile relay."""

    pin: int | str
    # false for the common active-low relay boards.
    active_high: bool
    # How long the gate opens on an accept.
    pulse_s: float
    # What the gate does when the program stops or the power fails (docs/wiring.md#gate-relay).
    fail_safe: Literal["locked", "open"]


@dataclass(frozen=True, slots=True)
class FeedbackButtonSection:
    """[feedback.button]: The staff button."""

    pin: int | str
    # Button to ground with the internal pull-up.
    pull_up: bool
    # Debounce time.
    bounce_s: float
    # A press this long is a hold.
    hold_s: float
    # What a short press does ("" for nothing).
    press: Literal["toggle_direction", "acknowledge"] | None
    # What a hold does ("" for nothing).
    hold: Literal["toggle_direction", "acknowledge"] | None


@dataclass(frozen=True, slots=True)
class FeedbackPassageSection:
    """[feedback.passage]: Turnstile rotation sensor or door contact (needs a relay)."""

    pin: int | str
    # Internal pull resistor; `none` for an external one (then set `active`).
    pull: Literal["up", "down", "none"]
    # With `pull = "none"`: the level that means somebody passed.
    active: Literal["high", "low"]
    # Debounce time.
    bounce_s: float
    # After an accept, nobody passing within this time records "granted, did not pass".
    timeout_s: float


@dataclass(frozen=True, slots=True)
class CameraSection:
    """[[camera]]: A camera (repeat the table for several)."""

    # A short name for logs and health (default: the device).
    name: str | None
    # V4L2 index ("0") or path (/dev/video0, /dev/v4l/by-id/...), "picamera2" or "picamera2:N", a
    # stream URL, a video file, or a folder of images.
    device: str
    # How to read it (auto: from `device`).
    backend: Literal["auto", "opencv", "picamera2", "files"]
    # Frame width asked of the camera.
    width: int
    # Frame height asked of the camera.
    height: int
    # Frame rate asked of the camera.
    fps: float | None
    # Manual exposure (OpenCV units; picamera2 µs).
    exposure: float | None
    # Manual focus (OpenCV units; picamera2 dioptres).
    focus: float | None
    # Manual sensor gain (with a manual exposure).
    gain: float | None
    # `short`: short exposures and more gain, against motion blur (picamera2).
    exposure_mode: Literal["auto", "short"]
    # picamera2: main stream width, cropped by the second pass (docs/decoding.md).
    detail_width: int | None
    # picamera2: main stream height.
    detail_height: int | None
    # Region decoded: x, y, width, height fractions.
    roi: tuple[float, float, float, float] | None
    # Decoder (default `[scan] decoder`).
    decoder: Literal["auto", "zxing", "pyzbar"] | None
    # Direction of this camera's scans.
    direction: Literal["in", "out"] | None
    # Whether `device` is a live camera (reopened when lost) or a file (ends).
    kind: Literal["auto", "live", "file"]
    # Play a file at this rate (simulated camera); the scan cooldown then counts in the file's time.
    pace: float | None
    # Play a file again and again (simulated camera).
    loop: bool


@dataclass(frozen=True, slots=True)
class SerialSection:
    """[[serial]]: A serial / USB CDC-ACM reader (docs/readers.md)."""

    # A short name (default: the port).
    name: str | None
    # Best a /dev/serial/by-id/... or /dev/checkpoint/... path.
    port: str
    # Baud rate (CDC-ACM readers ignore it).
    baud: int
    # Line end: auto, cr, lf, crlf, or literal text.
    terminator: str
    # A read without its terminator for this long is dropped.
    timeout_s: float
    # Direction of this reader's scans.
    direction: Literal["in", "out"] | None


@dataclass(frozen=True, slots=True)
class HidSection:
    """[[hid]]: A USB keyboard-wedge reader (docs/readers.md)."""

    # A short name (default: the device).
    name: str | None
    # /dev/input/by-id/...-event-kbd, /dev/checkpoint/hid-..., or "vendor:product".
    device: str
    # Keyboard layout the reader types for.
    layout: Literal["us", "uk", "de", "fr"]
    # What ends a code: enter, tab, or literal text.
    suffix: str
    # A half-typed code is dropped after this long.
    timeout_s: float
    # Take the device exclusively (its keys never reach a console).
    grab: bool
    # Direction of this reader's scans.
    direction: Literal["in", "out"] | None


@dataclass(frozen=True, slots=True)
class StdinSection:
    """[[stdin]]: Codes as text lines (scripts, tests)."""

    # A short name.
    name: str
    # "-" for standard input, or a file or named pipe with one code per line (ends with the file).
    path: str
    # Direction of these scans.
    direction: Literal["in", "out"] | None


@dataclass(frozen=True, slots=True)
class Settings:
    """Every section of the configuration file."""

    device: DeviceSection
    scan: ScanSection
    trust: TrustSection
    clock: ClockSection
    log: LogSection
    sync: SyncSection
    api: ApiSection
    kiosk: KioskSection
    enroll: EnrollSection
    site: SiteSection | None
    udev: UdevSection
    feedback: FeedbackSection
    camera: tuple[CameraSection, ...]
    serial: tuple[SerialSection, ...]
    hid: tuple[HidSection, ...]
    stdin: tuple[StdinSection, ...]


TYPES: dict[str, type] = {
    "device": DeviceSection,
    "scan": ScanSection,
    "trust": TrustSection,
    "clock": ClockSection,
    "log": LogSection,
    "sync": SyncSection,
    "api": ApiSection,
    "kiosk": KioskSection,
    "enroll": EnrollSection,
    "site": SiteSection,
    "udev": UdevSection,
    "feedback": FeedbackSection,
    "feedback.timings": FeedbackTimingsSection,
    "feedback.green": FeedbackLedSection,
    "feedback.red": FeedbackLedSection,
    "feedback.amber": FeedbackLedSection,
    "feedback.rgb": FeedbackRgbSection,
    "feedback.buzzer": FeedbackBuzzerSection,
    "feedback.relay": FeedbackRelaySection,
    "feedback.button": FeedbackButtonSection,
    "feedback.passage": FeedbackPassageSection,
    "camera": CameraSection,
    "serial": SerialSection,
    "hid": HidSection,
    "stdin": StdinSection,
}
