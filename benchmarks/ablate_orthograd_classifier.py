"""OrthoGrad ablation on the classifier benchmark (digits, tiny ResNet): one change from the default per variant,
class-wise and random forgetting, several seeds, every run stopped at the exact-retrain model's forget accuracy.

    python benchmarks/ablate_orthograd_classifier.py                      # 3 seeds, both tasks, every variant
    python benchmarks/ablate_orthograd_classifier.py --variants default per_tensor --seeds 0 1 2 3 4
    python benchmarks/ablate_orthograd_classifier.py --quick              # CI: 1 seed, 2 steps per run
    python benchmarks/ablate_orthograd_classifier.py --plot_only          # redraw md/png from the JSON
    python benchmarks/ablate_orthograd_classifier.py --tag lr1e-4 --tasks class --recipe_args --learning_rate 1e-4

**Protocol.** Each run is one call of `hf_unlearn.recipes.classifier.run` (the code path of
`recipes/unlearn_classifier.py`) with the preset `classifier_digits.yaml` (full fine-tuning, AdamW, lr 1e-3, batch
32 + 32, BatchNorm frozen) and `--method orthograd` (α = 0.5, OrthoGrad's default), plus `--stop_at_target retrain`
evaluated every step (`--eval_steps 1`) within `--max_steps`: the run stops once the forget accuracy falls to the
exact-retrain model's and restores the evaluated step closest to it, so variants are compared at matched forgetting
and the table reports the step reached. A seed sets the base and exact-retrain models (trained and cached per seed),
the random task's forget set, the retain subset and the data order. Variants (each one change from `default`):

- `default`: global projection, gradient space, AdamW, per-sample (OrthoGrad), full fine-tuning, all retain data, CE;
- `per_tensor`: each weight tensor projected against its own per-sample retain gradients (the authors' code);
- `preconditioned`: projection in Adam's metric, plain SGD step −lr·D·d (needs `optim=sgd`, `max_grad_norm=0`);
- `sgd`: SGD instead of AdamW in the gradient space, at lr `SGD_LR` (AdamW's 1e-3 barely moves SGD with the
  preset's clipping at 1: every step has norm ≤ lr);
- `gru`: rank-1 projection against the mean retain gradient (`GRUTrainer`), same α;
- `lora`: a LoRA adapter (r = 8) on the convolutions, the head trained whole, instead of every weight;
- `retain_10pct`, `retain_1pct`: the method sees 10 % / 1 % of the retain images (seeded, stratified; OrthoGrad v2's
  small retain set); metrics and exact retrain still use all of them;
- `kl`: per-sample retain loss = KL to the original model instead of CE.

Score: the recipe's Avg-Gap (mean |m − m_retrain| over UA, RA, TA, MIA-efficacy; lower is closer to exact
retraining). torch's thread count is fixed (`--threads`, default 1) and recorded: the reference models, hence every
number, differ between thread counts; the references live in a cache of their own under `--runs_dir`.

Writes `ablate_orthograd_classifier[_<tag>][_quick].{json,md,png}` into `--output_dir`; the JSON has every run's
metrics.
"""

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any


