"""Retrieval metrics as papers report them, over query chunks so no full similarity matrix is ever held.

Targets are ranked for each query by descending similarity (dot product of the embeddings). Target t
is relevant to query q when their relevance keys are equal: pass `keys = arange(N)` for "the paired
item only", or one id per description (e.g. per digit) for "any item with the same description".

  rank          1-based position of the first relevant target. Ties in similarity are broken against
                the query: a non-relevant target scoring exactly as high as a relevant one ranks above it.
  R@K           fraction of queries whose first relevant target is in the top K.
  median_rank   median of `rank` over queries (MedR).
  mAP           mean over queries of average precision over the whole ranking:
                AP = (1 / #relevant) * sum over relevant targets of the precision at their rank.

Each chunk of queries is scored against all N targets at once ([chunk, N] floats) and sorted on the host
with numpy (whose sorts are several times faster than XLA's on CPU); 512 x 10,000 is 20 MB per array.
"""

import numpy as np

from mmlearn.data.progress import Progress

RECALL_AT = (1, 5, 10)


def _chunk_ranks(queries, targets, query_keys, target_keys):
  """(first relevant rank, average precision, number relevant) of each query in a chunk."""
  scores = queries @ targets.T
  relevant = query_keys[:, None] == target_keys[None, :]
  # Best first, and among equal scores the non-relevant targets first (lexsort: last key is primary).
  order = np.lexsort((relevant, -scores), axis=1)
  ordered = np.take_along_axis(relevant, order, axis=1)
  num_relevant = ordered.sum(1)
  precision = np.cumsum(ordered, axis=1) / np.arange(1, ordered.shape[1] + 1)
  ap = (precision * ordered).sum(1) / np.maximum(num_relevant, 1)
  return ordered.argmax(1) + 1, ap, num_relevant


def rank_queries(
  queries: np.ndarray,
  targets: np.ndarray,
  query_keys: np.ndarray,
  target_keys: np.ndarray,
  *,
  chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
  """(rank of the first relevant target [Q], average precision [Q]), chunk queries at a time.

  Raises ValueError if a query has no relevant target (its metrics would be undefined).
  """
  queries, targets = np.asarray(queries, np.float32), np.asarray(targets, np.float32)
  query_keys, target_keys = np.asarray(query_keys), np.asarray(target_keys)
  num_queries = len(queries)
  ranks, aps, counts = [], [], []
  progress = Progress("ranking", num_queries, unit="queries")  # Silent unless it takes over 10 s.
  for start in range(0, num_queries, chunk):
    rank, ap, count = _chunk_ranks(
      queries[start : start + chunk], targets, query_keys[start : start + chunk], target_keys
    )
    ranks.append(rank)
    aps.append(ap)
    counts.append(count)
    progress.update(min(start + chunk, num_queries))
  progress.finish()
  counts = np.concatenate(counts) if counts else np.zeros(0, int)
  if (counts == 0).any():
    raise ValueError(f"{int((counts == 0).sum())} queries have no relevant target; check the relevance keys")
  return np.concatenate(ranks), np.concatenate(aps)


def summarize(ranks: np.ndarray, aps: np.ndarray, recall_at=RECALL_AT) -> dict[str, float]:
  """R@K, median rank and mAP from per-query ranks and average precisions."""
  out = {f"R@{k}": float(np.mean(ranks <= k)) for k in recall_at}
  out["median_rank"] = float(np.median(ranks))
  out["mAP"] = float(np.mean(aps))
  return out


def retrieval_metrics(queries, targets, query_keys, target_keys, *, chunk: int = 512) -> dict[str, float]:
  return summarize(*rank_queries(queries, targets, query_keys, target_keys, chunk=chunk))


def pair_ceiling(query_keys: np.ndarray, target_keys: np.ndarray, recall_at=RECALL_AT) -> dict[str, float]:
  """The best expected paired-item R@K and mAP when pairs share nothing beyond their description.

  If a query's paired target is one of `n` targets with its description and nothing else links the two
  (duplicate captions, AV-MNIST's random pairing within a digit), the best a model can do is rank those
  `n` first in an order unrelated to the pairing: the pair lands at each of ranks 1..n with probability
  1/n, so R@K = min(1, K/n) and AP = (1 + 1/2 + ... + 1/n) / n, averaged over queries.
  """
  values, counts = np.unique(np.asarray(target_keys), return_counts=True)
  n = counts[np.searchsorted(values, np.asarray(query_keys))].astype(np.float64)
  harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(n.max()) + 1))])  # harmonic[m] = H(m)
  out = {f"R@{k}": float(np.mean(np.minimum(1.0, k / n))) for k in recall_at}
  out["mAP"] = float(np.mean(harmonic[n.astype(int)] / n))
  return out


def description_keys(columns: list[np.ndarray]) -> np.ndarray:
  """One int id per example, equal exactly when the examples agree on every column (e.g. shape, colour)."""
  if not columns:
    raise ValueError("a description needs at least one column")
  rows = np.concatenate([np.asarray(c).reshape(len(c), -1) for c in columns], axis=1)
  return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)
