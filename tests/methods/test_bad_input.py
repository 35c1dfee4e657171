"""Bad input stops early with an error that names the fix, and nothing of the user's is overwritten."""

import os

import pytest
import torch
from peft import LoraConfig
from transformers import PreTrainedTokenizerFast, TrainerCallback

from ..testing_utils import make_trainer, tiny_gpt2, token_dataset


def make(tmp_path, **kwargs):
    """GradDiff on the toy LM with a small LoRA, 2 steps of 2 forget sequences (2 retain ones unless told)."""
    kwargs = {"forget": token_dataset(2, seed=0), "retain": token_dataset(2, seed=1), **kwargs}
    peft_config = LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False)
    return make_trainer(
        "graddiff", tmp_path, peft_config=peft_config, **{"per_device_train_batch_size": 2, "max_steps": 2, **kwargs}
    )


def test_empty_forget_set(tmp_path):
    with pytest.raises(ValueError, match="forget set is empty"):
        make(tmp_path, forget=token_dataset(0, seed=0))


def test_missing_retain_set_names_retain_weight(tmp_path):
    with pytest.raises(ValueError, match="retain_weight=0"):
        make(tmp_path, retain=None)


def test_no_trainable_parameters(tmp_path):
    model = tiny_gpt2().requires_grad_(False)
    with pytest.raises(ValueError, match="peft_config=LoraConfig"):
        make_trainer("ga", tmp_path, model=model, retain=None)


def test_tokenizer_larger_than_embeddings(tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(64)}  # the toy model has 32 embeddings
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")))
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        make(tmp_path, processing_class=tokenizer)


def test_non_empty_output_dir_is_not_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    trainer = make(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        trainer.train()
    assert (out / "precious.txt").read_text() == "keep me" and os.listdir(out) == ["precious.txt"]


class PoisonAfterFirstCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path):
    callbacks = [PoisonAfterFirstCheckpoint()]
    trainer = make(tmp_path, callbacks=callbacks, max_steps=3, save_strategy="steps", save_steps=1)
    with pytest.raises(FloatingPointError, match="global step 1"):
        trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "out" / "checkpoint-2").exists()
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "adapter_model.safetensors").values())
