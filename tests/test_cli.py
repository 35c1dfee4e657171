"""`hf-unlearn` subcommands, run in-process through `main(argv)`; one subprocess check of `python -m hf_unlearn`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_unlearn import cli, plots

from .test_plots import METRICS, assert_png, log_history


REPO = Path(__file__).resolve().parents[1]


def test_env_lists_versions(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    assert "- transformers version: " in out and "- torch version: " in out and "hf-unlearn" in out


def test_report_prints_table_and_draws_plots(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": log_history("lur/grad_cosine")}))
    assert cli.main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| model | forget WER | retain WER | test WER |" in out
    assert "| unlearned | 0.900 | 0.100 | 0.950 |" in out
    assert_png(tmp_path / plots.CURVES_FILE)
    assert_png(tmp_path / plots.CONFLICT_FILE)


def test_report_without_plots_and_without_a_run(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    assert cli.main(["report", str(tmp_path), "--no-plots"]) == 0
    assert not (tmp_path / plots.CURVES_FILE).exists()
    assert cli.main(["report", str(tmp_path / "missing")]) == 1
    assert "metrics.json not found" in capsys.readouterr().err


def test_unknown_recipe_and_stray_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit):
        cli.main(["unlearn", "--recipe", "nope"])
    with pytest.raises(SystemExit):
        cli.main(["env", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_unlearn_runs_the_recipe_in_process(tmp_path, capsys):
    output_dir = tmp_path / "out"
    argv = ["unlearn", "--corpus_preset", "tiny", "--max_steps", "2", "--logging_steps", "1"]
    assert cli.main([*argv, "--method", "lur", "--output_dir", str(output_dir)]) == 0
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert set(metrics) == {"base", "retrain", "unlearned"}
    assert json.loads((output_dir / "unlearn_config.json").read_text())["script"]["method"] == "lur"
    assert "| unlearned |" in capsys.readouterr().out
    assert_png(output_dir / plots.CURVES_FILE)
    assert_png(output_dir / plots.CONFLICT_FILE)  # LUR logs lur/grad_cosine


def test_unlearn_text_recipe_then_report(tmp_path, capsys):
    """`--recipe llm` on the tiny preset, evaluated at the last step (reused as the final scores), then `report`."""
    output_dir = tmp_path / "out"
    argv = ["unlearn", "--recipe", "llm", "--corpus_preset", "tiny", "--max_steps", "2", "--logging_steps", "1"]
    argv += ["--eval_strategy", "steps", "--eval_steps", "2", "--method", "npo", "--output_dir", str(output_dir)]
    assert cli.main(argv) == 0
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert set(metrics) == {"base", "retrain", "unlearned"}
    assert {"rougeL_recall", "model_utility", "mia_loss_auc"} <= set(metrics["unlearned"]["forget"])
    state = json.loads((output_dir / "trainer_state.json").read_text())
    final_evals = [e for e in state["log_history"] if "eval_forget_rougeL_recall" in e]
    assert len(final_evals) == 1  # the step-2 evaluation was reused, not repeated
    assert metrics["unlearned"]["forget"]["rougeL_recall"] == final_evals[0]["eval_forget_rougeL_recall"]
    assert json.loads((output_dir / "unlearn_config.json").read_text())["script"]["method"] == "npo"
    assert_png(output_dir / plots.CURVES_FILE)
    capsys.readouterr()

    (output_dir / plots.CURVES_FILE).unlink()
    assert cli.main(["report", str(output_dir)]) == 0
    out = capsys.readouterr().out
    assert "| model | forget ROUGEL_RECALL | retain ROUGEL_RECALL |" in out and "| unlearned |" in out
    assert_png(output_dir / plots.CURVES_FILE)


def test_python_dash_m_entry_point():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hf_unlearn", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "unlearn" in result.stdout and "report" in result.stdout and "env" in result.stdout


@pytest.mark.parametrize("program", ["/home/me/.venv/bin/hf-unlearn", "/src/repo/hf_unlearn/__main__.py"])
def test_card_command_names_the_cli_not_its_install_path(program):
    from hf_unlearn.hub.model_card import reproduce_command

    assert reproduce_command([program, "unlearn", "--method", "lur"]) == "hf-unlearn unlearn --method lur"
    assert reproduce_command(["recipes/unlearn_whisper.py", "--x"]) == "python recipes/unlearn_whisper.py --x"


def test_top_level_help_imports_no_torch():
    """`hf-unlearn --help` must not pay for torch/transformers (the package exports its names lazily)."""
    code = "import sys; from hf_unlearn import cli; cli.make_parser(); print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_lazy_exports_resolve_to_the_classes():
    import hf_unlearn
    from hf_unlearn.methods import METHODS, LURTrainer

    assert hf_unlearn.LURTrainer is LURTrainer and hf_unlearn.METHODS is METHODS
    assert set(hf_unlearn.__all__) <= set(dir(hf_unlearn))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchTrainer'"):
        hf_unlearn.NoSuchTrainer  # noqa: B018


def test_unlearn_help_shows_the_subcommand_groups_and_the_presets_defaults(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/hf-unlearn"])
    monkeypatch.setenv("HF_UNLEARN_CACHE", str(tmp_path))
    assert cli.main(["unlearn", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert out.startswith("usage: hf-unlearn unlearn [--config PATH]")
    assert "script (data, models, adapter, outputs):" in out and "method and training" in out
    learning_rate_help = out[out.index("--learning_rate LEARNING_RATE,") :][:200]
    assert "(default: 0.001)" in learning_rate_help  # the preset's 1e-3, not TrainingArguments' 5e-05
    retain_help = out[out.index("--retain_weight RETAIN_WEIGHT,") :][:200]
    assert "(default: 3.0)" in retain_help  # GradDiff's λ from the preset


@pytest.mark.parametrize("recipe", sorted(cli.RECIPES))
def test_unlearn_help_renders_for_every_recipe(recipe, capsys, monkeypatch, tmp_path):
    """argparse formats help strings with `%`: a bare "20 % of" in a field's help crashed `--help`."""
    monkeypatch.setenv("HF_UNLEARN_CACHE", str(tmp_path))
    assert cli.main(["unlearn", "--recipe", recipe, "--method", "orthograd", "--help"]) == 0
    assert "--projection_granularity" in capsys.readouterr().out


