"""What the bundle runtime answers for one sample (:class:`Prediction`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the label of an explicit abstention (fallback action ``abstain``)
ABSTAINED_LABEL = -1


@dataclass(frozen=True)
class Prediction:
    """What the cascade decided for one sample.

    ``exit_index`` is the exit of the deployed cascade that answered (also when a fallback
    replaced its answer); ``probabilities`` are that answer's temperature-scaled probabilities
    (the escalation bundle's when it answered). ``fallback`` names the fallback action that
    answered (``abstain``, ``default_label``, ``escalate``), ``None`` when the cascade did;
    ``abstained`` is true for an explicit abstention, whose ``label`` is ``-1``.
    """

    label: int
    exit_index: int
    probabilities: np.ndarray
    abstained: bool = False
    fallback: str | None = None
