"""Forget a class, or a random subset, from an image classifier, scored as the SalUn and OrthoGrad image tables are:
the code behind `recipes/unlearn_classifier.py` and `hf-unlearn unlearn --recipe classifier`.

    # The embedded default (scikit-learn's digits, a tiny ResNet trained here; no network, < 2 min on a CPU):
    accelerate launch recipes/unlearn_classifier.py

    # Random forgetting of 10 % of the training images, another method:
    accelerate launch recipes/unlearn_classifier.py --task random --method salun

    hf-unlearn unlearn --recipe classifier --method scrub        # the same, one process

    # A checkpoint and an image-classification dataset (Hub ids or local dirs; columns image / label). A checkpoint
    # whose head does not match the dataset's classes is first fine-tuned into base and exact-retrain references:
    accelerate launch recipes/unlearn_classifier.py --model_name_or_path microsoft/resnet-18 \
        --dataset_name uoft-cs/cifar10 --train_references true --forget_class 0 --output_dir outputs/resnet18-forget

Writes to `output_dir` what the other recipes write (the model, its image processor, `unlearn_config.json`,
`metrics.json`, `trainer_state.json`, plots, model card) and prints the table. `metrics.json` is
`{"base"|"retrain"|"unlearned": {"forget"|"retain"|"test"[|"forget_test"]: {"accuracy": float}, "mia_efficacy": float},
"avg_gap": float, "uis": float}` (`avg_gap` of the unlearned model against the exact-retrain one, `null` without it;
`base_avg_gap` the same for the model before unlearning).
"""

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import RecipeArguments


if TYPE_CHECKING:
    from transformers import HfArgumentParser

    from hf_unlearn.configs import UnlearnConfig

# Package data, so that `hf-unlearn unlearn --recipe classifier` has its default from a wheel too.
DEFAULT_CONFIG = Path(__file__).with_name("classifier_digits.yaml")
EVAL_ORDER = ("forget", "retain", "test", "forget_test")


@dataclass
class ScriptArguments(RecipeArguments):
    """What to forget from which classifier (plus `RecipeArguments`); everything else is the method's config."""

    task: str = field(
        default="class",
        metadata={
            "help": "'class': forget one class; 'random': forget a random subset.",
            "choices": ["class", "random"],
        },
    )
    forget_class: int = field(default=3, metadata={"help": "--task class: the label to forget."})
    forget_fraction: float = field(
        default=0.1, metadata={"help": "--task random: share of the training images to forget, in (0, 1)."}
    )
    retain_fraction: float = field(
        default=1.0,
        metadata={
            "help": "Share of the retain images the method trains on, in (0, 1] (seeded, stratified; OrthoGrad's small "
            "retain set). Metrics and the exact-retrain reference use all of them."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Image classifier (Hub id or local dir). Default: the embedded tiny ResNet, trained here."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Image-classification dataset (Hub name or local dir; image/label). Default: the digits."},
    )
    test_split: str = field(
        default="test",
        metadata={
            "help": "Held-out split that TA and the MIA's non-members come from (a user dataset without it: a seeded fifth of "
            "train). The embedded digits also have 'validation', for choosing hyper-parameters without the test set."
        },
    )
    train_references: bool = field(
        default=False,
        metadata={
            "help": "With --model_name_or_path: fine-tune the checkpoint on all training images (base) and without "
            "the forget set (exact retrain) first; needed when its head does not match the dataset's classes."
        },
    )
    reference_epochs: int | None = field(
        default=None,
        metadata={
            "help": "Epochs of the from-scratch base and exact-retrain training (default: ClassifierTrainingConfig's "
            "20); fewer give quick smoke tests (`compare_methods.py --quick`). Each value is cached apart."
        },
    )
    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train a LoRA adapter (peft) instead of every weight; the papers' image tables fine-tune all."
        },
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["convolution"], metadata={"help": "--use_peft: modules that get an adapter."}
    )
    freeze_batch_norm: bool = field(
        default=True,
        metadata={"help": "Unlearn with BatchNorm in eval mode (running statistics): needed by OrthoGrad, GRU, LUR."},
    )


def make_parser(method: str) -> "HfArgumentParser":
    """`HfArgumentParser` over `ScriptArguments` and the method's config (its fields are the method's flags)."""
    from .common import make_parser as recipe_parser

    return recipe_parser(ScriptArguments, method)


def parse_args(argv: list[str]) -> tuple[ScriptArguments, "UnlearnConfig"]:
    """YAML preset (`--config`, default the embedded one) first, command line on top (argparse keeps the last flag)."""
    from .common import parse_recipe_args

    return parse_recipe_args(argv, ScriptArguments, DEFAULT_CONFIG, output_prefix="classifier_digits")


