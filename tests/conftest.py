import os
from pathlib import Path

import pytest


# Any accidental Hub call must fail fast instead of hanging (no network in CI).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
# Corpora and reference models are content-keyed caches: share them between tests and between runs (git-ignored).
os.environ.setdefault("HF_UNLEARN_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "hf_unlearn"))

pytest_plugins = ["tests.speech_fixtures"]


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-model tests: more only add synchronisation (5x slower on a loaded
    2-core machine). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA device and `multi_gpu` tests two: where they are missing, skip with the reason (the
    markers also select them: `-m gpu` on a GPU machine)."""
    import torch

    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if "multi_gpu" in item.keywords and devices < 2:
            item.add_marker(pytest.mark.skip(reason=f"needs 2 CUDA devices, found {devices}"))
        elif "gpu" in item.keywords and devices < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
