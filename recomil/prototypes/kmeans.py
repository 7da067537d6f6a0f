"""Prototype k-means over a memory-mapped feature store, in bounded memory.

Two fits, chosen by the ``kmeans_algorithm`` param:

- :func:`lloyd_kmeans` (default): k-means++ seeding, then Lloyd iterations on a random working
  set of ``working_rows`` rows (the only rows held in memory), then the streamed counting pass
  (step 4 below). Measured in ``benchmarks/kmeans.md`` (500,000 x 768, k 128, 3 seeds): lower
  held-out inertia than scikit-learn's MiniBatchKMeans (ratio 0.9989) at 3.3x its speed, and
  lower than our own mini-batch fit. faiss-cpu, measured too, is faster still (5.7x) and about as
  good with its defaults (the same idea: Lloyd on a sample), but it is a further binary
  dependency with a separate GPU build and takes the rows as one in-memory array; this torch
  code streams the memory-mapped store, needs nothing beyond torch and runs on a GPU unchanged.
- :func:`minibatch_kmeans`: mini-batch k-means (Sculley 2010) as in the original.

Memory holds the row index of the sample (8 bytes per instance), the centres and one batch or
the working set, never a stacked copy of the cohort. Mini-batch steps:

1. Greedy k-means++ seeding on a random subset of ``max(3 * batch_size, 10 * k)`` rows.
2. Mini-batch updates (batches drawn with replacement) with per-centre learning rate ``1 / count``
   (as scikit-learn), for at most
   ``max_iter`` passes over the sample, stopped early when the smoothed batch inertia has not
   improved for 10 steps; centres that have won no instance are re-seeded from the batch
   instances farthest from their centres.
3. ``refine_passes`` (default 0) full Lloyd passes streamed over the sample (each centre moves
   to the mean of its instances); after greedy seeding they cost a pass each and did not lower
   the held-out inertia measurably.
4. A streaming pass over all given rows: counts of instances nearest each centre, inertia
   (mean squared distance), and re-seeding of any centre that is still empty.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class KMeansResult:
    """``centres`` ``[K, D]`` float32; ``counts`` ``[K]`` int64; ``inertia`` mean squared distance."""

    centres: np.ndarray
    counts: np.ndarray
    inertia: float
    reseeded: int
    instances: int
    steps: int
    seconds: float


def _nearest(x: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance to, and index of, the nearest centre: ``x`` ``[n, D]``, ``c`` ``[K, D]`` -> ``[n]``, ``[n]``.

    The argmin only needs ``|c|^2 - 2 x.c`` (one fused matmul); ``|x|^2`` is added to the
    ``n`` minima afterwards instead of to the whole ``[n, K]`` matrix.
    """
    partial = torch.addmm(c_sq[None, :], x, c.T, beta=1.0, alpha=-2.0)
    mind, assign = partial.min(1)
    return (mind + torch.linalg.vector_norm(x, dim=1).square()).clamp_min_(0.0), assign


def _gather(data: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(data[np.sort(rows)], dtype=np.float32))


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator, greedy: bool = False) -> torch.Tensor:
    """k-means++ seeding on ``x`` ``[M, D]`` -> ``[k, D]``.

    Each step draws a candidate in proportion to the squared distance to the nearest centre so
    far; ``greedy`` draws ``2 + ln k`` candidates and keeps the one that lowers the total most
    (Arthur & Vassilvitskii's greedy variant; it helps the mini-batch fit, while Lloyd
    iterations make up for plain seeding at a seventh of the cost). Distances come from matrix
    products with cached row norms, never from an ``[M, D]`` difference tensor.
    """
    m = x.shape[0]
    trials = 2 + int(math.log(k)) if greedy else 1
    x_sq = torch.linalg.vector_norm(x, dim=1).square()

    def dist_to(rows: torch.Tensor) -> torch.Tensor:  # [t] -> [t, M]
        return (x_sq[None, :] + x_sq[rows, None] - 2.0 * (x[rows] @ x.T)).clamp_min_(0.0)

    idx = [int(torch.randint(m, (1,), generator=gen))]
    d2 = dist_to(torch.tensor(idx))[0]
    for _ in range(1, k):
        total = float(d2.sum())
        probs = d2 / total if total > 0 else torch.full_like(d2, 1.0 / m)
        cand = torch.multinomial(probs, trials, replacement=True, generator=gen)
        options = torch.minimum(d2[None, :], dist_to(cand))
        best = int(options.sum(1).argmin())
        idx.append(int(cand[best]))
        d2 = options[best]
    return x[idx].clone()