def load_splits(script_args: ScriptArguments, seed: int) -> dict[str, Any]:
    """The task's splits (`forget`, `retain`, `test`, class-wise `forget_test`; `retain_train` with
    `--retain_fraction` < 1) with `id`, `image`, `label` columns."""
    from datasets import Dataset, DatasetDict

    from hf_unlearn.data.digits import build_digits_dataset, forget_splits, load_image_dataset, retain_subset

    if not 0 < script_args.forget_fraction < 1:
        raise ValueError(
            f"--forget_fraction must be in (0, 1), got {script_args.forget_fraction}: e.g. 0.1 forgets 10 % of train."
        )
    if script_args.reference_epochs is not None and script_args.reference_epochs < 1:
        raise ValueError(f"--reference_epochs must be >= 1, got {script_args.reference_epochs}.")
    if not 0 < script_args.retain_fraction <= 1:
        raise ValueError(
            f"--retain_fraction must be in (0, 1], got {script_args.retain_fraction}: e.g. 0.01 trains on 1 % of the "
            "retain images."
        )
    if script_args.dataset_name is None:
        digits = build_digits_dataset(cache_dir=script_args.cache_dir)
        if script_args.test_split not in digits or script_args.test_split == "train":
            raise ValueError(
                f"--test_split {script_args.test_split!r}: the embedded digits hold out 'test' and 'validation'; "
                "pass one of them."
            )
        dataset = DatasetDict({"train": digits["train"], "test": digits[script_args.test_split]})
    else:
        dataset = load_image_dataset(script_args.dataset_name, script_args.dataset_config, script_args.test_split)
    if "id" not in dataset["train"].column_names:
        # Ids name the rows in the reference caches and the model card's forget fingerprint.
        dataset["train"] = dataset["train"].add_column("id", [f"train-{i}" for i in range(len(dataset["train"]))])
    splits = forget_splits(dataset, script_args.task, script_args.forget_class, script_args.forget_fraction, seed=seed)
    if script_args.retain_fraction < 1:
        # What the method trains on; `retain` itself stays whole for the metrics and the exact-retrain reference.
        splits["retain_train"] = retain_subset(splits["retain"], script_args.retain_fraction, seed=seed)
    return {name: split for name, split in splits.items() if isinstance(split, Dataset)}


def num_classes(splits: dict[str, Any]) -> int:
    """Classes of the dataset: its `ClassLabel`'s count, else the largest label + 1."""
    feature = splits["retain"].features["label"]
    if hasattr(feature, "num_classes"):
        return int(feature.num_classes)
    return 1 + max(max(split["label"]) for split in splits.values() if len(split))


