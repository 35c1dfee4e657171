"""Every unlearning method on an embedded benchmark, same budget and seed, scored by its distance to exact retraining.

    # All seven methods on the speech benchmark with the recipe's default preset (max_steps 60, lr 1e-3, seed 0):
    python benchmarks/compare_methods.py

    # The same on the text benchmark (tiny Llama, fictitious people; llm_tiny.yaml: max_steps 50, lr 1e-3, seed 0):
    python benchmarks/compare_methods.py --benchmark text

    # Every method (the 7 + SalUn + SCRUB), class-wise and random forgetting on the digits (tiny ResNet):
    python benchmarks/compare_methods.py --benchmark classifier

    # A subset, another seed, and any recipe field after `--` (applied to every method):
    python benchmarks/compare_methods.py --methods graddiff lur --seed 1 -- --max_steps 40

Each method is one run of the benchmark's recipe (`hf_unlearn.recipes.whisper.run` or `hf_unlearn.recipes.llm.run`,
the code path of `recipes/unlearn_{whisper,llm}.py` and `hf-unlearn unlearn`), each in its own folder under
`--runs_dir/<benchmark>/<method>` with its adapter, `metrics.json`, `trainer_state.json` and plots. Every method gets
the same preset (steps, learning rate, batch sizes, LoRA rank) and seed; `retain_weight` is each method's own
default (it means λ, α or γ depending on the method; the preset's value is kept only for the preset's own method,
GradDiff) unless given after `--`. `--plot_only` redraws the table and plots from the JSON.

The score is Avg-Gap: the mean absolute difference to the exact-retrain model (trained without the forget set) over a
fixed set of metrics, lower is closer to a model that never saw the forget set:

- speech: WER on forget, retain and test;
- text: forget ROUGE-L recall (how much of each forgotten answer is still recited), retain ROUGE-L recall (collateral
  damage on the same domain), model utility (TOFU's harmonic mean of probability, ROUGE-L and truth ratio on retain
  and world_facts) and the forget-vs-holdout MIA LOSS AUC (whether the forget set still looks like training data).
  All four lie in [0, 1], so no one dominates the mean. Forget quality (a KS p-value) is in the table but not in the
  gap: with 24 forget questions it takes few distinct values and is 1 for the retrain model by construction.

Writes `compare_methods_<benchmark>.{md,json}`, the forget-vs-retain trade-off plot and the gradient-conflict plot
into `--output_dir`.
"""

import argparse
import json
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


METHOD_ORDER = ("ga", "graddiff", "npo", "simnpo", "gru", "orthograd", "lur")


@dataclass(frozen=True)
class Benchmark:
    """A benchmark is a recipe (`run(argv) -> metrics.json content`) plus the metrics it is scored on.

    Every recipe writes the same `metrics.json` shape (`{"base"|"retrain"|"unlearned": {split: {metric: value}}}`);
    a column is a `(split, metric)` pair of it.
    """

    recipe: str  # module with `run(argv)`
    metric: str  # the metric of the forget-vs-retain trade-off plot
    gap_columns: tuple[tuple[str, str], ...]  # (split, metric) pairs averaged in Avg-Gap
    table_columns: tuple[tuple[str, str, str], ...]  # (split, metric, header) of the markdown table
    run_args: tuple[str, ...] = ()  # recipe arguments every method's run gets
    plot_limit: float | None = None  # trade-off plot axes; runs beyond it are drawn on the edge, values written out


BENCHMARKS = {
    "speech": Benchmark(
        recipe="hf_unlearn.recipes.whisper",
        metric="wer",
        gap_columns=(("forget", "wer"), ("retain", "wer"), ("test", "wer")),
        table_columns=tuple((split, "wer", f"{split} WER") for split in ("forget", "forget_test", "retain", "test")),
        plot_limit=1.2,  # WER counts insertions: a model that babbles can pass 1, which would squash the rest
    ),
    "text": Benchmark(
        recipe="hf_unlearn.recipes.llm",
        metric="rougeL_recall",
        # model utility and the MIA AUCs are computed at the forget split (from every split's records).
        gap_columns=(
            ("forget", "rougeL_recall"),
            ("retain", "rougeL_recall"),
            ("forget", "model_utility"),
            ("forget", "mia_loss_auc"),
        ),
        table_columns=(
            ("forget", "rougeL_recall", "forget ROUGE-L"),
            ("forget", "prob", "forget prob"),
            ("forget", "truth_ratio", "forget truth ratio"),
            ("forget", "forget_quality", "forget quality"),
            ("forget", "model_utility", "model utility"),
            ("retain", "rougeL_recall", "retain ROUGE-L"),
            ("world_facts", "rougeL_recall", "world_facts ROUGE-L"),
            ("forget", "mia_loss_auc", "MIA LOSS AUC"),
        ),
    ),
}


