"""Every unlearning method on an embedded benchmark, tuned alike, stopped at the same forget level, over several seeds.

    # The evidence run: per method a weight × learning-rate grid chosen on a validation seed, then 3 seeds at the
    # chosen point, every run stopped at the exact-retrain model's forget level:
    python benchmarks/compare_methods.py --benchmark text --seeds 3

    # A smaller grid (here 2 weights per method, one learning rate) and a subset of methods:
    python benchmarks/compare_methods.py --benchmark text --methods graddiff npo lur --weights graddiff=1,3 \
        --learning_rates 1e-3

    # CI: the tiny corpus, 2 seeds, a 2-point grid for each method, a few steps:
    python benchmarks/compare_methods.py --benchmark text --quick

    # The digits classifier: the same protocol for all 9 methods (the 7 + SalUn + SCRUB), class-wise and random
    # forgetting, the grid scored on the digits' validation split:
    python benchmarks/compare_methods.py --benchmark classifier --seeds 3

    # Parts in parallel processes (disjoint --methods or --tasks, the same settings), then one comparison of them all:
    python benchmarks/compare_methods.py --benchmark classifier --tasks class --methods lur --output_dir out/lur
    python benchmarks/compare_methods.py --benchmark classifier --merge out/*/compare_methods_classifier.json

    # Any recipe field after `--` (applied to every run), and redrawing the outputs from the JSON:
    python benchmarks/compare_methods.py --benchmark speech -- --max_steps 80
    python benchmarks/compare_methods.py --benchmark text --plot_only

**Protocol.** Each run is one call of the benchmark's recipe (`hf_unlearn.recipes.{whisper,llm,classifier}.run`:
the code path of `recipes/unlearn_{whisper,llm,classifier}.py` and `hf-unlearn unlearn`), in its own folder under
`--runs_dir/<benchmark>/[<task>/]<method>/`. A benchmark with tasks (the classifier: `class`, `random`) repeats the
whole protocol per task.

- *Matched forget*: every run gets `--stop_at_target retrain` (`hf_unlearn.StopAtForgetTarget`): it evaluates every
  `eval_steps`, stops once the forget metric (speech WER, text ROUGE-L recall, classifier accuracy) reaches the
  exact-retrain model's value
  and restores the evaluated checkpoint closest to it, so retain damage is compared at equal forgetting. A run that
  never reaches it within `max_steps` keeps its closest checkpoint; the table reports the restored step.
- *Equal tuning*: each method gets the same kind of grid, its own weight (λ for GradDiff/NPO/SimNPO/SalUn, α for
  OrthoGrad/GRU, γ for LUR and SCRUB; `DEFAULT_WEIGHTS`, passed as the config field `hf_unlearn.methods.retain_knob` names) ×
  learning rate, at most 9 points. Every point runs once on the **validation seed** (`--validation_seed`, never one
  of the reported seeds) and the point with the smallest Avg-Gap is kept — one rule for every method. A plain grid
  rather than `Trainer.hyperparameter_search`: the grid is ≤ 9 points, so a sampler has nothing to save; every point
  must run through the recipe (reference models, stopping at the target, evaluation) exactly as the reported runs
  do, which `hyperparameter_search` (one `Trainer`, one `model_init`) cannot wrap; and the full grid doubles as each
  method's forget–retain trade-off curve. On the speech and text benchmarks the forget set is the unlearning target
  itself, so "validation" means an independent seed (see below). The classifier has a held-out validation split
  too: its grid runs also score TA and the MIA's non-members on it (`--test_split validation`), never on the test
  split the table reports.
- *Seeds*: the chosen point runs with seeds `0 … N−1` (`--seeds N`); a seed sets the adapter init, the data order,
  the classifier's random forget set (`--task random`) and, in the embedded recipes, the training of the base and
  exact-retrain models (each seed trains and caches its own; a run's Avg-Gap is against its own seed's retrain model;
  the speech and text forget sets and the forgotten digit are fixed). Every metric is reported as mean ± sd over
  seeds (the base and retrain rows too), and each method is
  compared with GradDiff and NPO seed by seed (paired): the mean Avg-Gap difference, a 95 % bootstrap CI of it and
  the two-sided sign-test p-value. With 3 seeds the sign test cannot go below p = 0.25: read it as a count of wins.

**Score**: Avg-Gap, the mean absolute difference to the exact-retrain model over a fixed set of metrics (lower is
closer to a model that never saw the forget set):

- speech: WER on forget, retain and test;
- text: forget ROUGE-L recall, retain ROUGE-L recall, model utility and the forget-vs-holdout MIA LOSS AUC (all in
  [0, 1]). Forget quality (a KS p-value) is in the table but not in the gap;
- classifier: UA, RA, TA and MIA-efficacy (the recipe's own Avg-Gap; UIS is in the table but not in the gap).

*Threads*: results depend on torch's intra-op thread count (float summation order changes the trained references and
every step), so the harness fixes it (`--torch_threads`, default 1) and records it in the JSON.

Writes `compare_methods_<benchmark>.{md,json}`, the trade-off plot (`_tradeoff.png`, one panel per task: each
method's grid as a curve, its seeds' mean ± sd as a point with error bars) and the gradient-conflict plot of the
seed-0 runs (`[_<task>]_conflict.png`) into `--output_dir`. Another benchmark plugs in as one `Benchmark` entry: a
module with `run(argv) -> metrics.json content` that accepts `--method --seed --output_dir --learning_rate`, the
weight fields of `retain_knob` and `--stop_at_target`.
"""

