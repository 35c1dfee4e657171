"""Unlearn one speaker from a Whisper model (the code is `hf_unlearn.recipes.whisper`, also `hf-unlearn unlearn`).

    # The embedded default (synthetic speakers, a tiny Whisper trained here; no network, a few minutes on a CPU):
    accelerate launch recipes/unlearn_whisper.py

    # Another method, another speaker, overrides on top of the YAML preset (recipes/whisper_tiny.yaml):
    accelerate launch recipes/unlearn_whisper.py --method npo --forget_speaker speaker_3 --max_steps 60

    # Another preset:
    accelerate launch recipes/unlearn_whisper.py --config my_preset.yaml

    # A real checkpoint and dataset (Hub id or local path; columns audio / text / speaker_id):
    accelerate launch recipes/unlearn_whisper.py --model_name_or_path openai/whisper-small \
        --dataset_name ./my_speech_dataset --forget_speaker 1234 --output_dir outputs/whisper-small-forget-1234

    # Push the adapter, processor and model card (checked before any training: needs a token and a repo id):
    accelerate launch recipes/unlearn_whisper.py --push_to_hub --hub_model_id your-name/whisper-tiny-forget-speaker0
    # ... or write exactly what would be uploaded into a folder, without any network:
    accelerate launch recipes/unlearn_whisper.py --hub_dry_run_dir outputs/hub_upload

Writes to `output_dir`: the LoRA adapter (safetensors), the processor, `unlearn_config.json`, `metrics.json`
(`{"base"|"retrain"|"unlearned": {split: {"wer", "cer"}}}`), `trainer_state.json`, the plots (PNG) and the model
card `README.md`, and prints the table.
"""

from hf_unlearn.recipes.whisper import ScriptArguments, main, make_parser, parse_args, run


__all__ = ["ScriptArguments", "main", "make_parser", "parse_args", "run"]

if __name__ == "__main__":
    run()
