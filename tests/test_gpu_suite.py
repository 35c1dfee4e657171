"""`benchmarks/gpu_suite.py` on CPU with `--quick` shapes: every method runs on every model, a failing case is recorded
in the JSON and the suite goes on, and the phase shares come from a real profile. Timings are not asserted."""

import json
import math
from pathlib import Path

import pytest

from .testing_utils import load_benchmark


@pytest.fixture(scope="module")
def suite():
    return load_benchmark("gpu_suite")


def run_quick(suite, output_dir: Path, *extra: str) -> dict:
    argv = ["--quick", "--device", "cpu", "--k", "4", "--warmup", "0", "--repeats", "1", "--threads", "1",
            "--output-dir", str(output_dir), *extra]  # fmt: skip
    return suite.main(suite.make_parser().parse_args(argv))


def check_rows(report: dict, models: list[str], failing: str | None = None) -> None:
    assert [cell["model"] for cell in report["cells"]] == models
    for cell in report["cells"]:
        assert "error" not in cell, cell.get("traceback")
        assert list(cell["methods"]) == list(report["settings"]["methods"])
        for method, row in cell["methods"].items():
            if method == failing:
                assert "time_ms" not in row and "injected failure" in row["error"]
                continue
            assert "error" not in row, (cell["model"], method, row.get("traceback"))
            assert row["time_ms"] > 0 and math.isfinite(row["time_vs_graddiff"])
            shares = row["profile"]["shares"]
            assert sum(shares.values()) == pytest.approx(1.0)
            assert shares["forward"] > 0 and shares["backward"] > 0  # every method runs both, so both are seen
            assert row["profile"]["top_ops"]


def test_quick_suite_records_a_failing_case_and_goes_on(suite, tmp_path, monkeypatch):
    def broken_loop(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(suite.bench_orthograd, "loop_step", broken_loop)
    report = run_quick(suite, tmp_path, "--models", "classifier")
    check_rows(report, ["classifier"], failing="loop")
    on_disk = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert on_disk["cells"][0]["methods"]["loop"]["error"].startswith("RuntimeError: injected failure")
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "| classifier | 4 | lur_exact |" in table and "classifier k=4 loop: RuntimeError: injected failure" in table


def test_time_budget_skips_and_records(suite, tmp_path):
    report = run_quick(suite, tmp_path, "--models", "classifier", "llama", "--budget-s", "0")
    assert [cell["error"] for cell in report["cells"]] == ["skipped: time budget"] * 2


@pytest.mark.slow
def test_quick_suite_every_model(suite, tmp_path):
    report = run_quick(suite, tmp_path)
    check_rows(report, ["whisper", "llama", "classifier"])


def test_phase_shares_attribute_by_ancestor(suite):
    class Event:
        def __init__(self, name, self_time, parent=None):
            self.name, self.self_cpu_time_total, self.cpu_parent = name, self_time, parent

    forward = Event(suite.FORWARD_LABEL, 50.0)
    backward = Event("autograd::engine::evaluate_function: MmBackward0", 0.0)
    events = [
        forward,
        Event("aten::mm", 30.0, forward),
        Event("aten::copy_", 10.0, Event("aten::to", 0.0, forward)),
        Event("aten::mm", 40.0, Event("aten::t", 0.0, backward)),
        Event("aten::linalg_solve", 20.0),
    ]
    profile = suite.phase_shares(events, cuda=False)
    assert profile["kernel_ms"] == pytest.approx(0.1)  # labels' own time is not kernel time
    assert profile["shares"] == pytest.approx({"forward": 0.4, "backward": 0.4, "other": 0.2})
    assert profile["cast_share"] == pytest.approx(0.1)
