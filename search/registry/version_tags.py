"""The tags of a registered version: where its bundle comes from (study, trial, the query that
chose it), every metric of the trial (``metric.<name>``), the device class and fingerprint it
was measured on, and the deployment options. The bundle's sha256 is added on registering
(:data:`search.registry.model_registry.SHA256_TAG`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from search.records import TrialRecord
from search.registry.study_source import StudyQuery

if TYPE_CHECKING:
    from device_agents.deployment import FallbackPolicy

#: MLflow keeps at most 5000 characters of a tag's value
_MAX = 4000


def version_tags(study: str, record: TrialRecord, query: StudyQuery,
                 fallback: FallbackPolicy | None) -> dict[str, str]:
    tags = {"study": study, "trial": str(record.number), "query": query.describe(),
            "query.where": query.where or "", "device_class": record.device_class or "",
            "fingerprint": json.dumps(dict(record.fingerprint), sort_keys=True)[:_MAX],
            "source_bundle_digest": record.bundle_digest or "",
            "fallback": json.dumps(fallback.to_dict(), sort_keys=True) if fallback else "none"}
    if query.maximize:
        tags["query.maximize"] = query.maximize
    if query.minimize:
        tags["query.minimize"] = query.minimize
    for name, value in sorted(record.metrics.items()):
        tags[f"metric.{name}"] = repr(float(value))
    return tags
