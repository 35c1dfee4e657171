"""Batching speech for Whisper with per-example losses in mind.

The collator builds `decoder_input_ids` itself instead of letting the model shift `labels`: Whisper's decoder is
fed the forced prefix `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`, and the three prefix tokens after
`<|startoftranscript|>` are *given*, not predicted. Masking them (and padding) with -100 makes `ℓ_i` in
`hf_unlearn.losses.per_example_loss` the mean over the transcript tokens and `<|endoftext|>` only, so unlearning
never pushes the model away from predicting the language/task tokens.
"""

from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import WhisperProcessor

from hf_unlearn.data.speech_corpus import TARGET_SAMPLING_RATE, resample
from hf_unlearn.losses import IGNORE_INDEX


class SpeechSeq2SeqCollator:
    """Collate `{"input_features" | "audio", "text"}` examples into a Whisper training batch.

    Returns `input_features` `[B, n_mels, frames]`, `decoder_input_ids` `[B, T]` and `labels` `[B, T]` with
    `labels[:, t]` the target after `decoder_input_ids[:, t]`:

        decoder_input_ids: <|sot|> <|en|> <|transcribe|> <|notimestamps|> w_1 ... w_n   <pad>...
        labels:             -100    -100   -100           w_1             w_2 ... <|eot|> -100...

    Args:
        processor (`WhisperProcessor`): Its tokenizer must have its prefix set (`set_prefix_tokens`).
        max_target_length (`int`, *optional*): Truncate transcripts (EOT kept) to this many decoder positions.

    Example:

    ```python
    >>> collator = SpeechSeq2SeqCollator(processor)  # doctest: +SKIP
    >>> batch = collator([corpus["forget"][0], corpus["forget"][1]])  # doctest: +SKIP
    ```
    """

    def __init__(self, processor: WhisperProcessor, max_target_length: int | None = None) -> None:
        self.processor = processor
        self.max_target_length = max_target_length
        tokenizer = processor.tokenizer
        self.prefix_ids = list(tokenizer.prefix_tokens)  # [sot, (lang), (task), (notimestamps)]
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _features(self, examples: list[dict[str, Any]]) -> torch.Tensor:
        if all("input_features" in example for example in examples):
            return torch.stack([torch.as_tensor(np.asarray(e["input_features"], dtype=np.float32)) for e in examples])
        if not all("audio" in example for example in examples):
            raise ValueError(
                "Each example needs an 'input_features' or an 'audio' column; rename your audio column to 'audio' "
                "(a {'array', 'sampling_rate'} dict) or run prepare_speech_dataset first."
            )
        arrays = [audio_array(example["audio"]) for example in examples]
        extracted = self.processor.feature_extractor(arrays, sampling_rate=TARGET_SAMPLING_RATE, return_tensors="pt")
        return extracted.input_features

    def _token_ids(self, text: str) -> list[int]:
        tokens = self.processor.tokenizer(text, add_special_tokens=False).input_ids
        if self.max_target_length is not None:
            tokens = tokens[: max(0, self.max_target_length - len(self.prefix_ids))]
        return self.prefix_ids + tokens + [self.eos_token_id]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("Cannot collate an empty list of examples.")
        if any("text" not in example for example in examples):
            raise ValueError(
                "Each example needs a 'text' column with its transcript; rename your text column to 'text'."
            )
        sequences = [self._token_ids(example["text"]) for example in examples]
        length = max(len(seq) - 1 for seq in sequences)
        decoder_input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
        n_forced = len(self.prefix_ids) - 1  # prefix tokens after <|startoftranscript|> are given, not predicted
        for i, seq in enumerate(sequences):
            inputs, targets = seq[:-1], seq[1:]
            decoder_input_ids[i, : len(inputs)] = torch.tensor(inputs)
            labels[i, n_forced : len(targets)] = torch.tensor(targets[n_forced:])
        return {"input_features": self._features(examples), "decoder_input_ids": decoder_input_ids, "labels": labels}


def audio_array(audio: Any) -> np.ndarray:
    if not isinstance(audio, dict) or "array" not in audio:
        raise ValueError("The 'audio' column must hold {'array', 'sampling_rate'} dicts.")
    return resample(np.asarray(audio["array"], dtype=np.float32), int(audio.get("sampling_rate", 16000)))


def prepare_speech_dataset(dataset: Dataset, processor: WhisperProcessor, batch_size: int = 32) -> Dataset:
    """Precompute log-mel `input_features` once, so training epochs do not redo the STFTs.

    Keeps `id`, `text` and `speaker_id` (when present), drops `audio`.
    """
    for column in ("audio", "text"):
        if column not in dataset.column_names:
            raise ValueError(
                f"Column {column!r} not found (columns: {dataset.column_names}); rename the column that holds it "
                f"to {column!r} or load the data with load_user_speech_dataset(..., {column}_column=...)."
            )

    def extract(batch):
        arrays = [audio_array(audio) for audio in batch["audio"]]
        features = processor.feature_extractor(arrays, sampling_rate=TARGET_SAMPLING_RATE, return_tensors="np")
        return {"input_features": list(features.input_features)}

    return dataset.map(extract, batched=True, batch_size=batch_size, remove_columns=["audio"])
