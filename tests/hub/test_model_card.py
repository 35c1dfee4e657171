"""Model card and Hub push of an unlearned model, all offline: rendered, parsed back, dry-run, early errors."""

import hashlib
import json
from dataclasses import fields

import pytest
from datasets import Dataset
from huggingface_hub import ModelCard
from peft import LoraConfig
from transformers import PreTrainedTokenizerFast, TrainingArguments

from hf_unlearn import METHODS, GradAscentConfig, GradAscentTrainer
from hf_unlearn.hub import forget_fingerprint
from hf_unlearn.hub import model_card as hub_card

from ..testing_utils import VOCAB, collate, tiny_gpt2, token_dataset
from ..testing_utils import make_trainer as shared_make_trainer


BASE_ID = "hf-internal-testing/tiny-random-gpt2"
LORA = dict(r=2, lora_alpha=4, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True)
RESULTS = {
    "base": {"forget": {"loss": 0.125, "wer": 0.01}, "test": {"loss": 0.5, "wer": 0.1}},
    "retrain": {"forget": {"loss": 2.25, "wer": 0.9}, "test": {"loss": 0.5, "wer": 0.1}},
    "unlearned": {"forget": {"loss": 3.5, "wer": 0.8}, "test": {"loss": 0.75, "wer": 0.2}},
}


def make_trainer(
    tmp_path, method="ga", forget=None, processing_class=None, trainer_cls=None, base_name=BASE_ID, **overrides
):
    model = tiny_gpt2()
    model.config._name_or_path = base_name
    return shared_make_trainer(
        method,
        tmp_path,
        model=model,
        forget=forget,
        retain=token_dataset(4, seed=2),
        processing_class=processing_class,
        peft_config=LoraConfig(**LORA),
        trainer_cls=trainer_cls,
        **{"per_device_train_batch_size": 2, "max_steps": 1, "save_strategy": "no", **overrides},
    )


@pytest.mark.parametrize("method", sorted(METHODS))
def test_card_renders_and_parses_for_every_method(method, tmp_path):
    trainer = make_trainer(tmp_path, method)
    trainer.set_card_info(metrics=RESULTS, datasets=["some-org/some-speech", str(tmp_path)], command="python run.py")
    trainer.create_model_card()

    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.base_model == BASE_ID
    assert {"unlearning", "hf-unlearn"} <= set(card.data.tags)
    assert set(type(trainer)._tag_names) <= set(card.data.tags)  # the method's own tag
    assert card.data.datasets == ["some-org/some-speech"]  # the local path is not Hub metadata
    text = card.text
    assert f"**{trainer._name}**" in text
    base_fields = {f.name for f in fields(TrainingArguments)}
    for field in fields(type(trainer.args)):
        if field.name not in base_fields:
            shown = f"| `{field.name}` |" in text
            hidden = field.name in hub_card.NOT_HYPERPARAMETERS or field.name in trainer.args.renamed_fields
            assert shown != hidden, f"{field.name} shown: {shown}"
    assert "| forget | loss | 0.1250 | 2.2500 | 3.5000 |" in text
    assert "python run.py" in text
    for library in ("torch", "transformers", "peft", "hf_unlearn"):
        assert f"- {library}: " in text
    paper = getattr(type(trainer), "_paper", None)
    if paper:
        assert f"https://huggingface.co/papers/{paper['id']}" in text
        if "bibtex" in paper:
            assert paper["bibtex"].strip() in text
    else:
        assert "## Citation" not in text


def test_full_model_and_local_base_model_metadata(tmp_path):
    """Without an adapter the library is transformers; a local base model is described, not put in metadata."""
    model = tiny_gpt2()
    model.config._name_or_path = str(tmp_path)  # an existing local folder
    trainer = GradAscentTrainer(
        model=model,
        args=GradAscentConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none"),
        forget_dataset=token_dataset(2, seed=1),
        data_collator=collate,
    )
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.base_model is None
    assert str(tmp_path) not in card.text and f"`{tmp_path.name}`" in card.text  # folder name, not the full path
    assert "Results" not in card.text  # no metrics given, no table


def test_fingerprint_counts_and_hashes_ids_never_content(tmp_path):
    texts = [f"secret utterance number {i} by speaker zero" for i in range(5)]
    ids = [f"spk0-utt{i:03d}" for i in range(5)]
    forget = token_dataset(5, seed=1).remove_columns("id").add_column("id", ids).add_column("text", texts)

    fingerprint = forget_fingerprint(forget)
    assert fingerprint["count"] == 5
    assert fingerprint["sha256"] == hashlib.sha256(json.dumps(sorted(ids)).encode()).hexdigest()
    assert forget_fingerprint(forget.shuffle(seed=0))["sha256"] == fingerprint["sha256"]  # order does not matter
    assert forget_fingerprint(forget.select(range(4)))["sha256"] != fingerprint["sha256"]

    trainer = make_trainer(tmp_path, "graddiff", forget=forget)
    trainer.create_model_card()
    text = (tmp_path / "out" / "README.md").read_text()
    assert fingerprint["sha256"] in text
    assert "| 5 |" in text
    for secret in texts + ids + ["secret", "spk0"]:
        assert secret not in text


