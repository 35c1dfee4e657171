"""transformers internals (checked against transformers 5.24).

`UnlearnTrainer` also *overrides* two private `Trainer` hooks, `_save_checkpoint` (atomic checkpoint folders) and
`_get_output_dir` (where that hook writes). The overrides stay on the trainer subclass, where they belong;
`require_trainer_hooks` (called when `hf_unlearn.trainer` is imported) makes sure the hooks still exist with the
parameters the overrides expect, so a transformers release that renames them fails at import with this module's
name instead of silently skipping the override.
"""

import contextlib
import functools
import inspect
import logging
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.models.whisper.modeling_whisper import shift_tokens_right as shift_tokens_right

from .accelerate import backward_kwargs


CHECKED = "transformers 5.24"

# Private Trainer hooks `UnlearnTrainer` overrides → the parameters (after self) each override is written for.
OVERRIDDEN_TRAINER_HOOKS = {"_save_checkpoint": ("model", "trial"), "_get_output_dir": ("trial",)}

INTERNALS = (
    ("transformers.Trainer", "_prepare_inputs"),  # moves a collated batch to the device, as the train loop does
    ("transformers.Trainer", "_save_checkpoint"),  # overridden (see the module docstring)
    ("transformers.Trainer", "_get_output_dir"),  # overridden
    ("transformers.Trainer", "current_gradient_accumulation_steps"),  # set by the train loop (an attribute)
    ("transformers.integrations.deepspeed", "_hf_deepspeed_config_weak_ref"),  # the global ZeRO-3 config
    ("transformers.integrations.deepspeed", "unset_hf_deepspeed_config"),
    ("transformers.integrations.deepspeed", "set_hf_deepspeed_config"),
    ("transformers.PretrainedConfig", "_attn_implementation"),  # the attention kernel a model runs
    ("transformers.PreTrainedModel", "set_attn_implementation"),
    # Every seq2seq model file defines the same model-independent `shift_tokens_right`; Whisper's (re-exported
    # above) serves any encoder-decoder: labels shifted right, −100 → pad, the decoder start token first.
    ("transformers.models.whisper.modeling_whisper", "shift_tokens_right"),
)

# What `Trainer.push_to_hub` (and `_push_from_checkpoint`) leave out of the upload of `output_dir`: transformers has no
# public constant for it, so this copies the list its `push_to_hub` passes as `ignore_patterns`.
TRAINER_PUSH_IGNORE_PATTERNS = ["_*", "checkpoint-*"]


def require_trainer_hooks() -> None:
    """Fail loudly if a private `Trainer` hook that `UnlearnTrainer` overrides is gone or has other parameters."""
    for name, expected in OVERRIDDEN_TRAINER_HOOKS.items():
        hook = getattr(Trainer, name, None)
        parameters = tuple(inspect.signature(hook).parameters)[1:] if hook is not None else None
        if parameters != expected:
            raise ImportError(
                f"transformers.Trainer.{name}{'' if hook is None else str(parameters)} is not the private hook "
                f"hf-unlearn overrides ({name}(self, {', '.join(expected)}), checked against {CHECKED}): install a "
                "supported transformers version, or update hf_unlearn/integrations/transformers.py and the override "
                "in hf_unlearn/trainer.py."
            )


def prepare_inputs(trainer: Trainer, inputs: dict[str, Any]) -> dict[str, Any]:
    """A collated batch on the training device, exactly as `Trainer.training_step` prepares its own (the retain and
    fresh-forget streams must match the forget batch: device, dtype casting, DeepSpeed's handling)."""
    return trainer._prepare_inputs(inputs)


def accumulation_steps(trainer: Trainer) -> int:
    """The number of micro-batches of the optimizer step being accumulated (the train loop sets it; the last step
    of an epoch can have fewer), by which `Trainer.training_step` divides its loss."""
    return trainer.current_gradient_accumulation_steps


def backward_like_trainer(trainer: Trainer, loss: torch.Tensor) -> torch.Tensor:
    """Backpropagate ``loss`` as `Trainer.training_step` does: divided by the accumulation steps, with DeepSpeed's own
    accumulation scaling turned off (transformers divides once, here; PR #35808). Returns the divided loss."""
    scaled = loss / accumulation_steps(trainer)
    trainer.accelerator.backward(scaled, **backward_kwargs(trainer.accelerator))
    return scaled


