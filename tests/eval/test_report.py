from hf_unlearn.eval.report import metrics_table


def test_metrics_table_rows_columns_and_missing_cells():
    results = {
        "base": {"forget": {"wer": 0.0, "cer": 0.0}, "test": {"wer": 0.5, "cer": 0.25}},
        "unlearned": {"forget": {"wer": 0.9, "cer": 0.6}},
    }
    lines = metrics_table(results).splitlines()
    assert lines[0] == "| model | forget WER | test WER | forget CER | test CER |"
    assert lines[2] == "| base | 0.000 | 0.500 | 0.000 | 0.250 |"
    assert lines[3] == "| unlearned | 0.900 | – | 0.600 | – |"
