"""LUR — Learning to Unlearn while Retaining: descend on the retain loss *after* a virtual unlearning step."""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, RandomSampler

from ..configs import UnlearnConfig
from ..distributed import all_reduce_mean_, whole_parameters
from ..gradients.meta import LossFn, LURObjective, batch_loss_fn, trainable_parameters
from ..losses import model_sequence_log_prob, unlearning_loss
from ..models.batch_norm import refuse_batch_norm_in_training
from ..trainer import UnlearnTrainer
from .reference import ReferencePolicy, reference_log_prob


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
        retain_weight (`float`, *optional*, defaults to `1.0`):
            γ, the weight of the retain term. Must be > 0: without a retain term LUR is gradient ascent.
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

    args = LURConfig(output_dir="out", inner_lr=1e-2, retain_weight=1.0, meta_order="second", max_steps=50)
    ```
    """

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


class LURTrainer(UnlearnTrainer):
    r"""
    LUR ([Patel & Qiu, 2025](https://huggingface.co/papers/2503.06339)): take a virtual unlearning step, score the
    retain loss where it lands, and descend through both (DESIGN §2.3)::

        θ'  = θ − β·∇L_u(θ)
        J   = L_u(θ) + γ·L_r(θ')
        ∇J  = ∇L_u(θ) + γ·(I − β·∇²L_u(θ))·∇L_r(θ')        meta_order="second" (exact)
        ∇J ≈ ∇L_u(θ) + γ·∇L_r(θ')                          meta_order="first"

    with β = `inner_lr`, γ = `retain_weight`, L_u = NPO's bounded loss (default) or −L_f (`forget_loss="ga"`), and
    L_f, L_r means of per-example losses.
    Since L_r(θ') ≈ L_r(θ) − β·⟨∇L_r, ∇L_u⟩, J penalises steps whose unlearning gradient conflicts with retention,
    with no explicit projection; `inner_lr=0` is GradDiff with λ = γ.

    `training_step` is overridden because the gradient is not that of a loss evaluated at θ. The meta-gradient is
    handed to the optimizer as a surrogate scalar (`hf_unlearn.gradients.meta.LURObjective`) backpropagated once per
    micro-batch through `accelerator.backward`, divided by the accumulation steps exactly as transformers does, so
    gradient accumulation, any optimizer and DeepSpeed (ZeRO-2 and ZeRO-3) see an ordinary gradient. Several
    processes: the virtual step uses the inner gradient averaged over processes (and, in second order, the outer
    gradient too), so N processes × batch b give the result of one process × batch N·b; under DDP the surrogate's
    gradient is then averaged by one all-reduce after the backward (the only `.grad` write, and not under DeepSpeed).
    The virtual point is evaluated with `torch.func.functional_call` on the trainable (LoRA) parameters only: the
    model is never copied. Under ZeRO-3 the trainable parameters are held whole for the step (`whole_parameters`)
    and the virtual forward substitutes them through forward hooks, which ZeRO-3's own parameter hooks tolerate;
    both meta orders match one process there too.

    Logged: `forget/loss` (L_f(θ)) and `retain/loss` (L_r(θ)) whenever they are evaluated at θ, and the `lur/*`
    metrics of `LURObjective` — every step `lur/inner_loss`, `lur/virtual_outer_loss`, `lur/inner_grad_norm`,
    `lur/meta_loss` (the value returned as the training loss); on diagnostics steps `lur/grad_dot`,
    `lur/grad_cosine` (the conflict LUR targets), `lur/outer_loss`, `lur/outer_loss_change` and, in second order,
    `lur/hvp_norm` (β·‖∇²L_inner·∇L_outer(θ')‖, what distinguishes exact from first-order LUR).

    Not supported, refused at construction: FSDP (sharded flat parameters cannot be swapped for the virtual step) and
    `nn.DataParallel` (several GPUs without a launcher).

    Example:

    ```python
    from peft import LoraConfig

    from hf_unlearn import LURConfig, LURTrainer

    trainer = LURTrainer(
        model=model,
        args=LURConfig(output_dir="out", inner_lr=1e-2, retain_weight=1.0, max_steps=50, learning_rate=1e-4),
        forget_dataset=corpus["forget"],
        retain_dataset=corpus["retain"],
        data_collator=collator,
        processing_class=processor,
        peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    ```
    """

    _name = "LUR"
    _tag_names = UnlearnTrainer._tag_names + ["lur"]
    _paper = {
        "title": "Learning to Unlearn while Retaining: Combating Gradient Conflicts in Machine Unlearning",
        "id": "2503.06339",
        "bibtex": """@inproceedings{patel2025learning,
    title        = {{Learning to Unlearn while Retaining: Combating Gradient Conflicts in Machine Unlearning}},
    author       = {Patel, Gaurav and Qiu, Qiang},
    booktitle    = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
    year         = {2025},
    eprint       = {2503.06339},
    archivePrefix = {arXiv}
}""",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, LURConfig):
            raise TypeError(f"LURTrainer needs args=LURConfig(...), got {type(self.args).__name__}.")
        self._check_parallelism()
        # The virtual step must not mix forget and retain samples through batch statistics.
        refuse_batch_norm_in_training(self.accelerator.unwrap_model(self.model), "LUR")
        config = self.args
        self.lur = LURObjective(
            inner_lr=config.inner_lr,
            retain_weight=config.retain_weight,
            meta_order=config.meta_order,
            objective_order=config.objective_order,
            # Several processes: θ' and the meta-gradient use the global inner gradient (DESIGN §5).
            all_reduce_mean=all_reduce_mean_ if self.accelerator.num_processes > 1 else None,
        )
        self.reference = (
            ReferencePolicy(self.accelerator.unwrap_model(self.model)) if config.forget_loss == "npo" else None
        )

    def _check_parallelism(self) -> None:
        if self.is_fsdp_enabled:
            raise ValueError(
                "LURTrainer does not support FSDP (sharded flat parameters cannot be swapped for the virtual step); "
                "use DDP or DeepSpeed (ZeRO-2 or ZeRO-3)."
            )
        if self.args.n_gpu > 1:
            raise ValueError(
                f"LURTrainer sees {self.args.n_gpu} GPUs in one process (nn.DataParallel), which cannot run the "
                "virtual step: launch one process per GPU with `accelerate launch` or `torchrun` (DDP), or expose "
                "one GPU with CUDA_VISIBLE_DEVICES."
            )

    # ------------------------------------------------------------------ streams

    def next_fresh_forget_batch(self) -> dict[str, Tensor]:
        """A forget batch drawn apart from the Trainer's own stream (`inner_batch="fresh"`, mirrored order).

        An independent shuffle of the forget set (seeded by `args.seed + 1`, so it is not in lockstep with the train
        sampler), cycling without end. With a small forget set it can share examples with the step's batch.
        """
        if "fresh_forget" not in self._streams:

            def make_dataloader() -> DataLoader:
                generator = torch.Generator()
                generator.manual_seed(self.args.seed + 1)
                dataloader = DataLoader(
                    self.train_dataset,
                    batch_size=self.args.per_device_train_batch_size,
                    sampler=RandomSampler(self.train_dataset, generator=generator),
                    collate_fn=self.data_collator,
                    num_workers=self.args.dataloader_num_workers,
                    pin_memory=self.args.dataloader_pin_memory,
                )
                return self.accelerator.prepare_data_loader(dataloader)

            # A registered stream: checkpoints save its position, so a resumed run draws the same fresh batches.
            self.register_stream("fresh_forget", make_dataloader)
        return self._prepare_inputs(self._streams["fresh_forget"].next())

    # ------------------------------------------------------------------ losses

    def _unlearn_at(self, model: nn.Module, batch: Mapping[str, Tensor], record: dict | None) -> LossFn:
        """L_u on ``batch``; evaluations at θ also record L_f(θ) (and NPO's log-ratio) into ``record``."""
        config = self.model_config
        stash: dict[str, Tensor] = {}
        ref_log_prob = None
        if self.args.forget_loss == "npo":
            # π_ref is a constant of θ: scored once, without gradient, with the adapter disabled.
            ref_log_prob = reference_log_prob(
                self.reference,
                self.accelerator.unwrap_model(model),
                lambda module: model_sequence_log_prob(module, batch, config)[0],
            )

        def loss(module: nn.Module, inputs: Any) -> Tensor:
            log_prob, lengths = model_sequence_log_prob(module, inputs, config)
            stash["forget/loss"] = (-log_prob / lengths).mean()  # L_f: mean of per-example token means
            if ref_log_prob is not None:
                stash["npo/log_ratio"] = (log_prob - ref_log_prob).mean()
            return unlearning_loss(log_prob, lengths, ref_log_prob, self.args.npo_beta).mean()

        bound = batch_loss_fn(model, batch, loss=loss, config=config)

        def loss_fn(params: Mapping[str, Tensor] | None) -> Tensor:
            value = bound(params)
            if params is None and record is not None:
                record.update({key: tensor.detach() for key, tensor in stash.items()})
            return value

        return loss_fn

    def _retain_at(self, model: nn.Module, batch: Mapping[str, Tensor], record: dict | None) -> LossFn:
        bound = batch_loss_fn(model, batch, config=self.model_config)

        def loss_fn(params: Mapping[str, Tensor] | None) -> Tensor:
            value = bound(params)
            if params is None and record is not None:
                record["retain/loss"] = value.detach()
            return value

        return loss_fn

    @staticmethod
    def _split(at_theta: LossFn, at_virtual: LossFn) -> LossFn:
        # inner_batch="fresh": evaluations at θ use the step's batch, evaluations at θ' the fresh draw.
        def loss_fn(params: Mapping[str, Tensor] | None) -> Tensor:
            return at_theta(None) if params is None else at_virtual(params)

        return loss_fn

    # ------------------------------------------------------------------ training

    def diagnostics_due(self) -> bool:
        """Whether the optimizer step being accumulated now computes the gradient-conflict diagnostics."""
        every = self.args.diagnostics_every
        step = self.state.global_step + 1  # global_step counts finished optimizer steps; logging sees step + 1
        if every is not None:
            return every > 0 and step % every == 0
        if self.args.logging_first_step and step == 1:
            return True
        logging_steps = self.state.logging_steps or 0
        return self.args.logging_strategy == "steps" and logging_steps > 0 and step % logging_steps == 0

    @staticmethod
    def _twice_differentiable(loss_fn: LossFn) -> LossFn:
        # The fused SDPA kernels (flash/memory-efficient on GPU, flash on CPU) have no double backward, so the exact
        # meta-gradient would fail on every model with transformers' default attention. Only the inner forward at θ is
        # differentiated twice (its gradient's graph carries the Hessian-vector product); it runs SDPA's math backend,
        # built from differentiable ops. Every other forward keeps the fused kernels, which are faster and leaner.
        def loss(params: Mapping[str, Tensor] | None) -> Tensor:
            if params is not None:
                return loss_fn(params)
            with sdpa_kernel([SDPBackend.MATH]):
                return loss_fn(None)

        return loss

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor | Any],
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor:
        # num_items_in_batch is ignored on purpose: every loss is a mean of per-example means (DESIGN §1), so a token
        # count across micro-batches must not re-weight it.
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        forget_batch = self._prepare_inputs(inputs)
        retain_batch = self.next_retain_batch()

        # Forwards run on the bare module: DDP's reducer expects one forward and one backward per step, while the
        # meta step runs two or three forwards and differentiates them with torch.autograd.grad first (in second
        # order its bookkeeping then marks parameters twice). Under plain DDP the surrogate's gradient is averaged
        # over processes by hand after the backward; DeepSpeed's engine reduces it itself.
        manual_all_reduce = self.accelerator.num_processes > 1 and not self.is_deepspeed_enabled
        model = self.accelerator.unwrap_model(model)
        params = trainable_parameters(model)
        # ZeRO-3: θ is read outside any module (the inner autograd.grad, θ' = θ − β·g, the backward into θ).
        with whole_parameters(list(params.values())):
            loss = self._meta_step(model, params, forget_batch, retain_batch)
        if manual_all_reduce:
            # Averaging is idempotent on the part already averaged at earlier micro-steps: accumulation stays exact.
            all_reduce_mean_([p.grad for p in params.values() if p.grad is not None])
        return loss.detach()

    def _meta_step(self, model: nn.Module, params, forget_batch, retain_batch) -> Tensor:
        """Build the LUR surrogate for this micro-batch and backpropagate it; returns the scaled meta loss."""
        mirrored = self.args.objective_order == "retain_then_unlearn"
        fresh = self.args.inner_batch == "fresh"
        record: dict[str, Tensor] = {}
        with self.compute_loss_context_manager():
            unlearn_fn = self._unlearn_at(model, forget_batch, record)
            retain_fn = self._retain_at(model, retain_batch, record)
            if fresh and mirrored:
                unlearn_fn = self._split(unlearn_fn, self._unlearn_at(model, self.next_fresh_forget_batch(), None))
            elif fresh:
                retain_fn = self._split(retain_fn, self._retain_at(model, self.next_retain_batch(), None))
            if self.args.meta_order == "second" and mirrored:
                retain_fn = self._twice_differentiable(retain_fn)
            elif self.args.meta_order == "second":
                unlearn_fn = self._twice_differentiable(unlearn_fn)
            try:
                step = self.lur(params, unlearn_fn, retain_fn, compute_diagnostics=self.diagnostics_due())
            except FloatingPointError as err:
                raise FloatingPointError(
                    f"LUR step failed at global step {self.state.global_step}: {err} Checkpoints already saved in "
                    f"{self.args.output_dir} are left as they were."
                ) from err
            except RuntimeError as err:
                attention = getattr(self.model_config, "_attn_implementation", None)
                if "meta_order='first'" not in str(err) or attention in (None, "eager", "sdpa"):
                    raise
                raise RuntimeError(
                    f"{err}\nThe model runs attn_implementation={attention!r}, whose kernels have no double backward: "
                    "load it with attn_implementation='eager' (or 'sdpa') for meta_order='second'."
                ) from err
        self.check_finite(torch.tensor(step.metrics["lur/meta_loss"]), "LUR meta objective J")  # no device sync

        if record:
            values = torch.stack([value.to(torch.float64) for value in record.values()]).tolist()
            for key, value in zip(record, values, strict=True):
                self.log_metric(key, value)
        for key, value in step.metrics.items():
            self.log_metric(key, value)

        kwargs = {}
        # transformers turns DeepSpeed's own accumulation scaling off and divides the loss itself (PR #35808).
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            kwargs["scale_wrt_gas"] = False
        loss = step.loss / self.current_gradient_accumulation_steps
        self.accelerator.backward(loss, **kwargs)
        return loss
