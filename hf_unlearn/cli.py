"""`hf-unlearn`: the command line, in the style of `trl` and `transformers env`.

    hf-unlearn unlearn [--recipe whisper|llm|classifier] [--config PRESET.yaml] [--method lur] [any config field ...]
                       [--debug]
    hf-unlearn report OUTPUT_DIR [--no_plots]
    hf-unlearn env

`unlearn` forwards everything after it to the recipe's own parser (`hf-unlearn unlearn --help` lists every field),
so a command line works the same with `accelerate launch recipes/unlearn_whisper.py` (`--recipe llm`:
`recipes/unlearn_llm.py`). Multi-process runs go through `accelerate launch`, which the CLI does not wrap.
"""

import argparse
import importlib
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

from .help_cache import cached_help


# Recipe name → module with `run(argv) -> metrics`.
RECIPES = {
    "whisper": "hf_unlearn.recipes.whisper",
    "llm": "hf_unlearn.recipes.llm",
    "classifier": "hf_unlearn.recipes.classifier",
}
ENV_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "tokenizers",
    "jiwer",
    "rouge_score",
    "scipy",
    "deepspeed",
    "matplotlib",
)


# Errors that mean "the input was wrong" (each raised with a message naming the fix): one line and exit status 2, as
# argparse does for a bad flag. `--debug` shows the traceback instead.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-unlearn", description="Make a transformers model forget chosen data.")
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of an error (any position).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    unlearn = commands.add_parser(
        "unlearn",
        help="Run an unlearning recipe (the arguments after it go to the recipe).",
        description="Run an unlearning recipe in this process; every other argument goes to the recipe's parser.",
        add_help=False,  # `--help` goes to the recipe, which knows the fields
    )
    unlearn.add_argument("--recipe", choices=sorted(RECIPES), default="whisper", help="Which recipe to run.")

    report = commands.add_parser("report", help="Print a run's metrics table and (re)draw its plots.")
    report.add_argument("output_dir", type=Path, help="A recipe's output folder (holds metrics.json).")
    report.add_argument("--no_plots", "--no-plots", dest="plots", action="store_false", help="Only print the table.")

    commands.add_parser("env", help="Print versions and platform, to paste into a bug report.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hf-unlearn` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    args, rest = make_parser().parse_known_args(argv)
    if args.command == "unlearn":
        try:
            if "-h" in rest or "--help" in rest:
                print(cached_help(args.recipe, rest, lambda: run_recipe(args.recipe, rest)), end="")
                return 0
            run_recipe(args.recipe, rest)
        except USER_ERRORS as error:
            if debug:
                raise
            print(f"hf-unlearn unlearn: error: {error}\n(--debug shows the traceback)", file=sys.stderr)
            return 2
        except SystemExit as stop:
            if debug or not isinstance(stop.code, str):
                raise
            print(f"hf-unlearn unlearn: error: {stop.code}", file=sys.stderr)  # a refusal raised as SystemExit(msg)
            return 2
        return 0
    if rest:
        make_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "report":
        return report(args.output_dir, plots=args.plots)
    print(environment_report())
    return 0


def run_recipe(recipe: str, argv: list[str]) -> None:
    """Import the recipe only now: torch and transformers are paid for by the command that needs them."""
    importlib.import_module(RECIPES[recipe]).run(argv)


def report(output_dir: Path, plots: bool = True) -> int:
    """Print the `metrics.json` table of a run and write its plots beside it."""
    from .eval.report import run_table

    metrics_file = output_dir / "metrics.json"
    if not metrics_file.is_file():
        print(f"hf-unlearn report: {metrics_file} not found; pass a recipe's output_dir.", file=sys.stderr)
        return 1
    results = json.loads(metrics_file.read_text())
    if "avg_gap" in results:  # a classifier run: accuracies, MIA-efficacy, Avg-Gap, UIS
        from .eval.classification import classification_table

        print(classification_table(results))
    else:
        print(run_table(results))
    if plots:
        from .plots import write_run_plots

        try:
            written = write_run_plots(output_dir)
        except FileNotFoundError as error:
            print(f"No plots: {error}", file=sys.stderr)
            return 0
        for path in written:
            print(f"wrote {path}")
    return 0


def environment_report() -> str:
    """Versions of Python, the platform, hf-unlearn and the libraries it runs on, as a markdown list."""
    import hf_unlearn

    lines = [
        f"- `hf-unlearn` version: {hf_unlearn.__version__}",
        f"- Platform: {platform.platform()}",
        f"- Python version: {platform.python_version()}",
    ]
    for name in ENV_PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed"
        lines.append(f"- {name} version: {version}")
    try:
        import torch

        accelerator = (
            f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "none"
        )
        lines.append(f"- Accelerator: {accelerator}")
    except ImportError:
        pass
    return "\n".join(["Copy-and-paste the text below in your GitHub issue.", "", *lines])


if __name__ == "__main__":
    sys.exit(main())
