"""Modules imported at their first use: a heavy optional dependency (OpenCV: about 16 MB) costs its
memory only in a process that uses it; a daemon with readers and no camera never does."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any


class _LazyModule(ModuleType):
    """Stands for a module until an attribute is first asked for; then imports it (once, under a
    lock: several threads may ask at the same moment, which Python 3.11's LazyLoader does not
    survive) and takes its attributes, so later look-ups cost what the module's own would."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_lock"] = threading.Lock()

    def __getattr__(self, attr: str) -> Any:
        with self.__dict__["_lazy_lock"]:
            real = importlib.import_module(self.__name__)
            for key, value in real.__dict__.items():
                if key != "__name__":
                    self.__dict__.setdefault(key, value)
        return getattr(real, attr)


def lazy_module(name: str) -> ModuleType:
    """The module ``name``, imported at its first attribute access; one already imported is
    returned as it is. ModuleNotFoundError at once if it is not installed."""
    if name in sys.modules:
        return sys.modules[name]
    if importlib.util.find_spec(name) is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    return _LazyModule(name)