def save_model_internal(trainer: Trainer, folder: str) -> None:
    """`Trainer.save_model` as the Trainer calls it itself (`_internal_call=True`: no Hub push of its own)."""
    trainer.save_model(folder, _internal_call=True)


def attention_implementation(config: Any) -> str | None:
    """The attention kernel a model runs (`"eager"`, `"sdpa"`, `"flash_attention_2"`, ...), `None` if not said."""
    return getattr(config, "_attn_implementation", None)


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run a transformers model with eager attention for the duration of the block.

    transformers' SDPA mask builder skips the mask when the padding mask is all ones (`_ignore_causal_mask_sdpa`),
    a branch on tensor values that `torch.func.vmap` cannot run; the eager path builds the mask without branching and
    computes the same attention. Remove when transformers' SDPA mask creation is vmap-safe.
    """
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if not isinstance(base, PreTrainedModel) or attention_implementation(base.config) == "eager":
        yield
        return
    previous = attention_implementation(base.config)
    base.set_attn_implementation("eager")
    try:
        yield
    finally:
        base.set_attn_implementation(previous)


def reentrant_checkpointing(module: nn.Module) -> bool:
    """Whether a module transformers checkpoints (`gradient_checkpointing=True`) uses reentrant checkpointing, read
    from the `functools.partial` of `torch.utils.checkpoint` it stores as `_gradient_checkpointing_func`."""
    checkpoint_fn = getattr(module, "_gradient_checkpointing_func", None)
    return isinstance(checkpoint_fn, functools.partial) and checkpoint_fn.keywords.get("use_reentrant") is not False


@contextlib.contextmanager
def whole_model_loading() -> Iterator[None]:
    """`from_pretrained` loads whole weights on every process, even under a DeepSpeed ZeRO-3 config.

    transformers otherwise builds models inside `deepspeed.zero.Init` as soon as a ZeRO-3 `TrainingArguments` exists:
    a collective per parameter, so every rank must load the same models at the same moment, and the models come out
    partitioned and unusable outside the engine (the exact-retrain reference, an evaluation before `train`). With a
    LoRA adapter the frozen base fits on each device anyway; the engine partitions it when training starts.
    transformers offers `unset_hf_deepspeed_config` but no public getter of the config it unsets, so the weak
    reference is read to restore it afterwards. accelerate's public switch,
    `args.deepspeed_plugin.zero3_init_context_manager(enable=False)`, does not fit: it needs the run's
    `TrainingArguments` at every call site, and on exit it installs a *new* global config built from a copy of the
    plugin's dict (``"auto"`` batch sizes replaced by 1) instead of restoring the `HfTrainerDeepSpeedConfig` the
    arguments processed (checked against accelerate 1.15).
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = reference() if reference is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            hf_deepspeed.set_hf_deepspeed_config(config)


# Logged once per process by `generate` when Whisper's own `generate` hands its `suppress_tokens` and
# `begin_suppress_tokens` to the generic one beside a generation config (transformers 5.24's workaround for its
# PR #48108): a deprecation inside transformers that no caller argument avoids, so nothing a user can act on.
WHISPER_INTERNAL_GENERATE_NOTICE = "Passing `generation_config` together with generation-related arguments=({'"


WHISPER_OWN_GENERATE_ARGUMENTS = {"suppress_tokens", "begin_suppress_tokens"}


class _DropWhisperInternalNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(WHISPER_INTERNAL_GENERATE_NOTICE):
            return True
        named = re.search(r"arguments=\(\{(.*?)\}\)", message)
        arguments = {name.strip(" '\"") for name in named.group(1).split(",")} if named else set()
        return not arguments or not arguments <= WHISPER_OWN_GENERATE_ARGUMENTS


@contextlib.contextmanager
def whisper_generate_without_internal_notice() -> Iterator[None]:
    """Drop only transformers' own "generation_config together with {suppress_tokens, begin_suppress_tokens}"
    notice while Whisper decodes; every other log line (and that notice for any other argument) passes."""
    generation_logger = logging.getLogger("transformers.generation.utils")
    notice_filter = _DropWhisperInternalNotice()
    generation_logger.addFilter(notice_filter)
    try:
        yield
    finally:
        generation_logger.removeFilter(notice_filter)
