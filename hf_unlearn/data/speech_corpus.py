"""The embedded speech benchmark: synthetic espeak-ng speakers reading sentences of a closed vocabulary (DESIGN §7).

Every speaker is an espeak-ng voice (accent + voice variant + speaking rate + pitch) reading its own sentences. A
sentence takes one word from each slot of a small command grammar (`GRAMMAR`: verb, colour, object, preposition,
digit, adverb; 64 real words), so every speaker says every word many times and a held-out sentence is a new
*combination* of known words. That is what lets a tiny Whisper learn words rather than memorise utterances: it
recognises held-out sentences of the speakers it was trained on, and the exact-retrain model still recognises some
of the forgotten speaker's words from other voices, which gives unlearning a finite target (its WER) instead of 1.0.
Sentences are unique across the whole corpus, so held-out sentences (`test`, `forget_test`) never appear in
training.

Synthesis is cached on disk keyed by the corpus config, the grammar and the espeak-ng version; the forget speaker
only decides how the cached utterances are split, so forgetting another speaker never re-synthesises anything.
"""

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from datasets import (
    Dataset,
    DatasetDict,
    Features,
    Sequence,
    Value,
    concatenate_datasets,
    load_dataset,
    load_from_disk,
)


TARGET_SAMPLING_RATE = 16000
ESPEAK_SAMPLING_RATE = 22050
SPLITS = ("forget", "retain", "test", "forget_test")
# Bump when the synthesis or the sentence generator changes, so stale caches are not reused.
_CORPUS_FORMAT_VERSION = 2

# The closed vocabulary, one tuple per slot; a sentence is one word of each slot in this order, e.g.
# "place red cup under seven now": common English words that espeak-ng reads from its dictionary.
GRAMMAR: tuple[tuple[str, ...], ...] = (
    ("bring", "find", "grab", "lift", "move", "place", "put", "set", "show", "take"),
    ("black", "blue", "brown", "gold", "green", "grey", "orange", "pink", "purple", "red", "white", "yellow"),
    ("apple", "bag", "ball", "book", "bottle", "box", "chair", "coin", "cup", "door", "hat", "key", "lamp", "pen",
     "shoe", "table"),
    ("above", "behind", "below", "beside", "inside", "near", "over", "under"),
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    ("again", "later", "now", "please", "quickly", "slowly", "soon", "today"),
)  # fmt: skip

# Accents and variants that espeak-ng 1.51 ships; speaker i takes accent i and variant i (mod the list length),
# so the first speakers differ in both.
_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
_VARIANTS = ("m3", "f2", "m1", "f4", "m7", "f1", "m5", "f5", "m2", "f3")