import argparse
import functools
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
CLASSIFIER_METHODS = (*METHOD_ORDER, "salun", "scrub")
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
    "salun": (1.0, 3.0, 10.0),
    "scrub": (1.0, 3.0, 10.0),
}
DEFAULT_LEARNING_RATES = (5e-4, 1e-3, 2e-3)
DEFAULT_TORCH_THREADS = 1
VALIDATION_SEED = 1000
BOOTSTRAP_SAMPLES = 10_000
# Avg-Gap differences this small are float noise between identical models, not a win: the sign test counts them as ties.
TIE = 1e-9


@dataclass(frozen=True)
class Benchmark:
    """A benchmark is a recipe (`run(argv) -> metrics.json content`) plus the metrics it is scored on.

    A column is a `(split, metric)` pair of the `{"base"|"retrain"|"unlearned": {split: {metric: value}}}` shape the
    speech and text recipes write; `metrics_view` maps another recipe's `metrics.json` onto it.
    """

    recipe: str  # module with `run(argv)`
    metric: str  # the forget metric: stopping target and trade-off plot
    gap_columns: tuple[tuple[str, str], ...]  # (split, metric) pairs averaged in Avg-Gap
    table_columns: tuple[tuple[str, str, str], ...]  # (split, metric, header) of the markdown table
    methods: tuple[str, ...] = METHOD_ORDER  # compared by default
    tasks: tuple[str, ...] = ()  # the recipe's --task values, each compared on its own; () = the recipe has none
    learning_rates: tuple[float, ...] = DEFAULT_LEARNING_RATES  # grid rates unless --learning_rates
    selection_args: tuple[str, ...] = ()  # what the grid (selection) runs add, e.g. score on a validation split
    run_args: tuple[str, ...] = ()  # recipe arguments every run gets
    matched_args: tuple[str, ...] = ("--stop_at_target", "retrain", "--eval_steps", "5")
    max_steps: int = 100  # cap of a matched-forget run
    quick_args: tuple[str, ...] = ()  # --quick: tiny data, few steps
    plot_limit: float | None = None  # trade-off plot axes; runs beyond it are drawn on the edge, values written out
    metrics_view: Callable[[dict], dict] | None = None  # the recipe's metrics.json → the shape above


