"""Load a repository script (a benchmark or an example) as a module, for tests of its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """The script at `ROOT / relative` (e.g. `"benchmarks/train_speed.py"`) executed as a module named
    after its file. Its folder is on `sys.path` while it runs, so it can import the scripts beside it
    (as it does when run from there); it is removed afterwards."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    sys.path.insert(0, str(path.parent))
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
