"""Every unlearning method on an embedded benchmark, tuned alike, stopped at the same forget level, over several seeds.

    # The evidence run: per method a weight × learning-rate grid chosen on a validation seed, then 3 seeds at the
    # chosen point, every run stopped at the exact-retrain model's forget level:
    python benchmarks/compare_methods.py --benchmark text --seeds 3

    # A smaller grid (here 2 weights per method, one learning rate) and a subset of methods:
    python benchmarks/compare_methods.py --benchmark text --methods graddiff npo lur --weights graddiff=1,3 \
        --learning_rates 1e-3

    # CI: the tiny corpus, 2 seeds, a 2-point grid for each method, a few steps:
    python benchmarks/compare_methods.py --benchmark text --quick

    # Every method (the 7 + SalUn + SCRUB), class-wise and random forgetting on the digits (tiny ResNet); one seed
    # (0) at the preset's budget, not yet the tuned multi-seed protocol below:
    python benchmarks/compare_methods.py --benchmark classifier

    # Any recipe field after `--` (applied to every run), and redrawing the outputs from the JSON:
    python benchmarks/compare_methods.py --benchmark speech -- --max_steps 80
    python benchmarks/compare_methods.py --benchmark text --plot_only

**Protocol.** Each run is one call of the benchmark's recipe (`hf_unlearn.recipes.whisper.run` or
`hf_unlearn.recipes.llm.run`: the code path of `recipes/unlearn_{whisper,llm}.py` and `hf-unlearn unlearn`), in its
own folder under `--runs_dir/<benchmark>/<method>/`.

- *Matched forget*: every run gets `--stop_at_target retrain` (`hf_unlearn.StopAtForgetTarget`): it evaluates every
  `eval_steps`, stops once the forget metric (speech WER, text ROUGE-L recall) reaches the exact-retrain model's value
  and restores the evaluated checkpoint closest to it, so retain damage is compared at equal forgetting. A run that
  never reaches it within `max_steps` keeps its closest checkpoint; the table reports the restored step.
- *Equal tuning*: each method gets the same kind of grid, its own weight (λ for GradDiff/NPO/SimNPO, α for
  OrthoGrad/GRU, γ for LUR; `DEFAULT_WEIGHTS`) × learning rate, at most 9 points. Every point runs once on the
  **validation seed** (`--validation_seed`, never one of the reported seeds) and the point with the smallest Avg-Gap
  is kept — one rule for every method. A plain grid rather than `Trainer.hyperparameter_search`: the grid is ≤ 9
  points, every point must run through the recipe (references, stopping, evaluation) exactly as the reported runs
  do, and the full grid doubles as each method's forget–retain trade-off curve. On these embedded benchmarks the
  forget set is the unlearning target itself, so "validation" means an independent seed (see below),
  not held-out data.
- *Seeds*: the chosen point runs with seeds `0 … N−1` (`--seeds N`); a seed sets the adapter init, the data order and,
  in the embedded recipes, the training of the base and exact-retrain models (each seed trains and caches its own; a
  run's Avg-Gap is against its own seed's retrain model; the forget sets are fixed). Every metric is reported as mean ± sd over seeds, and each method is
  compared with GradDiff and NPO seed by seed (paired): the mean Avg-Gap difference, a 95 % bootstrap CI of it and
  the two-sided sign-test p-value. With 3 seeds the sign test cannot go below p = 0.25: read it as a count of wins.

**Score**: Avg-Gap, the mean absolute difference to the exact-retrain model over a fixed set of metrics (lower is
closer to a model that never saw the forget set):

- speech: WER on forget, retain and test;
- text: forget ROUGE-L recall, retain ROUGE-L recall, model utility and the forget-vs-holdout MIA LOSS AUC (all in
  [0, 1]). Forget quality (a KS p-value) is in the table but not in the gap.

Writes `compare_methods_<benchmark>.{md,json}`, the trade-off plot (`_tradeoff.png`: each method's grid as a curve,
its seeds' mean ± sd as a point with error bars) and the gradient-conflict plot of the seed-0 runs into `--output_dir`.
Another benchmark plugs in as one `Benchmark` entry: a module with `run(argv) -> metrics.json content` that accepts
`--method --seed --output_dir --retain_weight --learning_rate` and `--stop_at_target`.
"""

import argparse
import json
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


