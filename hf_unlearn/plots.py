"""PNG plots of unlearning runs: what a table of final numbers hides (the path there, the trade-off, the conflict).

Every function reads the files a recipe writes — `trainer_state.json`'s `log_history` and `metrics.json`
(`{"base"|"retrain"|"unlearned": {split: {metric: value}}}`) — so plots can be redrawn from any saved run
(`hf-unlearn report OUTPUT_DIR`). matplotlib runs on its Agg backend: no display needed, nothing pops up.
"""

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


CURVES_FILE = "training_curves.png"
CONFLICT_FILE = "gradient_conflict.png"
TRADEOFF_FILE = "forget_retain_tradeoff.png"
# Logged gradient-conflict keys and the sign that maps each onto cos(∇L_retain, ∇L_unlearn), L_unlearn the objective
# the step descends (−L_forget for ascent): negative means an unlearning step raises the retain loss.
CONFLICT_KEYS = {
    "lur/grad_cosine": 1.0,  # cos(∇L_r, ∇L_u) already
    "orthograd/forget_retain_cosine": -1.0,  # cos(∇L_f, ḡ_r): positive is conflict, so flip it
}
SPLIT_MARKERS = "osD^vP"
SPLIT_COLORS = {
    "forget": "tab:red",
    "forget_test": "tab:orange",
    "retain": "tab:blue",
    "test": "tab:green",
    "world_facts": "tab:purple",
}
# Evaluation metrics the curves prefer, in order: WER (speech), ROUGE-L recall (text), the per-example loss (any).
CURVE_METRICS = ("wer", "rougeL_recall", "loss")
METRIC_NAMES = {"wer": "WER", "rougeL_recall": "ROUGE-L recall", "loss": "mean per-example loss"}
# Metrics that fall as a model forgets (its forget score should go down); WER and losses rise instead.
SCORES = ("rougeL_recall", "prob", "model_utility")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def eval_metric(log_history: Sequence[Mapping[str, Any]], splits: Sequence[str]) -> str | None:
    """The first of `CURVE_METRICS` the evaluations logged for these splits (`"wer"` for speech, `"rougeL_recall"`
    for text, else `"loss"`), or `None` when no evaluation was logged."""
    for metric in CURVE_METRICS:
        if any(f"eval_{split}_{metric}" in entry for entry in log_history for split in splits):
            return metric
    return None