@dataclass(frozen=True)
class SpeechCorpusConfig:
    """Size and shape of the synthetic speech corpus.

    Args:
        num_speakers (`int`, *optional*, defaults to `6`):
            Number of synthetic speakers (`speaker_0`, `speaker_1`, ...).
        train_per_speaker (`int`, *optional*, defaults to `60`):
            Training utterances per speaker (they form `forget` and `retain`). With 6 words a sentence, each of the
            64 words is heard about 5 times per speaker and 20-40 times in `retain`.
        test_per_speaker (`int`, *optional*, defaults to `24`):
            Held-out utterances per speaker, with sentences never used in training (`test`, `forget_test`); 24
            sentences (144 words) keep the forget speaker's held-out WER from hinging on one or two words.
        seed (`int`, *optional*, defaults to `0`):
            Seeds the sentences and the speakers' rate/pitch.
        clip_seconds (`float`, *optional*, defaults to `4.0`):
            Every clip is at most this long (the feature extractor's `chunk_length`).
        sampling_rate (`int`, *optional*, defaults to `16000`):
            Sampling rate of the stored audio (Whisper's).

    Example:

    ```python
    >>> from hf_unlearn.data import SpeechCorpusConfig, build_speech_corpus
    >>> corpus = build_speech_corpus(SpeechCorpusConfig.tiny(), forget_speaker="speaker_0")  # doctest: +SKIP
    ```
    """

    num_speakers: int = 6
    train_per_speaker: int = 60
    test_per_speaker: int = 24
    seed: int = 0
    clip_seconds: float = 4.0
    sampling_rate: int = TARGET_SAMPLING_RATE

    def __post_init__(self) -> None:
        if self.num_speakers < 2:
            raise ValueError(
                f"num_speakers must be at least 2 (one to forget, one to retain), got {self.num_speakers}."
            )
        if self.train_per_speaker < 1 or self.test_per_speaker < 1:
            raise ValueError("train_per_speaker and test_per_speaker must both be at least 1.")
        if self.sampling_rate != TARGET_SAMPLING_RATE:
            raise ValueError("sampling_rate must be 16000: Whisper's feature extractor only accepts 16 kHz audio.")

    @classmethod
    def tiny(cls, **overrides) -> "SpeechCorpusConfig":
        """A few utterances of 3 speakers: small enough that a model memorises them in tests."""
        values = dict(num_speakers=3, train_per_speaker=4, test_per_speaker=2)
        values.update(overrides)
        return cls(**values)

    @property
    def speaker_ids(self) -> list[str]:
        return [f"speaker_{i}" for i in range(self.num_speakers)]

    def cache_key(self) -> str:
        """Hash of everything that changes the synthesised audio."""
        payload = {
            "config": asdict(self),
            "grammar": GRAMMAR,
            "format": _CORPUS_FORMAT_VERSION,
            "espeak": _espeak_version(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SpeakerVoice:
    """The espeak-ng settings that make one synthetic speaker."""

    speaker_id: str
    voice: str  # e.g. "en-gb-scotland+m3"
    rate: int  # words per minute (espeak-ng -s)
    pitch: int  # 0-99 (espeak-ng -p)


def default_cache_dir() -> Path:
    """`$HF_UNLEARN_CACHE`, else `~/.cache/hf_unlearn`."""
    return Path(os.environ.get("HF_UNLEARN_CACHE", Path.home() / ".cache" / "hf_unlearn"))


def speaker_voices(config: SpeechCorpusConfig) -> list[SpeakerVoice]:
    """The voice of every speaker, deterministic from the seed."""
    rng = np.random.default_rng([config.seed, 1])
    voices = []
    for i, speaker_id in enumerate(config.speaker_ids):
        voice = f"{_ACCENTS[i % len(_ACCENTS)]}+{_VARIANTS[i % len(_VARIANTS)]}"
        voices.append(
            SpeakerVoice(speaker_id, voice, rate=int(rng.integers(145, 190)), pitch=int(rng.integers(25, 75)))
        )
    return voices


def vocabulary() -> list[str]:
    """Every word of `GRAMMAR`, in slot order."""
    return [word for slot in GRAMMAR for word in slot]


def generate_sentences(config: SpeechCorpusConfig) -> dict[str, tuple[list[str], list[str]]]:
    """Per speaker, its `(train, test)` sentences (one word per `GRAMMAR` slot); every sentence is unique.

    Each slot's words are dealt from shuffled decks, so within a speaker's training sentences (and again within its
    held-out ones) every word of a slot comes up equally often, give or take one: with the default 60 training
    sentences every speaker says each of the 64 words at least 3 times.
    """
    rng = np.random.default_rng([config.seed, 3])
    capacity = int(np.prod([len(slot) for slot in GRAMMAR]))
    needed = config.num_speakers * (config.train_per_speaker + config.test_per_speaker)
    if needed > capacity // 10:  # far below the number of distinct sentences, so collisions stay rare
        raise ValueError(f"{needed} utterances is too many for the grammar's {capacity} sentences; use fewer.")
    seen: set[str] = set()

    def deal(count: int) -> list[str]:
        columns = [_deck(slot, count, rng) for slot in GRAMMAR]
        sentences = []
        for words in zip(*columns, strict=True):
            sentence = " ".join(words)
            while sentence in seen:  # a repeat (rare): redraw it word by word
                sentence = " ".join(slot[int(rng.integers(len(slot)))] for slot in GRAMMAR)
            seen.add(sentence)
            sentences.append(sentence)
        return sentences

    return {
        speaker_id: (deal(config.train_per_speaker), deal(config.test_per_speaker))
        for speaker_id in config.speaker_ids
    }


def _deck(words: tuple[str, ...], count: int, rng: np.random.Generator) -> list[str]:
    """`count` words: shuffled copies of `words` back to back, so each appears `count // len(words)` times or one
    more."""
    copies = -(-count // len(words))
    return [words[i] for _ in range(copies) for i in rng.permutation(len(words))][:count]


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = TARGET_SAMPLING_RATE) -> np.ndarray:
    """Band-limited resampling by zero-padding/truncating the spectrum (exact for clips of a few seconds).

    Not `scipy.signal.resample`, which treats the Nyquist bin differently (measured: max |Δ| 1.3e-3 on 2 s of noise,
    22.05 → 16 kHz): the embedded corpus, the cached base/retrain models keyed by its content and every figure built
    on them would change. This is the resampling they were built with.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr or audio.size == 0:
        return audio
    n_out = int(round(audio.shape[-1] * target_sr / orig_sr))
    spectrum = np.fft.rfft(audio.astype(np.float64))
    n_bins = n_out // 2 + 1
    if n_bins <= spectrum.shape[-1]:
        spectrum = spectrum[:n_bins]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(n_bins - spectrum.shape[-1], dtype=spectrum.dtype)])
    return (np.fft.irfft(spectrum, n=n_out) * (n_out / audio.shape[-1])).astype(np.float32)


def require_espeak() -> str:
    """Path of espeak-ng, or an error that says how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError(
            "espeak-ng is required to synthesise the embedded speech corpus but was not found on PATH. Install it "
            "with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS), or pass your own "
            "dataset to `load_user_speech_dataset`."
        )
    return path


def _espeak_version() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        return "missing"
    return subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def _wav_bytes_to_float(data: bytes) -> np.ndarray:
    """Samples of espeak-ng's `--stdout` WAV (16-bit mono). Its header's sizes are placeholders for streaming, so
    the `wave` module reports a bogus length: take every byte after the `data` chunk id."""
    start = data.find(b"data")
    if start < 0:
        raise RuntimeError("espeak-ng returned no WAV data.")
    pcm = data[start + 8 :]
    pcm = pcm[: len(pcm) // 2 * 2]
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def synthesize(espeak: str, voice: SpeakerVoice, text: str, max_seconds: float, sampling_rate: int) -> np.ndarray:
    """One utterance at `sampling_rate`, at most `max_seconds` long.

    A sentence that comes out too long is re-spoken faster (never cut, which would break its transcript).
    """
    max_samples = int(max_seconds * sampling_rate)
    rate = voice.rate
    for _ in range(6):
        wav = subprocess.run(
            [espeak, "-v", voice.voice, "-s", str(rate), "-p", str(voice.pitch), "--stdout", text],
            capture_output=True,
            check=True,
        ).stdout
        audio = resample(_wav_bytes_to_float(wav), ESPEAK_SAMPLING_RATE, sampling_rate)
        audio = _trim_trailing_silence(audio)
        if audio.shape[0] <= max_samples:
            return audio
        rate = int(rate * 1.2)
    raise ValueError(f"{text!r} spoken by {voice.voice} does not fit in {max_seconds} s even at {rate} wpm.")


def _trim_trailing_silence(audio: np.ndarray, threshold: float = 1e-3, keep: int = 1600) -> np.ndarray:
    """espeak-ng pads the end with silence; keep 0.1 s of it so clips fit the window without cutting speech."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    return audio[: min(audio.shape[0], loud[-1] + 1 + keep)]


def _features() -> Features:
    return Features(
        {
            "id": Value("string"),
            "audio": {"array": Sequence(Value("float32")), "sampling_rate": Value("int32")},
            "text": Value("string"),
            "speaker_id": Value("string"),
            "_heldout": Value("bool"),
        }
    )


def _synthesize_corpus(config: SpeechCorpusConfig) -> Dataset:
    espeak = require_espeak()
    sentences = generate_sentences(config)
    jobs = []
    for voice in speaker_voices(config):
        train, test = sentences[voice.speaker_id]
        jobs += [(voice, f"{voice.speaker_id}-train-{j:03d}", text, False) for j, text in enumerate(train)]
        jobs += [(voice, f"{voice.speaker_id}-test-{j:03d}", text, True) for j, text in enumerate(test)]

    def run(job):
        voice, _, text, _ = job
        return synthesize(espeak, voice, text, config.clip_seconds, config.sampling_rate)

    # Each call is a subprocess, so threads overlap them well.
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        audios = list(pool.map(run, jobs))
    rows = {
        "id": [job[1] for job in jobs],
        "audio": [{"array": audio, "sampling_rate": config.sampling_rate} for audio in audios],
        "text": [job[2] for job in jobs],
        "speaker_id": [job[0].speaker_id for job in jobs],
        "_heldout": [job[3] for job in jobs],
    }
    return Dataset.from_dict(rows, features=_features())


def _load_or_synthesize(config: SpeechCorpusConfig, cache_dir: str | os.PathLike | None) -> Dataset:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "speech_corpus" / config.cache_key()
    if not target.exists():
        dataset = _synthesize_corpus(config)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write next to the target and rename, so a concurrent or interrupted build never leaves half a corpus.
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        dataset.save_to_disk(str(tmp))
        (tmp / "hf_unlearn_corpus_config.json").write_text(json.dumps(asdict(config), indent=2))
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    # In memory: later `map`s must not write cache files into the shared corpus directory.
    return load_from_disk(str(target), keep_in_memory=True)


def build_speech_corpus(
    config: SpeechCorpusConfig, forget_speaker: str, cache_dir: str | os.PathLike | None = None
) -> DatasetDict:
    """The embedded speech benchmark, split around one speaker.

    Args:
        config (`SpeechCorpusConfig`):
            Corpus size and seed (`SpeechCorpusConfig()` for the default benchmark, `.tiny()` for tests).
        forget_speaker (`str`):
            The speaker to forget, e.g. `"speaker_0"`.
        cache_dir (`str`, *optional*):
            Where the synthesised corpus is cached; defaults to `$HF_UNLEARN_CACHE` or `~/.cache/hf_unlearn`.

    Returns:
        `DatasetDict` with `forget` (the forget speaker's training utterances), `retain` (everyone else's training
        utterances), `test` (held-out sentences of retained speakers) and `forget_test` (held-out sentences of the
        forget speaker). Columns: `id`, `audio` (`{"array", "sampling_rate"}`, float32 at 16 kHz), `text`,
        `speaker_id`.
    """
    if forget_speaker not in config.speaker_ids:
        raise ValueError(f"Unknown forget_speaker {forget_speaker!r}; available speakers: {config.speaker_ids}.")
    require_espeak()
    dataset = _load_or_synthesize(config, cache_dir)
    return _split_by_speaker(dataset, forget_speaker, list(dataset["_heldout"])).remove_columns("_heldout")


def _split_by_speaker(dataset: Dataset, forget_speaker: str, heldout: list[bool]) -> DatasetDict:
    speakers = list(dataset["speaker_id"])
    indices: dict[str, list[int]] = {name: [] for name in SPLITS}
    for i, (speaker, is_heldout) in enumerate(zip(speakers, heldout, strict=True)):
        forgotten = speaker == forget_speaker
        name = ("forget_test" if forgotten else "test") if is_heldout else ("forget" if forgotten else "retain")
        indices[name].append(i)
    return DatasetDict({name: dataset.select(idx) for name, idx in indices.items()})


def load_user_speech_dataset(
    name_or_path: str | os.PathLike,
    forget_speaker: str,
    audio_column: str = "audio",
    text_column: str = "text",
    speaker_column: str = "speaker_id",
    id_column: str | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    **load_kwargs,
) -> DatasetDict:
    """Your own speech dataset (a Hub name or a local path) in the benchmark's 4-split shape.

    A directory written by `save_to_disk` is read with `datasets.load_from_disk`; anything else goes to
    `datasets.load_dataset(name_or_path, **load_kwargs)`. Audio must be a `{"array", "sampling_rate"}` column
    (decoding `datasets.Audio` needs torchcodec, which is not always installable); audio at another sampling rate
    is **resampled to 16 kHz** here, because Whisper's feature extractor accepts nothing else.

    Args:
        name_or_path (`str`): Hub dataset name or local path.
        forget_speaker (`str`): Value of `speaker_column` whose utterances form the forget set.
        audio_column, text_column, speaker_column (`str`): Column names in your dataset.
        id_column (`str`, *optional*): Utterance id column; without it ids are `"<split>-<row>"`.
        train_split (`str`, *optional*, defaults to `"train"`): Split to forget from (ignored for a plain `Dataset`).
        test_split (`str`, *optional*): Held-out split for `test`/`forget_test`. Without it, `test_fraction` of
            each speaker's utterances is held out (deterministic for `seed`).

    Returns:
        `DatasetDict` with splits `forget`, `retain`, `test`, `forget_test` and columns `id`, `audio`, `text`,
        `speaker_id`.
    """
    path = Path(name_or_path)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
        loaded = load_from_disk(str(path))
    else:
        loaded = load_dataset(str(name_or_path), **load_kwargs)

    if isinstance(loaded, DatasetDict):
        if train_split not in loaded:
            raise ValueError(f"Split {train_split!r} not found (have {list(loaded)}); set train_split=...")
        train = loaded[train_split]
        if test_split is not None and test_split not in loaded:
            raise ValueError(f"Split {test_split!r} not found (have {list(loaded)}); set test_split=...")
        test = loaded[test_split] if test_split is not None else None
    else:
        train, test = loaded, None
        if test_split is not None:
            raise ValueError("test_split was given but the dataset has no splits; use test_fraction instead.")

    columns = {"audio_column": audio_column, "text_column": text_column, "speaker_column": speaker_column}
    if id_column is not None:
        columns["id_column"] = id_column
    for part in (train, test):
        if part is None:
            continue
        for option, column in columns.items():
            if column not in part.column_names:
                raise ValueError(
                    f"Column {column!r} not found in the dataset (columns: {part.column_names}); set "
                    f"{option}=... to the column that holds it."
                )

    train = _standardise(train, audio_column, text_column, speaker_column, id_column, train_split)
    if test is not None:
        test = _standardise(test, audio_column, text_column, speaker_column, id_column, test_split)
        heldout = [False] * len(train) + [True] * len(test)
        merged = concatenate_datasets([train, test])
    else:
        merged = train
        heldout = _hold_out(list(train["speaker_id"]), test_fraction, seed)

    speakers = sorted(set(merged["speaker_id"]))
    if forget_speaker not in speakers:
        raise ValueError(f"Unknown forget_speaker {forget_speaker!r}; available speakers: {speakers}.")
    splits = _split_by_speaker(merged, forget_speaker, heldout)
    if len(splits["forget"]) == 0:
        raise ValueError(
            f"Speaker {forget_speaker!r} has no training utterance left to forget; lower test_fraction or choose "
            "another forget_speaker."
        )
    if len(splits["retain"]) == 0:
        raise ValueError("No retain utterances: the dataset needs at least one speaker besides the forget speaker.")
    return splits


def _hold_out(speakers: list[str], fraction: float, seed: int) -> list[bool]:
    """Mark `fraction` of each speaker's rows as held out (at least one when the speaker has two or more)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {fraction}.")
    rng = np.random.default_rng(seed)
    heldout = [False] * len(speakers)
    by_speaker: dict[str, list[int]] = {}
    for i, speaker in enumerate(speakers):
        by_speaker.setdefault(speaker, []).append(i)
    for speaker in sorted(by_speaker):
        rows = by_speaker[speaker]
        count = int(round(fraction * len(rows)))
        if fraction > 0 and count == 0 and len(rows) > 1:
            count = 1
        for i in rng.permutation(rows)[:count]:
            heldout[int(i)] = True
    return heldout


def _standardise(dataset: Dataset, audio_column, text_column, speaker_column, id_column, split_name) -> Dataset:
    def convert(example, idx):
        audio = example[audio_column]
        if not isinstance(audio, dict) or "array" not in audio or "sampling_rate" not in audio:
            raise ValueError(
                f"Column {audio_column!r} must hold {{'array', 'sampling_rate'}} dicts, got {type(audio).__name__}; "
                "decode the audio first (datasets.Audio needs torchcodec)."
            )
        array = np.asarray(audio["array"], dtype=np.float32)
        if array.ndim == 2:  # multi-channel: average to mono
            array = array.mean(axis=0 if array.shape[0] < array.shape[1] else 1)
        array = resample(array, int(audio["sampling_rate"]), TARGET_SAMPLING_RATE)
        return {
            "id": str(example[id_column]) if id_column is not None else f"{split_name}-{idx}",
            "audio": {"array": array, "sampling_rate": TARGET_SAMPLING_RATE},
            "text": str(example[text_column]),
            "speaker_id": str(example[speaker_column]),
        }

    features = Features({name: feature for name, feature in _features().items() if name != "_heldout"})
    return dataset.map(
        convert, with_indices=True, remove_columns=dataset.column_names, features=features, keep_in_memory=True
    )
