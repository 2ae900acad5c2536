"""Where the device keeps its state: one default for the appliance's config, the entry log and sync."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STATE_DIR = "/var/lib/checkpoint"
STATE_DIR_ENV = "CHECKPOINT_STATE_DIR"


def default_state_dir() -> Path:
    """$CHECKPOINT_STATE_DIR, else /var/lib/checkpoint (what the commands use without a config)."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)
