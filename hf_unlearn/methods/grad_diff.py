"""Gradient difference (GradDiff): ascend on the forget set, descend on the retain set."""

from dataclasses import dataclass

from ..configs import UnlearnConfig
from ..trainer import UnlearnTrainer


@dataclass
class GradDiffConfig(UnlearnConfig):
    r"""
    Configuration for [`GradDiffTrainer`]. `retain_weight` is λ in `−L_f + λ·L_r` (default `1.0`).
    """


class GradDiffTrainer(UnlearnTrainer):
    r"""
    GradDiff: minimise `−L_f + λ·L_r` with λ = `retain_weight` (DESIGN §2.1). Both terms are means of
    per-example losses, so λ weighs a typical forget example against a typical retain example.
    """

    _name = "GradDiff"
    _tag_names = UnlearnTrainer._tag_names + ["graddiff"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget_loss = self.per_example_loss(model, inputs).mean()
        loss = -forget_loss
        self.log_metric("forget/loss", forget_loss)
        loss = loss + self.weighted_retain_loss(model)
        self.check_finite(loss)
        return (loss, None) if return_outputs else loss
