import os
from pathlib import Path


# Any accidental Hub call must fail fast instead of hanging (no network in CI).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
# Corpora and reference models are content-keyed caches: share them between tests and between runs (git-ignored).
os.environ.setdefault("HF_UNLEARN_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "hf_unlearn"))

pytest_plugins = ["tests.speech_fixtures"]
