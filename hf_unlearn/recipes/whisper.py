"""Unlearn one speaker from a Whisper model: the code behind `recipes/unlearn_whisper.py` and `hf-unlearn unlearn`.

    # The embedded default (synthetic speakers, a tiny Whisper trained here; no network, a few minutes on a CPU):
    accelerate launch recipes/unlearn_whisper.py
    hf-unlearn unlearn                      # the same, one process

    # Another method, another speaker, overrides on top of the YAML preset:
    accelerate launch recipes/unlearn_whisper.py --method npo --forget_speaker speaker_3 --max_steps 60

    # A real checkpoint and dataset (Hub id or local path; columns audio / text / speaker_id):
    accelerate launch recipes/unlearn_whisper.py --model_name_or_path openai/whisper-small \
        --dataset_name ./my_speech_dataset --forget_speaker 1234 --output_dir outputs/whisper-small-forget-1234

    # Push the adapter, processor and model card (checked before any training: needs a token and a repo id):
    accelerate launch recipes/unlearn_whisper.py --push_to_hub --hub_model_id your-name/whisper-tiny-forget-speaker0
    # ... or write exactly what would be uploaded into a folder, without any network:
    accelerate launch recipes/unlearn_whisper.py --hub_dry_run_dir outputs/hub_upload

Writes to `output_dir`: the LoRA adapter (safetensors), the processor, `unlearn_config.json` (everything that was
resolved), `metrics.json` (`{"base"|"retrain"|"unlearned": {split: {"wer", "cer"}}}`), `trainer_state.json`
(per-step losses, evaluations and method diagnostics), the plots of `hf_unlearn.plots` (PNG) and the model card
`README.md`, and prints the table. The code lives in the package (not in `recipes/`) so that the `hf-unlearn` CLI
and `benchmarks/compare_methods.py` run exactly this code path from any install.
"""

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .common import RecipeArguments


if TYPE_CHECKING:
    from transformers import HfArgumentParser

    from hf_unlearn.configs import UnlearnConfig

# Package data, so that `hf-unlearn unlearn` has its default from a wheel too; `recipes/whisper_tiny.yaml` links here.
DEFAULT_CONFIG = Path(__file__).with_name("whisper_tiny.yaml")
SPLITS = ("forget", "forget_test", "retain", "test")


@dataclass
class ScriptArguments(RecipeArguments):
    """What to unlearn from which model (plus `RecipeArguments`); everything else is the method's config."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Whisper checkpoint (Hub id or local dir). Default: the embedded tiny Whisper, trained here."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Speech dataset (Hub name or local dir) with audio/text/speaker columns. Default: embedded."
        },
    )
    forget_speaker: str = field(default="speaker_0", metadata={"help": "Speaker whose utterances are forgotten."})
    audio_column: str = field(default="audio", metadata={"help": "Audio column of a user dataset."})
    text_column: str = field(default="text", metadata={"help": "Transcript column of a user dataset."})
    speaker_column: str = field(default="speaker_id", metadata={"help": "Speaker column of a user dataset."})
    corpus_preset: str = field(
        default="default", metadata={"help": "Size of the embedded corpus.", "choices": ["default", "tiny"]}
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        metadata={"help": "Modules that get a LoRA adapter."},
    )


def make_parser(method: str) -> "HfArgumentParser":
    """`HfArgumentParser` over `ScriptArguments` and the method's config (its fields are the method's flags)."""
    from .common import make_parser as recipe_parser

    return recipe_parser(ScriptArguments, method)


def parse_args(argv: list[str]) -> tuple[ScriptArguments, "UnlearnConfig"]:
    """YAML preset (`--config`, default the embedded one) first, command line on top (argparse keeps the last flag)."""
    from .common import parse_recipe_args

    return parse_recipe_args(argv, ScriptArguments, DEFAULT_CONFIG, output_prefix="whisper_tiny")


def load_data_and_models(script_args: ScriptArguments, seed: int):
    """(corpus, processor, base model, exact-retrain model or None)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from hf_unlearn.data import SpeechCorpusConfig, build_speech_corpus, load_user_speech_dataset
    from hf_unlearn.models.speech_benchmark_models import ReferenceTrainingConfig, train_reference_model

    from .common import pretrained_kwargs

    if script_args.dataset_name is not None:
        corpus = load_user_speech_dataset(
            script_args.dataset_name,
            forget_speaker=script_args.forget_speaker,
            audio_column=script_args.audio_column,
            text_column=script_args.text_column,
            speaker_column=script_args.speaker_column,
            **({"name": script_args.dataset_config} if script_args.dataset_config else {}),
        )
    else:
        corpus_config = SpeechCorpusConfig.tiny() if script_args.corpus_preset == "tiny" else SpeechCorpusConfig()
        corpus = build_speech_corpus(corpus_config, script_args.forget_speaker, cache_dir=script_args.cache_dir)

    if script_args.model_name_or_path is not None:
        processor = WhisperProcessor.from_pretrained(
            script_args.model_name_or_path, revision=script_args.model_revision
        )
        model = WhisperForConditionalGeneration.from_pretrained(
            script_args.model_name_or_path, **pretrained_kwargs(script_args)
        )
        return corpus, processor, model, None

    if script_args.dataset_name is not None:
        raise SystemExit("A user dataset needs --model_name_or_path: the embedded tiny Whisper only knows its corpus.")
    tiny = script_args.corpus_preset == "tiny"
    training = ReferenceTrainingConfig.tiny(seed=seed) if tiny else ReferenceTrainingConfig(seed=seed)
    base_path = train_reference_model(corpus, "base", training_config=training, cache_dir=script_args.cache_dir)
    retrain_path = None
    if script_args.train_retrain_reference:
        retrain_path = train_reference_model(
            corpus, "retrain", training_config=training, cache_dir=script_args.cache_dir
        )
    processor = WhisperProcessor.from_pretrained(base_path)
    model = WhisperForConditionalGeneration.from_pretrained(base_path)
    retrain = WhisperForConditionalGeneration.from_pretrained(retrain_path) if retrain_path else None
    return corpus, processor, model, retrain


