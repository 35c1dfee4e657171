"""Shared fixtures of the text tests: the tiny corpus, its tokenizer and a micro Llama (random, untrained)."""

import pytest

from hf_unlearn.data.text_corpus import TextCorpusConfig, build_text_corpus
from hf_unlearn.models.text_reference import tokenizer_for_text_corpus
from hf_unlearn.models.tiny_llama import build_tiny_llama


# Smaller than the `tiny` preset's model: these tests check plumbing and maths, not memorisation.
MICRO_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=2)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_text_corpus(tmp_path_factory):
    return build_text_corpus(TextCorpusConfig.tiny(), cache_dir=tmp_path_factory.mktemp("text_cache"))


@pytest.fixture(scope="session")
def tiny_text_tokenizer(tiny_text_corpus):
    return tokenizer_for_text_corpus(tiny_text_corpus)


@pytest.fixture
def micro_llama(tiny_text_tokenizer):
    import torch

    torch.manual_seed(0)
    return build_tiny_llama(tiny_text_tokenizer, **MICRO_LLAMA)
