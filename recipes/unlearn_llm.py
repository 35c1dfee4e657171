"""Unlearn fictitious people from a causal LM (the code is `hf_unlearn.recipes.llm`, also `hf-unlearn unlearn --recipe
llm`).

    # The embedded default (fictitious people, a tiny Llama trained here; no network, a few minutes on a CPU):
    accelerate launch recipes/unlearn_llm.py

    # Another method, overrides on top of the YAML preset (recipes/llm_tiny.yaml):
    accelerate launch recipes/unlearn_llm.py --method npo --max_steps 40

    # The tiniest setting (tests, smoke runs):
    python recipes/unlearn_llm.py --corpus_preset tiny --max_steps 2

    # A real causal LM and a TOFU-style dataset (Hub ids or local dirs; columns question / answer, optionally
    # paraphrased_answer / perturbed_answer; splits named by --forget_split / --retain_split / ...):
    accelerate launch recipes/unlearn_llm.py --model_name_or_path ./my-llama --dataset_name ./my_tofu \
        --lora_target_modules q_proj v_proj --output_dir outputs/my-llama-forget

Writes to `output_dir`: the LoRA adapter (safetensors), the tokenizer, `unlearn_config.json`, `metrics.json`
(`{"base"|"retrain"|"unlearned": {split: {metric: value}}}`), `trainer_state.json`, the plots (PNG) and the model
card `README.md`, and prints the table.
"""

from hf_unlearn.recipes.llm import ScriptArguments, main, make_parser, parse_args, run


__all__ = ["ScriptArguments", "main", "make_parser", "parse_args", "run"]

if __name__ == "__main__":
    run()
