"""Base and exact-retrain tiny Llamas of the text benchmark (DESIGN §6, §7), cached like the speech references.

"base" is trained from scratch on forget + retain + real_authors + world_facts and must have memorised the forget
answers; "retrain" is trained identically without the forget people: the model unlearning should end up looking like
(forget quality compares truth-ratio distributions against it). Both are cached under a hash of their training
rows, tokenizer, model config and hyperparameters (`hf_unlearn.models.cache`).
"""

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import transformers
from datasets import Dataset, DatasetDict, concatenate_datasets
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from hf_unlearn.data.text_collators import QACollator
from hf_unlearn.data.text_corpus import corpus_texts
from hf_unlearn.models.cache import cached_model_dir, config_for_key
from hf_unlearn.models.tiny_llama import build_llama_tokenizer, build_tiny_llama
from hf_unlearn.models.training import REFERENCE_ROLES, FromScratchConfig, fit_from_scratch


# Bump when training code changes in a way that changes the result, so stale caches are not reused.
_TEXT_REFERENCE_FORMAT_VERSION = 1
TRAINED_SPLITS = {
    "base": ("forget", "retain", "real_authors", "world_facts"),
    "retrain": ("retain", "real_authors", "world_facts"),
}


@dataclass(frozen=True)
class TextReferenceTrainingConfig(FromScratchConfig):
    """Hyperparameters for training a tiny Llama from scratch on CPU until it recites its training answers (fields:
    `FromScratchConfig`; the defaults that differ from the speech references' are set here).

    A high constant learning rate memorises fastest; the final decay (warmup-stable-decay) settles the answers so
    greedy decoding reproduces them rather than flickering between near-ties.
    """

    learning_rate: float = 3e-3
    num_train_epochs: int = 50
    batch_size: int = 32
    warmup_steps: int = 30

    @classmethod
    def tiny(cls, **overrides) -> "TextReferenceTrainingConfig":
        """For `TextCorpusConfig.tiny()` in tests: a few dozen rows memorised in seconds."""
        values = dict(num_train_epochs=40, batch_size=8, warmup_steps=10)
        values.update(overrides)
        return cls(**values)


TINY_TEST_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2)  # fmt: skip
"""Model size of the `tiny` preset: the tiny corpus needs far less capacity than the default one."""


def tokenizer_for_text_corpus(corpus: DatasetDict, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """The tokenizer shared by the base, retrain and unlearned models of `corpus`.

    Learnt from every split (holdout included), so it does not depend on which people are forgotten and all three
    models share one vocabulary.
    """
    return build_llama_tokenizer(corpus_texts(corpus), vocab_size=vocab_size)


def train_text_reference_model(
    corpus: DatasetDict,
    kind: Literal["base", "retrain"],
    tokenizer: PreTrainedTokenizerFast | None = None,
    model_overrides: dict | None = None,
    training_config: TextReferenceTrainingConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """Train (or reuse from cache) a tiny Llama from scratch and return the directory it is saved in.

    Args:
        corpus (`DatasetDict`): Splits `forget`, `retain`, `real_authors` and `world_facts` (as from
            `build_text_corpus`).
        kind (`"base"` or `"retrain"`): Train on every trained split, or without `forget`.
        tokenizer (`PreTrainedTokenizerFast`, *optional*): Defaults to `tokenizer_for_text_corpus(corpus)`;
            saved with the model.
        model_overrides (`dict`, *optional*): `LlamaConfig` overrides passed to `build_tiny_llama`.
        training_config ([`TextReferenceTrainingConfig`], *optional*): Defaults to the class defaults.
        cache_dir (`str`, *optional*): Defaults to `$HF_UNLEARN_CACHE` or `~/.cache/hf_unlearn`.

    Returns:
        Path of a directory that `LlamaForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` read.
    """
    if kind not in TRAINED_SPLITS:
        raise ValueError(f"kind must be 'base' or 'retrain', got {kind!r}.")
    missing = [split for split in TRAINED_SPLITS["base"] if split not in corpus]
    if missing:
        raise ValueError(f"The corpus needs the splits {missing} (as built by build_text_corpus); got {list(corpus)}.")
    tokenizer = tokenizer if tokenizer is not None else tokenizer_for_text_corpus(corpus)
    training_config = training_config if training_config is not None else TextReferenceTrainingConfig()
    train_split = concatenate_datasets([corpus[split] for split in TRAINED_SPLITS[kind]])
    order = np.argsort(np.asarray(list(train_split["id"])), kind="stable")
    train_split = train_split.select(order)

    # The model config is resolved first so the key covers defaults, not only the overrides given here.
    transformers.set_seed(training_config.seed)
    model = build_tiny_llama(tokenizer, **dict(model_overrides or {}))
    key_payload = {
        "format": _TEXT_REFERENCE_FORMAT_VERSION,
        "data": text_dataset_digest(train_split),
        "tokenizer": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16],
        "model": config_for_key(model.config),
        "training": asdict(training_config),
    }

    def build(directory: Path) -> dict:
        stats = _train(model, tokenizer, train_split, training_config, directory / "trainer", REFERENCE_ROLES[kind])
        shutil.rmtree(directory / "trainer", ignore_errors=True)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return {"num_train_rows": len(train_split), **stats}

    return cached_model_dir(f"llama-{kind}", key_payload, build, cache_dir)


def text_dataset_digest(dataset: Dataset) -> str:
    """Content hash of the rows a model trains on (id, question, answer), in row order."""
    rows = [list(dataset[column]) for column in ("id", "question", "answer")]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _train(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    train_split: Dataset,
    config: TextReferenceTrainingConfig,
    output_dir: Path,
    role: str,
) -> dict:
    collator = QACollator(tokenizer, max_length=model.config.max_position_embeddings)
    return fit_from_scratch(model, train_split, collator, config, output_dir, description=f"Llama {role}")


def load_text_reference_model(path: str | os.PathLike) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The model (in eval mode) and tokenizer saved by `train_text_reference_model`."""
    model = LlamaForCausalLM.from_pretrained(str(path))
    model.eval()
    return model, PreTrainedTokenizerFast.from_pretrained(str(path))