def avg_gap(
    results: Mapping[str, Mapping[str, Mapping[str, float]]], columns: Sequence[tuple[str, str]], model: str
) -> float | None:
    """Mean over `(split, metric)` columns of |`model`'s value − the exact-retrain model's|; `None` without a
    retrain reference."""
    if "retrain" not in results or model not in results:
        return None
    gaps = [abs(results[model][split][metric] - results["retrain"][split][metric]) for split, metric in columns]
    return sum(gaps) / len(gaps)


def run_method(benchmark: Benchmark, method: str, run_dir: Path, seed: int, extra: Sequence[str]) -> dict:
    """One recipe run in this process; returns its metrics, resolved weight, wall time and log history."""
    import importlib

    recipe = importlib.import_module(benchmark.recipe)
    argv = [*benchmark.run_args, "--method", method, "--seed", str(seed), "--output_dir", str(run_dir)]
    argv += ["--overwrite_output_dir", "true", *extra]
    start = time.perf_counter()
    results = recipe.run(argv)
    wall_s = time.perf_counter() - start
    resolved = json.loads((run_dir / "unlearn_config.json").read_text())
    log_history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return {
        "metrics": results,
        "retain_weight": resolved["config"].get("retain_weight"),
        "max_steps": resolved["config"].get("max_steps"),
        "wall_s": round(wall_s, 1),
        "log_history": log_history,
    }


def summarise(benchmark: Benchmark, runs: Mapping[str, dict]) -> dict:
    """The JSON report: per method its unlearned metrics and Avg-Gap, plus the shared base and retrain rows."""
    first = next(iter(runs.values()))["metrics"]
    summary = {
        "metric": benchmark.metric,
        "gap_columns": [f"{split}/{metric}" for split, metric in benchmark.gap_columns],
        "base": first.get("base"),
        "retrain": first.get("retrain"),
        "base_avg_gap": avg_gap(first, benchmark.gap_columns, "base"),
        "methods": {},
    }
    for method, run in runs.items():
        summary["methods"][method] = {
            "unlearned": run["metrics"]["unlearned"],
            "avg_gap": avg_gap(run["metrics"], benchmark.gap_columns, "unlearned"),
            "retain_weight": run["retain_weight"],
            "max_steps": run["max_steps"],
            "wall_s": run["wall_s"],
        }
    return summary


def tradeoff_runs(summary: Mapping) -> dict[str, dict]:
    """Rebuild `{method: metrics.json}` from the JSON summary, so plots are drawn from the written numbers."""
    shared = {name: summary[name] for name in ("base", "retrain") if summary.get(name)}
    return {method: {**shared, "unlearned": run["unlearned"]} for method, run in summary["methods"].items()}


def write_outputs(benchmark: Benchmark, summary: Mapping, output_dir: Path, runs_dir: Path) -> str:
    """Markdown table, trade-off plot and (from the runs' `trainer_state.json`) gradient-conflict plot."""
    from hf_unlearn.plots import metric_name, plot_gradient_conflict, plot_tradeoff

    stem = f"compare_methods_{summary['benchmark']}"
    table = markdown_table(benchmark, summary)
    (output_dir / f"{stem}.md").write_text(table + "\n")
    plot_tradeoff(
        tradeoff_runs(summary),
        output_dir / f"{stem}_tradeoff.png",
        metric=benchmark.metric,
        title=f"{summary['benchmark']}: forget vs retain {metric_name(benchmark.metric)}, seed {summary['seed']}",
        axis_limit=benchmark.plot_limit,
    )
    histories = {}
    for method in summary["methods"]:
        state_file = runs_dir / method / "trainer_state.json"
        if state_file.is_file():
            histories[method] = json.loads(state_file.read_text())["log_history"]
    plot_gradient_conflict(histories, output_dir / f"{stem}_conflict.png")
    return table