def test_unlearn_help_is_read_back_without_importing_torch(tmp_path):
    """The second `unlearn --help` with the same arguments, preset and versions comes from the cache: no torch."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_UNLEARN_CACHE": str(tmp_path), "COLUMNS": "100"}
    code = (
        "import sys; from hf_unlearn import cli; status = cli.main(['unlearn', '--recipe', 'llm', '--help']); "
        "print('TORCH', 'torch' in sys.modules, status)"
    )
    first, second = (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        for _ in range(2)
    )
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    assert "TORCH True 0" in first.stdout and "TORCH False 0" in second.stdout
    assert first.stdout == second.stdout.replace("TORCH False", "TORCH True")  # the same text, read back
    assert "--learning_rate LEARNING_RATE" in second.stdout


def test_unlearn_help_cache_key_follows_the_preset_and_the_arguments(tmp_path):
    from hf_unlearn.help_cache import help_key

    preset = tmp_path / "preset.yaml"
    preset.write_text("learning_rate: 0.001\n")
    before = help_key("llm", ["--config", str(preset), "--help"])
    assert help_key("llm", ["--config", str(preset), "--help"]) == before
    assert help_key("llm", ["--config", str(preset), "--method", "npo", "--help"]) != before
    assert help_key("whisper", ["--config", str(preset), "--help"]) != before
    preset.write_text("learning_rate: 0.01\n")
    assert help_key("llm", ["--config", str(preset), "--help"]) != before


def test_unlearn_help_of_an_unknown_method_is_an_error_and_is_not_cached(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_UNLEARN_CACHE", str(tmp_path))
    assert cli.main(["unlearn", "--method", "foo", "--help"]) == 2
    assert "foo" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.txt"))


def test_unknown_method_is_one_line_and_exit_2(capsys):
    assert cli.main(["unlearn", "--method", "foo"]) == 2
    err = capsys.readouterr().err
    assert "Unknown --method 'foo'" in err and "Traceback" not in err
    assert "Ignoring retain_weight" not in err  # the method is checked before anything else is said


def test_user_error_is_one_line_and_exit_2_and_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["unlearn", "--corpus_preset", "tiny", "--dataset_name", str(tmp_path / "missing"), "--max_steps", "1"]
    argv += ["--output_dir", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-unlearn unlearn: error:") and "--debug" in err
    with pytest.raises((ValueError, FileNotFoundError, SystemExit)):
        cli.main([*argv, "--debug"])


def test_use_peft_false_fine_tunes_the_whole_model_and_metrics_go_through_save_metrics(tmp_path, capsys):
    output_dir = tmp_path / "full"
    argv = ["unlearn", "--recipe", "llm", "--corpus_preset", "tiny", "--max_steps", "1", "--use_peft", "false"]
    argv += ["--method", "graddiff", "--eval_strategy", "no", "--output_dir", str(output_dir)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert (output_dir / "model.safetensors").is_file() and not (output_dir / "adapter_config.json").exists()
    unlearned = json.loads((output_dir / "unlearned_results.json").read_text())
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert unlearned["forget_rougeL_recall"] == metrics["unlearned"]["forget"]["rougeL_recall"]
    assert "base_forget_rougeL_recall" not in unlearned and (output_dir / "all_results.json").is_file()
