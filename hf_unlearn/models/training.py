"""Training a reference model from scratch with the HF Trainer, shared by the speech and text references."""

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_unlearn.integrations.deepspeed import declare_cpu_when_no_accelerator


@dataclass(frozen=True)
class FromScratchConfig:
    """Hyperparameters of `fit_from_scratch`. The reference models subclass it and set the defaults that make their
    benchmark's base model memorise its training data (the values here are the speech benchmark's).

    Args:
        learning_rate (`float`): Peak AdamW learning rate.
        num_train_epochs (`int`): Passes over the training split.
        batch_size (`int`): Examples per step.
        warmup_steps (`int`): Linear warmup from 0.
        lr_scheduler_type (`str`, *optional*, defaults to `"warmup_stable_decay"`): transformers scheduler name.
        decay_fraction (`float`, *optional*, defaults to `0.3`): With `"warmup_stable_decay"`, the final fraction of
            the steps over which the learning rate decays to 0.
        weight_decay (`float`, *optional*, defaults to `0.0`): AdamW weight decay.
        max_grad_norm (`float`, *optional*, defaults to `1.0`): Gradient clipping.
        seed (`int`, *optional*, defaults to `0`): Seeds the initialisation and the data order.
    """

    learning_rate: float = 1e-3
    num_train_epochs: int = 70
    batch_size: int = 8
    warmup_steps: int = 50
    lr_scheduler_type: str = "warmup_stable_decay"
    decay_fraction: float = 0.3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0


# What each reference is, for the phase line before its training (the cache names them "base" and "retrain").
REFERENCE_ROLES = {
    "base": "base model (forget set included)",
    "retrain": "exact-retrain reference (forget set left out)",
}


def fit_from_scratch(
    model: nn.Module,
    train_dataset: Dataset,
    collator: Any,
    config: FromScratchConfig,
    output_dir: Path,
    description: str | None = None,
) -> dict:
    """Train `model` in place on CPU under `config` and return training statistics for the cache's info file.

    `config` is a `FromScratchConfig` (`ReferenceTrainingConfig`, `TextReferenceTrainingConfig`). With the
    `"warmup_stable_decay"` schedule the last `decay_fraction` of the steps decay the learning rate to 0.
    `description` names the model in the phase line printed before training (default: the model's class), so the
    progress bar and loss logs that follow say which reference model is being trained.
    """
    description = description or type(model).__name__
    print(
        f"[hf-unlearn] Training the {description} from scratch ({len(train_dataset)} examples, "
        f"{config.num_train_epochs} epochs; cached for later runs)",
        flush=True,
    )
    scheduler_kwargs = {}
    if config.lr_scheduler_type == "warmup_stable_decay":
        total_steps = math.ceil(len(train_dataset) / config.batch_size) * config.num_train_epochs
        scheduler_kwargs = {"num_decay_steps": max(1, int(config.decay_fraction * total_steps))}
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.num_train_epochs,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        lr_scheduler_kwargs=scheduler_kwargs,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        data_seed=config.seed,
        optim="adamw_torch",
        use_cpu=True,
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        # The collators read raw columns (`text`, `question`); the Trainer must not drop them as "unused".
        remove_unused_columns=False,
        dataloader_pin_memory=False,
    )
    declare_cpu_when_no_accelerator()  # before `Trainer` imports DeepSpeed: no "unable to detect" warning
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator)
    start = time.perf_counter()
    result = trainer.train()
    model.eval()
    return {"train_seconds": round(time.perf_counter() - start, 2), "train_loss": result.training_loss,
            "global_step": result.global_step}  # fmt: skip
