"""What the appliance's threads share about the device: its identity and entry log once it has one
(`Core`), the trust and the server credential in use, the degraded-mode policy, and this run's
counts. The verdict lane, the supervisor and the status adapters read them here; one lock guards
the values that change together (a trust reload swaps the store and its age at once).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from scanner.appliance import readiness, runtime
from scanner.base.errors import CheckpointError
from scanner.base.safetext import escape
from scanner.cards.trust import TrustStore, load_device_trust
from scanner.store import admission
from scanner.store.entrylog import EntryLog
from sync import credential
from sync.agent import SyncAgent
from sync.site.node import SiteNode
from sync.wire.credential import ServerCredential

log = logging.getLogger(__name__)

MODES = ("provisioned", "standalone", "unprovisioned")


@dataclasses.dataclass
class Core:
    """The parts that need the device's identity: the entry log, and sync when there is a server."""

    device_id: str
    checkpoint_id: str
    mode: str
    log: EntryLog
    retry_stop: threading.Event
    retry_thread: threading.Thread
    agent: SyncAgent | None = None
    sync_log: EntryLog | None = None
    sync_stop: threading.Event | None = None
    sync_thread: threading.Thread | None = None
    site: SiteNode | None = None  # a gate of a site: the site's shared view (sync/site)


class Device:
    """The shared state (see the module docstring). ``core`` is None until the device has an
    identity (provisioned, or standalone); ``mode`` says which (MODES)."""

    def __init__(self, state_dir: Path, policy: admission.Policy, *, root_pinned: bool) -> None:
        self.state_dir = state_dir
        self.lock = threading.Lock()
        self.policy = policy  # replaced as a whole when a reload changes it
        self.core: Core | None = None
        self.mode = "unprovisioned"
        self.root_pinned = root_pinned  # a root to check an enrollment server with (again after enrollment)
        self.trust = TrustStore()
        self.trust_age = admission.TrustAge()
        self.trust_error: str | None = None  # why the trust could not be loaded (English, for engineers)
        self.trust_error_code: str | None = None  # its stable code
        self.credential: ServerCredential | None = None  # the root-signed server identity in use
        self.credential_error: str | None = None
        self.counts: Counter[str] = Counter()  # verdict reasons and the outcomes without one, this run
        self.logged = 0
        self.write_problem: str | None = None  # why the last entry could not be committed, until the log recovers

    # ------------------------------------------------------------ reading

    def readiness(self) -> readiness.Readiness:
        """Can this device check cards now (scanner/appliance/readiness.py: the one answer every surface shows)."""
        with self.lock:
            trust, error = self.trust, self.trust_error
        return readiness.assess(readiness.Facts(self.mode, self.root_pinned, trust.key_count, error))

    def trust_in_use(self) -> tuple[TrustStore, admission.TrustAge]:
        with self.lock:
            return self.trust, self.trust_age

    def count(self, outcome: str, *, logged: bool = False) -> None:
        with self.lock:
            self.counts[outcome] += 1
            self.logged += logged

    def counts_now(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)

    # ------------------------------------------------------------ trust and credential (from the state directory)

    def reload_trust(self, roots: Sequence[Path], files: Sequence[Path], *, initial: bool = False) -> bool:
        """Load the installed bundle and the configured key files; swap them in atomically. On any
        failure the trust in use stays (and the error is kept for the health check)."""
        try:
            store = load_device_trust(self.state_dir, roots, files)
        except (CheckpointError, OSError) as exc:
            code = getattr(exc, "code", "unreadable")
            self.trust_error, self.trust_error_code = f"{code}: {exc}", code
            log.error("trust: %s; %s", escape(str(exc)), "no trust loaded" if initial else "keeping the trust in use")
            return False
        for note in store.notes:
            log.warning("trust: %s", escape(note))
        newest = max(store.bundles, key=lambda b: b.version) if store.bundles else None
        age = (admission.TrustAge(newest.issued_at, newest.expires_at, newest.version) if newest
               else admission.TrustAge())
        with self.lock:
            self.trust, self.trust_age, self.trust_error, self.trust_error_code = store, age, None, None
        log.info("trust: %d keys, bundle %s, %d revoked cards", store.key_count,
                 f"v{age.version}" if age.version is not None else "none", len(store.revoked_cards))
        if not initial:
            runtime.freeze_survivors()  # the old store goes, the new one joins the frozen objects
        return True

    def load_credential(self):
        """The sealing key of the server credential, verified again against the pinned root and this
        device's server; None (holder details are then not stored) when there is no valid one."""
        try:
            cred = credential.load(self.state_dir)
        except CheckpointError as exc:  # CredentialError, or StateError for an unreadable device.json
            with self.lock:
                self.credential, self.credential_error = None, exc.code
            log.error("server credential: %s; holder details are not stored until a valid one is installed",
                      escape(str(exc)))
            return None
        with self.lock:
            self.credential, self.credential_error = cred, None
        log.info("server credential: %s (serial %d), sealing key %s", escape(cred.server_id), cred.serial,
                 cred.sealing_key_id())
        return cred.sealing_key

    def reload_credential(self) -> None:
        """After a trust update: a new credential (verified when installed) brings its sealing key."""
        core = self.core
        if core is None or core.mode != "provisioned":
            return
        before = self.credential
        key = self.load_credential()
        if key is None and before is not None:  # changed on disk, not by the agent (it installs only verified ones)
            with self.lock:
                self.credential = before
            log.error("server credential: keeping the one verified before (serial %d)", before.serial)
        elif key is not None and (before is None or self.credential is None or before.data != self.credential.data):
            core.log.set_sealing_key(key)