def test_fingerprint_without_id_column_hashes_rows():
    rows = Dataset.from_list([{"text": "a"}, {"text": "b"}, {"text": "c"}])
    changed = Dataset.from_list([{"text": "a"}, {"text": "b"}, {"text": "d"}])
    fingerprint = forget_fingerprint(rows)
    assert fingerprint["count"] == 3 and "per-row" in fingerprint["source"]
    assert fingerprint["sha256"] == forget_fingerprint(rows.select([2, 0, 1]))["sha256"]
    assert fingerprint["sha256"] != forget_fingerprint(changed)["sha256"]


def test_dry_run_writes_exactly_the_upload(tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(VOCAB)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")))
    trainer = make_trainer(tmp_path, "npo", processing_class=tokenizer, base_name=str(tmp_path / "my-base"))
    trainer.set_card_info(metrics=RESULTS, command=f"python run.py --output_dir {tmp_path}/out --method npo")
    output_dir = tmp_path / "out"
    (output_dir / "metrics.json").write_text("{}")  # uploaded by push_to_hub, so in the dry run too
    (output_dir / "_scratch.txt").write_text("x")  # Trainer's ignore patterns
    (output_dir / "checkpoint-1").mkdir()
    (output_dir / "checkpoint-1" / "adapter_model.safetensors").write_text("stale")

    files = trainer.save_for_hub(tmp_path / "dry")
    written = sorted(p.relative_to(tmp_path / "dry").as_posix() for p in (tmp_path / "dry").rglob("*") if p.is_file())
    assert files == written
    expected = {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "training_args.bin",
    }
    assert expected <= set(files)
    assert not any(name.startswith(("_", "checkpoint-")) for name in files)
    assert set(files) - expected <= {"special_tokens_map.json", "chat_template.jinja"}, files
    card = ModelCard.load(tmp_path / "dry" / "README.md")
    assert card.data.library_name == "peft" and "npo" in card.data.tags
    assert not (output_dir / "adapter_model.safetensors").exists()  # output_dir itself is left alone

    # Nothing of this machine's file system in the upload (tmp_path holds output_dir and the base model's name).
    for path in (tmp_path / "dry").rglob("*"):
        if path.is_file():
            assert str(tmp_path).encode() not in path.read_bytes(), f"{path.name} holds a local path"
    assert json.loads((tmp_path / "dry" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    assert card.data.pipeline_tag == "text-generation" and "## How to use" in card.text
    assert "python run.py --output_dir out --method npo" in card.text  # the command, its paths shortened
    unlearned = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert unlearned == {
        ("hf-unlearn/forget", "loss"): 3.5,
        ("hf-unlearn/forget", "wer"): 0.8,
        ("hf-unlearn/test", "loss"): 0.75,
        ("hf-unlearn/test", "wer"): 0.2,
    }
    assert "overwrite_output_dir" not in card.text and "LoRA adapter" in card.text

    with pytest.raises(FileExistsError, match="not empty"):
        trainer.save_for_hub(tmp_path / "dry")
    with pytest.raises(ValueError, match="other than output_dir"):
        trainer.save_for_hub(output_dir)


def test_card_written_at_checkpoints_and_at_save(tmp_path):
    trainer = make_trainer(tmp_path, "ga", save_strategy="steps", save_steps=1, max_steps=1)
    trainer.train()
    output_dir = tmp_path / "out"
    for folder in (output_dir, output_dir / "checkpoint-1"):
        card = ModelCard.load(folder / "README.md")
        assert "gradient-ascent" in card.data.tags, folder
    trainer.set_card_info(metrics=RESULTS)
    trainer.save_model()
    card = ModelCard.load(output_dir / "README.md")
    assert "| forget | loss | 0.1250 | 2.2500 | 3.5000 |" in card.text  # peft's own card was replaced


def test_push_without_hub_model_id_fails_at_construction(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_card, "get_token", lambda: "hf_dummy")
    with pytest.raises(ValueError, match="hub_model_id"):
        make_trainer(tmp_path, push_to_hub=True)
    assert not (tmp_path / "out").exists()  # the Trainer never got to create output_dir or the repo


def test_push_without_token_fails_at_construction(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_card, "get_token", lambda: None)
    with pytest.raises(ValueError, match="no Hugging Face token"):
        make_trainer(tmp_path, push_to_hub=True, hub_model_id="me/unlearned")


def test_push_while_offline_fails_at_construction(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_card, "get_token", lambda: "hf_dummy")
    monkeypatch.setattr(hub_card.hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        make_trainer(tmp_path, push_to_hub=True, hub_model_id="me/unlearned")


@pytest.mark.parametrize("bad", ["{{ card_data }}\n{{ forget.nope }}", "{{ card_data }}\n{{ not_a_field }}"])
def test_unknown_template_field_fails_at_construction(tmp_path, bad):
    template = tmp_path / "bad.md"
    template.write_text(bad)

    class BadCardTrainer(GradAscentTrainer):
        _card_template = template

    with pytest.raises(ValueError, match="unknown field"):
        make_trainer(tmp_path, trainer_cls=BadCardTrainer)


def test_default_template_passes_the_check():
    hub_card.check_card_template()  # also what every trainer runs at construction