def classifier_view(results: Mapping) -> dict:
    """The classifier recipe's `metrics.json` in the harness's `{model: {split: {metric}}}` shape: UA as `forget/ua`
    (1 − forget accuracy), MIA-efficacy as `mia/efficacy`, the unlearned model's UIS as `scores/uis`."""
    view = {}
    for name in ("base", "retrain", "unlearned"):
        if not results.get(name):
            continue
        model = {split: dict(values) for split, values in results[name].items() if isinstance(values, Mapping)}
        model["forget"]["ua"] = 1.0 - model["forget"]["accuracy"]
        model["mia"] = {"efficacy": results[name]["mia_efficacy"]}
        view[name] = model
    if "unlearned" in view and results.get("uis") is not None:
        view["unlearned"]["scores"] = {"uis": results["uis"]}
    return view


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
    "classifier": Benchmark(
        recipe="hf_unlearn.recipes.classifier",
        metric="accuracy",
        gap_columns=(("forget", "accuracy"), ("retain", "accuracy"), ("test", "accuracy"), ("mia", "efficacy")),
        table_columns=(
            ("forget", "ua", "UA"),
            ("retain", "accuracy", "RA"),
            ("test", "accuracy", "TA"),
            ("forget_test", "accuracy", "forget-class TA"),
            ("mia", "efficacy", "MIA-efficacy"),
            ("scores", "uis", "UIS"),
        ),
        methods=CLASSIFIER_METHODS,
        tasks=("class", "random"),
        # Full fine-tuning of a from-scratch ResNet (the preset runs 1e-3): a decade around it.
        learning_rates=(1e-4, 3e-4, 1e-3),
        selection_args=("--test_split", "validation"),
        # GradDiff at 1e-3 reaches the retrain's forget accuracy within 5 steps: evaluate every 2.
        matched_args=("--stop_at_target", "retrain", "--eval_steps", "2"),
        max_steps=80,
        quick_args=("--reference_epochs", "2", "--max_steps", "4", "--eval_steps", "2"),
        metrics_view=classifier_view,
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
    """The recipe flags of a grid point: the learning rate and the method's weight field (`retain_knob`)."""
    from hf_unlearn.methods import retain_knob

    argv = ["--learning_rate", repr(point["learning_rate"])]
    if point["weight"] is not None:
        argv += [f"--{retain_knob(method)}", repr(point["weight"])]
    return argv


def point_name(point: Mapping) -> str:
    weight = "none" if point["weight"] is None else f"{point['weight']:g}"
    return f"w{weight}-lr{point['learning_rate']:g}"


RUN_RECORD = "compare_methods_run.json"  # the harness's note in a run folder: the exact arguments and wall time


def run_method(
    benchmark: Benchmark, method: str, run_dir: Path, seed: int, extra: Sequence[str], reuse: bool = False
) -> dict:
    """One recipe run in this process; returns its metrics, resolved weight, steps, wall time and log history.

    With `reuse`, a folder that already holds a finished run of exactly these arguments (`finished_run`) is read back
    instead of trained again: an interrupted comparison continues where it stopped."""
    import importlib

    from hf_unlearn.methods import retain_knob

    argv = [*benchmark.run_args, "--method", method, "--seed", str(seed), "--output_dir", str(run_dir)]
    argv += ["--overwrite_output_dir", "true", *extra]
    record = finished_run(run_dir, argv) if reuse else None
    if record is not None:
        results, wall_s = json.loads((run_dir / "metrics.json").read_text()), record.get("wall_s")
    else:
        recipe = importlib.import_module(benchmark.recipe)
        start = time.perf_counter()
        results = recipe.run(argv)
        wall_s = round(time.perf_counter() - start, 1)
        (run_dir / RUN_RECORD).write_text(json.dumps({"argv": argv, "wall_s": wall_s}, indent=2) + "\n")
    # What the run resolved and where it stopped, from the files the recipes write (absent: not reported).
    config_file, state_file = run_dir / "unlearn_config.json", run_dir / "trainer_state.json"
    resolved = json.loads(config_file.read_text())["config"] if config_file.is_file() else {}
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    return {
        "metrics": benchmark.metrics_view(results) if benchmark.metrics_view else results,
        "retain_weight": resolved.get(retain_knob(method)),  # the method's own weight (λ, α or γ)
        "learning_rate": resolved.get("learning_rate"),
        "max_steps": resolved.get("max_steps"),
        "stopped_step": state.get("global_step"),
        "restored_step": state.get("best_global_step") or state.get("global_step"),
        "wall_s": wall_s,
        "log_history": state.get("log_history", []),
    }


def finished_run(run_dir: Path, argv: Sequence[str]) -> dict | None:
    """The harness's record (`{"argv", "wall_s"}`) of a finished run of exactly `argv` in `run_dir`, else `None`.

    A folder without a record (written by an earlier version) counts when every `--flag value` of `argv` equals what
    the run resolved (its `unlearn_config.json`); its wall time is then unknown (`None`)."""
    needed = [run_dir / name for name in ("metrics.json", "unlearn_config.json", "trainer_state.json")]
    if not all(path.is_file() for path in needed):
        return None
    if (run_dir / RUN_RECORD).is_file():
        record = json.loads((run_dir / RUN_RECORD).read_text())
        return record if record.get("argv") == list(argv) else None
    resolved = json.loads(needed[1].read_text())
    values = {**resolved["script"], **resolved["config"]}
    pairs = [(argv[i][2:], argv[i + 1]) for i in range(len(argv) - 1) if argv[i].startswith("--")]
    for name, given in pairs:
        if name in ("output_dir", "overwrite_output_dir"):
            continue
        if name not in values or not same_value(values[name], given):
            return None
    return {"argv": list(argv), "wall_s": None}


def same_value(resolved: object, given: str) -> bool:
    """Whether a resolved config value is the command-line string `given` (booleans and numbers by value)."""
    if isinstance(resolved, bool):
        return str(resolved).lower() == given.lower()
    if isinstance(resolved, (int, float)):
        try:
            return float(resolved) == float(given)
        except ValueError:
            return False
    return str(resolved) == given


def scored(benchmark: Benchmark, run: Mapping) -> dict:
    """What the JSON keeps of a run: the unlearned model's metrics, Avg-Gap, weight, steps, time, and the run's own
    base and exact-retrain references (each seed trains its own)."""
    metrics = run["metrics"]
    return {
        "unlearned": metrics["unlearned"],
        "avg_gap": avg_gap(metrics, benchmark.gap_columns, "unlearned"),
        **{key: run.get(key) for key in ("retain_weight", "learning_rate", "stopped_step", "restored_step", "wall_s")},
        "base": metrics.get("base"),
        "retrain": metrics.get("retrain"),
        "base_avg_gap": avg_gap(metrics, benchmark.gap_columns, "base") if metrics.get("base") else None,
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
) -> dict:
    """Select the grid point with the smallest validation Avg-Gap, then run it on every reported seed.

    Grid runs get `benchmark.selection_args` (e.g. the validation split); `extra` comes last so that it wins."""
    grid_runs = []
    if len(points) > 1:
        for point in points:
            print(f"=== {method}: grid {point_name(point)} (validation seed {validation_seed})", flush=True)
            argv = [*point_args(point, method), *benchmark.selection_args, *extra]
            run = runner(benchmark, method, runs_dir / method / point_name(point), validation_seed, argv)
            entry = {**scored(benchmark, run), **point}  # the point as asked (the recipe resolves the same)
            grid_runs.append({k: v for k, v in entry.items() if k not in ("base", "retrain")})
        best = min(grid_runs, key=lambda r: math.inf if r["avg_gap"] is None else r["avg_gap"])
        chosen = {"weight": best["weight"], "learning_rate": best["learning_rate"]}
    else:
        chosen = dict(points[0])
    seed_runs = []
    for seed in seeds:
        print(f"=== {method}: {point_name(chosen)}, seed {seed}", flush=True)
        run = runner(benchmark, method, runs_dir / method / f"seed{seed}", seed, [*point_args(chosen, method), *extra])
        seed_runs.append({"seed": seed, **scored(benchmark, run)})
    return {"chosen": chosen, "grid": grid_runs, "seeds": seed_runs}


def model_columns(benchmark: Benchmark) -> list[tuple[str, str]]:
    """Every (split, metric) the table and Avg-Gap read, in table order."""
    columns = [(split, metric) for split, metric, _ in benchmark.table_columns]
    return columns + [column for column in benchmark.gap_columns if column not in columns]


def column_stats(benchmark: Benchmark, models: Sequence[Mapping]) -> dict[str, dict]:
    """Mean ± sd over `models` (one `{split: {metric}}` per seed) of every column all of them have."""
    stats = {}
    for split, metric in model_columns(benchmark):
        values = [model.get(split, {}).get(metric) for model in models]
        if values and all(v is not None for v in values):
            stats[f"{split}/{metric}"] = mean_sd(values)
    return stats


def aggregate(benchmark: Benchmark, task: dict) -> None:
    """Add, in place, to one task's entry (`{"methods": ...}`): mean ± sd of every column, Avg-Gap and step counts per
    method, the base and retrain references' mean ± sd over seeds, and the paired comparisons."""
    methods = task["methods"]
    for entry in methods.values():
        runs = entry["seeds"]
        stats = column_stats(benchmark, [run["unlearned"] for run in runs])
        for key in ("avg_gap", "restored_step", "wall_s"):
            values = [run.get(key) for run in runs]
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
    # The references of every seed (the first method's runs: every method of a seed shares them).
    first = next(iter(methods.values()), {"seeds": []})["seeds"]
    references = {}
    for name in ("base", "retrain"):
        models = [run[name] for run in first if run.get(name)]
        if models and len(models) == len(first):
            references[name] = column_stats(benchmark, models)
            references["seeds"] = len(models)
        elif task.get(name):  # a JSON of an earlier version kept one seed's references only
            references[name] = column_stats(benchmark, [task[name]])
            references["seeds"] = 1
    base_gaps = [run.get("base_avg_gap") for run in first]
    if first and all(v is not None for v in base_gaps):
        references["base_avg_gap"] = mean_sd(base_gaps)
    elif task.get("base_avg_gap") is not None:
        references["base_avg_gap"] = mean_sd([task["base_avg_gap"]])
    task["reference_stats"] = references


def task_entries(summary: Mapping) -> list[tuple[str | None, dict]]:
    """`(task, entry)` per task of a summary; `(None, summary)` for a benchmark without tasks."""
    if "tasks" in summary:
        return list(summary["tasks"].items())
    return [(None, summary)]


# ---------------------------------------------------------------------------------------------------- outputs


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def fmt_stat(stat: Mapping | None, digits: int = 3) -> str:
    if stat is None:
        return "–"
    return fmt(stat["mean"], digits) if stat["sd"] is None else f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def markdown_table(benchmark: Benchmark, task: Mapping, seeds: Sequence[int] = ()) -> str:
    """One task's table: mean ± sd over seeds per method (best mean Avg-Gap first), base and retrain (mean ± sd over
    the seeds' own references), then the paired comparisons. Columns no row has (e.g. the forgotten class's test
    accuracy in random forgetting) are left out."""
    reference_stats = task.get("reference_stats", {})
    rows_stats = [entry["stats"] for entry in task["methods"].values()]
    rows_stats += [reference_stats[name] for name in ("base", "retrain") if name in reference_stats]
    columns = [
        column
        for column in benchmark.table_columns
        if any(isinstance(stats, Mapping) and f"{column[0]}/{column[1]}" in stats for stats in rows_stats)
    ]
    header = "| method | weight | lr | " + " | ".join(c[2] for c in columns) + " | Avg-Gap ↓ | step | time (s) |"
    rule = "|---|---:|---:|" + "---:|" * len(columns) + "---:|---:|---:|"

    def gap_of(item):
        stat = item[1]["stats"].get("avg_gap")
        return math.inf if stat is None else stat["mean"]

    rows = []
    for method, entry in sorted(task["methods"].items(), key=gap_of):
        stats = entry["stats"]
        cells = " | ".join(fmt_stat(stats.get(f"{split}/{metric}")) for split, metric, _ in columns)
        chosen = entry["chosen"]
        rows.append(
            f"| {method} | {fmt(chosen['weight'], 2)} | {chosen['learning_rate']:g} | {cells} | "
            f"{fmt_stat(stats.get('avg_gap'))} | {fmt_stat(stats.get('restored_step'), 0)} | "
            f"{fmt_stat(stats.get('wall_s'), 0)} |"
        )
    # Each seed trains its own base and exact-retrain models; every run's Avg-Gap is against its own seed's.
    count = reference_stats.get("seeds", len(seeds))
    over = f", {count} seeds" if count > 1 else (f", seed {seeds[0]}" if seeds else "")
    for name, label in (("base", f"*base (before{over})*"), ("retrain", f"*exact retrain{over}*")):
        if reference_stats.get(name):
            cells = " | ".join(
                fmt_stat(reference_stats[name].get(f"{split}/{metric}")) for split, metric, _ in columns
            )
            gap = fmt_stat(reference_stats.get("base_avg_gap")) if name == "base" else "0.000"
            rows.append(f"| {label} | – | – | {cells} | {gap} | – | – |")
    lines = [header, rule, *rows]

    paired = [(m, b, p) for m, e in task["methods"].items() for b, p in e.get("paired", {}).items()]
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


TASK_TITLES = {"class": "class-wise forgetting (`--task class`)", "random": "random forgetting (`--task random`)"}


def markdown_tables(benchmark: Benchmark, summary: Mapping) -> str:
    """Every task's table, each under its title (a benchmark without tasks: the one table)."""
    blocks = []
    for task, entry in task_entries(summary):
        table = markdown_table(benchmark, entry, summary.get("seeds", []))
        blocks.append(table if task is None else f"**{TASK_TITLES.get(task, task)}**\n\n{table}")
    return "\n\n".join(blocks)


def plot_tradeoff_with_errors(benchmark: Benchmark, summary: Mapping, path: Path) -> Path:
    """Forget vs retain metric, one panel per task: each method's grid (validation seed) as a thin curve, its seeds'
    mean ± sd as a point with error bars; base and exact retrain (mean over seeds) as references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_unlearn.plots import metric_name

    metric = benchmark.metric
    tasks = task_entries(summary)
    figure, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 5), squeeze=False)
    limit = benchmark.plot_limit

    def clip(value: float) -> float:
        return min(value, limit) if limit is not None else value

    seeds = summary.get("seeds", [])
    for axis, (task, entry) in zip(axes[0], tasks, strict=True):
        for index, (method, method_entry) in enumerate(entry["methods"].items()):
            color = f"C{index % 10}"
            points = sorted(
                (clip(r["unlearned"]["forget"][metric]), clip(r["unlearned"]["retain"][metric]))
                for r in method_entry["grid"]
            )
            if points:
                axis.plot(*zip(*points, strict=True), "o:", color=color, alpha=0.4, markersize=3)
            stats = method_entry["stats"]
            x, y = stats.get(f"forget/{metric}"), stats.get(f"retain/{metric}")
            if x is None or y is None:
                continue
            axis.errorbar(
                clip(x["mean"]), clip(y["mean"]), xerr=x["sd"] or 0.0, yerr=y["sd"] or 0.0,
                fmt="o", color=color, capsize=3, label=method,
            )  # fmt: skip
        for name, marker in (("base", "s"), ("retrain", "*")):
            reference = entry.get("reference_stats", {}).get(name) or {}
            x, y = reference.get(f"forget/{metric}"), reference.get(f"retain/{metric}")
            if x is not None and y is not None:
                axis.plot(x["mean"], y["mean"], marker, color="black", markersize=9, label=name)
        axis.set_xlabel(f"forget {metric_name(metric)}")
        axis.set_ylabel(f"retain {metric_name(metric)}")
        name = summary["benchmark"] + ("" if task is None else f" ({task})")
        axis.set_title(f"{name}: matched forget, mean ± sd over {len(seeds)} seeds (dotted: grid)", fontsize=9)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def output_stem(benchmark_name: str, quick: bool) -> str:
    """File stem of a comparison's outputs; `--quick` results never overwrite a real run's."""
    return f"compare_methods_{benchmark_name}" + ("_quick" if quick else "")


def write_outputs(benchmark: Benchmark, summary: Mapping, output_dir: Path, runs_dir: Path) -> str:
    """Markdown tables, trade-off plot and (from the seed-0 runs' `trainer_state.json`) gradient-conflict plots."""
    from hf_unlearn.plots import plot_gradient_conflict

    stem = output_stem(summary["benchmark"], summary.get("quick", False))
    table = markdown_tables(benchmark, summary)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stem}.md").write_text(table + "\n")
    plot_tradeoff_with_errors(benchmark, summary, output_dir / f"{stem}_tradeoff.png")
    first_seed = (summary.get("seeds") or [0])[0]
    for task, entry in task_entries(summary):
        task_dir = runs_dir if task is None else runs_dir / task
        histories = {}
        for method in entry["methods"]:
            state_file = task_dir / method / f"seed{first_seed}" / "trainer_state.json"
            if state_file.is_file():
                histories[method] = json.loads(state_file.read_text())["log_history"]
        plot_gradient_conflict(
            histories, output_dir / (f"{stem}_conflict.png" if task is None else f"{stem}_{task}_conflict.png")
        )
    return table


# ---------------------------------------------------------------------------------------------------- command line


def parse_weights(values: Sequence[str], methods: Sequence[str]) -> dict[str, tuple[float | None, ...]]:
    """`DEFAULT_WEIGHTS`, with `method=w1,w2` overrides (one for a method not compared here is ignored, so that parts
    of one comparison run apart can share a command line)."""
    weights = {method: DEFAULT_WEIGHTS.get(method, (None,)) for method in methods}
    for value in values:
        method, _, numbers = value.partition("=")
        if (method not in weights and method not in DEFAULT_WEIGHTS) or not numbers:
            raise ValueError(f"--weights takes method=w1,w2,... for a known method, got {value!r}.")
        if method in weights:
            weights[method] = tuple(float(w) for w in numbers.split(","))
    return weights


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage="%(prog)s [options] [-- recipe args]")
    parser.add_argument("--benchmark", default="speech", help=f"Benchmark to run: {', '.join(BENCHMARKS)}.")
    parser.add_argument("--methods", nargs="+", help="Methods to compare (default: every method of the benchmark).")
    parser.add_argument("--tasks", nargs="+", help="Tasks of a benchmark that has them (default: all).")
    parser.add_argument("--seeds", type=int, default=3, help="Reported seeds 0..N-1 (init, order, references).")
    parser.add_argument(
        "--validation_seed", type=int, default=VALIDATION_SEED, help="Seed of the grid-selection runs."
    )
    parser.add_argument("--weights", nargs="*", default=[], help="Grid weights per method, e.g. graddiff=1,3.")
    parser.add_argument(
        "--learning_rates", nargs="+", type=float, help="Grid learning rates (default: the benchmark's)."
    )
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=DEFAULT_TORCH_THREADS,
        help="torch intra-op threads for every run (results depend on it; recorded in the JSON).",
    )
    parser.add_argument("--quick", action="store_true", help="CI: tiny data, 2 seeds, 2 grid points, few steps.")
    parser.add_argument("--runs_dir", type=Path, default=Path("outputs/compare_methods"), help="Per-run folders.")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"), help="Table, JSON, plots.")
    parser.add_argument(
        "--plot_only",
        action="store_true",
        help="Recompute statistics, redraw table and plots from an earlier run's JSON; train nothing.",
    )
    parser.add_argument(
        "--reuse_runs",
        action="store_true",
        help="Read back a run folder that already holds a finished run of exactly the same arguments instead of "
        "training it again (continue an interrupted comparison).",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        help="Train nothing: combine the JSONs of parts run apart (disjoint --methods/--tasks, same settings) into "
        "one comparison in --output_dir.",
    )
    return parser


