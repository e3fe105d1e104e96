"""The runtime knob: which engine runs a bundle (onnxruntime, or OpenVINO's own runtime), how
onnxruntime runs it (graph optimization level, intra-op threads, execution provider) and
whether its graph has a static batch-1 input (docs/RUNTIME.md).

The builders write the chosen options into the manifest's ``runtime`` section
(:func:`manifest_runtime`), which :class:`device_agents.CascadeRunner` applies, so that a
deployed bundle runs as it was measured. The static shape is a graph change, made by the
builder (``static_shape``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from device_agents.profiles import CPU_PROVIDER, Provider
from device_agents.runtime_options import (
    DEFAULT_ENGINE,
    DEFAULT_GRAPH_OPTIMIZATION,
    ENGINES,
    GRAPH_OPTIMIZATION_LEVELS,
    RuntimeOptions,
    provider_from_text,
)
from spaces.candidate import Candidate
from spaces.errors import SpaceError

#: the Optuna params of the runtime knob, by dimension
PARAMS = {"graph_optimization": "runtime_graph_optimization",
          "intra_op_threads": "runtime_threads", "provider": "runtime_provider",
          "static_shape": "runtime_static_shape", "engine": "runtime_engine"}


def canonical_provider(text: str) -> str:
    """A provider's text with its full name (``CPU`` -> ``CPUExecutionProvider``)."""
    try:
        return provider_from_text(text).spec
    except ValueError as exc:
        raise SpaceError(f"runtime.providers: {exc}") from None


@dataclass(frozen=True)
class RuntimeSpace:
    """The values each runtime dimension may take; an empty tuple leaves it at today's
    behaviour (all optimizations, the agent's threads and providers, the graph as the builder
    makes it). A dimension with several values is an Optuna param (``runtime_<dimension>``);
    one with a single value applies to every candidate. The baseline (trial 0) takes each
    dimension's first value.

    Example:
        >>> import optuna
        >>> space = RuntimeSpace(graph_optimizations=("all", "basic"), threads=(1,))
        >>> space.suggest(optuna.trial.FixedTrial({"runtime_graph_optimization": "basic"}))
        {'graph_optimization': 'basic', 'intra_op_threads': 1}
    """

    graph_optimizations: tuple[str, ...] = ()
    threads: tuple[int, ...] = ()
    providers: tuple[str, ...] = ()
    static_shapes: tuple[bool, ...] = ()
    engines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [e for e in self.engines if e not in ENGINES]
        if unknown:
            raise SpaceError(f"runtime.engines: {unknown[0]!r} is not one of "
                             f"{', '.join(ENGINES)}")
        bad = [g for g in self.graph_optimizations if g not in GRAPH_OPTIMIZATION_LEVELS]
        if bad:
            raise SpaceError(f"runtime.graph_optimization: {bad[0]!r} is not one of "
                             f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
        if any(t < 1 for t in self.threads):
            raise SpaceError("runtime.threads: thread counts must be at least 1")
        object.__setattr__(self, "providers",
                           tuple(dict.fromkeys(canonical_provider(p) for p in self.providers)))
        for name, values in self._dimensions().items():
            if len(set(values)) != len(values):
                raise SpaceError(f"runtime.{name}: lists a value twice")

    def _dimensions(self) -> dict[str, tuple[Any, ...]]:
        return {"graph_optimization": self.graph_optimizations, "threads": self.threads,
                "providers": self.providers, "static_shape": self.static_shapes,
                "engines": self.engines}

    def _choices(self) -> dict[str, tuple[Any, ...]]:
        """Each candidate field and its values."""
        return {"graph_optimization": self.graph_optimizations,
                "intra_op_threads": self.threads, "provider": self.providers,
                "static_shape": self.static_shapes, "engine": self.engines}

    @property
    def searched(self) -> tuple[str, ...]:
        """The candidate fields with more than one value (those with an Optuna param)."""
        return tuple(f for f, values in self._choices().items() if len(values) > 1)

    @property
    def max_threads(self) -> int:
        return max(self.threads, default=0)

    def param_names(self) -> tuple[str, ...]:
        return tuple(PARAMS[f] for f in self.searched)

    def baseline(self) -> dict[str, Any]:
        """The candidate fields of the baseline: each dimension's first value."""
        return {f: values[0] for f, values in self._choices().items() if values}

    def baseline_params(self) -> dict[str, Any]:
        return {PARAMS[f]: values[0] for f, values in self._choices().items()
                if len(values) > 1}

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The candidate fields of the runtime knob (``Candidate(**fields)``)."""
        fields: dict[str, Any] = {}
        for name, values in self._choices().items():
            if len(values) > 1:
                fields[name] = trial.suggest_categorical(PARAMS[name], list(values))
            elif values:
                fields[name] = values[0]
        return fields


def candidate_providers(provider: str) -> tuple[Provider, ...]:
    """The manifest's providers for a candidate's ``provider``: it, then the CPU provider for
    the operators it does not run (nothing when the candidate leaves it to the agent)."""
    if not provider:
        return ()
    chosen = provider_from_text(provider)
    return (chosen,) if chosen.name == CPU_PROVIDER else (chosen, Provider(CPU_PROVIDER))


def manifest_runtime(candidate: Candidate) -> RuntimeOptions:
    """The manifest's runtime options of a candidate (all defaults when it searched none)."""
    return RuntimeOptions(graph_optimization=candidate.graph_optimization,
                          intra_op_threads=candidate.intra_op_threads,
                          providers=candidate_providers(candidate.provider),
                          engine=candidate.engine or DEFAULT_ENGINE)


def check_offered(space: RuntimeSpace, *, cores: int, available_providers: Sequence[str],
                  available_engines: Sequence[str] = (DEFAULT_ENGINE,)) -> str | None:
    """Why agents with ``cores`` cores, these onnxruntime providers and these engines cannot
    give what the space offers (one line naming the field), or None."""
    for engine in space.engines:
        if engine not in available_engines:
            return (f"runtime.engines: {engine} is not installed on the device class's agents "
                    f"(they have {', '.join(available_engines)}; pip install "
                    f"paretoedge[{engine}] there)")
    if space.max_threads > cores:
        return (f"runtime.threads: {space.max_threads} intra-op threads, but the device "
                f"class's agents have {cores} core{'s' if cores != 1 else ''}")
    for text in space.providers:
        name = provider_from_text(text).name
        if name not in available_providers:
            return (f"runtime.providers: {name} is not available on the device class's "
                    f"agents (they have {', '.join(available_providers) or 'none'})")
    return None


__all__ = ["DEFAULT_GRAPH_OPTIMIZATION", "RuntimeSpace", "candidate_providers",
           "canonical_provider", "check_offered", "manifest_runtime"]
