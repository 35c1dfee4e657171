"""The synthetic speech corpus and user datasets in the same 4-split shape."""

import hashlib

import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from hf_unlearn.data import SpeechCorpusConfig, build_speech_corpus, load_user_speech_dataset, speech_corpus
from hf_unlearn.data.speech_corpus import GRAMMAR, SPLITS, generate_sentences, resample, vocabulary


def corpus_fingerprint(corpus: DatasetDict) -> dict[str, tuple]:
    result = {}
    for name, split in corpus.items():
        audio = hashlib.sha256()
        for row in split["audio"]:
            audio.update(np.asarray(row["array"], dtype=np.float32).tobytes())
        result[name] = (list(split["id"]), list(split["text"]), list(split["speaker_id"]), audio.hexdigest())
    return result


def test_splits_columns_and_audio_format(tiny_corpus):
    config = SpeechCorpusConfig.tiny()
    assert set(tiny_corpus) == set(SPLITS)
    for split in tiny_corpus.values():
        assert split.column_names == ["id", "audio", "text", "speaker_id"]
    assert len(tiny_corpus["forget"]) == config.train_per_speaker
    assert len(tiny_corpus["retain"]) == (config.num_speakers - 1) * config.train_per_speaker
    assert len(tiny_corpus["test"]) == (config.num_speakers - 1) * config.test_per_speaker
    assert len(tiny_corpus["forget_test"]) == config.test_per_speaker
    for row in tiny_corpus["retain"]:
        array = np.asarray(row["audio"]["array"], dtype=np.float32)
        assert row["audio"]["sampling_rate"] == 16000
        assert 0.3 * 16000 < array.shape[0] <= config.clip_seconds * 16000
        assert np.abs(array).max() > 0.05  # speech, not silence


def test_forget_and_retain_are_disjoint(tiny_corpus):
    forget, retain = tiny_corpus["forget"], tiny_corpus["retain"]
    assert set(forget["speaker_id"]) == {"speaker_0"} == set(tiny_corpus["forget_test"]["speaker_id"])
    assert "speaker_0" not in set(retain["speaker_id"]) | set(tiny_corpus["test"]["speaker_id"])
    all_ids = [i for split in tiny_corpus.values() for i in split["id"]]
    assert len(all_ids) == len(set(all_ids))
    assert not set(forget["id"]) & set(retain["id"])


def test_heldout_sentences_never_appear_in_training(tiny_corpus):
    train = set(tiny_corpus["forget"]["text"]) | set(tiny_corpus["retain"]["text"])
    heldout = set(tiny_corpus["test"]["text"]) | set(tiny_corpus["forget_test"]["text"])
    assert heldout and not train & heldout


def test_each_speaker_reads_its_own_sentences_of_the_grammar():
    config = SpeechCorpusConfig()
    sentences = generate_sentences(config)
    texts = [text for train, test in sentences.values() for text in train + test]
    assert len(texts) == len(set(texts)) == config.num_speakers * (config.train_per_speaker + config.test_per_speaker)
    for text in texts:
        words = text.split()
        assert len(words) == len(GRAMMAR) and all(word in slot for word, slot in zip(words, GRAMMAR, strict=True))


def test_held_out_sentences_are_new_combinations_of_known_words():
    """The default corpus is learnable: every word is heard often in training, by every speaker."""
    config = SpeechCorpusConfig()
    sentences = generate_sentences(config)
    words = vocabulary()
    assert len(words) == len(set(words)) == 64  # the closed vocabulary
    for train, test in sentences.values():
        counts = {word: 0 for word in words}
        for text in train:
            for word in text.split():
                counts[word] += 1
        assert min(counts.values()) >= 3  # each speaker says every word in training, several times
        assert not set(train) & set(test)
    assert len(sentences["speaker_0"][1]) >= 20  # forget_test is large enough for a stable WER


def test_too_many_utterances_for_the_grammar_is_an_early_error():
    with pytest.raises(ValueError, match="too many for the grammar"):
        generate_sentences(SpeechCorpusConfig(train_per_speaker=200_000))


def test_an_old_cache_is_not_reused_for_another_corpus(tmp_path, monkeypatch):
    """The cache key covers the grammar and the format version, so a changed generator never reads stale audio."""
    config = SpeechCorpusConfig.tiny()
    key = config.cache_key()
    monkeypatch.setattr(speech_corpus, "_CORPUS_FORMAT_VERSION", speech_corpus._CORPUS_FORMAT_VERSION - 1)
    assert config.cache_key() != key
    monkeypatch.undo()
    first = build_speech_corpus(config, "speaker_0", cache_dir=tmp_path)
    monkeypatch.setattr(speech_corpus, "GRAMMAR", tuple(slot[::-1] for slot in GRAMMAR))
    assert config.cache_key() != key
    second = build_speech_corpus(config, "speaker_0", cache_dir=tmp_path)
    assert list(second["forget"]["text"]) != list(first["forget"]["text"])
    assert len(list((tmp_path / "speech_corpus").iterdir())) == 2  # the old one is kept, not overwritten


