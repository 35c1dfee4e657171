"""`OrthoGradTrainer` and `GRUTrainer`: the projected step, read top to bottom in `training_step`.

One step costs one forward and one backward of the concatenated forget+retain batch, like a GradDiff step, plus the
per-sample gradient readout of `hf_unlearn.gradients` (DESIGN §2.2, §3). The direction reaches the optimizer as the
gradient of a linear surrogate loss, so `.grad` is never edited and any optimizer, gradient accumulation and DeepSpeed
(which owns `.grad`) see an ordinary backward. The update rule is written once, in `OrthoGradTrainer`'s docstring.
"""

from typing import Any

import torch
from torch import Tensor, nn
from transformers.utils import logging

from ...gradients import FusedGradientCapture, PerSampleGradients, UnsupportedLayerError, VmapPerSampleGradients
from ...integrations.accelerate import zero_stage
from ...integrations.deepspeed import whole_parameters
from ...integrations.transformers import accumulation_steps, backward_like_trainer, eager_attention, prepare_inputs
from ...losses import (
    model_sequence_log_prob,
    model_target_logits,
    per_example_loss_from_log_prob,
    sequence_log_prob,
    shift_labels_right,
    target_lengths,
    unlearning_loss,
)
from ...models.batch_norm import refuse_batch_norm_in_training
from ...trainer import UnlearnTrainer
from ..reference import ReferencePolicy, reference_log_prob
from .batches import concatenate_batches
from .config import OrthoGradConfig
from .global_gram import global_gram
from .objective import ReferenceOutputs, forget_objective, log_softmax, per_example_kl
from .preconditioner import DiagonalPreconditioner
from .projection import joint_gram_blocks, stacked_orthograd_directions, stacked_projection_diagnostics


logger = logging.get_logger(__name__)


