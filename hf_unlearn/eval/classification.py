"""Classification unlearning metrics, as the image-classification tables of SalUn and OrthoGrad define them (DESIGN §6).

- **UA** (unlearning accuracy) = 1 − accuracy on the forget set; **RA** = accuracy on the retain set; **TA** =
  accuracy on the test set (class-wise: the kept classes' test images; the forgotten class's are reported apart).
- **MIA-efficacy** (SalUn, https://huggingface.co/papers/2310.12508, after Jia et al. 2023): a confidence-based
  membership attack. An RBF SVM is fit on the model's confidence in the true label (softmax probability), retain
  images labelled member and test images non-member (as many retain as test images, drawn seeded), then applied to
  the forget images; the score is the fraction predicted **non-member**. Higher means the forget set looks unseen.
- **Avg-Gap** = mean |m − m_retrain| over UA, RA, TA and MIA-efficacy: the distance to the exact-retrain model.
- **UIS** (OrthoGrad, https://huggingface.co/papers/2503.02312), with O the original and U the unlearned model, t the
  test and u the forget accuracy: random forgetting ``(|O_t − U_t| + |O_t − U_u|) / (2·O_t)``, class-wise
  ``(|O_t − U_t| + |U_u|) / (2·O_t)``. 0 = test accuracy kept and forget accuracy at its target (test level for a
  random subset, 0 for a class).

All values are fractions in [0, 1], not percentages.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, collator: Any, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(correct [N] bool, confidence [N])``: whether the argmax is the label, and the softmax probability of the
    label, for every row of ``dataset`` in order (model in eval mode for the call, restored after)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, confidence = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator):
            labels = batch.pop("labels").to(device)
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
            probs = torch.softmax(logits, dim=-1)
            correct.append((logits.argmax(-1) == labels).cpu().numpy())
            confidence.append(probs.gather(-1, labels[:, None]).squeeze(-1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(correct), np.concatenate(confidence)


def mia_efficacy(
    retain_confidence: np.ndarray, test_confidence: np.ndarray, forget_confidence: np.ndarray, seed: int = 0
) -> float:
    """SalUn's MIA-efficacy: fraction of the forget set an SVM (fit on retain = member vs test = non-member
    confidences, classes balanced by drawing ``len(test)`` retain rows) predicts non-member."""
    from sklearn.svm import SVC

    if len(test_confidence) == 0 or len(retain_confidence) == 0 or len(forget_confidence) == 0:
        raise ValueError("MIA-efficacy needs non-empty retain, test and forget sets.")
    rng = np.random.default_rng(seed)
    members = retain_confidence
    if len(members) > len(test_confidence):
        members = members[rng.choice(len(members), size=len(test_confidence), replace=False)]
    features = np.concatenate([members, test_confidence])[:, None]
    is_member = np.concatenate([np.ones(len(members)), np.zeros(len(test_confidence))])
    attack = SVC(C=3, gamma="auto", kernel="rbf")  # the attack of Jia et al. 2023, reused by SalUn
    attack.fit(features, is_member)
    return float(1.0 - attack.predict(np.asarray(forget_confidence)[:, None]).mean())


def avg_gap(model_metrics: dict[str, Any], retrain_metrics: dict[str, Any]) -> float:
    """Mean |m − m_retrain| over UA, RA, TA and MIA-efficacy (|UA − UA_r| = |forget acc − forget acc_r|)."""
    gaps = [
        abs(model_metrics[split]["accuracy"] - retrain_metrics[split]["accuracy"])
        for split in ("forget", "retain", "test")
    ]
    gaps.append(abs(model_metrics["mia_efficacy"] - retrain_metrics["mia_efficacy"]))
    return float(np.mean(gaps))


def unlearning_impact_score(original: dict[str, Any], unlearned: dict[str, Any], task: str) -> float:
    """OrthoGrad's UIS from ``{"forget"|"test": {"accuracy": float}}`` of the original and the unlearned model."""
    original_test = original["test"]["accuracy"]
    unlearned_test = unlearned["test"]["accuracy"]
    unlearned_forget = unlearned["forget"]["accuracy"]
    if original_test <= 0:
        raise ValueError("UIS divides by the original model's test accuracy, which is 0.")
    if task == "random":
        forget_term = abs(original_test - unlearned_forget)
    elif task == "class":
        forget_term = abs(unlearned_forget)
    else:
        raise ValueError(f"task must be 'class' or 'random', got {task!r}.")
    return float((abs(original_test - unlearned_test) + forget_term) / (2.0 * original_test))


def classification_metrics(
    model: nn.Module, splits: dict[str, Dataset], collator: Any, batch_size: int = 256, seed: int = 0
) -> dict[str, Any]:
    """``{split: {"accuracy": float}, "mia_efficacy": float}`` of ``model`` on ``splits`` (which need `forget`,
    `retain` and `test`; any other split, e.g. `forget_test`, gets its accuracy too)."""
    missing = [name for name in ("forget", "retain", "test") if name not in splits]
    if missing:
        raise ValueError(f"Classification metrics need the splits {missing}; got {list(splits)}.")
    metrics: dict[str, Any] = {}
    confidences = {}
    for name, split in splits.items():
        correct, confidences[name] = predict(model, split, collator, batch_size)
        metrics[name] = {"accuracy": float(correct.mean())}
    metrics["mia_efficacy"] = mia_efficacy(confidences["retain"], confidences["test"], confidences["forget"], seed)
    return metrics


@dataclass
class ClassificationEvaluator:
    """Accuracy of each eval split for `UnlearnTrainer(evaluator=...)`, so training logs `eval_<split>_accuracy`."""

    collator: Any

    def per_example(self, model: nn.Module, dataset: Dataset, batch_size: int) -> list[dict[str, Any]]:
        correct, confidence = predict(model, dataset, self.collator, batch_size)
        return [{"correct": bool(c), "confidence": float(p)} for c, p in zip(correct, confidence, strict=True)]

    def aggregate(self, records: list[dict[str, Any]], split: str) -> dict[str, float]:
        return {"accuracy": float(np.mean([r["correct"] for r in records])) if records else float("nan")}


def classification_table(results: dict[str, Any]) -> str:
    """The recipe's printed table: accuracy per split, MIA-efficacy, and the unlearned model's Avg-Gap and UIS."""
    models = [name for name in ("base", "retrain", "unlearned") if name in results]
    splits: list[str] = []
    for name in models:
        splits += [s for s, v in results[name].items() if isinstance(v, dict) and s not in splits]
    header = "| model | " + " | ".join(f"{s} acc" for s in splits) + " | MIA-efficacy | Avg-Gap | UIS |"
    rows = [header, "|---|" + "---:|" * (len(splits) + 3)]
    for name in models:
        cells = [f"{results[name][s]['accuracy']:.3f}" if s in results[name] else "–" for s in splits]
        cells.append(f"{results[name]['mia_efficacy']:.3f}")
        gap = (
            results.get("avg_gap")
            if name == "unlearned"
            else (0.0 if name == "retrain" else results.get("base_avg_gap"))
        )
        uis = results.get("uis") if name == "unlearned" else None
        cells += ["–" if gap is None else f"{gap:.3f}", "–" if uis is None else f"{uis:.3f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