def markdown_table(benchmark: Benchmark, summary: Mapping) -> str:
    """One row per method (best Avg-Gap first), then base and exact retrain, from the JSON summary only."""
    columns = benchmark.table_columns
    header = "| method | weight | " + " | ".join(column[2] for column in columns) + " | Avg-Gap ↓ | time (s) |"
    rule = "|---|---:|" + "---:|" * len(columns) + "---:|---:|"

    def cells(per_split: Mapping) -> str:
        return " | ".join(fmt(per_split.get(split, {}).get(metric)) for split, metric, _ in columns)

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    methods = sorted(summary["methods"].items(), key=lambda item: (item[1]["avg_gap"] is None, item[1]["avg_gap"]))
    rows = [
        f"| {method} | {fmt(run['retain_weight'])} | {cells(run['unlearned'])} | {fmt(run['avg_gap'])} | "
        f"{run['wall_s']:.0f} |"
        for method, run in methods
    ]
    if summary["base"]:
        rows.append(f"| *base (before)* | – | {cells(summary['base'])} | {fmt(summary['base_avg_gap'])} | – |")
    if summary["retrain"]:
        rows.append(f"| *exact retrain* | – | {cells(summary['retrain'])} | 0.000 | – |")
    return "\n".join([header, rule, *rows])


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage="%(prog)s [options] [-- recipe args]")
    parser.add_argument(
        "--benchmark", default="speech", help=f"Benchmark to run: {', '.join(BENCHMARKS)}, classifier."
    )
    parser.add_argument("--methods", nargs="+", default=list(METHOD_ORDER), help="Methods to compare.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of every run (adapter init and data order).")
    parser.add_argument("--runs_dir", type=Path, default=Path("outputs/compare_methods"), help="Per-method runs.")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"), help="Table, JSON, plots.")
    parser.add_argument(
        "--plot_only",
        action="store_true",
        help="Redraw the table and plots from an earlier run's JSON; train nothing.",
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run every method, write the markdown table, JSON and plots; returns the JSON summary."""
    argv = sys.argv[1:] if argv is None else list(argv)
    split_at = argv.index("--") if "--" in argv else len(argv)
    parser = make_parser()
    args = parser.parse_args(argv[:split_at])
    extra = argv[split_at + 1 :]
    if args.benchmark == "classifier":
        # Two tasks (class-wise, random), SalUn and SCRUB too: its own runner and table (hf_unlearn.recipes).
        from hf_unlearn.recipes.classifier_benchmark import METHODS as CLASSIFIER_METHODS
        from hf_unlearn.recipes.classifier_benchmark import compare_classifier_methods
        from hf_unlearn.recipes.classifier_benchmark import write_outputs as write_classifier_outputs

        if args.plot_only:
            summary = json.loads((args.output_dir / "compare_methods_classifier.json").read_text())
            print(write_classifier_outputs(summary, args.output_dir))
            return summary
        methods = args.methods if "--methods" in argv[:split_at] else list(CLASSIFIER_METHODS)
        summary = compare_classifier_methods(
            methods, seed=args.seed, runs_dir=args.runs_dir / "classifier", output_dir=args.output_dir, extra=extra
        )
        print(write_classifier_outputs(summary, args.output_dir))
        return summary
    if args.benchmark not in BENCHMARKS:
        parser.error(f"--benchmark {args.benchmark!r} does not exist; available: {', '.join(BENCHMARKS)}.")
    benchmark = BENCHMARKS[args.benchmark]

    stem = f"compare_methods_{args.benchmark}"
    if args.plot_only:
        summary = json.loads((args.output_dir / f"{stem}.json").read_text())
        print(write_outputs(benchmark, summary, args.output_dir, args.runs_dir / args.benchmark))
        return summary

    from hf_unlearn import METHODS

    unknown = [method for method in args.methods if method not in METHODS]
    if unknown:
        parser.error(f"unknown --methods {unknown}; choose from {sorted(METHODS)}.")

    runs = {}
    start = time.perf_counter()
    for method in args.methods:
        print(f"=== {args.benchmark}: {method}", flush=True)
        runs[method] = run_method(benchmark, method, args.runs_dir / args.benchmark / method, args.seed, extra)

    summary = {
        "benchmark": args.benchmark,
        "seed": args.seed,
        "recipe_args": extra,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "total_wall_s": round(time.perf_counter() - start, 1),
        **summarise(benchmark, runs),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = write_outputs(benchmark, summary, args.output_dir, args.runs_dir / args.benchmark)
    print(table)
    return summary


if __name__ == "__main__":
    main()
