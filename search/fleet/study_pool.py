"""The agent pool a study's config asks for: agents of its device class in a running cluster
(``device.address``), or local agents on a cluster of this machine."""

from __future__ import annotations

from typing import Any

from search.config import StudyConfig
from search.fleet.dispatch import Dispatcher
from search.workspace import Workspace


def default_dispatcher(config: StudyConfig, workspace: Workspace) -> Dispatcher:
    from search.fleet.agent_pool import RayAgentPool

    d, m = config.device, config.measurement
    common: dict[str, Any] = {"timeout_s": m.timeout_s, "retries": m.retries,
                              "wait_for_agents_s": d.wait_for_agents_s}
    if d.address:  # agents of the class in a running cluster (paretoedge agent start)
        return RayAgentPool.connect(d.address, d.class_, threads=d.threads,
                                    discover_every_s=d.discover_every_s,
                                    heartbeat_timeout_s=d.heartbeat_timeout_s, **common)
    # an agent is pinned to as many cores as the most threads a trial may ask for
    return RayAgentPool.start_local(d.class_, d.agents, threads=d.threads,
                                    cache_dir=str(workspace.cache / "agent"),
                                    cores_per_agent=max(config.runtime.max_threads, 1),
                                    **common)
