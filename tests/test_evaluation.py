"""Per-task scores: hand-checked counts, ignored labels, and reports that scale to thousands of classes."""

import json

import numpy as np
import pytest

from facemtl.evaluation import MAX_CONFUSION_CLASSES, classification_report, write_report


def test_scores_match_hand_counts_and_ignore_missing_labels():
    r = classification_report([0, 0, 1, 2, -1, -1], [0, 1, 1, 1, 2, 0], ["a", "b", "c"])
    assert r["count"] == 4 and r["accuracy"] == 0.5
    assert r["per_class"]["b"] == {"precision": pytest.approx(1 / 3), "recall": 1.0, "f1": pytest.approx(0.5),
                                   "support": 1}
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert r["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_many_classes_skip_the_matrix_but_keep_the_scores(tmp_path):
    k = MAX_CONFUSION_CLASSES + 1
    y = np.arange(k)
    report = write_report({"identity": y, "expression": np.zeros(k, int)},
                          {"identity": y, "expression": np.full(k, -1)},
                          {"identity": [f"p{i}" for i in range(k)], "expression": ["x"]}, tmp_path)
    assert set(report) == {"identity"}  # no expression label at all: not scored
    assert report["identity"]["accuracy"] == 1.0 and report["identity"]["confusion"] is None
    assert not list(tmp_path.glob("*.png"))
    assert json.loads((tmp_path / "report.json").read_text())["identity"]["macro_f1"] == 1.0
