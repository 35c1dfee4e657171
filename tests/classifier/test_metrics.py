"""UA/RA/TA, MIA-efficacy, Avg-Gap and UIS against hand-computed cases."""

import numpy as np
import pytest
import torch

from hf_unlearn.eval.classification import (
    ClassificationEvaluator,
    avg_gap,
    classification_table,
    mia_efficacy,
    predict,
    unlearning_impact_score,
)

from ..testing_utils import collate_pixels, pixel_dataset


def metrics(forget, retain, test, mia):
    return {
        "forget": {"accuracy": forget},
        "retain": {"accuracy": retain},
        "test": {"accuracy": test},
        "mia_efficacy": mia,
    }


def test_avg_gap_by_hand():
    unlearned = metrics(0.10, 0.90, 0.80, 0.70)
    retrain = metrics(0.00, 1.00, 0.85, 1.00)
    # |UA − UA_r| = |0.9 − 1.0| = 0.1, RA 0.1, TA 0.05, MIA 0.3 → 0.55 / 4
    assert avg_gap(unlearned, retrain) == pytest.approx(0.1375)
    assert avg_gap(retrain, retrain) == 0.0


def test_uis_by_hand():
    original, unlearned = metrics(1.0, 1.0, 0.80, 0.0), metrics(0.30, 0.9, 0.70, 0.0)
    # random: (|0.8 − 0.7| + |0.8 − 0.3|) / (2·0.8) = 0.6 / 1.6
    assert unlearning_impact_score(original, unlearned, "random") == pytest.approx(0.375)
    # class: (|0.8 − 0.7| + |0.3|) / 1.6 = 0.25
    assert unlearning_impact_score(original, unlearned, "class") == pytest.approx(0.25)
    assert unlearning_impact_score(original, metrics(0.0, 1.0, 0.8, 0.0), "class") == 0.0
    with pytest.raises(ValueError, match="task"):
        unlearning_impact_score(original, unlearned, "speaker")


def test_mia_efficacy_on_separable_confidences():
    rng = np.random.default_rng(0)
    retain = rng.uniform(0.95, 1.0, 200)  # members: confident
    test = rng.uniform(0.1, 0.5, 50)  # non-members: unsure
    forget = np.concatenate([rng.uniform(0.96, 1.0, 30), rng.uniform(0.15, 0.45, 10)])
    # 10 of 40 forget images look like non-members.
    assert mia_efficacy(retain, test, forget) == pytest.approx(0.25)
    assert mia_efficacy(retain, test, rng.uniform(0.96, 1.0, 5)) == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        mia_efficacy(retain, test, np.array([]))


class FixedLogits(torch.nn.Module):
    """Logits looked up by the first pixel (the example's index)."""

    def __init__(self, logits):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(logits, dtype=torch.float32))

    def forward(self, pixel_values):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.table[pixel_values[:, 0, 0, 0].long()])


def test_predict_accuracy_and_confidence_by_hand():
    dataset = pixel_dataset(3, seed=0, labels=[0, 1, 3])
    pixels = np.zeros((3, 1, 8, 8), dtype=np.float32)
    pixels[:, 0, 0, 0] = [0, 1, 2]
    dataset = dataset.remove_columns("pixel_values").add_column("pixel_values", pixels.tolist())
    logits = [[2.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    correct, confidence = predict(FixedLogits(logits), dataset, collate_pixels, batch_size=2)
    assert correct.tolist() == [True, False, False]  # the third is a tie: argmax picks class 0
    e2 = np.exp(2.0)
    np.testing.assert_allclose(confidence, [e2 / (e2 + 3), 1 / (np.exp(3.0) + 3), 0.25], rtol=1e-6)
    evaluator = ClassificationEvaluator(collate_pixels)
    records = evaluator.per_example(FixedLogits(logits), dataset, 8)
    assert evaluator.aggregate(records, "forget") == {"accuracy": pytest.approx(1 / 3)}


def test_table_shows_every_model_and_the_scores():
    results = {"base": metrics(1.0, 1.0, 0.9, 0.0), "retrain": metrics(0.0, 1.0, 0.9, 1.0),
               "unlearned": metrics(0.1, 0.95, 0.85, 0.9), "avg_gap": 0.0625, "uis": 0.08, "base_avg_gap": 0.5}  # fmt: skip
    table = classification_table(results)
    assert "| unlearned | 0.100 | 0.950 | 0.850 | 0.900 | 0.062 | 0.080 |" in table
    assert "| base | 1.000 | 1.000 | 0.900 | 0.000 | 0.500 | – |" in table
