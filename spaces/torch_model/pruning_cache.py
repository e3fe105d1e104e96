"""The on-disk cache of pruned and finetuned models, safe for concurrent builders.

One directory per key, ``<root>/<key>/`` with ``meta.json`` (the pruning history, exit
temperatures, MACs, parameters, what was done) and ``state.pt`` (the pruned weights). An entry is
written into a private temporary directory and renamed into place, so a reader never sees half
an entry; a lock file per key makes a second builder of the same key wait for the first one's
result instead of finetuning the same configuration again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

META = "meta.json"
STATE = "state.pt"


@dataclass(frozen=True)
class CachedPruning:
    """One entry read back: its metadata and its weights."""

    meta: Mapping[str, Any]
    state: dict[str, torch.Tensor]


class PrunedCache:
    """Pruned+finetuned weights under ``root``, one directory per key.

    Example:
        >>> cache = PrunedCache(Path("runs/cache/pruned"))  # doctest: +SKIP
        >>> with cache.lock(key):  # doctest: +SKIP
        ...     entry = cache.read(key) or build_and_write(cache, key)
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.path(key) / META).is_file() and (self.path(key) / STATE).is_file()

    def read(self, key: str) -> CachedPruning | None:
        """The entry under ``key``, or None when there is none (or it does not read)."""
        if not self.has(key):
            return None
        directory = self.path(key)
        try:
            meta = json.loads((directory / META).read_text())
            state = torch.load(directory / STATE, weights_only=True)
        except (OSError, ValueError, RuntimeError):
            return None
        return CachedPruning(meta=meta, state=state)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the key's lock file (other processes building the same key wait)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{key}.lock", "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def write(self, key: str, meta: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> Path:
        """Write an entry atomically: a private temporary directory renamed into place.

        When another writer got there first, its entry is kept and ours is dropped.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(key)
        tmp = self.root / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            torch.save(dict(state), tmp / STATE)
            (tmp / META).write_text(json.dumps(meta))
            if final.exists() and not self.has(key):  # a broken entry (from an older version)
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.has(key):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final
