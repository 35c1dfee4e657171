"""ASR metrics for unlearning: WER/CER from greedy decoding (DESIGN §6).

References and hypotheses go through the same normaliser, so a model is never scored on casing or punctuation,
which the tiny benchmark's transcripts do not carry anyway.
"""

import re
import string
from typing import Any

import jiwer
import numpy as np
import torch
from datasets import Dataset
from transformers import WhisperProcessor

from hf_unlearn.data.collators import audio_array
from hf_unlearn.data.speech_corpus import TARGET_SAMPLING_RATE
from hf_unlearn.integrations.transformers import whisper_generate_without_internal_notice


_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_transcript(text: str) -> str:
    """Lowercase, replace punctuation with spaces, collapse whitespace."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def wer_cer(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus-level word and character error rates after `normalize_transcript`.

    Corpus-level means total edits over total reference words (jiwer's definition), not a mean of per-utterance
    rates. Empty normalised references are an error: their rate is undefined.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"Got {len(references)} references but {len(hypotheses)} hypotheses.")
    if not references:
        raise ValueError("Cannot compute WER on an empty set of references.")
    refs = [normalize_transcript(text) for text in references]
    hyps = [normalize_transcript(text) for text in hypotheses]
    if any(not ref for ref in refs):
        raise ValueError("A reference transcript is empty after normalisation; drop it from the evaluation set.")
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    return wer_cer(references, hypotheses)["wer"]


def char_error_rate(references: list[str], hypotheses: list[str]) -> float:
    return wer_cer(references, hypotheses)["cer"]


def _batch_features(examples: dict[str, list[Any]], processor: WhisperProcessor) -> torch.Tensor:
    if "input_features" in examples:
        return torch.as_tensor(np.asarray(examples["input_features"], dtype=np.float32))
    if "audio" not in examples:
        raise ValueError("The dataset needs an 'audio' or 'input_features' column to transcribe.")
    arrays = [audio_array(audio) for audio in examples["audio"]]
    return processor.feature_extractor(arrays, sampling_rate=TARGET_SAMPLING_RATE, return_tensors="pt").input_features


@torch.no_grad()
def transcribe(
    model: torch.nn.Module,
    processor: WhisperProcessor,
    dataset: Dataset,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Greedy transcripts of `dataset` (an `audio` or `input_features` column), in order.

    Works for a plain `WhisperForConditionalGeneration` and for a peft model wrapping one (generate is forwarded to
    the base model with the adapter active). Inputs are moved to the model's device and floating dtype; the model is
    put in eval mode for decoding and restored afterwards. `max_new_tokens` is capped at what the decoder can hold
    after Whisper's prefix tokens (`max_target_positions` minus the prefix), which `generate` would otherwise reject.
    """
    length_kwargs = {}
    if max_new_tokens is not None:
        prefix = len(processor.tokenizer.prefix_tokens)
        # As a total `max_length` (prefix + new tokens), the same limit: passing `max_new_tokens` beside the model's
        # own `generation_config.max_length` makes transformers warn on every batch that both are set.
        length_kwargs = {"max_length": prefix + min(max_new_tokens, model.config.max_target_positions - prefix)}
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    transcripts: list[str] = []
    try:
        with whisper_generate_without_internal_notice():
            for start in range(0, len(dataset), batch_size):
                batch = dataset[start : start + batch_size]
                features = _batch_features(batch, processor).to(device=parameter.device, dtype=parameter.dtype)
                # Whisper's encoder attends to every frame (the audio is zero-padded to its window, and it ignores any
                # mask), so all-ones is the true mask; passing it stops `generate` warning on every batch that none was
                # given while the pad token equals end-of-text.
                every_frame = torch.ones(
                    features.shape[0], features.shape[-1], dtype=torch.long, device=features.device
                )
                generated = model.generate(
                    input_features=features, attention_mask=every_frame, do_sample=False, num_beams=1, **length_kwargs
                )
                transcripts += processor.tokenizer.batch_decode(generated, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return [text.strip() for text in transcripts]


def evaluate_asr(
    model: torch.nn.Module,
    processor: WhisperProcessor,
    dataset: Dataset,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
) -> dict[str, float]:
    """`{"wer", "cer"}` of greedy transcripts of `dataset` against its `text` column."""
    hypotheses = transcribe(model, processor, dataset, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return wer_cer(list(dataset["text"]), hypotheses)
