"""SimNPO: reference-free, length-normalised NPO."""

from dataclasses import dataclass, field

import torch.nn.functional as F

from ..configs import UnlearnConfig
from ..losses import model_sequence_log_prob
from ..trainer import UnlearnTrainer


@dataclass
class SimNPOConfig(UnlearnConfig):
    r"""
    Configuration for [`SimNPOTrainer`].

    Parameters:
        beta (`float`, *optional*, defaults to `2.5`):
            Inverse temperature β applied to the length-normalised log-likelihood.
        delta (`float`, *optional*, defaults to `0.0`):
            Reward margin δ.
        retain_weight (`float`, *optional*, defaults to `1.0`):
            λ of the retain term.
    """

    beta: float = field(default=2.5, metadata={"help": "SimNPO inverse temperature beta (> 0)."})
    delta: float = field(default=0.0, metadata={"help": "SimNPO reward margin delta."})

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}.")
        super().__post_init__()


class SimNPOTrainer(UnlearnTrainer):
    r"""
    SimNPO ([Fan et al., 2024](https://huggingface.co/papers/2410.07163)):

        L = −(2/β)·mean_j log σ(−(β/|y_j|)·log π_θ(y_j|x_j) − δ) + λ·L_r

    No reference model: the length-normalised likelihood replaces NPO's reference ratio, so long and short
    forget examples are pushed equally. `−log σ(z) = softplus(−z)` is what is computed.
    """

    _name = "SimNPO"
    _tag_names = UnlearnTrainer._tag_names + ["simnpo"]
    _paper = {
        "title": "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning",
        "id": "2410.07163",
    }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        log_prob, lengths = model_sequence_log_prob(model, inputs, self.model_config)
        beta, delta = self.args.beta, self.args.delta
        margin = -(beta / lengths) * log_prob - delta
        loss = (2.0 / beta) * F.softplus(-margin).mean()
        self.log_metric("forget/loss", (-log_prob / lengths).mean())
        loss = loss + self.weighted_retain_loss(model)
        self.check_finite(loss)
        return (loss, None) if return_outputs else loss
