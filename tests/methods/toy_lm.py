"""A tiny GPT-2 and token datasets for trainer tests: built from config, no tokenizer, no Hub."""

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel


VOCAB = 32


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def token_dataset(n: int, seed: int, min_len: int = 4, max_len: int = 9) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=generator))
        rows.append(
            {"id": f"s{seed}-{i}", "input_ids": torch.randint(2, VOCAB, (length,), generator=generator).tolist()}
        )
    return Dataset.from_list(rows)


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad; every real token is a target (labels == input_ids, the causal-LM convention)."""
    length = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), length), 1, dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.tensor(example["input_ids"])
        input_ids[row, : len(ids)] = ids
        labels[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
