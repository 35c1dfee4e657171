"""Fused capture for full fine-tuning: every supported layer type against torch.func and a per-sample loop (float64)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_unlearn.gradients import FusedGradientCapture, UnsupportedLayerError
from hf_unlearn.models import freeze_batch_norm

from ..testing_utils import assert_close, flatten, loop_per_sample_grads, vmap_per_sample_grads


class TokenNet(nn.Module):
    """Embedding (with a padding index and repeated ids) → LayerNorm → Linear on [B, T, d] → GPT-2's Conv1D."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6, padding_idx=0)
        self.norm = nn.LayerNorm(6)
        self.proj = nn.Linear(6, 5)
        self.conv1d_t = Conv1D(4, 5)  # transformers' (nf, nx): weight [5, 4]
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        hidden = torch.tanh(self.proj(self.norm(self.embed(x))))
        return self.head(torch.tanh(self.conv1d_t(hidden)).mean(1))


class ImageNet(nn.Module):
    """Conv2d (stride, padding) → Conv1d (dilation, padding) → LayerNorm over two dims → Linear (2-D input)."""

    def __init__(self):
        super().__init__()
        self.conv2d = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.conv1d = nn.Conv1d(3, 4, 3, dilation=2, padding=2, bias=False)
        self.norm = nn.LayerNorm([4, 9])
        self.head = nn.Linear(36, 3)

    def forward(self, x):
        hidden = torch.tanh(self.conv2d(x)).flatten(2)  # [B, 3, 9]
        return self.head(self.norm(torch.tanh(self.conv1d(hidden))).flatten(1))


