"""Tiny float64 LoRA models built from config, batches with ragged targets, and reference per-sample gradients.

The references share no code with `hf_unlearn`: the loss is written here with `F.cross_entropy`, and per-sample
gradients come from a one-sample-at-a-time backward loop and from `torch.func.vmap(grad(functional_call))`.
"""

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel, WhisperConfig, WhisperForConditionalGeneration


VOCAB = 24
PAD, START = 0, 1


def tiny_whisper_lora(r: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=VOCAB,
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
    model = WhisperForConditionalGeneration(config)
    lora = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "k_proj", "fc1"], init_lora_weights=False
    )
    return get_peft_model(model, lora).double().eval()


def tiny_gpt2(seed: int = 0, **config_overrides) -> GPT2LMHeadModel:
    # pad_token_id=None: transformers' "padding without attention mask" check (`pad_token_id in input_ids`) is
    # data-dependent control flow, which vmap cannot run.
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=START,
        eos_token_id=2,
        pad_token_id=None,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
        **config_overrides,
    )
    return GPT2LMHeadModel(config).double().eval()


def tiny_gpt2_lora(r: int, seed: int = 0, **config_overrides) -> nn.Module:
    model = tiny_gpt2(seed, **config_overrides)
    lora = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
        init_lora_weights=False,
    )
    return get_peft_model(model, lora).double().eval()


def ragged_labels(batch: int, max_len: int, min_len: int, generator: torch.Generator) -> Tensor:
    labels = torch.randint(3, VOCAB, (batch, max_len), generator=generator)
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


def reference_losses(model, batch: dict[str, Tensor]) -> Tensor:
    """ℓ_i = mean CE over example i's own target tokens, written independently of `hf_unlearn.losses`. ``model`` is
    any callable taking the model's keyword inputs."""
    labels = batch["labels"]
    if "input_features" in batch:
        decoder_input_ids = torch.cat([torch.full_like(labels[:, :1], START), labels[:, :-1]], 1)
        decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == -100, PAD)
        logits = model(input_features=batch["input_features"], decoder_input_ids=decoder_input_ids).logits
    else:
        logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
        labels = labels[:, 1:]
    token_losses = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")  # [B, T]
    return token_losses.sum(1) / (labels != -100).sum(1)


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
