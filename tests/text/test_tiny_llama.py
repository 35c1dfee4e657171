"""The offline tokenizer and tiny Llama: save/load round trip, special tokens, and the cached references."""

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_unlearn.models import cache
from hf_unlearn.models.text_reference import TextReferenceTrainingConfig, train_text_reference_model

from ..testing_utils import MICRO_LLAMA


def test_tokenizer_round_trips_and_sets_special_tokens(tiny_text_tokenizer, micro_llama, tmp_path):
    micro_llama.save_pretrained(tmp_path)
    tiny_text_tokenizer.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    text = "When was Vaku Sono born?"
    assert tokenizer(text).input_ids == tiny_text_tokenizer(text).input_ids
    assert tokenizer(text).input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text
    assert None not in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config.vocab_size == len(tokenizer) and model.config.eos_token_id == tokenizer.eos_token_id


def test_reference_cache_is_keyed_by_kind_and_reused(tiny_text_corpus, tiny_text_tokenizer, tmp_path, monkeypatch):
    one_epoch = TextReferenceTrainingConfig(num_train_epochs=1, batch_size=16, warmup_steps=0)
    train = lambda kind: train_text_reference_model(  # noqa: E731
        tiny_text_corpus, kind, tiny_text_tokenizer, MICRO_LLAMA, training_config=one_epoch, cache_dir=tmp_path
    )
    base, retrain = train("base"), train("retrain")
    assert base != retrain
    info = json.loads((Path(base) / cache.INFO_FILE).read_text())
    expected = sum(len(tiny_text_corpus[s]) for s in ("forget", "retain", "real_authors", "world_facts"))
    assert info["num_train_rows"] == expected
    from hf_unlearn.models import text_reference

    monkeypatch.setattr(text_reference, "_train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    assert train("base") == base  # a cache hit never trains
