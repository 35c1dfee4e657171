"""Deprecated name of `hf_unlearn.models.speech_benchmark_models` (kept for one release).

Renamed so that it no longer shares a name with `hf_unlearn.methods.reference` (π_ref of NPO-style losses).
"""

import warnings

from hf_unlearn.models.speech_benchmark_models import (  # noqa: F401
    INFO_FILE,
    ReferenceTrainingConfig,
    load_reference_model,
    processor_for_corpus,
    train_reference_model,
)


warnings.warn(
    "hf_unlearn.models.reference is deprecated and will be removed in the next release: import from "
    "hf_unlearn.models.speech_benchmark_models (or hf_unlearn.models) instead.",
    FutureWarning,
    stacklevel=2,
)