def minibatch_kmeans(data: np.ndarray, rows: np.ndarray, k: int, *, batch_size: int = 4096,
                     max_iter: int = 200, seed: int = 0, count_rows: np.ndarray | None = None,
                     chunk: int = 16384, refine_passes: int = 0) -> KMeansResult:
    """Cluster ``data[rows]`` into ``k`` centres.

    Args:
        data: ``[total, D]`` array (memory-mapped is fine; any float dtype).
        rows: indices of the instances to fit on.
        k: number of centres.
        batch_size: mini-batch size.
        max_iter: maximum passes over ``rows``.
        seed: seeds every random choice (same seed, same centres).
        count_rows: rows to count and score against the final centres (default ``rows``).
        refine_passes: full Lloyd passes over ``rows`` after the mini-batch phase.

    Raises:
        ValueError: no rows, or fewer rows than ``k``.
    """
    t0 = time.perf_counter()
    rows, rng, gen = _start(rows, k, seed)
    n = rows.shape[0]
    init_rows = rng.choice(rows, size=min(n, max(3 * batch_size, 10 * k)), replace=False)
    centres = _kmeans_pp(_gather(data, init_rows), k, gen, greedy=True)
    counts = torch.zeros(k)
    batch = min(batch_size, n)
    max_steps = max(1, max_iter * math.ceil(n / batch))
    ewa, best, stale, reseeded, steps = None, math.inf, 0, 0, 0
    batch_buf = np.empty((batch, data.shape[1]), dtype=np.float32)
    while steps < max_steps:
        steps += 1
        pick = np.sort(rows[rng.integers(0, n, size=batch)] if batch < n else rows)
        x = torch.from_numpy(_read_into(data, pick, batch_buf))
        mind, assign = _nearest(x, centres, (centres * centres).sum(1))
        batch_counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts += batch_counts
        hit = batch_counts > 0
        lr = (batch_counts[hit] / counts[hit])[:, None]
        centres[hit] = centres[hit] * (1 - lr) + (sums[hit] / batch_counts[hit][:, None]) * lr
        empty = counts == 0
        if empty.any():
            far = torch.argsort(mind, descending=True)[: int(empty.sum())]
            centres[empty] = x[far]
            reseeded += int(empty.sum())
        inertia = float(mind.mean())
        ewa = inertia if ewa is None else ewa * 0.9 + inertia * 0.1
        if ewa < best - 1e-7 * abs(best if math.isfinite(best) else 1.0):
            best, stale = ewa, 0
        else:
            stale += 1
            if stale >= 10:
                break
    for _ in range(refine_passes):
        centres = _lloyd_pass(data, rows, centres, chunk)
    counts_out, inertia_total, extra = _assign_counts(data, rows if count_rows is None else count_rows,
                                                      centres, chunk)
    reseeded += extra
    return KMeansResult(centres.numpy().astype(np.float32), counts_out, inertia_total, reseeded,
                        int(n), steps, time.perf_counter() - t0)


