"""Gradient ascent (GA): the simplest unlearning baseline."""

from dataclasses import dataclass, field

from ..configs import UnlearnConfig
from ..trainer import UnlearnTrainer


@dataclass
class GradAscentConfig(UnlearnConfig):
    r"""
    Configuration for [`GradAscentTrainer`]. GA uses no retain data, so `retain_weight` defaults to `0` and is
    ignored.
    """

    retain_weight: float = field(default=0.0, metadata={"help": "Unused by gradient ascent."})


class GradAscentTrainer(UnlearnTrainer):
    r"""
    Gradient ascent: minimise `−L_f`, the negated mean per-example forget loss (DESIGN §2.1). It forgets fast and
    damages everything else; it is the floor every other method must beat on retain metrics.
    """

    _name = "GradAscent"
    _tag_names = UnlearnTrainer._tag_names + ["gradient-ascent"]
    uses_retain_batch = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget_loss = self.per_example_loss(model, inputs).mean()
        loss = -forget_loss
        self.check_finite(loss)
        self.log_metric("forget/loss", forget_loss)
        return (loss, None) if return_outputs else loss
