"""Session fixtures for the speech benchmark tests: the tiny corpus is synthesised once per session in a temp cache."""

import pytest

from hf_unlearn.data import SpeechCorpusConfig, build_speech_corpus
from hf_unlearn.models import processor_for_corpus


@pytest.fixture(scope="session")
def speech_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "hf_unlearn_speech_cache"


@pytest.fixture(scope="session")
def tiny_corpus(speech_cache):
    return build_speech_corpus(SpeechCorpusConfig.tiny(), "speaker_0", cache_dir=speech_cache)


@pytest.fixture(scope="session")
def tiny_processor(tiny_corpus):
    return processor_for_corpus(tiny_corpus)
