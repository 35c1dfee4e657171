"""One forward for both sides of a step: the forget and retain batches stacked into one joint batch."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...losses import IGNORE_INDEX


def concatenate_batches(
    first: dict[str, Any], second: dict[str, Any], pad_token_id: int = 0, is_encoder_decoder: bool = False
) -> dict[str, Any]:
    """Stack two collated batches into one along dim 0, right-padding 2-D token tensors to the longer sequence.

    Padding uses `-100` for `labels` (no loss), `0` for attention masks, and ``pad_token_id`` for other 2-D tensors
    (token ids). Right padding leaves every real position unchanged in a causal decoder, and encoder inputs are masked
    by their attention mask; an encoder-decoder batch whose `input_ids` need padding but carry no `attention_mask` is
    refused, since the padding would then change the encoder's output. Tensors of other ranks (audio features) must
    already agree beyond dim 0.
    """
    if first.keys() != second.keys():
        raise ValueError(
            f"The forget and retain batches have different keys ({sorted(first)} vs {sorted(second)}): collate both "
            "sets with the same data_collator and the same columns."
        )
    joint = {}
    for key, a in first.items():
        b = second[key]
        if not isinstance(a, Tensor):
            if a != b:
                raise ValueError(f"Non-tensor batch entry {key!r} differs between the forget and retain batches.")
            joint[key] = a
            continue
        if a.ndim == 2 and a.shape[1] != b.shape[1]:
            if key == "input_ids" and is_encoder_decoder and "attention_mask" not in first:
                raise ValueError(
                    "The forget and retain batches have different input lengths and no attention_mask, so padding "
                    "them to one length would change the encoder's output: make the collator return attention_mask."
                )
            if key == "labels":
                value = IGNORE_INDEX
            elif key.endswith("attention_mask"):
                value = 0
            else:
                value = pad_token_id
            length = max(a.shape[1], b.shape[1])
            a, b = (F.pad(t, (0, length - t.shape[1]), value=value) for t in (a, b))
        elif a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"Batch entry {key!r} has shape {tuple(a.shape)} in the forget batch and {tuple(b.shape)} in the "
                "retain batch; only 2-D token tensors are padded. Pad/trim features to the same size in the collator "
                "(Whisper: the same number of frames)."
            )
        joint[key] = torch.cat([a, b.to(a.device)])
    return joint
