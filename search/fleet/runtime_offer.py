"""Whether the study's agents can give what its ``runtime`` knobs offer (docs/RUNTIME.md).

The search offers only what the agents of the device class report: intra-op thread counts up to
their cores, execution providers among their onnxruntime's ``available_providers``, engines
among their ``available_engines`` (onnxruntime alone for an agent that reports none). Local
agents (no ``device.address``) run on this machine: its cores and its onnxruntime decide,
before anything is trained (``check_measurable``, ``paretoedge validate``); the agents of a
running cluster are judged by what they report (``info()``) once the study has found them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from search.config import StudyConfig
from search.errors import ConfigError


def _runtime_space(config: StudyConfig) -> Any:
    from spaces.runtime_space import RuntimeSpace

    r = config.runtime
    return RuntimeSpace(threads=tuple(r.threads or ()), providers=tuple(r.providers or ()),
                        engines=tuple(r.engines or ()))


def _offered(config: StudyConfig) -> bool:
    """Whether the config searches a knob that depends on the agents."""
    r = config.runtime
    return not (r.threads is None and r.providers is None and r.engines is None)


def host_cores() -> int:
    """The cores local agents can be pinned to (this process's affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _host_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def local_runtime_problem(config: StudyConfig) -> str | None:
    """Why local agents cannot give the config's runtime knobs (None for a running cluster,
    judged later by :func:`agents_runtime_problem`, or when nothing is searched)."""
    from device_agents.runtime_options import available_engines
    from spaces.runtime_space import check_offered

    r = config.runtime
    if config.device.address is not None or not _offered(config):
        return None
    return check_offered(_runtime_space(config), cores=host_cores(),
                         available_providers=_host_providers() if r.providers else (),
                         available_engines=available_engines())


def agents_runtime_problem(config: StudyConfig,
                           agents: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the agents (their ``info()``) cannot give the config's runtime knobs: every agent
    of the class must run every trial, so the fewest cores and the providers all of them have
    decide."""
    from spaces.runtime_space import check_offered

    if not agents or not _offered(config):
        return None
    cores = min(len(a.get("cores") or ()) or int(a.get("threads", 1)) for a in agents)
    common = set.intersection(*(set(a.get("available_providers") or ()) for a in agents))
    ordered = [p for p in agents[0].get("available_providers") or () if p in common]
    engines = set.intersection(*(set(a.get("available_engines") or ("onnxruntime",))
                                 for a in agents))
    return check_offered(_runtime_space(config), cores=cores, available_providers=ordered,
                         available_engines=[e for e in ("onnxruntime", "openvino")
                                            if e in engines])


def check_agents_offer(config: StudyConfig, dispatcher: object) -> None:
    """Raise :class:`ConfigError` when the dispatcher's agents (a ``RayAgentPool``'s
    ``agents``; a dispatcher without them is not checked) cannot give the runtime knobs."""
    agents = getattr(dispatcher, "agents", None)
    if not isinstance(agents, list):
        return
    problem = agents_runtime_problem(config, agents)
    if problem is not None:
        raise ConfigError(problem)
