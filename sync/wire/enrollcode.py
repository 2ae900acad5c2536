"""Enrollment QR codes for zero-touch provisioning: the server's URL and a one-time token as QR text.
The server makes them (sync/server/enrollcodes.py), a device reads them.

``CKENROLL:`` followed by URL-encoded fields: ``v=1``, ``s`` the server URL (https; plain http
only to a loopback address), ``t`` a one-time enrollment token, and optionally ``r`` the SHA-256
(hex) of the trust root's public key (SubjectPublicKeyInfo DER), which must be the device's own.
A device that is not provisioned, has a pinned root and reads such a code through its camera or
reader enrolls itself (the appliance's daemon) with the server, if the root vouches for it
(sync/credential.py). docs/provisioning.md#zero-touch-enrollment.
"""
from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

from cryptography.hazmat.primitives import serialization

from scanner.base.errors import CheckpointError
from sync.wire.http import is_loopback

PREFIX = "CKENROLL:"
VERSION = "1"
MAX_TEXT = 1024
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-_")
_HEX = frozenset("0123456789abcdef")


class EnrollCodeError(CheckpointError):
    """An enrollment QR that cannot be used (malformed, unsupported version, insecure server URL)."""

    code = "enroll_code"


@dataclass(frozen=True, slots=True)
class EnrollCode:
    server: str
    token: str
    root_sha256: str | None = None

    def text(self) -> str:
        """The QR text for this code."""
        fields = {"v": VERSION, "s": self.server, "t": self.token}
        if self.root_sha256:
            fields["r"] = self.root_sha256
        return PREFIX + urlencode(fields)


def is_enroll_text(text: str) -> bool:
    return text.startswith(PREFIX)


def parse(text: str) -> EnrollCode:
    """The enrollment code in QR ``text``; EnrollCodeError if it is not a usable one."""
    if not is_enroll_text(text):
        raise EnrollCodeError("not an enrollment code")
    if len(text) > MAX_TEXT:
        raise EnrollCodeError("enrollment code too long")
    try:
        fields = parse_qs(text[len(PREFIX):], strict_parsing=True, max_num_fields=8)
    except ValueError:
        raise EnrollCodeError("enrollment code is not v=1&s=...&t=...") from None
    if any(len(v) != 1 for v in fields.values()) or set(fields) - {"v", "s", "t", "r"}:
        raise EnrollCodeError("enrollment code has repeated or unknown fields")
    one = {k: v[0] for k, v in fields.items()}
    if one.get("v") != VERSION:
        raise EnrollCodeError(f"enrollment code version {one.get('v')!r} is not supported")
    server = check_server(one.get("s", ""))
    token = one.get("t", "")
    if not 8 <= len(token) <= 200 or not set(token) <= _TOKEN_CHARS:
        raise EnrollCodeError("enrollment code has no usable token")
    root = one.get("r")
    if root is not None and (len(root) != 64 or not set(root) <= _HEX):
        raise EnrollCodeError("enrollment code root fingerprint is not 64 lowercase hex digits")
    return EnrollCode(server, token, root)


def check_server(url: str) -> str:
    """The server URL of a code without a trailing slash; EnrollCodeError unless https (or plain
    http to a loopback address)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise EnrollCodeError("enrollment code server is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise EnrollCodeError("enrollment code server is not https")
    return url.rstrip("/")


def root_fingerprint(public_key) -> str:
    """SHA-256 (hex) of a public key's SubjectPublicKeyInfo DER: what ``r`` pins."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()
