"""What the recipes resolve from the command line before any training: the output folder, saving, resume, and a
misspelt key or flag stopped with the closest valid name."""

from pathlib import Path

import pytest
import yaml

from hf_unlearn.recipes import llm, whisper


@pytest.mark.parametrize("recipe", [whisper, llm])
def test_presets_set_no_overwrite_and_no_save_strategy(recipe):
    preset = yaml.safe_load(recipe.DEFAULT_CONFIG.read_text())
    assert "overwrite_output_dir" not in preset and "save_strategy" not in preset


def test_default_output_dir_is_a_fresh_folder_and_overwrite_is_off():
    _, config = whisper.parse_args([])
    assert Path(config.output_dir).name.startswith("whisper_tiny-graddiff-")
    assert not config.overwrite_output_dir and config.save_strategy == "no"


def test_save_steps_alone_turns_saving_on(tmp_path):
    _, config = llm.parse_args(["--output_dir", str(tmp_path), "--save_steps", "5"])
    assert config.save_strategy == "steps" and config.save_steps == 5
    _, config = llm.parse_args(["--output_dir", str(tmp_path), "--save_steps", "5", "--save_strategy", "epoch"])
    assert config.save_strategy == "epoch"  # the user's choice wins


def test_resuming_a_checkpoint_path_writes_into_its_folder(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoint-10"
    checkpoint.mkdir(parents=True)
    _, config = whisper.parse_args(["--resume_from_checkpoint", str(checkpoint)])
    assert config.output_dir == str(tmp_path / "run") and config.resume_from_checkpoint == str(checkpoint)


def test_misspelt_flag_names_the_closest_field():
    with pytest.raises(SystemExit, match="Unknown flag --lerning_rate; did you mean 'learning_rate'"):
        whisper.parse_args(["--lerning_rate", "1e-3"])
    whisper.parse_args(["--output_dir", "x", "--no_eval_generate", "--learning_rate=1e-3"])  # valid spellings pass


def test_misspelt_yaml_key_names_the_closest_field(tmp_path):
    config = tmp_path / "preset.yaml"
    config.write_text("method: npo\nretain_wieght: 2.0\nmax_steps: 3\n")
    with pytest.raises(
        SystemExit, match=r"Unknown key 'retain_wieght' in .*preset.yaml; did you mean 'retain_weight'"
    ):
        llm.parse_args(["--config", str(config)])


def test_resume_with_nothing_to_resume_is_refused_before_training(tmp_path):
    from hf_unlearn.recipes.common import check_before_training

    _, config = whisper.parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "true"])
    with pytest.raises(FileNotFoundError, match="No complete checkpoint"):
        check_before_training(config, None)


def test_overwrite_never_replaces_the_users_model_card(tmp_path):
    from hf_unlearn.recipes.common import check_before_training

    (tmp_path / "README.md").write_text("my notes")
    _, config = llm.parse_args(["--output_dir", str(tmp_path), "--overwrite_output_dir", "true"])
    with pytest.raises(FileExistsError, match=r"\['README.md'\].*move them"):
        check_before_training(config, None)
    assert (tmp_path / "README.md").read_text() == "my notes"
