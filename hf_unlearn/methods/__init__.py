"""One module per unlearning method (`<Name>Config` + `<Name>Trainer`); OrthoGrad (with GRU) and LUR are each a
package holding their config, trainer and maths."""

from .grad_ascent import GradAscentConfig, GradAscentTrainer
from .grad_diff import GradDiffConfig, GradDiffTrainer
from .lur import LURConfig, LURTrainer
from .npo import NPOConfig, NPOTrainer
from .orthograd import GRUConfig, GRUTrainer, OrthoGradConfig, OrthoGradTrainer
from .salun import SalUnConfig, SalUnTrainer
from .scrub import SCRUBConfig, SCRUBTrainer
from .simnpo import SimNPOConfig, SimNPOTrainer


# The recipe CLI's `--method` table: explicit, no registry.
METHODS = {
    "ga": (GradAscentConfig, GradAscentTrainer),
    "graddiff": (GradDiffConfig, GradDiffTrainer),
    "npo": (NPOConfig, NPOTrainer),
    "simnpo": (SimNPOConfig, SimNPOTrainer),
    "orthograd": (OrthoGradConfig, OrthoGradTrainer),
    "gru": (GRUConfig, GRUTrainer),
    "lur": (LURConfig, LURTrainer),
    "salun": (SalUnConfig, SalUnTrainer),
    "scrub": (SCRUBConfig, SCRUBTrainer),
}


def retain_knob(method: str) -> str:
    """The config field that balances forgetting against retention for a `--method`: `retain_mix` (α ∈ [0, 1)) for
    OrthoGrad and GRU, `retain_weight` (the retain term's weight λ/γ) for every other method."""
    return "retain_mix" if method in ("orthograd", "gru") else "retain_weight"


__all__ = [
    "METHODS",
    "retain_knob",
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
]
