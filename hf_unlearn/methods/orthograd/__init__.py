"""OrthoGrad (and its rank-1 ablation GRU), all in this folder:

- `config.py`: `OrthoGradConfig`, `GRUConfig` (every option, and the checks that name the fix);
- `trainer.py`: `OrthoGradTrainer`, `GRUTrainer` — the update rule in the docstring, one step in `training_step`;
- `batches.py`: the forget and retain batches stacked into one joint batch (one forward, one backward);
- `objective.py`: the per-sample terms φ (forget) and ℓ or KL (retain) whose gradients are projected;
- `projection.py`: the k×k solve (coefficients of the direction on the per-sample gradients) and diagnostics;
- `global_gram.py`: the Gram over every process's samples (DESIGN §5);
- `preconditioner.py`: Adam's diagonal D for `projection_space="preconditioned"`.

Per-sample gradients come from `hf_unlearn.gradients` through the `PerSampleGradients` interface.
"""

from .batches import concatenate_batches
from .config import (
    FORGET_LOSSES,
    GRANULARITIES,
    PER_SAMPLE_BACKENDS,
    PROJECTION_SCOPES,
    PROJECTION_SPACES,
    PROJECTIONS,
    RETAIN_LOSSES,
    GRUConfig,
    OrthoGradConfig,
)
from .trainer import GRUTrainer, OrthoGradTrainer


__all__ = [
    "FORGET_LOSSES",
    "GRANULARITIES",
    "PER_SAMPLE_BACKENDS",
    "PROJECTION_SCOPES",
    "PROJECTION_SPACES",
    "PROJECTIONS",
    "RETAIN_LOSSES",
    "GRUConfig",
    "GRUTrainer",
    "OrthoGradConfig",
    "OrthoGradTrainer",
    "concatenate_batches",
]