def lloyd_kmeans(data: np.ndarray, rows: np.ndarray, k: int, *, working_rows: int = 65536,
                 batch_size: int = 4096, max_iter: int = 200, seed: int = 0,
                 count_rows: np.ndarray | None = None, chunk: int = 16384, tol: float = 1e-4) -> KMeansResult:
    """Cluster ``data[rows]`` into ``k`` centres by Lloyd iterations on a bounded random working set.

    Args:
        data: ``[total, D]`` array (memory-mapped is fine; any float dtype).
        rows: indices of the instances to fit on.
        k: number of centres.
        working_rows: size of the random working set held in memory (``[working_rows, D]`` float32).
        batch_size: sets the k-means++ seeding subset, ``max(3 * batch_size, 10 * k)`` rows.
        max_iter: maximum Lloyd iterations.
        seed: seeds every random choice (same seed, same centres).
        count_rows: rows to count and score against the final centres (default ``rows``).
        tol: stop when an iteration lowers the working-set inertia by less than this share.

    Raises:
        ValueError: no rows, or fewer rows than ``k``.
    """
    t0 = time.perf_counter()
    rows, rng, gen = _start(rows, k, seed)
    n = rows.shape[0]
    work = rows if n <= working_rows else rng.choice(rows, size=max(working_rows, k), replace=False)
    x = _gather(data, work)
    init = torch.randperm(x.shape[0], generator=gen)[: max(3 * batch_size, 10 * k)]
    centres = _kmeans_pp(x[init], k, gen)
    prev, reseeded, steps = math.inf, 0, 0
    for _ in range(max(1, max_iter)):
        steps += 1
        sums = torch.zeros_like(centres, dtype=torch.float64)
        counts = torch.zeros(k, dtype=torch.float64)
        mind = torch.empty(x.shape[0])
        c_sq = (centres * centres).sum(1)
        for lo in range(0, x.shape[0], chunk):
            xb = x[lo:lo + chunk]
            mind[lo:lo + chunk], assign = _nearest(xb, centres, c_sq)
            sums += torch.zeros_like(centres).index_add_(0, assign, xb).double()
            counts += torch.bincount(assign, minlength=k).double()
        inertia = float(mind.double().mean())
        hit = counts > 0
        centres[hit] = (sums[hit] / counts[hit, None]).float()
        empty = torch.nonzero(~hit).flatten()
        if len(empty):
            centres[empty] = x[torch.topk(mind, len(empty)).indices]
            reseeded += len(empty)
        elif prev - inertia <= tol * inertia:
            break
        prev = inertia
    counts_out, inertia_total, extra = _assign_counts(data, rows if count_rows is None else count_rows,
                                                      centres, chunk)
    return KMeansResult(centres.numpy().astype(np.float32), counts_out, inertia_total, reseeded + extra,
                        int(n), steps, time.perf_counter() - t0)


def _start(rows: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.random.Generator, torch.Generator]:
    """Checked int64 rows and the two seeded generators every fit draws from."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.shape[0] == 0:
        raise ValueError("k-means: no training instances")
    if rows.shape[0] < k:
        raise ValueError(f"k-means: {k} clusters requested but only {rows.shape[0]} training instances available")
    return rows, np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def _read_into(data: np.ndarray, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy ``data[rows]`` (``rows`` sorted) into the float32 buffer ``out[:len(rows)]`` and return that view.

    A contiguous run of rows is read as one slice; reusing one buffer avoids the page faults of a
    fresh allocation per chunk, which cost more than the copy itself.
    """
    n = rows.shape[0]
    if n and int(rows[-1]) - int(rows[0]) + 1 == n:
        src = data[int(rows[0]):int(rows[-1]) + 1]
    else:
        src = data[rows]
    np.copyto(out[:n], src, casting="same_kind")
    return out[:n]


