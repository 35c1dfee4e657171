"""Every method's defaults run without blowing up: finite losses, and on the embedded tiny benchmarks no babbling
(WER beyond 1.2) and no retain collapse.

The divergence this guards against (LUR with the unbounded gradient-ascent forget loss at γ = 1: forget WER 5.57 at
step 60 on the speech benchmark) needs tens of steps on the full corpus; these tests are the cheap tripwire, the
benchmark runs (`benchmarks/compare_methods.py`) are the measurement. The toy-model check of every method's defaults
(a few finite steps, an adapter that moves by less than 1) is `tests/methods/test_every_method.py`.
"""

import json
import math

import pytest

from hf_unlearn import METHODS

from .testing_utils import finite_losses


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", ["speech", "text"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_defaults_do_not_blow_up_on_the_tiny_benchmarks(method, benchmark, tmp_path):
    from hf_unlearn.recipes import llm, whisper

    recipe = whisper if benchmark == "speech" else llm
    argv = ["--corpus_preset", "tiny", "--method", method, "--max_steps", "10", "--logging_steps", "1"]
    results = recipe.run([*argv, "--eval_strategy", "no", "--output_dir", str(tmp_path)])
    finite_losses(json.loads((tmp_path / "trainer_state.json").read_text())["log_history"])
    unlearned, base = results["unlearned"], results["base"]
    if benchmark == "speech":
        for split in ("forget", "retain"):
            assert unlearned[split]["wer"] <= 1.2, f"{method}: {split} WER {unlearned[split]['wer']:.3f} (babbling)"
    else:
        retain = unlearned["retain"]["rougeL_recall"]
        assert retain >= 0.5 * base["retain"]["rougeL_recall"], f"{method}: retain ROUGE-L collapsed to {retain:.3f}"
        assert math.isfinite(unlearned["forget"]["model_utility"])