STEM = "ablate_orthograd_classifier"
TASKS = ("class", "random")
ALPHA_FIELD = "retain_mix"  # OrthoGrad's (and GRU's) α: `hf_unlearn.methods.retain_knob("orthograd")`, tested
ALPHA = 0.5
SGD_LR = 0.2
SGD_PRECONDITIONED = ["--optim", "sgd", "--max_grad_norm", "0"]
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "per_tensor": ["--projection_granularity", "per_tensor"],
    "preconditioned": ["--projection_space", "preconditioned", *SGD_PRECONDITIONED],
    "sgd": ["--optim", "sgd", "--learning_rate", str(SGD_LR)],
    "gru": ["--method", "gru"],
    "lora": ["--use_peft", "true"],
    "retain_10pct": ["--retain_fraction", "0.1"],
    "retain_1pct": ["--retain_fraction", "0.01"],
    "kl": ["--retain_loss", "kl"],
    # Not in the default list: the two authors' options together.
    "per_tensor_preconditioned": [
        "--projection_granularity",
        "per_tensor",
        "--projection_space",
        "preconditioned",
        *SGD_PRECONDITIONED,
    ],
}
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "per_tensor_preconditioned"]
# Columns of the table: (label, how to read it from a run's metrics.json).
COLUMNS = {
    "UA": lambda m: 1.0 - m["unlearned"]["forget"]["accuracy"],
    "RA": lambda m: m["unlearned"]["retain"]["accuracy"],
    "TA": lambda m: m["unlearned"]["test"]["accuracy"],
    "MIA": lambda m: m["unlearned"]["mia_efficacy"],
}


