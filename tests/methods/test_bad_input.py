"""Bad input stops early with an error that names the fix, and nothing of the user's is overwritten."""

import os

import pytest
import torch
from peft import LoraConfig
from transformers import PreTrainedTokenizerFast, TrainerCallback

from hf_unlearn import GradAscentConfig, GradAscentTrainer, GradDiffConfig, GradDiffTrainer

from .toy_lm import collate, tiny_gpt2, token_dataset


def config(tmp_path, **overrides):
    args = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=2,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    args.update(overrides)
    return GradDiffConfig(**args)


def lora():
    return LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False)


def test_empty_forget_set(tmp_path):
    with pytest.raises(ValueError, match="forget set is empty"):
        GradDiffTrainer(
            model=tiny_gpt2(),
            args=config(tmp_path),
            forget_dataset=token_dataset(0, seed=0),
            retain_dataset=token_dataset(2, seed=1),
            data_collator=collate,
            peft_config=lora(),
        )


def test_missing_retain_set_names_retain_weight(tmp_path):
    with pytest.raises(ValueError, match="retain_weight=0"):
        GradDiffTrainer(
            model=tiny_gpt2(),
            args=config(tmp_path),
            forget_dataset=token_dataset(2, seed=0),
            data_collator=collate,
            peft_config=lora(),
        )


def test_no_trainable_parameters(tmp_path):
    model = tiny_gpt2().requires_grad_(False)
    with pytest.raises(ValueError, match="peft_config=LoraConfig"):
        GradAscentTrainer(
            model=model,
            args=GradAscentConfig(output_dir=str(tmp_path), use_cpu=True),
            forget_dataset=token_dataset(2, seed=0),
            data_collator=collate,
        )


def test_tokenizer_larger_than_embeddings(tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(64)}  # the toy model has 32 embeddings
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")))
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        GradDiffTrainer(
            model=tiny_gpt2(),
            args=config(tmp_path),
            forget_dataset=token_dataset(2, seed=0),
            retain_dataset=token_dataset(2, seed=1),
            data_collator=collate,
            processing_class=tokenizer,
            peft_config=lora(),
        )


def test_non_empty_output_dir_is_not_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    trainer = GradDiffTrainer(
        model=tiny_gpt2(),
        args=config(tmp_path),
        forget_dataset=token_dataset(2, seed=0),
        retain_dataset=token_dataset(2, seed=1),
        data_collator=collate,
        peft_config=lora(),
    )
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        trainer.train()
    assert (out / "precious.txt").read_text() == "keep me" and os.listdir(out) == ["precious.txt"]


class PoisonAfterFirstCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path):
    args = config(tmp_path, max_steps=3, save_strategy="steps", save_steps=1)
    trainer = GradDiffTrainer(
        model=tiny_gpt2(),
        args=args,
        forget_dataset=token_dataset(2, seed=0),
        retain_dataset=token_dataset(2, seed=1),
        data_collator=collate,
        peft_config=lora(),
        callbacks=[PoisonAfterFirstCheckpoint()],
    )
    with pytest.raises(FloatingPointError, match="global step 1"):
        trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "out" / "checkpoint-2").exists()
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "adapter_model.safetensors").values())
