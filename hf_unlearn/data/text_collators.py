"""Batching question/answer pairs for a causal LM with the loss on the answer only.

A row is `prompt + answer + eos`, where the prompt is the question in a fixed template. The labels are the input
ids with the prompt and the padding set to -100, so `hf_unlearn.losses.per_example_loss` makes `ℓ_i` the mean over
example i's answer tokens (and eos), as TOFU scores answers: unlearning pushes the answer away, never the question.
"""

import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from hf_unlearn.losses import IGNORE_INDEX


logger = logging.getLogger(__name__)

DEFAULT_PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token (Llama, GPT-2) pad = eos, and say so.

    Padding positions are masked out of the loss and the attention, so the pad id only has to exist.
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                "The tokenizer has neither a pad nor an eos token: set one, e.g. tokenizer.pad_token = '<pad>' "
                "(and resize the model's embeddings)."
            )
        tokenizer.pad_token = tokenizer.eos_token
        logger.warning("The tokenizer has no pad token: using its eos token %r for padding.", tokenizer.eos_token)
    return tokenizer


class QACollator:
    """Collate `{"question", "answer"}` rows into `input_ids`, `attention_mask` and answer-only `labels` `[B, T]`.

        input_ids: <bos> Question: q ... Answer:  a_1 ... a_n <eos> <pad>...
        labels:     -100  -100 ...        -100    a_1 ... a_n <eos> -100...

    Rows are right-padded (training and scoring; `generate` needs left padding and builds its own prompts).
    When `prompt + answer` exceeds `max_length` the question is cut from its start (the template's "Answer:" cue
    stays next to the answer) and a warning is logged once; an answer longer than `max_length` on its own is cut
    at its end.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): Gets pad = eos when it has no pad token.
        max_length (`int`, *optional*): Longest row; defaults to `tokenizer.model_max_length` when that is a real
            limit. Pass the model's `max_position_embeddings` when the tokenizer does not know it.
        prompt_template (`str`, *optional*, defaults to `"Question: {question}\\nAnswer:"`): Must contain `{question}`.
        answer_column (`str`, *optional*, defaults to `"answer"`): Which column is the target.

    Example:

    ```python
    >>> collator = QACollator(tokenizer, max_length=model.config.max_position_embeddings)  # doctest: +SKIP
    >>> batch = collator([corpus["forget"][0], corpus["forget"][1]])  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int | None = None,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        answer_column: str = "answer",
    ) -> None:
        if "{question}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{question}}', got {prompt_template!r}.")
        self.tokenizer = ensure_pad_token(tokenizer)
        if max_length is None and tokenizer.model_max_length < 1_000_000:  # transformers' "no limit" is ~1e30
            max_length = int(tokenizer.model_max_length)
        self.max_length = max_length
        self.prompt_template = prompt_template
        self.answer_column = answer_column
        self._warned_truncation = False
        # Whether the tokenizer's own special-token handling starts a text with bos (Llama yes, GPT-2 no).
        bos = tokenizer.bos_token_id
        with_special = tokenizer("a").input_ids
        self._bos = [bos] if bos is not None and with_special[:1] == [bos] else []

    def prompt_ids(self, question: str) -> list[int]:
        """The prompt's ids, with bos when the tokenizer adds one (as `tokenizer(text)` would)."""
        ids = self.tokenizer(self.prompt_template.format(question=question), add_special_tokens=False).input_ids
        return self._bos + ids

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's ids after a space (it follows the prompt's last word), then eos."""
        ids = self.tokenizer(" " + answer.strip(), add_special_tokens=False).input_ids
        return ids + ([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])

    def encode(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """`(input_ids, labels)` of one row, truncated to `max_length`."""
        prompt, target = self.prompt_ids(question), self.answer_ids(answer)
        if self.max_length is not None and len(prompt) + len(target) > self.max_length:
            if not self._warned_truncation:
                logger.warning(
                    "A prompt + answer (%d tokens) exceeds max_length=%d: cutting the question from its start "
                    "(warned once). Raise max_length or shorten the questions to keep them whole.",
                    len(prompt) + len(target),
                    self.max_length,
                )
                self._warned_truncation = True
            target = target[: self.max_length - 1]  # at least one prompt token must precede the first target
            keep = self.max_length - len(target)
            head = prompt[:1] if prompt[:1] == [self.tokenizer.bos_token_id] and keep > 1 else []
            prompt = head + prompt[len(prompt) - (keep - len(head)) :]
        return prompt + target, [IGNORE_INDEX] * len(prompt) + target

    def collate_pairs(self, pairs: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Right-padded batch of `(question, answer)` pairs."""
        if not pairs:
            raise ValueError("Cannot collate an empty list of examples.")
        encoded = [self.encode(question, answer) for question, answer in pairs]
        length = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), length), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, (ids, targets) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(targets)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        for column in ("question", self.answer_column):
            if any(column not in example for example in examples):
                raise ValueError(
                    f"Each example needs a {column!r} column (TOFU's columns: question, answer, paraphrased_answer, "
                    f"perturbed_answer); rename yours with dataset.rename_column(..., {column!r})."
                )
        return self.collate_pairs([(example["question"], example[self.answer_column]) for example in examples])
