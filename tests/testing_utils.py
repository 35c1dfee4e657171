"""Shared test scaffolding: tiny models built from config, toy datasets and collators, the trainer arguments every
trainer test starts from, float64 references that share no code with `hf_unlearn`, and the recipe subprocess runner.

One place for each, so that a test says only what it checks. Nothing here downloads anything: every model is built
from a config with a fixed seed, every dataset is drawn from a seeded generator.

The references (`target_log_probs`, `reference_losses`, the per-sample gradients) are written with
`F.cross_entropy` / `torch.func` only, never with `hf_unlearn.losses`, so a test comparing the library to them
compares two independent computations.
"""

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel, WhisperConfig, WhisperForConditionalGeneration

from hf_unlearn.models.tiny_classifier import ImageClassificationCollator, build_tiny_classifier


REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------------------
# Trainer arguments

EXACT_SGD = dict(optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0)
"""With these, one optimizer step moves the trainable parameters by exactly −η·(the method's direction): no
momentum, decay, clipping or schedule between the maths and the update."""


def trainer_args(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of a method config for a test: 3 steps of 4 examples, CPU, no reporting, no progress
    bar, seeded, every step logged, written under ``tmp_path/out``; the method's own defaults otherwise (learning rate
    included). ``overrides`` replace or add fields."""
    args = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        use_cpu=True,
        logging_steps=1,
        report_to="none",
        seed=0,
        disable_tqdm=True,
    )
    args.update(overrides)
    return args


def method_classes(method: str) -> tuple[type, type]:
    """``(config class, trainer class)`` of a `METHODS` key."""
    from hf_unlearn import METHODS

    return METHODS[method]


_TOY = object()  # "the toy LM's default dataset": None means no retain set


def make_trainer(
    method: str,
    tmp_path: Path,
    *,
    model: nn.Module | None = None,
    forget: Dataset | None = None,
    retain: Dataset | None = _TOY,
    collator=None,
    peft_config: LoraConfig | None = None,
    trainer_cls: type | None = None,
    callbacks: list | None = None,
    eval_dataset: Any = None,
    processing_class: Any = None,
    trainer_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
):
    """A trainer of `method` (a `METHODS` key) on the toy LM unless told otherwise: `tiny_gpt2()`, 4 forget and 6
    retain token sequences (``retain=None``: no retain set), `collate`. ``overrides`` go to `trainer_args`; ``trainer_cls`` replaces the method's
    trainer (a recording subclass, say); ``trainer_kwargs`` are further arguments of the trainer (an evaluator...)."""
    config_cls, method_trainer_cls = method_classes(method)
    kwargs = {**({} if eval_dataset is None else {"eval_dataset": eval_dataset}), **(trainer_kwargs or {})}
    return (trainer_cls or method_trainer_cls)(
        model=model if model is not None else tiny_gpt2(),
        args=config_cls(**trainer_args(tmp_path, **overrides)),
        forget_dataset=forget if forget is not None else token_dataset(4, seed=1),
        retain_dataset=token_dataset(6, seed=2) if retain is _TOY else retain,
        data_collator=collator or collate,
        processing_class=processing_class,
        peft_config=peft_config,
        callbacks=callbacks,
        **kwargs,
    )


def logged(trainer) -> dict[str, float]:
    """Every key the trainer logged, with its last value."""
    merged = {}
    for entry in trainer.state.log_history:
        merged.update(entry)
    return merged


def snapshot(model: nn.Module, trainable: bool | None = None) -> dict[str, Tensor]:
    """Detached copies of the named parameters (only trainable or only frozen ones when ``trainable`` is set)."""
    return {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if trainable is None or p.requires_grad == trainable
    }


def finite_losses(log_history: list[dict]) -> dict[str, float]:
    """Every logged loss-like value (training loss, forget/retain losses, method terms); fails on any non-finite."""
    values = {}
    for entry in log_history:
        for key, value in entry.items():
            if "loss" in key and isinstance(value, (int, float)):
                assert math.isfinite(value), f"step {entry.get('step')}: {key} = {value}"
                values[key] = value
    return values


def flat_trainable(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad]).clone()


# ---------------------------------------------------------------------------------------------------------------------
# Tiny GPT-2 (the toy LM of the trainer tests, and the float64 reference model of the maths tests)

VOCAB = 32  # the toy LM: token 0 = bos, 1 = eos and padding, 2.. = text
REFERENCE_VOCAB = 24  # the float64 references: token 0 = padding, 1 = start, 2 = end, 3.. = text
PAD, START = 0, 1


def tiny_gpt2(seed: int = 0, **config_overrides: Any) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 of width 16 without dropout, random weights from ``seed``; float32, training mode."""
    torch.manual_seed(seed)
    config = dict(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    config.update(config_overrides)
    return GPT2LMHeadModel(GPT2Config(**config))


def reference_gpt2(seed: int = 0, **config_overrides: Any) -> GPT2LMHeadModel:
    """`tiny_gpt2` with `REFERENCE_VOCAB` and 16 positions, eager attention, float64, eval mode.

    ``pad_token_id=None`` by default: transformers' "padding without attention mask" check (`pad_token_id in
    input_ids`) is data-dependent control flow, which vmap cannot run."""
    config = dict(
        vocab_size=REFERENCE_VOCAB,
        n_positions=16,
        bos_token_id=START,
        eos_token_id=2,
        pad_token_id=None,
        attn_implementation="eager",
    )
    config.update(config_overrides)
    return tiny_gpt2(seed, **config).double().eval()


def gpt2_lora_config(r: int = 4, target_modules: tuple[str, ...] = ("c_attn", "c_proj"), **overrides) -> LoraConfig:
    """LoRA on GPT-2's Conv1D layers, α = 2r, no dropout, and a random (not zero) lora_B: with peft's zero init
    every lora_A gradient is zero on the first step and a test of the adapter would check nothing for lora_A."""
    config = dict(
        r=r, lora_alpha=2 * r, target_modules=list(target_modules), lora_dropout=0.0, init_lora_weights=False
    )
    config.update(overrides)
    return LoraConfig(**config)


def with_lora(model: nn.Module, r: int, target_modules: list[str], **overrides) -> nn.Module:
    """``model`` with a float64, eval-mode LoRA adapter (α = 2r, random lora_B): the reference models' wrapping."""
    config = dict(r=r, lora_alpha=2 * r, target_modules=target_modules, init_lora_weights=False)
    config.update(overrides)
    return get_peft_model(model, LoraConfig(**config)).double().eval()


def tiny_gpt2_lora(r: int, seed: int = 0, **config_overrides: Any) -> nn.Module:
    return with_lora(reference_gpt2(seed, **config_overrides), r, ["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)


# ---------------------------------------------------------------------------------------------------------------------
# Tiny Whisper


def reference_whisper(seed: int = 0, **config_overrides: Any) -> WhisperForConditionalGeneration:
    """A 1+1-layer Whisper of width 16 (8 mel bins × 12 frames, `REFERENCE_VOCAB`), eager attention, no dropout,
    random weights from ``seed``; float32 until the caller converts it."""
    torch.manual_seed(seed)
    config = dict(
        vocab_size=REFERENCE_VOCAB,
        num_mel_bins=8,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=24,
        decoder_ffn_dim=24,
        max_source_positions=6,
        max_target_positions=16,
        pad_token_id=PAD,
        bos_token_id=START,
        eos_token_id=2,
        decoder_start_token_id=START,
        suppress_tokens=[],
        begin_suppress_tokens=[],
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        attn_implementation="eager",
    )
    config.update(config_overrides)
    return WhisperForConditionalGeneration(WhisperConfig(**config))


def tiny_whisper_lora(r: int, seed: int = 0) -> nn.Module:
    return with_lora(reference_whisper(seed), r, ["q_proj", "v_proj", "k_proj", "fc1"])


# ---------------------------------------------------------------------------------------------------------------------
# Tiny Llama (through the library's builder, with the text corpus's tokenizer)

MICRO_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=2)  # fmt: skip
"""Smaller than the `tiny` preset's model: the text tests check plumbing and maths, not memorisation."""


def micro_llama(tokenizer, seed: int = 0) -> nn.Module:
    from hf_unlearn.models.tiny_llama import build_tiny_llama

    torch.manual_seed(seed)
    return build_tiny_llama(tokenizer, **MICRO_LLAMA)


# ---------------------------------------------------------------------------------------------------------------------
# Toy datasets and collators


def token_dataset(n: int, seed: int, min_len: int = 4, max_len: int = 9) -> Dataset:
    """``n`` sequences of random text tokens of the toy LM (2 ≤ id < `VOCAB`), with an ``id`` column."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=generator))
        rows.append(
            {"id": f"s{seed}-{i}", "input_ids": torch.randint(2, VOCAB, (length,), generator=generator).tolist()}
        )
    return Dataset.from_list(rows)


def collate(examples: list[dict], pad_token_id: int = 1) -> dict[str, Tensor]:
    """Right-pad; every real token is a target (labels == input_ids, the causal-LM convention)."""
    length = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.tensor(example["input_ids"])
        input_ids[row, : len(ids)] = ids
        labels[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def speech_dataset(n: int, seed: int, max_len: int) -> Dataset:
    """``n`` float64 feature maps of `reference_whisper`'s shape with 1 to ``max_len`` random text labels each."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(1, max_len + 1, (1,), generator=generator))
        rows.append(
            {
                "input_features": torch.randn(8, 12, generator=generator, dtype=torch.float64).tolist(),
                "labels": torch.randint(3, REFERENCE_VOCAB, (length,), generator=generator).tolist(),
            }
        )
    return Dataset.from_list(rows)


def collate_speech(examples: list[dict]) -> dict[str, Tensor]:
    length = max(len(e["labels"]) for e in examples)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    for row, example in enumerate(examples):
        labels[row, : len(example["labels"])] = torch.tensor(example["labels"])
    features = torch.tensor([e["input_features"] for e in examples], dtype=torch.float64)
    return {"input_features": features, "labels": labels}


def ragged_labels(batch: int, max_len: int, min_len: int, generator: torch.Generator) -> Tensor:
    labels = torch.randint(3, REFERENCE_VOCAB, (batch, max_len), generator=generator)
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=generator)
    lengths[0] = max_len  # at least one full row, so padding is really ragged
    labels[torch.arange(max_len) >= lengths[:, None]] = -100
    return labels


def whisper_batch(batch: int, seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, 8, 12, generator=generator, dtype=torch.float64)
    return {"input_features": features, "labels": ragged_labels(batch, 7, 1, generator)}


def gpt2_batch(batch: int, seed: int = 0) -> dict[str, Tensor]:
    """Right-padded, no attention mask needed: causal attention never lets a real token see the padding after it."""
    generator = torch.Generator().manual_seed(seed)
    labels = ragged_labels(batch, 9, 2, generator)
    return {"input_ids": labels.masked_fill(labels == -100, PAD), "labels": labels}


# ---------------------------------------------------------------------------------------------------------------------
# Independent float64 references


def target_log_probs(model, batch: dict[str, Tensor], decoder_start_token_id: int = START, pad_token_id: int = PAD):
    """``(Σ_t log p(y_t), number of targets)`` per example, the decoder shift (encoder-decoder) or the causal shift
    written out here. ``model`` is any callable taking the model's keyword inputs (a `functional_call` closure, say);
    a causal LM gets every batch entry but ``labels``."""
    labels = batch["labels"]
    if "input_features" in batch:
        decoder_input_ids = torch.cat([torch.full_like(labels[:, :1], decoder_start_token_id), labels[:, :-1]], 1)
        decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == -100, pad_token_id)
        logits = model(input_features=batch["input_features"], decoder_input_ids=decoder_input_ids).logits
    else:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
        labels = labels[:, 1:]
    token_losses = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")  # [B, T]
    return -token_losses.sum(1), (labels != -100).sum(1)


