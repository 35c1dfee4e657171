"""Generation/metric evaluators the Trainer runs on each eval split, sharded over processes.

An evaluator splits its work in two so that several processes can share it without changing the result:
`per_example` runs on one process's shard and returns one plain record per example (strings, floats);
`aggregate` turns the records of the whole split, gathered from every process in dataset order, into metrics.
Corpus-level metrics (WER is total edits over total words, a KS test needs the whole distribution) therefore
come out the same on 1 or N processes.
"""

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from datasets import Dataset
from torch import nn


@runtime_checkable
class SplitEvaluator(Protocol):
    """What `UnlearnTrainer(evaluator=...)` accepts."""

    def per_example(self, model: nn.Module, dataset: Dataset, batch_size: int) -> list[dict[str, Any]]:
        """One record per example of `dataset` (a shard of a split), in order."""
        ...

    def aggregate(self, records: list[dict[str, Any]], split: str) -> dict[str, float]:
        """Metrics of a whole split from all its records (`split` is its name, `""` for an unnamed one)."""
        ...


@dataclass
class ShardPlan:
    """Which rows of a split one process evaluates.

    Every process gets the same number of rows (the split is padded by wrapping around to its start), so that
    collective operations inside the forward — DeepSpeed ZeRO-3 gathers parameters layer by layer — run the same
    number of times on every rank. `keep` marks the rows that are not padding. (Not accelerate's
    `split_between_processes(..., apply_padding=True)`: it pads with copies of the last row and says nothing of which
    rows are padding, so the aggregation could not drop them.)
    """

    indices: list[int]
    keep: list[bool]

    @classmethod
    def for_rank(cls, num_rows: int, rank: int, world_size: int) -> "ShardPlan":
        if num_rows == 0:
            return cls(indices=[], keep=[])
        per_rank = math.ceil(num_rows / world_size)
        # Contiguous blocks keep each process's records in dataset order after an ordered gather.
        positions = range(rank * per_rank, (rank + 1) * per_rank)
        return cls(indices=[p % num_rows for p in positions], keep=[p < num_rows for p in positions])


@dataclass
class ASREvaluator:
    """WER/CER of greedy transcripts against the split's `text` column (DESIGN §6)."""

    processor: Any
    max_new_tokens: int | None = None

    def per_example(self, model: nn.Module, dataset: Dataset, batch_size: int) -> list[dict[str, Any]]:
        from .asr import transcribe

        hypotheses = transcribe(
            model, self.processor, dataset, batch_size=batch_size, max_new_tokens=self.max_new_tokens
        )
        return [{"reference": ref, "hypothesis": hyp} for ref, hyp in zip(dataset["text"], hypotheses, strict=True)]

    def aggregate(self, records: list[dict[str, Any]], split: str) -> dict[str, float]:
        from .asr import wer_cer

        return wer_cer([r["reference"] for r in records], [r["hypothesis"] for r in records])