METHOD_ORDER = ("ga", "graddiff", "npo", "simnpo", "gru", "orthograd", "lur")
BASELINES = ("graddiff", "npo")
# Each method's own weight (λ, α or γ); GA has none. Three values around the defaults, spanning "forget first" to
# "retain first": α ∈ (0, 1) weighs retain against forget, λ and γ scale the retain term.
DEFAULT_WEIGHTS: dict[str, tuple[float | None, ...]] = {
    "ga": (None,),
    "graddiff": (1.0, 3.0, 10.0),
    "npo": (1.0, 3.0, 10.0),
    "simnpo": (1.0, 3.0, 10.0),
    "gru": (0.3, 0.5, 0.7),
    "orthograd": (0.3, 0.5, 0.7),
    "lur": (1.0, 3.0, 10.0),
}
DEFAULT_LEARNING_RATES = (5e-4, 1e-3, 2e-3)
VALIDATION_SEED = 1000
BOOTSTRAP_SAMPLES = 10_000
# Avg-Gap differences this small are float noise between identical models, not a win: the sign test counts them as ties.
TIE = 1e-9


@dataclass(frozen=True)
class Benchmark:
    """A benchmark is a recipe (`run(argv) -> metrics.json content`) plus the metrics it is scored on.

    Every recipe writes the same `metrics.json` shape (`{"base"|"retrain"|"unlearned": {split: {metric: value}}}`);
    a column is a `(split, metric)` pair of it.
    """

    recipe: str  # module with `run(argv)`
    metric: str  # the forget metric: stopping target and trade-off plot
    gap_columns: tuple[tuple[str, str], ...]  # (split, metric) pairs averaged in Avg-Gap
    table_columns: tuple[tuple[str, str, str], ...]  # (split, metric, header) of the markdown table
    run_args: tuple[str, ...] = ()  # recipe arguments every run gets
    matched_args: tuple[str, ...] = ("--stop_at_target", "retrain", "--eval_steps", "5")
    max_steps: int = 100  # cap of a matched-forget run
    quick_args: tuple[str, ...] = ()  # --quick: tiny data, few steps
    plot_limit: float | None = None  # trade-off plot axes; runs beyond it are drawn on the edge, values written out


BENCHMARKS = {
    "speech": Benchmark(
        recipe="hf_unlearn.recipes.whisper",
        metric="wer",
        gap_columns=(("forget", "wer"), ("retain", "wer"), ("test", "wer")),
        table_columns=tuple((split, "wer", f"{split} WER") for split in ("forget", "forget_test", "retain", "test")),
        max_steps=120,
        quick_args=("--corpus_preset", "tiny", "--max_steps", "2", "--eval_steps", "1"),
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
        max_steps=100,
        quick_args=("--corpus_preset", "tiny", "--max_steps", "4", "--eval_steps", "2"),
    ),
}


# ---------------------------------------------------------------------------------------------------- statistics


def avg_gap(
    results: Mapping[str, Mapping[str, Mapping[str, float]]], columns: Sequence[tuple[str, str]], model: str
) -> float | None:
    """Mean over `(split, metric)` columns of |`model`'s value − the exact-retrain model's|; `None` without a
    retrain reference."""
    if "retrain" not in results or model not in results:
        return None
    gaps = [abs(results[model][split][metric] - results["retrain"][split][metric]) for split, metric in columns]
    return sum(gaps) / len(gaps)


