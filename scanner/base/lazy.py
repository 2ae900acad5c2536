"""Modules imported at their first use: a heavy optional dependency (OpenCV: about 16 MB) costs its
memory only in a process that uses it; a daemon with readers and no camera never does."""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """The module ``name``, executed at its first attribute access (importlib.util.LazyLoader);
    one already imported is returned as it is. ModuleNotFoundError if it is not installed."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
