"""`StopAtForgetTarget`: stop unlearning when the forget metric reaches a target, keep the closest checkpoint.

Methods forget by different amounts in a fixed number of steps, so their retain damage is not comparable at one budget.
Both seed papers compare at a target instead (OrthoGrad stops every method at a target forget accuracy; LUR scores the
distance to exact retraining). This callback gives every method the same stopping rule: evaluate every `eval_steps`,
stop once the forget metric has reached the target (by default the exact-retrain model's value on the forget split),
and restore the evaluated checkpoint whose forget metric lies closest to it.

Restoring reuses transformers' own best-checkpoint machinery (`metric_for_best_model`, `save_strategy="best"`,
`load_best_model_at_end`), so it works wherever the Trainer saves and reloads: one process, DDP, DeepSpeed ZeRO-2/3.
Evaluation metrics are identical on every rank (`UnlearnTrainer` gathers records before aggregating), so every rank
stops at the same step and restores the same checkpoint.
"""

import math
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


# Direction of "more forgotten" for the metrics the recipes log. Error rates and losses rise as a model forgets;
# recall, probability and accuracy fall.
FORGOTTEN_WHEN_HIGHER = {
    "wer": True,
    "cer": True,
    "loss": True,
    "rougeL_recall": False,
    "prob": False,
    "accuracy": False,
}


class StopAtForgetTarget(TrainerCallback):
    r"""
    Stop training once the forget split's `metric` reaches `target`, then let the Trainer restore the evaluated
    checkpoint closest to the target.

    At every evaluation it adds `eval_forget_target_gap` = |metric − target| to the metrics, which the Trainer ranks as
    `metric_for_best_model` (lower is better), saving a checkpoint whenever the gap shrinks (`save_strategy="best"`)
    and loading the best one at the end. "Reached" means metric ≥ target for metrics that rise as the model forgets
    (WER, CER, loss) and metric ≤ target for those that fall (ROUGE-L recall, probability, accuracy). If the target is
    never reached, training runs to `max_steps` and the closest evaluated checkpoint is still restored.

    The Trainer's arguments must route the gap through its best-checkpoint logic: build them with
    `StopAtForgetTarget.training_arguments(eval_steps)` (checked when training starts, with an error naming the fix).

    Args:
        target (`float`):
            The forget metric value to stop at, e.g. the exact-retrain model's forget WER.
        metric (`str`, *optional*, defaults to `"wer"`):
            Metric name as logged, `eval_<split>_<metric>` (`wer`, `cer`, `loss`, `rougeL_recall`, `accuracy`, ...).
        split (`str`, *optional*, defaults to `"forget"`):
            The evaluation split the metric is read from.
        higher_is_forgotten (`bool`, *optional*):
            Whether larger values mean more forgotten. Defaults from `FORGOTTEN_WHEN_HIGHER`; required for any other
            metric.

    Attributes:
        history (`list[dict]`): `{"step", "value", "gap"}` of every evaluation during training.
        reached_step (`int` or `None`): the step at which the target was reached, if it was.

    Example:

    ```python
    from hf_unlearn import GradDiffConfig, GradDiffTrainer, StopAtForgetTarget

    stop = StopAtForgetTarget(target=0.867, metric="wer")  # the exact-retrain model's forget WER
    args = GradDiffConfig(output_dir="out", max_steps=200, **StopAtForgetTarget.training_arguments(eval_steps=5))
    trainer = GradDiffTrainer(model=model, args=args, callbacks=[stop], ...)
    trainer.train()  # stops once forget WER >= 0.867; the model is the checkpoint closest to it
    ```
    """

    gap_metric = "forget_target_gap"

    def __init__(
        self, target: float, metric: str = "wer", split: str = "forget", higher_is_forgotten: bool | None = None
    ):
        if not isinstance(target, (int, float)) or not math.isfinite(target):
            raise ValueError(f"StopAtForgetTarget needs a finite target, got {target!r}.")
        if higher_is_forgotten is None:
            if metric not in FORGOTTEN_WHEN_HIGHER:
                raise ValueError(
                    f"StopAtForgetTarget does not know whether a higher {metric!r} means more forgotten: pass "
                    f"higher_is_forgotten=True or False (known metrics: {', '.join(FORGOTTEN_WHEN_HIGHER)})."
                )
            higher_is_forgotten = FORGOTTEN_WHEN_HIGHER[metric]
        self.target = float(target)
        self.metric = metric
        self.split = split
        self.higher_is_forgotten = higher_is_forgotten
        self.history: list[dict[str, float]] = []
        self.reached_step: int | None = None
        self._training = False

    @property
    def metric_key(self) -> str:
        return f"eval_{self.split}_{self.metric}"

    @classmethod
    def training_arguments(cls, eval_steps: int) -> dict[str, Any]:
        """The `TrainingArguments` fields this callback needs: evaluate every `eval_steps`, checkpoint on a smaller
        gap, restore the smallest at the end."""
        if eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1, got {eval_steps}.")
        return {
            "eval_strategy": "steps",
            "eval_steps": eval_steps,
            "save_strategy": "best",
            "metric_for_best_model": cls.gap_metric,
            "greater_is_better": False,
            "load_best_model_at_end": True,
        }

    def reached(self, value: float) -> bool:
        return value >= self.target if self.higher_is_forgotten else value <= self.target

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        metric = (args.metric_for_best_model or "").removeprefix("eval_")
        problems = []
        if args.eval_strategy != "steps":
            problems.append(f"eval_strategy={str(args.eval_strategy)!r} (needs 'steps')")
        if metric != self.gap_metric or args.greater_is_better:
            problems.append(
                f"metric_for_best_model={args.metric_for_best_model!r}, greater_is_better={args.greater_is_better} "
                f"(needs {self.gap_metric!r}, False)"
            )
        if not args.load_best_model_at_end:
            problems.append("load_best_model_at_end=False")
        if problems:
            raise ValueError(
                "StopAtForgetTarget cannot restore the closest checkpoint with " + "; ".join(problems) + ": build the "
                "config with **StopAtForgetTarget.training_arguments(eval_steps=N)."
            )
        self.history = []
        self.reached_step = None
        self._training = True

    def on_evaluate(self, args, state, control, metrics: dict[str, float] | None = None, **kwargs):
        if not self._training:  # an evaluation before or after training (e.g. of the base model): no checkpoint
            return
        if metrics is None or self.metric_key not in metrics:
            available = sorted(metrics or {})
            raise KeyError(
                f"StopAtForgetTarget reads {self.metric_key!r}, which this evaluation did not produce (it has "
                f"{available}): pass an eval_dataset with a {self.split!r} split and an evaluator that computes "
                f"{self.metric!r}, or choose metric=/split= accordingly."
            )
        value = float(metrics[self.metric_key])
        # Read by the Trainer as metric_for_best_model right after this event (Trainer._determine_best_metric).
        gap = abs(value - self.target) if math.isfinite(value) else math.inf
        metrics[f"eval_{self.gap_metric}"] = gap
        self.history.append({"step": state.global_step, "value": value, "gap": gap})
        if self.reached_step is None and self.reached(value):
            self.reached_step = state.global_step
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False
