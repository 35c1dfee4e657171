"""`OrthoGradConfig` and `GRUConfig`: the options of OrthoGrad's projected step (the update rule is in `trainer.py`)."""

from dataclasses import dataclass, field
from typing import ClassVar

from ...configs import UnlearnConfig, deprecated_alias, take_renamed_fields


FORGET_LOSSES = ("ga", "npo")
PROJECTIONS = ("full", "rank1")
PROJECTION_SCOPES = ("global", "local")
PER_SAMPLE_BACKENDS = ("auto", "fused", "vmap")
GRANULARITIES = ("global", "per_tensor")
PROJECTION_SPACES = ("gradient", "preconditioned")
RETAIN_LOSSES = ("ce", "kl")


@dataclass
class OrthoGradConfig(UnlearnConfig):
    r"""
    Configuration for [`OrthoGradTrainer`].

    Parameters:
        > OrthoGrad objective

        retain_mix (`float`, *optional*, defaults to `0.5`):
            α ∈ [0, 1), the weight of plain retain descent in the update rule ([`OrthoGradTrainer`]). At `0` the
            update is orthogonal to every per-sample retain gradient (no retain loss moves to first order) but nothing
            pulls the retain loss down; `0.5` weighs plain retain descent and projected unlearning equally. The paper
            does not fix α for every task; `0.5` is this library's default (α was called `retain_weight` before; that
            name is accepted for one release with a FutureWarning, and `retain_weight` is otherwise unused by
            OrthoGrad).
        projection_tolerance (`float` or `None`, *optional*, defaults to `None`):
            Relative eigenvalue cut-off of the retain Gram: directions of span(G) with eigenvalue below
            ``tolerance·λ_max`` are treated as noise and not projected out. `None` uses ``10·k·eps`` of the Gram's
            dtype (`hf_unlearn.methods.orthograd.projection.default_rtol`).
        projection (`str`, *optional*, defaults to `"full"`):
            `"full"`: project against every per-sample retain gradient (OrthoGrad). `"rank1"`: project against the
            mean retain gradient only, and only when it conflicts with the forget gradient (the GRU-style ablation,
            also available as [`GRUConfig`]).
        projection_scope (`str`, *optional*, defaults to `"global"`):
            Only matters with several processes. `"global"`: the projection is against the retain samples of every
            process (DESIGN §5) — each process all-gathers the others' per-sample LoRA gradients (n·P numbers per
            process per step) and the result equals one process with the whole batch. `"local"`: each process
            projects its own forget gradient against its own retain samples and the directions are averaged — no
            extra communication, but the update is then orthogonal to no particular retain sample.
        projection_granularity (`str`, *optional*, defaults to `"global"`):
            `"global"`: one projection of the whole forget gradient against the per-sample retain gradients over all
            trainable parameters (removes at most k directions). `"per_tensor"`: as the OrthoGrad authors' code, each
            parameter tensor's forget gradient is projected against that tensor's own per-sample retain gradients
            (removes up to #tensors × k directions; the update is then orthogonal to every g_i per tensor, a stricter
            constraint). Both use the per-tensor k×k Grams the capture forms layer by layer.
        projection_space (`str`, *optional*, defaults to `"gradient"`):
            `"gradient"`: project in the Euclidean metric; the optimizer then rescales the direction (Adam's step is
            not orthogonal to the retain gradients). `"preconditioned"`: project in the metric of an Adam-style
            diagonal preconditioner ``D = 1/(√v̂ + ε)`` kept by the trainer and take the step ``−η·D·d``, which is
            orthogonal to every per-sample retain gradient; needs `optim="sgd"` (see [`OrthoGradTrainer`]).
        retain_loss (`str`, *optional*, defaults to `"ce"`):
            The per-sample retain objective whose gradients span the protected subspace (and that α descends on):
            `"ce"` (each retain example's mean token cross-entropy) or `"kl"` (its mean token KL(π_ref ‖ π_θ) to
            the original model: the adapter disabled under LoRA, a frozen copy otherwise, as NPO's reference).
        forget_loss (`str`, *optional*, defaults to `"ga"`):
            The unlearning objective whose gradient is projected: `"ga"` (raise ``L_f``, the mean per-example forget
            loss) or `"npo"` (lower NPO's loss; the reference is the model with its adapter disabled).
        npo_beta (`float`, *optional*, defaults to `0.1`):
            β of the NPO loss when `forget_loss="npo"`.

        > Per-sample gradients

        per_sample_gradients (`str`, *optional*, defaults to `"auto"`):
            `"fused"`: hooks recover per-sample gradients from the step's one backward
            ([`~hf_unlearn.gradients.FusedGradientCapture`]): peft LoRA weights, or full fine-tuning of nn.Linear,
            transformers Conv1D, nn.Conv1d/2d, nn.Embedding, nn.LayerNorm and frozen nn.BatchNorm weights. `"vmap"`:
            `torch.func.vmap` over samples, for any trainable parameters; it materialises k per-sample gradients.
            `"auto"`: fused when every trainable parameter is supported, vmap otherwise (one log line names the
            unsupported layer).
        vmap_chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Samples per `torch.func.vmap` chunk on the vmap path; bounds its peak memory. `None`: the whole batch.

    `retain_weight` (the retain-loss weight λ of other methods) does not apply: α mixes the two terms instead.
    """

    retain_mix: float = field(
        default=0.5,
        metadata={"help": "alpha in [0, 1): d = alpha * mean retain grad - (1 - alpha) * projected forget grad."},
    )
    renamed_fields: ClassVar[dict[str, str]] = {"retain_weight": "retain_mix"}
    retain_weight: float | None = deprecated_alias("OrthoGrad's alpha", "retain_mix")
    projection_tolerance: float | None = field(
        default=None,
        metadata={"help": "Relative eigenvalue cut-off of the retain Gram (default: 10 * k * eps of its dtype)."},
    )
    projection: str = field(
        default="full",
        metadata={
            "help": "'full' (every per-sample retain gradient) or 'rank1' (mean retain gradient, GRU-style).",
            "choices": list(PROJECTIONS),
        },
    )
    forget_loss: str = field(
        default="ga",
        metadata={"help": "Unlearning objective whose gradient is projected.", "choices": list(FORGET_LOSSES)},
    )
    npo_beta: float = field(
        default=0.1, metadata={"help": "NPO inverse temperature beta (> 0), for forget_loss='npo'."}
    )
    projection_scope: str = field(
        default="global",
        metadata={
            "help": "With several processes: project against every process's retain samples ('global', exact) or "
            "each process against its own ('local', cheaper, a different operator).",
            "choices": list(PROJECTION_SCOPES),
        },
    )
    projection_granularity: str = field(
        default="global",
        metadata={
            "help": "'global' (one projection over all parameters) or 'per_tensor' (each tensor against its own "
            "per-sample retain gradients, as the authors' code).",
            "choices": list(GRANULARITIES),
        },
    )
    projection_space: str = field(
        default="gradient",
        metadata={
            "help": "'gradient' (Euclidean projection) or 'preconditioned' (in the metric of an Adam-style diagonal "
            "preconditioner, so that the SGD step -lr*D*d is orthogonal to the retain gradients; needs optim='sgd').",
            "choices": list(PROJECTION_SPACES),
        },
    )
    retain_loss: str = field(
        default="ce",
        metadata={
            "help": "Per-sample retain objective: 'ce' (cross-entropy) or 'kl' (KL to the original model).",
            "choices": list(RETAIN_LOSSES),
        },
    )
    per_sample_gradients: str = field(
        default="auto",
        metadata={
            "help": "How per-sample gradients are computed: fused LoRA capture, torch.func vmap, or auto.",
            "choices": list(PER_SAMPLE_BACKENDS),
        },
    )
    vmap_chunk_size: int | None = field(
        default=None, metadata={"help": "Samples per torch.func.vmap chunk on the vmap path (default: whole batch)."}
    )

    def __post_init__(self):
        take_renamed_fields(self)
        if not 0.0 <= self.retain_mix < 1.0:
            raise ValueError(
                f"retain_mix is OrthoGrad's α and must be in [0, 1), got {self.retain_mix}: at α = 1 nothing is "
                "unlearned. Use 0 for a pure projected forget step, 0.5 (the default) to also descend on the retain "
                "loss."
            )
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}.")
        if self.projection_scope not in PROJECTION_SCOPES:
            raise ValueError(f"projection_scope must be one of {PROJECTION_SCOPES}, got {self.projection_scope!r}.")
        if self.forget_loss not in FORGET_LOSSES:
            raise ValueError(f"forget_loss must be one of {FORGET_LOSSES}, got {self.forget_loss!r}.")
        if self.per_sample_gradients not in PER_SAMPLE_BACKENDS:
            raise ValueError(
                f"per_sample_gradients must be one of {PER_SAMPLE_BACKENDS}, got {self.per_sample_gradients!r}."
            )
        if self.npo_beta <= 0:
            raise ValueError(f"npo_beta must be > 0, got {self.npo_beta}.")
        if self.projection_tolerance is not None and not 0.0 <= self.projection_tolerance < 1.0:
            raise ValueError(
                f"projection_tolerance is a relative eigenvalue cut-off in [0, 1), got {self.projection_tolerance}; "
                "leave it None for the dtype-aware default."
            )
        if self.vmap_chunk_size is not None and self.vmap_chunk_size < 1:
            raise ValueError(f"vmap_chunk_size must be >= 1 or None, got {self.vmap_chunk_size}.")
        for name, choices in (
            ("projection_granularity", GRANULARITIES),
            ("projection_space", PROJECTION_SPACES),
            ("retain_loss", RETAIN_LOSSES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}.")
        super().__post_init__()
        if self.projection_space == "preconditioned" and str(getattr(self.optim, "value", self.optim)) != "sgd":
            raise ValueError(
                f"projection_space='preconditioned' already applies Adam's diagonal scaling D to the projected "
                f"direction, so the optimizer must take a plain step: set optim='sgd' (got optim={self.optim!r}; "
                "a second Adam would rescale the step again and break its orthogonality)."
            )
        if self.projection_space == "preconditioned" and self.max_grad_norm:
            raise ValueError(
                f"projection_space='preconditioned' hands the optimizer D·d, which has Adam's per-coordinate step "
                f"scale (norm ≈ √#parameters), so max_grad_norm={self.max_grad_norm} would clip it to a standstill: "
                "set max_grad_norm=0 (Adam's own steps are nearly invariant to gradient clipping, so nothing is lost)."
            )

    @property
    def has_retain_term(self) -> bool:
        return self.retain_mix > 0


@dataclass
class GRUConfig(OrthoGradConfig):
    r"""
    Configuration for [`GRUTrainer`]: [`OrthoGradConfig`] with `projection="rank1"` by default.
    """

    projection: str = field(
        default="rank1",
        metadata={
            "help": "'rank1' (mean retain gradient, GRU-style) or 'full' (every per-sample retain gradient).",
            "choices": list(PROJECTIONS),
        },
    )
