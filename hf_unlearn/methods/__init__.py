"""One module per unlearning method: `<Name>Config` + `<Name>Trainer`."""

from .grad_ascent import GradAscentConfig, GradAscentTrainer
from .grad_diff import GradDiffConfig, GradDiffTrainer
from .npo import NPOConfig, NPOTrainer
from .simnpo import SimNPOConfig, SimNPOTrainer


# The recipe CLI's `--method` table: explicit, no registry.
METHODS = {
    "ga": (GradAscentConfig, GradAscentTrainer),
    "graddiff": (GradDiffConfig, GradDiffTrainer),
    "npo": (NPOConfig, NPOTrainer),
    "simnpo": (SimNPOConfig, SimNPOTrainer),
}

__all__ = [
    "METHODS",
    "GradAscentConfig",
    "GradAscentTrainer",
    "GradDiffConfig",
    "GradDiffTrainer",
    "NPOConfig",
    "NPOTrainer",
    "SimNPOConfig",
    "SimNPOTrainer",
]
