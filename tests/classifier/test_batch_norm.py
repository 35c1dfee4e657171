"""Frozen BatchNorm: accepted by OrthoGrad and LUR (per-sample gradients are then exact), batch statistics refused."""

import pytest
import torch
from torch.func import functional_call, grad, vmap

from hf_unlearn.gradients import FusedGradientCapture, VmapPerSampleGradients
from hf_unlearn.losses import model_per_example_loss, model_sequence_log_prob
from hf_unlearn.models import freeze_batch_norm
from hf_unlearn.models.batch_norm import batch_norm_in_training

from ..testing_utils import make_classifier_trainer, pixel_batch, pixel_dataset, tiny_resnet


def test_frozen_batch_norm_stays_in_eval_mode_and_survives_a_copy():
    import copy

    model = tiny_resnet()
    assert batch_norm_in_training(model)  # trained-from-scratch BN normalises with batch statistics
    assert freeze_batch_norm(model) == 4
    model.train()
    assert model.training and not batch_norm_in_training(model)
    copied = copy.deepcopy(model)
    copied.train()
    assert all(not m.training for m in copied.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # The probe restores every module's mode.
    model.eval()
    batch_norm_in_training(model)
    assert not model.training


@pytest.mark.parametrize("method, name", [("orthograd", "OrthoGrad"), ("lur", "LUR")])
def test_batch_norm_with_batch_statistics_is_refused_naming_the_fix(tmp_path, method, name):
    with pytest.raises(ValueError, match=rf"{name}.*freeze_batch_norm.*GroupNorm/LayerNorm"):
        make_classifier_trainer(method, tmp_path, tiny_resnet())


def test_per_sample_gradients_through_frozen_batch_norm_match_a_loop_in_float64():
    model = tiny_resnet(torch.float64)
    freeze_batch_norm(model)
    model.train()
    inputs = pixel_batch(pixel_dataset(5, seed=3), torch.float64)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # ℓ = −log π(y|x) with |y| = 1: no value check (vmap cannot branch on tensor values).
    per_sample = VmapPerSampleGradients(model, lambda m, b: -model_sequence_log_prob(m, b)[0])
    per_sample.compute(inputs)
    gram = per_sample.gram()
    loop = []
    for i in range(5):
        single = {k: v[i : i + 1] for k, v in inputs.items()}
        grads = torch.autograd.grad(model_per_example_loss(model, single).sum(), list(params.values()))
        loop.append(torch.cat([g.flatten() for g in grads]))
    loop = torch.stack(loop)
    torch.testing.assert_close(gram, loop @ loop.T, rtol=1e-10, atol=1e-12)
    assert float(loop.norm()) > 0

    # The same per-sample gradient through torch.func directly: BN in eval mode is a per-channel affine map.
    def loss(p, pixels, label):
        out = functional_call(model, p, kwargs={"pixel_values": pixels[None]})
        return torch.nn.functional.cross_entropy(out.logits, label[None])

    direct = vmap(grad(loss), in_dims=(None, 0, 0))({k: v.detach() for k, v in params.items()},
                                                    inputs["pixel_values"], inputs["labels"])  # fmt: skip
    direct = torch.cat([direct[n].flatten(1) for n in params], 1)
    torch.testing.assert_close(direct, loop, rtol=1e-10, atol=1e-12)

    # And from one backward through the fused capture (frozen BN has its own sampler), every parameter of the ResNet.
    with FusedGradientCapture(model) as capture:
        capture.backward(model_per_example_loss(model, inputs))
    fused = capture.per_sample_gradients()
    assert list(fused) == list(params)
    torch.testing.assert_close(torch.cat([fused[n].flatten(1) for n in params], 1), loop, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(capture.gram(), loop @ loop.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["orthograd", "lur"])
def test_orthograd_and_lur_train_a_frozen_batch_norm_resnet(tmp_path, method):
    model = tiny_resnet()
    freeze_batch_norm(model)
    stats = [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    trainer = make_classifier_trainer(method, tmp_path, model)
    trainer.train()
    if method == "orthograd":
        assert trainer.per_sample_backend == "fused"  # conv, frozen BN and linear layers all have fused samplers
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    for old, module in zip(stats, [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)], strict=True):
        assert torch.equal(old, module.running_mean)  # frozen statistics never updated