def mean_sd(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (n − 1; `None` for one value)."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None}


def sign_test(differences: Sequence[float]) -> float:
    """Two-sided exact sign test of "median difference 0": ties (|d| ≤ `TIE`) dropped, p = P(|wins − n/2| at least as
    large)."""
    wins = sum(d > TIE for d in differences)
    losses = sum(d < -TIE for d in differences)
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_ci(differences: Sequence[float], level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences (resampling seeds with replacement)."""
    rng = random.Random(seed)
    n = len(differences)
    means = sorted(statistics.fmean(rng.choices(differences, k=n)) for _ in range(BOOTSTRAP_SAMPLES))
    low = means[int((1 - level) / 2 * (BOOTSTRAP_SAMPLES - 1))]
    high = means[int((1 + level) / 2 * (BOOTSTRAP_SAMPLES - 1))]
    return low, high


def paired_comparison(method_gaps: Sequence[float], baseline_gaps: Sequence[float]) -> dict:
    """Seed-by-seed Avg-Gap differences (method − baseline; negative: the method is closer to retrain)."""
    differences = [a - b for a, b in zip(method_gaps, baseline_gaps, strict=True)]
    low, high = bootstrap_ci(differences)
    return {
        "differences": differences,
        "mean_difference": statistics.fmean(differences),
        "bootstrap_ci95": [low, high],
        "wins": sum(d < -TIE for d in differences),
        "losses": sum(d > TIE for d in differences),
        "sign_test_p": sign_test(differences),
    }


# ---------------------------------------------------------------------------------------------------- runs


def grid(method: str, weights: Mapping[str, Sequence[float | None]], learning_rates: Sequence[float]) -> list[dict]:
    """The method's (weight, learning rate) points, at most 9."""
    points = [{"weight": w, "learning_rate": lr} for w in weights.get(method, (None,)) for lr in learning_rates]
    if len(points) > 9:
        raise ValueError(f"{method}: {len(points)} grid points; the protocol allows at most 9 (weights × rates).")
    return points


def point_args(point: Mapping, method: str = "graddiff") -> list[str]:
    from hf_unlearn.methods import retain_knob

    argv = ["--learning_rate", repr(point["learning_rate"])]
    if point["weight"] is not None:
        argv += [f"--{retain_knob(method)}", repr(point["weight"])]
    return argv


def point_name(point: Mapping) -> str:
    weight = "none" if point["weight"] is None else f"{point['weight']:g}"
    return f"w{weight}-lr{point['learning_rate']:g}"


def run_method(benchmark: Benchmark, method: str, run_dir: Path, seed: int, extra: Sequence[str]) -> dict:
    """One recipe run in this process; returns its metrics, resolved weight, steps, wall time and log history."""
    import importlib

    from hf_unlearn.methods import retain_knob

    recipe = importlib.import_module(benchmark.recipe)
    argv = [*benchmark.run_args, "--method", method, "--seed", str(seed), "--output_dir", str(run_dir)]
    argv += ["--overwrite_output_dir", "true", *extra]
    start = time.perf_counter()
    results = recipe.run(argv)
    wall_s = time.perf_counter() - start
    # What the run resolved and where it stopped, from the files the recipes write (absent: not reported).
    config_file, state_file = run_dir / "unlearn_config.json", run_dir / "trainer_state.json"
    resolved = json.loads(config_file.read_text())["config"] if config_file.is_file() else {}
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    return {
        "metrics": results,
        "retain_weight": resolved.get(retain_knob(method)),  # the method's own weight (λ, α or γ)
        "learning_rate": resolved.get("learning_rate"),
        "max_steps": resolved.get("max_steps"),
        "stopped_step": state.get("global_step"),
        "restored_step": state.get("best_global_step") or state.get("global_step"),
        "wall_s": round(wall_s, 1),
        "log_history": state.get("log_history", []),
    }


def reference_metrics(run: Mapping) -> dict:
    """The base and exact-retrain rows of a run's metrics (the same for every run of a benchmark)."""
    return {name: run["metrics"][name] for name in ("base", "retrain") if run["metrics"].get(name)}


def scored(benchmark: Benchmark, run: Mapping) -> dict:
    """What the JSON keeps of a run: the unlearned model's metrics, Avg-Gap, weight, steps and time."""
    return {
        "unlearned": run["metrics"]["unlearned"],
        "avg_gap": avg_gap(run["metrics"], benchmark.gap_columns, "unlearned"),
        **{key: run.get(key) for key in ("retain_weight", "learning_rate", "stopped_step", "restored_step", "wall_s")},
    }


def evaluate_method(
    benchmark: Benchmark,
    method: str,
    points: Sequence[dict],
    seeds: Sequence[int],
    validation_seed: int,
    runs_dir: Path,
    extra: Sequence[str],
    runner: Callable[..., dict] = run_method,
) -> tuple[dict, dict]:
    """Select the grid point with the smallest validation Avg-Gap, then run it on every reported seed.

    Returns the method's JSON entry and the references (`base`, `retrain` metrics of the first run)."""
    references: dict = {}
    grid_runs = []
    if len(points) > 1:
        for point in points:
            print(f"=== {method}: grid {point_name(point)} (validation seed {validation_seed})", flush=True)
            run = runner(benchmark, method, runs_dir / method / point_name(point), validation_seed,
                         [*point_args(point, method), *extra])  # fmt: skip
            references = references or reference_metrics(run)
            grid_runs.append({**point, **scored(benchmark, run)})
        best = min(grid_runs, key=lambda r: math.inf if r["avg_gap"] is None else r["avg_gap"])
        chosen = {"weight": best["weight"], "learning_rate": best["learning_rate"]}
    else:
        chosen = dict(points[0])
    seed_runs = []
    for seed in seeds:
        print(f"=== {method}: {point_name(chosen)}, seed {seed}", flush=True)
        run = runner(benchmark, method, runs_dir / method / f"seed{seed}", seed, [*point_args(chosen, method), *extra])
        references = references or reference_metrics(run)
        seed_runs.append({"seed": seed, **scored(benchmark, run)})
    return {"chosen": chosen, "grid": grid_runs, "seeds": seed_runs}, references


def aggregate(benchmark: Benchmark, methods: Mapping[str, dict]) -> None:
    """Add mean ± sd of every table column, Avg-Gap and step counts, and the paired comparisons, in place."""
    columns = [(split, metric) for split, metric, _ in benchmark.table_columns]
    for entry in methods.values():
        runs = entry["seeds"]
        stats = {}
        for split, metric in columns:
            values = [run["unlearned"].get(split, {}).get(metric) for run in runs]
            if all(v is not None for v in values):
                stats[f"{split}/{metric}"] = mean_sd(values)
        for key in ("avg_gap", "restored_step", "wall_s"):
            values = [run[key] for run in runs]
            if all(v is not None for v in values):
                stats[key] = mean_sd(values)
        entry["stats"] = stats
    for method, entry in methods.items():
        entry["paired"] = {}
        gaps = [run["avg_gap"] for run in entry["seeds"]]
        for baseline in BASELINES:
            if baseline == method or baseline not in methods:
                continue
            base_gaps = [run["avg_gap"] for run in methods[baseline]["seeds"]]
            if None in gaps or None in base_gaps or len(gaps) != len(base_gaps):
                continue
            entry["paired"][baseline] = paired_comparison(gaps, base_gaps)


# ---------------------------------------------------------------------------------------------------- outputs


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def fmt_stat(stat: Mapping | None, digits: int = 3) -> str:
    if stat is None:
        return "–"
    return fmt(stat["mean"], digits) if stat["sd"] is None else f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def markdown_table(benchmark: Benchmark, summary: Mapping) -> str:
    """Mean ± sd over seeds per method (best mean Avg-Gap first), base and retrain, then the paired comparisons."""
    columns = benchmark.table_columns
    header = "| method | weight | lr | " + " | ".join(c[2] for c in columns) + " | Avg-Gap ↓ | step | time (s) |"
    rule = "|---|---:|---:|" + "---:|" * len(columns) + "---:|---:|---:|"

    def gap_of(item):
        stat = item[1]["stats"].get("avg_gap")
        return math.inf if stat is None else stat["mean"]

    rows = []
    for method, entry in sorted(summary["methods"].items(), key=gap_of):
        stats = entry["stats"]
        cells = " | ".join(fmt_stat(stats.get(f"{split}/{metric}")) for split, metric, _ in columns)
        chosen = entry["chosen"]
        rows.append(
            f"| {method} | {fmt(chosen['weight'], 2)} | {chosen['learning_rate']:g} | {cells} | "
            f"{fmt_stat(stats.get('avg_gap'))} | {fmt_stat(stats.get('restored_step'), 0)} | "
            f"{fmt_stat(stats.get('wall_s'), 0)} |"
        )
    # The embedded recipes train their reference models with the run's seed: each seed has its own base and retrain
    # (every run's Avg-Gap is measured against its own seed's); these rows are the first run's.
    first = f", seed {summary['seeds'][0]}" if summary.get("seeds") else ""
    for name, label in (("base", f"*base (before{first})*"), ("retrain", f"*exact retrain{first}*")):
        if summary.get(name):
            cells = " | ".join(fmt(summary[name].get(split, {}).get(metric)) for split, metric, _ in columns)
            gap = fmt(summary.get("base_avg_gap")) if name == "base" else "0.000"
            rows.append(f"| {label} | – | – | {cells} | {gap} | – | – |")
    lines = [header, rule, *rows]

    paired = [(m, b, p) for m, e in summary["methods"].items() for b, p in e.get("paired", {}).items()]
    if paired:
        lines += [
            "",
            "| method | vs | Avg-Gap difference (mean) | 95 % bootstrap CI | wins / losses | sign test p |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for method, baseline, p in paired:
            low, high = p["bootstrap_ci95"]
            lines.append(
                f"| {method} | {baseline} | {p['mean_difference']:+.3f} | [{low:+.3f}, {high:+.3f}] | "
                f"{p['wins']} / {p['losses']} | {p['sign_test_p']:.3f} |"
            )
    return "\n".join(lines)


def plot_tradeoff_with_errors(benchmark: Benchmark, summary: Mapping, path: Path) -> Path:
    """Forget vs retain metric: each method's grid (validation seed) as a thin curve, its seeds' mean ± sd as a point
    with error bars; base and exact retrain as references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_unlearn.plots import metric_name

    metric = benchmark.metric
    figure, axis = plt.subplots(figsize=(6.5, 5))
    limit = benchmark.plot_limit

    def clip(value: float) -> float:
        return min(value, limit) if limit is not None else value

    for index, (method, entry) in enumerate(summary["methods"].items()):
        color = f"C{index % 10}"
        points = sorted(
            (clip(r["unlearned"]["forget"][metric]), clip(r["unlearned"]["retain"][metric])) for r in entry["grid"]
        )
        if points:
            axis.plot(*zip(*points, strict=True), "o:", color=color, alpha=0.4, markersize=3)
        stats = entry["stats"]
        x, y = stats.get(f"forget/{metric}"), stats.get(f"retain/{metric}")
        if x is None or y is None:
            continue
        axis.errorbar(
            clip(x["mean"]), clip(y["mean"]), xerr=x["sd"] or 0.0, yerr=y["sd"] or 0.0,
            fmt="o", color=color, capsize=3, label=method,
        )  # fmt: skip
    for name, marker in (("base", "s"), ("retrain", "*")):
        if summary.get(name):
            axis.plot(summary[name]["forget"][metric], summary[name]["retain"][metric], marker, color="black",
                      markersize=9, label=name)  # fmt: skip
    axis.set_xlabel(f"forget {metric_name(metric)}")
    axis.set_ylabel(f"retain {metric_name(metric)}")
    seeds = summary.get("seeds", [])
    axis.set_title(f"{summary['benchmark']}: matched forget, mean ± sd over {len(seeds)} seeds (dotted: grid)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_outputs(benchmark: Benchmark, summary: Mapping, output_dir: Path, runs_dir: Path) -> str:
    """Markdown table, trade-off plot and (from the seed-0 runs' `trainer_state.json`) gradient-conflict plot."""
    from hf_unlearn.plots import plot_gradient_conflict

    stem = f"compare_methods_{summary['benchmark']}" + ("_quick" if summary.get("quick") else "")
    table = markdown_table(benchmark, summary)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stem}.md").write_text(table + "\n")
    plot_tradeoff_with_errors(benchmark, summary, output_dir / f"{stem}_tradeoff.png")
    histories = {}
    first_seed = (summary.get("seeds") or [0])[0]
    for method in summary["methods"]:
        state_file = runs_dir / method / f"seed{first_seed}" / "trainer_state.json"
        if state_file.is_file():
            histories[method] = json.loads(state_file.read_text())["log_history"]
    plot_gradient_conflict(histories, output_dir / f"{stem}_conflict.png")
    return table


# ---------------------------------------------------------------------------------------------------- command line


def parse_weights(values: Sequence[str], methods: Sequence[str]) -> dict[str, tuple[float | None, ...]]:
    """`DEFAULT_WEIGHTS`, with `method=w1,w2` overrides."""
    weights = {method: DEFAULT_WEIGHTS.get(method, (None,)) for method in methods}
    for value in values:
        method, _, numbers = value.partition("=")
        if method not in weights or not numbers:
            raise ValueError(f"--weights takes method=w1,w2,... for a compared method, got {value!r}.")
        weights[method] = tuple(float(w) for w in numbers.split(","))
    return weights


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage="%(prog)s [options] [-- recipe args]")
    parser.add_argument(
        "--benchmark", default="speech", help=f"Benchmark to run: {', '.join(BENCHMARKS)}, classifier."
    )
    parser.add_argument("--methods", nargs="+", default=list(METHOD_ORDER), help="Methods to compare.")
    parser.add_argument("--seeds", type=int, default=3, help="Reported seeds 0..N-1 (init, order, references).")
    parser.add_argument(
        "--validation_seed", type=int, default=VALIDATION_SEED, help="Seed of the grid-selection runs."
    )
    parser.add_argument("--weights", nargs="*", default=[], help="Grid weights per method, e.g. graddiff=1,3.")
    parser.add_argument(
        "--learning_rates", nargs="+", type=float, default=list(DEFAULT_LEARNING_RATES), help="Grid learning rates."
    )
    parser.add_argument("--quick", action="store_true", help="CI: tiny data, 2 seeds, 2 grid points, few steps.")
    parser.add_argument("--runs_dir", type=Path, default=Path("outputs/compare_methods"), help="Per-run folders.")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"), help="Table, JSON, plots.")
    parser.add_argument(
        "--plot_only",
        action="store_true",
        help="Recompute statistics, redraw table and plots from an earlier run's JSON; train nothing.",
    )
    return parser


def main(argv: list[str] | None = None, runner: Callable[..., dict] = run_method) -> dict:
    """Select, run and compare every method; write the markdown table, JSON and plots; returns the JSON summary."""
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
            methods, seed=0, runs_dir=args.runs_dir / "classifier", output_dir=args.output_dir, extra=extra
        )
        print(write_classifier_outputs(summary, args.output_dir))
        return summary
    if args.benchmark not in BENCHMARKS:
        parser.error(f"--benchmark {args.benchmark!r} does not exist; available: {', '.join(BENCHMARKS)}.")
    benchmark = BENCHMARKS[args.benchmark]
    # --quick results never overwrite a real run's.
    stem = f"compare_methods_{args.benchmark}" + ("_quick" if args.quick else "")
    runs_dir = args.runs_dir / args.benchmark
    if args.plot_only:
        summary = json.loads((args.output_dir / f"{stem}.json").read_text())
        if any("seeds" not in entry for entry in summary["methods"].values()):
            parser.error(f"{args.output_dir / stem}.json is a one-seed comparison of an earlier version: re-run it.")
        aggregate(benchmark, summary["methods"])  # statistics recomputed from the per-seed runs the JSON keeps
        print(write_outputs(benchmark, summary, args.output_dir, runs_dir))
        return summary

    from hf_unlearn import METHODS

    unknown = [method for method in args.methods if method not in METHODS]
    if unknown:
        parser.error(f"unknown --methods {unknown}; choose from {sorted(METHODS)}.")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}.")
    seeds = list(range(2 if args.quick else args.seeds))
    if args.validation_seed in seeds:
        parser.error(f"--validation_seed {args.validation_seed} is a reported seed: choose one outside {seeds}.")
    try:
        weights = parse_weights(args.weights, args.methods)
    except ValueError as err:
        parser.error(str(err))
    learning_rates = args.learning_rates
    if args.quick:  # two weights, one rate: the selection path runs, in seconds
        weights = {method: values[:2] for method, values in weights.items()}
        learning_rates = learning_rates[:1]
    try:
        points = {method: grid(method, weights, learning_rates) for method in args.methods}
    except ValueError as err:
        parser.error(str(err))
    recipe_args = [*benchmark.matched_args, "--max_steps", str(benchmark.max_steps)]
    recipe_args += [*(benchmark.quick_args if args.quick else ()), *extra]

    start = time.perf_counter()
    methods, references = {}, {}
    for method in args.methods:
        methods[method], found = evaluate_method(
            benchmark, method, points[method], seeds, args.validation_seed, runs_dir, recipe_args, runner
        )
        references = references or found
    aggregate(benchmark, methods)
    summary = {
        "benchmark": args.benchmark,
        "seeds": seeds,
        "validation_seed": args.validation_seed,
        "selection_rule": "min Avg-Gap on the validation seed",
        "recipe_args": recipe_args,
        "quick": args.quick,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "total_wall_s": round(time.perf_counter() - start, 1),
        "metric": benchmark.metric,
        "gap_columns": [f"{split}/{metric}" for split, metric in benchmark.gap_columns],
        "base": references.get("base"),
        "retrain": references.get("retrain"),
        "base_avg_gap": avg_gap(references, benchmark.gap_columns, "base") if references.get("base") else None,
        "methods": methods,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = write_outputs(benchmark, summary, args.output_dir, runs_dir)
    print(table)
    return summary


if __name__ == "__main__":
    main()
