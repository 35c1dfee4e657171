"""Negative Preference Optimization (NPO): gradient ascent with a bounded, reference-relative loss."""

from dataclasses import dataclass, field
from typing import ClassVar

from ..configs import UnlearnConfig, deprecated_alias, take_renamed_fields
from ..losses import model_sequence_log_prob, unlearning_loss
from ..trainer import UnlearnTrainer
from .reference import ReferencePolicy, reference_log_prob


@dataclass
class NPOConfig(UnlearnConfig):
    r"""
    Configuration for [`NPOTrainer`].

    Parameters:
        npo_beta (`float`, *optional*, defaults to `0.1`):
            Inverse temperature β of the NPO loss (the paper's default). As β → 0 NPO tends to gradient ascent. The
            same field as in `OrthoGradConfig` and `LURConfig` (`forget_loss="npo"`); the old name `beta` is accepted
            for one release with a FutureWarning.
        retain_weight (`float`, *optional*, defaults to `10.0`):
            λ of the retain term. At λ = 1 NPO's default run collapsed the speech benchmark (retain WER 0.61 after
            60 steps at lr 1e-3); λ = 10 keeps every embedded benchmark (`benchmarks/results/default_stability.md`),
            and it is the weight the matched-forget tuning chose on speech, on text and for class-wise forgetting.
    """

    retain_weight: float = field(
        default=10.0, metadata={"help": "Weight lambda of the retain loss term (0 turns it off)."}
    )
    npo_beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature beta (> 0)."})
    renamed_fields: ClassVar[dict[str, str]] = {"beta": "npo_beta"}
    beta: float | None = deprecated_alias("NPO inverse temperature", "npo_beta")

    def __post_init__(self):
        take_renamed_fields(self)
        if self.npo_beta <= 0:
            raise ValueError(f"npo_beta must be > 0, got {self.npo_beta}.")
        super().__post_init__()


class NPOTrainer(UnlearnTrainer):
    r"""
    NPO ([Zhang et al., 2024](https://huggingface.co/papers/2404.05868)):

        L = (2/β)·mean_j log(1 + (π_θ(y_j|x_j) / π_ref(y_j|x_j))^β) + λ·L_r

    with β = `npo_beta`, π the sequence likelihood (sum of target-token log-probabilities) and π_ref the model before unlearning:
    the same network with its adapter disabled for a peft model, a frozen copy otherwise. The log-term equals
    `softplus(β·(log π_θ − log π_ref))`, which is what is computed.
    """

    _name = "NPO"
    _tag_names = UnlearnTrainer._tag_names + ["npo"]
    _paper = {
        "title": "Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning",
        "id": "2404.05868",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference = ReferencePolicy(self.accelerator.unwrap_model(self.model))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        log_prob, lengths = model_sequence_log_prob(model, inputs, self.model_config)
        unwrapped = self.accelerator.unwrap_model(model)
        ref_log_prob = reference_log_prob(
            self.reference, unwrapped, lambda m: model_sequence_log_prob(m, inputs, self.model_config)[0]
        )
        loss = unlearning_loss(log_prob, lengths, ref_log_prob, self.args.npo_beta).mean()
        self.log_metric("forget/loss", (-log_prob / lengths).mean())
        self.log_metric("npo/log_ratio", (log_prob - ref_log_prob).mean())
        loss = loss + self.weighted_retain_loss(model)
        self.check_finite(loss)
        return (loss, None) if return_outputs else loss