def reference_losses(model, batch: dict[str, Tensor], **shift) -> Tensor:
    """ℓ_i = mean cross-entropy over example i's own target tokens (the per-example loss every method starts from)."""
    log_prob, count = target_log_probs(model, batch, **shift)
    return -log_prob / count


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def loop_per_sample_grads(model: nn.Module, batch: dict[str, Tensor], loss_fn=reference_losses) -> dict[str, Tensor]:
    params = trainable(model)
    rows = []
    for i in range(batch["labels"].shape[0]):
        single = {k: v[i : i + 1] for k, v in batch.items()}
        rows.append(torch.autograd.grad(loss_fn(model, single)[0], list(params.values()), allow_unused=True))
    return {
        name: torch.stack([row[j] if row[j] is not None else torch.zeros_like(p) for row in rows])
        for j, (name, p) in enumerate(params.items())
    }


def vmap_per_sample_grads(model: nn.Module, batch: dict[str, Tensor], loss_fn=reference_losses) -> dict[str, Tensor]:
    params = {n: p.detach() for n, p in trainable(model).items()}

    def one(params, example):
        single = {k: v.unsqueeze(0) for k, v in example.items()}
        return loss_fn(lambda **inputs: torch.func.functional_call(model, params, (), inputs), single)[0]

    return torch.func.vmap(torch.func.grad(one), in_dims=(None, 0))(params, batch)