def _chunks(data: np.ndarray, rows: np.ndarray, chunk: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Stream ``data[rows]`` in sorted row order: yields ``(row indices, [n, D] float32 tensor)``.

    The tensor is a view of one reused buffer: it is valid until the next chunk is drawn.
    """
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    buf = np.empty((min(chunk, max(1, rows.shape[0])), data.shape[1]), dtype=np.float32)
    for start in range(0, rows.shape[0], chunk):
        r = rows[start:start + chunk]
        yield r, torch.from_numpy(_read_into(data, r, buf))


def _lloyd_pass(data: np.ndarray, rows: np.ndarray, centres: torch.Tensor, chunk: int) -> torch.Tensor:
    """One streamed Lloyd step: each centre becomes the mean of its nearest rows (empty ones stay)."""
    k = centres.shape[0]
    sums = torch.zeros_like(centres, dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.float64)
    c_sq = (centres * centres).sum(1)
    for _, x in _chunks(data, rows, chunk):
        assign = _nearest(x, centres, c_sq)[1]
        # float32 sums within a chunk, float64 across chunks: exact enough, no float64 copy of x
        sums += torch.zeros_like(centres).index_add_(0, assign, x).double()
        counts += torch.bincount(assign, minlength=k).double()
    new = centres.clone()
    hit = counts > 0
    new[hit] = (sums[hit] / counts[hit, None]).float()
    return new


def _assign_counts(data: np.ndarray, rows: np.ndarray, centres: torch.Tensor,
                   chunk: int) -> tuple[np.ndarray, float, int]:
    """Nearest-centre counts and mean squared distance over ``rows``; empty centres re-seeded."""
    k = centres.shape[0]
    reseeded = 0
    for attempt in range(4):
        counts = torch.zeros(k, dtype=torch.long)
        total, far_val, far_row = 0.0, [], []
        c_sq = (centres * centres).sum(1)
        for r, x in _chunks(data, rows, chunk):
            mind, assign = _nearest(x, centres, c_sq)
            counts += torch.bincount(assign, minlength=k)
            total += float(mind.double().sum())
            top = torch.topk(mind, min(k, mind.shape[0]))
            far_val.append(top.values)
            far_row.append(torch.from_numpy(r)[top.indices])
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty) == 0 or attempt == 3:
            break
        vals, rws = torch.cat(far_val), torch.cat(far_row)
        pick = rws[torch.argsort(vals, descending=True)[: len(empty)]].numpy()
        centres[empty] = _gather(data, pick)
        reseeded += len(empty)
    return counts.numpy().astype(np.int64), total / max(1, len(rows)), reseeded


class StandardizedRows:
    """Row access to ``data`` that returns ``(data[rows] - mean) / std`` as float32 (a view, no copy)."""

    def __init__(self, data: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
        self.data, self.mean, self.std = data, mean.astype(np.float32), std.astype(np.float32)
        self.shape = data.shape

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return (np.asarray(self.data[rows], dtype=np.float32) - self.mean) / self.std


def feature_stats(data: np.ndarray, rows: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation over ``data[rows]``, streamed (float64 sums).

    Returns:
        ``([D] mean, [D] std)`` float32; std is floored at 1e-6.
    """
    s1 = np.zeros(data.shape[1])
    s2 = np.zeros(data.shape[1])
    for _, xt in _chunks(data, rows, chunk):
        x = xt.numpy().astype(np.float64)
        s1 += x.sum(0)
        s2 += (x * x).sum(0)
    n = max(1, len(rows))
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def sample_rows(offsets: np.ndarray, bag_indices: list[int], ratio: float, max_per_slide: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the given bags: (sample for fitting, all rows for counting).

    ``ratio`` < 1 keeps ``ceil(n * ratio)`` random rows per slide; ``max_per_slide`` > 0 caps it.
    """
    rng = np.random.default_rng(seed)
    sample, full = [], []
    for i in bag_indices:
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        r = np.arange(lo, hi, dtype=np.int64)
        full.append(r)
        m = math.ceil(len(r) * ratio)
        if max_per_slide > 0:
            m = min(m, max_per_slide)
        sample.append(r if m >= len(r) else np.sort(rng.choice(r, size=m, replace=False)))
    empty = np.zeros(0, np.int64)
    return (np.concatenate(sample) if sample else empty), (np.concatenate(full) if full else empty)
