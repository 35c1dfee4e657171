"""`LURTrainer`: LUR's meta step, read top to bottom in `training_step` → `_meta_step`.

The update rule is written once, in `LURTrainer`'s docstring; the meta-gradient itself is `meta.LURObjective`, the
two objectives and the wrappers that route their evaluations are in `objective.py`.
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler

from ...distributed import all_reduce_mean_
from ...integrations.deepspeed import whole_parameters
from ...integrations.transformers import attention_implementation, backward_like_trainer, prepare_inputs
from ...losses import model_sequence_log_prob
from ...models.batch_norm import refuse_batch_norm_in_training
from ...trainer import UnlearnTrainer
from ..reference import ReferencePolicy, reference_log_prob
from .config import LURConfig
from .meta import LossFn, LURObjective, batch_loss_fn, trainable_parameters
from .objective import RecordedAtTheta, SplitByPoint, TwiceDifferentiableAtTheta, UnlearningObjective


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
    handed to the optimizer as a surrogate scalar (`hf_unlearn.methods.lur.meta.LURObjective`) backpropagated once per
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
        args=LURConfig(output_dir="out", inner_lr=1e-2, max_steps=50, learning_rate=1e-4),
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
        return prepare_inputs(self, self._streams["fresh_forget"].next())

    # ------------------------------------------------------------------ losses

    def _unlearn_at(self, model: nn.Module, batch: Mapping[str, Tensor], record: dict | None) -> LossFn:
        """L_u on ``batch``; evaluations at θ also record L_f(θ) (and NPO's log-ratio) into ``record``."""
        ref_log_prob = None
        if self.args.forget_loss == "npo":
            # π_ref is a constant of θ: scored once, without gradient, with the adapter disabled.
            ref_log_prob = reference_log_prob(
                self.reference,
                self.accelerator.unwrap_model(model),
                lambda module: model_sequence_log_prob(module, batch, self.model_config)[0],
            )
        objective = UnlearningObjective(self.model_config, ref_log_prob, self.args.npo_beta)
        bound = batch_loss_fn(model, batch, loss=objective, config=self.model_config)
        return RecordedAtTheta(bound, record, measured=objective.measured)

    def _retain_at(self, model: nn.Module, batch: Mapping[str, Tensor], record: dict | None) -> LossFn:
        """L_r on ``batch``; evaluations at θ also record it as `retain/loss`."""
        return RecordedAtTheta(batch_loss_fn(model, batch, config=self.model_config), record, value_key="retain/loss")

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
        forget_batch = prepare_inputs(self, inputs)
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
                unlearn_fn = SplitByPoint(unlearn_fn, self._unlearn_at(model, self.next_fresh_forget_batch(), None))
            elif fresh:
                retain_fn = SplitByPoint(retain_fn, self._retain_at(model, self.next_retain_batch(), None))
            if self.args.meta_order == "second" and mirrored:
                retain_fn = TwiceDifferentiableAtTheta(retain_fn)
            elif self.args.meta_order == "second":
                unlearn_fn = TwiceDifferentiableAtTheta(unlearn_fn)
            try:
                step = self.lur(params, unlearn_fn, retain_fn, compute_diagnostics=self.diagnostics_due())
            except FloatingPointError as err:
                raise FloatingPointError(
                    f"LUR step failed at global step {self.state.global_step}: {err} Checkpoints already saved in "
                    f"{self.args.output_dir} are left as they were."
                ) from err
            except RuntimeError as err:
                attention = attention_implementation(self.model_config)
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

        return backward_like_trainer(self, step.loss)
