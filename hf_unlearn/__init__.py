"""hf-unlearn: make a transformers model forget chosen data while keeping the rest.

The public names are imported on first use (PEP 562), so `hf-unlearn --help`, `hf-unlearn env` and
`import hf_unlearn.cli` do not pay for importing torch, transformers and peft.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any


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
# Public name → the submodule that defines it (every method class and METHODS live in `.methods`).
_EXPORTS = {name: ".methods" for name in __all__} | {
    "UnlearnConfig": ".configs",
    "UnlearnTrainer": ".trainer",
    "StopAtForgetTarget": ".callbacks",
}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hf_unlearn' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
