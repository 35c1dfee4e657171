"""One step of every method in METHODS on a micro Llama with answer-only QA batches (Llama's layers and the QA
collator; the contract every method meets on the toy GPT-2 is `tests/methods/test_every_method.py`)."""

import pytest
import torch
from peft import LoraConfig

from hf_unlearn import METHODS
from hf_unlearn.data.text_collators import QACollator

from ..testing_utils import make_trainer


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_step_changes_only_the_adapter(method, micro_llama, tiny_text_corpus, tiny_text_tokenizer, tmp_path):
    trainer = make_trainer(
        method,
        tmp_path,
        model=micro_llama,
        forget=tiny_text_corpus["forget"],
        retain=tiny_text_corpus["retain"],
        collator=QACollator(tiny_text_tokenizer, max_length=micro_llama.config.max_position_embeddings),
        processing_class=tiny_text_tokenizer,
        # init_lora_weights=False: with peft's zero lora_B every lora_A gradient would be zero on the first step.
        peft_config=LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj"],
            lora_dropout=0.0,
            init_lora_weights=False,
        ),  # fmt: skip
        per_device_retain_batch_size=4,
        # SCRUB spends the first half of max_steps alternating max (forget) and min steps: two steps reach a max step.
        max_steps=2 if method == "scrub" else 1,
        learning_rate=1e-2,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert "forget/loss" in logged
