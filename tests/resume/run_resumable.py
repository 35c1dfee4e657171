"""Train methods on a tiny GPT-2 + LoRA with a checkpoint every few steps; optionally kill -9 this very process
after (or while writing) a checkpoint, or resume. Used by test_kill_and_resume.py as a real subprocess:

    python tests/resume/run_resumable.py OUT --methods graddiff --kill_after_save 4
    python tests/resume/run_resumable.py OUT --methods graddiff --resume
"""

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import TrainerCallback


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `tests.` importable when run as a script

from tests.testing_utils import make_trainer, token_dataset  # noqa: E402


# Settings under which every term of every objective moves the adapter; the retain stream (3 batches a pass) wraps
# before and after the checkpoint, the forget stream (6 batches an epoch) too.
OVERRIDES = {
    "ga": {},
    "graddiff": {"retain_weight": 1.0},
    "npo": {"retain_weight": 1.0},
    "simnpo": {"retain_weight": 1.0},
    "orthograd": {"retain_mix": 0.5},
    "gru": {"retain_mix": 0.5},
    "lur": {"retain_weight": 1.0, "inner_lr": 0.5},
    # LUR drawing a fresh forget batch for θ' (a third stream, also saved in checkpoints), mirrored order.
    "lur_fresh": {
        "retain_weight": 1.0,
        "inner_lr": 0.5,
        "inner_batch": "fresh",
        "objective_order": "retain_then_unlearn",
    },
}
STEPS, SAVE_STEPS = 10, 4


class KillAfterSave(TrainerCallback):
    """SIGKILL this process right after the checkpoint of `step` is on disk: a crash, not a clean exit."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def train(
    method: str,
    output_dir: Path,
    resume: bool | str = False,
    kill_after_save: int | None = None,
    kill_while_saving: int | None = None,
) -> None:
    trainer = make_trainer(
        method.split("_")[0],
        output_dir,
        forget=token_dataset(12, seed=1),
        retain=token_dataset(10, seed=2),
        peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj"], init_lora_weights=False),
        callbacks=[KillAfterSave(kill_after_save)] if kill_after_save else None,
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        per_device_retain_batch_size=3,
        max_steps=STEPS,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        learning_rate=0.05,
        **OVERRIDES[method],
    )
    if kill_while_saving is not None:
        save_rng_state = trainer._save_rng_state

        def killed_midway(folder):  # the model and optimizer of this checkpoint are written, the rest is not
            if trainer.state.global_step == kill_while_saving:
                os.kill(os.getpid(), signal.SIGKILL)
            save_rng_state(folder)

        trainer._save_rng_state = killed_midway
    trainer.train(resume_from_checkpoint=resume or None)
    trainer.save_model(str(output_dir))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_root", type=Path)
    parser.add_argument("--methods", nargs="+", default=list(OVERRIDES), choices=list(OVERRIDES))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill_after_save", type=int)
    parser.add_argument("--kill_while_saving", type=int)
    cli = parser.parse_args()
    torch.set_num_threads(1)  # the same reduction order in every run
    for method in cli.methods:
        train(method, cli.output_root / method, cli.resume, cli.kill_after_save, cli.kill_while_saving)


if __name__ == "__main__":
    main()
