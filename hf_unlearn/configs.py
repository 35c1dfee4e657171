"""`UnlearnConfig`: the `TrainingArguments` fields every unlearning method shares."""

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

from transformers import TrainingArguments

from .distributed import accelerator_available, launcher_world_size


logger = logging.getLogger(__name__)


@dataclass
class UnlearnConfig(TrainingArguments):
    r"""
    Configuration shared by every unlearning trainer. Each method extends it with its own fields
    (`GradDiffConfig`, `NPOConfig`, ...), so everything reaches `--help`, `training_args.bin`, the model card and
    recipe YAML through [`~transformers.HfArgumentParser`].

    A training step draws one **forget** batch (`per_device_train_batch_size` examples, from the Trainer's own
    train dataloader over the forget set) and one **retain** batch (`per_device_retain_batch_size` examples, from a
    second dataloader that cycles without end). An epoch is one pass over the forget set; the retain stream carries
    on across epochs and reshuffles each time it wraps around.

    Parameters:
        > Unlearning objective

        retain_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the retain loss in the objective (λ of GradDiff/NPO/SimNPO/SalUn, γ of LUR and SCRUB): one
            meaning in every config. `0` turns the retain term off. OrthoGrad/GRU mix the two terms with
            `retain_mix` (α ∈ [0, 1)) instead.
        per_device_retain_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Retain examples per device and step. `None` uses `per_device_train_batch_size`.

        > Evaluation

        generation_max_new_tokens (`int`, *optional*, defaults to `64`):
            Token budget of the greedy `generate` used for WER/CER during evaluation.
        eval_generate (`bool`, *optional*, defaults to `True`):
            Transcribe eval splits with `generate` (WER/CER) for speech models; `False` reports losses only.

        > Safety

        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Training into a non-empty `output_dir` is refused unless this is set (or a checkpoint is resumed), so
            earlier results are never overwritten by accident. Even then, only files an earlier hf-unlearn run wrote
            there are replaced (see `hf_unlearn.output_files`).
        allow_overlap (`bool`, *optional*, defaults to `False`):
            Forget and retain sets that share examples (same `id`, or same content) are refused, since such a run
            trains the same example up and down; set this to train anyway.

    Defaults changed from [`~transformers.TrainingArguments`]: `remove_unused_columns=False` (collators read raw
    columns such as `text`), `logging_steps=10`, `save_strategy="no"` (set it to save checkpoints).
    """

    # `HfArgumentParser` lists these fields under their own heading in `--help` (a class attribute, not a field).
    _argument_group_name = "method and training (the method's config; TrainingArguments fields included)"
    # Fields renamed in this release, old name → new name (see `take_renamed_fields`); not fields themselves.
    renamed_fields: ClassVar[dict[str, str]] = {}

    retain_weight: float = field(
        default=1.0, metadata={"help": "Weight of the retain loss term (lambda/gamma); 0 turns it off."}
    )
    per_device_retain_batch_size: int | None = field(
        default=None, metadata={"help": "Retain examples per device and step (default: per_device_train_batch_size)."}
    )
    generation_max_new_tokens: int = field(
        default=64, metadata={"help": "Max new tokens for greedy generation during WER/CER evaluation."}
    )
    eval_generate: bool = field(
        default=True, metadata={"help": "Transcribe eval splits with generate() to report WER/CER (speech models)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow training into a non-empty output_dir (replaces only files hf-unlearn wrote there)."},
    )
    allow_overlap: bool = field(
        default=False, metadata={"help": "Train even when forget and retain sets share examples (refused otherwise)."}
    )

    # TrainingArguments defaults that do not suit unlearning runs.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep raw columns (text, audio) for the collator."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    save_strategy: str = field(
        default="no", metadata={"help": "Checkpoint strategy ('no', 'steps', 'epoch', 'best')."}
    )

    def __post_init__(self):
        if self.per_device_retain_batch_size is None:
            self.per_device_retain_batch_size = self.per_device_train_batch_size
        if self.per_device_retain_batch_size < 1:
            raise ValueError(
                f"per_device_retain_batch_size must be >= 1, got {self.per_device_retain_batch_size}; set "
                "retain_weight=0 to drop the retain term instead."
            )
        if self.retain_weight is not None and self.retain_weight < 0:
            raise ValueError(f"retain_weight must be >= 0, got {self.retain_weight}.")
        if launcher_world_size() > 1 and not accelerator_available() and not self.use_cpu:
            # Without an accelerator, processes that do not ask for the CPU never join a process group (each would
            # train alone on its shard): ask for it, which is what the user meant.
            logger.info("Several processes and no accelerator: setting use_cpu=True.")
            self.use_cpu = True
        if self.use_cpu and self.ddp_backend is None and launcher_world_size() > 1:
            self.ddp_backend = "gloo"  # the only backend torch.distributed offers on CPU everywhere
        if self.dataloader_pin_memory and (self.use_cpu or not accelerator_available()):
            # Pinned memory only speeds up host-to-accelerator copies; without one, torch warns on every dataloader.
            self.dataloader_pin_memory = False
        super().__post_init__()

    @property
    def has_retain_term(self) -> bool:
        """Whether the objective has a retain term, so that the trainer draws retain batches."""
        return bool(self.retain_weight)


def deprecated_alias(help_text: str, new_name: str) -> Any:
    """A config field kept for one release under its old name: ``None`` unless the user sets it. List it in the
    config's `renamed_fields`; `take_renamed_fields` moves its value to the new name, and the model card skips it."""
    return field(
        default=None, metadata={"help": f"Deprecated: use {new_name} ({help_text}); removed in the next release."}
    )


def take_renamed_fields(config: "UnlearnConfig") -> None:
    """Move each value given under a field's old name (`config.renamed_fields`: old → new) to its new name, with a
    FutureWarning naming the new name; the old field is reset to ``None`` so that saved arguments carry each value
    once, under its new name. Call it first in `__post_init__`, before the new fields are validated."""
    for old_name, new_name in config.renamed_fields.items():
        value = getattr(config, old_name)
        if value is None:
            continue
        warnings.warn(
            f"{type(config).__name__}({old_name}=...) is deprecated and will be removed in the next release: use "
            f"{new_name}={value!r} instead.",
            FutureWarning,
            stacklevel=4,  # the user's call: here ← the config's __post_init__ ← the dataclass __init__ ← user
        )
        setattr(config, new_name, value)
        setattr(config, old_name, None)
