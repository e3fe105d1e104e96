"""Cut a plain model into stages after named modules, to hang exit heads between them.

The model is traced with ``torch.fx`` (the named modules are kept as leaves), and its graph is
cut right after each named module. A cut is valid when the named module's output is the only
value that crosses it: a skip connection that jumps over the cut, a module that is called twice
or not at all, or a second input make the model impossible to split there, and the error says
so. When ``torch.fx`` cannot trace the model (data-dependent control flow), a model whose
forward is the sequence of its named children is split between those children instead; this is
checked by running both on an example input.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from spaces.errors import SplitError


def _module_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules() if name}


def _trace(model: nn.Module, leaves: Sequence[str]) -> Any:
    import torch.fx as fx

    keep = set(leaves)

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
            return qualified_name in keep or super().is_leaf_module(module, qualified_name)

    tracer = _Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _cut_positions(nodes: list[Any], after: Sequence[str]) -> list[int]:
    position = {node: i for i, node in enumerate(nodes)}
    cuts = []
    for name in after:
        calls = [n for n in nodes if n.op == "call_module" and n.target == name]
        if not calls:
            raise SplitError(name, f"cannot split after {name!r}: the module is never called "
                                   f"by the model's forward")
        if len(calls) > 1:
            raise SplitError(name, f"cannot split after {name!r}: the module is called "
                                   f"{len(calls)} times by the model's forward")
        cuts.append(position[calls[0]])
    for previous, name, cut in zip(cuts, after[1:], cuts[1:], strict=False):
        if cut <= previous:
            raise SplitError(name, f"cannot split after {name!r}: list the modules of "
                                   f"early_exit.after in the order the forward calls them")
    return cuts


def _check_cut(nodes: list[Any], cut: int, name: str) -> None:
    """Only the output of ``nodes[cut]`` may be used after the cut (parameters aside)."""
    before = set(nodes[:cut])
    for later in nodes[cut + 1:]:
        for source in later.all_input_nodes:
            if source.op == "get_attr" or source is nodes[cut]:
                continue
            if source in before:
                raise SplitError(name, f"cannot split after {name!r}: {later.name!r} after "
                                       f"it also uses {source.name!r} from before it (a skip "
                                       f"connection across the cut)")


def _segment(root: nn.Module, nodes: list[Any], source: Any, result: Any) -> nn.Module:
    """A GraphModule computing ``result`` from ``source`` with ``nodes`` (in graph order)."""
    import torch.fx as fx

    graph = fx.Graph()
    env: dict[Any, Any] = {source: graph.placeholder("x")}

    def lookup(node: Any) -> Any:
        if node not in env:  # a parameter read before this segment
            if node.op != "get_attr":
                raise AssertionError(f"{node.name} crosses a checked cut")
            env[node] = graph.node_copy(node, lookup)
        return env[node]

    for node in nodes:
        if node not in env:
            env[node] = graph.node_copy(node, lookup)
    graph.output(lookup(result))
    graph.lint()
    return fx.GraphModule(root, graph, "Stage")


def _split_traced(model: nn.Module, after: Sequence[str]) -> list[nn.Module]:
    traced = _trace(model, after)
    nodes = list(traced.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise SplitError(after[0], f"cannot split after {after[0]!r}: the model's forward "
                                   f"takes {len(inputs)} inputs, exits need exactly one")
    output = next(n for n in nodes if n.op == "output")
    result = output.args[0]
    if not isinstance(result, torch.fx.Node):
        raise SplitError(after[0], f"cannot split after {after[0]!r}: the model returns "
                                   f"{type(result).__name__}, exits need one logits tensor")
    cuts = _cut_positions(nodes, after)
    for cut, name in zip(cuts, after, strict=True):
        _check_cut(nodes, cut, name)
    if nodes[cuts[-1]] is result:
        raise SplitError(after[-1], f"cannot split after {after[-1]!r}: its output is the "
                                    f"model's output, nothing would be left after the exit")
    body = [n for n in nodes if n.op not in ("placeholder", "output")]
    stages, source, start = [], inputs[0], 0
    ends: list[int | None] = [*cuts, None]
    for last in ends:
        stop = len(nodes) - 1 if last is None else last + 1
        chunk = [n for n in nodes[start:stop] if n in body]
        end = result if last is None else nodes[last]
        stages.append(_segment(traced, chunk, source, end))
        if last is not None:
            source, start = nodes[last], last + 1
    return stages


def _split_children(model: nn.Module, after: Sequence[str], example: torch.Tensor,
                    why: str) -> list[nn.Module]:
    """The model's named children in sequence, cut after the named ones (checked on example)."""
    children = list(model.named_children())
    names = [name for name, _ in children]
    for name in after:
        if name not in names:
            raise SplitError(name, f"cannot split after {name!r}: torch.fx cannot trace the "
                                   f"model ({why}), and without it only direct children can be "
                                   f"split after ({', '.join(names)})")
    stages: list[nn.Module] = []
    current: list[tuple[str, nn.Module]] = []
    for name, child in children:
        current.append((name, child))
        if name in after:
            stages.append(nn.Sequential(OrderedDict(current)))
            current = []
    if not current:
        raise SplitError(after[-1], f"cannot split after {after[-1]!r}: it is the model's last "
                                    f"child, nothing would be left after the exit")
    stages.append(nn.Sequential(OrderedDict(current)))
    with torch.no_grad():
        expected = model(example)
        x = example
        for stage in stages:
            x = stage(x)
    if not (isinstance(expected, torch.Tensor) and isinstance(x, torch.Tensor)
            and x.shape == expected.shape and torch.allclose(x, expected, atol=1e-5)):
        raise SplitError(after[0], f"cannot split after {after[0]!r}: torch.fx cannot trace "
                                   f"the model ({why}), and its forward is not the sequence of "
                                   f"its named children")
    return stages


def split_model(model: nn.Module, after: Sequence[str], example: torch.Tensor) -> list[nn.Module]:
    """Cut ``model`` into ``len(after) + 1`` stages, each ending right after a named module.

    The stages share the model's parameters. Running them in sequence computes the model's own
    output. ``example`` is one preprocessed input batch (used to check the split).

    Example:
        >>> net = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3), act=nn.ReLU(),
        ...                                 pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
        ...                                 fc=nn.Linear(4, 3)))
        >>> len(split_model(net, ["act"], torch.zeros(1, 1, 8, 8)))
        2

    Raises:
        SplitError: a name is not a module of the model, or the model cannot be cut after it.
    """
    if not after:
        raise SplitError("", "no module to split after")
    known = _module_names(model)
    for name in after:
        if name not in known:
            tops = ", ".join(n for n, _ in model.named_children())
            raise SplitError(name, f"the model has no module {name!r} (its top-level "
                                   f"modules: {tops})")
    twice = [name for i, name in enumerate(after) if name in after[:i]]
    if twice:
        raise SplitError(twice[0], f"module {twice[0]!r} is listed twice")
    model.eval()
    try:
        stages = _split_traced(model, after)
    except SplitError:
        raise
    except Exception as exc:  # torch.fx cannot trace it: try the model's children in sequence
        stages = _split_children(model, after, example, f"{type(exc).__name__}: {exc}")
    with torch.no_grad():
        x = example
        for name, stage in zip(after, stages, strict=False):
            x = stage(x)
            if not isinstance(x, torch.Tensor):
                raise SplitError(name, f"cannot split after {name!r}: it returns "
                                       f"{type(x).__name__}, an exit needs one tensor")
    return stages
