"""Frozen BatchNorm: the one BatchNorm that per-sample-gradient methods (OrthoGrad, GRU) and LUR accept.

With batch statistics a BatchNorm couples the samples of a batch, so ``∇ℓ_i`` of one sample is undefined and LUR's
virtual step would mix the forget and retain examples of a batch. With its running statistics frozen (eval mode, as
when fine-tuning a pretrained ResNet) it is a fixed per-channel affine map: samples are independent again. The Trainer
calls ``model.train()`` at every step, so freezing means a BatchNorm that *stays* in eval mode when told to train.
"""

import types

from torch import nn

from ..integrations.torch import is_batch_norm


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def freeze_batch_norm(model: nn.Module) -> int:
    """Put every BatchNorm of ``model`` in eval mode for good (``model.train()`` leaves them there); returns how many.

    Running statistics stop updating; the affine weight and bias keep their ``requires_grad`` and may still train.
    """
    count = 0
    for module in model.modules():
        if is_batch_norm(module):
            module.eval()
            # An instance attribute shadows `nn.Module.train` for this module only; deepcopy rebinds it to the copy.
            module.train = types.MethodType(_stay_in_eval, module)
            count += 1
    return count


def batch_norm_in_training(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers that would use batch statistics once the Trainer calls ``model.train()``.

    Probes by switching ``model`` to training mode and back (every module's mode is restored), so it sees frozen
    layers however they were frozen (`freeze_batch_norm`, a subclass overriding ``train``).
    """
    modes = {module: module.training for module in model.modules()}
    try:
        model.train()
        return [
            name
            for name, module in model.named_modules()
            if is_batch_norm(module) and (module.training or not module.track_running_stats)
        ]
    finally:
        for module, mode in modes.items():
            module.training = mode


def refuse_batch_norm_in_training(model: nn.Module, method: str) -> None:
    """Raise, naming the fix, when a BatchNorm of ``model`` would normalise with batch statistics during ``method``."""
    names = batch_norm_in_training(model)
    if names:
        raise ValueError(
            f"{method} needs independent samples, but {len(names)} BatchNorm layer(s) (first: `{names[0]}`) normalise "
            "with batch statistics in training mode. Freeze them with "
            "`hf_unlearn.models.freeze_batch_norm(model)` (eval-mode running statistics, as when fine-tuning a "
            "pretrained ResNet), or replace BatchNorm with GroupNorm/LayerNorm."
        )
