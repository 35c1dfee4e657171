"""SCRUB: a student that moves away from its teacher on the forget set and stays with it on the retain set."""

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..configs import UnlearnConfig
from ..losses import IGNORE_INDEX, model_target_logits, per_example_loss_from_log_prob, sequence_log_prob
from ..trainer import UnlearnTrainer
from .reference import ReferencePolicy, reference_log_prob


@dataclass
class SCRUBConfig(UnlearnConfig):
    r"""
    Configuration for [`SCRUBTrainer`].

    Parameters:
        retain_weight (`float`, *optional*, defaults to `1.0`):
            γ, the weight of the retain cross-entropy in the min step.
        retain_kl_weight (`float`, *optional*, defaults to `1.0`):
            α, the weight of the retain KL to the teacher in the min step.
        max_phase_steps (`int`, *optional*, defaults to `-1`):
            Steps during which max steps (on forget) alternate with min steps (on retain); after them only min steps
            run. `-1`: the first half of `max_steps`.
        temperature (`float`, *optional*, defaults to `4.0`):
            Distillation temperature T of both KL terms (scaled by T², as in knowledge distillation).
    """

    retain_kl_weight: float = field(default=1.0, metadata={"help": "alpha: weight of KL(teacher||student) on retain."})
    max_phase_steps: int = field(
        default=-1, metadata={"help": "Steps that alternate max and min steps (-1: the first half of max_steps)."}
    )
    temperature: float = field(default=4.0, metadata={"help": "Distillation temperature T of the KL terms."})

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.retain_kl_weight < 0:
            raise ValueError(f"retain_kl_weight must be >= 0, got {self.retain_kl_weight}.")
        super().__post_init__()


def per_example_kl(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """``T²·KL(p_teacher^T ‖ p_student^T)`` per example, ``[B]``: a mean over the example's own target positions
    (labels != -100), like every per-example loss here; a classifier's batch has one position per example."""
    mask = labels != IGNORE_INDEX  # [B, T]
    student = torch.log_softmax(student_logits / temperature, dim=-1)
    teacher = torch.log_softmax(teacher_logits.to(student.dtype) / temperature, dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(-1) * mask  # [B, T]
    return temperature**2 * kl.sum(-1) / mask.sum(-1).clamp_min(1)


class SCRUBTrainer(UnlearnTrainer):
    r"""
    SCRUB ([Kurmanji et al., 2023](https://huggingface.co/papers/2302.09880)): the model being unlearned is a student
    initialised from the original model, which stays frozen as its teacher (the adapter disabled for a peft model, a
    frozen copy otherwise). Steps alternate between

        max step (forget batch):  minimise  −(1/m) Σ_j KL(p_teacher(f_j) ‖ p_student(f_j))
        min step (retain batch):  minimise  α·(1/k) Σ_i KL(p_teacher(r_i) ‖ p_student(r_i)) + γ·L_r

    with both KLs at temperature T (times T²), α = `retain_kl_weight`, γ = `retain_weight`. The paper runs max epochs
    interleaved with min epochs for the first `msteps` epochs, then min epochs only; here the alternation is per
    step: during the first `max_phase_steps` steps even steps are max steps and odd steps min steps, afterwards every
    step is a min step (which repairs retain performance after forgetting).
    """

    _name = "SCRUB"
    _tag_names = UnlearnTrainer._tag_names + ["scrub"]
    _paper = {"title": "Towards Unbounded Machine Unlearning", "id": "2302.09880"}

    def __init__(self, model, args, forget_dataset, retain_dataset=None, **kwargs):
        if not isinstance(args, SCRUBConfig):
            raise TypeError(f"SCRUBTrainer needs args=SCRUBConfig(...), got {type(args).__name__}.")
        if retain_dataset is None or len(retain_dataset) == 0:
            raise ValueError("SCRUB's min steps distil the teacher on retain data: pass a non-empty retain_dataset.")
        super().__init__(model, args, forget_dataset, retain_dataset, **kwargs)
        self.retain_dataset = retain_dataset  # the min steps need it even at retain_weight=0 (KL only)
        self.teacher = ReferencePolicy(self.accelerator.unwrap_model(self.model))

    def is_max_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) is a max step."""
        phase = self.args.max_phase_steps
        if phase < 0:
            phase = max(self.state.max_steps, 1) // 2
        return step < phase and step % 2 == 0

    def teacher_kl(self, model: nn.Module, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(KL per example [B], student logits, labels)`` of ``inputs``, the teacher run without gradient."""
        logits, labels = model_target_logits(model, inputs, self.model_config)
        unwrapped = self.accelerator.unwrap_model(model)
        teacher_logits = reference_log_prob(
            self.teacher, unwrapped, lambda m: model_target_logits(m, inputs, self.model_config)[0]
        )
        return per_example_kl(logits, teacher_logits, labels, self.args.temperature), logits, labels

    def compute_loss(self, model: nn.Module, inputs, return_outputs=False, num_items_in_batch=None):
        if self.is_max_step(self.state.global_step):
            forget_kl, logits, labels = self.teacher_kl(model, inputs)
            loss = -forget_kl.mean()
            self.log_metric("scrub/forget_kl", forget_kl.mean())
            self.log_metric("forget/loss", per_example_loss_from_log_prob(*sequence_log_prob(logits, labels)).mean())
        else:
            retain_kl, logits, labels = self.teacher_kl(model, self.next_retain_batch())
            retain_loss = per_example_loss_from_log_prob(*sequence_log_prob(logits, labels)).mean()
            loss = self.args.retain_kl_weight * retain_kl.mean() + self.args.retain_weight * retain_loss
            self.log_metric("scrub/retain_kl", retain_kl.mean())
            self.log_metric("retain/loss", retain_loss)
        self.check_finite(loss)
        return (loss, None) if return_outputs else loss
