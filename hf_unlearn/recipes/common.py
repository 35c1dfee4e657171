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
import time
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
        default="graddiff",
        metadata={"help": "Unlearning method: ga, graddiff, npo, simnpo, orthograd, gru, lur, salun, scrub."},
    )
    train_retrain_reference: bool = field(
        default=True, metadata={"help": "Embedded default: also train (and cache) the exact-retrain reference."}
    )
    dataset_config: str | None = field(
        default=None,
        metadata={"help": "Configuration (subset) of a Hub dataset given by --dataset_name (trl's flag)."},
    )
    model_revision: str = field(
        default="main", metadata={"help": "Branch, tag or commit of a Hub --model_name_or_path (trl's flag)."}
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Dtype the --model_name_or_path weights load in (trl's flag); default: as saved.",
            "choices": ["auto", "float32", "bfloat16", "float16"],
        },
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
    stop_at_target: str | None = field(
        default=None,
        metadata={
            "help": "Stop once the forget metric (speech WER, text ROUGE-L recall) reaches this value, 'retrain' (the "
            "exact-retrain model's) or a number, checked every eval_steps; the closest checkpoint is restored."
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


def pretrained_kwargs(script_args: RecipeArguments) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for a user's `--model_name_or_path` (revision, and dtype when given)."""
    kwargs: dict[str, Any] = {"revision": script_args.model_revision}
    if script_args.dtype is not None:
        import torch

        kwargs["dtype"] = script_args.dtype if script_args.dtype == "auto" else getattr(torch, script_args.dtype)
    return kwargs


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
        "--recipe whisper|llm|classifier (which recipe) and --debug (show tracebacks). The defaults shown are the preset's "
        "where it sets the field."
    )
    parser.usage = f"{parser.prog} [--config PATH] [--method METHOD] [--FIELD VALUE ...]"
    parser.print_help()


def parse_recipe_args(
    argv: list[str], script_args_cls: type, default_config: Path, output_prefix: str
) -> tuple[Any, "UnlearnConfig"]:
    """`(script_args, method_config)` from the YAML preset (`--config`, default `default_config`), then the command
    line on top (argparse keeps the last occurrence of a flag).

    Resolved here, before any training time: `output_dir` defaults to a fresh `outputs/<output_prefix>-<method>-<time>`
    folder (or, when resuming a checkpoint path, the folder holding it); `--save_steps N` alone turns step saving on;
    a misspelt key or flag stops with the closest valid name.

    Not `HfArgumentParser.parse_yaml_file`: it reads the YAML alone, with no way to lay command-line flags over it,
    and the method (hence the config class) must be known before the parser can be built; turning the preset into
    flags keeps one parse, with argparse's own type conversion and errors for both sources.
    """
    import yaml

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=str(default_config))
    pre.add_argument("--method")
    pre.add_argument("--stop_at_target")
    known, rest = pre.parse_known_args(argv)
    preset = yaml.safe_load(Path(known.config).read_text()) or {}
    if known.stop_at_target is not None:
        preset["stop_at_target"] = known.stop_at_target
    preset_method = preset.pop("method", "graddiff")
    method = known.method or preset_method
    parser = make_parser(script_args_cls, method)  # an unknown method fails here, before any other message
    if method != preset_method and "retain_weight" in preset:
        from hf_unlearn.methods import retain_knob

        # A preset's weight was tuned for its own method (and OrthoGrad/GRU mix the terms with retain_mix instead).
        print(
            f"Ignoring retain_weight={preset.pop('retain_weight')} from {known.config} (set for {preset_method}); "
            f"{method} uses its own default unless --{retain_knob(method)} is given.",
            file=sys.stderr,
        )
    if "-h" in rest or "--help" in rest:
        print_effective_help(parser, preset, known.config, method)
        raise SystemExit(0)
    check_known_keys(parser, preset, rest, known.config)
    given = set(preset) | set(cli_flag_names(rest))
    extra = []
    if "save_steps" in given and "save_strategy" not in given:
        extra += ["--save_strategy", "steps"]  # asking for a checkpoint every N steps means saving
    fresh_output_dir = "output_dir" not in given
    if fresh_output_dir:
        extra += ["--output_dir", default_output_dir(output_prefix, method, rest)]
    preset_argv = preset_to_argv(preset)
    if preset.get("stop_at_target") is not None:
        # After the preset, before the command line: an explicit conflicting flag is refused by the callback.
        preset_argv += stop_at_target_argv(int(preset.get("eval_steps") or 5))
    script_args, config = parser.parse_args_into_dataclasses(args=preset_argv + ["--method", method] + extra + rest)
    if fresh_output_dir:
        agree_on_output_dir(config)
    return script_args, config


def default_output_dir(output_prefix: str, method: str, cli: list[str]) -> str:
    """The folder of a run given no `--output_dir`: the one holding the checkpoint it resumes, else a new one named
    by the time (never an earlier run's folder, so nothing is overwritten)."""
    resume = cli_flag_value(cli, "resume_from_checkpoint")
    if resume is not None and Path(resume).is_dir():
        return str(Path(resume).parent)
    return f"outputs/{output_prefix}-{method}-{time.strftime('%Y%m%d-%H%M%S')}"


def agree_on_output_dir(config: "UnlearnConfig") -> None:
    """Several processes each named the fresh folder by their own clock: take rank 0's."""
    import torch.distributed as dist

    _ = config.device  # sets up the process group under a launcher
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        chosen = [config.output_dir]
        dist.broadcast_object_list(chosen, src=0)
        config.output_dir = chosen[0]


def cli_flag_names(cli: list[str]) -> list[str]:
    """Field names of the `--flags` in `cli` (`--a-b=1` → `a_b`)."""
    return [item[2:].split("=", 1)[0].replace("-", "_") for item in cli if item.startswith("--") and len(item) > 2]


def cli_flag_value(cli: list[str], name: str) -> str | None:
    """The value of the last `--name VALUE` (or `--name=VALUE`) in `cli`."""
    value = None
    for i, item in enumerate(cli):
        if item == f"--{name}" and i + 1 < len(cli):
            value = cli[i + 1]
        elif item.startswith(f"--{name}="):
            value = item.split("=", 1)[1]
    return value


def check_known_keys(parser: "HfArgumentParser", preset: dict[str, Any], cli: list[str], config_path: str) -> None:
    """Stop on a YAML key or flag that no field has, naming the closest valid one (argparse alone would print a
    usage line, and HfArgumentParser a traceback)."""
    import dataclasses
    import difflib

    valid = {"config", "method", "help"}
    for dataclass_type in parser.dataclass_types:
        for dataclass_field in dataclasses.fields(dataclass_type):
            valid.add(dataclass_field.name)
            if dataclass_field.default is True:
                valid.add(f"no_{dataclass_field.name}")  # HfArgumentParser's negation of a default-True flag
    problems = []
    for key in preset:
        if key not in valid:
            problems.append((f"key {key!r} in {config_path}", key))
    for name in cli_flag_names(cli):
        prefixed = [option for option in valid if option.startswith(name)]
        if name not in valid and len(prefixed) != 1:  # argparse takes an unambiguous prefix
            problems.append((f"flag --{name}", name))
    if problems:
        lines = []
        for where, name in problems:
            close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
            lines.append(f"Unknown {where}" + (f"; did you mean {close[0]!r}?" if close else "; see --help."))
        raise SystemExit("\n".join(lines))


def stop_at_target_argv(eval_steps: int) -> list[str]:
    """The `TrainingArguments` flags `StopAtForgetTarget` needs (evaluate every `eval_steps`, keep the closest)."""
    from hf_unlearn.callbacks import StopAtForgetTarget

    return preset_to_argv(StopAtForgetTarget.training_arguments(eval_steps))


def stop_at_target_callback(stop_at_target: str | None, results: dict, metric: str) -> Any:
    """`StopAtForgetTarget` on the forget split's `metric` for `--stop_at_target` (`None` without it); `'retrain'`
    reads the target from the exact-retrain model's scores in `results`."""
    from hf_unlearn.callbacks import StopAtForgetTarget

    if stop_at_target is None:
        return None
    if stop_at_target == "retrain":
        if "retrain" not in results:
            raise ValueError(
                "--stop_at_target retrain needs the exact-retrain model's scores: keep --train_retrain_reference true "
                "(embedded benchmarks) or give the target as a number."
            )
        return StopAtForgetTarget(target=results["retrain"]["forget"][metric], metric=metric)
    try:
        target = float(stop_at_target)
    except ValueError:
        raise ValueError(f"--stop_at_target must be 'retrain' or a number, got {stop_at_target!r}.") from None
    return StopAtForgetTarget(target=target, metric=metric)


# GA is the one method whose default cannot be made safe: it has no retain term and no weight, and its loss has no
# floor, so at any fixed budget it ascends until the model babbles (benchmarks/results/default_stability.md).
UNBOUNDED_GA_NOTE = (
    "ga has no retain term and an unbounded loss: at a fixed step budget it ends in a model that babbles on every "
    "embedded benchmark. Add --stop_at_target retrain (or a forget-metric value) to stop it at a forget level."
)


def add_stopping(trainer: Any, config: "UnlearnConfig", script_args: Any, results: dict, metric: str) -> Any:
    """Add `--stop_at_target`'s callback to `trainer` and return it (`None` without the flag); without one, a GA run
    says that its step budget alone will not stop it."""
    stop = stop_at_target_callback(script_args.stop_at_target, results, metric)
    if stop is not None:
        trainer.add_callback(stop)
    elif script_args.method == "ga":
        announce(config, UNBOUNDED_GA_NOTE)
    return stop


def unlearn(trainer: Any, config: "UnlearnConfig", script_args: Any, results: dict, forget_metric: str) -> dict:
    """Train (resuming when asked, stopping at `--stop_at_target` on the forget split's `forget_metric`, the loss in
    a loss-only run) and return the metrics of the model the run ends with."""
    metric = forget_metric if config.eval_generate else "loss"
    add_stopping(trainer, config, script_args, results, metric)
    announce(config, f"Unlearning with {script_args.method} ({config.max_steps} steps)")
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    return final_evaluation(trainer, "eval_forget_loss")


def final_evaluation(trainer: Any, key: str) -> dict[str, float]:
    """Metrics of the model the run ends with: the logged evaluation of the restored best checkpoint
    (`load_best_model_at_end`) or of the last step, else a fresh evaluation."""
    state = trainer.state
    step = state.global_step
    if trainer.args.load_best_model_at_end and state.best_global_step:
        step = state.best_global_step
    final = next((e for e in reversed(state.log_history) if key in e and e.get("step") == step), None)
    return final if final is not None else trainer.evaluate()


def flat_metrics(nested: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """`{split: {metric: value}}` (any depth) as `{"split_metric": value}`, the shape `Trainer.save_metrics` writes."""
    flat: dict[str, float] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{prefix}{key}_"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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


def check_before_training(
    config: "UnlearnConfig", hub_dry_run_dir: str | None, model_name_or_path: str | None = None
) -> Path | None:
    """Refuse what would fail after minutes of work (nothing to resume from, an output_dir with files the run could
    replace, a model path that is missing or a Hub id that cannot be fetched, Hub push without credentials, a bad
    card template, a non-empty dry-run folder). Returns the dry-run folder, if any."""
    from hf_unlearn.checkpoints import resolve_resume_checkpoint
    from hf_unlearn.hub import check_card_template, check_push_to_hub
    from hf_unlearn.trainer import check_output_dir

    resolve_resume_checkpoint(config.resume_from_checkpoint, config.output_dir)  # raises if nothing to resume
    check_output_dir(config, config.resume_from_checkpoint)
    check_model_source(model_name_or_path)
    check_push_to_hub(config)
    check_card_template()
    dry_run_dir = Path(hub_dry_run_dir) if hub_dry_run_dir else None
    if dry_run_dir is not None and dry_run_dir.is_dir() and any(dry_run_dir.iterdir()):
        raise FileExistsError(f"--hub_dry_run_dir {str(dry_run_dir)!r} is not empty; pass an empty or new folder.")
    return dry_run_dir


def check_model_source(
    name_or_path: str | None, flag: str = "--model_name_or_path", probe_timeout: float = 3.0
) -> None:
    """A missing local folder, or a Hub id that cannot be fetched, stops here in seconds with the fix named.

    Without this, a mistyped path fails deep in `from_pretrained` with "Repo id must be in the form ...", and a Hub
    id without network retries for minutes. A Hub id already in the local Hub cache is always accepted.
    """
    if name_or_path is None or Path(name_or_path).expanduser().exists():
        return
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path
    if looks_local:
        raise SystemExit(f"{flag} {name_or_path!r}: no such folder. Check the path (a Hub id looks like 'org/name').")
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise SystemExit(
            f"{flag} {name_or_path!r} is a Hub id, but HF_HUB_OFFLINE is set and it is not in the local Hub cache: "
            "pass a local folder, or unset HF_HUB_OFFLINE on a machine with network to download it."
        )
    if not hub_reachable(constants.ENDPOINT, probe_timeout):
        raise SystemExit(
            f"{flag} {name_or_path!r} is a Hub id, but {constants.ENDPOINT} cannot be reached and it is not in the "
            "local Hub cache: pass a local folder, or connect (set HF_HUB_OFFLINE=1 to fail at once next time)."
        )


def hub_reachable(endpoint: str, timeout: float) -> bool:
    """Whether a TCP connection to the Hub opens within `timeout` seconds (one try, no retries)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


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


def mean_example_loss(model: Any, dataset: Any, collator: Any, batch_size: int) -> float:
    """Mean per-example loss of `model` (not the trainer's) on `dataset`: how a recipe scores the exact-retrain
    reference with `--eval_generate false`."""
    import torch

    from hf_unlearn.losses import model_per_example_loss

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
            losses.append(model_per_example_loss(model, batch, model.config).float())
    model.train(was_training)
    return float(torch.cat(losses).mean())


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
    # Also the Trainer's own `<model>_results.json` + `all_results.json`, which HF tooling and scripts read;
    # top-level scores of the run (a classifier's avg_gap, uis) go to `summary_results.json`.
    summary = {name: value for name, value in results.items() if not isinstance(value, dict)}
    for name, per_model in results.items():
        if isinstance(per_model, dict):
            trainer.save_metrics(name, flat_metrics(per_model))
    if summary:
        trainer.save_metrics("summary", summary)
    trainer.save_model(config.output_dir)
    if dry_run_dir is not None:
        uploaded = trainer.save_for_hub(dry_run_dir)
        if trainer.is_world_process_zero():
            print(f"Dry run: {len(uploaded)} files that push_to_hub would upload written to {dry_run_dir}")
    if trainer.is_world_process_zero():
        print(table)
