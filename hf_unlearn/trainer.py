"""`UnlearnTrainer`: the forget/retain plumbing every method shares. No unlearning maths lives here."""

import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from transformers import PreTrainedModel, Trainer, TrainerCallback, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import output_files
from .checkpoints import STAGING_PREFIX, checkpoint_step, resolve_resume_checkpoint, stream_state_file
from .configs import UnlearnConfig
from .data.overlap import check_no_overlap
from .data.streams import CyclingStream
from .distributed import check_process_count
from .eval.evaluator import ASREvaluator, ShardPlan, SplitEvaluator
from .hub import model_card as hub_card
from .hub import trainer_card
from .integrations.deepspeed import declare_cpu_when_no_accelerator
from .integrations.peft import get_peft_model_quietly
from .integrations.transformers import attention_implementation, prepare_inputs, require_trainer_hooks
from .losses import model_per_example_loss


logger = logging.getLogger(__name__)


require_trainer_hooks()  # the private hooks overridden below still exist (hf_unlearn.integrations.transformers)


class UnlearnTrainer(Trainer):
    r"""
    Base class of every unlearning trainer: pairs the forget and retain streams, checks the inputs, logs
    namespaced metrics and evaluates forget/retain splits. Subclasses implement the objective — loss-only
    methods override `compute_loss`, gradient-editing methods (OrthoGrad, LUR) override `training_step`.

    Args:
        model (`PreTrainedModel` or `nn.Module`):
            The model to unlearn from. With `peft_config` it is wrapped with `peft.get_peft_model` and only the
            adapter trains; without, its parameters with `requires_grad=True` train (full fine-tuning).
        args ([`UnlearnConfig`]):
            The method's configuration.
        forget_dataset (`datasets.Dataset`):
            Examples to forget. The Trainer's train dataloader iterates it: an epoch is one pass over it.
        retain_dataset (`datasets.Dataset`, *optional*):
            Examples to keep. Required when the method uses a retain term (`retain_weight > 0`).
        eval_dataset (`Dataset` or `dict[str, Dataset]`, *optional*):
            Splits to evaluate, e.g. `{"forget": ..., "retain": ..., "test": ...}`; metrics are logged as
            `eval_<split>_<metric>` (usable as `metric_for_best_model`).
        data_collator (`Callable`, *optional*):
            Turns a list of examples into a batch with `labels` (per-example targets, `-100` elsewhere).
        processing_class (*optional*):
            Tokenizer or processor; saved with the model and used for generation-based metrics.
        peft_config (`peft.PeftConfig`, *optional*):
            Adapter to add to `model` before training.
        callbacks (`list[TrainerCallback]`, *optional*):
            Passed to [`~transformers.Trainer`].
        evaluator ([`~hf_unlearn.eval.SplitEvaluator`], *optional*):
            Generation-based metrics of each eval split, computed on every process's shard and gathered. Defaults
            to WER/CER ([`~hf_unlearn.eval.ASREvaluator`]) for a speech processor when `args.eval_generate`.

    Example:

    ```python
    from hf_unlearn import GradDiffConfig, GradDiffTrainer

    trainer = GradDiffTrainer(
        model=model,
        args=GradDiffConfig(output_dir="out", max_steps=20),
        forget_dataset=corpus["forget"],
        retain_dataset=corpus["retain"],
        data_collator=collator,
        processing_class=processor,
        peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    ```
    """

    _name = "Unlearn"
    _tag_names = ["hf-unlearn", "unlearning"]
    # Seed paper of the method ({"title", "id" (arXiv), optional "bibtex"}), cited in the model card.
    _paper: dict[str, str] | None = None
    # Jinja template of the model card; `None` is the packaged `hf_unlearn/hub/templates/unlearned_model.md`.
    _card_template: str | os.PathLike | None = None
    # Per-example losses are already means (DESIGN §1); the Trainer divides by the accumulation steps itself.
    loss_is_scaled_for_ga = False
    # Whether the objective reads a retain batch at every step.
    uses_retain_batch = True

    def __init__(
        self,
        model: PreTrainedModel | nn.Module,
        args: UnlearnConfig,
        forget_dataset: Dataset,
        retain_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        data_collator: Any | None = None,
        processing_class: Any | None = None,
        peft_config: Any | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        evaluator: SplitEvaluator | None = None,
    ):
        if not isinstance(args, UnlearnConfig):
            raise TypeError(f"args must be an UnlearnConfig (or a method's config), got {type(args).__name__}.")
        declare_cpu_when_no_accelerator()  # before `Trainer.__init__` imports DeepSpeed
        # Before anything costs time: `Trainer.__init__` would create the Hub repo, the card is first written at
        # the first checkpoint.
        hub_card.check_push_to_hub(args)
        hub_card.check_card_template(self._card_template)
        if forget_dataset is None or len(forget_dataset) == 0:
            raise ValueError(
                "The forget set is empty: pass forget_dataset with at least one example (check the speaker/author "
                "filter that built it)."
            )
        needs_retain = self.uses_retain_batch and args.has_retain_term
        if needs_retain and (retain_dataset is None or len(retain_dataset) == 0):
            raise ValueError(
                f"{type(self).__name__} with retain_weight={args.retain_weight} needs a non-empty retain_dataset; "
                "pass one, or set retain_weight=0."
            )
        check_no_overlap(forget_dataset, retain_dataset if needs_retain else None, args.allow_overlap)
        if peft_config is not None:
            # The adapter's random init must follow args.seed, not whatever consumed the global RNG before (e.g.
            # training a reference model in the same process); Trainer only seeds later, in super().__init__.
            set_seed(args.seed)
            model = get_peft_model_quietly(model, peft_config)
        _check_trainable_parameters(model)
        _check_vocabulary_fits(model, processing_class)

        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.retain_dataset = retain_dataset if needs_retain else None
        self._streams: dict[str, CyclingStream] = {}
        self._resumed_stream_states: dict[str, dict] | None = None
        # Checkpoint folders this run wrote (rotation deletes no other) and output_dir entries that predate it.
        self._own_checkpoints: list[str] = []
        self._preexisting_outputs: set[str] | None = None  # set by train()
        self._card_info: dict[str, Any] = {"metrics": None, "datasets": None, "command": hub_card.reproduce_command()}
        self._forget_fingerprint: dict[str, Any] | None = None
        if evaluator is None and args.eval_generate and _is_speech_processor(processing_class):
            evaluator = ASREvaluator(processing_class, max_new_tokens=args.generation_max_new_tokens)
        self.evaluator = evaluator
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=forget_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.model_config = self.accelerator.unwrap_model(self.model).config
        check_process_count(self.accelerator.num_processes)

    # ------------------------------------------------------------------ streams

    def get_retain_dataloader(self) -> DataLoader:
        """Retain batches, sharded over processes like the train dataloader and seeded by `args.seed`.

        Partial batches are dropped whenever the retain set holds at least one global batch: the stream cycles, so
        nothing is lost, and methods that project against the retain batch (OrthoGrad) see a constant `k`.
        """
        global_batch = self.args.per_device_retain_batch_size * self.accelerator.num_processes
        generator = torch.Generator()
        generator.manual_seed(self.args.seed)
        dataloader = DataLoader(
            self.retain_dataset,
            batch_size=self.args.per_device_retain_batch_size,
            sampler=RandomSampler(self.retain_dataset, generator=generator),
            collate_fn=self.data_collator,
            drop_last=len(self.retain_dataset) >= global_batch,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare_data_loader(dataloader)

    def next_retain_batch(self) -> dict[str, torch.Tensor]:
        """Next retain batch, on the training device; the stream wraps around (and reshuffles) without end."""
        if self.retain_dataset is None:
            raise RuntimeError(f"{type(self).__name__} has no retain stream (retain_weight=0 or no retain_dataset).")
        if "retain" not in self._streams:
            self.register_stream("retain", self.get_retain_dataloader)
        return prepare_inputs(self, self._streams["retain"].next())

    def register_stream(self, name: str, make_dataloader: Callable[[], DataLoader]) -> CyclingStream:
        """A second data stream (beside the Trainer's forget stream) whose position every checkpoint saves.

        On resume, its position is restored from the checkpoint, so the resumed run reads the same batches as an
        uninterrupted one. Create it lazily (at its first batch), after `train()` has started.
        """
        stream = CyclingStream(make_dataloader)
        if self._resumed_stream_states is not None:
            if name in self._resumed_stream_states:
                stream.load_state_dict(self._resumed_stream_states[name])
            else:
                logger.warning("The resumed checkpoint has no position for the %r stream: it restarts.", name)
        self._streams[name] = stream
        return stream

    # ------------------------------------------------------------------ losses

    def per_example_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """ℓ_i, the mean loss over example i's own target tokens, shape [B] (DESIGN §1)."""
        return model_per_example_loss(model, inputs, self.model_config)

    def surrogate_forward_model(self, model: nn.Module) -> nn.Module:
        """The module to run forwards through when the step differentiates them with `torch.autograd.grad` before
        one final backward of a surrogate loss (OrthoGrad, LUR).

        Under DDP that is the wrapper: its reducer all-reduces only a backward that follows its own forward. Under
        DeepSpeed it is the inner module: the engine hooks its forward's output so that *any* backward through it,
        `torch.autograd.grad` included, runs the engine's gradient reduction; the surrogate's `engine.backward` is
        reduced all the same, by the hooks on the parameters.
        """
        return self.accelerator.unwrap_model(model) if self.is_deepspeed_enabled else model

    def weighted_retain_loss(self, model: nn.Module) -> torch.Tensor | float:
        """``λ·L_r`` on the next retain batch (and logged), or ``0`` when the retain term is off."""
        if not self.args.has_retain_term or not self.uses_retain_batch:
            return 0.0
        retain_loss = self.per_example_loss(model, self.next_retain_batch()).mean()
        self.log_metric("retain/loss", retain_loss)
        return self.args.retain_weight * retain_loss

    def check_finite(self, loss: torch.Tensor, what: str = "loss") -> None:
        """Stop on NaN/inf before the optimizer sees it: the last saved checkpoint stays the last good one."""
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"Non-finite {what} at global step {self.state.global_step}: {non_finite_advice(self.args)} "
                f"Checkpoints already saved in {self.args.output_dir} are left as they were."
            )

    def log_metric(self, key: str, value: torch.Tensor | float) -> None:
        """Record a scalar for the next `log()` call, which averages everything recorded since the last one."""
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][key].append(float(value.detach()) if isinstance(value, torch.Tensor) else float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        averaged = {key: sum(vals) / len(vals) for key, vals in self._metrics[mode].items() if vals}
        if self.accelerator.num_processes > 1:
            # Each rank measured its own shard of the global batch: log the mean over ranks, not rank 0's view.
            per_rank = gather_object([averaged])
            averaged = {
                key: sum(d[key] for d in per_rank if key in d) / sum(key in d for d in per_rank)
                for key in sorted(set().union(*per_rank))
            }
        if mode == "eval":
            averaged = {f"eval_{key}": val for key, val in averaged.items()}
        logs = {**logs, **averaged}
        self._metrics[mode].clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ training

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """[`~transformers.Trainer.train`], resumable to the same result as an uninterrupted run.

        `resume_from_checkpoint=True` takes the latest *complete* checkpoint in `output_dir` (incomplete ones are
        skipped with a warning); the positions of the retain stream (and any other registered stream) are restored
        with the model, optimizer, scheduler, RNG and forget stream. Raises, naming the fix, when `output_dir` holds
        files this run could replace but did not write (see `hf_unlearn.output_files`).
        """
        checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        check_output_dir(self.args, checkpoint)
        refusal = gradient_checkpointing_refusal(self.args, self.model_config)
        if refusal is not None:
            raise ValueError(f"{type(self).__name__}: {refusal}")
        self._preexisting_outputs = output_files.foreign_entries(self.args.output_dir)
        self._streams.clear()
        self._resumed_stream_states = None
        if checkpoint is not None:
            self._resumed_stream_states = self._load_stream_states(checkpoint)
            self._own_checkpoints = sorted(
                (
                    str(Path(self.args.output_dir) / name)
                    for name in output_files.written_by_toolkit(self.args.output_dir)
                    if checkpoint_step(name) is not None
                ),
                key=checkpoint_step,
            )
        return super().train(resume_from_checkpoint=checkpoint, **kwargs)

    def _load_stream_states(self, checkpoint: str) -> dict[str, dict] | None:
        path = Path(checkpoint) / stream_state_file(self.accelerator.process_index)
        if not path.is_file():
            logger.warning("%s has no %s: the retain stream restarts at its first batch.", checkpoint, path.name)
            return None
        return torch.load(path, weights_only=True)

    # ------------------------------------------------------------------ checkpoints
    # `_save_checkpoint` and `_get_output_dir` override private Trainer hooks: `require_trainer_hooks` (run at import,
    # hf_unlearn.integrations.transformers) fails loudly if a transformers release renames or re-signs them.

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Write the checkpoint into `.tmp-checkpoint-N/` and rename it to `checkpoint-N` once complete.

        A run killed while saving leaves only the temporary folder, which resume ignores. Each process adds its
        streams' positions. Rotation (`save_total_limit`) then deletes only checkpoints this run wrote.
        """
        # `_push_from_checkpoint` uploads `output_dir`, not the checkpoint folder: keep its card current (trl does
        # the same); the checkpoint folder gets its own through `save_model`.
        self.create_model_card()
        output_dir = Path(self._get_output_dir(trial))  # output_dir, or a hyperparameter-search trial's folder
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = output_dir / f"{STAGING_PREFIX}{self.state.global_step}"
        final = output_dir / name
        if self.args.should_save and staging.exists():
            shutil.rmtree(staging)  # left by a run killed while saving this step
        self.accelerator.wait_for_everyone()
        self._staging_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        streams = {key: stream.state_dict() for key, stream in self._streams.items()}
        (staging / name).mkdir(parents=True, exist_ok=True)
        torch.save(streams, staging / name / stream_state_file(self.accelerator.process_index))
        best = self.state.best_model_checkpoint
        if best is not None and best.startswith(str(staging)):
            # The Trainer recorded the staging path for a best checkpoint saved just now, on every process (each one
            # loads it at the end under DeepSpeed).
            self.state.best_model_checkpoint = str(final)
            if self.args.should_save:
                self.state.save_to_json(str(staging / name / TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if final.exists():  # an earlier toolkit run's (check_output_dir refused anyone else's)
                shutil.rmtree(final)
            (staging / name).rename(final)
            shutil.rmtree(staging, ignore_errors=True)
            self._own_checkpoints.append(str(final))
            self._rotate_own_checkpoints()
            output_files.record_outputs(output_dir, self._preexisting_outputs or set())
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial: Any) -> str:
        # `Trainer._save_checkpoint` writes `<_get_output_dir()>/checkpoint-N`; while saving, that is the staging
        # folder (checked against transformers 5.24; see `require_trainer_hooks`).
        staging = getattr(self, "_staging_dir", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _rotate_own_checkpoints(self) -> None:
        """Keep at most `save_total_limit` of this run's checkpoints (the newest and the best always)."""
        limit = self.args.save_total_limit
        if not limit or limit <= 0 or len(self._own_checkpoints) <= limit:
            return
        protected = {self._own_checkpoints[-1], self.state.best_model_checkpoint}
        keep = max(limit, len(protected - {None}))
        for folder in list(self._own_checkpoints):
            if len(self._own_checkpoints) <= keep:
                break
            if folder not in protected:
                shutil.rmtree(folder, ignore_errors=True)
                self._own_checkpoints.remove(folder)

    # ------------------------------------------------------------------ model card and Hub

    def set_card_info(
        self,
        metrics: dict[str, dict[str, dict[str, float]]] | None = None,
        datasets: list[str] | None = None,
        command: str | None = None,
    ) -> None:
        """Facts the trainer cannot know by itself, for every model card written from now on.

        Args:
            metrics (`dict`, *optional*):
                `{"base"|"retrain"|"unlearned": {split: {metric: value}}}` (the recipes' `metrics.json`); rendered
                as one table, one column per model.
            datasets (`list[str]`, *optional*):
                Data the run used; Hub dataset ids go into the card's `datasets` metadata, local paths do not.
            command (`str`, *optional*):
                The command that reproduces the run; defaults to this process's `sys.argv`.
        """
        trainer_card.update_card_info(self._card_info, metrics=metrics, datasets=datasets, command=command)

    def create_model_card(
        self,
        model_name: str | None = None,
        tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        language: str | list[str] | None = None,
        license: str | None = None,
        output_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write `README.md` (base model, method, forget-set fingerprint, metrics, citation) on the main process.

        Replaces the generic card of [`~transformers.Trainer.create_model_card`] (and peft's); `push_to_hub`,
        `save_model` and checkpoints call it, so every saved folder carries a card. `model_name` defaults to the last
        part of `hub_model_id` (else the folder's name), `dataset` to `set_card_info(datasets=...)`, `output_dir` to
        `args.output_dir`; other arguments `push_to_hub` forwards are ignored. See
        [`hf_unlearn.hub.trainer_card.write_model_card`].
        """
        if not self.is_world_process_zero():
            return
        if self._forget_fingerprint is None:
            self._forget_fingerprint = hub_card.forget_fingerprint(self.train_dataset)
        trainer_card.write_model_card(
            self,
            output_dir or self.args.output_dir,
            card_info=self._card_info,
            forget=self._forget_fingerprint,
            model_name=model_name,
            tags=tags,
            dataset=dataset,
            language=language,
            license=license,
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """[`~transformers.Trainer.save_model`], then the model card beside the weights (peft's own card replaced)."""
        target = output_dir if output_dir is not None else self.args.output_dir
        preexisting = self._preexisting_outputs
        if preexisting is None and target is not None:  # saved without train(): what is there now is not ours
            preexisting = output_files.foreign_entries(target)
        # With push_to_hub, the parent pushes from here; push_to_hub writes the card itself before uploading.
        super().save_model(output_dir, _internal_call=_internal_call)
        self.create_model_card(output_dir=target)
        if self.is_world_process_zero() and target is not None and _same_folder(target, self.args.output_dir):
            output_files.record_outputs(target, preexisting)

    def save_for_hub(self, folder: str | os.PathLike) -> list[str]:
        """Write into `folder` exactly the files `push_to_hub` would upload, without network; returns their paths.

        Recipes: `--hub_dry_run_dir DIR`. See [`hf_unlearn.hub.trainer_card.save_for_hub`].
        """
        return trainer_card.save_for_hub(self, folder)

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Per-split loss (mean ℓ_i) and, for speech models, WER/CER from greedy `generate`.

        Keys are `<prefix>_<split>_<metric>`, e.g. `eval_forget_wer`, usable as `metric_for_best_model`. With
        `forget` and `retain` splits, `<prefix>_unlearning_score` (see `unlearning_score`) ranks checkpoints by both at
        once: pass `metric_for_best_model="unlearning_score", greater_is_better=True` with `load_best_model_at_end`.
        """
        eval_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if eval_dataset is None:
            raise ValueError("evaluate() needs an eval_dataset (a Dataset or a dict of named splits).")
        splits = eval_dataset if isinstance(eval_dataset, dict) else {"": eval_dataset}
        metrics: dict[str, float] = {}
        per_split: dict[str, dict[str, float]] = {}
        for split_name, dataset in splits.items():
            prefix = f"{metric_key_prefix}_{split_name}" if split_name else metric_key_prefix
            per_split[split_name] = self.evaluate_split(dataset, split_name)
            for key, value in per_split[split_name].items():
                metrics[f"{prefix}_{key}"] = value
        score = unlearning_score(per_split)
        if score is not None:
            metrics[f"{metric_key_prefix}_unlearning_score"] = score
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    @torch.no_grad()
    def evaluate_split(self, dataset: Dataset, split: str = "") -> dict[str, float]:
        """Metrics of one split. Subclasses add method-specific ones by extending the returned dict."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            losses = []
            for batch in self.get_eval_dataloader(dataset):
                batch = prepare_inputs(self, batch)
                with self.autocast_smart_context_manager():
                    per_example = self.per_example_loss(model, batch).float()
                # Per batch: gather_for_metrics drops the duplicates padding the last one only while it is current.
                losses.append(self.accelerator.gather_for_metrics(per_example))
            per_example = torch.cat(losses)
            metrics = {"loss": float(per_example.mean())}
            if self.evaluator is not None:
                metrics.update(self._evaluator_metrics(dataset, split))
        finally:
            model.train(was_training)
        return metrics

    def _evaluator_metrics(self, dataset: Dataset, split: str) -> dict[str, float]:
        """Run the evaluator on this process's shard, gather every record in dataset order, aggregate everywhere.

        Every rank ends with the same metrics (so `metric_for_best_model` and early stopping agree across ranks),
        and every rank runs the same number of batches (ZeRO-3 forwards are collective).
        """
        plan = ShardPlan.for_rank(len(dataset), self.accelerator.process_index, self.accelerator.num_processes)
        shard = dataset.select(plan.indices)
        model = self.accelerator.unwrap_model(self.model)
        records = self.evaluator.per_example(model, shard, self.args.per_device_eval_batch_size)
        if len(records) != len(plan.indices):
            raise RuntimeError(
                f"{type(self.evaluator).__name__}.per_example returned {len(records)} records for {len(plan.indices)} "
                "examples: it must return exactly one record per example, in order."
            )
        records = [record for record, keep in zip(records, plan.keep, strict=True) if keep]
        if self.accelerator.num_processes > 1:
            records = gather_object(records)
        return self.evaluator.aggregate(records, split)


def gradient_checkpointing_refusal(args: UnlearnConfig, model_config: Any) -> str | None:
    """Why this method cannot train under the requested activation checkpointing (with the fix), or `None`.

    Measured on a tiny GPT-2 (tests/safety/test_gradient_checkpointing.py): the loss-only methods train under both
    variants. Reentrant checkpointing re-runs blocks inside backward, outside OrthoGrad/GRU's capture hooks and
    invisible to `torch.autograd.grad` (LUR). Second-order LUR differentiates through a checkpointed forward, whose
    recompute under SDPA attention takes another kernel than the forward did (a CheckpointError); with eager
    attention it trains and equals the run without checkpointing.
    """
    enabled = getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False)
    if not enabled:
        return None
    kwargs = getattr(args, "activation_checkpointing_kwargs", None) or getattr(
        args, "gradient_checkpointing_kwargs", None
    )
    # transformers 5.24 passes use_reentrant=False when no kwargs are given; torch's checkpoint defaults to True.
    reentrant = bool(kwargs.get("use_reentrant", True)) if kwargs else False
    if reentrant and hasattr(args, "per_sample_gradients"):  # OrthoGrad, GRU
        return (
            "reentrant gradient checkpointing re-runs each block outside the hooks that capture per-sample "
            "gradients: pass gradient_checkpointing_kwargs={'use_reentrant': False} (transformers' default)."
        )
    if hasattr(args, "meta_order"):  # LUR
        if reentrant:
            return (
                "reentrant gradient checkpointing is invisible to torch.autograd.grad, which the inner step needs: "
                "pass gradient_checkpointing_kwargs={'use_reentrant': False} (transformers' default)."
            )
        attention = attention_implementation(model_config)
        if args.meta_order == "second" and attention != "eager":
            return (
                f"meta_order='second' differentiates through checkpointed forwards, which {attention!r} attention "
                "recomputes with another kernel: load the model with attn_implementation='eager' (exact, equal to "
                "no checkpointing), use meta_order='first', or turn gradient_checkpointing off."
            )
    return None


def non_finite_advice(args: UnlearnConfig) -> str:
    """What to change after a NaN/inf loss, naming the values this run actually has."""
    advice = [f"lower learning_rate (now {args.learning_rate:g})"]
    if args.max_grad_norm and args.max_grad_norm > 0:
        advice.append(f"lower max_grad_norm (now {args.max_grad_norm:g}; clipping cannot stop a NaN loss itself)")
    else:
        advice.append("set max_grad_norm (gradient clipping is off)")
    if args.fp16 or args.bf16:
        advice.append(f"train in float32 instead of {'fp16' if args.fp16 else 'bf16'}")
    advice.append("or check the data for examples without target tokens.")
    return ", ".join(advice)


def unlearning_score(per_split: dict[str, dict[str, float]]) -> float | None:
    """Forget error minus retain error: higher is better, 0 for a model that treats both alike.

    Uses WER when both splits have it (speech), the mean per-example loss otherwise. `None` without both splits.
    It is a ranking aid for `load_best_model_at_end`, not a quality measure: the target of unlearning is the
    exact-retrain model's forget error, not the largest one (compare against it in the report).
    """
    forget, retain = per_split.get("forget"), per_split.get("retain")
    if forget is None or retain is None:
        return None
    key = "wer" if "wer" in forget and "wer" in retain else "loss"
    return float(forget[key] - retain[key])


def _is_speech_processor(processing_class: Any) -> bool:
    return processing_class is not None and hasattr(processing_class, "feature_extractor")


def _check_trainable_parameters(model: nn.Module) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "The model has no trainable parameters: pass peft_config=LoraConfig(...) to train an adapter, or set "
            "requires_grad=True on the parameters to fine-tune."
        )


def _check_vocabulary_fits(model: nn.Module, processing_class: Any) -> None:
    """A tokenizer larger than the embedding table indexes out of range deep inside the forward; say so here."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if tokenizer is None or not hasattr(tokenizer, "__len__") or not hasattr(model, "get_input_embeddings"):
        return
    embeddings = model.get_input_embeddings()
    if embeddings is None:
        return
    if len(tokenizer) > embeddings.num_embeddings:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's embedding table has "
            f"{embeddings.num_embeddings}: pass the tokenizer/processor saved with this model, or call "
            "model.resize_token_embeddings(len(tokenizer)) before unlearning."
        )


def check_output_dir(args: UnlearnConfig, resume_from_checkpoint: str | bool | None = None) -> None:
    """Refuse an `output_dir` this run could overwrite files in without being told; recipes call it before any
    training time. See `hf_unlearn.output_files.check_output_dir`."""
    resuming = bool(resume_from_checkpoint) and str(resume_from_checkpoint).lower() not in ("false", "no")
    output_files.check_output_dir(args.output_dir, overwrite=args.overwrite_output_dir, resuming=resuming)


def _same_folder(a: str | os.PathLike, b: str | os.PathLike | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()
