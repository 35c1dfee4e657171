"""`TextEvaluator`: TOFU-style metrics of a causal LM on QA splits, as a `SplitEvaluator` for `UnlearnTrainer`.

Per example (on each process's shard): the answer's mean NLL and probability (also normalised over the options),
the membership-inference scores (GradNorm: one backward pass; reference: a forward of `reference_model`), exact
memorisation and extraction strength, the greedy answer and its ROUGE-L recall, and the truth ratios from the
paraphrased (or the original) and perturbed answers. Per split (on all gathered records): their means as in
`hf_unlearn.eval.tofu`.

Two metrics need more than one split, and `aggregate` only ever sees one. The evaluator therefore keeps the
records of the last aggregated split of every other name and computes the cross-split metrics when the forget
split is aggregated — the split they describe:

- `forget_quality` compares the forget truth ratios with `reference_truth_ratios`, the exact-retrain model's
  (compute them with `truth_ratios(records)` on the retrain model's forget records and pass them in);
- `model_utility` needs the utility splits, `mia_<attack>_auc` needs the holdout split, and `privleak` needs the
  exact-retrain model's forget Min-K% AUC (`reference_min_k_auc`).

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
from torch import Tensor, nn

from hf_unlearn import losses
from hf_unlearn.data.text_collators import DEFAULT_PROMPT_TEMPLATE, QACollator
from hf_unlearn.eval import tofu
from hf_unlearn.integrations.deepspeed import zero3_partitioned
from hf_unlearn.losses import align_logits_and_labels


logger = logging.getLogger(__name__)


@dataclass
class TextEvaluator:
    """TOFU metrics for a causal LM on splits with `question`/`answer` (and optionally `paraphrased_answer`,
    `perturbed_answer`) columns.

    Args:
        tokenizer: The model's tokenizer (gets pad = eos when it has none).
        max_new_tokens (`int`, *optional*): Fixed budget of the greedy answers scored by ROUGE-L (open-unlearning
            uses 200). By default each answer may be as long as its reference answer plus `generation_margin`
            tokens, so a budget never cuts a long answer short (which would lower its ROUGE-L recall).
        generation_margin (`int`, *optional*, defaults to `16`): Tokens allowed beyond the reference's length.
        max_length (`int`, *optional*): Longest scored row (the model's context); longer prompts lose their start.
        prompt_template (`str`, *optional*): As in [`~hf_unlearn.data.QACollator`]; must match training.
        reference_truth_ratios (`list[float]`, *optional*): The exact-retrain model's forget truth ratios.
        forget_split, holdout_split (`str`): Names of the splits the cross-split metrics compare.
        utility_splits (`tuple[str, ...]`): Splits whose probability, ROUGE-L and truth ratio form model utility
            (TOFU's 9 inputs: retain, real authors, world facts).
        option_splits (`tuple[str, ...]`): Utility splits scored as TOFU scores its non-retain ones: probability
            normalised over the options, truth ratio of the answer (not a paraphrase) against the perturbed answers.
        min_k (`float`, *optional*, defaults to `0.2`): The k of Min-K% and Min-K%++ (the papers' default 20 %;
            open-unlearning's TOFU configuration uses 0.4: pass it to reproduce those numbers).
        reference_model (`nn.Module`, *optional*): The exact-retrain model, for the reference-model attack.
        reference_min_k_auc (`float`, *optional*): The exact-retrain model's forget Min-K% AUC, for privleak.
        gradnorm_p (`float`, *optional*, defaults to `2`): The norm of the GradNorm attack (1, 2 or inf); `None`
            skips the attack (one backward pass per example).

    Example:

    ```python
    >>> evaluator = TextEvaluator(tokenizer, reference_truth_ratios=retrain_ratios)  # doctest: +SKIP
    >>> trainer = NPOTrainer(..., eval_dataset={"retain": r, "real_authors": a, "world_facts": w, "holdout": h,
    ...                                         "forget": f},
    ...                      evaluator=evaluator)  # doctest: +SKIP
    >>> trainer.evaluate()["eval_forget_forget_quality"]  # doctest: +SKIP
    ```
    """

    tokenizer: Any
    max_new_tokens: int | None = None
    generation_margin: int = 16
    max_length: int | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    reference_truth_ratios: list[float] | None = None
    forget_split: str = "forget"
    holdout_split: str = "holdout"
    utility_splits: tuple[str, ...] = ("retain", "real_authors", "world_facts")
    option_splits: tuple[str, ...] = ("real_authors", "world_facts")
    min_k: float = 0.2
    reference_model: nn.Module | None = field(default=None, repr=False)
    reference_min_k_auc: float | None = None
    gradnorm_p: float | None = 2.0
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
        answers = [row["answer"] for row in rows]
        pairs = list(zip(questions, answers, strict=True))
        answer = self._score(model, pairs, True)
        perturbed = [_as_list(row.get("perturbed_answer")) for row in rows]
        paraphrased = [row.get("paraphrased_answer") for row in rows]
        pert_losses: dict[int, list[float]] = {}
        flat = [(i, text) for i in range(len(rows)) for text in perturbed[i]]
        if flat:
            pert = self._score(model, [(questions[i], text) for i, text in flat])
            for (i, _), loss in zip(flat, pert["loss"], strict=True):
                pert_losses.setdefault(i, []).append(loss)
        para_idx = [i for i in range(len(rows)) if paraphrased[i] and i in pert_losses]
        para_losses = {}
        if para_idx:
            para = self._score(model, [(questions[i], paraphrased[i]) for i in para_idx])
            para_losses = dict(zip(para_idx, para["loss"], strict=True))
        generated = self._generate(model, questions, answers)
        rouge = tofu.rouge_l_recall(generated, answers)
        reference_losses = self._score(self.reference_model, pairs)["loss"] if self.reference_model else None
        gradnorms = self._gradnorms(model, pairs) if self.gradnorm_p is not None else None
        records = []
        for i in range(len(rows)):
            loss, wrong = answer["loss"][i], pert_losses.get(i, [])
            predicted, labels = answer["predicted"][i], answer["labels"][i]
            record = {
                "loss": loss,
                "prob": math.exp(-loss),
                "prob_options": tofu.probability_with_options(loss, wrong),
                "rougeL_recall": rouge[i],
                "generated": generated[i],
                "truth_ratio": tofu.truth_ratio(para_losses[i], wrong) if i in para_losses else math.nan,
                "truth_ratio_answer": tofu.truth_ratio(loss, wrong),
                "exact_memorization": tofu.exact_memorization(predicted, labels),
                "extraction_strength": tofu.extraction_strength(predicted, labels),
                "mia_loss": loss,
                # The answer as the model scored it (decoded tokens, eos skipped), as open-unlearning compresses it.
                "mia_zlib": tofu.zlib_score(loss, self.tokenizer.decode(labels.tolist(), skip_special_tokens=True)),
                "mia_min_k": -tofu.min_k_score(answer["token_log_probs"][i], self.min_k),
                "mia_min_k_plus_plus": -tofu.min_k_plus_plus_score(
                    answer["token_log_probs"][i], answer["mean"][i], answer["std"][i], self.min_k
                ),
            }
            if gradnorms is not None:
                record["mia_gradnorm"] = gradnorms[i]
            if reference_losses is not None:
                record["mia_reference"] = loss - reference_losses[i]
            records.append(record)
        return records

    def _forward(self, model: nn.Module, pairs: list[tuple[str, str]]):
        """Aligned logits ``[B, T, V]`` and labels ``[B, T]`` of the rows ``prompt + answer + eos``."""
        device = next(model.parameters()).device
        batch = {key: value.to(device) for key, value in self.collator.collate_pairs(pairs).items()}
        labels = batch.pop("labels")
        logits = model(**batch).logits
        if logits.dtype in (torch.float16, torch.bfloat16):  # float64 stays float64 (tests compare in float64)
            logits = logits.float()
        return align_logits_and_labels(logits, labels, is_encoder_decoder=False)

    def _without_eos(self, labels: Tensor, mask: Tensor) -> Tensor:
        """`mask` minus each row's final target when it is eos: the token set of Min-K%, EM, ES and GradNorm."""
        eos = self.tokenizer.eos_token_id
        mask = mask.clone()
        if eos is None:
            return mask
        for row in range(mask.shape[0]):
            positions = mask[row].nonzero()
            if len(positions) and labels[row, positions[-1, 0]] == eos:
                mask[row, positions[-1, 0]] = False
        return mask

    def _score(self, model: nn.Module, pairs: list[tuple[str, str]], details: bool = False) -> dict[str, list]:
        """Mean NLL of each answer (eos included) given its question; with `details`, over the answer tokens
        without the final eos: per-token log-probs, the mean/std of the log-probability under the model's
        next-token distribution (Min-K%++), the teacher-forced argmax and the label ids (EM, ES)."""
        logits, labels = self._forward(model, pairs)
        token_log_probs, mask = losses.token_log_probs(logits, labels)  # [B, T]
        mean_nll = losses.per_example_loss_from_log_prob(token_log_probs.sum(-1), mask.sum(-1))
        result: dict[str, list] = {"loss": mean_nll.tolist()}
        if details:
            log_probs = torch.log_softmax(logits, dim=-1)  # [B, T, V]
            mean, std = tofu.next_token_moments(log_probs)  # [B, T]
            predicted = logits.argmax(-1)
            keep = self._without_eos(labels, mask)
            rows = range(len(pairs))
            result["token_log_probs"] = [token_log_probs[i][keep[i]].cpu() for i in rows]
            result["mean"] = [mean[i][keep[i]].cpu() for i in rows]
            result["std"] = [std[i][keep[i]].cpu() for i in rows]
            result["predicted"] = [predicted[i][keep[i]].cpu() for i in rows]
            result["labels"] = [labels[i][keep[i]].cpu() for i in rows]
        return result

    def _gradnorms(self, model: nn.Module, pairs: list[tuple[str, str]]) -> list[float]:
        """GradNorm statistic of each example: the gradient of the mean NLL of its answer tokens (without eos).

        Gradients are taken with `torch.autograd.grad`, so no `.grad` of a model in training is touched. LoRA
        adapter weights (peft names them `lora_*`) are left out: the gradient with respect to a frozen base weight
        equals the one with respect to the merged weight ``W + BA``, so an adapted model scores like its merged
        twin and like a fully fine-tuned model in open-unlearning. The model stays in eval mode (open-unlearning
        switches to train mode, which only matters for dropout).
        """
        params = [p for name, p in model.named_parameters() if p.is_floating_point() and "lora_" not in name]
        if zero3_partitioned(params):
            self._note("mia_gradnorm not computed: the model's weights are partitioned by ZeRO-3.")
            return [math.nan] * len(pairs)
        flags = [p.requires_grad for p in params]
        scores = []
        try:
            for p in params:
                p.requires_grad_(True)
            with torch.enable_grad():
                for pair in pairs:
                    logits, labels = self._forward(model, [pair])
                    token_log_probs, mask = losses.token_log_probs(logits, labels)
                    keep = self._without_eos(labels, mask)
                    loss = -token_log_probs[keep].mean()
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    scores.append(tofu.gradient_norm([g for g in grads if g is not None], self.gradnorm_p))
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)
        return scores

    def generation_budgets(self, answers: list[str]) -> list[int]:
        """New tokens each greedy answer may use: `max_new_tokens` when set, else the reference answer's length in
        tokens (with eos) plus `generation_margin`."""
        if self.max_new_tokens is not None:
            return [self.max_new_tokens] * len(answers)
        return [len(self.collator.answer_ids(answer)) + self.generation_margin for answer in answers]

    def _generate(self, model: nn.Module, questions: list[str], answers: list[str]) -> list[str]:
        """Greedy answers, each cut to its own budget (so a row's answer does not depend on its batch); prompts are
        left-padded so every row's continuation starts at the same position."""
        device = next(model.parameters()).device
        budgets = self.generation_budgets(answers)
        max_new_tokens = max(budgets)
        prompts = [self.collator.prompt_ids(question) for question in questions]
        if self.max_length is not None:
            budget = max(1, self.max_length - max_new_tokens)
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
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        new_tokens = [output[row, length : length + budget] for row, budget in enumerate(budgets)]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    # ------------------------------------------------------------------ per split

    def aggregate(self, records: list[dict[str, Any]], split: str) -> dict[str, float]:
        forget = split == self.forget_split
        keys = ("loss", "prob", "rougeL_recall", "exact_memorization", "extraction_strength")
        metrics = {key: _nanmean([r[key] for r in records]) for key in keys}
        metrics = {key: value for key, value in metrics.items() if not math.isnan(value)}
        options = split in self.option_splits
        ratios = truth_ratios(records, answer=options)
        if options:
            normalised = [r["prob_options"] for r in records if not math.isnan(r["prob_options"])]
            if normalised:
                metrics["prob_normalised"] = float(np.mean(normalised))
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
            options = split in self.option_splits
            ratios = truth_ratios(records or [], answer=options)
            if records is None or not ratios:
                self._note("model_utility not reported: split %r (with perturbed answers) was not evaluated.", split)
                utility_parts = []
                break
            probs = [r["prob_options"] for r in records] if options else [r["prob"] for r in records]
            utility_parts += [_nanmean(probs), np.mean([r["rougeL_recall"] for r in records]),
                              tofu.truth_ratio_score(ratios, forget=False)]  # fmt: skip
        if utility_parts:
            metrics["model_utility"] = tofu.model_utility(utility_parts)
        holdout = self._kept.get(self.holdout_split)
        if holdout:
            for attack in tofu.MIA_ATTACKS:
                key = f"mia_{attack}"
                forget_scores = [r[key] for r in forget if key in r]
                holdout_scores = [r[key] for r in holdout if key in r]
                if forget_scores and holdout_scores and not np.isnan(forget_scores + holdout_scores).any():
                    metrics[f"{key}_auc"] = tofu.mia_auc(forget_scores, holdout_scores)
            if self.reference_min_k_auc is not None:
                metrics["privleak"] = tofu.privleak(metrics["mia_min_k_auc"], self.reference_min_k_auc)
            else:
                self._note("privleak not reported: pass the exact-retrain model's forget Min-K%% AUC as reference.")
        else:
            self._note(
                "MIA AUC not reported: the %r split was not evaluated before the forget split.", self.holdout_split
            )
        return metrics


def truth_ratios(records: list[dict[str, Any]], answer: bool = False) -> list[float]:
    """The per-example truth ratios ``R`` of the records that have one (the forget-quality reference); with
    `answer`, those of the answer (instead of its paraphrase) against the perturbed answers."""
    key = "truth_ratio_answer" if answer else "truth_ratio"
    return [r[key] for r in records if not math.isnan(r[key])]


def _nanmean(values: list[float]) -> float:
    kept = [value for value in values if not math.isnan(value)]
    return float(np.mean(kept)) if kept else math.nan


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
