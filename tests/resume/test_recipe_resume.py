"""The Whisper recipe end to end (subprocess, tiny corpus): loss-only evaluation, step checkpoints from --save_steps
alone, and --resume_from_checkpoint true continuing the run in its folder."""

import json

import pytest

from tests.test_recipes import run_recipe


@pytest.mark.slow
def test_recipe_saves_resumes_and_runs_without_generate(tmp_path):
    out = tmp_path / "run"
    first = run_recipe("--output_dir", str(out), "--eval_generate", "false", "--save_steps", "1")
    assert first.returncode == 0, first.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"base", "retrain", "unlearned"}
    assert all(set(per_split) == {"loss"} for model in metrics.values() for per_split in model.values())
    assert "forget LOSS" in first.stdout
    assert (out / "checkpoint-1" / "hf_unlearn_streams_0.pt").is_file() and (out / "checkpoint-2").is_dir()

    again = run_recipe("--output_dir", str(out), "--eval_generate", "false")
    assert again.returncode != 0 and "not empty" in again.stderr  # no flag: the earlier run is kept

    resumed = run_recipe(
        "--output_dir", str(out), "--eval_generate", "false", "--resume_from_checkpoint", "true", "--max_steps", "3"
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3]


def test_llm_recipe_without_generate_reports_losses(tmp_path):
    """In this process (the tiny corpus and models are cached by the other recipe tests)."""
    from hf_unlearn.recipes import llm

    out = tmp_path / "run"
    argv = ["--corpus_preset", "tiny", "--max_steps", "2", "--eval_generate", "false", "--output_dir", str(out)]
    results = llm.run(argv)
    assert set(results) == {"base", "retrain", "unlearned"}
    assert all(set(per_split) == {"loss"} for model in results.values() for per_split in model.values())
    assert json.loads((out / "metrics.json").read_text()) == results
