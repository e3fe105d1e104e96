"""How a bundle's onnxruntime sessions are opened: the manifest's ``runtime`` section.

A study can search runtime knobs (``spaces/runtime_space.py``); the builder writes the chosen
ones here, and :class:`~device_agents.cascade.CascadeRunner` applies them, so that a deployed
bundle runs the way it was measured (see docs/RUNTIME.md):

- ``graph_optimization``: onnxruntime's graph optimization level (``disabled``, ``basic``,
  ``extended``, ``layout``, ``all``; ``all`` when absent);
- ``intra_op_threads``: the sessions' intra-op threads (absent: the caller's, 1 by default);
- ``providers``: the execution providers in order of preference, each with its options (absent:
  the caller's, ``CPUExecutionProvider`` by default);
- ``engine``: which runtime runs the stages: ``onnxruntime`` (when absent) or ``openvino``
  (OpenVINO's own runtime, on the same ONNX files: ``device_agents/openvino_stage.py``; the
  graph optimization level, providers and ``disabled_optimizers`` are onnxruntime's and do
  not apply to it);
- ``disabled_optimizers``: onnxruntime optimizers the sessions must not run (kept on
  :class:`~device_agents.bundle.BundleManifest` itself, as before).

Every field is left out of the manifest at its default, so bundles that do not search a knob
keep their bytes and digests.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from device_agents.errors import BundleError
from device_agents.profiles import CPU_PROVIDER, Provider, ProviderLike, as_providers

#: onnxruntime's levels by their manifest names, lowest first
GRAPH_OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "layout", "all")
DEFAULT_GRAPH_OPTIMIZATION = "all"
_ORT_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "layout": "ORT_ENABLE_LAYOUT",
               "all": "ORT_ENABLE_ALL"}
#: the runtimes a bundle may name (``runtime.engine``), the default first
ENGINES = ("onnxruntime", "openvino")
DEFAULT_ENGINE = "onnxruntime"
#: short names a config may use for onnxruntime's execution providers
PROVIDER_ALIASES = {"CPU": CPU_PROVIDER, "XNNPACK": "XnnpackExecutionProvider",
                    "OPENVINO": "OpenVINOExecutionProvider", "CUDA": "CUDAExecutionProvider",
                    "TENSORRT": "TensorrtExecutionProvider", "COREML": "CoreMLExecutionProvider",
                    "NNAPI": "NnapiExecutionProvider", "QNN": "QNNExecutionProvider",
                    "DML": "DmlExecutionProvider"}


def provider_from_text(text: str) -> Provider:
    """``NAME[:key=value;...]`` with ``NAME`` a full provider name or a short one (``CPU``,
    ``XNNPACK``, ``CUDA``, ...); :class:`ValueError` when malformed.

    Example:
        >>> provider_from_text("XNNPACK:intra_op_num_threads=1").spec
        'XnnpackExecutionProvider:intra_op_num_threads=1'
    """
    provider = Provider.parse(text)
    name = PROVIDER_ALIASES.get(provider.name.upper(), provider.name)
    return Provider(name=name, options=dict(provider.options))


def available_engines() -> tuple[str, ...]:
    """The engines this Python can run: onnxruntime always, OpenVINO where it is installed
    (``pip install paretoedge[openvino]``)."""
    has_openvino = importlib.util.find_spec("openvino") is not None
    return ("onnxruntime", "openvino") if has_openvino else ("onnxruntime",)


def ort_level(name: str) -> Any:
    """``onnxruntime.GraphOptimizationLevel`` of a manifest name."""
    import onnxruntime as ort

    if name not in _ORT_LEVELS:
        raise BundleError(f"manifest: runtime.graph_optimization {name!r} is not one of "
                          f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
    return getattr(ort.GraphOptimizationLevel, _ORT_LEVELS[name])


@dataclass(frozen=True)
class RuntimeOptions:
    """The session settings a bundle asks for (the ``runtime`` section less
    ``disabled_optimizers``). ``intra_op_threads`` 0 and ``providers`` empty leave them to
    the caller.

    Example:
        >>> options = RuntimeOptions(graph_optimization="basic", intra_op_threads=2)
        >>> options.to_dict()
        {'graph_optimization': 'basic', 'intra_op_threads': 2}
        >>> options.session_settings(threads=None, providers=None)[0]
        2
    """

    graph_optimization: str = DEFAULT_GRAPH_OPTIMIZATION
    intra_op_threads: int = 0
    providers: tuple[Provider, ...] = ()
    engine: str = DEFAULT_ENGINE

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise BundleError(f"manifest: runtime.engine {self.engine!r} is not one of "
                              f"{', '.join(ENGINES)}")
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise BundleError(f"manifest: runtime.graph_optimization "
                              f"{self.graph_optimization!r} is not one of "
                              f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
        if self.intra_op_threads < 0:
            raise BundleError("manifest: runtime.intra_op_threads must be positive")

    @property
    def is_default(self) -> bool:
        return self == RuntimeOptions()

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from the defaults (what the manifest's section holds)."""
        data: dict[str, Any] = {}
        if self.graph_optimization != DEFAULT_GRAPH_OPTIMIZATION:
            data["graph_optimization"] = self.graph_optimization
        if self.intra_op_threads:
            data["intra_op_threads"] = self.intra_op_threads
        if self.providers:
            data["providers"] = [{"name": p.name, **({"options": dict(p.options)}
                                                     if p.options else {})}
                                 for p in self.providers]
        if self.engine != DEFAULT_ENGINE:
            data["engine"] = self.engine
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuntimeOptions:
        providers = []
        for entry in data.get("providers", ()):
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise BundleError("manifest: runtime.providers entries must be "
                                  "{name, options}")
            providers.append(Provider(name=str(entry["name"]),
                                      options={str(k): str(v) for k, v in
                                               dict(entry.get("options", {})).items()}))
        return cls(graph_optimization=str(data.get("graph_optimization",
                                                   DEFAULT_GRAPH_OPTIMIZATION)),
                   intra_op_threads=int(data.get("intra_op_threads", 0)),
                   providers=tuple(providers),
                   engine=str(data.get("engine", DEFAULT_ENGINE)))

    def session_settings(self, *, threads: int | None,
                         providers: Sequence[ProviderLike] | None
                         ) -> tuple[int, tuple[Provider, ...]]:
        """``(threads, providers)`` the sessions run with: an explicit argument wins, then
        the bundle's own, then 1 thread on ``CPUExecutionProvider``."""
        chosen_threads = threads if threads is not None else (self.intra_op_threads or 1)
        chosen = (as_providers(providers) if providers is not None
                  else self.providers or (Provider(CPU_PROVIDER),))
        return chosen_threads, chosen

    def on_agent(self, threads: int, providers: Sequence[ProviderLike]
                 ) -> tuple[int, tuple[Provider, ...]]:
        """``(threads, providers)`` an agent measures the bundle with: the bundle's own where
        it names them, the agent's (``threads`` of the protocol, its providers) otherwise."""
        return (self.intra_op_threads or threads,
                self.providers or as_providers(providers))

    def check_engine(self) -> None:
        """Raise :class:`BundleError` when this Python cannot run the bundle's engine."""
        if self.engine not in available_engines():
            raise BundleError(f"manifest: runtime.engine is {self.engine}, which is not "
                              f"installed here (pip install paretoedge[{self.engine}])")

    def check_available(self, available: Sequence[str]) -> None:
        """Raise :class:`BundleError` when a provider the bundle names is not in this
        onnxruntime (onnxruntime would fall back to the CPU silently)."""
        missing = [p.name for p in self.providers if p.name not in available]
        if missing:
            raise BundleError(f"manifest: runtime.providers names {', '.join(missing)}, which "
                              f"this onnxruntime lacks (it has {', '.join(available)}); pass "
                              f"providers= to run the bundle on others")
