"""Renamed config fields: one meaning per name, and the old name accepted for one release with a FutureWarning."""

import warnings

import pytest

from hf_unlearn import GRUConfig, NPOConfig, OrthoGradConfig
from hf_unlearn.hub.model_card import method_hyperparameters
from hf_unlearn.methods import METHODS, retain_knob


def common(tmp_path):
    return dict(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none")


@pytest.mark.parametrize("config_cls", [OrthoGradConfig, GRUConfig])
def test_orthograd_alpha_is_retain_mix_and_the_old_name_warns(tmp_path, config_cls):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name says nothing
        assert config_cls(retain_mix=0.3, **common(tmp_path)).retain_mix == 0.3
    with pytest.warns(FutureWarning, match=r"retain_weight=\.\.\.\) is deprecated.*use retain_mix=0\.2") as record:
        config = config_cls(retain_weight=0.2, **common(tmp_path))
    assert record[0].filename == __file__  # the warning points at the user's line
    assert config.retain_mix == 0.2 and config.retain_weight is None  # each value saved once, under its new name
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match=r"retain_mix .* \[0, 1\)"):
        config_cls(retain_weight=1.0, **common(tmp_path))
    assert config_cls(**common(tmp_path)).retain_mix == 0.5  # the default is unchanged


def test_npo_beta_is_npo_beta_and_the_old_name_warns(tmp_path):
    assert NPOConfig(**common(tmp_path)).npo_beta == 0.1
    with pytest.warns(FutureWarning, match=r"NPOConfig\(beta=\.\.\.\) is deprecated.*use npo_beta=0\.7"):
        config = NPOConfig(beta=0.7, **common(tmp_path))
    assert config.npo_beta == 0.7 and config.beta is None
    with pytest.raises(ValueError, match="npo_beta must be > 0"):
        NPOConfig(npo_beta=0.0, **common(tmp_path))


def test_the_model_card_lists_new_names_only(tmp_path):
    with pytest.warns(FutureWarning):
        hyperparameters = method_hyperparameters(OrthoGradConfig(retain_weight=0.25, **common(tmp_path)))
    assert hyperparameters["retain_mix"] == 0.25 and "retain_weight" not in hyperparameters
    with pytest.warns(FutureWarning):
        hyperparameters = method_hyperparameters(NPOConfig(beta=0.3, **common(tmp_path)))
    assert hyperparameters["npo_beta"] == 0.3 and "beta" not in hyperparameters


def test_every_method_names_its_balance_field_and_npo_beta_means_one_thing():
    for method, (config_cls, _) in METHODS.items():
        fields = config_cls.__dataclass_fields__
        assert retain_knob(method) in fields, method
        if "npo_beta" in fields:  # NPO's β has one name wherever NPO's loss can be chosen
            assert fields["npo_beta"].default == 0.1, method
    assert retain_knob("orthograd") == retain_knob("gru") == "retain_mix"
    assert retain_knob("lur") == retain_knob("graddiff") == "retain_weight"


def test_the_renamed_speech_models_module_still_imports_with_a_warning(monkeypatch):
    import importlib
    import sys

    from hf_unlearn.models import speech_benchmark_models

    monkeypatch.delitem(sys.modules, "hf_unlearn.models.reference", raising=False)
    with pytest.warns(FutureWarning, match="hf_unlearn.models.speech_benchmark_models"):
        old = importlib.import_module("hf_unlearn.models.reference")
    assert old.train_reference_model is speech_benchmark_models.train_reference_model
