"""The registry wing: deployed bundles as versions of registered models in MLflow's Model
Registry (``paretoedge deploy``, ``deployments``, ``rollback``, ``pull``), and the canary
comparison of two versions on a device (``paretoedge compare``, ``deploy --canary``). See
docs/DEPLOYMENT.md."""

from __future__ import annotations

from search.registry.model_ref import ModelRef
from search.registry.resolve import resolve_version

__all__ = ["ModelRef", "resolve_version"]
