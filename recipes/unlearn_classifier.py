"""Forget a class or a random subset from an image classifier (the code is `hf_unlearn.recipes.classifier`, also
`hf-unlearn unlearn --recipe classifier`).

    # The embedded default (scikit-learn's digits, a tiny ResNet trained here; no network, < 2 min on a CPU):
    accelerate launch recipes/unlearn_classifier.py

    # Random forgetting (10 % of the training images), another method, overrides on top of the YAML preset
    # (recipes/classifier_digits.yaml):
    accelerate launch recipes/unlearn_classifier.py --task random --method salun

    # A checkpoint and an image-classification dataset (Hub ids or local dirs; columns image / label):
    accelerate launch recipes/unlearn_classifier.py --model_name_or_path microsoft/resnet-18 \
        --dataset_name uoft-cs/cifar10 --train_references true --forget_class 0 --output_dir outputs/resnet18-forget

Writes to `output_dir`: the model, its image processor, `unlearn_config.json`, `metrics.json` (accuracy of every
split, MIA-efficacy, Avg-Gap, UIS), `trainer_state.json`, the plots (PNG) and the model card `README.md`, and prints
the table.
"""

from hf_unlearn.recipes.classifier import ScriptArguments, main, make_parser, parse_args, run


__all__ = ["ScriptArguments", "main", "make_parser", "parse_args", "run"]

if __name__ == "__main__":
    run()
