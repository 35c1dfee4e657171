"""`StopAtForgetTarget` on a tiny GPT-2: stops at the target, restores the closest checkpoint, refuses bad setups."""

import pytest

from hf_unlearn import StopAtForgetTarget

from .testing_utils import EXACT_SGD, gpt2_lora_config, token_dataset
from .testing_utils import make_trainer as shared_make_trainer


STEPS = 6


def make_trainer(tmp_path, callbacks=(), **overrides):
    return shared_make_trainer(
        "graddiff",
        tmp_path,
        forget=token_dataset(8, seed=1),
        retain=token_dataset(8, seed=2),
        eval_dataset={"forget": token_dataset(8, seed=1), "retain": token_dataset(8, seed=2)},
        peft_config=gpt2_lora_config(),
        callbacks=list(callbacks),
        **{
            **EXACT_SGD,
            "per_device_eval_batch_size": 4,
            "max_steps": STEPS,
            "learning_rate": 1.0,
            "retain_weight": 0.1,
        },
        **overrides,
    )


@pytest.fixture(scope="module")
def forget_losses(tmp_path_factory) -> list[float]:
    """The forget loss after every step of a run without stopping (the trajectory the stopped run must follow)."""
    trainer = make_trainer(tmp_path_factory.mktemp("reference"), eval_strategy="steps", eval_steps=1)
    trainer.train()
    losses = [entry["eval_forget_loss"] for entry in trainer.state.log_history if "eval_forget_loss" in entry]
    assert len(losses) == STEPS
    assert all(b > a for a, b in zip(losses, losses[1:], strict=False)), f"the forget loss must rise: {losses}"
    return losses


@pytest.mark.parametrize("fraction, closest", [(0.7, 3), (0.3, 2)])
def test_stops_at_the_target_and_restores_the_closest_checkpoint(tmp_path, forget_losses, fraction, closest):
    # Target between steps 2 and 3 (1-based): reached at step 3; at fraction 0.3 step 2 is closer, at 0.7 step 3 is.
    low, high = forget_losses[1], forget_losses[2]
    target = low + fraction * (high - low)
    stop = StopAtForgetTarget(target=target, metric="loss")
    trainer = make_trainer(tmp_path, [stop], **StopAtForgetTarget.training_arguments(eval_steps=1))
    trainer.train()

    assert stop.reached_step == 3 and trainer.state.global_step == 3  # stopped there, not at max_steps
    assert [entry["step"] for entry in stop.history] == [1, 2, 3]
    assert [entry["value"] for entry in stop.history] == pytest.approx(forget_losses[:3], rel=1e-6)
    assert trainer.state.best_global_step == closest
    restored = trainer.evaluate()["eval_forget_loss"]
    assert restored == pytest.approx(forget_losses[closest - 1], rel=1e-6)
    assert abs(restored - target) == pytest.approx(min(entry["gap"] for entry in stop.history), rel=1e-5)


def test_unreached_target_runs_to_the_end_and_keeps_the_closest(tmp_path, forget_losses):
    stop = StopAtForgetTarget(target=forget_losses[-1] + 10.0, metric="loss")
    trainer = make_trainer(tmp_path, [stop], **StopAtForgetTarget.training_arguments(eval_steps=2))
    trainer.train()
    assert stop.reached_step is None and trainer.state.global_step == STEPS
    assert [entry["step"] for entry in stop.history] == [2, 4, 6]
    assert trainer.state.best_global_step == STEPS
    assert trainer.evaluate()["eval_forget_loss"] == pytest.approx(forget_losses[-1], rel=1e-6)


def test_falling_metric_is_reached_from_above(tmp_path):
    stop = StopAtForgetTarget(target=0.5, metric="accuracy")
    assert not stop.higher_is_forgotten
    assert stop.reached(0.4) and stop.reached(0.5) and not stop.reached(0.6)
    assert StopAtForgetTarget(target=0.5, metric="wer").reached(0.6)


def test_evaluation_outside_training_is_ignored(tmp_path):
    stop = StopAtForgetTarget(target=0.0, metric="loss")
    trainer = make_trainer(tmp_path, [stop], **StopAtForgetTarget.training_arguments(eval_steps=1))
    trainer.evaluate()  # e.g. the recipes' score of the base model: already "reached", but must not stop training
    assert stop.history == [] and stop.reached_step is None


def test_bad_setups_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="higher_is_forgotten"):
        StopAtForgetTarget(target=0.5, metric="bleu")
    with pytest.raises(ValueError, match="finite"):
        StopAtForgetTarget(target=float("nan"))
    with pytest.raises(ValueError, match="eval_steps"):
        StopAtForgetTarget.training_arguments(eval_steps=0)
    # Evaluating without routing the gap through the best-checkpoint logic would stop but never restore.
    trainer = make_trainer(tmp_path, [StopAtForgetTarget(target=1.0, metric="loss")], eval_strategy="steps")
    with pytest.raises(ValueError, match=r"training_arguments\(eval_steps=N\)"):
        trainer.train()
    stop = StopAtForgetTarget(target=1.0, metric="wer")  # the toy model has no generation metric
    trainer = make_trainer(tmp_path, [stop], **StopAtForgetTarget.training_arguments(eval_steps=1))
    with pytest.raises(KeyError, match="eval_forget_wer"):
        trainer.train()
