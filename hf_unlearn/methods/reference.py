"""The reference policy π_ref of NPO-style objectives: the model as it was before unlearning."""

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn


class ReferencePolicy:
    """Scores batches with the model before unlearning, without a second copy of the weights when possible.

    For a peft model the reference is the same network with the adapter disabled (as trl's `use_adapter`), so it
    costs one extra no-grad forward and no memory. Only a model without an adapter is copied once, frozen, at
    construction — the one case where the pre-unlearning weights would otherwise be lost.
    """

    def __init__(self, model: nn.Module):
        from peft import PeftModel

        self._is_peft = isinstance(model, PeftModel)
        self._frozen_copy = None if self._is_peft else _frozen_copy(model)

    @contextlib.contextmanager
    def activate(self, model: nn.Module) -> Iterator[nn.Module]:
        """Yield the module to run as π_ref; ``model`` is the (unwrapped) policy being trained."""
        if self._is_peft:
            with model.disable_adapter():
                yield model
        else:
            yield self._frozen_copy


def _frozen_copy(model: nn.Module) -> nn.Module:
    reference = copy.deepcopy(model)
    reference.eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


@torch.no_grad()
def reference_log_prob(reference: ReferencePolicy, model: nn.Module, score) -> torch.Tensor:
    """``score(module)`` under π_ref, without gradient."""
    with reference.activate(model) as reference_module:
        return score(reference_module)
