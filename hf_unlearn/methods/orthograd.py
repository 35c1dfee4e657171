"""OrthoGrad: unlearn along the part of the forget gradient that is orthogonal to every per-sample retain gradient.

One step costs one forward and one backward of the concatenated forget+retain batch, like a GradDiff step, plus the
fused per-sample capture of `hf_unlearn.gradients` (DESIGN §2.2, §3). The direction reaches the optimizer as the
gradient of a linear surrogate loss, so `.grad` is never edited and any optimizer, gradient accumulation and DeepSpeed
(which owns `.grad`) see an ordinary backward.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..configs import UnlearnConfig
from ..distributed import whole_parameters, zero_stage
from ..gradients import (
    LoraGradientCapture,
    VmapPerSampleGradients,
    joint_gram_blocks,
    orthograd_direction,
    projection_diagnostics,
)
from ..gradients.global_gram import flat_per_sample_gradients, global_gram
from ..losses import (
    IGNORE_INDEX,
    model_sequence_log_prob,
    npo_per_example_loss,
    per_example_loss_from_log_prob,
    shift_labels_right,
    target_lengths,
)
from ..models.batch_norm import refuse_batch_norm_in_training
from ..trainer import UnlearnTrainer
from .reference import ReferencePolicy, reference_log_prob


FORGET_LOSSES = ("ga", "npo")
PROJECTIONS = ("full", "rank1")
PROJECTION_SCOPES = ("global", "local")
PER_SAMPLE_BACKENDS = ("auto", "fused", "vmap")


@dataclass
class OrthoGradConfig(UnlearnConfig):
    r"""
    Configuration for [`OrthoGradTrainer`].

    Parameters:
        > OrthoGrad objective

        retain_weight (`float`, *optional*, defaults to `0.5`):
            α ∈ [0, 1) in ``d = α·ḡ_r − (1 − α)·P⊥ g_f``. At `0` the update is orthogonal to every per-sample retain
            gradient (no retain loss moves to first order) but nothing pulls the retain loss down; `0.5` weighs plain
            retain descent and projected unlearning equally. The paper does not fix α for every task; `0.5` is this
            library's default, chosen because `UnlearnConfig`'s `1.0` would unlearn nothing.
        projection_tolerance (`float` or `None`, *optional*, defaults to `None`):
            Relative eigenvalue cut-off of the retain Gram: directions of span(G) with eigenvalue below
            ``tolerance·λ_max`` are treated as noise and not projected out. `None` uses ``10·k·eps`` of the Gram's
            dtype (`hf_unlearn.gradients.projection.default_rtol`).
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
        forget_loss (`str`, *optional*, defaults to `"ga"`):
            The unlearning objective whose gradient is projected: `"ga"` (raise ``L_f``, the mean per-example forget
            loss) or `"npo"` (lower NPO's loss; the reference is the model with its adapter disabled).
        npo_beta (`float`, *optional*, defaults to `0.1`):
            β of the NPO loss when `forget_loss="npo"`.

        > Per-sample gradients

        per_sample_gradients (`str`, *optional*, defaults to `"auto"`):
            `"fused"`: hooks on peft LoRA `lora_A`/`lora_B` Linears recover per-sample gradients from the step's one
            backward (every trainable parameter must be a LoRA weight). `"vmap"`: `torch.func.vmap` over samples, for
            any trainable parameters (full fine-tuning of a small model); it materialises k per-sample gradients.
            `"auto"`: fused when possible, vmap otherwise.
        vmap_chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Samples per `torch.func.vmap` chunk on the vmap path; bounds its peak memory. `None`: the whole batch.

    Defaults changed from [`UnlearnConfig`]: `retain_weight=0.5` (α must be below 1).
    """

    retain_weight: float = field(
        default=0.5,
        metadata={"help": "alpha in [0, 1): d = alpha * mean retain grad - (1 - alpha) * projected forget grad."},
    )
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
        if not 0.0 <= self.retain_weight < 1.0:
            raise ValueError(
                f"retain_weight is OrthoGrad's α and must be in [0, 1), got {self.retain_weight}: at α = 1 nothing is "
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
        super().__post_init__()


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


def concatenate_batches(
    first: dict[str, Any], second: dict[str, Any], pad_token_id: int = 0, is_encoder_decoder: bool = False
) -> dict[str, Any]:
    """Stack two collated batches into one along dim 0, right-padding 2-D token tensors to the longer sequence.

    Padding uses `-100` for `labels` (no loss), `0` for attention masks, and ``pad_token_id`` for other 2-D tensors
    (token ids). Right padding leaves every real position unchanged in a causal decoder, and encoder inputs are masked
    by their attention mask; an encoder-decoder batch whose `input_ids` need padding but carry no `attention_mask` is
    refused, since the padding would then change the encoder's output. Tensors of other ranks (audio features) must
    already agree beyond dim 0.
    """
    if first.keys() != second.keys():
        raise ValueError(
            f"The forget and retain batches have different keys ({sorted(first)} vs {sorted(second)}): collate both "
            "sets with the same data_collator and the same columns."
        )
    joint = {}
    for key, a in first.items():
        b = second[key]
        if not isinstance(a, Tensor):
            if a != b:
                raise ValueError(f"Non-tensor batch entry {key!r} differs between the forget and retain batches.")
            joint[key] = a
            continue
        if a.ndim == 2 and a.shape[1] != b.shape[1]:
            if key == "input_ids" and is_encoder_decoder and "attention_mask" not in first:
                raise ValueError(
                    "The forget and retain batches have different input lengths and no attention_mask, so padding "
                    "them to one length would change the encoder's output: make the collator return attention_mask."
                )
            if key == "labels":
                value = IGNORE_INDEX
            elif key.endswith("attention_mask"):
                value = 0
            else:
                value = pad_token_id
            length = max(a.shape[1], b.shape[1])
            a, b = (F.pad(t, (0, length - t.shape[1]), value=value) for t in (a, b))
        elif a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"Batch entry {key!r} has shape {tuple(a.shape)} in the forget batch and {tuple(b.shape)} in the "
                "retain batch; only 2-D token tensors are padded. Pad/trim features to the same size in the collator "
                "(Whisper: the same number of frames)."
            )
        joint[key] = torch.cat([a, b.to(a.device)])
    return joint


class OrthoGradTrainer(UnlearnTrainer):
    r"""
    OrthoGrad ([Shamsian et al., 2025](https://huggingface.co/papers/2503.02312)): the forget gradient is projected
    onto the orthogonal complement of **every** per-sample retain gradient of the step, not their mean (DESIGN §2.2):

        P⊥ g_f = g_f − G c,   c = (GᵀG)⁺ Gᵀ g_f,    d = α·ḡ_r − (1 − α)·P⊥ g_f

    with ``G = [∇ℓ(r_1) … ∇ℓ(r_k)]``, ``ḡ_r = (1/k) Σ_i ∇ℓ(r_i)``, ``g_f = ∇L_f`` (GA) or ``−∇L_NPO`` (NPO) and
    α = `retain_weight`. The optimizer descends along ``d``; with SGD and α = 0 the step is orthogonal to each
    ``∇ℓ(r_i)``, so to first order no retain example's loss changes. Adam (the default optimizer) preconditions
    ``d``, so orthogonality then holds only approximately.

    **One step.** The forget batch (m examples) and the retain batch (k examples) are concatenated into one batch
    (`concatenate_batches`) and run through ONE forward and ONE backward of ``Σ_j φ(f_j) + Σ_i ℓ(r_i)`` (φ = ℓ for GA,
    ``−npo_j`` for NPO), inside a [`~hf_unlearn.gradients.LoraGradientCapture`] that reads the per-sample gradients of
    the LoRA factors off that backward. The (m+k)² Gram gives ``GᵀG``, ``Gᵀg_f`` and ``‖g_f‖²``; the k×k solve gives
    coefficients with ``d = Σ_i a_i ∇ℓ(r_i) + (s/m)·Σ_j ∇φ(f_j)``, which the capture turns into ``d`` per LoRA
    parameter. ``d`` reaches the optimizer as the gradient of the linear surrogate ``Σ_p ⟨p, d_p⟩`` (``d`` held fixed),
    backpropagated through `accelerator.backward`: no second forward, and `.grad` is never edited (DeepSpeed owns it).
    Without LoRA (full fine-tuning), `torch.func.vmap` gives the same per-sample gradients, more slowly.

    **Losses.** ℓ is the mean token cross-entropy over each example's own targets (DESIGN §1); `num_items_in_batch`
    is ignored so that a sample's weight never depends on its length. The returned (logged) loss is the unprojected
    objective ``α·L_r + (1 − α)·L_u`` with ``L_u = −L_f`` (GA) or ``L_NPO``, divided by the accumulation steps as in
    [`~transformers.Trainer.training_step`]; the projection does not change it.

    **Gradient accumulation.** Each micro-step projects its own forget batch against its own retain batch (the retain
    batch drawn for that micro-step), and the optimizer receives the mean of the micro-step directions, exactly like
    the gradient of a mean loss. It is not the projection against the union of all micro-steps' retain samples.

    **Diagnostics** (logged every logging step, averaged): `orthograd/rank` (numerical rank of G kept by the solve),
    `orthograd/removed_fraction` (``‖Gc‖/‖g_f‖``), `orthograd/residual_norm`, `orthograd/max_retain_cosine`
    (``max_i |cos(d, ∇ℓ(r_i))|``, ~0 at α = 0), `orthograd/forget_retain_cosine` (``cos(g_f, ḡ_r)``; positive means
    the two conflict), `forget/loss`, `retain/loss` (and `npo/loss` with NPO).

    **Several processes** (DDP, DeepSpeed ZeRO-2/3): the projection is against the global retain batch (DESIGN §5):
    each process all-gathers the others' per-sample LoRA gradients, so N processes × batch b train like one process ×
    batch N·b; `projection_scope="local"` is the cheaper per-process operator. Under ZeRO-3 the LoRA weights are held
    whole (`hf_unlearn.distributed.whole_parameters`) while the surrogate is formed and backpropagated.

    Example:

    ```python
    from peft import LoraConfig

    from hf_unlearn import OrthoGradConfig, OrthoGradTrainer

    trainer = OrthoGradTrainer(
        model=model,
        args=OrthoGradConfig(output_dir="out", retain_weight=0.0, max_steps=20, per_device_retain_batch_size=16),
        forget_dataset=corpus["forget"],
        retain_dataset=corpus["retain"],
        data_collator=collator,
        peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    ```
    """

    _name = "OrthoGrad"
    _tag_names = UnlearnTrainer._tag_names + ["orthograd"]
    _paper = {
        "title": "Go Beyond Your Means: Unlearning with Per-Sample Gradient Orthogonalization",
        "id": "2503.02312",
    }

    def __init__(self, model: nn.Module, args: OrthoGradConfig, forget_dataset, retain_dataset=None, **kwargs):
        if not isinstance(args, OrthoGradConfig):
            raise TypeError(f"{type(self).__name__} needs an OrthoGradConfig, got {type(args).__name__}.")
        if retain_dataset is None or len(retain_dataset) == 0:
            raise ValueError(
                f"{type(self).__name__} projects the forget gradient against per-sample retain gradients at every "
                "step, also at retain_weight=0: pass a non-empty retain_dataset (or use GradAscentTrainer, which "
                "needs none)."
            )
        super().__init__(model, args, forget_dataset, retain_dataset, **kwargs)
        # The base class keeps the retain stream only when retain_weight > 0; the projection needs it at α = 0 too.
        self.retain_dataset = retain_dataset
        if self.args.n_gpu > 1:
            raise ValueError(
                "OrthoGrad does not run under torch DataParallel (several GPUs in one process): launch one process "
                "per GPU with `accelerate launch` (DDP), which projects against the global retain batch."
            )
        unwrapped = self.accelerator.unwrap_model(self.model)
        _refuse_batch_norm(unwrapped)
        self._per_sample = self._build_per_sample(unwrapped)
        if self.per_sample_backend == "vmap" and zero_stage(self.accelerator) == 3:
            raise ValueError(
                "OrthoGrad's torch.func (vmap) path for full fine-tuning does not run under DeepSpeed ZeRO-3, which "
                "partitions the very parameters vmap differentiates: train a peft LoRA adapter (fused capture), or use "
                "ZeRO-2 (accelerate_configs/deepspeed_zero2.yaml) or DDP."
            )
        self.reference = ReferencePolicy(unwrapped) if self.args.forget_loss == "npo" else None

    # ------------------------------------------------------------------ construction

    def _build_per_sample(self, model: nn.Module) -> LoraGradientCapture | VmapPerSampleGradients:
        """The per-sample gradient backend, built once so that bad models fail here rather than at the first step."""
        mode = self.args.per_sample_gradients
        if mode in ("auto", "fused"):
            try:
                return LoraGradientCapture(model)  # hooks are registered only while the capture is entered
            except ValueError:
                if mode == "fused":
                    raise
        if self.args.activation_checkpointing:
            raise ValueError(
                "The torch.func (vmap) path does not run under activation checkpointing: set "
                "activation_checkpointing=False, or train a peft LoRA adapter to use the fused capture."
            )
        return VmapPerSampleGradients(
            model, self._vmap_objective, chunk_size=self.args.vmap_chunk_size, randomness="different"
        )

    @property
    def per_sample_backend(self) -> str:
        """`"fused"` or `"vmap"`: how this trainer computes per-sample gradients."""
        return "fused" if isinstance(self._per_sample, LoraGradientCapture) else "vmap"

    # ------------------------------------------------------------------ per-sample objective

    def _forget_objective(self, log_prob: Tensor, losses: Tensor, ref_log_prob: Tensor | None) -> Tensor:
        """φ(f_j), the per-forget-example term whose mean gradient is ``g_f``. projection.py's convention is
        ``g_f = ∇(task loss raised by unlearning)``: ``ℓ(f_j)`` for GA, ``−npo_j`` for NPO (whose loss is lowered),
        with ``npo_j = (2/β)·log(1 + (π_θ/π_ref)^β) = (2/β)·softplus(β·(log π_θ − log π_ref))``."""
        if ref_log_prob is None:
            return losses
        return -npo_per_example_loss(log_prob, ref_log_prob, self.args.npo_beta)

    def _joint_objective(self, model: nn.Module, joint: dict[str, Tensor], num_forget: int, ref_log_prob):
        """``(φ [m+k], ℓ [m+k])``: the per-example terms to capture, and the per-example task losses for logging."""
        log_prob, lengths = model_sequence_log_prob(model, joint, self.model_config)
        losses = per_example_loss_from_log_prob(log_prob, lengths)  # ℓ [m+k]; raises on an empty target
        forget_terms = self._forget_objective(log_prob[:num_forget], losses[:num_forget], ref_log_prob)
        return torch.cat([forget_terms, losses[num_forget:]]), losses.detach()

    def _vmap_objective(self, model: nn.Module, example: dict[str, Tensor]) -> Tensor:
        """φ for one example under `torch.func.vmap`: no value-dependent branch (the empty-target check is done on
        the whole batch before), and the forget/retain choice is a `torch.where` on a per-example flag."""
        example = dict(example)
        is_forget = example.pop("_is_forget")
        ref_log_prob = example.pop("_reference_log_prob")
        log_prob, lengths = model_sequence_log_prob(model, example, self.model_config)
        losses = -log_prob / lengths
        forget_terms = self._forget_objective(log_prob, losses, ref_log_prob if self.reference is not None else None)
        return torch.where(is_forget, forget_terms, losses)

    def _target_lengths(self, labels: Tensor) -> Tensor:
        return target_lengths(labels, bool(getattr(self.model_config, "is_encoder_decoder", False)))

    # ------------------------------------------------------------------ the step

    def training_step(
        self, model: nn.Module, inputs: dict[str, Tensor | Any], num_items_in_batch: Tensor | int | None = None
    ) -> Tensor:
        model.train()
        forget = self._prepare_inputs(inputs)
        retain = self.next_retain_batch()
        num_forget = forget["labels"].shape[0]
        num_retain = retain["labels"].shape[0]
        if num_retain == 0:
            raise ValueError("The retain batch is empty: OrthoGrad needs at least one retain example per step.")
        unwrapped = self.accelerator.unwrap_model(model)
        pad_token_id = getattr(self.model_config, "pad_token_id", None)  # vision configs have none
        joint = concatenate_batches(
            forget,
            retain,
            0 if pad_token_id is None else pad_token_id,
            bool(getattr(self.model_config, "is_encoder_decoder", False)),
        )
        ref_log_prob = None
        if self.reference is not None:
            ref_log_prob = reference_log_prob(
                self.reference, unwrapped, lambda m: model_sequence_log_prob(m, forget, self.model_config)[0]
            )

        try:
            with self.compute_loss_context_manager():
                if self.per_sample_backend == "fused":
                    losses = self._capture_fused(model, unwrapped, joint, num_forget, ref_log_prob)
                else:
                    losses = self._capture_vmap(unwrapped, joint, num_forget, ref_log_prob)
            per_sample = self._per_sample
            forget_mask = torch.arange(num_forget + num_retain) < num_forget
            if self.args.projection_scope == "global" and self.accelerator.num_processes > 1:
                # Project against every rank's retain samples; each rank keeps its own samples' coefficients and
                # the gradient all-reduce, which averages over ranks, sums the parts back (hence the scale).
                shared = global_gram(flat_per_sample_gradients(per_sample.per_sample_gradients()), num_forget)
                gram, forget_mask, local_rows = shared.gram, shared.forget_mask, shared.local_rows
                scale = float(self.accelerator.num_processes)
            else:
                gram, local_rows, scale = per_sample.gram(), slice(0, num_forget + num_retain), 1.0
            retain_gram, cross, forget_sq_norm = joint_gram_blocks(gram, forget_mask)
            alpha = self.args.retain_weight
            direction = orthograd_direction(
                retain_gram, cross, alpha, self.args.projection_tolerance, rank_one=self.args.projection == "rank1"
            )
            # d = Σ_i a_i ∇ℓ(r_i) + s·g_f with g_f = (1/m) Σ_j ∇φ(f_j): per-forget-sample coefficient s/m.
            coefficients = retain_gram.new_zeros(gram.shape[0])
            coefficients[forget_mask.to(gram.device)] = direction.forget_coefficient / int(forget_mask.sum())
            coefficients[~forget_mask.to(gram.device)] = direction.retain_coefficients.to(retain_gram)
            coefficients = coefficients[local_rows] * scale
            update = per_sample.combine(coefficients)  # name → d_p
            diagnostics = projection_diagnostics(retain_gram, cross, forget_sq_norm, direction)
        finally:
            self._per_sample.clear()  # drop the captured activations now (also on error), not at the next step

        # ⟨p, d_p⟩ with d_p a constant is linear in p, so its gradient is exactly d_p: the optimizer, accumulation and
        # DeepSpeed receive d through an ordinary backward, without touching `.grad` and without a second forward.
        parameters = per_sample.parameters
        kwargs = {}
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            # DeepSpeed scales by the accumulation steps itself (transformers PR #35808): do it once, here.
            kwargs["scale_wrt_gas"] = False
        with whole_parameters(list(parameters.values())):
            surrogate = sum((param * update[name].detach()).sum() for name, param in parameters.items())
            self.accelerator.backward(surrogate / self.current_gradient_accumulation_steps, **kwargs)

        forget_loss = losses[:num_forget].mean()
        retain_loss = losses[num_forget:].mean()
        if ref_log_prob is None:
            unlearn_loss = -forget_loss
        else:
            log_prob = -losses[:num_forget] * self._target_lengths(forget["labels"])
            unlearn_loss = npo_per_example_loss(log_prob, ref_log_prob, self.args.npo_beta).mean()
            self.log_metric("npo/loss", unlearn_loss)
        self.log_metric("forget/loss", forget_loss)
        self.log_metric("retain/loss", retain_loss)
        for key, value in diagnostics.items():
            self.log_metric(f"orthograd/{key}", value)
        loss = alpha * retain_loss + (1.0 - alpha) * unlearn_loss
        return (loss / self.current_gradient_accumulation_steps).detach()

    def _capture_fused(self, model, unwrapped, joint, num_forget, ref_log_prob) -> Tensor:
        capture = self._per_sample
        if capture.model is not unwrapped:  # the model was replaced (e.g. re-wrapped): re-scan its LoRA layers
            capture = self._per_sample = LoraGradientCapture(unwrapped)
        with capture:
            phi, losses = self._joint_objective(self.surrogate_forward_model(model), joint, num_forget, ref_log_prob)
            self.check_finite(phi.detach(), "per-example loss")
            try:
                capture.backward(phi)
            except RuntimeError as error:
                if "checkpoint" not in str(error):
                    raise
                raise ValueError(
                    "Reentrant activation checkpointing does not support the gradient-only backward of the capture: "
                    "pass activation_checkpointing_kwargs={'use_reentrant': False}."
                ) from error
        return losses

    def _capture_vmap(self, unwrapped, joint, num_forget, ref_log_prob) -> Tensor:
        lengths = self._target_lengths(joint["labels"])
        if bool((lengths == 0).any()):
            raise ValueError(
                "An example has no target token (all labels are -100). Drop empty transcripts/answers from the "
                "dataset or raise the truncation length."
            )
        joint = dict(joint)
        config = self.model_config
        if config.is_encoder_decoder and "decoder_input_ids" not in joint:
            # Derived outside vmap: `shift_labels_right` writes in place into a fresh tensor, which vmap cannot batch.
            joint["decoder_input_ids"] = shift_labels_right(
                joint["labels"], config.pad_token_id, config.decoder_start_token_id
            )
        batch = joint["labels"].shape[0]
        is_forget = torch.arange(batch, device=joint["labels"].device) < num_forget
        reference = torch.zeros(batch, device=is_forget.device)
        if ref_log_prob is not None:
            reference = torch.cat([ref_log_prob.detach(), ref_log_prob.new_zeros(batch - num_forget)])
        joint["_is_forget"], joint["_reference_log_prob"] = is_forget, reference
        with _eager_attention(unwrapped):
            phi = self._per_sample.compute(joint)
        self.check_finite(phi, "per-example loss")
        if ref_log_prob is None:
            return phi
        # φ(f_j) is −npo_j, not ℓ(f_j): the forget task loss for logging needs one more (gradient-free) forward.
        with torch.no_grad():
            forget = {
                k: v[:num_forget] if isinstance(v, Tensor) else v for k, v in joint.items() if not k.startswith("_")
            }
            forget_losses = per_example_loss_from_log_prob(*model_sequence_log_prob(unwrapped, forget, config))
        return torch.cat([forget_losses, phi[num_forget:]])


class GRUTrainer(OrthoGradTrainer):
    r"""
    The rank-1 ablation of [`OrthoGradTrainer`] (DESIGN §2.1): the forget gradient is projected against the mean
    retain gradient only, and only when they conflict,

        g_f ← g_f − [⟨g_f, ḡ_r⟩ > 0]·(⟨g_f, ḡ_r⟩ / ‖ḡ_r‖²)·ḡ_r,    d = α·ḡ_r − (1 − α)·g_f

    in the spirit of GRU ([Wang et al., 2025](https://huggingface.co/papers/2503.09117)); the GRU paper's running
    average of the retain gradient and its other refinements are not reproduced. Same code, same cost and same
    diagnostics as OrthoGrad; use [`GRUConfig`] (or `OrthoGradConfig(projection="rank1")`).
    """

    _name = "GRU"
    _tag_names = UnlearnTrainer._tag_names + ["gru", "orthograd"]
    _paper = {"title": "GRU: Mitigating the Trade-off between Unlearning and Retention for LLMs", "id": "2503.09117"}


def _refuse_batch_norm(model: nn.Module) -> None:
    """The Trainer switches every module to training mode at each step, so a BatchNorm couples the samples of a batch
    (per-sample gradients undefined) unless it is frozen in eval mode. Refuse at construction, not at the first step."""
    refuse_batch_norm_in_training(model, "OrthoGrad's per-sample projection")


@contextlib.contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """Run a transformers model with eager attention for the duration of the block.

    transformers' SDPA mask builder skips the mask when the padding mask is all ones (`_ignore_causal_mask_sdpa`),
    a branch on tensor values that `torch.func.vmap` cannot run; the eager path builds the mask without branching and
    computes the same attention. Remove when transformers' SDPA mask creation is vmap-safe.
    """
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if not isinstance(base, PreTrainedModel) or base.config._attn_implementation == "eager":
        yield
        return
    previous = base.config._attn_implementation
    base.set_attn_implementation("eager")
    try:
        yield
    finally:
        base.set_attn_implementation(previous)
