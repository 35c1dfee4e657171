"""The offline Whisper tokenizer/processor and the tiny Whisper built from config."""

import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer

from hf_unlearn.data import SpeechSeq2SeqCollator
from hf_unlearn.models import build_tiny_whisper, build_whisper_processor


PREFIX = "<|startoftranscript|><|en|><|transcribe|><|notimestamps|>"


def test_tokenizer_is_a_real_whisper_tokenizer_with_the_english_prefix(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    assert isinstance(tokenizer, WhisperTokenizer)
    ids = tokenizer("bako tiri").input_ids
    assert tokenizer.decode(ids) == PREFIX + "bako tiri<|endoftext|>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "bako tiri"
    # transformers computes the language token as sot + 1 + index in LANGUAGES
    sot, en, zh = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|zh|>"])
    assert (en, zh) == (sot + 1, sot + 2)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"


def test_processor_round_trips_through_save_pretrained(tmp_path, tiny_corpus, tiny_processor):
    tiny_processor.save_pretrained(tmp_path)
    loaded = WhisperProcessor.from_pretrained(tmp_path)
    assert loaded.feature_extractor.chunk_length == 4 and loaded.feature_extractor.nb_max_frames == 400
    for text in list(tiny_corpus["forget"]["text"]) + list(tiny_corpus["test"]["text"]) + ["unseen words"]:
        ids = tiny_processor.tokenizer(text).input_ids
        assert loaded.tokenizer(text).input_ids == ids
        assert loaded.tokenizer.decode(ids, skip_special_tokens=True) == text
    assert loaded.tokenizer.prefix_tokens == tiny_processor.tokenizer.prefix_tokens


def test_tokenizer_is_deterministic(tiny_corpus):
    texts = list(tiny_corpus["retain"]["text"])
    first = build_whisper_processor(texts).tokenizer.backend_tokenizer.to_str()
    assert build_whisper_processor(texts).tokenizer.backend_tokenizer.to_str() == first


def test_tiny_whisper_config_forward_and_generate(tmp_path, tiny_corpus, tiny_processor):
    torch.manual_seed(0)
    model = build_tiny_whisper(tiny_processor, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64)
    assert model.config.max_source_positions == 200 and model.config.d_model == 32
    assert model.config.vocab_size == len(tiny_processor.tokenizer)
    batch = SpeechSeq2SeqCollator(tiny_processor)([tiny_corpus["forget"][i] for i in range(2)])
    outputs = model(**batch)
    assert outputs.logits.shape == (*batch["labels"].shape, len(tiny_processor.tokenizer))

    model.eval()
    seen = []
    hook = model.model.decoder.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["input_ids"]), with_kwargs=True
    )
    generated = model.generate(batch["input_features"], max_new_tokens=3)
    hook.remove()
    prefix = tiny_processor.tokenizer.prefix_tokens
    assert seen[0].tolist() == [prefix, prefix]  # generation is forced onto <|en|><|transcribe|><|notimestamps|>

    model.save_pretrained(tmp_path)
    reloaded = WhisperForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.generation_config.lang_to_id["<|en|>"] == prefix[1]
    assert torch.equal(reloaded.generate(batch["input_features"], max_new_tokens=3), generated)