def eval_series(log_history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the log; one point per step (the last one logged wins: the final evaluation
    repeats the last periodic one)."""
    by_step: dict[int, float] = {}
    for entry in log_history:
        if key in entry and entry[key] is not None and math.isfinite(float(entry[key])):
            by_step[int(entry.get("step", 0))] = float(entry[key])
    steps = sorted(by_step)
    return steps, [by_step[step] for step in steps]


def plot_training_curves(
    log_history: Sequence[Mapping[str, Any]],
    path: str | Path,
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    splits: Sequence[str] = ("forget", "retain", "test", "world_facts"),
    title: str | None = None,
) -> Path | None:
    """Forget / retain / test (text: world_facts) WER, ROUGE-L recall or loss at each evaluation, and the training
    losses, against the step. Splits a run does not have are skipped.

    With `metrics` (the run's `metrics.json`), the base model's scores are the step-0 points and the exact-retrain
    model's are dashed lines: the level the forget curve should reach and the others should keep. Returns `None` (and writes nothing) when the
    log holds neither evaluations nor training losses.
    """
    metric = eval_metric(log_history, splits)
    train_keys = [key for key in ("forget/loss", "retain/loss") if eval_series(log_history, key)[0]]
    if metric is None and not train_keys:
        return None
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    if metric is not None:
        retrain = (metrics or {}).get("retrain", {})
        base = (metrics or {}).get("base", {})
        for split in splits:
            steps, values = eval_series(log_history, f"eval_{split}_{metric}")
            if not steps:
                continue
            if steps[0] > 0 and metric in base.get(split, {}):
                # The recipes score the base model before training; Trainer.train resets the log, so add it here.
                steps, values = [0, *steps], [base[split][metric], *values]
            color = SPLIT_COLORS.get(split)
            # Distinct markers and slightly offset sizes: splits that sit on the same values (a short run, every
            # WER at 0) stay visible instead of the last line hiding the others.
            index = list(splits).index(split)
            left.plot(
                steps,
                values,
                marker=SPLIT_MARKERS[index % len(SPLIT_MARKERS)],
                markersize=9 - 1.5 * index,
                color=color,
                label=split,
                alpha=0.85,
            )
            if metric in retrain.get(split, {}):
                left.axhline(retrain[split][metric], color=color, linestyle="--", linewidth=1, alpha=0.7)
        if retrain:
            left.plot([], [], color="gray", linestyle="--", label="exact retrain")
        left.set_title(f"evaluation {metric_name(metric)}")
        left.set_ylabel(metric_name(metric))
        left.legend()
    else:
        left.text(0.5, 0.5, "no evaluation logged", ha="center", va="center", transform=left.transAxes)
    for key, color in zip(train_keys, ("tab:red", "tab:blue"), strict=False):
        right.plot(*eval_series(log_history, key), color=color, label=key, marker=".")  # a marker: 1 point shows
    right.set_title("training losses (per logging window)")
    right.set_ylabel("mean per-example loss")
    if train_keys:
        right.legend()
    for axis in (left, right):
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def conflict_series(log_history: Sequence[Mapping[str, Any]]) -> tuple[str, list[int], list[float]] | None:
    """(logged key, steps, cos(∇L_retain, ∇L_unlearn)) from whichever conflict diagnostic the method logged."""
    for key, sign in CONFLICT_KEYS.items():
        steps, values = eval_series(log_history, key)
        if steps:
            return key, steps, [sign * value for value in values]
    return None


def plot_gradient_conflict(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, title: str | None = None
) -> Path | None:
    """cos(∇L_retain, ∇L_unlearn) over the steps of each run (label → `log_history`) that logged one.

    OrthoGrad/GRU log `orthograd/forget_retain_cosine` and LUR `lur/grad_cosine` with opposite sign conventions;
    both are mapped onto one: below zero, a plain unlearning step would raise the retain loss. Returns `None` when no
    run logged a conflict diagnostic (GA, GradDiff, NPO, SimNPO do not).
    """
    series = {label: found for label, history in runs.items() if (found := conflict_series(history)) is not None}
    if not series:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for label, (key, steps, values) in series.items():
        axis.plot(steps, values, marker=".", label=f"{label} ({key})")
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cos(∇L_retain, ∇L_unlearn)")
    axis.set_title(title or "forget/retain gradient conflict (< 0: unlearning hurts retain)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return _save(figure, path)


def plot_tradeoff(
    runs: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]],
    path: str | Path,
    metric: str = "wer",
    forget_split: str = "forget",
    retain_split: str = "retain",
    title: str | None = None,
    axis_limit: float | None = None,
) -> Path:
    """Forget vs retain `metric` of each run's unlearned model (label → `metrics.json`), with base and exact retrain.

    The goal is the exact-retrain point: forget as high (WER; as low for a score such as ROUGE-L) as retrain's, retain
    as good as base's. Base and retrain are
    taken from the first run that has them (every run of one benchmark shares them). With `axis_limit`, a run beyond
    it (a diverged model's WER can reach 5) is drawn on the edge with its true values written beside it, so it does
    not squash every other point into a corner.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    markers = "osD^vP*Xh<>"
    for index, (label, results) in enumerate(runs.items()):
        point = results.get("unlearned", {})
        if metric in point.get(forget_split, {}) and metric in point.get(retain_split, {}):
            x, y = point[retain_split][metric], point[forget_split][metric]
            off_scale = axis_limit is not None and max(x, y) > axis_limit
            if off_scale:
                label = f"{label} (off scale: {x:.2f}, {y:.2f})"
                x, y = min(x, axis_limit), min(y, axis_limit)
            axis.scatter(x, y, s=60, marker=markers[index % len(markers)], label=label, zorder=3)
            if off_scale:
                axis.annotate("off scale", (x, y), textcoords="offset points", xytext=(-50, -4), fontsize="small")
    references = {
        "base": dict(color="black", marker="x", s=80),
        "retrain": dict(color="gold", marker="*", s=220, edgecolors="black", linewidths=0.8),
    }
    for reference, style in references.items():
        found = next((results[reference] for results in runs.values() if reference in results), None)
        if found and metric in found.get(forget_split, {}) and metric in found.get(retain_split, {}):
            axis.scatter(found[retain_split][metric], found[forget_split][metric], zorder=4, label=reference, **style)
    if axis_limit is not None:
        margin = 0.04 * axis_limit
        axis.set_xlim(-margin, axis_limit + margin)
        axis.set_ylim(-margin, axis_limit + margin)
    name = metric_name(metric)
    score = metric in SCORES
    axis.set_xlabel(f"{retain_split} {name} ({'higher' if score else 'lower'}: less collateral damage)")
    axis.set_ylabel(f"{forget_split} {name} ({'lower' if score else 'higher'}: more forgotten)")
    axis.set_title(title or f"forget vs retain {name} after unlearning")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", loc="best")
    return _save(figure, path)


def write_run_plots(output_dir: str | Path) -> list[Path]:
    """The plots of one saved run, beside its `metrics.json`: training curves and, when logged, gradient conflict."""
    output_dir = Path(output_dir)
    state_file = output_dir / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"{state_file} not found: plots need the trainer_state.json a recipe writes.")
    log_history = json.loads(state_file.read_text())["log_history"]
    metrics_file = output_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    written = [
        plot_training_curves(log_history, output_dir / CURVES_FILE, metrics=metrics, title=run_title(output_dir)),
        plot_gradient_conflict({output_dir.name: log_history}, output_dir / CONFLICT_FILE),
    ]
    return [path for path in written if path is not None]


def run_title(output_dir: Path) -> str:
    """ "<method> unlearning, <steps> steps (<folder>)" from the run's `unlearn_config.json`; the folder name alone
    when the run did not record its config."""
    config_file = output_dir / "unlearn_config.json"
    if not config_file.is_file():
        return output_dir.name
    resolved = json.loads(config_file.read_text())
    method = resolved.get("script", {}).get("method", "?")
    steps = resolved.get("config", {}).get("max_steps")
    budget = f", {steps} steps" if isinstance(steps, int) and steps > 0 else ""
    return f"{method} unlearning{budget} ({output_dir.name})"


def _save(figure: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
