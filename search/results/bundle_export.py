"""Copy a trial's bundle out of the workdir, with a README on how to run it."""

from __future__ import annotations

import shutil
from pathlib import Path

from device_agents import verify_bundle
from search.records import TrialRecord
from spaces.candidate import candidate_label

_README = """# paretoedge bundle: {study}, trial {trial}

Candidate: {candidate}

| metric | value |
|---|---|
{rows}

Measured on: {device}

## Run it

On the device, only numpy and onnxruntime are needed (`pip install paretoedge[agent]`):

```python
import numpy as np
from device_agents import CascadeRunner

runner = CascadeRunner.load("{name}")       # verifies every file's sha256
raw = np.zeros({shape}, dtype="{dtype}")    # one raw sample, before preprocessing
prediction = runner.predict(raw)
print(prediction.label, prediction.exit_index, prediction.probabilities.max())
```

`manifest.json` holds the input spec, the preprocessing the runner applies, the exit thresholds and
temperatures, and the provenance (the candidate, the versions that built it, the pruning history).
"""


def export_bundle(record: TrialRecord, source: Path, target: Path, study: str) -> Path:
    """Copy and verify the bundle; write README.md beside the manifest."""
    manifest = verify_bundle(source, record.bundle_digest)
    if target.exists() and any(target.iterdir()):
        target = target / source.name
    shutil.copytree(source, target, dirs_exist_ok=True)
    rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(record.metrics.items()))
    fingerprint = record.fingerprint
    device = (f"{record.device_class} ({fingerprint.get('cpu', '?')}, onnxruntime "
              f"{fingerprint.get('onnxruntime', '?')}, {fingerprint.get('threads', '?')} "
              f"thread(s))")
    (target / "README.md").write_text(_README.format(
        study=study, trial=record.number, candidate=candidate_label(dict(record.candidate)),
        rows=rows, device=device, name=target.name, shape=tuple(manifest.input.shape),
        dtype=manifest.input.dtype))
    verify_bundle(target, record.bundle_digest)
    return target