def flatten(grads: dict[str, Tensor]) -> Tensor:
    return torch.cat([g.flatten(1) for g in grads.values()], 1)  # [B, P]


def assert_close(actual: Tensor, expected: Tensor, rtol: float = 1e-8, what: str = "") -> None:
    """Relative error in Frobenius norm, with the norms in the message (opacus `check_values` style)."""
    error = (actual - expected).norm()
    scale = expected.norm()
    assert error <= rtol * scale + 1e-30, (
        f"{what}: |actual - expected| = {error:.3e}, |expected| = {scale:.3e}, |actual| = {actual.norm():.3e}, "
        f"relative = {error / scale if scale > 0 else float('inf'):.3e} > {rtol:.1e}"
    )


class OnceDifferentiableTanh(torch.autograd.Function):
    """tanh whose backward cannot be differentiated again: stands in for a fused kernel without double backward."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


# ---------------------------------------------------------------------------------------------------------------------
# Toy image classifier (a tiny ResNet with BatchNorm)

NUM_LABELS = 4


def tiny_resnet(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
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


collate_pixels = ImageClassificationCollator(NUM_LABELS)


def pixel_batch(dataset: Dataset, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    out = collate_pixels(list(dataset))
    out["pixel_values"] = out["pixel_values"].to(dtype)
    return out


CLASSIFIER_ARGS = {**EXACT_SGD, "per_device_retain_batch_size": 4, "max_steps": 2, "learning_rate": 1e-2}
"""The classifier tests' run: 2 exact SGD steps of 4 forget and 4 retain images."""


