"""The pruned+finetuned cache: keyed by everything that changes the result, atomic, locked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import spaces.torch_model.builder as builder_module
from spaces import BuildSettings, FinetuneSettings, PruningSettings, TorchBuilder
from spaces.torch_model.pruning_cache import PrunedCache

ROOT = Path(__file__).resolve().parents[3]
STATE = {"w": torch.arange(6.0).reshape(2, 3)}


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp"))


def test_write_then_read(tmp_path: Path) -> None:
    cache = PrunedCache(tmp_path / "pruned")
    assert cache.read("k") is None
    cache.write("k", {"history": [], "macs": 1.0}, STATE)
    entry = cache.read("k")
    assert entry is not None and entry.meta == {"history": [], "macs": 1.0}
    assert torch.equal(entry.state["w"], STATE["w"])
    assert _leftovers(tmp_path / "pruned") == []


def test_a_second_writer_keeps_the_first_entry(tmp_path: Path) -> None:
    cache = PrunedCache(tmp_path)
    cache.write("k", {"who": "first"}, STATE)
    cache.write("k", {"who": "second"}, STATE)
    assert cache.read("k").meta == {"who": "first"}
    assert _leftovers(tmp_path) == []


def test_a_half_written_entry_is_not_read_and_is_replaced(tmp_path: Path) -> None:
    cache = PrunedCache(tmp_path)
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "state.pt").write_bytes(b"truncated")  # no meta.json: a crashed writer
    assert cache.read("k") is None
    cache.write("k", {"who": "new"}, STATE)
    assert cache.read("k").meta == {"who": "new"}


WRITER = textwrap.dedent('''
    import sys, torch
    from pathlib import Path
    from spaces.torch_model.pruning_cache import PrunedCache

    cache = PrunedCache(Path(sys.argv[1]))
    for i in range(30):
        cache.write(f"k{i % 3}", {"writer": sys.argv[2], "i": i}, {"w": torch.ones(64, 64)})
        assert cache.read(f"k{i % 3}") is not None
''')


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_concurrent_writers_never_leave_a_broken_entry(tmp_path: Path) -> None:
    writers = [_python(WRITER, str(tmp_path), name) for name in ("a", "b", "c")]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    cache = PrunedCache(tmp_path)
    for key in ("k0", "k1", "k2"):
        entry = cache.read(key)
        assert entry is not None and entry.meta["writer"] in {"a", "b", "c"}
        assert torch.equal(entry.state["w"], torch.ones(64, 64))
    assert _leftovers(tmp_path) == []


HOLDER = textwrap.dedent('''
    import sys, time, torch
    from pathlib import Path
    from spaces.torch_model.pruning_cache import PrunedCache

    root = Path(sys.argv[1])
    cache = PrunedCache(root)
    with cache.lock("k"):
        (root / "held").touch()
        while not (root / "go").exists():
            time.sleep(0.01)
        time.sleep(0.5)  # a slow finetune: without the lock, the reader would see nothing yet
        cache.write("k", {"by": "holder"}, {"w": torch.zeros(1)})
''')


@pytest.mark.slow
def test_the_lock_makes_a_second_builder_wait_for_the_first(tmp_path: Path) -> None:
    holder = _python(HOLDER, str(tmp_path))
    try:
        while not (tmp_path / "held").exists():
            assert holder.poll() is None, holder.stderr.read()
            time.sleep(0.01)
        cache = PrunedCache(tmp_path)
        (tmp_path / "go").touch()
        with cache.lock("k"):
            entry = cache.read("k")
        assert entry is not None and entry.meta == {"by": "holder"}
    finally:
        holder.communicate(timeout=60)
    assert holder.returncode == 0


# -- the builder's key and cache --------------------------------------------------------------
def _builder(trained, digits, cache: Path, **changes) -> TorchBuilder:
    settings = BuildSettings(finetune=FinetuneSettings(epochs=1), pruning=PruningSettings())
    finetune = {k: v for k, v in changes.items() if k in FinetuneSettings.__dataclass_fields__}
    pruning = {k: v for k, v in changes.items() if k in PruningSettings.__dataclass_fields__}
    settings = replace(settings, finetune=replace(settings.finetune, **finetune),
                       pruning=replace(settings.pruning, **pruning))
    return TorchBuilder(trained=trained, data=digits, cache_dir=cache, settings=settings)


def test_the_key_covers_ratios_pruning_finetune_and_seed(trained, digits, tmp_path) -> None:
    base = _builder(trained, digits, tmp_path)
    key = base.pruned_key(0.5)
    variants = [
        base.pruned_key(0.25), base.pruned_key(0.5, (0.5, 0.5, 0.25)),
        base.pruned_key(0.5, (0.25, 0.5, 0.5)),
        *(_builder(trained, digits, tmp_path, **change).pruned_key(0.5) for change in (
            {"importance": "l1"}, {"importance": "taylor"}, {"round_to": 4},
            {"ignored_layers": ("stages.1.0",)}, {"epochs": 2}, {"steps": 10},
            {"train_subset": 100}, {"schedule": "cosine"}, {"lr": 1e-3}, {"warmup": 0.3},
            {"distill_alpha": 0.0}, {"distill_temperature": 2.0}, {"seed": 1},
            {"batch_size": 32})),
    ]
    assert key not in variants and len(set(variants)) == len(variants)
    other_model = replace(trained, key="another-baseline")
    assert TorchBuilder(trained=other_model, data=digits, cache_dir=tmp_path,
                            settings=base.settings).pruned_key(0.5) != key
    # the same pruning has one key: equal stage ratios are the global ratio
    assert base.pruned_key(0.5, (0.5, 0.5, 0.5)) == key
    # an unpruned model does not depend on how pruned ones are made
    assert (_builder(trained, digits, tmp_path, epochs=7, importance="taylor").pruned_key(0.0)
            == base.pruned_key(0.0) == base.pruned_key(0.0, (0.0, 0.0, 0.0)))


@pytest.mark.slow
def test_concurrent_builders_finetune_a_configuration_once(trained, digits, tmp_path,
                                                          monkeypatch) -> None:
    calls = []
    real = builder_module.train_model

    def counting(*args, **kwargs):
        calls.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(builder_module, "train_model", counting)
    results, errors = [], []

    def build() -> None:
        try:
            results.append(_builder(trained, digits, tmp_path).pruned(0.25, (0.5, 0.25, 0.0)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    assert len(calls) == 1  # one finetune; the others waited and read its entry
    assert len({r.key for r in results}) == 1 and len(results) == 3
    assert all(r.history == results[0].history for r in results)
    assert list((tmp_path / "pruned").glob("*.tmp")) == []
