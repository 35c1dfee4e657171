"""`--stop_at_target` in the recipes: the flags it implies, the target it reads, and a run that stops and restores."""

import json

import pytest

from hf_unlearn.callbacks import StopAtForgetTarget
from hf_unlearn.recipes import classifier, common, llm, whisper


@pytest.mark.parametrize("recipe", [whisper, llm, classifier])
def test_stop_at_target_sets_the_best_checkpoint_flags(recipe):
    script_args, config = recipe.parse_args(["--stop_at_target", "retrain", "--output_dir", "unused"])
    assert script_args.stop_at_target == "retrain"
    assert config.load_best_model_at_end and config.save_strategy == "best" and config.eval_strategy == "steps"
    assert config.metric_for_best_model == StopAtForgetTarget.gap_metric and config.greater_is_better is False
    # The command line still wins over the implied flags (here the check interval).
    _, config = recipe.parse_args(["--stop_at_target", "0.5", "--eval_steps", "3", "--output_dir", "unused"])
    assert config.eval_steps == 3
    script_args, config = recipe.parse_args(["--output_dir", "unused"])
    assert script_args.stop_at_target is None and not config.load_best_model_at_end


def test_target_is_read_from_the_retrain_scores_or_parsed():
    results = {"retrain": {"forget": {"wer": 0.867}}}
    stop = common.stop_at_target_callback("retrain", results, "wer")
    assert stop.target == 0.867 and stop.metric == "wer" and stop.higher_is_forgotten
    assert common.stop_at_target_callback("0.4", {}, "rougeL_recall").target == 0.4
    assert common.stop_at_target_callback(None, results, "wer") is None
    with pytest.raises(ValueError, match="train_retrain_reference"):
        common.stop_at_target_callback("retrain", {"base": {}}, "wer")
    with pytest.raises(ValueError, match="'retrain' or a number"):
        common.stop_at_target_callback("half", results, "wer")


@pytest.mark.slow
def test_text_recipe_stops_at_the_retrain_level_and_reports_the_restored_model(tmp_path):
    output_dir = tmp_path / "out"
    argv = ["--corpus_preset", "tiny", "--method", "ga", "--max_steps", "30", "--eval_steps", "2"]
    argv += ["--learning_rate", "5e-3"]
    results = llm.run([*argv, "--stop_at_target", "retrain", "--output_dir", str(output_dir)])
    state = json.loads((output_dir / "trainer_state.json").read_text())
    target = results["retrain"]["forget"]["rougeL_recall"]
    evaluations = {e["step"]: e for e in state["log_history"] if "eval_forget_rougeL_recall" in e}
    values = {step: e["eval_forget_rougeL_recall"] for step, e in evaluations.items()}
    assert values[state["global_step"]] <= target < results["base"]["forget"]["rougeL_recall"]
    assert state["global_step"] < 30, f"GA should reach the retrain level well before 30 steps: {values}"
    assert all(value > target for step, value in values.items() if step < state["global_step"])  # first reach
    closest = min(values, key=lambda step: (abs(values[step] - target), step))
    assert state["best_global_step"] == closest
    assert results["unlearned"]["forget"]["rougeL_recall"] == values[closest]