class FrozenBatchNormNet(nn.Module):
    """Conv2d → frozen BatchNorm2d → BatchNorm1d on [B, C, L] → Linear → BatchNorm1d on [B, C], all in eval mode with
    non-trivial running statistics (a ResNet block as fine-tuned with frozen BN)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn2d = nn.BatchNorm2d(3)
        self.bn1d_positions = nn.BatchNorm1d(3)
        self.proj = nn.Linear(3 * 36, 4)
        self.bn1d_features = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 3)
        generator = torch.Generator().manual_seed(7)
        for norm in (self.bn2d, self.bn1d_positions, self.bn1d_features):
            norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator))
            norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
            nn.init.normal_(norm.weight, generator=generator)
            nn.init.normal_(norm.bias, generator=generator)
        freeze_batch_norm(self)

    def forward(self, x):
        hidden = torch.tanh(self.bn2d(self.conv(x))).flatten(2)  # [B, 3, 36]
        hidden = torch.tanh(self.bn1d_positions(hidden)).flatten(1)
        return self.head(torch.tanh(self.bn1d_features(self.proj(hidden))))


def token_batch(batch: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 5, (batch, 7), generator=generator)  # few ids: repeats within and across samples, pads
    return {"x": ids, "labels": torch.randint(0, 3, (batch,), generator=generator)}


def image_batch(batch: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 2, 6, 6, generator=generator, dtype=torch.float64)
    return {"x": images, "labels": torch.randint(0, 3, (batch,), generator=generator)}


def losses(model, batch):
    return F.cross_entropy(model(x=batch["x"]), batch["labels"], reduction="none")


NETS = {
    "tokens": (TokenNet, token_batch),
    "images": (ImageNet, image_batch),
    "frozen_bn": (FrozenBatchNormNet, image_batch),
}


def captured(net: str, batch_size: int = 4, **kwargs):
    build, make_batch = NETS[net]
    torch.manual_seed(0)
    model = build().double()
    batch = make_batch(batch_size, seed=batch_size)
    with FusedGradientCapture(model, **kwargs) as capture:
        capture.backward(losses(model, batch))
    return model, batch, capture


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("net", list(NETS))
def test_per_sample_gradients_match_torch_func_and_loop(net, batch_size):
    model, batch, capture = captured(net, batch_size)
    fused = capture.per_sample_gradients()
    looped = loop_per_sample_grads(model, batch, loss_fn=losses)
    vmapped = vmap_per_sample_grads(model, batch, loss_fn=losses)
    assert fused.keys() == looped.keys() == dict(model.named_parameters()).keys()
    for name in looped:
        assert looped[name].norm() > 0, f"{name}: the reference gradient is zero, the test checks nothing"
        assert_close(fused[name], looped[name], what=f"capture vs loop, {name}")
        assert_close(vmapped[name], looped[name], what=f"torch.func vs loop, {name}")
    if net == "tokens":  # the padding row of the embedding never gets a gradient
        assert fused["embed.weight"][:, 0].abs().max() == 0


@pytest.mark.parametrize("method", ["auto", "ghost", "materialize"])
@pytest.mark.parametrize("net", list(NETS))
def test_readouts_match_flattened_references(net, method):
    model, batch, capture = captured(net, 5, gram_method=method)
    expected = loop_per_sample_grads(model, batch, loss_fn=losses)
    flat = flatten(expected)
    assert_close(capture.gram(), flat @ flat.T, what="global gram")
    per_tensor = capture.gram(per_tensor=True)
    assert per_tensor.keys() == expected.keys()
    generator = torch.Generator().manual_seed(1)
    weights = {n: torch.rand(g.shape[1:], generator=generator, dtype=torch.float64) + 0.1 for n, g in expected.items()}
    weighted = capture.gram(per_tensor=True, weights=weights)
    for name, grad in expected.items():
        g = grad.flatten(1)
        assert_close(per_tensor[name], g @ g.T, what=f"per-tensor gram {name}")
        assert_close(weighted[name], (g * weights[name].reshape(1, -1)) @ g.T, what=f"weighted gram {name}")
    vector = {n: torch.randn(g.shape[1:], generator=generator, dtype=torch.float64) for n, g in expected.items()}
    assert_close(capture.dot(vector), flat @ flatten({n: v[None] for n, v in vector.items()})[0], what="dot")
    squares = capture.squares()
    for name, grad in expected.items():
        assert_close(squares[name], grad.square().sum(0), what=f"squares {name}")
    coefficients = {n: torch.randn(5, generator=generator, dtype=torch.float64) for n in expected}
    combined = capture.combine(coefficients)
    for name, grad in expected.items():
        assert_close(combined[name], torch.einsum("b,b...->...", coefficients[name], grad), what=f"combine {name}")


class CustomScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.scale


def test_unsupported_layers_are_named():
    with pytest.raises(UnsupportedLayerError, match=r"`1`: CustomScale"):
        FusedGradientCapture(nn.Sequential(nn.Linear(3, 4), CustomScale()))
    assert list(FusedGradientCapture(nn.Sequential(nn.Linear(3, 4), CustomScale()), strict=False).parameters) == [
        "0.weight",
        "0.bias",
    ]
    with pytest.raises(UnsupportedLayerError, match="groups=2"):
        FusedGradientCapture(nn.Conv1d(4, 4, 3, groups=2))
    with pytest.raises(UnsupportedLayerError, match="padding='same'"):
        FusedGradientCapture(nn.Conv1d(4, 4, 3, padding="same"))
    tied = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    tied[1].weight = tied[0].weight
    with pytest.raises(UnsupportedLayerError, match="tied weights"):
        FusedGradientCapture(tied)
    with pytest.raises(UnsupportedLayerError, match="BatchNorm2d in training mode"):
        FusedGradientCapture(nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)))
    with pytest.raises(ValueError, match="requires_grad"):
        FusedGradientCapture(nn.Linear(3, 3).requires_grad_(False))


def test_per_tensor_coefficients_are_checked():
    _, _, capture = captured("images", 3)
    with pytest.raises(ValueError, match="No coefficients"):
        capture.combine({"head.weight": torch.ones(3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="Expected 3 coefficients"):
        capture.combine(torch.ones(2, dtype=torch.float64))


def test_global_gram_per_tensor_and_weighted_on_one_process():
    """The several-process path (all-gathered per-sample gradients) forms the same per-tensor and D-weighted Grams
    as the capture; on one process the gather is the identity."""
    from hf_unlearn.methods.orthograd.global_gram import global_gram

    _, _, capture = captured("images", 4)
    generator = torch.Generator().manual_seed(2)
    weights = {
        n: torch.rand(p.shape, generator=generator, dtype=torch.float64) + 0.1 for n, p in capture.parameters.items()
    }
    shared = global_gram(capture.per_sample_gradients(), 1, per_tensor=True, weights=weights)
    expected = capture.gram(per_tensor=True, weights=weights)
    assert shared.gram.keys() == expected.keys()
    for name in expected:
        assert_close(shared.gram[name], expected[name], what=name)
    assert shared.forget_mask.tolist() == [True, False, False, False] and shared.local_rows == slice(0, 4)
    assert_close(global_gram(capture.per_sample_gradients(), 1).gram, capture.gram(), what="global")
