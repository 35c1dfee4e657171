"""Whisper batches: decoder inputs/labels alignment, masked prefix and padding, features from audio or cache."""

import pytest
import torch
from datasets import Dataset

from hf_unlearn.data import SpeechSeq2SeqCollator, prepare_speech_dataset
from hf_unlearn.losses import IGNORE_INDEX, model_per_example_loss
from hf_unlearn.models import build_tiny_whisper


def test_labels_are_next_tokens_with_prefix_and_padding_masked(tiny_corpus, tiny_processor):
    tokenizer = tiny_processor.tokenizer
    examples = [tiny_corpus["forget"][i] for i in range(3)]
    examples.append({**examples[0], "text": examples[0]["text"] + " " + examples[1]["text"]})  # longest
    batch = SpeechSeq2SeqCollator(tiny_processor)(examples)
    sot, en, transcribe, notimestamps = tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    )
    eot = tokenizer.eos_token_id
    assert batch["decoder_input_ids"].shape == batch["labels"].shape
    for i, example in enumerate(examples):
        text_ids = tokenizer(example["text"], add_special_tokens=False).input_ids
        n = len(text_ids)
        inputs, labels = batch["decoder_input_ids"][i].tolist(), batch["labels"][i].tolist()
        assert inputs[: 4 + n] == [sot, en, transcribe, notimestamps, *text_ids]
        assert labels[: 4 + n] == [IGNORE_INDEX] * 3 + [*text_ids, eot]
        # padding: decoder fed <|endoftext|>, nothing to predict
        assert all(token == eot for token in inputs[4 + n :])
        assert all(label == IGNORE_INDEX for label in labels[4 + n :])
        # labels[t] is the token that follows decoder_input_ids[t]
        full = [sot, en, transcribe, notimestamps, *text_ids, eot]
        for t, label in enumerate(labels[: 3 + n + 1]):
            if label != IGNORE_INDEX:
                assert label == full[t + 1]
    assert (batch["labels"][-1, 3:] != IGNORE_INDEX).all()  # the longest row has no padding


def test_features_from_audio_match_precomputed(tiny_corpus, tiny_processor):
    collator = SpeechSeq2SeqCollator(tiny_processor)
    raw = [tiny_corpus["forget"][i] for i in range(2)]
    prepared = prepare_speech_dataset(tiny_corpus["forget"].select(range(2)), tiny_processor)
    assert prepared.column_names == ["id", "text", "speaker_id", "input_features"]
    from_audio = collator(raw)
    from_cache = collator([prepared[i] for i in range(2)])
    assert from_audio["input_features"].shape == (2, 80, 400)
    torch.testing.assert_close(from_audio["input_features"], from_cache["input_features"])
    assert torch.equal(from_audio["labels"], from_cache["labels"])


def test_per_example_loss_ignores_padding(tiny_corpus, tiny_processor):
    """With padding masked, ℓ_i of an example does not depend on what it is batched with."""
    torch.manual_seed(0)
    model = build_tiny_whisper(tiny_processor, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64).eval()
    collator = SpeechSeq2SeqCollator(tiny_processor)
    short, long = tiny_corpus["forget"][0], tiny_corpus["forget"][1]
    long = {**long, "text": long["text"] + " " + short["text"]}
    with torch.no_grad():
        together = model_per_example_loss(model, collator([short, long]))
        alone = model_per_example_loss(model, collator([short]))
    torch.testing.assert_close(together[0], alone[0], rtol=1e-5, atol=1e-6)


def test_missing_columns_are_named(tiny_corpus, tiny_processor):
    collator = SpeechSeq2SeqCollator(tiny_processor)
    example = tiny_corpus["forget"][0]
    with pytest.raises(ValueError, match="'text'"):
        collator([{"audio": example["audio"]}])
    with pytest.raises(ValueError, match="'input_features' or an 'audio'"):
        collator([{"text": example["text"]}])
    bad = Dataset.from_dict({"speech": [example["audio"]], "text": [example["text"]]})
    with pytest.raises(ValueError, match="'audio'"):
        prepare_speech_dataset(bad, tiny_processor)
