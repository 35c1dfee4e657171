"""LUR (Learning to Unlearn while Retaining), all in this folder:

- `config.py`: `LURConfig` (every option, and the checks that name the fix);
- `trainer.py`: `LURTrainer` — the update rule in the docstring, one step in `training_step` → `_meta_step`;
- `objective.py`: L_u and L_r as functions of the trainable parameters, and how a step routes their evaluations;
- `meta.py`: the virtual step θ' = θ − β·∇L_inner(θ) and the meta-gradient as a surrogate loss (`LURObjective`).
"""

from .config import LURConfig
from .trainer import LURTrainer


__all__ = ["LURConfig", "LURTrainer"]
