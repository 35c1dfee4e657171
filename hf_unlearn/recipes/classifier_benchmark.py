"""Every unlearning method on the digits benchmark, class-wise and random forgetting, scored against exact retraining:
what `python benchmarks/compare_methods.py --benchmark classifier` runs.

Each (task, method) pair is one run of the classifier recipe (`hf_unlearn.recipes.classifier.run`, the code path of
`recipes/unlearn_classifier.py`) with the preset `classifier_digits.yaml` and the same seed; `retain_weight` is each
method's own default unless given in `extra`. The score is the recipe's Avg-Gap (mean |m − m_retrain| over UA, RA,
TA and MIA-efficacy), and UIS is reported beside it.
"""

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


METHODS = ("ga", "graddiff", "npo", "simnpo", "gru", "orthograd", "lur", "salun", "scrub")
TASKS = ("class", "random")
STEM = "compare_methods_classifier"


def compare_classifier_methods(
    methods: Sequence[str] = METHODS,
    tasks: Sequence[str] = TASKS,
    seed: int = 0,
    runs_dir: Path = Path("outputs/compare_methods/classifier"),
    output_dir: Path = Path("benchmarks/results"),
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every (task, method), write `compare_methods_classifier.{json,md,png}` into `output_dir`; return the JSON."""
    from hf_unlearn.methods import retain_knob
    from hf_unlearn.recipes.classifier import run

    start = time.perf_counter()
    summary: dict[str, Any] = {
        "benchmark": "classifier",
        "seed": seed,
        "recipe_args": list(extra),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "tasks": {},
    }
    for task in tasks:
        entry: dict[str, Any] = {"methods": {}}
        for method in methods:
            print(f"=== classifier/{task}: {method}", flush=True)
            run_dir = Path(runs_dir) / task / method
            argv = ["--task", task, "--method", method, "--seed", str(seed), "--output_dir", str(run_dir),
                    "--overwrite_output_dir", "true", *extra]  # fmt: skip
            began = time.perf_counter()
            results = run(argv)
            resolved = json.loads((run_dir / "unlearn_config.json").read_text())["config"]
            entry["base"], entry["retrain"] = results["base"], results.get("retrain")
            entry["base_avg_gap"] = results.get("base_avg_gap")
            entry["methods"][method] = {
                "unlearned": results["unlearned"],
                "avg_gap": results["avg_gap"],
                "uis": results["uis"],
                "retain_weight": resolved.get(retain_knob(method)),  # the method's own weight (λ, α or γ)
                "max_steps": resolved.get("max_steps"),
                "learning_rate": resolved.get("learning_rate"),
                "wall_s": round(time.perf_counter() - began, 1),
            }
        summary["tasks"][task] = entry
    summary["total_wall_s"] = round(time.perf_counter() - start, 1)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{STEM}.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_outputs(summary, output_dir)
    return summary


def write_outputs(summary: dict[str, Any], output_dir: Path) -> str:
    """The markdown tables (one per task) and the Avg-Gap plot, from the JSON summary only."""
    table = markdown_tables(summary)
    (Path(output_dir) / f"{STEM}.md").write_text(table + "\n")
    plot_avg_gap(summary, Path(output_dir) / f"{STEM}.png")
    return table


def markdown_tables(summary: dict[str, Any]) -> str:
    """Per task: one row per method (best Avg-Gap first), then base and exact retrain."""

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    blocks = []
    for task, entry in summary["tasks"].items():
        extra_split = "forget_test" if task == "class" else None
        header = "| method | weight | UA ↑ | RA | TA | " + ("forget-class TA | " if extra_split else "")
        header += "MIA-efficacy | Avg-Gap ↓ | UIS ↓ | time (s) |"
        rule = "|---|---:|" + "---:|" * (7 + bool(extra_split))

        def cells(metrics: dict[str, Any], extra_split: str | None = extra_split) -> str:
            values = [1.0 - metrics["forget"]["accuracy"], metrics["retain"]["accuracy"], metrics["test"]["accuracy"]]
            if extra_split:
                values.append(metrics[extra_split]["accuracy"])
            values.append(metrics["mia_efficacy"])
            return " | ".join(fmt(v) for v in values)

        ordered = sorted(entry["methods"].items(), key=lambda kv: (kv[1]["avg_gap"] is None, kv[1]["avg_gap"]))
        rows = [
            f"| {m} | {fmt(r['retain_weight'])} | {cells(r['unlearned'])} | {fmt(r['avg_gap'])} | {fmt(r['uis'])} | "
            f"{r['wall_s']:.0f} |"
            for m, r in ordered
        ]
        rows.append(f"| *base (before)* | – | {cells(entry['base'])} | {fmt(entry['base_avg_gap'])} | 0.000 | – |")
        if entry.get("retrain"):
            rows.append(f"| *exact retrain* | – | {cells(entry['retrain'])} | 0.000 | – | – |")
        blocks.append("\n".join([f"**{task}-wise forgetting**" if task == "class" else "**random forgetting**", "",
                                 header, rule, *rows]))  # fmt: skip
    return "\n\n".join(blocks)


def plot_avg_gap(summary: dict[str, Any], path: Path) -> Path:
    """Grouped bars: Avg-Gap of every method on each task (lower is closer to exact retraining)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["tasks"])
    methods = list(dict.fromkeys(m for t in tasks for m in summary["tasks"][t]["methods"]))
    width = 0.8 / max(len(tasks), 1)
    figure, axis = plt.subplots(figsize=(9, 4), constrained_layout=True)
    for i, task in enumerate(tasks):
        gaps = [summary["tasks"][task]["methods"].get(m, {}).get("avg_gap") or 0.0 for m in methods]
        axis.bar([j + i * width for j in range(len(methods))], gaps, width, label=f"{task} forgetting")
        base_gap = summary["tasks"][task].get("base_avg_gap")
        if base_gap is not None:
            axis.axhline(base_gap, linestyle="--", linewidth=1, color=f"C{i}", alpha=0.7)
    axis.set_xticks([j + width * (len(tasks) - 1) / 2 for j in range(len(methods))], methods)
    axis.set_ylabel("Avg-Gap to exact retrain ↓")
    axis.set_title(f"digits, tiny ResNet, seed {summary['seed']} (dashed: base model before unlearning)")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
