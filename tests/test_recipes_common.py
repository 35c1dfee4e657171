"""`hf_unlearn.recipes.common`, the plumbing both recipes share: the one-process cache build before a multi-process
run (child command and environment), and each recipe's `--prepare_only` path that the child runs."""

import subprocess
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from hf_unlearn.recipes import common


@dataclass
class ToyScriptArguments:
    method: str = "npo"
    corpus_preset: str = "tiny"
    lora_target_modules: tuple = ("q_proj", "v_proj")
    cache_dir: str | None = None
    prepare_only: bool = False


def fake_config(process_index: int, waited: list) -> SimpleNamespace:
    state = SimpleNamespace(wait_for_everyone=lambda: waited.append(process_index))
    return SimpleNamespace(process_index=process_index, seed=3, output_dir="out", distributed_state=state)


@pytest.mark.parametrize("recipe", ["hf_unlearn.recipes.whisper", "hf_unlearn.recipes.llm"])
def test_prepare_in_one_process_runs_the_recipe_module_without_launcher_variables(recipe, monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "ACCELERATE_USE_CPU": "1"}.items():
        monkeypatch.setenv(key, value)
    calls, waited = [], []
    monkeypatch.setattr(subprocess, "run", lambda command, env, check: calls.append((command, env)))
    common.prepare_in_one_process(
        recipe, ToyScriptArguments(lora_target_modules=["q_proj", "v_proj"]), fake_config(0, waited)
    )
    ((command, env),) = calls
    assert command[1:3] == ["-m", recipe]
    flags = " ".join(command[3:])
    assert "--prepare_only true" in flags and "--seed 3" in flags and "--output_dir out" in flags
    assert "--lora_target_modules q_proj v_proj" in flags and "--cache_dir" not in flags  # None is left out
    assert not {"RANK", "WORLD_SIZE", "MASTER_ADDR", "ACCELERATE_USE_CPU"} & set(env)
    assert waited == [0]

    # Other ranks build nothing; they wait until rank 0's child has filled the cache.
    common.prepare_in_one_process(recipe, ToyScriptArguments(), fake_config(1, waited))
    assert len(calls) == 1 and waited == [0, 1]


def test_llm_prepare_only_builds_the_caches_and_writes_no_run(tmp_path, capsys):
    """The child's command line parses, builds (here: reads, the tiny caches are shared by the tests) and trains
    nothing."""
    from hf_unlearn.recipes import llm

    output_dir = tmp_path / "out"
    assert llm.run(["--prepare_only", "true", "--corpus_preset", "tiny", "--output_dir", str(output_dir)]) == {}
    assert not output_dir.exists()
    assert "| model |" not in capsys.readouterr().out


def test_pretrained_kwargs_map_trls_loading_flags():
    import torch

    from hf_unlearn.recipes.common import RecipeArguments, pretrained_kwargs

    assert pretrained_kwargs(RecipeArguments()) == {"revision": "main"}  # dtype left to the checkpoint
    assert pretrained_kwargs(RecipeArguments(model_revision="v1", dtype="bfloat16")) == {
        "revision": "v1",
        "dtype": torch.bfloat16,
    }
    assert pretrained_kwargs(RecipeArguments(dtype="auto"))["dtype"] == "auto"


def test_ga_without_a_stop_target_is_told_its_budget_will_not_stop_it(capsys):
    """GA's default diverges on every embedded benchmark (default_stability.md): a run without --stop_at_target says
    so and names the flag; with it, or for any other method, the run adds the callback or says nothing."""
    from hf_unlearn import StopAtForgetTarget
    from hf_unlearn.recipes.common import UNBOUNDED_GA_NOTE, add_stopping

    class Trainer:
        def __init__(self):
            self.callbacks = []

        def add_callback(self, callback):
            self.callbacks.append(callback)

    config = SimpleNamespace(process_index=0)
    results = {"retrain": {"forget": {"wer": 0.15}}}
    for method, target, note in (("ga", None, True), ("ga", "retrain", False), ("graddiff", None, False)):
        trainer = Trainer()
        add_stopping(trainer, config, SimpleNamespace(method=method, stop_at_target=target), results, "wer")
        out = capsys.readouterr().out
        assert (UNBOUNDED_GA_NOTE in out) is note and ("--stop_at_target" in out) is note
        assert [type(c) for c in trainer.callbacks] == ([StopAtForgetTarget] if target else [])
        if target:
            assert trainer.callbacks[0].target == 0.15
