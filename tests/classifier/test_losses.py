"""The classification seam of `hf_unlearn.losses`: a batch with labels [B] is a one-target sequence."""

import torch
import torch.nn.functional as F

from hf_unlearn.losses import model_per_example_loss, model_sequence_log_prob, model_target_logits, target_lengths

from ..testing_utils import pixel_batch, pixel_dataset, tiny_resnet


def test_per_example_loss_is_the_cross_entropy_of_each_label_in_float64():
    model = tiny_resnet(torch.float64).eval()
    inputs = pixel_batch(pixel_dataset(5, seed=0), torch.float64)
    logits = model(pixel_values=inputs["pixel_values"]).logits  # [B, C]
    expected = F.cross_entropy(logits, inputs["labels"], reduction="none")
    torch.testing.assert_close(model_per_example_loss(model, inputs), expected, rtol=1e-12, atol=1e-12)
    log_prob, lengths = model_sequence_log_prob(model, inputs)
    torch.testing.assert_close(log_prob, torch.log_softmax(logits, -1)[torch.arange(5), inputs["labels"]])
    assert lengths.tolist() == [1] * 5
    aligned, labels = model_target_logits(model, inputs)
    assert aligned.shape == (5, 1, 4) and labels.shape == (5, 1)


def test_target_lengths_of_class_labels_and_of_sequences():
    assert target_lengths(torch.tensor([3, 0, 1]), is_encoder_decoder=False).tolist() == [1, 1, 1]
    labels = torch.tensor([[5, 6, -100], [5, -100, -100]])
    assert target_lengths(labels, is_encoder_decoder=False).tolist() == [1, 0]
    assert target_lengths(labels, is_encoder_decoder=True).tolist() == [2, 1]
