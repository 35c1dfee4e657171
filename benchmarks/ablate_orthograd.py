"""OrthoGrad ablation on an embedded benchmark: projection granularity × projection space, several seeds.

    python benchmarks/ablate_orthograd.py --benchmark speech --seeds 0 1
    python benchmarks/ablate_orthograd.py --benchmark text --seeds 0 1 -- --max_steps 30

Each variant is one run of the benchmark's recipe through `compare_methods.run_method` (same preset, steps, learning
rate and seed as `compare_methods.py`), scored by the same Avg-Gap to the exact-retrain model. Variants:

- `global/gradient`: the library default (one projection over all LoRA weights, then the recipe's AdamW);
- `per_tensor/gradient`: each LoRA tensor projected against its own per-sample retain gradients (the authors' code);
- `global/preconditioned`, `per_tensor/preconditioned`: the projection in the metric of Adam's diagonal
  preconditioner D and the plain step −lr·D·d (`optim="sgd"`, `max_grad_norm=0`: D·d has Adam's scale, so the preset's lr is kept and clipping would stall it).

Writes `ablate_orthograd_<benchmark>.{json,md}` (per-seed values and mean ± sd) into `--output_dir`.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_methods import BENCHMARKS, avg_gap, run_method  # noqa: E402


VARIANTS = {
    "global/gradient": [],
    "per_tensor/gradient": ["--projection_granularity", "per_tensor"],
    "global/preconditioned": ["--projection_space", "preconditioned", "--optim", "sgd", "--max_grad_norm", "0"],
    "per_tensor/preconditioned": [
        "--projection_granularity",
        "per_tensor",
        "--projection_space",
        "preconditioned",
        "--optim",
        "sgd",
        "--max_grad_norm",
        "0",
    ],
}


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="speech", choices=list(BENCHMARKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--runs_dir", type=Path, default=Path("outputs/ablate_orthograd"))
    parser.add_argument("--output_dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    benchmark = BENCHMARKS[args.benchmark]
    columns = [*benchmark.gap_columns]
    rows = {}
    output = args.output_dir / f"ablate_orthograd_{args.benchmark}.json"
    for seed in args.seeds:  # seed-major: an interrupted run has every variant of the first seeds
        for variant in args.variants:
            run_dir = args.runs_dir / args.benchmark / variant.replace("/", "-") / f"seed{seed}"
            run = run_method(benchmark, "orthograd", run_dir, seed, [*VARIANTS[variant], *extra])
            metrics = run["metrics"]
            rows.setdefault(variant, []).append(
                {
                    "seed": seed,
                    "avg_gap": avg_gap(metrics, columns, "unlearned"),
                    "unlearned": {f"{s}/{m}": metrics["unlearned"][s][m] for s, m in columns},
                    "retrain": {f"{s}/{m}": metrics["retrain"][s][m] for s, m in columns}
                    if "retrain" in metrics
                    else {},
                    "wall_s": run["wall_s"],
                    "max_steps": run["max_steps"],
                }
            )
            args.output_dir.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps({"benchmark": args.benchmark, "extra": extra, "variants": rows}, indent=2))
            print(f"{variant} seed {seed}: Avg-Gap {rows[variant][-1]['avg_gap']:.4f} ({run['wall_s']} s)", flush=True)
    header = ["variant", "Avg-Gap ↓", *[f"{s} {m}" for s, m in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, runs in rows.items():
        cells = [mean_sd([r["avg_gap"] for r in runs])]
        cells += [mean_sd([r["unlearned"][f"{s}/{m}"] for r in runs]) for s, m in columns]
        lines.append("| " + " | ".join([variant, *cells]) + " |")
    first = next(iter(rows.values()))[0]
    if first["retrain"]:
        lines.append("| retrain (target) | 0 | " + " | ".join(f"{v:.3f}" for v in first["retrain"].values()) + " |")
    table = "\n".join(lines)
    note = f"seeds {args.seeds}; extra recipe arguments {extra or 'none'}; mean ± sd over seeds\n\n"
    (args.output_dir / f"ablate_orthograd_{args.benchmark}.md").write_text(note + table + "\n")
    print(table)
    return rows


if __name__ == "__main__":
    main()
