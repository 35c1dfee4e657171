"""hf-unlearn: make a transformers model forget chosen data while keeping the rest."""

from .callbacks import StopAtForgetTarget
from .configs import UnlearnConfig
from .methods import (
    METHODS,
    GradAscentConfig,
    GradAscentTrainer,
    GradDiffConfig,
    GradDiffTrainer,
    GRUConfig,
    GRUTrainer,
    LURConfig,
    LURTrainer,
    NPOConfig,
    NPOTrainer,
    OrthoGradConfig,
    OrthoGradTrainer,
    SalUnConfig,
    SalUnTrainer,
    SCRUBConfig,
    SCRUBTrainer,
    SimNPOConfig,
    SimNPOTrainer,
)
from .trainer import UnlearnTrainer


__version__ = "0.1.0.dev0"

__all__ = [
    "METHODS",
    "UnlearnConfig",
    "UnlearnTrainer",
    "GradAscentConfig",
    "GradAscentTrainer",
    "GradDiffConfig",
    "GradDiffTrainer",
    "GRUConfig",
    "GRUTrainer",
    "LURConfig",
    "LURTrainer",
    "NPOConfig",
    "NPOTrainer",
    "OrthoGradConfig",
    "OrthoGradTrainer",
    "SalUnConfig",
    "SalUnTrainer",
    "SCRUBConfig",
    "SCRUBTrainer",
    "SimNPOConfig",
    "SimNPOTrainer",
    "StopAtForgetTarget",
]
