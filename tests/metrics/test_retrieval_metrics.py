"""Retrieval metrics against brute-force definitions: R@K, median rank, mAP, ties, several relevant items."""

import numpy as np
import pytest

from mmlearn.metrics import retrieval as rm


def brute_force(queries, targets, query_keys, target_keys):
  """Per query, from the textbook definitions, one target at a time (no sorting)."""
  ranks, aps = [], []
  for q in range(len(queries)):
    scores = [float(np.dot(queries[q], t)) for t in targets]
    relevant = [query_keys[q] == k for k in target_keys]
    best = max(s for s, r in zip(scores, relevant, strict=True) if r)
    # First relevant rank; a non-relevant target tied with the best relevant one counts as above it.
    ranks.append(1 + sum(1 for s, r in zip(scores, relevant, strict=True) if not r and s >= best))
    precisions = []
    for s_r, r in zip(scores, relevant, strict=True):
      if r:  # (Scores are continuous here, so there are no ties for AP to break.)
        rank = 1 + sum(1 for s in scores if s > s_r)
        precisions.append(sum(1 for s, rr in zip(scores, relevant, strict=True) if rr and s >= s_r) / rank)
    aps.append(np.mean(precisions))
  return np.array(ranks), np.array(aps)


def random_case(seed, num, dim, num_keys):
  rng = np.random.default_rng(seed)
  queries, targets = rng.standard_normal((2, num, dim)).astype(np.float32)
  keys = rng.integers(0, num_keys, num) if num_keys else np.arange(num)
  return queries, targets, keys


@pytest.mark.parametrize("num_keys", [0, 3, 8])  # 0: the paired item only; else several relevant items.
@pytest.mark.parametrize("chunk", [7, 64])  # 7 does not divide 23: the last chunk is padded.
def test_ranks_and_average_precision_match_brute_force(num_keys, chunk):
  queries, targets, keys = random_case(num_keys, 23, 5, num_keys)
  ranks, aps = rm.rank_queries(queries, targets, keys, keys, chunk=chunk)
  expected_ranks, expected_aps = brute_force(queries, targets, keys, keys)
  np.testing.assert_array_equal(ranks, expected_ranks)
  np.testing.assert_allclose(aps, expected_aps, rtol=1e-5)
  metrics = rm.summarize(ranks, aps)
  for k in (1, 5, 10):
    assert metrics[f"R@{k}"] == pytest.approx(np.mean(expected_ranks <= k))
  assert metrics["median_rank"] == np.median(expected_ranks)
  assert metrics["mAP"] == pytest.approx(np.mean(expected_aps), rel=1e-5)
  assert metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"]


def test_a_hand_worked_ranking():
  # Query 0's targets score 0.9 (non-relevant), 0.5 (relevant), 0.1 (relevant).
  queries = np.array([[1.0, 0.0]], np.float32)
  targets = np.array([[0.9, 0.0], [0.5, 0.0], [0.1, 0.0]], np.float32)
  ranks, aps = rm.rank_queries(queries, targets, np.array([1]), np.array([0, 1, 1]))
  assert ranks.tolist() == [2]
  assert aps[0] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_ties_in_similarity_count_against_the_query():
  queries = np.array([[1.0, 0.0]], np.float32)
  targets = np.array([[0.5, 0.0], [0.5, 0.0], [0.2, 0.0]], np.float32)  # Targets 0 and 1 tie.
  ranks, aps = rm.rank_queries(queries, targets, np.array([0]), np.array([0, 9, 9]))
  assert ranks.tolist() == [2] and aps[0] == pytest.approx(1 / 2)
  ranks, _ = rm.rank_queries(queries, targets, np.array([0]), np.array([9, 0, 9]))
  assert ranks.tolist() == [2]  # Whichever of the tied pair is relevant, it is ranked second.


def test_perfect_and_reversed_embeddings():
  eye = np.eye(6, dtype=np.float32)
  metrics = rm.retrieval_metrics(eye, eye, np.arange(6), np.arange(6))
  assert metrics == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "mAP": 1.0}
  ranks, _ = rm.rank_queries(eye, -eye, np.arange(6), np.arange(6))
  assert ranks.tolist() == [6] * 6  # Its partner is the only target scoring below zero.


def test_a_query_without_relevant_targets_is_an_error():
  with pytest.raises(ValueError, match="1 queries have no relevant target"):
    rm.rank_queries(np.eye(2), np.eye(2), np.array([0, 5]), np.array([0, 1]))


def test_description_keys_are_equal_exactly_when_every_column_is():
  shape = np.array([0, 0, 1, 0, 1])
  colour = np.array([2, 2, 2, 3, 2])
  keys = rm.description_keys([shape, colour])
  same = keys[:, None] == keys[None, :]
  expected = (shape[:, None] == shape[None, :]) & (colour[:, None] == colour[None, :])
  np.testing.assert_array_equal(same, expected)
  with pytest.raises(ValueError, match="at least one column"):
    rm.description_keys([])


def test_pair_ceiling_by_hand_and_by_an_oracle_that_knows_only_descriptions():
  keys = np.array([0, 0, 0, 1, 1, 2])  # Groups of 3, 2 and 1 items share a description.
  ceiling = rm.pair_ceiling(keys, keys)
  assert ceiling["R@1"] == pytest.approx((3 * (1 / 3) + 2 * (1 / 2) + 1) / 6)
  assert ceiling["R@5"] == ceiling["R@10"] == 1.0
  assert ceiling["mAP"] == pytest.approx((3 * (11 / 6) / 3 + 2 * 1.5 / 2 + 1) / 6)
  # An oracle ranks each query's description first, in an order unrelated to the pairing: on average
  # its paired-item metrics are the ceiling.
  rng = np.random.default_rng(0)
  keys = rng.integers(0, 8, size=64)
  queries = np.eye(8, dtype=np.float32)[keys]
  draws = []
  for _ in range(300):
    targets = queries * rng.uniform(1.0, 2.0, size=(64, 1)).astype(np.float32)
    ranks, aps = rm.rank_queries(queries, targets, np.arange(64), np.arange(64))
    draws.append(rm.summarize(ranks, aps))
  expected = rm.pair_ceiling(keys, keys)
  for name in ("R@1", "R@5", "mAP"):
    assert np.mean([d[name] for d in draws]) == pytest.approx(expected[name], abs=0.01), name
