"""Which checkpoint a resume takes, and which files of an output_dir a run may replace or delete."""

import json
import logging

import pytest

from hf_unlearn.checkpoints import latest_complete_checkpoint, resolve_resume_checkpoint
from hf_unlearn.output_files import MANIFEST_FILE, check_output_dir, record_outputs


def checkpoint(root, step, complete=True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def test_latest_complete_checkpoint_skips_a_torn_one_with_a_warning(tmp_path, caplog):
    checkpoint(tmp_path, 5)
    checkpoint(tmp_path, 10)
    checkpoint(tmp_path, 15, complete=False)
    (tmp_path / "checkpoint-9x").mkdir()  # not a checkpoint name
    with caplog.at_level(logging.WARNING, logger="hf_unlearn.checkpoints"):
        assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert "checkpoint-15" in caplog.text and "incomplete" in caplog.text


def test_resolve_resume_checkpoint(tmp_path):
    complete = checkpoint(tmp_path, 3)
    torn = checkpoint(tmp_path, 6, complete=False)
    assert resolve_resume_checkpoint(None, str(tmp_path)) is None
    assert resolve_resume_checkpoint("false", str(tmp_path)) is None
    assert resolve_resume_checkpoint(True, str(tmp_path)) == str(complete)
    assert resolve_resume_checkpoint("true", str(tmp_path)) == str(complete)
    assert resolve_resume_checkpoint(str(complete), None) == str(complete)
    with pytest.raises(ValueError, match="incomplete.*--resume_from_checkpoint true"):
        resolve_resume_checkpoint(str(torn), None)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-99"), None)
    with pytest.raises(FileNotFoundError, match="No complete checkpoint.*--output_dir"):
        resolve_resume_checkpoint(True, str(tmp_path / "empty"))


def test_non_empty_output_dir_is_refused_without_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        check_output_dir(str(tmp_path), overwrite=False, resuming=False)
    check_output_dir(str(tmp_path / "new"), overwrite=False, resuming=False)  # a new folder is fine


def test_overwrite_refuses_a_user_file_the_run_would_replace(tmp_path):
    (tmp_path / "README.md").write_text("the user's own")
    (tmp_path / "notes.txt").write_text("never touched, never blocks")
    with pytest.raises(FileExistsError, match=r"\['README.md'\].*did not write"):
        check_output_dir(str(tmp_path), overwrite=True, resuming=False)
    with pytest.raises(FileExistsError, match="README.md"):
        check_output_dir(str(tmp_path), overwrite=False, resuming=True)
    (tmp_path / "README.md").unlink()
    check_output_dir(str(tmp_path), overwrite=True, resuming=False)


def test_overwrite_accepts_the_toolkits_own_outputs(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    checkpoint(tmp_path, 4)
    (tmp_path / "metrics.json").write_text("{}")
    record_outputs(tmp_path, preexisting={"notes.txt"})
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())["entries"]
    assert manifest == ["checkpoint-4", "metrics.json"]
    check_output_dir(str(tmp_path), overwrite=True, resuming=False)
    with pytest.raises(FileExistsError, match="not empty"):
        check_output_dir(str(tmp_path), overwrite=False, resuming=False)


def test_rotation_deletes_only_this_runs_checkpoints(tmp_path):
    """--overwrite_output_dir over an earlier run with save_total_limit=1: the earlier run's checkpoint and the
    user's unrelated file survive; of this run's checkpoints only the newest is kept."""
    from peft import LoraConfig

    from tests.testing_utils import make_trainer, token_dataset

    out = tmp_path / "out"
    earlier = checkpoint(out, 100)
    record_outputs(out, preexisting=set())
    (out / "notes.txt").write_text("mine")
    trainer = make_trainer(
        "graddiff",
        tmp_path,
        forget=token_dataset(4, seed=0),
        retain=token_dataset(4, seed=1),
        peft_config=LoraConfig(r=2, target_modules=["c_attn"]),
        output_dir=str(out),
        overwrite_output_dir=True,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=1,
    )
    trainer.train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-100", "checkpoint-3"]
    assert (earlier / "trainer_state.json").is_file() and (out / "notes.txt").read_text() == "mine"
    assert "notes.txt" not in json.loads((out / MANIFEST_FILE).read_text())["entries"]
