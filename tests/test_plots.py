"""Plots from a synthetic log: each file is a real PNG, conventions are mapped, absent data writes nothing."""

import json

import pytest

from hf_unlearn import plots


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRICS = {
    "base": {"forget": {"wer": 0.0, "loss": 0.1}, "retain": {"wer": 0.0, "loss": 0.1}, "test": {"wer": 0.9}},
    "retrain": {"forget": {"wer": 0.85, "loss": 3.0}, "retain": {"wer": 0.0, "loss": 0.1}, "test": {"wer": 0.9}},
    "unlearned": {"forget": {"wer": 0.9, "loss": 4.0}, "retain": {"wer": 0.1, "loss": 0.4}, "test": {"wer": 0.95}},
}


def log_history(conflict_key=None):
    history = []
    for step in range(5, 65, 5):
        entry = {"step": step, "loss": 1.0, "forget/loss": 0.1 * step, "retain/loss": 0.1 + 0.001 * step}
        if conflict_key:
            entry[conflict_key] = 0.01 * step
        history.append(entry)
        if step % 20 == 0:
            history.append({"step": step, "eval_forget_wer": step / 60, "eval_retain_wer": 0.01, "eval_test_wer": 0.9})
    history.append({"step": 60, "eval_forget_wer": 0.9, "eval_retain_wer": 0.1, "eval_test_wer": 0.95})
    return history


def assert_png(path):
    assert path is not None and path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size < 200_000


def test_eval_series_keeps_one_point_per_step_the_last_logged():
    steps, values = plots.eval_series(log_history(), "eval_forget_wer")
    assert steps == [20, 40, 60]
    assert values == pytest.approx([1 / 3, 2 / 3, 0.9])


def test_eval_metric_falls_back_to_loss_then_none():
    assert plots.eval_metric(log_history(), ["forget"]) == "wer"
    assert plots.eval_metric([{"step": 1, "eval_forget_loss": 2.0}], ["forget"]) == "loss"
    assert plots.eval_metric([{"step": 1, "loss": 2.0}], ["forget"]) is None


def test_training_curves_png(tmp_path):
    assert_png(plots.plot_training_curves(log_history(), tmp_path / "curves.png", metrics=METRICS))


def test_training_curves_nothing_to_draw(tmp_path):
    assert plots.plot_training_curves([{"step": 1, "learning_rate": 1e-3}], tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(("key", "sign"), [("lur/grad_cosine", 1.0), ("orthograd/forget_retain_cosine", -1.0)])
def test_conflict_is_mapped_to_one_sign_convention(key, sign):
    found_key, steps, values = plots.conflict_series(log_history(key))
    assert found_key == key
    assert steps[:2] == [5, 10]
    assert values[:2] == pytest.approx([sign * 0.05, sign * 0.10])


def test_gradient_conflict_png_only_for_runs_that_log_it(tmp_path):
    assert plots.plot_gradient_conflict({"graddiff": log_history()}, tmp_path / "none.png") is None
    runs = {"lur": log_history("lur/grad_cosine"), "orthograd": log_history("orthograd/forget_retain_cosine")}
    assert_png(plots.plot_gradient_conflict(runs, tmp_path / "conflict.png"))


def test_tradeoff_png(tmp_path):
    other = json.loads(json.dumps(METRICS))
    other["unlearned"]["retain"]["wer"] = 0.5
    assert_png(plots.plot_tradeoff({"graddiff": METRICS, "ga": other}, tmp_path / "tradeoff.png"))


def test_write_run_plots_reads_a_saved_run(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": log_history("lur/grad_cosine")}))
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    written = plots.write_run_plots(tmp_path)
    assert [path.name for path in written] == [plots.CURVES_FILE, plots.CONFLICT_FILE]
    for path in written:
        assert_png(path)


def test_write_run_plots_needs_the_trainer_state(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        plots.write_run_plots(tmp_path)


def test_tradeoff_draws_off_scale_runs_on_the_edge_with_their_values(tmp_path, monkeypatch):
    diverged = json.loads(json.dumps(METRICS))
    diverged["unlearned"]["forget"]["wer"] = 5.5
    labels = []
    real_scatter = plots._pyplot().Axes.scatter

    def scatter(axis, x, y, *args, **kwargs):
        labels.append((kwargs.get("label"), x, y))
        return real_scatter(axis, x, y, *args, **kwargs)

    monkeypatch.setattr(plots._pyplot().Axes, "scatter", scatter)
    assert_png(plots.plot_tradeoff({"ok": METRICS, "lur": diverged}, tmp_path / "t.png", axis_limit=1.2))
    assert ("ok", 0.1, 0.9) in labels
    assert ("lur (off scale: 0.10, 5.50)", 0.1, 1.2) in labels


def test_text_runs_plot_rouge_curves_and_a_score_tradeoff(tmp_path, monkeypatch):
    """No WER: the curves fall back to ROUGE-L recall (world_facts included), the trade-off labels flip direction."""
    history = [{"step": s, "forget/loss": 1.0, "retain/loss": 0.1} for s in (1, 2)]
    history.append({"step": 2, "eval_forget_rougeL_recall": 0.3, "eval_world_facts_rougeL_recall": 1.0})
    assert plots.eval_metric(history, ["forget", "retain"]) == "rougeL_recall"
    metrics = {name: {"forget": {"rougeL_recall": v}, "retain": {"rougeL_recall": 1.0}} for name, v in
               (("base", 1.0), ("retrain", 0.4), ("unlearned", 0.3))}  # fmt: skip
    assert_png(plots.plot_training_curves(history, tmp_path / "curves.png", metrics=metrics))
    labels = []
    monkeypatch.setattr("matplotlib.axes.Axes.set_ylabel", lambda axis, label, **kw: labels.append(label))
    assert_png(plots.plot_tradeoff({"npo": metrics}, tmp_path / "tradeoff.png", metric="rougeL_recall"))
    assert labels == ["forget ROUGE-L recall (lower: more forgotten)"]


def test_run_title_names_method_and_budget(tmp_path):
    assert plots.run_title(tmp_path) == tmp_path.name  # no unlearn_config.json: the folder's name
    resolved = {"script": {"method": "lur"}, "config": {"max_steps": 60}}
    (tmp_path / "unlearn_config.json").write_text(json.dumps(resolved))
    assert plots.run_title(tmp_path) == f"lur unlearning, 60 steps ({tmp_path.name})"
