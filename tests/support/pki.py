"""Keys of the test session: the operator's trust root, and an issuer's key pair on disk with the
cards it signs."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.cards import issuer, keys
from scanner.cards.verdict import Holder

# The operator's trust root of the test session (conftest's ``root_key``): it signs the bundles and
# vouches for the test servers (their credentials); devices are provisioned with its public half.
OPERATOR_ROOT = ed25519.Ed25519PrivateKey.generate()

NAME = "Nguyễn Thị Hương"  # the holder on the appliance tests' cards


@dataclass
class Pki:
    dir: Path
    key: object
    pub: Path

    def card(self, *, name: str = NAME, birth: str = "1987-06-05", days: int = 365, expired: bool = False,
             card_id: bytes | None = None) -> str:
        now = int(time.time())
        issued, exp = (now - 400 * 86400, now - 30 * 86400) if expired else (now - 86400, now + days * 86400)
        kw = {} if card_id is None else {"card_id": card_id}
        return issuer.issue(issuer.CardSpec("VN-HUE", Holder(name, birth), issued, exp, **kw), self.key)


def make_pki(directory: Path, name: str = "hue") -> Pki:
    """An EdDSA issuer key in ``directory`` (NAME.key, NAME.pub): the trust of a standalone device."""
    directory.mkdir(parents=True, exist_ok=True)
    key = keys.generate("EdDSA")
    keys.write_private_key(directory / f"{name}.key", key)
    pub = directory / f"{name}.pub"
    pub.write_bytes(keys.public_pem(key.public_key()))
    return Pki(directory, key, pub)
