"""Render `{"base"|"retrain"|"unlearned": {split: {metric: value}}}` results as one markdown table."""

# The text recipe's printed table: forget and retain side by side, then the forget split's headline metrics, those of
# open-unlearning's default TOFU evaluation included (`metrics.json` has every metric of every split).
TEXT_TABLE_SPLITS = ("forget", "retain")
TEXT_TABLE_METRICS = ("rougeL_recall", "prob", "truth_ratio", "extraction_strength", "forget_quality", "model_utility",
                      "mia_min_k_auc", "privleak")  # fmt: skip


def run_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """The table a recipe prints for its `metrics.json`: WER/CER of every split for speech, the TOFU headline
    metrics of forget and retain for text (told apart by whether any split has a `wer`)."""
    if any("wer" in metrics for per_split in results.values() for metrics in per_split.values()):
        return metrics_table(results)
    shown = {
        name: {split: per_split[split] for split in TEXT_TABLE_SPLITS if split in per_split}
        for name, per_split in results.items()
    }
    return metrics_table(shown, TEXT_TABLE_METRICS)


def metrics_table(results: dict[str, dict[str, dict[str, float]]], metrics: tuple[str, ...] = ("wer", "cer")) -> str:
    """One row per model, one column per (split, metric), in the order the splits first appear.

    Missing entries render as `–` so a run without an exact-retrain reference still prints a full table; a column
    that no model has is left out.
    """
    splits: list[str] = []
    for per_split in results.values():
        splits += [split for split in per_split if split not in splits]
    columns = [(split, metric) for metric in metrics for split in splits]
    # A metric that only some splits have (forget quality: forget only) leaves no column of dashes.
    columns = [c for c in columns if any(c[1] in per_split.get(c[0], {}) for per_split in results.values())]
    header = "| model | " + " | ".join(f"{split} {metric.upper()}" for split, metric in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    rows = []
    for model_name, per_split in results.items():
        cells = []
        for split, metric in columns:
            value = per_split.get(split, {}).get(metric)
            cells.append("–" if value is None else f"{value:.3f}")
        rows.append(f"| {model_name} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])
