"""Unlearn fictitious people (or any QA forget set) from a causal LM, scored with TOFU-style metrics: the code behind
`recipes/unlearn_llm.py` and `hf-unlearn unlearn --recipe llm`.

    # The embedded default (fictitious people, a tiny Llama trained here; no network, a few minutes on a CPU):
    accelerate launch recipes/unlearn_llm.py

    # Another method, overrides on top of the YAML preset:
    accelerate launch recipes/unlearn_llm.py --method npo --max_steps 40

    # The tiniest setting (tests, smoke runs):
    python recipes/unlearn_llm.py --corpus_preset tiny --max_steps 2

    hf-unlearn unlearn --recipe llm --method npo          # the same, one process

    # A real causal LM and a TOFU-style dataset (Hub ids or local dirs; columns question / answer, optionally
    # paraphrased_answer / perturbed_answer; splits named by --forget_split / --retain_split / ...):
    accelerate launch recipes/unlearn_llm.py --model_name_or_path ./my-llama --dataset_name ./my_tofu \
        --lora_target_modules q_proj v_proj --output_dir outputs/my-llama-forget

    # TOFU itself from a local copy (its splits forget10, retain90, holdout10, real_authors, world_facts and their
    # _perturbed versions; retain90 and holdout10 follow from forget10):
    accelerate launch recipes/unlearn_llm.py --model_name_or_path ./tofu-llama --dataset_name ./TOFU \
        --forget_split forget10 --output_dir outputs/tofu-forget10

Writes to `output_dir`: the LoRA adapter (safetensors), the tokenizer, `unlearn_config.json` (everything that was
resolved), `metrics.json` (`{"base"|"retrain"|"unlearned": {split: {metric: value}}}`), `trainer_state.json`, the
plots of `hf_unlearn.plots` (PNG) and the model card `README.md`, and prints the table. Parsing, the pre-training
checks, multi-process cache preparation and output writing are `hf_unlearn.recipes.common`'s, shared with the Whisper
recipe.
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

# Package data, so that `hf-unlearn unlearn --recipe llm` has its default from a wheel too; `recipes/llm_tiny.yaml`
# links here.
DEFAULT_CONFIG = Path(__file__).with_name("llm_tiny.yaml")
# Forget last: the evaluator computes forget quality, model utility and MIA AUC when it reaches it.
EVAL_ORDER = ("retain", "real_authors", "world_facts", "holdout", "forget")


@dataclass
class ScriptArguments(RecipeArguments):
    """What to unlearn from which model (plus `RecipeArguments`); everything else is the method's config."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Causal LM (Hub id or local dir). Default: the embedded tiny Llama, trained here."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "QA dataset (Hub name or local dir) with TOFU's columns. Default: the embedded one."},
    )
    forget_split: str = field(default="forget", metadata={"help": "Split of a user dataset to forget."})
    retain_split: str = field(
        default="retain", metadata={"help": "Split of a user dataset to retain (TOFU: forget10 implies retain90)."}
    )
    holdout_split: str | None = field(
        default="holdout", metadata={"help": "Never-trained split of a user dataset (MIA non-members), if any."}
    )
    corpus_preset: str = field(
        default="default", metadata={"help": "Size of the embedded corpus and model.", "choices": ["default", "tiny"]}
    )
    forget_people: int | None = field(
        default=None, metadata={"help": "Embedded corpus: people to forget (default 4 of 40, TOFU's forget10)."}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Longest prompt + answer in tokens (default: the model's context)."}
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Modules that get a LoRA adapter."},
    )


def make_parser(method: str) -> "HfArgumentParser":
    """`HfArgumentParser` over `ScriptArguments` and the method's config (its fields are the method's flags)."""
    from .common import make_parser as recipe_parser

    return recipe_parser(ScriptArguments, method)


def parse_args(argv: list[str]) -> tuple[ScriptArguments, "UnlearnConfig"]:
    """YAML preset (`--config`, default the embedded one) first, command line on top (argparse keeps the last flag)."""
    from .common import parse_recipe_args

    return parse_recipe_args(argv, ScriptArguments, DEFAULT_CONFIG, output_prefix="llm_tiny")


def load_data_and_models(script_args: ScriptArguments, seed: int):
    """(splits, tokenizer, base model, exact-retrain model or None)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_unlearn.data.text_corpus import TextCorpusConfig, build_text_corpus, load_user_qa_dataset

    from .common import pretrained_kwargs

    if script_args.dataset_name is not None:
        splits = load_user_qa_dataset(
            script_args.dataset_name,
            config_name=script_args.dataset_config,
            forget_split=script_args.forget_split,
            retain_split=script_args.retain_split,
            holdout_split=script_args.holdout_split,
        )
    else:
        tiny = script_args.corpus_preset == "tiny"
        overrides = {} if script_args.forget_people is None else {"forget_people": script_args.forget_people}
        corpus_config = TextCorpusConfig.tiny(**overrides) if tiny else TextCorpusConfig(**overrides)
        splits = dict(build_text_corpus(corpus_config, cache_dir=script_args.cache_dir))

    if script_args.model_name_or_path is not None:
        tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path, revision=script_args.model_revision)
        model = AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path, **pretrained_kwargs(script_args))
        return splits, tokenizer, model, None
    if script_args.dataset_name is not None:
        raise SystemExit("A user dataset needs --model_name_or_path: the embedded tiny Llama only knows its corpus.")

    from hf_unlearn.models.text_reference import (
        TINY_TEST_LLAMA,
        TextReferenceTrainingConfig,
        tokenizer_for_text_corpus,
        train_text_reference_model,
    )

    tiny = script_args.corpus_preset == "tiny"
    training = TextReferenceTrainingConfig.tiny(seed=seed) if tiny else TextReferenceTrainingConfig(seed=seed)
    model_overrides = TINY_TEST_LLAMA if tiny else None
    tokenizer = tokenizer_for_text_corpus(splits)
    paths = {}
    kinds = ("base", "retrain") if script_args.train_retrain_reference else ("base",)
    for kind in kinds:
        paths[kind] = train_text_reference_model(
            splits, kind, tokenizer, model_overrides, training_config=training, cache_dir=script_args.cache_dir
        )
    tokenizer = AutoTokenizer.from_pretrained(paths["base"])
    model = AutoModelForCausalLM.from_pretrained(paths["base"])
    retrain = AutoModelForCausalLM.from_pretrained(paths["retrain"]) if "retrain" in paths else None
    return splits, tokenizer, model, retrain


def main(script_args: ScriptArguments, config: "UnlearnConfig") -> dict[str, dict[str, dict[str, float]]]:
    """Train, evaluate and save one unlearning run; returns the `metrics.json` content (on every process)."""
    from hf_unlearn import METHODS
    from hf_unlearn.data.text_collators import QACollator, ensure_pad_token
    from hf_unlearn.data.text_corpus import RETAIN_EVAL_SPLIT
    from hf_unlearn.eval.report import metrics_table, run_table
    from hf_unlearn.eval.text_evaluator import TextEvaluator, evaluate_text_splits, truth_ratios
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
        prepare_in_one_process("hf_unlearn.recipes.llm", script_args, config)
    announce(
        config, "Loading the data and models (the embedded corpus and reference models are built once, then cached)"
    )
    with whole_model_loading():
        splits, tokenizer, model, retrain_model = load_data_and_models(script_args, config.seed)
    ensure_pad_token(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    max_length = script_args.max_length or getattr(model.config, "max_position_embeddings", None)
    # A user dataset's retain evaluation subset (TOFU's retain_perturbed) is scored as retain; training uses all.
    scored = dict(splits)
    if RETAIN_EVAL_SPLIT in scored:
        scored["retain"] = scored.pop(RETAIN_EVAL_SPLIT)
    eval_splits = {name: scored[name] for name in EVAL_ORDER if name in scored}
    eval_splits.update({name: data for name, data in scored.items() if name not in eval_splits})
    # Each greedy answer may run to its reference's length + a margin (no fixed budget that cuts long answers).
    # Without generate (eval_generate=False) every model is scored by its mean per-example loss only.
    evaluator = TextEvaluator(tokenizer, max_length=max_length) if config.eval_generate else None
    collator = QACollator(tokenizer, max_length=max_length)

    results = {}
    if retrain_model is not None and evaluator is None:
        announce(config, "Scoring the exact-retrain model on every split (loss only)")
        retrain_model.to(config.device)
        batch_size = config.per_device_eval_batch_size
        results["retrain"] = {
            name: {"loss": mean_example_loss(retrain_model, data, collator, batch_size)}
            for name, data in eval_splits.items()
        }
        retrain_model.to("cpu")
    elif retrain_model is not None:
        announce(config, "Scoring the exact-retrain model on every split")
        retrain_model.to(config.device)
        # Forget quality of every model is measured against the retrain model's truth ratios (its own is then 1).
        retrain_model.eval()
        forget_records = evaluator.per_example(retrain_model, eval_splits["forget"], config.per_device_eval_batch_size)
        evaluator.reference_truth_ratios = truth_ratios(forget_records)
        results["retrain"] = evaluate_text_splits(
            retrain_model, evaluator, eval_splits, config.per_device_eval_batch_size
        )
        # The other models are scored against it: the reference-model attack (it stays on the device for that)
        # and privleak (relative to its forget Min-K% AUC).
        evaluator.reference_model = retrain_model
        evaluator.reference_min_k_auc = results["retrain"].get("forget", {}).get("mia_min_k_auc")

    trainer_cls = METHODS[script_args.method][1]
    trainer = trainer_cls(
        model=model,
        args=config,
        forget_dataset=splits["forget"],
        retain_dataset=splits.get("retain"),
        eval_dataset=eval_splits,
        data_collator=collator,
        processing_class=tokenizer,
        peft_config=lora_config(script_args, script_args.lora_target_modules, task_type="CAUSAL_LM"),
        evaluator=evaluator,
    )

    def by_split(flat: dict[str, float]) -> dict[str, dict[str, float]]:
        nested: dict[str, dict[str, float]] = {}
        for name in eval_splits:
            prefix = f"eval_{name}_"
            nested[name] = {key[len(prefix) :]: value for key, value in flat.items() if key.startswith(prefix)}
        return nested

    # The fresh adapter is a no-op (peft initialises lora_B to zero), so this scores the base model.
    announce(config, "Scoring the base model on every split")
    results = {"base": by_split(trainer.evaluate()), **results}
    datasets = [script_args.dataset_name] if script_args.dataset_name else None
    trainer.set_card_info(metrics=results, datasets=datasets)  # checkpoint cards show base/retrain already
    final = unlearn(trainer, config, script_args, results, "rougeL_recall")
    results["unlearned"] = by_split(final)
    trainer.set_card_info(metrics=results)
    table = run_table(results) if config.eval_generate else metrics_table(results, ("loss",))
    write_run_outputs(trainer, config, script_args, results, dry_run_dir, table)
    return results


def run(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Parse `argv` (default `sys.argv[1:]`) as the recipe's command line and run it: the scripts' entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return main(*parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    run()
