"""pyproject's dependency ranges: the installed versions satisfy them, they admit the versions the seam was checked
against, and their lower bounds are at least what the seam needs."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import hf_unlearn
from hf_unlearn.integrations import accelerate, deepspeed, peft, transformers
from hf_unlearn.integrations import torch as torch_seam


tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (the package supports 3.10; then this file is skipped)
PYPROJECT = Path(hf_unlearn.__file__).parent.parent / "pyproject.toml"


def requirements(group: str | None = None) -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    listed = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return {Requirement(line).name.lower(): Requirement(line) for line in listed}


@pytest.mark.parametrize("group", [None, "dev"])
def test_installed_versions_satisfy_pyproject(group):
    unsatisfied = []
    for name, requirement in requirements(group).items():
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            unsatisfied.append(f"{name} (not installed)")
            continue
        if not requirement.specifier.contains(installed.base_version, prereleases=True):  # torch 2.13.0+cpu
            unsatisfied.append(f"{name} {installed} not in {requirement.specifier}")
    assert not unsatisfied, f"installed versions outside pyproject's ranges: {unsatisfied}"


@pytest.mark.parametrize("seam", [accelerate, deepspeed, peft, torch_seam, transformers], ids=lambda m: m.__name__)
def test_the_versions_the_seam_was_checked_against_are_allowed(seam):
    name, checked = seam.CHECKED.split()
    allowed = {**requirements(), **requirements("deepspeed")}[name]
    assert allowed.specifier.contains(checked), f"{seam.CHECKED} was checked but pyproject allows {allowed}"


def test_lower_bounds_cover_what_the_seam_needs():
    needed = Requirement(peft.REQUIRES)
    lower = [Version(s.version) for s in requirements()["peft"].specifier if s.operator == ">="]
    minimum = [Version(s.version) for s in needed.specifier if s.operator == ">="][0]
    assert lower and min(lower) >= minimum, f"pyproject allows peft below {minimum}, which lacks `lora_variant`"
    assert not SpecifierSet(str(requirements()["peft"].specifier)).contains("0.15.2")