def load_models(script_args: ScriptArguments, splits: dict[str, Any], seed: int):
    """(base model, image processor, exact-retrain model or None)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    from hf_unlearn.models.tiny_classifier import ClassifierTrainingConfig, train_classifier_reference, training_rows

    from .common import pretrained_kwargs

    classes = num_classes(splits)
    checkpoint = script_args.model_name_or_path
    if checkpoint is not None and not script_args.train_references:
        head = AutoConfig.from_pretrained(checkpoint, revision=script_args.model_revision).num_labels
        if head != classes:
            raise ValueError(
                f"{checkpoint} has a head of {head} classes but the dataset has {classes}: pass "
                "--train_references true to fine-tune it on the data first (base and exact-retrain references), or a "
                "checkpoint already trained on these classes."
            )
        return (
            AutoModelForImageClassification.from_pretrained(checkpoint, **pretrained_kwargs(script_args)),
            AutoImageProcessor.from_pretrained(checkpoint, revision=script_args.model_revision),
            None,
        )
    epochs = {} if script_args.reference_epochs is None else {"num_train_epochs": script_args.reference_epochs}
    training = ClassifierTrainingConfig(seed=seed, **epochs)
    kinds = ("base", "retrain") if script_args.train_retrain_reference else ("base",)
    paths = {
        kind: train_classifier_reference(
            training_rows(splits["forget"], splits["retain"], kind),
            kind,
            num_labels=classes,
            training_config=training,
            cache_dir=script_args.cache_dir,
            model_name_or_path=checkpoint,
        )
        for kind in kinds
    }
    model = AutoModelForImageClassification.from_pretrained(paths["base"])
    retrain = AutoModelForImageClassification.from_pretrained(paths["retrain"]) if "retrain" in paths else None
    return model, AutoImageProcessor.from_pretrained(paths["base"]), retrain


def card_metrics(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """`metrics.json` in the `{model: {split: {metric: value}}}` shape of the model card (MIA as a pseudo-split)."""
    card = {}
    for name in ("base", "retrain", "unlearned"):
        if name in results:
            per_model = {k: dict(v) for k, v in results[name].items() if isinstance(v, dict)}
            per_model["mia"] = {"efficacy": results[name]["mia_efficacy"]}
            card[name] = per_model
    return card


def main(script_args: ScriptArguments, config: "UnlearnConfig") -> dict[str, Any]:
    """Train, evaluate and save one unlearning run; returns the `metrics.json` content (on every process)."""
    from hf_unlearn import METHODS
    from hf_unlearn.eval.classification import (
        ClassificationEvaluator,
        avg_gap,
        classification_metrics,
        classification_table,
        unlearning_impact_score,
    )
    from hf_unlearn.integrations.transformers import whole_model_loading
    from hf_unlearn.models.batch_norm import freeze_batch_norm
    from hf_unlearn.models.tiny_classifier import (
        ImageClassificationCollator,
        add_pixel_values,
        check_labels_fit,
        model_num_channels,
    )

    from .common import (
        add_stopping,
        check_before_training,
        lora_config,
        prepare_in_one_process,
        write_run_outputs,
    )

    # Bad arguments fail before any image is processed or model trained.
    splits = load_splits(script_args, config.seed)
    if script_args.prepare_only:
        load_models(script_args, splits, config.seed)
        return {}
    dry_run_dir = check_before_training(config, script_args.hub_dry_run_dir, script_args.model_name_or_path)
    if config.world_size > 1:
        prepare_in_one_process("hf_unlearn.recipes.classifier", script_args, config)
    with whole_model_loading():
        model, processor, retrain_model = load_models(script_args, splits, config.seed)
    num_labels = int(model.config.num_labels)
    check_labels_fit(splits, num_labels)
    channels = model_num_channels(model)
    eval_splits = {name: add_pixel_values(splits[name], processor, channels) for name in EVAL_ORDER if name in splits}
    train_retain = (
        add_pixel_values(splits["retain_train"], processor, channels)
        if "retain_train" in splits
        else eval_splits["retain"]
    )
    collator = ImageClassificationCollator(num_labels)
    batch_size = config.per_device_eval_batch_size

    results: dict[str, Any] = {}
    if retrain_model is not None:
        retrain_model.to(config.device)
        results["retrain"] = classification_metrics(retrain_model, eval_splits, collator, batch_size, config.seed)
        retrain_model.to("cpu")
    if script_args.freeze_batch_norm:
        freeze_batch_norm(model)
    # The new head is trained whole beside the adapter (modules_to_save), as peft does for a replaced classifier.
    peft_config = lora_config(script_args, script_args.lora_target_modules, modules_to_save=["classifier"])
    trainer = METHODS[script_args.method][1](
        model=model,
        args=config,
        forget_dataset=eval_splits["forget"],
        retain_dataset=train_retain,
        eval_dataset=eval_splits,
        data_collator=collator,
        processing_class=processor,
        peft_config=peft_config,
        evaluator=ClassificationEvaluator(collator),
    )
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    results = {"base": classification_metrics(unwrapped, eval_splits, collator, batch_size, config.seed), **results}
    trainer.set_card_info(
        metrics=card_metrics(results), datasets=[script_args.dataset_name] if script_args.dataset_name else None
    )
    # --stop_at_target: stop at the exact-retrain model's forget accuracy (or a number) and keep the closest checkpoint.
    stop = add_stopping(trainer, config, script_args, results, "accuracy")
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    results["unlearned"] = classification_metrics(unwrapped, eval_splits, collator, batch_size, config.seed)
    results["avg_gap"] = avg_gap(results["unlearned"], results["retrain"]) if "retrain" in results else None
    results["base_avg_gap"] = avg_gap(results["base"], results["retrain"]) if "retrain" in results else None
    results["uis"] = unlearning_impact_score(results["base"], results["unlearned"], script_args.task)
    if stop is not None:
        state = trainer.state
        results["stop_at_target"] = {
            "target": stop.target,
            "reached_step": stop.reached_step,
            "restored_step": state.best_global_step or state.global_step,
            "last_step": state.global_step,
        }
    trainer.set_card_info(metrics=card_metrics(results))
    write_run_outputs(trainer, config, script_args, results, dry_run_dir, classification_table(results))
    return results


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `argv` (default `sys.argv[1:]`) as the recipe's command line and run it: the scripts' entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return main(*parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    run()