def plot_only(parser: argparse.ArgumentParser, benchmark: Benchmark, path: Path, runs_dir: Path) -> dict:
    """Statistics, table and plots again from the per-seed runs an earlier run's JSON keeps."""
    summary = json.loads(path.read_text())
    if any("seeds" not in entry for _, task in task_entries(summary) for entry in task.get("methods", {}).values()):
        parser.error(f"{path} is a one-seed comparison of an earlier version: re-run it.")
    for _, task in task_entries(summary):
        aggregate(benchmark, task)
    print(write_outputs(benchmark, summary, path.parent, runs_dir))
    return summary


def main(argv: list[str] | None = None, runner: Callable[..., dict] = run_method) -> dict:
    """Select, run and compare every method (per task); write the markdown table, JSON and plots; returns the JSON."""
    argv = sys.argv[1:] if argv is None else list(argv)
    split_at = argv.index("--") if "--" in argv else len(argv)
    parser = make_parser()
    args = parser.parse_args(argv[:split_at])
    extra = argv[split_at + 1 :]
    if args.benchmark not in BENCHMARKS:
        parser.error(f"--benchmark {args.benchmark!r} does not exist; available: {', '.join(BENCHMARKS)}.")
    benchmark = BENCHMARKS[args.benchmark]
    stem = output_stem(args.benchmark, args.quick)
    runs_dir = args.runs_dir / args.benchmark
    if args.plot_only:
        return plot_only(parser, benchmark, args.output_dir / f"{stem}.json", runs_dir)
    if args.merge:
        return merge(parser, args.benchmark, args.merge, args.output_dir / f"{stem}.json", runs_dir)

    from hf_unlearn import METHODS

    methods = args.methods or list(benchmark.methods)
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        parser.error(f"unknown --methods {unknown}; choose from {sorted(METHODS)}.")
    tasks = args.tasks or list(benchmark.tasks)
    if args.tasks and not set(args.tasks) <= set(benchmark.tasks):
        parser.error(f"--tasks {args.tasks}: {args.benchmark} has the tasks {list(benchmark.tasks) or 'none'}.")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}.")
    if args.torch_threads < 1:
        parser.error(f"--torch_threads must be >= 1, got {args.torch_threads}.")
    seeds = list(range(2 if args.quick else args.seeds))
    if args.validation_seed in seeds:
        parser.error(f"--validation_seed {args.validation_seed} is a reported seed: choose one outside {seeds}.")
    try:
        weights = parse_weights(args.weights, methods)
    except ValueError as err:
        parser.error(str(err))
    learning_rates = args.learning_rates or list(benchmark.learning_rates)
    if args.quick:  # two weights, one rate: the selection path runs, in seconds
        weights = {method: values[:2] for method, values in weights.items()}
        learning_rates = learning_rates[:1]
    try:
        points = {method: grid(method, weights, learning_rates) for method in methods}
    except ValueError as err:
        parser.error(str(err))
    recipe_args = [*benchmark.matched_args, "--max_steps", str(benchmark.max_steps)]
    recipe_args += [*(benchmark.quick_args if args.quick else ()), *extra]

    if args.reuse_runs and runner is run_method:
        runner = functools.partial(run_method, reuse=True)
    import torch

    torch.set_num_threads(args.torch_threads)
    start = time.perf_counter()
    results = {}
    for task in tasks or [None]:
        task_args = [] if task is None else ["--task", task]
        task_dir = runs_dir if task is None else runs_dir / task
        entry: dict = {"methods": {}}
        for method in methods:
            if task is not None:
                print(f"=== {args.benchmark}/{task}", flush=True)
            entry["methods"][method] = evaluate_method(
                benchmark, method, points[method], seeds, args.validation_seed, task_dir,
                [*task_args, *recipe_args], runner,
            )  # fmt: skip
        aggregate(benchmark, entry)
        results[task] = entry
    summary = {
        "benchmark": args.benchmark,
        "seeds": seeds,
        "validation_seed": args.validation_seed,
        "selection_rule": "min Avg-Gap on the validation seed"
        + (f" ({' '.join(benchmark.selection_args)})" if benchmark.selection_args else ""),
        "grid": {method: [[p["weight"], p["learning_rate"]] for p in points[method]] for method in methods},
        "recipe_args": recipe_args,
        "quick": args.quick,
        "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}",
        "torch_threads": torch.get_num_threads(),
        "total_wall_s": round(time.perf_counter() - start, 1),
        "metric": benchmark.metric,
        "gap_columns": [f"{split}/{metric}" for split, metric in benchmark.gap_columns],
    }
    set_results(summary, results)
    return write_summary(benchmark, summary, args.output_dir / f"{stem}.json", runs_dir)


