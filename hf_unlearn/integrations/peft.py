"""peft internals and version-dependent attributes (checked against peft 0.21.2; `lora_variant` needs peft ≥ 0.16)."""

import warnings
from typing import Any

from torch import nn


CHECKED = "peft 0.21.2"
REQUIRES = "peft>=0.16"  # `lora_variant` (pyproject's lower bound must be at least this)

INTERNALS = (
    ("peft.tuners.lora.layer.LoraLayer", "lora_variant"),  # per-adapter variant objects (DoRA, ...), peft >= 0.16
)


def lora_variants(module: nn.Module) -> dict[str, Any]:
    """``{adapter name: variant}`` of a LoRA layer whose adapters use a LoRA variant (DoRA, ...); empty otherwise.
    `lora_variant` is an instance attribute that peft 0.16 introduced; older layers have none."""
    return getattr(module, "lora_variant", {})


def get_peft_model_quietly(model: nn.Module, peft_config: Any) -> nn.Module:
    """`peft.get_peft_model`, without the FutureWarning peft raises on every run by reading
    `model.is_gradient_checkpointing`, a name transformers 5 deprecates (nothing for the user to do). Drop the
    filter when peft reads the new name."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, peft_config)
