"""Where things are: the repository under test and the real-world samples beside it."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
TESTDATA = ROOT.parent / "shared" / "testdata"  # QR photos, DCC and SHC test vectors (../shared/testdata)