def variant_argv(
    variant: str, task: str, seed: int, run_dir: Path, cache_dir: Path, max_steps: int, extra: list[str] | None = None
) -> list[str]:
    """The recipe's command line for one run: the shared protocol, `extra` (recipe flags for every variant), then the
    variant's own change (later flags win, so `sgd` keeps its learning rate)."""
    return [
        "--method", "orthograd", f"--{ALPHA_FIELD}", str(ALPHA), "--task", task, "--seed", str(seed),
        "--output_dir", str(run_dir), "--overwrite_output_dir", "true", "--cache_dir", str(cache_dir),
        "--stop_at_target", "retrain", "--eval_steps", "1", "--max_steps", str(max_steps),
        "--logging_steps", str(max_steps), "--save_total_limit", "1",
        *(extra or []), *VARIANTS[variant],
    ]  # fmt: skip


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_record(metrics: dict[str, Any], resolved: dict[str, Any], seed: int, wall_s: float) -> dict[str, Any]:
    """What the JSON keeps of one run: the scores, where it stopped, and the config values that differ by variant."""
    stop = metrics.get("stop_at_target") or {}
    return {
        "seed": seed,
        "avg_gap": metrics["avg_gap"],
        "uis": metrics["uis"],
        **{name: read(metrics) for name, read in COLUMNS.items()},
        "base": {name: read({"unlearned": metrics["base"]}) for name, read in COLUMNS.items()},
        "retrain": {name: read({"unlearned": metrics["retrain"]}) for name, read in COLUMNS.items()},
        "base_avg_gap": metrics["base_avg_gap"],
        "reached_step": stop.get("reached_step"),
        "restored_step": stop.get("restored_step"),
        "alpha": resolved.get(ALPHA_FIELD),
        "optim": resolved.get("optim"),
        "learning_rate": resolved.get("learning_rate"),
        "wall_s": round(wall_s, 1),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd over seeds of the score and every column, and how many seeds reached the forget target."""
    summary = {key: mean_sd([r[key] for r in runs]) for key in ("avg_gap", "uis", *COLUMNS)}
    summary["reached"] = sum(r["reached_step"] is not None for r in runs)
    summary["restored_step"] = mean_sd([float(r["restored_step"] or 0) for r in runs])
    summary["seeds"] = len(runs)
    return summary


def paired_difference(
    runs: list[dict[str, Any]], baseline: list[dict[str, Any]]
) -> tuple[float, float, int, int, float]:
    """Avg-Gap minus the baseline's on the same seed: mean, sd, seeds where the variant is lower, seeds compared, and
    the paired t-test's two-sided p-value (`scipy.stats.ttest_rel`; NaN below 2 seeds)."""
    from scipy.stats import ttest_rel

    by_seed = {r["seed"]: r["avg_gap"] for r in baseline}
    pairs = [(r["avg_gap"], by_seed[r["seed"]]) for r in runs if r["seed"] in by_seed]
    if not pairs:
        return math.nan, math.nan, 0, 0, math.nan
    deltas = [a - b for a, b in pairs]
    p_value = float(ttest_rel(*zip(*pairs, strict=True)).pvalue) if len(pairs) > 1 and any(deltas) else math.nan
    return (*mean_sd(deltas), sum(d < 0 for d in deltas), len(deltas), p_value)


def markdown(results: dict[str, Any]) -> str:
    """One table per task: a row per variant (in run order), then the base and exact-retrain models' means. Δ is
    the Avg-Gap difference to `default` on the same seed (negative: closer to retraining than the default), p the
    paired t-test's."""
    blocks = []
    for task, variants in results["tasks"].items():
        if not variants:
            continue
        header = "| variant | Avg-Gap ↓ | Δ vs default (paired) | lower on | p | UA | RA | TA | MIA | UIS ↓ | step | reached |"
        title = "class-wise (digit 3)" if task == "class" else "random 10 %"
        lines = [f"**{title}**", "", header, "|---|" + "---:|" * 11]
        for variant, runs in variants.items():
            s = summarize(runs)
            cells = [f"{s[k][0]:.3f} ± {s[k][1]:.3f}" for k in ("avg_gap", *COLUMNS, "uis")]
            delta, lower, p_value = "–", "–", "–"
            if variant != "default" and "default" in variants:
                mean, sd, wins, count, p = paired_difference(runs, variants["default"])
                delta, lower, p_value = f"{mean:+.4f} ± {sd:.4f}", f"{wins}/{count}", f"{p:.2f}"
            cells[1:1] = [delta, lower, p_value]
            step = f"{s['restored_step'][0]:.1f}"
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {step} | {s['reached']}/{s['seeds']} |")
        first = next(iter(variants.values()))
        base = mean_sd([r["base_avg_gap"] for r in first])
        base_cells = [f"{mean_sd([r['base'][k] for r in first])[0]:.3f}" for k in COLUMNS]
        retrain = [f"{mean_sd([r['retrain'][k] for r in first])[0]:.3f}" for k in COLUMNS]
        lines.append(
            f"| *base (before)* | {base[0]:.3f} ± {base[1]:.3f} | – | – | – | "
            + " | ".join(base_cells)
            + " | 0 | 0 | – |"
        )
        lines.append("| *exact retrain* | 0 | – | – | – | " + " | ".join(retrain) + " | – | – | – |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def plot(results: dict[str, Any], path: Path) -> Path:
    """Avg-Gap mean ± sd per variant, one bar group per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t, v in results["tasks"].items() if v]
    variants = list(dict.fromkeys(v for t in tasks for v in results["tasks"][t]))
    width = 0.8 / max(len(tasks), 1)
    figure, axis = plt.subplots(figsize=(10, 4), constrained_layout=True)
    for i, task in enumerate(tasks):
        stats = [summarize(results["tasks"][task][v])["avg_gap"] if v in results["tasks"][task] else (0, 0)
                 for v in variants]  # fmt: skip
        xs = [j + i * width for j in range(len(variants))]
        axis.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], capsize=3, label=task)
    axis.set_xticks([j + width * (len(tasks) - 1) / 2 for j in range(len(variants))], variants, rotation=20)
    axis.set_ylabel("Avg-Gap to exact retrain ↓ (mean ± sd)")
    extra = " ".join(results.get("recipe_args") or [])
    axis.set_title(f"OrthoGrad ablation, digits, seeds {results['seeds']}, matched forget accuracy {extra}".strip())
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_outputs(results: dict[str, Any], output_dir: Path, stem: str) -> str:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    note = (
        f"OrthoGrad ablation, digits; seeds {results['seeds']}; mean ± sd over seeds; stopped at the exact-retrain "
        f"forget accuracy (evaluated every step, ≤ {results['max_steps']} steps); torch threads {results['threads']}; "
        f"load average {results['load_average']}; recipe arguments {results.get('recipe_args') or 'none'}\n\n"
    )
    table = markdown(results)
    (output_dir / f"{stem}.md").write_text(note + table + "\n")
    plot(results, output_dir / f"{stem}.png")
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--max_steps", type=int, default=40, help="Budget per run if the target is not reached.")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every run (recorded).")
    parser.add_argument("--quick", action="store_true", help="CI: seed 0, 2 steps per run; writes *_quick files.")
    parser.add_argument("--plot_only", action="store_true", help="Redraw the md/png from the JSON.")
    parser.add_argument(
        "--extend",
        action="store_true",
        help="Add --seeds to the existing JSON's runs (same max_steps, threads and variants) instead of replacing it.",
    )
    parser.add_argument(
        "--tag", default="", help="Suffix of the output files and run folders, for a run with other --recipe_args."
    )
    parser.add_argument(
        "--recipe_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="Recipe flags for every run, e.g. --learning_rate 1e-4",
    )
    parser.add_argument("--runs_dir", type=Path, default=Path("outputs/ablate_orthograd_classifier"))
    parser.add_argument("--output_dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    stem = STEM + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    if args.plot_only:
        results = json.loads((args.output_dir / f"{stem}.json").read_text())
        print(write_outputs(results, args.output_dir, stem))
        return results
    if args.quick:
        args.seeds, args.max_steps = [0], 2

    import torch

    from hf_unlearn.recipes.classifier import run

    torch.set_num_threads(args.threads)
    cache_dir = args.runs_dir / f"cache-threads{args.threads}"  # references trained with this thread count only
    results: dict[str, Any] = {
        "benchmark": "classifier",
        "seeds": args.seeds,
        "max_steps": args.max_steps,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "load_average": None,
        "variants": {v: VARIANTS[v] for v in args.variants},
        "recipe_args": args.recipe_args,
        "tasks": {task: {} for task in args.tasks},
    }
    loads = []
    start = time.perf_counter()
    if args.extend:
        earlier = json.loads((args.output_dir / f"{stem}.json").read_text())
        same = {k: earlier.get(k, []) for k in ("max_steps", "threads", "variants", "recipe_args")}
        if same != {k: results[k] for k in same} or set(args.seeds) & set(earlier["seeds"]):
            raise SystemExit(
                f"--extend needs new seeds and the same max_steps, threads, variants and recipe_args as {stem}.json."
            )
        results["tasks"] = {task: earlier["tasks"].get(task, {}) for task in args.tasks}
        results["seeds"] = earlier["seeds"] + args.seeds
        loads = [float(x) for x in earlier["load_average"].split("–")]
        start -= earlier["total_wall_s"]
    for seed in args.seeds:  # seed-major: an interrupted run has every variant of the first seeds
        for task in args.tasks:
            for variant in args.variants:
                run_dir = args.runs_dir / (args.tag or "main") / task / variant / f"seed{seed}"
                began = time.perf_counter()
                argv = variant_argv(variant, task, seed, run_dir, cache_dir, args.max_steps, args.recipe_args)
                metrics = run(argv)
                resolved = json.loads((run_dir / "unlearn_config.json").read_text())["config"]
                record = run_record(metrics, resolved, seed, time.perf_counter() - began)
                results["tasks"][task].setdefault(variant, []).append(record)
                loads.append(os.getloadavg()[0])
                results["load_average"] = f"{min(loads):.1f}–{max(loads):.1f}"
                results["total_wall_s"] = round(time.perf_counter() - start, 1)
                write_outputs(results, args.output_dir, stem)
                print(f"[ablate] {task}/{variant} seed {seed}: Avg-Gap {record['avg_gap']:.4f}, step "
                      f"{record['restored_step']}, {record['wall_s']} s, load {loads[-1]:.1f}", flush=True)  # fmt: skip
    table = write_outputs(results, args.output_dir, stem)
    print(table)
    return results


if __name__ == "__main__":
    main()
