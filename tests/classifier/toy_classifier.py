"""A tiny ResNet (with BatchNorm) and random image batches for the classifier tests."""

import torch
from datasets import Dataset

from hf_unlearn.models.tiny_classifier import ImageClassificationCollator, build_tiny_classifier


NUM_LABELS = 4


def tiny_resnet(dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    model = build_tiny_classifier(num_labels=NUM_LABELS, embedding_size=4, hidden_sizes=[6], depths=[1])
    # Non-trivial running statistics, so eval-mode BatchNorm is not the identity.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.to(dtype)


def pixel_dataset(count: int, seed: int, labels: list[int] | None = None) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(count, 1, 8, 8, generator=generator)
    if labels is None:
        labels = torch.randint(0, NUM_LABELS, (count,), generator=generator).tolist()
    return Dataset.from_dict(
        {"id": [f"{seed}-{i}" for i in range(count)], "pixel_values": pixels.numpy().tolist(), "label": labels}
    )


collate = ImageClassificationCollator(NUM_LABELS)


def batch(dataset: Dataset, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    out = collate(list(dataset))
    out["pixel_values"] = out["pixel_values"].to(dtype)
    return out


def trainer_args(tmp_path, **overrides) -> dict:
    args = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_retain_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        use_cpu=True,
        logging_steps=1,
        report_to="none",
        seed=0,
        disable_tqdm=True,
    )
    args.update(overrides)
    return args


_FITTED: dict[str, torch.Tensor] = {}


def fitted_resnet() -> torch.nn.Module:
    """`tiny_resnet` trained (BatchNorm with batch statistics, as a base model is) to fit the forget (seed 1) and
    retain (seed 2) sets of the method tests, so that forgetting has something to undo."""
    model = tiny_resnet()
    if not _FITTED:
        data = batch(pixel_dataset(8, seed=1))
        retain = batch(pixel_dataset(8, seed=2))
        pixels = torch.cat([data["pixel_values"], retain["pixel_values"]])
        labels = torch.cat([data["labels"], retain["labels"]])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(60):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _FITTED.update({k: v.detach().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(_FITTED)
    return model