def set_results(summary: dict, results: Mapping[str | None, dict]) -> None:
    """Put the per-task entries into `summary`: under `tasks`, or at the top for a benchmark without tasks."""
    if None not in results:
        summary["tasks"] = dict(results)
        return
    summary.update(results[None])
    # The first seed's references, as the earlier one-task JSON had them (the table uses every seed's).
    first = next(iter(results[None]["methods"].values()))["seeds"][0]
    summary.update({name: first.get(name) for name in ("base", "retrain", "base_avg_gap")})


def write_summary(benchmark: Benchmark, summary: dict, path: Path, runs_dir: Path) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(write_outputs(benchmark, summary, path.parent, runs_dir))
    return summary


# Settings every part of a merged comparison must share, or their runs are not one experiment.
SHARED_SETTINGS = ("benchmark", "seeds", "validation_seed", "selection_rule", "recipe_args", "quick", "torch_threads")


def merge(parser: argparse.ArgumentParser, name: str, paths: Sequence[Path], output: Path, runs_dir: Path) -> dict:
    """One comparison from the JSONs of parts run apart (e.g. disjoint `--methods` or `--tasks` in parallel
    processes): the methods' runs as they are, statistics and paired comparisons recomputed over all of them."""
    benchmark = BENCHMARKS[name]
    parts = [json.loads(Path(path).read_text()) for path in paths]
    for key in SHARED_SETTINGS:
        if len({json.dumps(part.get(key)) for part in parts}) > 1:
            parser.error(f"--merge: the files differ in {key!r}; only parts of one protocol can be merged.")
    if parts[0]["benchmark"] != name:
        parser.error(f"--merge: the files are {parts[0]['benchmark']!r} results, not {name!r}.")
    results: dict[str | None, dict] = {}
    for part in parts:
        for task, entry in task_entries(part):
            methods = results.setdefault(task, {"methods": {}})["methods"]
            for method, method_entry in entry["methods"].items():
                if method in methods:
                    parser.error(f"--merge: {method!r}{'' if task is None else f' ({task})'} is in two files.")
                methods[method] = method_entry
    order = {method: i for i, method in enumerate(benchmark.methods)}
    for entry in results.values():
        entry["methods"] = dict(sorted(entry["methods"].items(), key=lambda kv: order.get(kv[0], len(order))))
        aggregate(benchmark, entry)
    tasks = [task for task in benchmark.tasks if task in results] + [t for t in results if t not in benchmark.tasks]
    summary = {key: value for key, value in parts[0].items() if key not in ("tasks", "methods", "reference_stats")}
    summary["grid"] = {method: grid for part in parts for method, grid in part.get("grid", {}).items()}
    # The parts ran side by side: their summed wall time is the work, the longest one the elapsed time.
    summary["total_wall_s"] = round(sum(part["total_wall_s"] for part in parts), 1)
    summary["merged_from"] = [
        {"file": str(path), "total_wall_s": part["total_wall_s"],
         "tasks": [t for t, _ in task_entries(part)], "methods": sorted({m for _, e in task_entries(part) for m in e["methods"]})}
        for path, part in zip(paths, parts, strict=True)
    ]  # fmt: skip
    set_results(summary, {task: results[task] for task in tasks})
    return write_summary(benchmark, summary, output, runs_dir)


if __name__ == "__main__":
    main()
