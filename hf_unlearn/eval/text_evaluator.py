"""`TextEvaluator`: TOFU-style metrics of a causal LM on QA splits, as a `SplitEvaluator` for `UnlearnTrainer`.

Per example (on each process's shard): the answer's mean NLL and probability, the membership-inference scores,
the greedy answer and its ROUGE-L recall, and the truth ratio from the paraphrased and perturbed answers. Per split
(on all gathered records): their means as in `hf_unlearn.eval.tofu`.

Two metrics need more than one split, and `aggregate` only ever sees one. The evaluator therefore keeps the
records of the last aggregated split of every other name and computes the cross-split metrics when the forget
split is aggregated — the split they describe:

- `forget_quality` compares the forget truth ratios with `reference_truth_ratios`, the exact-retrain model's
  (compute them with `truth_ratios(records)` on the retrain model's forget records and pass them in);
- `model_utility` needs the utility splits, `mia_<attack>_auc` needs the holdout split.

So evaluate the forget split *last* (`UnlearnTrainer.evaluate` goes through `eval_dataset` in dict order); the
kept records are dropped after each forget aggregation so a later round never mixes in a stale split. A metric
whose inputs are missing (no perturbed answers, no reference, a split not evaluated) is left out, never reported
as 0, and a log line says why.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from hf_unlearn import losses
from hf_unlearn.data.text_collators import DEFAULT_PROMPT_TEMPLATE, QACollator
from hf_unlearn.eval import tofu
from hf_unlearn.losses import align_logits_and_labels


logger = logging.getLogger(__name__)


@dataclass
class TextEvaluator:
    """TOFU metrics for a causal LM on splits with `question`/`answer` (and optionally `paraphrased_answer`,
    `perturbed_answer`) columns.

    Args:
        tokenizer: The model's tokenizer (gets pad = eos when it has none).
        max_new_tokens (`int`, *optional*, defaults to `48`): Budget of the greedy answers scored by ROUGE-L.
        max_length (`int`, *optional*): Longest scored row (the model's context); longer prompts lose their start.
        prompt_template (`str`, *optional*): As in [`~hf_unlearn.data.QACollator`]; must match training.
        reference_truth_ratios (`list[float]`, *optional*): The exact-retrain model's forget truth ratios.
        forget_split, holdout_split (`str`): Names of the splits the cross-split metrics compare.
        utility_splits (`tuple[str, ...]`): Splits whose probability, ROUGE-L and truth ratio form model utility.
        min_k (`float`, *optional*, defaults to `0.2`): The k of Min-K% and Min-K%++ (the papers' default 20 %).

    Example:

    ```python
    >>> evaluator = TextEvaluator(tokenizer, reference_truth_ratios=retrain_ratios)  # doctest: +SKIP
    >>> trainer = NPOTrainer(..., eval_dataset={"retain": r, "world_facts": w, "holdout": h, "forget": f},
    ...                      evaluator=evaluator)  # doctest: +SKIP
    >>> trainer.evaluate()["eval_forget_forget_quality"]  # doctest: +SKIP
    ```
    """

    tokenizer: Any
    max_new_tokens: int = 48
    max_length: int | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    reference_truth_ratios: list[float] | None = None
    forget_split: str = "forget"
    holdout_split: str = "holdout"
    utility_splits: tuple[str, ...] = ("retain", "world_facts")
    min_k: float = 0.2
    _kept: dict[str, list[dict[str, Any]]] = field(default_factory=dict, init=False, repr=False)
    _noted: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.collator = QACollator(self.tokenizer, max_length=self.max_length, prompt_template=self.prompt_template)

    # ------------------------------------------------------------------ per example

    @torch.no_grad()
    def per_example(self, model: nn.Module, dataset: Dataset, batch_size: int) -> list[dict[str, Any]]:
        check_qa_columns(dataset)
        records = []
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start : start + batch_size]
            rows = [dict(zip(rows.keys(), values, strict=True)) for values in zip(*rows.values(), strict=True)]
            records += self._batch_records(model, rows)
        return records

    def _batch_records(self, model: nn.Module, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        questions = [row["question"] for row in rows]
        answer = self._score(model, list(zip(questions, [row["answer"] for row in rows], strict=True)), True)
        perturbed = [_as_list(row.get("perturbed_answer")) for row in rows]
        paraphrased = [row.get("paraphrased_answer") for row in rows]
        has_truth = [bool(p) and bool(q) for p, q in zip(perturbed, paraphrased, strict=True)]
        para_losses, pert_losses = {}, {}
        if any(has_truth):
            idx = [i for i, ok in enumerate(has_truth) if ok]
            para = self._score(model, [(questions[i], paraphrased[i]) for i in idx])
            para_losses = dict(zip(idx, para["loss"], strict=True))
            flat = [(i, text) for i in idx for text in perturbed[i]]
            pert = self._score(model, [(questions[i], text) for i, text in flat])
            for (i, _), loss in zip(flat, pert["loss"], strict=True):
                pert_losses.setdefault(i, []).append(loss)
        generated = self._generate(model, questions)
        rouge = tofu.rouge_l_recall(generated, [row["answer"] for row in rows])
        records = []
        for i, row in enumerate(rows):
            loss = answer["loss"][i]
            records.append(
                {
                    "loss": loss,
                    "prob": math.exp(-loss),
                    "rougeL_recall": rouge[i],
                    "generated": generated[i],
                    "truth_ratio": tofu.truth_ratio(para_losses[i], pert_losses[i]) if has_truth[i] else math.nan,
                    "mia_loss": loss,
                    "mia_zlib": tofu.zlib_score(loss, row["answer"]),
                    "mia_min_k": -tofu.min_k_score(answer["token_log_probs"][i], self.min_k),
                    "mia_min_k_plus_plus": -tofu.min_k_plus_plus_score(
                        answer["token_log_probs"][i], answer["mean"][i], answer["std"][i], self.min_k
                    ),
                }
            )
        return records

    def _score(self, model: nn.Module, pairs: list[tuple[str, str]], details: bool = False) -> dict[str, list]:
        """Mean NLL of each answer given its question; with `details`, per-token log-probs and the mean/std of the
        log-probability under the model's next-token distribution (Min-K%++)."""
        device = next(model.parameters()).device
        batch = {key: value.to(device) for key, value in self.collator.collate_pairs(pairs).items()}
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        logits, labels = align_logits_and_labels(logits, labels, is_encoder_decoder=False)
        token_log_probs, mask = losses.token_log_probs(logits, labels)  # [B, T]
        mean_nll = losses.per_example_loss_from_log_prob(token_log_probs.sum(-1), mask.sum(-1))
        result: dict[str, list] = {"loss": mean_nll.tolist()}
        if details:
            log_probs = torch.log_softmax(logits, dim=-1)  # [B, T, V]
            mean, std = tofu.next_token_moments(log_probs)  # [B, T]
            result["token_log_probs"] = [token_log_probs[i][mask[i]].cpu() for i in range(len(pairs))]
            result["mean"] = [mean[i][mask[i]].cpu() for i in range(len(pairs))]
            result["std"] = [std[i][mask[i]].cpu() for i in range(len(pairs))]
        return result

    def _generate(self, model: nn.Module, questions: list[str]) -> list[str]:
        """Greedy answers; prompts are left-padded so every row's continuation starts at the same position."""
        device = next(model.parameters()).device
        prompts = [self.collator.prompt_ids(question) for question in questions]
        if self.max_length is not None:
            budget = max(1, self.max_length - self.max_new_tokens)
            prompts = [ids[-budget:] for ids in prompts]
        length = max(len(ids) for ids in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(prompts), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention_mask[row, length - len(ids) :] = 1
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        return [text.strip() for text in self.tokenizer.batch_decode(output[:, length:], skip_special_tokens=True)]

    # ------------------------------------------------------------------ per split

    def aggregate(self, records: list[dict[str, Any]], split: str) -> dict[str, float]:
        forget = split == self.forget_split
        metrics = {key: float(np.mean([r[key] for r in records])) for key in ("loss", "prob", "rougeL_recall")}
        ratios = truth_ratios(records)
        if ratios:
            metrics["truth_ratio"] = tofu.truth_ratio_score(ratios, forget=forget)
        else:
            self._note("%s: no paraphrased/perturbed answers, so no truth ratio (nor forget quality).", split)
        if not forget:
            self._kept[split] = records
            return metrics
        metrics.update(self._cross_split_metrics(records, ratios))
        self._kept.clear()
        return metrics

    def _note(self, message: str, *args: Any) -> None:
        """Say once per message why a metric is missing (a missing metric is never reported as 0)."""
        text = message % args
        if text not in self._noted:
            self._noted.add(text)
            logger.warning(text)

    def _cross_split_metrics(self, forget: list[dict[str, Any]], forget_ratios: list[float]) -> dict[str, float]:
        metrics = {}
        if forget_ratios and self.reference_truth_ratios:
            metrics["forget_quality"] = tofu.forget_quality(forget_ratios, self.reference_truth_ratios)
        elif forget_ratios:
            self._note("forget_quality not reported: pass the exact-retrain model's truth ratios as reference.")
        utility_parts = []
        for split in self.utility_splits:
            records = self._kept.get(split)
            ratios = truth_ratios(records or [])
            if records is None or not ratios:
                self._note("model_utility not reported: split %r (with perturbed answers) was not evaluated.", split)
                utility_parts = []
                break
            utility_parts += [np.mean([r["prob"] for r in records]), np.mean([r["rougeL_recall"] for r in records]),
                              tofu.truth_ratio_score(ratios, forget=False)]  # fmt: skip
        if utility_parts:
            metrics["model_utility"] = tofu.model_utility(utility_parts)
        holdout = self._kept.get(self.holdout_split)
        if holdout:
            for attack in tofu.MIA_ATTACKS:
                key = f"mia_{attack}"
                metrics[f"{key}_auc"] = tofu.mia_auc([r[key] for r in forget], [r[key] for r in holdout])
        else:
            self._note(
                "MIA AUC not reported: the %r split was not evaluated before the forget split.", self.holdout_split
            )
        return metrics


def truth_ratios(records: list[dict[str, Any]]) -> list[float]:
    """The per-example truth ratios ``R`` of the records that have one (the forget-quality reference)."""
    return [r["truth_ratio"] for r in records if not math.isnan(r["truth_ratio"])]


def check_qa_columns(dataset: Dataset) -> None:
    """Fail early, naming the fix, on a dataset without TOFU's required columns."""
    missing = [column for column in ("question", "answer") if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The dataset lacks the column(s) {missing} (columns: {dataset.column_names}). Text unlearning needs "
            "TOFU's columns: question and answer (and paraphrased_answer + perturbed_answer for the truth ratio); "
            "rename yours with dataset.rename_column(old, new)."
        )


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [v for v in value if v]


def evaluate_text_splits(
    model: nn.Module, evaluator: TextEvaluator, splits: dict[str, Dataset], batch_size: int = 32
) -> dict[str, dict[str, float]]:
    """Metrics of `model` on every split without a Trainer (exact-retrain reference), forget last."""
    order = sorted(splits, key=lambda name: name == evaluator.forget_split)
    was_training = model.training
    model.eval()
    try:
        return {
            name: evaluator.aggregate(evaluator.per_example(model, splits[name], batch_size), name) for name in order
        }
    finally:
        model.train(was_training)
