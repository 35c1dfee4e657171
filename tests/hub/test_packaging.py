"""What a wheel must carry: the card template (every trainer renders it), the CLI preset and the console script."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from hf_unlearn.hub import DEFAULT_TEMPLATE


REPO = Path(__file__).resolve().parents[2]


def test_default_template_is_package_data_and_model_cards_links_to_it():
    package_dir = REPO / "hf_unlearn"
    assert DEFAULT_TEMPLATE.is_file()
    assert DEFAULT_TEMPLATE.resolve().is_relative_to(package_dir)
    user_facing = REPO / "model_cards" / "unlearned_model.md"
    assert user_facing.resolve() == DEFAULT_TEMPLATE.resolve()


def test_wheel_contains_the_template(tmp_path):
    # Build from a copy so the checkout gets no build/ or egg-info folders.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "hf_unlearn", source / "hf_unlearn", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "-w", str(tmp_path / "dist"), "--no-deps"]
        + ["--no-build-isolation", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("hf_unlearn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    relative = DEFAULT_TEMPLATE.relative_to(REPO).as_posix()
    assert relative in names
    assert zipfile.ZipFile(wheel).read(relative) == DEFAULT_TEMPLATE.read_bytes()
    assert "hf_unlearn/recipes/whisper_tiny.yaml" in names  # `hf-unlearn unlearn`'s default preset
    assert "hf_unlearn/recipes/llm_tiny.yaml" in names  # `hf-unlearn unlearn --recipe llm`'s
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "hf-unlearn = hf_unlearn.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_recipe_preset_links_point_at_the_packaged_defaults():
    from hf_unlearn.recipes import llm, whisper

    assert (REPO / "recipes" / "whisper_tiny.yaml").resolve() == whisper.DEFAULT_CONFIG.resolve()
    assert (REPO / "recipes" / "llm_tiny.yaml").resolve() == llm.DEFAULT_CONFIG.resolve()
