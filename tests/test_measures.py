import numpy as np
import pytest

from eenet_cli.core.measures import (
    entropy_confidence,
    exit_features,
    max_prob,
    run_length,
    softmax,
    vote,
)


def test_softmax_matches_definition_and_is_stable(rng):
    x = rng.normal(size=(50, 3, 7)).astype(np.float32) * 30
    x[0, 0, 0] = 1e4  # would overflow a naive exp
    p = softmax(x)
    assert p.dtype == np.float32
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    ref = np.exp(x[1:].astype(np.float64) - x[1:].max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(p[1:], ref, atol=1e-6)


def test_entropy_is_safe_at_zero_probability():
    p = np.zeros((2, 1, 4), dtype=np.float32)
    p[0, 0, 0] = 1.0  # certain: 0 log 0 terms must not give NaN
    p[1, 0, :] = 0.25  # uniform: confidence 0
    e = entropy_confidence(p)
    assert np.all(np.isfinite(e))
    np.testing.assert_allclose(e[:, 0], [1.0, 0.0], atol=1e-7)


def test_entropy_matches_formula(rng):
    p = softmax(rng.normal(size=(20, 2, 5)))
    expected = 1 + (p * np.log(p)).sum(-1) / np.log(5)
    np.testing.assert_allclose(entropy_confidence(p), expected, atol=1e-6)


def test_max_prob():
    p = np.array([[[0.2, 0.8], [0.6, 0.4]]])
    np.testing.assert_allclose(max_prob(p), [[0.8, 0.6]])


def test_vote_counts_majority_so_far():
    preds = np.array([[0, 1, 1, 2], [3, 3, 3, 3], [0, 1, 2, 0]])
    v = vote(preds)
    np.testing.assert_allclose(v[0], [1, 1 / 2, 2 / 3, 2 / 4])
    np.testing.assert_allclose(v[1], [1, 1, 1, 1])
    np.testing.assert_allclose(v[2], [1, 1 / 2, 1 / 3, 2 / 4])


def test_run_length():
    preds = np.array([[0, 0, 1, 1, 1], [2, 3, 2, 2, 3]])
    assert run_length(preds).tolist() == [[1, 2, 1, 2, 3], [1, 1, 1, 2, 1]]


def test_probs_are_not_softmaxed_twice():
    probs = np.array([[[0.7, 0.2, 0.1]]], dtype=np.float32)
    f = exit_features(probs, "probs")
    np.testing.assert_allclose(f.max_prob, [[0.7]], atol=1e-7)
    g = exit_features(probs, "logits")
    assert g.max_prob[0, 0] < 0.5


def test_unknown_score_kind():
    with pytest.raises(ValueError):
        exit_features(np.zeros((1, 1, 2)), "odds")
