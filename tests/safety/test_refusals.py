"""Bad input is refused early with the fix named: overlapping forget/retain sets, a non-finite loss's advice."""

import numpy as np
import pytest
from datasets import Dataset
from peft import LoraConfig

from hf_unlearn import GradDiffConfig
from hf_unlearn.data.overlap import check_no_overlap, find_overlap
from hf_unlearn.trainer import non_finite_advice
from tests.testing_utils import make_trainer, token_dataset


def clips(texts, speaker, seed):
    rng = np.random.default_rng(seed)
    rows = [{"audio": {"array": rng.standard_normal(8).astype(np.float32), "sampling_rate": 16000}} for _ in texts]
    return [{**row, "text": text, "speaker_id": speaker} for row, text in zip(rows, texts, strict=True)]


def test_same_clip_under_another_speaker_is_found_by_content():
    forget_rows = clips(["a", "b", "c"], "speaker_0", seed=0)
    retain_rows = clips(["d", "e"], "speaker_1", seed=1) + [{**forget_rows[1], "speaker_id": "speaker_1"}]
    what, pairs = find_overlap(Dataset.from_list(forget_rows), Dataset.from_list(retain_rows))
    assert pairs == [(1, 2)] and "audio" in what and "speaker_id" not in what


def test_same_text_different_audio_is_not_an_overlap():
    """Two speakers reading one sentence are different examples."""
    forget = Dataset.from_list(clips(["same sentence"], "speaker_0", seed=0))
    retain = Dataset.from_list(clips(["same sentence"], "speaker_1", seed=1))
    assert find_overlap(forget, retain)[1] == []


def test_shared_ids_are_found():
    forget = token_dataset(3, seed=1)
    retain = Dataset.from_list([{"id": forget[2]["id"], "input_ids": [5, 6, 7]}])
    assert find_overlap(forget, retain) == ("id", [(2, 0)])


def test_trainer_refuses_overlap_unless_allowed(tmp_path):
    forget = token_dataset(4, seed=1)
    retain = Dataset.from_list([{"id": "other", "input_ids": forget[3]["input_ids"]}, *token_dataset(3, seed=2)])

    def trainer(**overrides):
        lora = LoraConfig(r=2, target_modules=["c_attn"])
        return make_trainer("graddiff", tmp_path, forget=forget, retain=retain, peft_config=lora, **overrides)

    with pytest.raises(ValueError, match=r"1 of 4 forget examples .*forget\[3\] = retain\[0\].*--allow_overlap"):
        trainer()
    trainer(allow_overlap=True)  # proceeds
    check_no_overlap(forget, None, allow_overlap=False)  # no retain set, nothing to compare


def test_non_finite_advice_names_what_is_set(tmp_path):
    clipped = GradDiffConfig(output_dir=str(tmp_path), learning_rate=3e-4, max_grad_norm=1.0, use_cpu=True)
    assert "learning_rate (now 0.0003)" in non_finite_advice(clipped)
    assert "lower max_grad_norm (now 1" in non_finite_advice(clipped)
    assert "set max_grad_norm" not in non_finite_advice(clipped)
    unclipped = GradDiffConfig(output_dir=str(tmp_path), max_grad_norm=0.0, use_cpu=True)
    assert "set max_grad_norm (gradient clipping is off)" in non_finite_advice(unclipped)


def test_missing_local_model_path_is_named(tmp_path):
    from hf_unlearn.recipes.common import check_model_source

    with pytest.raises(SystemExit, match="no such folder"):
        check_model_source(str(tmp_path / "my-whisper"))
    with pytest.raises(SystemExit, match="no such folder"):
        check_model_source("./models/whisper-small")
    check_model_source(str(tmp_path))  # an existing folder passes
    check_model_source(None)  # the embedded default


def test_offline_hub_id_fails_at_once_with_the_offline_hint(monkeypatch):
    import time

    from huggingface_hub import constants

    from hf_unlearn.recipes.common import check_model_source

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(SystemExit, match="HF_HUB_OFFLINE is set.*pass a local folder"):
        check_model_source("openai/whisper-nonexistent-test")
    assert time.perf_counter() - start < 5


def test_unreachable_hub_fails_in_seconds(monkeypatch):
    from huggingface_hub import constants

    from hf_unlearn.recipes.common import check_model_source

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    with pytest.raises(SystemExit, match="cannot be reached.*HF_HUB_OFFLINE=1"):
        check_model_source("openai/whisper-nonexistent-test", probe_timeout=2.0)
