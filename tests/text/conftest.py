"""Shared fixtures of the text tests: the tiny corpus, its tokenizer and a micro Llama (random, untrained)."""

import pytest

from hf_unlearn.data.text_corpus import TextCorpusConfig, build_text_corpus
from hf_unlearn.models.text_reference import tokenizer_for_text_corpus

from ..testing_utils import micro_llama as build_micro_llama


@pytest.fixture(scope="session")
def tiny_text_corpus(tmp_path_factory):
    return build_text_corpus(TextCorpusConfig.tiny(), cache_dir=tmp_path_factory.mktemp("text_cache"))


@pytest.fixture(scope="session")
def tiny_text_tokenizer(tiny_text_corpus):
    return tokenizer_for_text_corpus(tiny_text_corpus)


@pytest.fixture
def micro_llama(tiny_text_tokenizer):
    return build_micro_llama(tiny_text_tokenizer)