def classifier_trainer_args(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return trainer_args(tmp_path, **{**CLASSIFIER_ARGS, **overrides})


def make_classifier_trainer(method: str, tmp_path: Path, model: nn.Module, size: int = 4, **kwargs: Any):
    """`make_trainer` on images: ``size`` forget (seed 1) and retain (seed 2) images, `classifier_trainer_args`."""
    overrides = {**EXACT_SGD, "per_device_retain_batch_size": 4, "max_steps": 2, "learning_rate": 1e-2, **kwargs}
    forget, retain = pixel_dataset(size, seed=1), pixel_dataset(size, seed=2)
    return make_trainer(
        method, tmp_path, model=model, forget=forget, retain=retain, collator=collate_pixels, **overrides
    )


_FITTED: dict[str, Tensor] = {}


def fitted_resnet() -> nn.Module:
    """`tiny_resnet` trained (BatchNorm with batch statistics, as a base model is) to fit the forget (seed 1) and
    retain (seed 2) sets of the method tests, so that forgetting has something to undo."""
    model = tiny_resnet()
    if not _FITTED:
        data = pixel_batch(pixel_dataset(8, seed=1))
        retain = pixel_batch(pixel_dataset(8, seed=2))
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


# ---------------------------------------------------------------------------------------------------------------------
# Subprocesses


def checkout_env(**extra: str) -> dict[str, str]:
    """The environment of a test subprocess: this checkout's package first on the path (whatever `pip install -e`
    points at), offline Hub, plus ``extra``."""
    pythonpath = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": pythonpath, **extra}


def launcher_env() -> dict[str, str]:
    """The environment of a multi-process launch from a test: one thread a process (the launched ranks share the
    cores), this checkout importable, and no rank variables inherited from a launcher around the test run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def accelerate_launch(config: str, *args: str, port: int | None = None) -> list[str]:
    """``accelerate launch --config_file accelerate_configs/<config>.yaml [--main_process_port port] args``."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    command.append(str(REPO / "accelerate_configs" / f"{config}.yaml"))
    if port is not None:
        command += ["--main_process_port", str(port)]
    return [*command, *args]


def run_recipe(recipe: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python recipes/<recipe>`` as a user runs it, on the tiny corpus for 2 logged steps, then ``args``."""
    command = [sys.executable, str(REPO / "recipes" / recipe), "--corpus_preset", "tiny", "--max_steps", "2"]
    return subprocess.run(
        [*command, "--logging_steps", "1", *args],
        capture_output=True,
        text=True,
        env=checkout_env(),
        timeout=timeout,
        cwd=REPO,
    )


def default_recipe_run(recipe: str, output_root: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """`run_recipe` with only an output folder (under ``output_root``); fails with the recipe's stderr."""
    output_dir = output_root / "out"
    result = run_recipe(recipe, "--output_dir", str(output_dir))
    assert result.returncode == 0, result.stderr[-4000:]
    return output_dir, result


def load_benchmark(name: str) -> Any:
    """The script `benchmarks/<name>.py` as a module (benchmarks are scripts, not a package); its folder is on
    `sys.path` while it loads, so a script that imports a sibling (`from compare_methods import ...`) loads too."""
    import importlib.util

    folder = REPO / "benchmarks"
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module
