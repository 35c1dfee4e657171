"""One step of every method in METHODS on a micro Llama with answer-only QA batches."""

import pytest
import torch
from peft import LoraConfig

from hf_unlearn import METHODS
from hf_unlearn.data.text_collators import QACollator


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_step_changes_only_the_adapter(method, micro_llama, tiny_text_corpus, tiny_text_tokenizer, tmp_path):
    config_cls, trainer_cls = METHODS[method]
    args = config_cls(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_retain_batch_size=4,
        # SCRUB spends the first half of max_steps alternating max (forget) and min steps: two steps reach a max step.
        max_steps=2 if method == "scrub" else 1,
        learning_rate=1e-2,
        use_cpu=True,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    trainer = trainer_cls(
        model=micro_llama,
        args=args,
        forget_dataset=tiny_text_corpus["forget"],
        retain_dataset=tiny_text_corpus["retain"],
        data_collator=QACollator(tiny_text_tokenizer, max_length=micro_llama.config.max_position_embeddings),
        processing_class=tiny_text_tokenizer,
        # init_lora_weights=False: with peft's zero lora_B every lora_A gradient would be zero on the first step.
        peft_config=LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj"],
            lora_dropout=0.0,
            init_lora_weights=False,
        ),  # fmt: skip
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert "forget/loss" in logged
