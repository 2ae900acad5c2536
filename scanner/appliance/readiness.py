"""Can this device check cards now, and if not, why: one answer for every surface (the health API
and the kiosk, the status page, `checkpoint doctor`, `checkpoint log stats`), all computed by
`assess` from a few facts. The daemon gives it the facts it holds in memory; a command run beside
it (`facts`) reads them from the config and the state directory. Texts: [readiness] in
translations.toml; docs/provisioning.md#device-readiness.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scanner.appliance.config import Config
from scanner.base import i18n
from scanner.base.errors import CheckpointError
from scanner.cards.trust import load_device_trust
from sync.state import DeviceConfig, StateError
from sync.trustupdate import ROOT_NAME

READY = "ready"
NOT_PROVISIONED = "not_provisioned"  # waiting for an enrollment QR; it has a root to check the server with
NO_TRUST_ROOT = "no_trust_root"  # not provisioned and no root pinned: an enrollment QR is refused
NO_TRUST = "no_trust"  # no issuer key to check a card with (no bundle yet, or every one refused)
CODES = (READY, NOT_PROVISIONED, NO_TRUST_ROOT, NO_TRUST)

def fix_text(code: str) -> i18n.Text | str:
    """What a technician does about ``code`` ([readiness_fix] in the catalogue; none when ready)."""
    return i18n.text(f"readiness_fix.{code}") if code in (NOT_PROVISIONED, NO_TRUST_ROOT, NO_TRUST) else ""


@dataclass(frozen=True, slots=True)
class Facts:
    """What readiness depends on."""

    mode: str  # provisioned | standalone | unprovisioned (scanner.appliance.device.MODES)
    root_pinned: bool  # a root to check an enrollment server with: [enroll] trust_root or STATE/trust-root.pem
    trust_keys: int  # issuer keys in use
    trust_error: str | None = None  # why the trust could not be loaded, if it could not


@dataclass(frozen=True, slots=True)
class Readiness:
    code: str
    detail: str = ""  # technical, English (for logs and doctor)

    @property
    def ready(self) -> bool:
        return self.code == READY

    def message(self, lang: str | None = None) -> str:
        return i18n.t(f"readiness.{self.code}", lang)

    def fix(self, lang: str | None = None) -> str:
        return i18n.render(fix_text(self.code), lang)

    def to_dict(self) -> dict:
        return {"ready": self.ready, "code": self.code, "detail": self.detail,
                "message": {lang: self.message(lang) for lang in i18n.LANGS}}


def assess(f: Facts) -> Readiness:
    """The device's readiness from its facts (pure)."""
    if f.mode == "unprovisioned":
        if f.root_pinned:
            return Readiness(NOT_PROVISIONED, "waiting for an enrollment QR")
        return Readiness(NO_TRUST_ROOT, "not provisioned and no trust root pinned: enrollment QR codes are refused")
    if f.trust_keys == 0:
        return Readiness(NO_TRUST, f.trust_error or ("no trust bundle installed yet" if f.mode == "provisioned"
                                                     else "no issuer keys in [trust] files"))
    return Readiness(READY, f"{f.trust_keys} issuer keys")


def root_pinned(config: Config) -> bool:
    """Whether the device has a root to check an enrollment server with."""
    return bool(config.enroll.trust_root) or (Path(config.state_dir) / ROOT_NAME).exists()


def facts(config: Config) -> Facts:
    """The facts as the config and the state directory give them (outside the daemon)."""
    try:
        DeviceConfig.load(config.state_dir)
        mode = "provisioned"
    except StateError:
        mode = "standalone" if not config.sync.enabled and config.device.checkpoint_id else "unprovisioned"
    keys, error = 0, None
    if mode != "unprovisioned":
        try:
            keys = load_device_trust(config.state_dir, config.trust.roots, config.trust.files).key_count
        except (CheckpointError, OSError) as exc:
            error = f"{getattr(exc, 'code', 'unreadable')}: {exc}"
    return Facts(mode, root_pinned(config), keys, error)


def of_config(config: Config) -> Readiness:
    return assess(facts(config))
