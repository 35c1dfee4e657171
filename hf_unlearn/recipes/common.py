"""What every recipe shares: YAML-then-CLI parsing into (script arguments, method config), the checks that must
fail before any training time is spent, building the caches in one clean process before a multi-process run, and
writing a run's outputs.

The recipes themselves (`whisper.py`, `llm.py`) keep only what is specific to their modality: data, models,
collator, evaluation.
"""

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from transformers import HfArgumentParser

    from hf_unlearn.configs import UnlearnConfig


@dataclass
class RecipeArguments:
    """The script fields every recipe has; each recipe's `ScriptArguments` adds its model and data fields."""

    # `HfArgumentParser`'s heading for these fields in `--help` (a class attribute, not a field).
    _argument_group_name = "script (data, models, adapter, outputs)"

    method: str = field(
        default="graddiff", metadata={"help": "Unlearning method: ga, graddiff, npo, simnpo, orthograd, gru, lur."}
    )
    train_retrain_reference: bool = field(
        default=True, metadata={"help": "Embedded default: also train (and cache) the exact-retrain reference."}
    )
    use_peft: bool = field(
        default=True,
        metadata={"help": "Train a LoRA adapter (peft); false fine-tunes every weight of the model (trl's flag)."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Cache for the embedded corpus and models (default $HF_UNLEARN_CACHE)."}
    )
    prepare_only: bool = field(
        default=False,
        metadata={"help": "Only build (and cache) the embedded corpus and reference models, then exit."},
    )
    hub_dry_run_dir: str | None = field(
        default=None,
        metadata={
            "help": "Write the files push_to_hub would upload (adapter, processor or tokenizer, card) into this "
            "empty folder."
        },
    )


def lora_config(script_args: RecipeArguments, target_modules: list[str], **extra: Any) -> Any:
    """The run's `peft.LoraConfig`, or `None` with `--use_peft false` (full fine-tuning)."""
    if not script_args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=script_args.lora_r,
        lora_alpha=script_args.lora_alpha,
        lora_dropout=script_args.lora_dropout,
        target_modules=target_modules,
        **extra,
    )


def make_parser(script_args_cls: type, method: str) -> "HfArgumentParser":
    """`HfArgumentParser` over the recipe's script arguments and `method`'s config (its fields are the flags)."""
    from transformers import HfArgumentParser

    from hf_unlearn import METHODS

    if method not in METHODS:
        raise SystemExit(f"Unknown --method {method!r}; choose one of {sorted(METHODS)}.")
    return HfArgumentParser((script_args_cls, METHODS[method][0]), prog=program_name())


def program_name() -> str | None:
    """`hf-unlearn unlearn` when run through the console script (or `python -m hf_unlearn`), so that `--help` shows a
    usage line the user can type; `None` (argparse's default, the script's name) otherwise."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if program is not None and (
        program.name == "hf-unlearn" or (program.name == "__main__.py" and program.parent.name == "hf_unlearn")
    ):
        return "hf-unlearn unlearn"
    return None


def print_effective_help(parser: "HfArgumentParser", preset: dict[str, Any], config_path: str, method: str) -> None:
    """`--help` with the defaults that will actually apply: the preset's values over the dataclasses' own."""
    known = {f.name for dataclass_type in parser.dataclass_types for f in fields(dataclass_type)}
    parser.set_defaults(**{key: value for key, value in preset.items() if key in known}, method=method)
    parser.description = (
        f"Preset: {config_path} (method {method}). Every field below can be set in the YAML preset or on the "
        "command line, which wins. Also: --config PATH (another YAML preset); with `hf-unlearn unlearn`, "
        "--recipe whisper|llm (which recipe) and --debug (show tracebacks). The defaults shown are the preset's "
        "where it sets the field."
    )
    parser.usage = f"{parser.prog} [--config PATH] [--method METHOD] [--FIELD VALUE ...]"
    parser.print_help()


def parse_recipe_args(
    argv: list[str], script_args_cls: type, default_config: Path, output_prefix: str
) -> tuple[Any, "UnlearnConfig"]:
    """`(script_args, method_config)` from the YAML preset (`--config`, default `default_config`), then the command
    line on top (argparse keeps the last occurrence of a flag). `output_dir` defaults to
    `outputs/<output_prefix>-<method>`.

    Not `HfArgumentParser.parse_yaml_file`: it reads the YAML alone, with no way to lay command-line flags over it,
    and the method (hence the config class) must be known before the parser can be built; turning the preset into
    flags keeps one parse, with argparse's own type conversion and errors for both sources."""
    import yaml

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=str(default_config))
    pre.add_argument("--method")
    known, rest = pre.parse_known_args(argv)
    preset = yaml.safe_load(Path(known.config).read_text()) or {}
    preset_method = preset.pop("method", "graddiff")
    method = known.method or preset_method
    parser = make_parser(script_args_cls, method)  # an unknown method fails here, before any other message
    if method != preset_method and "retain_weight" in preset:
        # retain_weight means λ, α or γ depending on the method: a preset's value is only valid for its own method.
        print(
            f"Ignoring retain_weight={preset.pop('retain_weight')} from {known.config} (set for {preset_method}); "
            f"{method} uses its own default unless --retain_weight is given.",
            file=sys.stderr,
        )
    preset.setdefault("output_dir", f"outputs/{output_prefix}-{method}")
    if "-h" in rest or "--help" in rest:
        print_effective_help(parser, preset, known.config, method)
        raise SystemExit(0)
    return parser.parse_args_into_dataclasses(args=preset_to_argv(preset) + ["--method", method] + rest)


