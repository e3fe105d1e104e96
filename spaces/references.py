"""Import ``path/to/file.py:attribute`` or ``package.module:attribute`` references."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from spaces.errors import ReferenceError_


def _split(reference: str) -> tuple[str, str]:
    module, sep, attribute = reference.rpartition(":")
    if not sep or not module or not attribute:
        raise ReferenceError_(f"{reference!r} is not of the form 'module:attribute' or "
                              f"'file.py:attribute'")
    return module, attribute


def reference_file(reference: str, base_dir: Path) -> Path | None:
    """The source file a reference points at, when it can be found (for cache keys)."""
    module, _ = _split(reference)
    if module.endswith(".py"):
        path = Path(module)
        return path if path.is_absolute() else (base_dir / path).resolve()
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec and spec.origin else None


def load_reference(reference: str, base_dir: Path) -> Any:
    """Return the object a reference names; file paths are relative to ``base_dir``."""
    module_name, attribute = _split(reference)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            path = path if path.is_absolute() else (base_dir / path).resolve()
            if not path.is_file():
                raise ReferenceError_(f"{reference!r}: file {path} does not exist")
            unique = "paretoedge_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
            module = sys.modules.get(unique)
            if module is None:
                spec = importlib.util.spec_from_file_location(unique, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[unique] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    # as importlib does: a half-executed module must not be found next time
                    sys.modules.pop(unique, None)
                    raise
        else:
            module = importlib.import_module(module_name)
    except ReferenceError_:
        raise
    except Exception as exc:  # the user's module can raise anything while importing
        raise ReferenceError_(f"{reference!r} does not import: {type(exc).__name__}: {exc}") \
            from exc
    if not hasattr(module, attribute):
        raise ReferenceError_(f"{reference!r}: module has no attribute {attribute!r}")
    return getattr(module, attribute)


def file_digest(path: Path | None) -> str:
    if path is None or not path.is_file():
        return "unknown"
    return hashlib.sha256(path.read_bytes()).hexdigest()
