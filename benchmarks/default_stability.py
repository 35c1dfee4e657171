"""Every method at its defaults on the full embedded benchmarks: does any of them diverge?

    python benchmarks/default_stability.py                                  # speech, text, classifier; every method
    python benchmarks/default_stability.py --benchmarks speech --methods npo ga

Each run is the recipe exactly as a user starts it (`recipes/unlearn_*.py --method M`, the preset's budget, seed 0):
no grid, no stopping at a target, only the method's own defaults and the preset's learning rate and steps. The test
`tests/test_stable_defaults.py` is the cheap tripwire on the tiny corpora (10 steps); this is the measurement at full
size, where a divergence needs tens of steps to show.

**Diverged** means the model no longer does the task on what it must keep, or babbles:

- speech: WER above 1.2 on any split (insertions: the decoder babbles), or retain WER above 0.5;
- text: retain ROUGE-L recall below half the base model's, or a non-finite model utility;
- classifier: retain accuracy below half the base model's.

Forgetting *more* than the exact-retrain model is not divergence by itself (the table shows it: forget metric against
the retrain's); collapse of the retained data is. Writes `default_stability.{json,md}` into `--output_dir`.
"""

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_methods import (  # noqa: E402
    BENCHMARKS,
    CLASSIFIER_METHODS,
    DEFAULT_WEIGHTS,
    METHOD_ORDER,
    Benchmark,
    run_method,
)


SPEECH_BABBLE_WER = 1.2
SPEECH_RETAIN_WER = 0.5
RETAIN_FRACTION_OF_BASE = 0.5


def divergence(benchmark: str, metrics: Mapping) -> str | None:
    """Why a run counts as diverged (the module docstring's rule), or `None` when it did not."""
    unlearned, base = metrics["unlearned"], metrics["base"]
    if benchmark == "speech":
        for split, values in unlearned.items():
            if values.get("wer", 0.0) > SPEECH_BABBLE_WER:
                return f"{split} WER {values['wer']:.2f} > {SPEECH_BABBLE_WER} (babbling)"
        if unlearned["retain"]["wer"] > SPEECH_RETAIN_WER:
            return f"retain WER {unlearned['retain']['wer']:.2f} > {SPEECH_RETAIN_WER}"
        return None
    if benchmark == "text":
        if not math.isfinite(unlearned["forget"]["model_utility"]):
            return "model utility is not finite"
        retain, floor = unlearned["retain"]["rougeL_recall"], RETAIN_FRACTION_OF_BASE * base["retain"]["rougeL_recall"]
        return f"retain ROUGE-L {retain:.2f} < {floor:.2f} (half the base's)" if retain < floor else None
    retain, floor = unlearned["retain"]["accuracy"], RETAIN_FRACTION_OF_BASE * base["retain"]["accuracy"]
    return f"retain accuracy {retain:.2f} < {floor:.2f} (half the base's)" if retain < floor else None


# (split, metric, header) of the table; the forget metric first, then what must be kept.
COLUMNS = {
    "speech": (("forget", "wer", "forget WER"), ("retain", "wer", "retain WER"), ("test", "wer", "test WER")),
    "text": (
        ("forget", "rougeL_recall", "forget ROUGE-L"),
        ("retain", "rougeL_recall", "retain ROUGE-L"),
        ("forget", "model_utility", "model utility"),
    ),
    "classifier": (("forget", "accuracy", "forget acc."), ("retain", "accuracy", "RA"), ("test", "accuracy", "TA")),
}


def check(benchmark_name: str, benchmark: Benchmark, method: str, runs_dir: Path, extra: Sequence[str]) -> dict:
    print(f"=== {benchmark_name}: {method} at its defaults", flush=True)
    run = run_method(benchmark, method, runs_dir / benchmark_name / method, 0, ["--eval_strategy", "no", *extra])
    metrics = run["metrics"]
    return {
        "method": method,
        "weight": None if DEFAULT_WEIGHTS.get(method) == (None,) else run["retain_weight"],  # GA has no weight
        "learning_rate": run["learning_rate"],
        "steps": run["stopped_step"],
        "wall_s": run["wall_s"],
        "metrics": {key: metrics[key] for key in ("base", "retrain", "unlearned") if key in metrics},
        "diverged": divergence(benchmark_name, metrics),
    }


def table(benchmark_name: str, rows: Sequence[Mapping]) -> str:
    columns = COLUMNS[benchmark_name]
    header = ["method", "weight", "lr", "steps", *(name for *_, name in columns), "diverged?", "time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]

    def cells(model: Mapping) -> list[str]:
        return [f"{model[split][metric]:.3f}" for split, metric, _ in columns]

    for row in rows:
        weight = "–" if row["weight"] is None else f"{row['weight']:g}"
        verdict = row["diverged"] or "no"
        lines.append(
            f"| {row['method']} | {weight} | {row['learning_rate']:g} | {row['steps']} | "
            + " | ".join(cells(row["metrics"]["unlearned"]))
            + f" | {verdict} | {row['wall_s']} |"
        )
    for name in ("base", "retrain"):
        model = rows[0]["metrics"].get(name)
        if model:
            label = "*base (before)*" if name == "base" else "*exact retrain*"
            lines.append(f"| {label} | – | – | – | " + " | ".join(cells(model)) + " | – | – |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], usage="%(prog)s [options] [-- recipe args]")
    parser.add_argument("--benchmarks", nargs="+", default=["speech", "text", "classifier"], choices=sorted(COLUMNS))
    parser.add_argument("--methods", nargs="+", help="Default: every method of each benchmark.")
    parser.add_argument("--torch_threads", type=int, default=1, help="torch intra-op threads (recorded).")
    parser.add_argument("--runs_dir", type=Path, default=Path("outputs/default_stability"))
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    import torch

    torch.set_num_threads(args.torch_threads)
    summary = {"torch_threads": args.torch_threads, "recipe_args": extra, "benchmarks": {}}
    start = time.perf_counter()
    for name in args.benchmarks:
        benchmark = BENCHMARKS[name]
        methods = args.methods or (CLASSIFIER_METHODS if name == "classifier" else METHOD_ORDER)
        rows = [check(name, benchmark, method, args.runs_dir, extra) for method in methods]
        summary["benchmarks"][name] = rows
        print(table(name, rows), flush=True)
    summary["total_wall_s"] = round(time.perf_counter() - start, 1)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = "default_stability" if not args.methods else "default_stability_" + "_".join(args.methods)
    (args.output_dir / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    markdown = "\n\n".join(f"**{name}**\n\n{table(name, rows)}" for name, rows in summary["benchmarks"].items())
    (args.output_dir / f"{stem}.md").write_text(markdown + "\n")
    return summary


if __name__ == "__main__":
    main()
