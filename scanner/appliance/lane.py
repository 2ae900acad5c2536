"""The verdict lane: what happens to each scan, on the pipeline's one worker thread.

    prepare → (can it be checked?) → verify → admit and record → show

`prepare` holds the parts of a multi-part SMART Health Card until all are read and gives one
`Prepared` card. A device that cannot give a verdict says why instead: not provisioned (an
enrollment QR goes to the enroller's own thread, so the lane never waits for a server; cards
read while it enrolls wait there for its end), or not ready (its fault, nothing logged).
`verify` is the pure verifier. `record` hands the verdict and the conditions it is judged under
to the entry log, which decides the admission (scanner/store/admission.py: degraded mode, then
anti-passback, then for a gate of a site the site's shared view) in the transaction that commits
the entry, before anything is shown: an entry that cannot be committed admits nobody; a
committed one goes to the site's other gates. `show` plays the final verdict, publishes it to the
kiosk and wakes sync.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from hardware.feedback import DeviceState, PatternFeedback
from scanner.appliance import readiness
from scanner.appliance.clockguard import ClockGuard
from scanner.appliance.device import Core, Device
from scanner.appliance.enroller import Enroller
from scanner.appliance.events import EventHub
from scanner.base import i18n
from scanner.base.safetext import escape
from scanner.cards.formats.shc import ChunkAssembler
from scanner.cards.scan import Scan
from scanner.cards.verdict import Verdict
from scanner.cards.verifier import verify_card
from scanner.store import admission
from scanner.store.entrylog import EntryLogError, EntryLogWriteError, RecordResult
from sync.wire import enrollcode

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Prepared:
    """A card ready for verification: the scan that completed it, and its text or, for a
    multi-part card, the text of every part in order."""

    scan: Scan
    texts: tuple[str, ...]


class Lane:
    """The lane (see the module docstring); ``handle`` is the pipeline's worker function."""

    def __init__(self, device: Device, *, feedback: PatternFeedback, hub: EventHub, guard: ClockGuard,
                 enroller: Enroller[Any], clock_skew_s: int, shc_hold_s: float) -> None:
        self.device = device
        self.feedback = feedback
        self.hub = hub
        self.guard = guard
        self.enroller = enroller
        self.clock_skew_s = clock_skew_s  # live: a reload sets it
        self.chunks = ChunkAssembler(shc_hold_s)

    def handle(self, scan: Scan) -> None:
        core = self.device.core
        if core is None:
            self.unprovisioned(scan)
            return
        prepared = self.prepare(scan)
        if prepared is None:  # one part of a multi-part card: held for the others
            return
        if not self.checkable(prepared.scan):
            return
        verdict = self.verify(prepared)
        recorded = self.record(core, prepared.scan, verdict)
        if recorded is not None:
            self.show(core, prepared.scan, recorded)

    # ------------------------------------------------------------ prepare

    def prepare(self, scan: Scan) -> Prepared | None:
        """The scan as one card; the parts of a multi-part SHC card are held until all are read."""
        progress = self.chunks.add(scan.text, scan.at)
        if progress is None:
            return Prepared(scan, (scan.text,))
        if not progress.complete:
            log.info("shc part source=%s:%s part=%d/%d missing=%s", scan.source, escape(scan.source_id),
                     progress.index, progress.total, ",".join(map(str, progress.missing)))
            self.hub.publish("partial", {"index": progress.index, "total": progress.total,
                                         "missing": list(progress.missing), "source": scan.source,
                                         "source_id": scan.source_id,
                                         "message": {lang: progress.message(lang) for lang in i18n.LANGS}})
            return None
        assert progress.parts is not None  # complete
        return Prepared(dataclasses.replace(scan, text="\n".join(progress.parts)), progress.parts)

    # ------------------------------------------------------------ can it be checked?

    def checkable(self, scan: Scan) -> bool:
        """Whether this provisioned device gives the scan a verdict; if not, it says why."""
        if enrollcode.is_enroll_text(scan.text):  # shown again to a device that is provisioned already
            log.info("enrollment QR from %s:%s ignored: already provisioned", scan.source, escape(scan.source_id))
            self.hub.publish("error", {"code": "already_provisioned", "source": scan.source,
                                       "source_id": scan.source_id})
            return False
        ready = self.device.readiness()
        if not ready.ready:  # no verdict at all: a card that could not be checked is not a rejected card
            self.not_ready(scan, ready)
            return False
        return True

    def unprovisioned(self, scan: Scan) -> None:
        """Not provisioned: only an enrollment QR does anything, on the enroller's thread."""
        ready = self.device.readiness()
        if ready.code == readiness.NO_TRUST_ROOT:  # nothing to check a server with: no QR is accepted
            self.not_ready(scan, ready)
            return
        if not enrollcode.is_enroll_text(scan.text):
            if self.enroller.hold(scan):  # checked once the enrollment running now has ended
                log.info("a scan from %s:%s waits for the enrollment", scan.source, escape(scan.source_id))
                return
            log.info("not provisioned: ignored a scan from %s:%s (waiting for an enrollment QR)", scan.source,
                     escape(scan.source_id))
            self.hub.publish("error", {"code": "not_provisioned", "source": scan.source,
                                       "source_id": scan.source_id})
            return
        try:
            code = enrollcode.parse(scan.text)
        except enrollcode.EnrollCodeError as exc:
            log.error("enrollment failed (%s): %s", exc.code, escape(str(exc)))
            self.hub.publish("error", {"code": exc.code, "source": scan.source, "source_id": scan.source_id})
            return
        if not self.enroller.submit(code, scan):
            log.info("enrollment QR from %s:%s ignored: enrolling already", scan.source, escape(scan.source_id))
            self.hub.publish("error", {"code": "enrolling", "source": scan.source, "source_id": scan.source_id})
            return
        log.info("enrollment QR read from %s:%s: enrolling with %s", scan.source, escape(scan.source_id),
                 escape(code.server))
        self.hub.publish("enrolling", {"server": code.server, "source": scan.source, "source_id": scan.source_id})

    def not_ready(self, scan: Scan, ready: readiness.Readiness) -> None:
        """A scan the device cannot check: its fault state, the reason on the screen, nothing logged."""
        self.feedback.set_state(DeviceState.ERROR)
        self.device.count("not_ready")
        self.hub.publish("error", {"code": "not_ready", "readiness": ready.to_dict(), "source": scan.source,
                                   "source_id": scan.source_id,
                                   "message": {lang: ready.message(lang) for lang in i18n.LANGS}})
        log.warning("not ready (%s): the scan from %s:%s was not checked", ready.code, scan.source,
                    escape(scan.source_id))

    # ------------------------------------------------------------ verify

    def verify(self, prepared: Prepared) -> Verdict:
        trust, _ = self.device.trust_in_use()
        return verify_card(prepared.texts, trust, self.guard.now(), clock_skew=self.clock_skew_s)

    # ------------------------------------------------------------ admit and record

    def record(self, core: Core, scan: Scan, verdict: Verdict) -> RecordResult | None:
        """Admit and record: the entry log decides the admission (scanner/store/admission.py: the
        degraded-mode policy under these conditions, then anti-passback) inside the transaction
        that commits the entry; None when it could not be committed (nobody is admitted)."""
        with self.device.lock:
            trust_age = self.device.trust_age
        now = self.guard.now()
        site = None
        if core.site is not None:  # a gate of a site: what the other gates saw is one more input
            site = core.site.site_for(verdict.card.card_id.hex() if verdict.card is not None else None, now)
        conditions = admission.Conditions(now, self.device.policy, trust_age, self.guard.status(), site)
        direction = scan.direction or self.feedback.direction
        try:
            result = core.log.record(scan, verdict, direction=direction, conditions=conditions)
        except EntryLogWriteError as exc:
            self.not_admitted(scan, exc.code, queued=exc.queued, entry_id=exc.entry_id)
            return None
        except EntryLogError as exc:
            self.not_admitted(scan, exc.code, queued=False, entry_id=None)
            return None
        if core.site is not None:
            core.site.note(result.entry)  # a queue put: the send happens on the site's own thread
        return result

    def not_admitted(self, scan: Scan, code: str, *, queued: bool, entry_id: str | None) -> None:
        """The entry could not be committed: error state, no verdict shown, nobody admitted."""
        self.device.write_problem = code
        self.feedback.set_state(DeviceState.ERROR)
        self.device.count("not_logged")
        self.hub.publish("error", {"code": code, "queued": queued, "source": scan.source,
                                   "source_id": scan.source_id, "message": {
                                       "vi": "Không ghi được nhật ký: không cho qua, gọi kỹ thuật viên",
                                       "en": "Cannot write the log: do not admit, call a technician"}})
        log.error("not admitted source=%s:%s: entry log %s (%s)", scan.source, escape(scan.source_id), code,
                  f"entry {entry_id} queued for retry" if queued else "entry NOT recorded")

    # ------------------------------------------------------------ show

    def show(self, core: Core, scan: Scan, recorded: RecordResult) -> None:
        """The committed verdict on the lights, the kiosk and the log; sync told there is more."""
        verdict, entry, flags = recorded.verdict, recorded.entry, recorded.flags
        self.device.write_problem = None
        self.feedback.show(verdict, entry.entry_id)
        self.publish_verdict(scan, recorded)
        self.device.count(str(verdict.reason), logged=True)
        log.info("verdict source=%s:%s decision=%s reason=%s format=%s direction=%s seq=%d entry=%s clock=%s%s",
                 scan.source, escape(scan.source_id), verdict.decision, verdict.reason, verdict.format or "-",
                 entry.direction, entry.seq, entry.entry_id, entry.clock,
                 f" degraded={','.join(flags)}" if flags else "")
        if core.agent is not None:
            core.agent.wake()

    def publish_verdict(self, scan: Scan, recorded: RecordResult) -> None:
        verdict = recorded.verdict
        card = verdict.card
        before = recorded.admission.previous
        self.hub.publish("verdict", {
            "decision": str(verdict.decision), "reason": str(verdict.reason), "shown": str(verdict.shown),
            "format": verdict.format,
            "cert_type": card.cert_type if card else None, "issuer": card.issuer if card else None,
            "expires_at": card.expires_at if card else None,
            "holder": {"name": card.holder.name, "birth_year": card.holder.birth_year} if card else None,
            "direction": recorded.entry.direction, "source": scan.source, "source_id": scan.source_id,
            "at": round(scan.at, 3), "seq": recorded.entry.seq, "degraded": list(recorded.flags),
            # already inside: where and when the card entered (a gate of a site)
            "inside": {"gate": inside.gate, "at_ms": inside.at_ms} if (inside := recorded.admission.inside) else None,
            # a duplicate: the admission it repeats (the kiosk says when and where the person was let in)
            "duplicate_of": {"at_ms": before.at_ms, "checkpoint_id": before.checkpoint_id,
                             "direction": before.direction} if before is not None else None,
            "display_s": self.hub.display_s,
            "published_ms": round(time.time() * 1000, 3),  # wall clock, for the kiosk's paint latency
        })
