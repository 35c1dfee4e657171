"""The base model and the exact-retrain reference of the speech benchmark, trained and cached (DESIGN §6, §7).

Named for what it trains, apart from `hf_unlearn.methods.reference` (π_ref, the policy NPO-style losses compare to).

"base" is the tiny Whisper trained from scratch on forget + retain: the model to unlearn from, which knows the forget
speaker's voice. "retrain" is trained identically on retain only: the gold standard unlearning should look like (on
the default corpus it still recognises some of the forget speaker's words from the other voices, so its forget WER,
not 1.0, is the target). Both are cached on disk keyed by a hash of everything that determines them (training data content,
tokenizer, model config, hyperparameters), so a benchmark run pays for training once.
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
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from hf_unlearn.data.collators import SpeechSeq2SeqCollator, prepare_speech_dataset
from hf_unlearn.models.cache import INFO_FILE as INFO_FILE  # re-exported: where the info file lives
from hf_unlearn.models.cache import cached_model_dir, config_for_key
from hf_unlearn.models.tiny_whisper import build_tiny_whisper, build_whisper_processor
from hf_unlearn.models.training import REFERENCE_ROLES, FromScratchConfig, fit_from_scratch


# Bump when training code changes in a way that changes the result, so stale caches are not reused.
_REFERENCE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ReferenceTrainingConfig(FromScratchConfig):
    """Hyperparameters for training a reference Whisper from scratch on CPU (fields: `FromScratchConfig`).

    The defaults (learning rate 1e-3, 30 epochs, batch 8, 50 warmup steps, warmup-stable-decay) train the base model
    on the default corpus (360 utterances) for 1350 steps. The loss sits on a plateau for the first ~300-400 steps
    (the decoder knows the grammar but does not yet listen); a constant learning rate carries it through, and the
    final decay settles the transcripts. Measured (seed 0): base WER 0.000 on its training utterances and 0.028 on
    held-out sentences of its speakers; the exact-retrain model 0.147 on the forgotten speaker. 16 epochs (720
    steps, on an earlier draw of the grammar's sentences) were not enough: base held-out WER 0.43.
    """

    num_train_epochs: int = 30

    @classmethod
    def tiny(cls, **overrides) -> "ReferenceTrainingConfig":
        """For `SpeechCorpusConfig.tiny()` in tests: a dozen utterances memorised in well under a minute."""
        values = dict(
            learning_rate=1e-3,
            num_train_epochs=100,
            batch_size=4,
            warmup_steps=20,
            lr_scheduler_type="constant_with_warmup",
        )
        values.update(overrides)
        return cls(**values)


def processor_for_corpus(corpus: DatasetDict, clip_seconds: int = 4, vocab_size: int = 512) -> WhisperProcessor:
    """The processor shared by the base and retrain models of `corpus`.

    The tokenizer is learnt from the sorted training transcripts of *all* speakers (forget + retain), so it is the
    same whichever speaker is forgotten and both references (and the unlearned model) share one vocabulary.
    """
    texts = sorted(list(corpus["forget"]["text"]) + list(corpus["retain"]["text"]))
    return build_whisper_processor(texts, clip_seconds=clip_seconds, vocab_size=vocab_size)


def train_reference_model(
    corpus: DatasetDict,
    kind: Literal["base", "retrain"],
    processor: WhisperProcessor | None = None,
    model_overrides: dict | None = None,
    training_config: ReferenceTrainingConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """Train (or reuse from cache) a tiny Whisper from scratch and return the local directory it is saved in.

    Args:
        corpus (`DatasetDict`): Splits `forget` and `retain` (as from `build_speech_corpus`).
        kind (`"base"` or `"retrain"`): Train on forget + retain, or on retain only (the exact-retrain reference).
        processor (`WhisperProcessor`, *optional*): Defaults to `processor_for_corpus(corpus)`; it is saved with the
            model, so `WhisperProcessor.from_pretrained(path)` gives it back.
        model_overrides (`dict`, *optional*): `WhisperConfig` overrides passed to `build_tiny_whisper`.
        training_config (`ReferenceTrainingConfig`, *optional*): Hyperparameters; defaults to the class defaults.
        cache_dir (`str`, *optional*): Defaults to `$HF_UNLEARN_CACHE` or `~/.cache/hf_unlearn`.

    Returns:
        Path of a directory holding `model.safetensors`, the configs, the processor files and
        `hf_unlearn_reference.json` (the cache key's inputs and training statistics).
    """
    if kind not in ("base", "retrain"):
        raise ValueError(f"kind must be 'base' or 'retrain', got {kind!r}.")
    for split in ("forget", "retain"):
        if split not in corpus:
            raise ValueError(
                f"The corpus needs a {split!r} split (as built by build_speech_corpus); got {list(corpus)}."
            )
    processor = processor if processor is not None else processor_for_corpus(corpus)
    training_config = training_config if training_config is not None else ReferenceTrainingConfig()
    model_overrides = dict(model_overrides or {})

    parts = [corpus["forget"], corpus["retain"]] if kind == "base" else [corpus["retain"]]
    train_split = concatenate_datasets(parts)
    order = np.argsort(np.asarray(list(train_split["id"])), kind="stable")
    train_split = train_split.select(order)  # the base set is the same rows whichever speaker is forgotten

    # The model config is resolved first so the key covers defaults, not only the overrides given here.
    transformers.set_seed(training_config.seed)
    model = build_tiny_whisper(processor, **model_overrides)
    key_payload = {
        "format": _REFERENCE_FORMAT_VERSION,
        "data": dataset_digest(train_split),
        "tokenizer": _tokenizer_digest(processor),
        "feature_extractor": processor.feature_extractor.to_dict(),
        "model": config_for_key(model.config),
        "training": asdict(training_config),
    }

    def build(directory: Path) -> dict:
        stats = _train(model, processor, train_split, training_config, directory / "trainer", REFERENCE_ROLES[kind])
        shutil.rmtree(directory / "trainer", ignore_errors=True)
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
        return {"num_train_utterances": len(train_split), **stats}

    return cached_model_dir(kind, key_payload, build, cache_dir)


def _train(
    model: WhisperForConditionalGeneration,
    processor: WhisperProcessor,
    train_split: Dataset,
    config: ReferenceTrainingConfig,
    output_dir: Path,
    role: str,
) -> dict:
    features = prepare_speech_dataset(train_split, processor)
    collator = SpeechSeq2SeqCollator(processor)
    return fit_from_scratch(model, features, collator, config, output_dir, description=f"Whisper {role}")


def load_reference_model(path: str | os.PathLike) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """The model (in eval mode) and processor saved by `train_reference_model`."""
    model = WhisperForConditionalGeneration.from_pretrained(str(path))
    model.eval()
    return model, WhisperProcessor.from_pretrained(str(path))


def dataset_digest(dataset: Dataset) -> str:
    """Content hash of a speech split (ids, texts, speakers, audio samples), in row order."""
    digest = hashlib.sha256()
    table = dataset.with_format("arrow")
    for start in range(0, len(dataset), 256):
        batch = table[start : start + 256]
        for name in ("id", "text", "speaker_id"):
            if name in batch.column_names:
                digest.update(json.dumps(batch.column(name).to_pylist()).encode())
        if "audio" in batch.column_names:
            audio = batch.column("audio").combine_chunks()
            samples = audio.field("array").flatten()  # respects slicing offsets, unlike `.values`
            digest.update(np.asarray(samples.to_numpy(zero_copy_only=False), dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def _tokenizer_digest(processor: WhisperProcessor) -> str:
    return hashlib.sha256(processor.tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]
