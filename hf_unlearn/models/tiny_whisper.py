"""A tiny Whisper and its tokenizer, built offline from config (no Hub download exists for either).

The tokenizer is a real `WhisperTokenizer` over a small byte-level BPE trained on the corpus transcripts, with
Whisper's special tokens in Whisper's order. Keeping the real class (rather than a char-level stand-in) means the
prefix/special-token path, `decode(skip_special_tokens=True)` and `generate(language=..., task=...)` are exactly
those of a Hub checkpoint, so code exercised on the tiny model also runs on `openai/whisper-*`.
"""

import json
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES


EOT = "<|endoftext|>"
SOT = "<|startoftranscript|>"


def whisper_special_tokens() -> list[str]:
    """Whisper's special tokens after `<|endoftext|>`, in Whisper's order.

    `WhisperTokenizer.prefix_tokens` computes the language token as `sot_id + 1 + index(language)`, so every
    language token must follow `<|startoftranscript|>` contiguously in `LANGUAGES` order.
    """
    languages = [f"<|{code}|>" for code in LANGUAGES]
    return [SOT, *languages, "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
            "<|notimestamps|>"]  # fmt: skip


def build_whisper_tokenizer(corpus_texts: Iterable[str], vocab_size: int = 512) -> WhisperTokenizer:
    """A `WhisperTokenizer` with a byte-level BPE learnt from `corpus_texts` (English/transcribe prefix set).

    `vocab_size` counts the BPE tokens only (at least the 256 bytes); the special tokens come on top.
    """
    bpe = Tokenizer(models.BPE())
    # Whisper's own pre-tokenizer: byte-level, no prefix space, so training and WhisperTokenizer agree on words.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 257), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(list(corpus_texts), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    # vocab=/merges= and not vocab_file=: in transformers v5 a vocab_file alone silently gives a 1-token tokenizer.
    tokenizer = WhisperTokenizer(vocab=model["vocab"], merges=merges, unk_token=EOT, bos_token=EOT, eos_token=EOT)
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False) for t in whisper_special_tokens()
            ]
        }
    )
    tokenizer.pad_token = EOT  # Whisper pads with <|endoftext|>
    tokenizer.set_prefix_tokens(language="english", task="transcribe", predict_timestamps=False)
    return tokenizer


def build_whisper_processor(
    corpus_texts: Iterable[str], clip_seconds: int = 4, vocab_size: int = 512
) -> WhisperProcessor:
    """Feature extractor for `clip_seconds`-long windows plus the offline tokenizer.

    Whisper's encoder needs exactly `2 * max_source_positions` mel frames; `chunk_length=4` gives 400 frames,
    matching `max_source_positions=200` in `build_tiny_whisper` and running 8x cheaper than 30 s windows.
    """
    feature_extractor = WhisperFeatureExtractor(chunk_length=int(clip_seconds))
    return WhisperProcessor(
        feature_extractor=feature_extractor, tokenizer=build_whisper_tokenizer(corpus_texts, vocab_size)
    )


TINY_WHISPER_DEFAULTS = dict(
    d_model=128,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=512,
    decoder_ffn_dim=512,
    max_target_positions=64,
    dropout=0.0,
    attn_implementation="eager",  # float64-exact and vmap-friendly (ENVIRONMENT.md); speed is the same at this size
)


def build_tiny_whisper(processor: WhisperProcessor, **config_overrides) -> WhisperForConditionalGeneration:
    """A randomly initialised Whisper sized for CPU (~0.9 M parameters by default).

    `config_overrides` go to `WhisperConfig` (e.g. `d_model=64`). The vocabulary, special-token ids and
    `max_source_positions` come from `processor`, and the generation config forces the English/transcribe prefix
    so that greedy `generate(input_features)` works offline.
    """
    tokenizer = processor.tokenizer
    feature_extractor = processor.feature_extractor
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    sot_id = tokenizer.convert_tokens_to_ids(SOT)
    values = dict(TINY_WHISPER_DEFAULTS)
    values.update(
        vocab_size=len(tokenizer),
        num_mel_bins=feature_extractor.feature_size,
        max_source_positions=feature_extractor.nb_max_frames // 2,
        decoder_start_token_id=sot_id,
        pad_token_id=eot_id,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    values.update(config_overrides)
    config = WhisperConfig(**values)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = whisper_generation_config(config, tokenizer)
    return model


def whisper_generation_config(config: WhisperConfig, tokenizer: WhisperTokenizer) -> GenerationConfig:
    """What `WhisperForConditionalGeneration.generate` needs to force `<|en|><|transcribe|><|notimestamps|>`."""
    generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        do_sample=False,
        num_beams=1,
    )
    generation_config.lang_to_id = {
        f"<|{code}|>": tokenizer.convert_tokens_to_ids(f"<|{code}|>") for code in LANGUAGES
    }
    generation_config.task_to_id = {
        "transcribe": tokenizer.convert_tokens_to_ids("<|transcribe|>"),
        "translate": tokenizer.convert_tokens_to_ids("<|translate|>"),
    }
    generation_config.no_timestamps_token_id = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    generation_config.is_multilingual = True
    generation_config.language = "en"
    generation_config.task = "transcribe"
    generation_config.forced_decoder_ids = None
    generation_config.suppress_tokens = []
    generation_config.begin_suppress_tokens = None
    return generation_config
