"""SalUn: unlearning restricted to the weights most salient for the forget set."""

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..configs import UnlearnConfig
from ..integrations.accelerate import zero_stage
from ..integrations.transformers import prepare_inputs
from ..losses import model_target_logits, per_example_loss_from_log_prob, sequence_log_prob
from ..trainer import UnlearnTrainer


@dataclass
class SalUnConfig(UnlearnConfig):
    r"""
    Configuration for [`SalUnTrainer`].

    Parameters:
        saliency_fraction (`float`, *optional*, defaults to `0.5`):
            Fraction of the trainable weights that may change: those with the largest forget-gradient magnitude
            (the paper's threshold γ is this quantile; 0.5 is its default).
        retain_weight (`float`, *optional*, defaults to `1.0`):
            λ of the retain term.
    """

    saliency_fraction: float = field(
        default=0.5, metadata={"help": "Fraction of trainable weights (largest |forget gradient|) allowed to change."}
    )

    def __post_init__(self):
        if not 0 < self.saliency_fraction <= 1:
            raise ValueError(f"saliency_fraction must be in (0, 1], got {self.saliency_fraction}.")
        super().__post_init__()


def saliency_masks(gradients: dict[str, Tensor], fraction: float) -> dict[str, Tensor]:
    """Boolean masks that keep the ``fraction`` of weights with the largest ``|gradient|``, over all tensors at once
    (one global threshold, as in the paper; ties at the threshold are kept)."""
    magnitudes = torch.cat([g.detach().abs().flatten().float() for g in gradients.values()])
    keep = max(1, math.ceil(fraction * magnitudes.numel()))
    threshold = torch.topk(magnitudes, keep).values.min()
    return {name: g.detach().abs().float() >= threshold for name, g in gradients.items()}


def random_other_labels(labels: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
    """A uniformly random label different from each true one: ``(y + U{1..C−1}) mod C``."""
    shift = torch.randint(1, num_classes, labels.shape, generator=generator).to(labels.device)
    return (labels + shift) % num_classes


class SalUnTrainer(UnlearnTrainer):
    r"""
    SalUn ([Fan et al., 2024](https://huggingface.co/papers/2310.12508)). Before the first step, the gradient of the
    forget loss over the whole forget set, ``g = ∇_θ L_f``, gives a weight-saliency mask
    ``m = [|g| ≥ γ]`` with γ the threshold that keeps `saliency_fraction` of the trainable weights. Every update is
    then restricted to the salient weights, ``θ ← θ − η·(m ⊙ ∇L)``, with

        classifiers:  L = (1/m) Σ_j CE(f_θ(x_j), y'_j) + λ·L_r,   y'_j a random label ≠ y_j (redrawn every step)
        sequences:    L = −L_f + λ·L_r                          (the masked GradDiff the paper uses for generation)

    A classifier batch is recognised by its labels of shape `[B]`. The mask is applied by gradient hooks on the
    parameters, before any optimizer, accumulation or DDP reduction sees the gradient. With AdamW, masked weights
    stay put (their gradient is always zero) unless `weight_decay > 0` shrinks them. Every process computes the mask
    from the whole forget set, so all agree without communication. Not supported under DeepSpeed ZeRO-3, whose
    partitioned parameters the hooks cannot see whole.
    """

    _name = "SalUn"
    _tag_names = UnlearnTrainer._tag_names + ["salun"]
    _paper = {
        "title": "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image "
        "Classification and Generation",
        "id": "2310.12508",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, SalUnConfig):
            raise TypeError(f"SalUnTrainer needs args=SalUnConfig(...), got {type(self.args).__name__}.")
        if zero_stage(self.accelerator) == 3:
            raise ValueError("SalUn's saliency mask needs whole parameters: use DDP or DeepSpeed ZeRO-2, not ZeRO-3.")
        self.saliency: dict[str, Tensor] | None = None
        self._hooks: list = []
        self._label_generator = torch.Generator().manual_seed(self.args.seed)

    # ------------------------------------------------------------------ the mask

    def compute_saliency(self) -> dict[str, Tensor]:
        """``∇_θ L_f`` over the whole forget set (mean of per-example losses), turned into masks, and hooked on."""
        model = self.accelerator.unwrap_model(self.model)
        parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
        was_training = model.training
        model.eval()  # deterministic: no dropout in the saliency estimate
        totals = {name: torch.zeros_like(p) for name, p in parameters.items()}
        loader = DataLoader(self.train_dataset, batch_size=self.args.per_device_train_batch_size,
                            collate_fn=self.data_collator)  # fmt: skip
        try:
            for batch in loader:
                batch = prepare_inputs(self, batch)
                losses = per_example_loss_from_log_prob(
                    *sequence_log_prob(*model_target_logits(model, batch, self.model_config))
                )
                grads = torch.autograd.grad(losses.sum() / len(self.train_dataset), list(parameters.values()),
                                            allow_unused=True)  # fmt: skip
                for name, grad in zip(parameters, grads, strict=True):
                    if grad is not None:
                        totals[name] += grad
        finally:
            model.train(was_training)
        self.saliency = saliency_masks(totals, self.args.saliency_fraction)
        for name, param in parameters.items():
            mask = self.saliency[name].to(param.dtype)
            self._hooks.append(param.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device)))
        kept = sum(int(m.sum()) for m in self.saliency.values())
        self.log_metric("salun/salient_fraction", kept / sum(m.numel() for m in self.saliency.values()))
        return self.saliency

    def remove_saliency_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            self.remove_saliency_hooks()  # the trained model must not keep masking gradients afterwards

    # ------------------------------------------------------------------ the loss

    def compute_loss(self, model: nn.Module, inputs, return_outputs=False, num_items_in_batch=None):
        if self.saliency is None:
            self.compute_saliency()
        logits, labels = model_target_logits(model, inputs, self.model_config)
        forget_loss = per_example_loss_from_log_prob(*sequence_log_prob(logits, labels)).mean()
        self.log_metric("forget/loss", forget_loss)
        if inputs["labels"].ndim == 1:
            random_labels = random_other_labels(labels, logits.shape[-1], self._label_generator)
            unlearn_loss = per_example_loss_from_log_prob(*sequence_log_prob(logits, random_labels)).mean()
            self.log_metric("salun/random_label_loss", unlearn_loss)
        else:
            unlearn_loss = -forget_loss
        loss = unlearn_loss + self.weighted_retain_loss(model)
        self.check_finite(loss)
        return (loss, None) if return_outputs else loss
