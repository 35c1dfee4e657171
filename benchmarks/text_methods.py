"""Run `recipes/unlearn_llm.py` once per method on the embedded text benchmark and print the README table.

    python benchmarks/text_methods.py                       # every method, recipe defaults (llm_tiny.yaml)
    python benchmarks/text_methods.py --methods ga npo -- --max_steps 40
    python benchmarks/text_methods.py --table_only          # rebuild the table from existing outputs

Each run writes `outputs/llm_tiny-<method>/metrics.json`; the table reads those files only (base and exact-retrain
rows from the first method's file: every run shares the same cached models) and is also written as JSON to
`benchmarks/results/text_methods.json`. Arguments after `--` go to every recipe run.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
METHODS = ("ga", "graddiff", "npo", "simnpo", "orthograd", "gru", "lur")
# (split, metric, header): what each column reads from metrics.json.
COLUMNS = (
    ("forget", "rougeL_recall", "forget ROUGE-L"),
    ("forget", "prob", "forget prob"),
    ("forget", "truth_ratio", "forget truth ratio"),
    ("forget", "forget_quality", "forget quality ↑"),
    ("forget", "model_utility", "model utility ↑"),
    ("retain", "rougeL_recall", "retain ROUGE-L"),
    ("world_facts", "rougeL_recall", "world_facts ROUGE-L"),
    ("forget", "mia_loss_auc", "MIA LOSS AUC"),
    ("forget", "mia_min_k_auc", "MIA Min-K% AUC"),
    ("forget", "mia_min_k_plus_plus_auc", "MIA Min-K%++ AUC"),
)


def run(method: str, extra: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(REPO / "recipes" / "unlearn_llm.py"), "--method", method, *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env=env)
    return time.perf_counter() - start


def table(rows: dict[str, dict]) -> str:
    header = "| model | " + " | ".join(c[2] for c in COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(COLUMNS)]
    for name, per_split in rows.items():
        cells = []
        for split, metric, _ in COLUMNS:
            value = per_split.get(split, {}).get(metric)
            cells.append("–" if value is None else f"{value:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--outputs", default="outputs", help="Parent of the recipe's llm_tiny-<method> folders.")
    parser.add_argument("--table_only", action="store_true", help="Do not run; read existing metrics.json files.")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    seconds = {}
    if not args.table_only:
        for method in args.methods:
            output_dir = Path(args.outputs) / f"llm_tiny-{method}"
            seconds[method] = round(run(method, ["--output_dir", str(output_dir), *extra]), 1)
    results = {
        m: json.loads((Path(args.outputs) / f"llm_tiny-{m}" / "metrics.json").read_text()) for m in args.methods
    }
    first = results[args.methods[0]]
    rows = {"base": first["base"]}
    if "retrain" in first:
        rows["exact retrain"] = first["retrain"]
    rows.update({method: results[method]["unlearned"] for method in args.methods})
    print(table(rows))
    out = REPO / "benchmarks" / "results" / "text_methods.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "wall_seconds": seconds, "extra_args": extra}, indent=2))


if __name__ == "__main__":
    main()