def main(script_args: ScriptArguments, config: "UnlearnConfig") -> dict[str, dict[str, dict[str, float]]]:
    """Train, evaluate and save one unlearning run; returns the `metrics.json` content (on every process)."""
    from hf_unlearn import METHODS
    from hf_unlearn.data import SpeechSeq2SeqCollator, prepare_speech_dataset
    from hf_unlearn.eval.asr import evaluate_asr
    from hf_unlearn.integrations.transformers import whole_model_loading

    from .common import (
        announce,
        check_before_training,
        lora_config,
        mean_example_loss,
        prepare_in_one_process,
        unlearn,
        write_run_outputs,
    )

    if script_args.prepare_only:
        load_data_and_models(script_args, config.seed)
        return {}
    # Before any minute of corpus or model training is spent.
    dry_run_dir = check_before_training(config, script_args.hub_dry_run_dir, script_args.model_name_or_path)
    if config.world_size > 1:
        # Every rank below only reads the caches.
        prepare_in_one_process("hf_unlearn.recipes.whisper", script_args, config)
    announce(
        config, "Loading the data and models (the embedded corpus and reference models are built once, then cached)"
    )
    with whole_model_loading():
        corpus, processor, model, retrain_model = load_data_and_models(script_args, config.seed)
    prepared = {split: prepare_speech_dataset(corpus[split], processor) for split in SPLITS if split in corpus}

    trainer_cls = METHODS[script_args.method][1]
    trainer = trainer_cls(
        model=model,
        args=config,
        forget_dataset=prepared["forget"],
        retain_dataset=prepared["retain"],
        eval_dataset=prepared,
        data_collator=SpeechSeq2SeqCollator(processor),
        processing_class=processor,
        peft_config=lora_config(script_args, script_args.lora_target_modules),
    )

    # WER/CER need generate (eval_generate); without it every model is scored by its mean per-example loss only.
    metric_names = ("wer", "cer", "loss") if config.eval_generate else ("loss",)

    def asr_metrics(prefix_metrics: dict) -> dict:
        return {split: {m: prefix_metrics[f"eval_{split}_{m}"] for m in metric_names} for split in prepared}

    # The fresh adapter is a no-op (peft initialises lora_B to zero), so this scores the base model.
    announce(config, "Scoring the base model on every split")
    results = {"base": asr_metrics(trainer.evaluate())}
    if retrain_model is not None:
        announce(config, "Scoring the exact-retrain model on every split")
        retrain_model.to(trainer.args.device)
        results["retrain"] = {
            split: evaluate_asr(
                retrain_model, processor, data, config.per_device_eval_batch_size, config.generation_max_new_tokens
            )
            if config.eval_generate
            else {
                "loss": mean_example_loss(
                    retrain_model, data, trainer.data_collator, config.per_device_eval_batch_size
                )
            }
            for split, data in prepared.items()
        }
    datasets = [script_args.dataset_name] if script_args.dataset_name else None
    trainer.set_card_info(metrics=results, datasets=datasets)  # checkpoint cards show base/retrain already
    final = unlearn(trainer, config, script_args, results, "wer")
    results["unlearned"] = asr_metrics(final)
    trainer.set_card_info(metrics=results)

    table = run_report(results, ("wer", "cer") if config.eval_generate else ("loss",))
    write_run_outputs(trainer, config, script_args, results, dry_run_dir, table)
    return results


def retrain_gap(results: dict[str, dict[str, dict[str, float]]], model: str) -> float | None:
    """Avg-Gap: mean |WER of `model` − WER of the exact-retrain model| over `SPLITS` (0 = indistinguishable from a
    model never trained on the forget speaker); `None` without a retrain reference or with a split missing."""
    if "retrain" not in results or model not in results:
        return None
    if not all("wer" in results[m].get(split, {}) for m in (model, "retrain") for split in SPLITS):
        return None  # a split missing, or a loss-only run (eval_generate=False)
    return sum(abs(results[model][s]["wer"] - results["retrain"][s]["wer"]) for s in SPLITS) / len(SPLITS)


def run_report(results: dict[str, dict[str, dict[str, float]]], metrics: tuple[str, ...] = ("wer", "cer")) -> str:
    """The printed table of `metrics`, then the headline: each model's Avg-Gap to exact retraining (WER runs)."""
    from hf_unlearn.eval.report import metrics_table

    gaps = {model: retrain_gap(results, model) for model in results if model != "retrain"}
    gaps = {model: gap for model, gap in gaps.items() if gap is not None}
    table = metrics_table(results, metrics)
    if not gaps:
        return table
    line = ", ".join(f"{model} {gap:.3f}" for model, gap in gaps.items())
    return f"{table}\n\nAvg-Gap to exact retrain (mean |ΔWER| over {', '.join(SPLITS)}): {line}"


def run(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Parse `argv` (default `sys.argv[1:]`) as the recipe's command line and run it: the scripts' entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return main(*parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    run()