class OrthoGradTrainer(UnlearnTrainer):
    r"""
    OrthoGrad ([Shamsian et al., 2025](https://huggingface.co/papers/2503.02312)): the forget gradient is projected
    onto the orthogonal complement of **every** per-sample retain gradient of the step, not their mean (DESIGN §2.2):

        P⊥ g_f = g_f − G c,   c = (GᵀG)⁺ Gᵀ g_f,    d = α·ḡ_r − (1 − α)·P⊥ g_f

    with ``G = [∇ℓ(r_1) … ∇ℓ(r_k)]``, ``ḡ_r = (1/k) Σ_i ∇ℓ(r_i)``, ``g_f = ∇L_f`` (GA) or ``−∇L_NPO`` (NPO) and
    α = `retain_mix`. The optimizer descends along ``d``; with SGD and α = 0 the step is orthogonal to each
    ``∇ℓ(r_i)``, so to first order no retain example's loss changes. Adam rescales ``d`` coordinate-wise, so in the
    default `projection_space="gradient"` orthogonality then holds only approximately (see below).

    **One step.** The forget batch (m examples) and the retain batch (k examples) are concatenated into one batch
    (`concatenate_batches`) and run through ONE forward and ONE backward of ``Σ_j φ(f_j) + Σ_i ℓ(r_i)`` (φ = ℓ for GA,
    ``−npo_j`` for NPO), inside a [`~hf_unlearn.gradients.FusedGradientCapture`] that reads the per-sample gradients
    off that backward from each layer's input and output gradient — peft LoRA factors, or, for full fine-tuning,
    nn.Linear / Conv1D / Conv1d/2d / Embedding / LayerNorm weights. The (m+k)² Gram gives ``GᵀG``, ``Gᵀg_f`` and
    ``‖g_f‖²``; the k×k solve gives coefficients with ``d = Σ_i a_i ∇ℓ(r_i) + (s/m)·Σ_j ∇φ(f_j)``, which the capture
    turns into ``d`` per parameter. ``d`` reaches the optimizer as the gradient of the linear surrogate
    ``Σ_p ⟨p, d_p⟩`` (``d`` held fixed), backpropagated through `accelerator.backward`: no second forward, and
    `.grad` is never edited (DeepSpeed owns it). A model with a trainable layer the capture cannot read (a custom
    norm, tied embeddings, a position embedding broadcast over the batch) uses `torch.func.vmap` instead, with one
    log line naming the layer.

    **Per-tensor projection** (`projection_granularity="per_tensor"`, as in the authors' code): each parameter
    tensor p is projected separately, ``P⊥_p g_{f,p} = g_{f,p} − G_p c_p`` with ``c_p = (G_pᵀG_p)⁺ G_pᵀ g_{f,p}``,
    from the tensor's own k×k Gram (formed layer by layer anyway); up to #tensors × k directions are removed instead
    of k, and the step is orthogonal to every ``∇_p ℓ(r_i)`` tensor by tensor.

    **Preconditioned space** (`projection_space="preconditioned"`, with `optim="sgd"`). The trainer keeps an Adam
    second moment of the step's per-sample gradients, ``v ← β2·v + (1 − β2)·(1/N) Σ_i g_i²`` over the N forget and
    retain samples, and ``D = 1/(√v̂ + ε)`` (``v̂ = v/(1 − β2^t)``; β2 = `adam_beta2`, ε = `adam_epsilon`). Per-sample,
    not the batch gradient: ``d`` lies in the span of the ``g_i``, so D is bounded wherever ``d`` is non-zero. The projection is done in the
    metric D — ``c = (GᵀDG)⁺ GᵀD g_f`` — and the optimizer receives ``D·d``, so the SGD step ``−η·D·d`` satisfies
    ``⟨D·d, ∇ℓ(r_i)⟩ = 0`` for every retain sample at α = 0: the step actually taken leaves every retain loss
    unchanged to first order. D does not depend on the projected ``d``; that is what makes the constraint linear.
    With a stock Adam instead, ``v`` would include ``d²`` itself and the first step would be ≈ ``η·sign(d)``, which
    no linear projection can make orthogonal. *Relation to the reference code*: it turns every per-sample gradient
    into an Adam direction ``u_i = D g_i``, ``u_f = D g_f``, projects ``u_f`` against the ``u_i`` in the Euclidean
    metric and takes a plain step; that step is orthogonal to ``D g_i``, not to ``g_i``. Both steps lie in
    span{D g_f, D g_i}; ours is the reference construction with the inner product ``⟨u, w⟩_{D⁻¹}``, chosen because
    the first-order change of retain loss i is ``⟨∇ℓ(r_i), Δθ⟩``, the quantity OrthoGrad sets to zero. *Momentum*
    (β1 > 0, e.g. SGD momentum through `optim_args`) adds earlier steps' directions, which were orthogonal to earlier
    retain samples only, so the step is then orthogonal only in its current-step part; this is what β1 > 0 does to
    the reference's Adam directions too. Weight decay adds ``λθ`` to the step and breaks orthogonality likewise. The
    second moment lives on the trainer (it is not in the optimizer's checkpoint: a resumed run restarts it) and is
    updated once per micro-step under gradient accumulation. Diagnostics are then in the D metric.

    **KL retain loss** (`retain_loss="kl"`): the retain term of each sample is its mean token
    ``KL(π_ref ‖ π_θ)`` over its own targets, π_ref the model before unlearning (the adapter disabled under LoRA, a
    frozen copy otherwise, as NPO's reference); its per-sample gradients span G, and α descends on its mean. The
    task cross-entropy is still logged as `retain/loss`, the KL as `retain/kl`.

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
    each process all-gathers the others' per-sample gradients, so N processes × batch b train like one process ×
    batch N·b (per-tensor and preconditioned alike; the preconditioner's second moment is all-reduced, so D is the same on
    every process; ZeRO-3 refuses the preconditioned space); `projection_scope="local"` is the cheaper per-process
    operator. Under ZeRO-3 the LoRA weights are held
    whole (`hf_unlearn.distributed.whole_parameters`) while the surrogate is formed and backpropagated.

    Example:

    ```python
    from peft import LoraConfig

    from hf_unlearn import OrthoGradConfig, OrthoGradTrainer

    trainer = OrthoGradTrainer(
        model=model,
        args=OrthoGradConfig(output_dir="out", retain_mix=0.0, max_steps=20, per_device_retain_batch_size=16),
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
                "step, also at retain_mix=0: pass a non-empty retain_dataset (or use GradAscentTrainer, which "
                "needs none)."
            )
        super().__init__(model, args, forget_dataset, retain_dataset, **kwargs)
        # The base class keeps the retain stream only when retain_mix > 0; the projection needs it at α = 0 too.
        self.retain_dataset = retain_dataset
        if self.args.n_gpu > 1:
            raise ValueError(
                "OrthoGrad does not run under torch DataParallel (several GPUs in one process): launch one process "
                "per GPU with `accelerate launch` (DDP), which projects against the global retain batch."
            )
        unwrapped = self.accelerator.unwrap_model(self.model)
        # The Trainer switches every module to training mode at each step, so a BatchNorm would couple the samples
        # of a batch (per-sample gradients undefined) unless frozen in eval mode: refuse now, not at the first step.
        refuse_batch_norm_in_training(unwrapped, "OrthoGrad's per-sample projection")
        self._per_sample = self._build_per_sample(unwrapped)
        if self.per_sample_backend == "vmap" and zero_stage(self.accelerator) == 3:
            raise ValueError(
                "OrthoGrad's torch.func (vmap) path for full fine-tuning does not run under DeepSpeed ZeRO-3, which "
                "partitions the very parameters vmap differentiates: train a peft LoRA adapter (fused capture), or use "
                "ZeRO-2 (accelerate_configs/deepspeed_zero2.yaml) or DDP."
            )
        if self.args.projection_space == "preconditioned" and zero_stage(self.accelerator) == 3:
            raise ValueError(
                "projection_space='preconditioned' keeps a whole-parameter second moment, which ZeRO-3 partitions: "
                "use ZeRO-2 or DDP, or projection_space='gradient'."
            )
        needs_reference = self.args.forget_loss == "npo" or self.args.retain_loss == "kl"
        self.reference = ReferencePolicy(unwrapped) if needs_reference else None
        self.preconditioner = (
            DiagonalPreconditioner(self.args.adam_beta2, self.args.adam_epsilon)
            if self.args.projection_space == "preconditioned"
            else None
        )

    # ------------------------------------------------------------------ construction

    def _build_per_sample(self, model: nn.Module) -> PerSampleGradients:
        """The per-sample gradient backend, built once so that bad models fail here rather than at the first step."""
        if self.args.per_sample_gradients in ("auto", "fused"):
            try:
                return FusedGradientCapture(model)  # hooks are registered only while the capture is entered
            except UnsupportedLayerError as error:
                return self._fallback(model, error)
        return self._vmap_backend(model)

    def _fallback(self, model: nn.Module, error: UnsupportedLayerError) -> VmapPerSampleGradients:
        """vmap instead of the fused capture, with one log line naming the layer; an error if "fused" was asked."""
        if self.args.per_sample_gradients == "fused":
            raise ValueError(
                f"The fused per-sample capture cannot cover this model: {error} Use per_sample_gradients='auto' or "
                "'vmap' (VmapPerSampleGradients), or freeze that layer."
            ) from error
        logger.warning(f"OrthoGrad: per-sample gradients by torch.func vmap (slower), since {error}")
        return self._vmap_backend(model)

    def _vmap_backend(self, model: nn.Module) -> VmapPerSampleGradients:
        if self.args.activation_checkpointing:
            raise ValueError(
                "The torch.func (vmap) path does not run under activation checkpointing: set "
                "activation_checkpointing=False, or train a model whose trainable layers the fused capture supports."
            )
        return VmapPerSampleGradients(
            model, self._vmap_objective, chunk_size=self.args.vmap_chunk_size, randomness="different"
        )

    @property
    def per_sample_backend(self) -> str:
        """`"fused"` or `"vmap"`: how this trainer computes per-sample gradients."""
        return "fused" if isinstance(self._per_sample, FusedGradientCapture) else "vmap"

    # ------------------------------------------------------------------ per-sample objective

    def _joint_objective(
        self, model: nn.Module, joint: dict[str, Tensor], num_forget: int, reference: ReferenceOutputs
    ):
        """``(φ [m+k], ℓ [m+k], retain term [k])``: the per-example terms to capture (forget φ, then the retain
        objective: ℓ or KL), the per-example task losses for logging, and the retain objective's values."""
        logits, labels = model_target_logits(model, joint, self.model_config)
        log_prob, lengths = sequence_log_prob(logits, labels)
        losses = per_example_loss_from_log_prob(log_prob, lengths)  # ℓ [m+k]; raises on an empty target
        forget_terms = forget_objective(
            log_prob[:num_forget], lengths[:num_forget], reference.forget_log_prob, self.args.npo_beta
        )
        retain_terms = losses[num_forget:]
        if reference.retain_log_probs is not None:
            retain_terms = per_example_kl(reference.retain_log_probs, logits[num_forget:], labels[num_forget:])
        return torch.cat([forget_terms, retain_terms]), losses.detach(), retain_terms.detach()

    def _vmap_objective(self, model: nn.Module, example: dict[str, Tensor]) -> Tensor:
        """φ for one example under `torch.func.vmap`: no value-dependent branch (the empty-target check is done on
        the whole batch before), and the forget/retain choice is a `torch.where` on a per-example flag."""
        example = dict(example)
        is_forget = example.pop("_is_forget")
        ref_log_prob = example.pop("_reference_log_prob")
        ref_token_log_probs = example.pop("_reference_token_log_probs", None)
        logits, labels = model_target_logits(model, example, self.model_config)
        log_prob, lengths = sequence_log_prob(logits, labels)
        losses = -log_prob / lengths
        forget_ref = ref_log_prob if self.args.forget_loss == "npo" else None
        forget_terms = forget_objective(log_prob, lengths, forget_ref, self.args.npo_beta)
        retain_terms = losses
        if ref_token_log_probs is not None:
            retain_terms = per_example_kl(ref_token_log_probs, logits, labels)
        return torch.where(is_forget, forget_terms, retain_terms)

    def _target_lengths(self, labels: Tensor) -> Tensor:
        return target_lengths(labels, bool(getattr(self.model_config, "is_encoder_decoder", False)))

    def _reference_outputs(self, unwrapped: nn.Module, forget, joint, num_forget: int) -> ReferenceOutputs:
        """π_ref's forget sequence log-probabilities (NPO) and retain token log-distributions (KL), without grad."""
        reference = ReferenceOutputs()
        if self.args.forget_loss == "npo":
            reference.forget_log_prob = reference_log_prob(
                self.reference, unwrapped, lambda m: model_sequence_log_prob(m, forget, self.model_config)[0]
            )
        if self.args.retain_loss == "kl":
            # Scored on the retain rows of the joint (padded) batch, so positions line up with the policy's logits.
            retain = {k: v[num_forget:] if isinstance(v, Tensor) else v for k, v in joint.items()}
            reference.retain_log_probs = reference_log_prob(
                self.reference, unwrapped, lambda m: log_softmax(model_target_logits(m, retain, self.model_config)[0])
            )
        return reference

    # ------------------------------------------------------------------ the step

    def training_step(
        self, model: nn.Module, inputs: dict[str, Tensor | Any], num_items_in_batch: Tensor | int | None = None
    ) -> Tensor:
        """One OrthoGrad step, in the order of the update rule (class docstring): the joint batch, π_ref's scores,
        per-sample gradients and the direction ``d``, ``d`` handed to the optimizer, the objective logged."""
        model.train()
        forget, joint, num_forget, num_retain = self._joint_batch(inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        reference = self._reference_outputs(unwrapped, forget, joint, num_forget)
        losses, retain_terms, update, diagnostics = self._per_sample_direction(
            model, unwrapped, joint, num_forget, num_retain, reference
        )
        self._backward_direction(update)
        return self._logged_objective(forget, num_forget, losses, retain_terms, reference, diagnostics)

    def _joint_batch(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int, int]:
        """The step's forget batch, the next retain batch, and the two stacked into one joint batch (one forward)."""
        forget = prepare_inputs(self, inputs)
        retain = self.next_retain_batch()
        num_forget = forget["labels"].shape[0]
        num_retain = retain["labels"].shape[0]
        if num_retain == 0:
            raise ValueError("The retain batch is empty: OrthoGrad needs at least one retain example per step.")
        pad_token_id = getattr(self.model_config, "pad_token_id", None)  # vision configs have none
        joint = concatenate_batches(
            forget,
            retain,
            0 if pad_token_id is None else pad_token_id,
            bool(getattr(self.model_config, "is_encoder_decoder", False)),
        )
        return forget, joint, num_forget, num_retain

    def _per_sample_direction(self, model, unwrapped, joint, num_forget, num_retain, reference):
        """``(ℓ [m+k], retain terms [k], {name: u_p}, diagnostics)``: per-sample gradients of the joint batch and the
        projected direction, falling back to vmap for good if the fused capture meets a layer it cannot read."""
        try:
            return self._capture_and_project(model, unwrapped, joint, num_forget, num_retain, reference)
        except UnsupportedLayerError as error:
            # Found only once the step ran (a layer broadcast over the batch): fall back for good, redo this step.
            self._per_sample.clear()
            self._per_sample = self._fallback(unwrapped, error)
            return self._capture_and_project(model, unwrapped, joint, num_forget, num_retain, reference)

    def _backward_direction(self, update: dict[str, Tensor]) -> None:
        """Hand ``d`` to the optimizer: ⟨p, d_p⟩ with d_p a constant is linear in p, so its gradient is exactly d_p.
        The optimizer, accumulation and DeepSpeed receive d through an ordinary backward, without touching `.grad`
        and without a second forward."""
        parameters = self._per_sample.parameters
        with whole_parameters(list(parameters.values())):
            surrogate = sum((param * update[name].detach()).sum() for name, param in parameters.items())
            backward_like_trainer(self, surrogate)

    def _logged_objective(self, forget, num_forget, losses, retain_terms, reference, diagnostics) -> Tensor:
        """Log the step's losses and diagnostics; return the unprojected objective ``α·L_r + (1 − α)·L_u`` divided by
        the accumulation steps, as `Trainer.training_step` returns its loss (the projection does not change it)."""
        forget_loss = losses[:num_forget].mean()
        retain_loss = losses[num_forget:].mean()
        if reference.forget_log_prob is None:
            unlearn_loss = -forget_loss
        else:
            lengths = self._target_lengths(forget["labels"])
            log_prob = -losses[:num_forget] * lengths
            unlearn_loss = unlearning_loss(log_prob, lengths, reference.forget_log_prob, self.args.npo_beta).mean()
            self.log_metric("npo/loss", unlearn_loss)
        self.log_metric("forget/loss", forget_loss)
        self.log_metric("retain/loss", retain_loss)
        if self.args.retain_loss == "kl":
            self.log_metric("retain/kl", retain_terms.mean())
        for key, value in diagnostics.items():
            self.log_metric(f"orthograd/{key}", value)
        alpha = self.args.retain_mix
        loss = alpha * retain_terms.mean() + (1.0 - alpha) * unlearn_loss
        return (loss / accumulation_steps(self)).detach()

    def _capture_and_project(self, model, unwrapped, joint, num_forget, num_retain, reference):
        try:
            with self.compute_loss_context_manager():
                if self.per_sample_backend == "fused":
                    losses, retain_terms = self._capture_fused(model, unwrapped, joint, num_forget, reference)
                else:
                    losses, retain_terms = self._capture_vmap(unwrapped, joint, num_forget, reference)
            return losses, retain_terms, *self._projected_update(num_forget, num_retain)
        finally:
            self._per_sample.clear()  # drop the captured activations now (also on error), not at the next step

    def _grams(self, num_forget: int, num_retain: int, per_tensor: bool, weights: dict[str, Tensor] | None):
        """``(stacked Grams [n, N, N], forget mask [N], this process's rows, scale)`` over the samples projected
        against: this process's (one process, or `projection_scope="local"`) or every process's (DESIGN §5)."""
        per_sample = self._per_sample
        if self.args.projection_scope == "global" and self.accelerator.num_processes > 1:
            # Project against every rank's retain samples; each rank keeps its own samples' coefficients and
            # the gradient all-reduce, which averages over ranks, sums the parts back (hence the scale).
            shared = global_gram(per_sample.per_sample_gradients(), num_forget, per_tensor=per_tensor, weights=weights)
            grams, forget_mask, local_rows = shared.gram, shared.forget_mask, shared.local_rows
            scale = float(self.accelerator.num_processes)
        else:
            grams = per_sample.gram(per_tensor=per_tensor, weights=weights)
            forget_mask = torch.arange(num_forget + num_retain) < num_forget
            local_rows, scale = slice(0, num_forget + num_retain), 1.0
        names = list(grams) if per_tensor else [None]
        stacked = torch.stack([grams[name] for name in names]) if per_tensor else grams.unsqueeze(0)  # [n, N, N]
        return names, stacked, forget_mask, local_rows, scale

    def _projected_update(self, num_forget: int, num_retain: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``{name: u_p}``, the gradient handed to the optimizer (``d``, or ``D·d`` in preconditioned space), and the
        diagnostics. Grams are global or per tensor, Euclidean or D-weighted; each group gets its own k×k solve."""
        per_tensor = self.args.projection_granularity == "per_tensor"
        weights = None
        if self.preconditioner is not None:
            squares = self._per_sample.squares()
            weights = self.preconditioner.update(squares, num_forget + num_retain, self.args.device)
        names, stacked, forget_mask, local_rows, scale = self._grams(num_forget, num_retain, per_tensor, weights)
        mask = forget_mask.to(stacked.device)
        num_forget_total = int(forget_mask.sum())
        retain_gram, cross, forget_sq_norm = joint_gram_blocks(stacked, mask)
        direction = stacked_orthograd_directions(
            retain_gram,
            cross,
            self.args.retain_mix,
            self.args.projection_tolerance,
            rank_one=self.args.projection == "rank1",
        )
        # d = Σ_i a_i ∇ℓ(r_i) + s·g_f: per-forget-sample coefficient s/m, per group.
        vectors = stacked.new_zeros(len(names), stacked.shape[-1])
        vectors[:, mask] = direction.forget_coefficient / num_forget_total
        vectors[:, ~mask] = direction.retain_coefficients.to(stacked)
        vectors = vectors[:, local_rows] * scale
        coefficients = dict(zip(names, vectors, strict=True)) if per_tensor else vectors[0]
        update = self._per_sample.combine(coefficients)
        if weights is not None:
            update = {name: (weights[name] * u).to(u.dtype) for name, u in update.items()}
        return update, stacked_projection_diagnostics(retain_gram, cross, forget_sq_norm, direction)

    def _capture_fused(self, model, unwrapped, joint, num_forget, reference) -> tuple[Tensor, Tensor]:
        capture = self._per_sample
        if capture.model is not unwrapped:  # the model was replaced (e.g. re-wrapped): re-scan its layers
            capture = self._per_sample = FusedGradientCapture(unwrapped)
        with capture:
            forward_model = self.surrogate_forward_model(model)
            phi, losses, retain_terms = self._joint_objective(forward_model, joint, num_forget, reference)
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
        return losses, retain_terms

    def _capture_vmap(self, unwrapped, joint, num_forget, reference) -> tuple[Tensor, Tensor]:
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
        ref_log_prob = torch.zeros(batch, device=is_forget.device)
        if reference.forget_log_prob is not None:
            ref_log_prob = torch.cat(
                [reference.forget_log_prob.detach(), reference.forget_log_prob.new_zeros(batch - num_forget)]
            )
        joint["_is_forget"], joint["_reference_log_prob"] = is_forget, ref_log_prob
        if reference.retain_log_probs is not None:
            retain = reference.retain_log_probs
            joint["_reference_token_log_probs"] = torch.cat([retain.new_zeros(num_forget, *retain.shape[1:]), retain])
        with eager_attention(unwrapped):
            phi = self._per_sample.compute(joint)
        self.check_finite(phi, "per-example loss")
        retain_terms = phi[num_forget:]
        if reference.forget_log_prob is None and reference.retain_log_probs is None:
            return phi, retain_terms
        # φ is −npo_j on forget rows and KL on retain rows with those options, not ℓ: the task losses for logging
        # need one more (gradient-free) forward.
        with torch.no_grad():
            plain = {k: v for k, v in joint.items() if not k.startswith("_")}
            task_losses = per_example_loss_from_log_prob(*model_sequence_log_prob(unwrapped, plain, config))
        return task_losses, retain_terms


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
