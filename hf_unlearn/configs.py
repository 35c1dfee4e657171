"""`UnlearnConfig`: the `TrainingArguments` fields every unlearning method shares."""

import logging
from dataclasses import dataclass, field

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
            Weight of the retain loss in the objective (λ of GradDiff/NPO, α of OrthoGrad, γ of LUR; each method's
            docstring states its role). `0` turns the retain term off.
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

    retain_weight: float = field(
        default=1.0, metadata={"help": "Weight of the retain term; its exact role is stated by each method."}
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
        if self.retain_weight < 0:
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
