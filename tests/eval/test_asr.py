"""WER/CER against hand-computed cases, the shared normaliser, and greedy transcription of plain/peft models."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_unlearn.data import prepare_speech_dataset
from hf_unlearn.eval import char_error_rate, normalize_transcript, transcribe, wer_cer, word_error_rate
from hf_unlearn.models import build_tiny_whisper


def test_normalizer_lowercases_strips_punctuation_and_collapses_spaces():
    assert normalize_transcript("  Hello,   World!\tHow's it going?? ") == "hello world how s it going"
    assert normalize_transcript("...") == ""


def test_wer_and_cer_hand_computed():
    # one substitution (b->x) and one deletion (d): 2 edits / 4 reference words
    assert word_error_rate(["a b c d"], ["a x c"]) == pytest.approx(2 / 4)
    # characters of "a b c d" (7): b->x substitution, " d" deleted: 3 edits
    assert char_error_rate(["a b c d"], ["a x c"]) == pytest.approx(3 / 7)
    # insertions count, so WER can exceed 1
    assert word_error_rate(["a"], ["a b c"]) == pytest.approx(2.0)


def test_error_rates_are_corpus_level_not_mean_of_utterances():
    # 1 edit over 6 reference words; the mean of per-utterance WERs would be (1/2 + 0) / 2 = 0.25
    assert wer_cer(["a b", "c d e f"], ["a", "c d e f"])["wer"] == pytest.approx(1 / 6)


def test_references_and_hypotheses_are_normalised_alike():
    assert wer_cer(["Hello, world."], ["hello WORLD"]) == {"wer": 0.0, "cer": 0.0}


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer_cer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        wer_cer([], [])
    with pytest.raises(ValueError, match="empty after normalisation"):
        wer_cer(["?!"], ["a"])


@pytest.fixture(scope="module")
def small_model(tiny_processor):
    torch.manual_seed(0)
    return build_tiny_whisper(tiny_processor, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64)


def test_transcribe_plain_and_peft_models_from_audio_or_features(tiny_corpus, tiny_processor, small_model):
    data = tiny_corpus["forget"]
    plain = transcribe(small_model, tiny_processor, data, batch_size=3, max_new_tokens=4)
    assert len(plain) == len(data) and all(isinstance(text, str) for text in plain)
    features = prepare_speech_dataset(data, tiny_processor)
    assert transcribe(small_model, tiny_processor, features, batch_size=2, max_new_tokens=4) == plain

    small_model.train()
    peft_model = get_peft_model(small_model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    # a fresh adapter is a no-op (lora_B = 0): the peft model must decode exactly like the base model
    assert transcribe(peft_model, tiny_processor, data, batch_size=3, max_new_tokens=4) == plain
    assert peft_model.training  # training mode restored
    peft_model.unload()


def test_transcribe_follows_model_dtype(tiny_corpus, tiny_processor, small_model):
    model64 = build_tiny_whisper(tiny_processor, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64)
    model64.load_state_dict(small_model.state_dict())
    model64.to(torch.float64)
    data = tiny_corpus["forget"].select(range(2))
    assert len(transcribe(model64, tiny_processor, data, max_new_tokens=3)) == 2


def test_transcribe_caps_max_new_tokens_at_the_decoder_length(tiny_corpus, tiny_processor):
    """A budget larger than max_target_positions minus the prefix must not make generate() raise."""
    from hf_unlearn.eval.asr import transcribe
    from hf_unlearn.models import build_tiny_whisper

    model = build_tiny_whisper(tiny_processor, max_target_positions=16)
    hypotheses = transcribe(model, tiny_processor, tiny_corpus["test"].select(range(2)), max_new_tokens=64)
    assert len(hypotheses) == 2


def test_transcribe_passes_the_whole_frame_mask_and_decodes_as_without_it(tiny_corpus, tiny_processor, small_model):
    """The all-ones frame mask silences `generate`'s per-batch "attention mask is not set" warning (pad = eos in
    Whisper) and changes nothing: Whisper's encoder attends to every frame either way."""
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging as transformers_logging

    from hf_unlearn.eval.asr import _batch_features

    data = tiny_corpus["forget"].select(range(4))
    logger = transformers_logging.get_logger("transformers.generation.utils")
    transformers_logging.warning_once.cache_clear()  # the warning is emitted once per process: let it be seen again
    with CaptureLogger(logger) as captured:
        hypotheses = transcribe(small_model, tiny_processor, data, batch_size=2, max_new_tokens=6)
    assert "attention mask is not set" not in captured.out
    assert "together with generation-related arguments" not in captured.out  # transformers' own Whisper notice

    features = _batch_features(data[:4], tiny_processor)
    prefix = len(tiny_processor.tokenizer.prefix_tokens)
    unmasked = small_model.generate(input_features=features, do_sample=False, num_beams=1, max_length=prefix + 6)
    decoded = tiny_processor.tokenizer.batch_decode(unmasked, skip_special_tokens=True)
    assert hypotheses == [text.strip() for text in decoded]


def test_only_whispers_own_generate_notice_is_dropped():
    import logging

    from hf_unlearn.integrations.transformers import whisper_generate_without_internal_notice

    logger = logging.getLogger("transformers.generation.utils")
    whisper_own = (
        "Passing `generation_config` together with generation-related arguments=({'suppress_tokens', "
        "'begin_suppress_tokens'}) is deprecated and will be removed in future versions."
    )
    a_callers = whisper_own.replace("'begin_suppress_tokens'", "'max_new_tokens'")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        with whisper_generate_without_internal_notice():
            for message in (whisper_own, a_callers, "any other line"):
                logger.warning(message)
        logger.warning(whisper_own)  # outside the block: shown
    finally:
        logger.removeHandler(handler)
    assert seen == [a_callers, "any other line", whisper_own]
