"""A tiny Llama and its tokenizer, built offline from config for the embedded text benchmark.

The tokenizer is a byte-level BPE learnt from the corpus with `tokenizers`, wrapped in `PreTrainedTokenizerFast`
with bos/eos/pad/unk set, so it saves and loads like any Hub tokenizer and every code path (padding, special
tokens, `decode(skip_special_tokens=True)`) is the one a real causal LM takes.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"


def build_llama_tokenizer(
    corpus_texts: Iterable[str], vocab_size: int = 512, model_max_length: int = 128
) -> PreTrainedTokenizerFast:
    """A byte-level BPE over `corpus_texts` that prepends `<s>` like Llama's tokenizer.

    `vocab_size` includes the 256 byte symbols and the 4 special tokens. Byte-level means any text (a user's
    question) still encodes, only in more tokens.
    """
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 260),
        special_tokens=[BOS, EOS, PAD, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus_texts), trainer)
    bos_id = bpe.token_to_id(BOS)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
    )


TINY_LLAMA_DEFAULTS = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    attn_implementation="eager",  # vmap-friendly for OrthoGrad's generic path; no speed difference at this size
)


def build_tiny_llama(tokenizer: PreTrainedTokenizerFast, **config_overrides) -> LlamaForCausalLM:
    """A randomly initialised `LlamaForCausalLM` sized for a CPU (~0.9 M parameters by default).

    The vocabulary and special-token ids come from `tokenizer`; `config_overrides` go to `LlamaConfig`
    (e.g. `hidden_size=32` in tests). Greedy decoding is the generation default, as the metrics expect.
    """
    values = dict(TINY_LLAMA_DEFAULTS)
    values.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    values.update(config_overrides)
    model = LlamaForCausalLM(LlamaConfig(**values))
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        do_sample=False,
        num_beams=1,
    )
    return model
