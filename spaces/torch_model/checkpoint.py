"""A trained checkpoint (``model.checkpoint``): a ``state_dict`` file loaded strictly into the
factory's module.

The file is what ``torch.save(model.state_dict(), PATH)`` writes, or a dict holding that under
``state_dict`` or ``model`` (a training script's checkpoint). It is read with
``torch.load(weights_only=True)``: tensors and plain containers only, no code runs. Every problem
is one :class:`ModelError` line naming the file, and the first bad key where there is one.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from spaces.errors import ModelError

#: The keys under which a training script's checkpoint dict may hold the state_dict.
NESTED_KEYS = ("state_dict", "model")
_HOW = ("torch.save(model.state_dict(), PATH), or a dict with it under 'state_dict' or "
        "'model'")


def _prefix(path: Path) -> str:
    return f"model.checkpoint: {path}"


def _why_unreadable(exc: BaseException) -> str:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        return (f"it holds Python objects ({found.group(1)}), not only tensors; save "
                f"model.state_dict(), not the model")
    return f"not a torch.save file ({type(exc).__name__}); expected {_HOW}"


def _is_state_dict(value: object) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) for k in value) and any(
        isinstance(v, torch.Tensor) for v in value.values())


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in ``path``.

    Raises:
        ModelError: the file is missing, does not load with ``weights_only=True``, or holds no
            state_dict (one line naming the file).

    Example:
        >>> state = read_checkpoint(Path("model.pt"))  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{_prefix(path)}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4"
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises anything on a file it cannot read
        raise ModelError(f"{_prefix(path)}: not a PyTorch checkpoint: "
                         f"{_why_unreadable(exc)}") from exc
    for key in NESTED_KEYS:
        if isinstance(loaded, Mapping) and _is_state_dict(loaded.get(key)):
            loaded = loaded[key]
            break
    if not _is_state_dict(loaded):
        what = (f"a dict without a state_dict (keys {', '.join(map(repr, list(loaded)[:4]))})"
                if isinstance(loaded, Mapping) and loaded else f"a {type(loaded).__name__}")
        raise ModelError(f"{_prefix(path)}: holds {what}, expected {_HOW}")
    bad = next((k for k, v in loaded.items() if not isinstance(v, torch.Tensor)
                and not k.endswith("_extra_state")), None)
    if bad is not None:
        raise ModelError(f"{_prefix(path)}: key {bad!r} holds a {type(loaded[bad]).__name__}, "
                         f"not a tensor; expected {_HOW}")
    return dict(loaded)


def _shape(value: object) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else ()


def _prefix_hint(expected: list[str], given: list[str]) -> str:
    """A note when the checkpoint's keys are the model's with a prefix (or without one)."""
    for longer, shorter, how in ((given, expected, "carry"), (expected, given, "lack")):
        if longer and len(longer) == len(shorter) and "." in longer[0]:
            prefix = longer[0][:longer[0].index(".") + 1]
            if all(k.startswith(prefix) for k in longer) and \
                    sorted(k[len(prefix):] for k in longer) == sorted(shorter):
                return f"; the checkpoint's keys {how} the prefix {prefix!r}"
    return ""


def state_dict_problem(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """What stops ``state`` from loading strictly into ``model`` (the first bad key, in the
    model's order, and what was expected), or None when it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and _shape(state[k]) != _shape(expected[k])]
    count = len(missing) + len(unexpected) + len(mismatched)
    if not count:
        return None
    more = f" (and {count - 1} more bad keys)" if count > 1 else ""
    hint = _prefix_hint(list(expected), list(state))
    absent, misshapen = set(missing), set(mismatched)
    first = next((k for k in expected if k in absent or k in misshapen), None)
    if first is not None and first in absent:
        return f"key {first!r} of the model is missing from the checkpoint{more}{hint}"
    if first is not None:
        return (f"key {first!r} has shape {_shape(state[first])} in the checkpoint, the model "
                f"expects {_shape(expected[first])}{more}{hint}")
    return (f"unexpected key {unexpected[0]!r}: the model has no such parameter or "
            f"buffer{more}{hint}")


def load_checkpoint(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path
                    ) -> nn.Module:
    """Load ``state`` (read from ``path``) into ``model`` strictly; return ``model``.

    Raises:
        ModelError: a key is missing, unexpected or of another shape (the first one named).
    """
    problem = state_dict_problem(model, state)
    if problem is not None:
        raise ModelError(f"{_prefix(path)}: does not fit model.factory's module: {problem}")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # e.g. a dtype torch cannot copy
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{_prefix(path)}: does not load into model.factory's module: "
                         f"{first}") from exc
    return model
