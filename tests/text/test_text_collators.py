"""QACollator: loss on answer tokens only, right padding, question-side truncation, pad token fallback."""

import logging

import pytest
from transformers import PreTrainedTokenizerFast

from hf_unlearn.data.text_collators import QACollator, ensure_pad_token
from hf_unlearn.models.tiny_llama import build_llama_tokenizer


TEXTS = ["Question: Who wrote The Silent River?\nAnswer: Vaku Sono wrote The Silent River."] * 3


@pytest.fixture(scope="module")
def tokenizer():
    return build_llama_tokenizer(TEXTS, vocab_size=300)


def test_labels_cover_the_answer_and_eos_only(tokenizer):
    collator = QACollator(tokenizer)
    rows = [
        {"question": "Who?", "answer": "Vaku."},
        {"question": "Who wrote The Silent River?", "answer": "Vaku Sono wrote The Silent River."},
    ]
    batch = collator(rows)
    for i, row in enumerate(rows):
        targets = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert targets == collator.answer_ids(row["answer"])
        assert targets[-1] == tokenizer.eos_token_id
        prompt = collator.prompt_ids(row["question"])
        assert batch["input_ids"][i, : len(prompt)].tolist() == prompt
        assert prompt[0] == tokenizer.bos_token_id
    # Right padding: the shorter row ends in pad with attention 0 and label -100.
    short = int(batch["attention_mask"][0].sum())
    assert short < batch["input_ids"].shape[1]
    assert (batch["input_ids"][0, short:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][0, short:] == -100).all()


def test_long_prompt_loses_its_question_start_and_warns_once(tokenizer, caplog):
    answer = "Vaku Sono."
    collator = QACollator(tokenizer, max_length=len(QACollator(tokenizer).answer_ids(answer)) + 6)
    long_question = "Who wrote The Silent River " * 10
    with caplog.at_level(logging.WARNING):
        batch = collator(
            [{"question": long_question, "answer": answer}, {"question": long_question, "answer": answer}]
        )
    assert batch["input_ids"].shape[1] == collator.max_length
    targets = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert targets == collator.answer_ids(answer)  # the answer is whole
    assert batch["input_ids"][0, 0] == tokenizer.bos_token_id  # bos kept, then the end of the prompt
    assert batch["input_ids"][0, 1:6].tolist() == collator.prompt_ids(long_question)[-5:]
    assert sum("cutting the question" in r.message for r in caplog.records) == 1


def test_tokenizer_without_pad_gets_eos_and_a_log_line(tokenizer, caplog):
    no_pad = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, bos_token="<s>", eos_token="</s>")
    assert no_pad.pad_token_id is None
    with caplog.at_level(logging.WARNING):
        ensure_pad_token(no_pad)
    assert no_pad.pad_token_id == no_pad.eos_token_id
    assert any("no pad token" in r.message for r in caplog.records)


def test_missing_answer_column_names_the_fix(tokenizer):
    with pytest.raises(ValueError, match="rename_column"):
        QACollator(tokenizer)([{"question": "Who?", "response": "Vaku."}])
