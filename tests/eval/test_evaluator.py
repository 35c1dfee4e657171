"""Sharded evaluation: every rank gets equally many rows, and the kept rows partition the split in order."""

import pytest

from hf_unlearn.eval import ASREvaluator, ShardPlan


@pytest.mark.parametrize("num_rows", [1, 5, 8, 9])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shard_plans_partition_the_split_in_order(num_rows, world_size):
    plans = [ShardPlan.for_rank(num_rows, rank, world_size) for rank in range(world_size)]
    assert len({len(plan.indices) for plan in plans}) == 1
    kept = [i for plan in plans for i, keep in zip(plan.indices, plan.keep, strict=True) if keep]
    assert kept == list(range(num_rows))


def test_asr_aggregate_is_corpus_level():
    records = [
        {"reference": "one two three", "hypothesis": "one two three"},
        {"reference": "four", "hypothesis": "five"},
    ]
    # 1 error over 4 reference words, not the mean of per-utterance rates (0.5).
    assert ASREvaluator(processor=None).aggregate(records, "forget")["wer"] == pytest.approx(0.25)
