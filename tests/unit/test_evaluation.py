"""Retrieval metrics against the rankings worked by hand in the shared cases."""

import json

import pytest

from modelseek.evaluation import (
    average_precision,
    average_precision_at_k,
    summarise,
    top_k_hit,
)


@pytest.fixture(scope="module")
def worked(cases_dir):
    return json.loads((cases_dir / "scoring" / "metrics.json").read_text())


def test_average_precision_matches_hand_worked_cases(worked):
    for case in worked["cases"]:
        for k, expected in case["ap_at"].items():
            got = average_precision_at_k(case["ranked"], case["relevant"], int(k))
            assert got == pytest.approx(expected, abs=1e-12), (case["ranked"], k)


def test_top_k_hits_match_hand_worked_cases(worked):
    for case in worked["cases"]:
        for k, expected in case["top_k_hit"].items():
            assert top_k_hit(case["ranked"], case["source"], int(k)) is expected


def test_summary_matches_hand_worked_means(worked):
    cases = worked["cases"]
    map_ks = [int(k) for k in worked["summary"]["map_at"]]
    acc_ks = [int(k) for k in worked["summary"]["top_k_accuracy"]]
    got = summarise(
        [c["ranked"] for c in cases],
        [c["relevant"] for c in cases],
        [c["source"] for c in cases],
        ks=sorted(set(map_ks + acc_ks)),
    )
    for k, expected in worked["summary"]["map_at"].items():
        assert got["map_at"][int(k)] == pytest.approx(expected, abs=1e-12)
    for k, expected in worked["summary"]["top_k_accuracy"].items():
        assert got["top_k_accuracy"][int(k)] == pytest.approx(expected, abs=1e-12)


def test_no_relevant_model_gives_zero_and_bad_k_is_refused():
    assert average_precision_at_k(["a", "b"], [], 2) == 0.0
    with pytest.raises(ValueError, match="k must be >= 1"):
        average_precision_at_k(["a"], ["a"], 0)


def test_average_precision_over_the_whole_ranking_by_hand():
    # Relevant at ranks 2 and 4 of 5: (1/2 + 2/4) / 2 = 0.5.
    assert average_precision(["a", "b", "c", "d", "e"], ["b", "d"]) == pytest.approx(0.5)
    # A relevant id missing from the ranking is never retrieved: (1/1) / 2.
    assert average_precision(["a", "b"], ["a", "z"]) == pytest.approx(0.5)
    assert average_precision(["a", "b"], []) == 0.0