def test_synthesis_is_deterministic_for_a_seed(tmp_path, tiny_corpus):
    config = SpeechCorpusConfig.tiny()
    first = build_speech_corpus(config, "speaker_0", cache_dir=tmp_path / "a")
    second = build_speech_corpus(config, "speaker_0", cache_dir=tmp_path / "b")
    assert corpus_fingerprint(first) == corpus_fingerprint(second) == corpus_fingerprint(tiny_corpus)
    other_seed = build_speech_corpus(SpeechCorpusConfig.tiny(seed=1), "speaker_0", cache_dir=tmp_path / "a")
    assert list(other_seed["forget"]["text"]) != list(first["forget"]["text"])


def test_forget_speaker_only_changes_the_split(speech_cache, tiny_corpus, monkeypatch):
    def no_synthesis(config):
        raise AssertionError("the cached synthesis should have been reused")

    monkeypatch.setattr(speech_corpus, "_synthesize_corpus", no_synthesis)
    other = build_speech_corpus(SpeechCorpusConfig.tiny(), "speaker_1", cache_dir=speech_cache)
    assert set(other["forget"]["speaker_id"]) == {"speaker_1"}
    union = lambda corpus: sorted(i for split in corpus.values() for i in split["id"])  # noqa: E731
    assert union(other) == union(tiny_corpus)
    row = other["retain"][list(other["retain"]["id"]).index(tiny_corpus["forget"][0]["id"])]
    assert row["audio"]["array"] == tiny_corpus["forget"][0]["audio"]["array"]


def test_unknown_forget_speaker_lists_the_available_ones(speech_cache):
    with pytest.raises(ValueError, match=r"speaker_9.*speaker_0.*speaker_1.*speaker_2"):
        build_speech_corpus(SpeechCorpusConfig.tiny(), "speaker_9", cache_dir=speech_cache)


def test_missing_espeak_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        build_speech_corpus(SpeechCorpusConfig.tiny(), "speaker_0", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # checked before any work


def test_resample_keeps_duration_and_frequency():
    t = np.arange(22050) / 22050
    tone = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    out = resample(tone, 22050, 16000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    assert np.argmax(np.abs(np.fft.rfft(out))) == 440  # 1 s long, so bin k is k Hz
    assert np.abs(out).max() == pytest.approx(1.0, abs=0.02)
    assert resample(tone, 16000, 16000) is not None and np.array_equal(resample(tone, 16000, 16000), tone)


def user_dataset(sampling_rate: int = 8000) -> Dataset:
    rng = np.random.default_rng(0)
    rows = []
    for speaker in ("alice", "bob"):
        for i in range(5):
            rows.append(
                {
                    "clip": {
                        "array": rng.standard_normal(sampling_rate).astype(np.float32),
                        "sampling_rate": sampling_rate,
                    },
                    "sentence": f"{speaker} says {i}",
                    "who": speaker,
                }
            )
    return Dataset.from_list(rows)


def test_user_dataset_from_disk_is_split_and_resampled(tmp_path):
    user_dataset().save_to_disk(str(tmp_path / "user"))
    corpus = load_user_speech_dataset(
        tmp_path / "user", "bob", audio_column="clip", text_column="sentence", speaker_column="who", test_fraction=0.4
    )
    assert set(corpus) == set(SPLITS)
    assert {name: len(split) for name, split in corpus.items()} == {
        "forget": 3,
        "forget_test": 2,
        "retain": 3,
        "test": 2,
    }
    assert set(corpus["forget"]["speaker_id"]) == {"bob"} and set(corpus["retain"]["speaker_id"]) == {"alice"}
    row = corpus["retain"][0]
    assert set(row) == {"id", "audio", "text", "speaker_id"}
    assert row["audio"]["sampling_rate"] == 16000 and len(row["audio"]["array"]) == 16000  # 1 s at 8 kHz -> 16 kHz
    assert not set(corpus["forget"]["text"]) & set(corpus["forget_test"]["text"])


def test_user_dataset_missing_column_names_the_option(tmp_path):
    user_dataset().save_to_disk(str(tmp_path / "user"))
    with pytest.raises(ValueError, match=r"'text'.*text_column="):
        load_user_speech_dataset(tmp_path / "user", "bob", audio_column="clip", speaker_column="who")
    with pytest.raises(ValueError, match=r"'speaker_id'.*speaker_column="):
        load_user_speech_dataset(tmp_path / "user", "bob", audio_column="clip", text_column="sentence")


def test_user_dataset_empty_forget_split_names_the_fix(tmp_path):
    data = user_dataset()
    alice_only = data.filter(lambda row: row["who"] == "alice")
    DatasetDict({"train": alice_only, "test": data}).save_to_disk(str(tmp_path / "user"))
    with pytest.raises(ValueError, match="no training utterance left to forget"):
        load_user_speech_dataset(
            tmp_path / "user", "bob", audio_column="clip", text_column="sentence", speaker_column="who",
            test_split="test",
        )  # fmt: skip