def preset_to_argv(values: dict[str, Any]) -> list[str]:
    """A flat YAML mapping as command-line flags (lists as several values, booleans as true/false)."""
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def announce(config: "UnlearnConfig", message: str) -> None:
    """One line per phase of a run (data, reference models, scoring, unlearning), from the main process only, so a
    user sees what the minutes between progress bars are spent on."""
    if config.process_index == 0:
        print(f"[hf-unlearn] {message}", flush=True)


def check_before_training(config: "UnlearnConfig", hub_dry_run_dir: str | None) -> Path | None:
    """Refuse what would fail after minutes of work (non-empty output_dir, Hub push without credentials, a bad
    card template, a non-empty dry-run folder). Returns the dry-run folder, if any."""
    from hf_unlearn.hub import check_card_template, check_push_to_hub
    from hf_unlearn.trainer import check_output_dir

    check_output_dir(config)
    check_push_to_hub(config)
    check_card_template()
    dry_run_dir = Path(hub_dry_run_dir) if hub_dry_run_dir else None
    if dry_run_dir is not None and dry_run_dir.is_dir() and any(dry_run_dir.iterdir()):
        raise FileExistsError(f"--hub_dry_run_dir {str(dry_run_dir)!r} is not empty; pass an empty or new folder.")
    return dry_run_dir


def prepare_in_one_process(recipe_module: str, script_args: Any, config: "UnlearnConfig") -> None:
    """Several processes: build the caches (corpus, reference models) in a separate single-process run first.

    The references are trained with a `Trainer`, which under a launcher would join the process group (DDP, DeepSpeed)
    and wait for ranks that are not training it. A clean child process (`python -m <recipe_module> --prepare_only
    true ...`, launcher variables removed) trains exactly what a one-process run would, into the same content-keyed
    cache; every rank then reads it. `script_args` must have a `prepare_only` field.
    """
    if config.process_index == 0:
        launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        env = {k: v for k, v in os.environ.items() if k not in launcher and not k.startswith("ACCELERATE_")}
        fields = {**asdict(script_args), "prepare_only": True, "seed": config.seed, "output_dir": config.output_dir}
        command = [sys.executable, "-m", recipe_module, *preset_to_argv(fields)]
        subprocess.run(command, env=env, check=True)
    config.distributed_state.wait_for_everyone()


def write_run_outputs(
    trainer: Any, config: "UnlearnConfig", script_args: Any, results: dict, dry_run_dir: Path | None, table: str
) -> None:
    """`metrics.json`, `trainer_state.json`, `unlearn_config.json` and the plots, then the adapter, processor and card
    (after the files above, so that `--push_to_hub` uploads them with it), the optional dry-run folder, and the
    printed table."""
    from hf_unlearn.plots import write_run_plots

    announce(config, f"Writing the adapter, metrics, plots and card to {config.output_dir}")
    if trainer.is_world_process_zero():
        output_dir = Path(config.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(results, indent=2))
        trainer.state.save_to_json(str(output_dir / "trainer_state.json"))  # per-step losses and diagnostics
        resolved = {"script": asdict(script_args), "config": json.loads(config.to_json_string())}
        (output_dir / "unlearn_config.json").write_text(json.dumps(resolved, indent=2))
        write_run_plots(output_dir)  # training curves (and gradient conflict, when the method logs it)
    # Also the Trainer's own `<name>_results.json` + `all_results.json`, which HF tooling and scripts read.
    for name, per_split in results.items():
        flat = {f"{split}_{metric}": value for split, values in per_split.items() for metric, value in values.items()}
        trainer.save_metrics(name, flat)
    trainer.save_model(config.output_dir)
    if dry_run_dir is not None:
        uploaded = trainer.save_for_hub(dry_run_dir)
        if trainer.is_world_process_zero():
            print(f"Dry run: {len(uploaded)} files that push_to_hub would upload written to {dry_run_dir}")
    if trainer.is_world_process_zero():
        print(table)
