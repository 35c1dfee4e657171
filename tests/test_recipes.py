"""`recipes/unlearn_whisper.py` end to end on the tiniest setting, in a subprocess as a user runs it."""

import json
from functools import partial

import pytest

from .testing_utils import default_recipe_run
from .testing_utils import run_recipe as run_tiny_recipe


SPLITS = {"forget", "forget_test", "retain", "test"}


run_recipe = partial(run_tiny_recipe, "unlearn_whisper.py")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    return default_recipe_run("unlearn_whisper.py", tmp_path_factory.mktemp("recipe"))


def test_recipe_writes_adapter_processor_config_and_metrics(default_run):
    output_dir, result = default_run
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert (output_dir / "adapter_config.json").is_file()
    from transformers import WhisperProcessor

    processor = WhisperProcessor.from_pretrained(output_dir)
    assert processor.tokenizer.prefix_tokens[1] == processor.tokenizer.convert_tokens_to_ids("<|en|>")
    resolved = json.loads((output_dir / "unlearn_config.json").read_text())
    assert resolved["script"]["method"] == "graddiff" and resolved["config"]["max_steps"] == 2
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert set(metrics) == {"base", "retrain", "unlearned"}
    for model_metrics in metrics.values():
        assert set(model_metrics) == SPLITS
        assert all(0.0 <= m["wer"] and 0.0 <= m["cer"] for m in model_metrics.values())
    assert "| model | forget WER |" in result.stdout
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert any("forget/loss" in entry and "retain/loss" in entry for entry in history)
    # The base model memorised the forget speaker; the exact-retrain model never heard it.
    assert metrics["base"]["forget"]["wer"] <= 0.05
    assert metrics["retrain"]["forget"]["wer"] > metrics["base"]["forget"]["wer"]


def test_recipe_refuses_non_empty_output_dir_before_training(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    result = run_recipe("--output_dir", str(tmp_path), "--overwrite_output_dir", "false")
    assert result.returncode != 0
    assert "overwrite_output_dir" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_recipe_with_a_locally_saved_model(default_run, tmp_path):
    """--model_name_or_path goes through from_pretrained, as a Hub id would (here: a model saved to disk)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from hf_unlearn.data import SpeechCorpusConfig, build_speech_corpus
    from hf_unlearn.models.speech_benchmark_models import ReferenceTrainingConfig, train_reference_model

    corpus = build_speech_corpus(SpeechCorpusConfig.tiny(), "speaker_0")
    base = train_reference_model(corpus, "base", training_config=ReferenceTrainingConfig.tiny(seed=0))
    local = tmp_path / "my-whisper"
    WhisperForConditionalGeneration.from_pretrained(base).save_pretrained(local)
    WhisperProcessor.from_pretrained(base).save_pretrained(local)
    output_dir = tmp_path / "out"
    result = run_recipe("--model_name_or_path", str(local), "--output_dir", str(output_dir), "--method", "npo")
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert set(metrics) == {"base", "unlearned"}
    assert metrics["base"]["forget"]["wer"] <= 0.05


def test_recipe_unknown_speaker_lists_the_available_ones(tmp_path):
    result = run_recipe("--output_dir", str(tmp_path / "o"), "--forget_speaker", "nobody")
    assert result.returncode != 0
    assert "speaker_0" in result.stderr and "nobody" in result.stderr


def test_card_how_to_use_snippet_runs_on_the_saved_run(default_run):
    """The card's "How to use" code, run as a reader would (base folder and adapter folder filled in)."""
    import numpy as np
    from huggingface_hub import ModelCard

    output_dir, _ = default_run
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.pipeline_tag == "automatic-speech-recognition"
    snippet = card.text.split("## How to use", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    base_folder = json.loads((output_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    snippet = snippet.replace("path/to/base-model", base_folder).replace(f"path/to/{output_dir.name}", str(output_dir))
    namespace: dict = {}
    exec(snippet, namespace)
    speech = {"raw": np.zeros(16000, dtype=np.float32), "sampling_rate": 16000}
    assert isinstance(namespace["pipe"](speech)["text"], str)
