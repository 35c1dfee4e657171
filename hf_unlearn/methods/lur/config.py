"""`LURConfig`: the options of LUR's meta step (the update rule is in `LURTrainer`'s docstring)."""

import math
from dataclasses import dataclass, field

from ...configs import UnlearnConfig


@dataclass
class LURConfig(UnlearnConfig):
    r"""
    Configuration for [`LURTrainer`]. The objective and the role of each field are given once, in the trainer's
    docstring.

    Parameters:
        > LUR meta step

        inner_lr (`float`, *optional*, defaults to `1e-2`):
            β, the size of the virtual step θ' = θ − β·∇L_u(θ). The virtual step is plain gradient descent on the raw
            gradient, whatever the optimizer, so β is not comparable to `learning_rate` under Adam. The implicit
            regulariser is −γβ·⟨∇L_r, ∇L_u⟩: choose β so that `lur/outer_loss_change` (L_r(θ') − L_r(θ)) is a
            visible fraction (a few percent) of `retain/loss`; too large and the virtual point leaves the region
            where the retain loss is meaningful (a non-finite virtual loss stops training with a message). `0` is
            GradDiff. `1e-2` suits LoRA adapters whose per-step gradient norms are O(1–10).
        retain_weight (`float`, *optional*, defaults to `10.0`):
            γ, the weight of the retain term. Must be > 0: without a retain term LUR is gradient ascent. At γ = 1 the
            default run collapsed the speech benchmark (retain WER 1.03 after 60 steps at lr 1e-3, NPO forget loss);
            γ = 10 keeps every embedded benchmark (`benchmarks/results/default_stability.md`) and is the weight the
            matched-forget tuning chose on speech, on text and for class-wise forgetting.
        meta_order (`str`, *optional*, defaults to `"second"`):
            `"second"`: the exact meta-gradient, one Hessian-vector product per step (double backward through the
            inner step). `"first"`: drop the Hessian term, ∇L_u(θ) + γ·∇L_r(θ'); cheaper, and the only choice for
            models with an op that has no double backward (fused kernels).
        objective_order (`str`, *optional*, defaults to `"unlearn_then_retain"`):
            Which objective takes the virtual step. `"unlearn_then_retain"` is the paper's; `"retain_then_unlearn"`
            takes a virtual retain step and scores the unlearning objective where it lands,
            J = γ·L_r(θ) + L_u(θ − β·∇L_r(θ)).
        forget_loss (`str`, *optional*, defaults to `"npo"`):
            The unlearning objective L_u. `"npo"`: NPO's bounded loss (2/β_npo)·mean log(1 + (π_θ/π_ref)^β_npo),
            π_ref the model with its adapter disabled. `"ga"`: gradient ascent, L_u = −L_f, which is unbounded below:
            nothing stops it once an example is forgotten, so at γ = 1 it keeps pushing the forget targets (the
            end-of-sequence token included) down until the model stops ending its outputs — measured on the speech
            benchmark: forget WER 5.57, transcripts several times too long, at step 60. NPO's loss tends to 0 and its
            gradient weight to 0 as π_θ/π_ref → 0, so the push fades once an example is forgotten; it is the default
            for that reason (changed from `"ga"`).
        npo_beta (`float`, *optional*, defaults to `0.1`):
            NPO's inverse temperature, used with `forget_loss="npo"`.
        inner_batch (`str`, *optional*, defaults to `"same"`):
            Which batches the two evaluations see. `"same"`: the step's forget batch drives the virtual step and the
            step's retain batch is scored at θ'. `"fresh"`: the objective scored at θ' (the *outer* one) is scored on
            a batch drawn for that purpose — an extra retain batch in the default order, an extra forget batch (an
            independent shuffle of the forget set) in the mirrored order — while evaluations at θ (the diagnostics,
            `retain/loss`/`forget/loss`) use the step's batch. That makes the meta objective a held-out ("query")
            estimate in the MAML sense and the conflict diagnostics independent of the batch the step was scored
            on. The step's batch is drawn in both modes, so the data streams do not depend on the logging interval.

        > Diagnostics

        diagnostics_every (`int` or `None`, *optional*, defaults to `None`):
            Compute the gradient-conflict diagnostics (`lur/grad_cosine`, `lur/grad_dot`, `lur/outer_loss_change`,
            `lur/hvp_norm`) every this many optimizer steps. They cost one more forward/backward of the outer batch
            (and, in second order, one more Hessian-vector product). `None`: on logging steps only (the steps
            `logging_steps` and `logging_first_step` log), so logged values are never stale. `0`: never.

    Example:

    ```python
    from hf_unlearn import LURConfig

    args = LURConfig(output_dir="out", inner_lr=1e-2, retain_weight=10.0, meta_order="second", max_steps=50)
    ```
    """

    retain_weight: float = field(default=10.0, metadata={"help": "gamma: weight of the retain term (> 0)."})
    inner_lr: float = field(
        default=1e-2,
        metadata={"help": "beta: virtual step size, theta' = theta - beta * grad L_u (>= 0; 0 gives GradDiff)."},
    )
    meta_order: str = field(
        default="second",
        metadata={
            "help": "'second': exact meta-gradient (one Hessian-vector product); 'first': drop the Hessian term.",
            "choices": ["second", "first"],
        },
    )
    objective_order: str = field(
        default="unlearn_then_retain",
        metadata={
            "help": "Which objective takes the virtual step.",
            "choices": ["unlearn_then_retain", "retain_then_unlearn"],
        },
    )
    forget_loss: str = field(
        default="npo",
        metadata={
            "help": "Unlearning objective L_u: 'npo' (bounded; the default) or 'ga' (-L_f, unbounded).",
            "choices": ["npo", "ga"],
        },
    )
    npo_beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature (forget_loss='npo'), > 0."})
    inner_batch: str = field(
        default="same",
        metadata={
            "help": "'same': the step's batches throughout; 'fresh': a new draw for the evaluation at theta'.",
            "choices": ["same", "fresh"],
        },
    )
    diagnostics_every: int | None = field(
        default=None,
        metadata={"help": "Gradient-conflict diagnostics every N optimizer steps (None: logging steps; 0: never)."},
    )

    def __post_init__(self):
        if not math.isfinite(self.inner_lr) or self.inner_lr < 0:
            raise ValueError(
                f"inner_lr (β, the virtual step size) must be a finite number >= 0, got {self.inner_lr}: use a small "
                "positive value such as 1e-2, or 0 for plain GradDiff."
            )
        if self.retain_weight <= 0:
            raise ValueError(
                f"LUR needs a retain term, got retain_weight={self.retain_weight}: set retain_weight > 0 (γ, e.g. "
                "1.0), or use GradAscentConfig/NPOConfig for unlearning without one."
            )
        choices = {
            "meta_order": ("second", "first"),
            "objective_order": ("unlearn_then_retain", "retain_then_unlearn"),
            "forget_loss": ("ga", "npo"),
            "inner_batch": ("same", "fresh"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.forget_loss == "npo" and not (math.isfinite(self.npo_beta) and self.npo_beta > 0):
            raise ValueError(f"npo_beta must be a finite number > 0, got {self.npo_beta}; NPO's default is 0.1.")
        if self.diagnostics_every is not None and self.diagnostics_every < 0:
            raise ValueError(
                f"diagnostics_every must be >= 0 or None (on logging steps), got {self.diagnostics_every}; 0 turns "
                "the diagnostics off."
            )
        super().__post_init__()
