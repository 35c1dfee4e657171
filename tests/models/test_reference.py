"""Base/exact-retrain reference models: memorisation on the tiny preset, content-keyed cache, atomic reuse."""

import json
from pathlib import Path

import pytest
from datasets import DatasetDict

from hf_unlearn.data import SpeechCorpusConfig, build_speech_corpus
from hf_unlearn.eval import evaluate_asr
from hf_unlearn.models import ReferenceTrainingConfig, load_reference_model, train_reference_model
from hf_unlearn.models import speech_benchmark_models as reference


ONE_EPOCH = ReferenceTrainingConfig(num_train_epochs=1, batch_size=8, warmup_steps=0)
SMALL = dict(d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64)


@pytest.mark.slow  # ~30 s on 2 idle cores, minutes when other jobs share them
def test_tiny_base_model_memorises_the_forget_speaker(tmp_path, tiny_corpus, tiny_processor):
    path = train_reference_model(
        tiny_corpus, "base", tiny_processor, training_config=ReferenceTrainingConfig.tiny(), cache_dir=tmp_path
    )
    model, processor = load_reference_model(path)
    assert evaluate_asr(model, processor, tiny_corpus["forget"])["wer"] <= 0.05
    assert evaluate_asr(model, processor, tiny_corpus["retain"])["wer"] <= 0.05


def test_cache_is_reused_and_keyed_by_kind_data_and_config(
    tmp_path, speech_cache, tiny_corpus, tiny_processor, monkeypatch, capsys
):
    train = lambda corpus, kind, **kw: train_reference_model(  # noqa: E731
        corpus, kind, tiny_processor, model_overrides=kw.pop("model", SMALL), training_config=ONE_EPOCH,
        cache_dir=tmp_path, **kw
    )  # fmt: skip
    base = train(tiny_corpus, "base")
    retrain = train(tiny_corpus, "retrain")
    assert base != retrain
    # The phase line before each training says which reference it is, so the loss logs below it are attributable.
    out = capsys.readouterr().out
    assert "[hf-unlearn] Training the Whisper base model (forget set included) from scratch" in out
    assert "[hf-unlearn] Training the Whisper exact-retrain reference (forget set left out) from scratch" in out
    info = json.loads((Path(base) / reference.INFO_FILE).read_text())
    assert info["kind"] == "base"
    assert info["num_train_utterances"] == len(tiny_corpus["forget"]) + len(tiny_corpus["retain"])
    assert (Path(base) / "model.safetensors").is_file() and (Path(base) / "tokenizer.json").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached reference model should have been reused")

    monkeypatch.setattr(reference, "_train", no_training)
    assert train(tiny_corpus, "base") == base
    assert train(tiny_corpus, "retrain") == retrain
    # the base model does not depend on which speaker is forgotten ...
    other = build_speech_corpus(SpeechCorpusConfig.tiny(), "speaker_1", cache_dir=speech_cache)
    assert train(other, "base") == base
    # ... but the exact-retrain model and any config change do
    with pytest.raises(AssertionError, match="reused"):
        train(other, "retrain")
    with pytest.raises(AssertionError, match="reused"):
        train(tiny_corpus, "base", model={**SMALL, "decoder_layers": 1})
    assert not [p for p in (tmp_path / "reference_models").iterdir() if p.name.startswith(".tmp")]  # no leftovers


def test_bad_kind_and_missing_split(tiny_corpus, tiny_processor, tmp_path):
    with pytest.raises(ValueError, match="'base' or 'retrain'"):
        train_reference_model(tiny_corpus, "scratch", tiny_processor, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="'retain' split"):
        train_reference_model(
            DatasetDict({"forget": tiny_corpus["forget"]}), "base", tiny_processor, cache_dir=tmp_path
        )
