"""Roles and what each may do: a pure table, checked by every route (docs/console.md#roles).

- administrator: devices, enrollment QRs, trust bundles and revocations, accounts, approving cases;
- tracer: tracing and contacts, with holder details once a case is opened, approving others' cases;
- officer (ward or venue): counts, occupancy and device health of their own checkpoints, no holders;
- auditor: the audit trail, read only.
"""
from __future__ import annotations

from scanner.base.errors import CheckpointError

ADMIN, TRACER, OFFICER, AUDITOR = "admin", "tracer", "officer", "auditor"
ROLES = (ADMIN, TRACER, OFFICER, AUDITOR)

# permissions
FLEET = "fleet"  # see devices (an officer: only those of their checkpoints)
FLEET_MANAGE = "fleet_manage"  # revoke devices, print enrollment QRs
TRUST = "trust"  # publish bundles (new keys, revoked cards)
ACCOUNTS = "accounts"
TRACE = "trace"  # find a card, its timeline and contacts (no holders)
HOLDERS = "holders"  # open a case: holder details, exports
APPROVE = "approve"  # approve another's case (the opener decides whose approval counts)
COUNTS = "counts"  # entries and occupancy per checkpoint
AUDIT = "audit"

GRANTS: dict[str, frozenset[str]] = {
    ADMIN: frozenset({FLEET, FLEET_MANAGE, TRUST, ACCOUNTS, COUNTS, APPROVE}),
    TRACER: frozenset({TRACE, HOLDERS, APPROVE}),
    OFFICER: frozenset({FLEET, COUNTS}),
    AUDITOR: frozenset({AUDIT}),
}
SCOPED = frozenset({OFFICER})  # roles that see only the checkpoints of their scope


class RoleError(CheckpointError):
    code = "role"


def check_role(role: str, scope: tuple[str, ...]) -> tuple[str, ...]:
    """The scope to store with ``role``: required (and kept) for an officer, empty for the others."""
    if role not in ROLES:
        raise RoleError(f"role must be one of {', '.join(ROLES)}, not {role[:40]!r}")
    cleaned = tuple(dict.fromkeys(s.strip() for s in scope if s.strip()))
    if role in SCOPED:
        if not cleaned:
            raise RoleError("an officer needs at least one checkpoint (--checkpoint)", code="role_scope")
        if any(len(s) > 100 or "\n" in s for s in cleaned):
            raise RoleError("a checkpoint id is one line of at most 100 characters", code="role_scope")
        return cleaned
    return ()


def allowed(role: str, permission: str) -> bool:
    return permission in GRANTS.get(role, frozenset())


def sees_checkpoint(role: str, scope: tuple[str, ...], checkpoint_id: str) -> bool:
    """Whether an account of ``role`` with ``scope`` may see what happens at ``checkpoint_id``."""
    return role not in SCOPED or checkpoint_id in scope
