"""A closed-form start for linear instance heads (``inst_init: misvm``, with ``inst_on: input``).

Before the first epoch, each branch's linear patch classifier on the standardised features is fitted
by iterated logistic regression in the manner of mi-SVM (Andrews et al. 2002), on the fold's training
slides only:

1. the first positives: each positive slide's ``k = max(1, floor(N * inst_top_p))`` patches least like
   the negative slides' patches (``inst_init_start: novelty``: the largest mean distance to their 5
   nearest negative patches), or the top k under a fit of every patch labelled with its slide's label
   (``bags``: ``argmin sum_i BCE(w . x_i + b, Y(slide(i))) + |w|^2 / (2 C)``);
2. logistic regressions until the positives stop changing (mi-SVM's rule), at most ``inst_init_refits``:
   every patch of the negative slides negative, the chosen patches positive, both sides weighted
   equally; each refit's top k of every positive slide (the instance loss's own rule) are the next
   positives. With ``inst_init_pick_folds`` >= 2 a slide's next positives are chosen by a fit on the
   other positive slides' positives only (out-of-part picking, :func:`fit_misvm`), so that a fit cannot
   re-choose the patches it memorised;
3. with cross-fitting (``inst_init_folds`` >= 2; :func:`cross_fitted_tops`), ``inst_init_head: full``
   (the default) makes one more fit on every training slide the head, ``bagged`` the mean of the folds'
   fits (each on the other folds' slides: with out-of-part picking, each part's fits then see only a
   third of the positive slides' picks, and on one held-out cohort the mean missed where the full fit
   did not: ``benchmarks/recipe.md``, session 20);
4. Platt scaling of the slides' top patch (:func:`calibrate_top_patch`; on the out-of-fold top patches
   with cross-fitting), so that the instance stream starts from calibrated slide log-odds.

The fits are L-BFGS logistic regressions, deterministic given the slides: scikit-learn's on host
arrays (training on a CPU), torch's L-BFGS on the same objective where the slides lie on an accelerator
(:mod:`recomil.training.logistic`: the rows, the picks and the scores stay on the GPU; the two reach the
same minimum to the solvers' tolerance, and the log line names the one that ran): a linear scorer
cannot memorise a few idiosyncratic patches per slide the way a head on deep tokens can, and on the
development cohorts it finds a small tumour's direction before the first optimiser step (the model
right after the fit ranks their test slides at AUC 0.99-1.00, the fold's validation slides held out:
``benchmarks/recipe.md``, sessions 18-20). With in-sample picking it could miss: on one held-out cohort
two training seeds of ten ended at chance, and in the one looked into, the fit's picks were a third
tumour (in-sample refits settle near their first picks); out-of-part picking took the same slides'
picks to nine tenths tumour, and that seed's run to test AUC 1.000. Training then continues from it.

At most ``inst_init_rows`` patches enter a fit (and the novelty's reference): beyond that each slide
contributes a random share of its patches (seeded), while the positives are still chosen among all of
a positive slide's patches. The novelty's distances are computed on the training device: on a CPU, a
cohort of a million patches takes minutes there.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits
from torch import nn

from recomil.config import Params
from recomil.data.errors import DataError
from recomil.training.bags import BagSet
from recomil.training.logistic import LinearScorer, fit_logistic


def top_k(n: int, top_p: float) -> int:
    """The number of a positive slide's patches taken as positive: ``max(1, floor(n * top_p))`` (<= n)."""
    return min(n, max(1, math.floor(n * top_p)))


def novelty(x: np.ndarray | torch.Tensor, reference: torch.Tensor, neighbours: int,
            chunk: int = 1024) -> np.ndarray | torch.Tensor:
    """Each row's mean Euclidean distance to its ``neighbours`` nearest rows of ``reference``.

    Args:
        x: ``[N, D]`` float32 queries (an array, or a tensor on ``reference``'s device);
        reference: ``[M, D]`` float32 (on the device that computes).

    Returns:
        ``[N]`` float32 of ``x``'s kind: large for a patch unlike every patch of the reference (the
        negative slides).
    """
    k = min(neighbours, reference.shape[0])
    ref_sq = (reference * reference).sum(1)
    tensor = isinstance(x, torch.Tensor)
    out = []
    for i in range(0, len(x), chunk):
        q = x[i:i + chunk] if tensor else torch.from_numpy(np.ascontiguousarray(x[i:i + chunk]))
        q = q.to(reference.device)
        d2 = (q * q).sum(1, keepdim=True) + ref_sq[None, :] - 2.0 * q @ reference.T
        out.append(d2.topk(k, dim=1, largest=False).values.clamp_min(0).sqrt().mean(1))
    if tensor:
        return torch.cat(out) if out else x.new_zeros(0)
    return np.concatenate([o.cpu().numpy() for o in out]) if out else np.zeros(0, np.float32)


def _cat(parts: list[Any]) -> Any:
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


def _take(x: np.ndarray | torch.Tensor, index: np.ndarray) -> np.ndarray | torch.Tensor:
    """``x[index]`` for a numpy index (boolean mask or positions), whatever ``x``'s kind."""
    return x[torch.from_numpy(index).to(x.device)] if isinstance(x, torch.Tensor) else x[index]


def _top(scores: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """The positions of the ``k`` highest scores, in increasing order (ties: the earlier position)."""
    if isinstance(scores, torch.Tensor):
        return np.sort(torch.argsort(-scores, stable=True)[:k].cpu().numpy())
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def top_logit(x: np.ndarray | torch.Tensor, w: np.ndarray, b: float) -> float:
    """A slide's top patch logit ``max_i x_i . w + b`` for its patches ``x`` ``[N, D]`` (array or tensor)."""
    if isinstance(x, torch.Tensor):
        return float((x @ torch.from_numpy(np.asarray(w, dtype=np.float32)).to(x.device)).max()) + b
    return float((x @ w).max()) + b


def fit_misvm(bag: Callable[[int], np.ndarray | torch.Tensor], labels: np.ndarray, top_p: float, refits: int, c: float,
              max_rows: int, rng: np.random.Generator, start: str = "novelty", neighbours: int = 5,
              device: torch.device | str = "cpu", calibrate: bool = True,
              history: bool = True, sizes: np.ndarray | None = None,
              pick_folds: int = 1, warm_start: bool = False) -> tuple[np.ndarray, float, list[float]]:
    """mi-SVM-style logistic regression of patches (module docstring): refits until the chosen positives
    are those of the refit before, at most ``refits``.

    With ``pick_folds`` >= 2 the positive slides are dealt into that many parts (seeded by ``rng``) and
    each refit fits one regression per part on every other part's chosen patches (and every negative
    patch): a slide's next positives are its top patches under a fit that never saw that slide's
    positives. A fit on all the chosen patches scores them high because it was fitted on them (with a
    few hundred positives in hundreds of dimensions it can fit their noise), so in-sample picking can
    settle on whatever the first positives held; out-of-part picking keeps only what other slides
    share. Refits then stop when the positives repeat those of the refit before or of the one before
    that (a two-cycle), at most ``refits`` rounds, and one last regression on every slide's final
    positives is the fit. ``1``: in-sample picking (mi-SVM as published).

    Args:
        bag: ``bag(j)`` -> slide j's standardised patch features ``[N_j, D]`` float32 (read when needed:
            only the fit's rows are held in memory): numpy arrays (the regressions are scikit-learn's) or
            tensors (the same regressions by torch's L-BFGS where the tensors lie:
            :func:`recomil.training.logistic.fit_logistic`; on a GPU the fit stays on the device).
        labels: ``[J]`` slide labels (0 negative, 1 positive); both must occur.
        max_rows: at most this many patches per fit (each slide subsampled by the same share beyond).
        start: how the first positives are chosen: ``novelty`` (each positive slide's top patches by
            :func:`novelty` against the negative slides' patches) or ``bags`` (a fit of every patch with
            its slide's label, then its top patches).
        device: where the novelty's distances are computed.
        calibrate: scale the last fit so that a slide's top patch logit is its calibrated log-odds
            (:func:`calibrate_top_patch`, on the training slides).
        sizes: ``[J]`` patches per slide when known (the store's), so the row cap needs no extra pass.
        history: score every slide after each fit for the returned AUCs (a pass over the bags per fit;
            cross-fitting, which discards them, turns it off and gets an empty list).
        warm_start: each round's regressions start from the round before's (the same part's with
            ``pick_folds`` >= 2; the last fit from the mean of the last parts' fits), not from zero: fewer
            L-BFGS iterations towards the same minimum, within the solver's tolerance.

    Returns:
        ``w`` ``[D]`` float32, the bias, and the training slides' AUC of their top patch's score after
        each fit (one value per refit run, at most ``refits``; one more, first, for the bag-label fit of
        ``start: bags``; with ``pick_folds`` >= 2 only the last fit's after it, the parts' fits scoring
        only their own slides).
    """
    labels = np.asarray(labels)
    total = int(np.sum(sizes)) if sizes is not None else sum(len(bag(j)) for j in range(len(labels)))
    share = min(1.0, max_rows / max(total, 1))
    picked = []
    for j in range(len(labels)):
        x = bag(j)
        picked.append(x if share >= 1.0 else _take(x, rng.random(len(x)) < share))
    negatives = _cat([b for b, lab in zip(picked, labels) if lab == 0])
    aucs: list[float] = []

    def record(clf: LinearScorer) -> None:
        if history:
            aucs.append(float(roc_auc_score(labels, [float(clf(bag(j)).max()) for j in range(len(labels))])))

    if start == "bags":
        x = _cat(picked)
        y = np.concatenate([np.full(len(b), lab) for b, lab in zip(picked, labels)])
        clf = fit_logistic(x, y, c)
        record(clf)
        del x, y
        score: Callable[[Any], Any] = clf
    else:
        reference = (negatives if isinstance(negatives, torch.Tensor) else torch.from_numpy(negatives)).to(device)
        score = partial(novelty, reference=reference, neighbours=neighbours)
    positive_slides = np.flatnonzero(labels == 1)
    parts = min(int(pick_folds), len(positive_slides))
    part = np.zeros(len(labels), dtype=np.int64)
    if parts >= 2:
        part[positive_slides[rng.permutation(len(positive_slides))]] = np.arange(len(positive_slides)) % parts
    slide_score: Callable[[int, Any], Any] = lambda j, x: score(x)  # noqa: E731

    def refit(pos: Any, begin: LinearScorer | None = None) -> LinearScorer:
        return fit_logistic(_cat([negatives, pos]), np.r_[np.zeros(len(negatives)), np.ones(len(pos))], c,
                            balanced=True, start=begin if warm_start else None)

    def choose() -> tuple[list[Any], list[np.ndarray]]:
        positives, chosen = [], []
        for j in positive_slides:
            b = bag(int(j))
            chosen.append(_top(slide_score(int(j), b), top_k(len(b), top_p)))
            positives.append(_take(b, chosen[-1]))
        return positives, chosen

    def same(a: list[np.ndarray] | None, b: list[np.ndarray]) -> bool:
        return a is not None and all(np.array_equal(u, v) for u, v in zip(a, b))

    before: list[np.ndarray] | None = None
    two_before: list[np.ndarray] | None = None
    fits: list[LinearScorer | None] = [None] * parts
    last: LinearScorer | None = clf if start == "bags" else None
    for _ in range(refits):
        positives, chosen = choose()
        if same(before, chosen) or (parts >= 2 and same(two_before, chosen)):
            break  # converged: the next fit would be the last one again (or a two-cycle)
        two_before, before = before, chosen
        if parts >= 2:  # one fit per part, on the other parts' positives; each scores its own part's slides
            fits = [refit(_cat([x for x, j in zip(positives, positive_slides) if part[j] != k]), fits[k])
                    for k in range(parts)]
            slide_score = lambda j, x, fits=fits: fits[part[j]](x)  # noqa: E731
        else:
            clf = last = refit(_cat(positives), last)
            record(clf)
            score = clf
    else:
        if parts >= 2 and refits > 0:  # at the cap: the last parts' fits choose the final positives
            positives, chosen = choose()
    if parts >= 2 and refits > 0:  # the fit: one regression on every slide's final positives
        done = [f for f in fits if f is not None]
        mean = (LinearScorer(np.mean([f.coef for f in done], axis=0), float(np.mean([f.intercept for f in done])),
                             None) if done else None)
        clf = refit(_cat(positives), mean)
        record(clf)
    w, b = clf.coef, clf.intercept
    if calibrate:
        tops = np.array([top_logit(bag(j), w, b) for j in range(len(labels))])
        w, b = calibrate_top_patch(w, b, tops, labels)
    return w.astype(np.float32), float(b), aucs


def calibrate_top_patch(w: np.ndarray, b: float, tops: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Platt scaling of the slides' top patch: ``a, c`` of a logistic regression of the slide labels on
    ``tops`` ``t_j = max_i (w . x_ji + b)`` (``[J]``; ``C`` 1); returns ``(a w, a b + c)``, whose top patch
    logit ``a t_j + c``
    is the slide's calibrated log-odds. The patches' order is unchanged (``a`` > 0); ``a`` <= 0 (the
    scores do not rank the slides) gives ``w = 0`` and the prior log-odds. A class-balanced fit puts
    every slide's top patch above 0: uncalibrated, the instance stream would start by calling every
    slide positive. ``tops`` may come from other fits than ``w`` (cross-fitting:
    :func:`cross_fitted_tops`), as scikit-learn's ``CalibratedClassifierCV(ensemble=False)`` does."""
    platt = LogisticRegression(C=1.0).fit(np.asarray(tops, dtype=np.float64)[:, None], labels)
    a, c = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    if a <= 0:
        prior = float(np.mean(labels))
        return np.zeros_like(w), math.log(prior / (1 - prior))
    return a * w, a * b + c


def cross_fitted_tops(bag: Callable[[int], np.ndarray | torch.Tensor], labels: np.ndarray, folds: int, seed: int,
                      sizes: np.ndarray | None = None,
                      **fit: Any) -> tuple[np.ndarray, list[tuple[np.ndarray, float]]]:
    """Out-of-fold top-patch logits ``[J]``: the training slides in ``folds`` stratified parts; each
    part's slides scored (``max_i w . x_i + b``) by :func:`fit_misvm` (uncalibrated) fitted on the
    other parts. An estimate of how the fit ranks slides it has not seen: a fit that memorised its
    positives ranks its own slides perfectly and these at chance.

    Returns:
        The out-of-fold logits and each part's fit ``(w [D] float32, b)`` (their mean is the bagged head)."""
    start = fit.pop("start", "novelty")
    return cross_fit_starts(bag, labels, folds, seed, (start,), sizes, **fit)[start]


def cross_fit_starts(bag: Callable[[int], np.ndarray | torch.Tensor], labels: np.ndarray, folds: int, seed: int,
                     starts: tuple[str, ...], sizes: np.ndarray | None = None, workers: int = 1,
                     **fit: Any) -> dict[str, tuple[np.ndarray, list[tuple[np.ndarray, float]]]]:
    """:func:`cross_fitted_tops` for each of ``starts``: ``{start: (out-of-fold logits [J], the folds'
    fits)}``. The ``len(starts) * folds`` fits are independent; with ``workers`` > 1 they run in that
    many threads (scikit-learn's regressions and torch's distances release the interpreter), each
    computing with one BLAS and one torch thread, as the sequential path does with one thread: the
    result does not depend on ``workers``."""
    labels = np.asarray(labels)
    split = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)),
                                                                                          labels))

    def one(start: str, k: int) -> tuple[list[float], tuple[np.ndarray, float]]:
        rest, part = split[k]
        w, b, _ = fit_misvm(lambda j: bag(int(rest[j])), labels[rest], calibrate=False, history=False,
                            rng=np.random.default_rng(seed + k), start=start,
                            sizes=None if sizes is None else np.asarray(sizes)[rest], **fit)
        return [top_logit(bag(int(j)), w, b) for j in part], (w, b)

    tasks = [(start, k) for start in starts for k in range(folds)]
    if workers > 1 and len(tasks) > 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(1), ThreadPoolExecutor(min(workers, len(tasks))) as pool:
                results = list(pool.map(lambda t: one(*t), tasks))
        finally:
            torch.set_num_threads(threads)
    else:
        results = [one(*t) for t in tasks]
    out: dict[str, tuple[np.ndarray, list[tuple[np.ndarray, float]]]] = {
        start: (np.zeros(len(labels)), []) for start in starts}
    for (start, k), (tops, wb) in zip(tasks, results):
        out[start][0][split[k][1]] = tops
        out[start][1].append(wb)
    return out


def no_better_than_chance(scores: np.ndarray, labels: np.ndarray, level: float = 0.05) -> tuple[bool, float, float]:
    """Whether out-of-fold slide scores (``[J]``) rank the positive slides above the negative ones no
    better than chance: ``(verdict, AUC, p)`` with ``p`` the one-sided Mann-Whitney U test's p-value
    (positives' scores greater; ties shared) and the verdict ``p > level``. With 54 slides (22
    positive) an AUC below about 0.66 is not distinguishable from chance at 0.05."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    p = float(mannwhitneyu(scores[labels == 1], scores[labels == 0], alternative="greater").pvalue)
    return p > level, float(roc_auc_score(labels, scores)), p


def init_instance_heads(model: nn.Module, train: BagSet, p: Params, seed: int, tag: str,
                        log: Callable[[str], None] | None = None,
                        on_device: bool | None = None) -> dict[str, list[float]]:
    """Fit each branch's linear input head (``inst_on: input``) by :func:`fit_misvm` on ``train``'s
    slides, standardised as the model standardises them, and copy the fit into the head: with
    cross-fitting and ``inst_init_head: bagged`` the mean of the folds' fits, else one fit on every
    training slide; calibrated on the out-of-fold top patches when there are some.

    ``on_device`` (default: whether the head lies on an accelerator) keeps the slides as tensors on
    the head's device, where torch's L-BFGS fits the regressions (:mod:`recomil.training.logistic`);
    otherwise they are host arrays and the regressions scikit-learn's. Both minimise the same objective
    to the same tolerance; the log line says which ran.

    Returns, per scale, the training slides' top-patch AUC after each fit of the full fit, or the
    bagged head's alone."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    labels = np.asarray(train.labels)
    if len(set(labels.tolist())) != 2 or set(labels.tolist()) != {0, 1}:
        raise DataError(f"inst_init: misvm needs negative (0) and positive (1) training slides; {tag} has labels "
                        f"{sorted(set(labels.tolist()))}")
    seed = int(seed) % 2**31  # scikit-learn's random_state: below 2**32
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {}
    for scale, branch in model.branches.items():
        started = time.perf_counter()
        head = getattr(branch, "instance_head", None)
        if head is None or getattr(branch, "inst_on", "tokens") != "input":
            raise ValueError(f"inst_init: misvm fits a linear head on the input features: set inst_on: input "
                             f"(scale {scale} has {'no instance head' if head is None else 'a head on the tokens'})")
        norm = model.input_norm[scale] if scale in getattr(model, "input_norm", {}) else nn.Identity()

        device = head.weight.device
        tensors = device.type != "cpu" if on_device is None else on_device

        def bag(j: int, scale: str = scale, norm: nn.Module = norm, device: torch.device = device,
                tensors: bool = tensors) -> np.ndarray | torch.Tensor:
            with torch.no_grad():
                x = norm(train.bag(j, device)[scale].float())
                return x if tensors else x.cpu().numpy()

        log(f"train: {tag}: fitting the instance head ({scale}) by mi-SVM on the {len(train)} training slides "
            f"({'torch L-BFGS on ' + str(device) if tensors else 'scikit-learn L-BFGS'}; minutes on a CPU for "
            f"large cohorts)")
        fit = dict(top_p=p.inst_top_p, refits=p.inst_init_refits, c=p.inst_init_c, max_rows=p.inst_init_rows,
                   device=device, sizes=np.asarray(train.store.sizes(scale))[train.positions],
                   pick_folds=p.inst_init_pick_folds, warm_start=p.inst_init_warm_start)
        starts = ("novelty", "bags") if p.inst_init_start == "auto" else (p.inst_init_start,)
        folds = min(p.inst_init_folds, int(np.bincount(labels).min()))
        cv: dict[str, np.ndarray] = {}
        fold_fits: dict[str, list[tuple[np.ndarray, float]]] = {}
        if folds >= 2:  # the starts' cross-fitting fits in parallel on a CPU's threads (the same result)
            workers = 1 if tensors else torch.get_num_threads()
            for start, (tops, fits) in cross_fit_starts(bag, labels, folds, seed, starts, workers=workers,
                                                        **fit).items():
                cv[start], fold_fits[start] = tops, fits
        elif p.inst_init_folds >= 2:
            log(f"note: train: {tag}: {int(np.bincount(labels).min())} training slide(s) in the smaller class: "
                f"no cross-fitting; the instance head's start is {starts[0]}, calibrated on the slides it was "
                f"fitted on")
        cv_auc = {s: float(roc_auc_score(labels, t)) for s, t in cv.items()}
        start = max(starts, key=lambda s: cv_auc.get(s, 0.0))  # ties: the first (novelty)
        bagged = start in cv and p.inst_init_head == "bagged"
        if bagged:  # the folds' fits averaged: no further fit
            w = np.mean([fw for fw, _ in fold_fits[start]], axis=0)
            b = float(np.mean([fb for _, fb in fold_fits[start]]))
            history = [float(roc_auc_score(labels, [top_logit(bag(j), w, b) for j in range(len(labels))]))]
        else:
            w, b, history = fit_misvm(bag, labels, rng=rng, start=start, calibrate=start not in cv, **fit)
        if start in cv:  # calibrated on how the fit ranks slides it has not seen
            w, b = calibrate_top_patch(w.astype(np.float64), b, cv[start], labels)
            w = w.astype(np.float32)
        if start in cv:
            chance, auc, pval = no_better_than_chance(cv[start], labels)
            if chance:  # said, not hidden: the start is kept (it is what the fit found) but may carry nothing
                log(f"warning: train: {tag}: the instance head's fit ({scale}) ranks the training slides it was "
                    f"not fitted on no better than chance (cross-fitted top-patch AUC {auc:.3f}, one-sided "
                    f"Mann-Whitney p = {pval:.2f}, {len(labels)} slides): at this scale the fitted start may "
                    f"carry no tumour signal, and the model then learns from the slide labels alone")
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(w)[None, :])
            head.bias.fill_(float(b))
        out[scale] = history
        chosen = (", cross-fitted top-patch AUC (" + f"{folds} folds): "
                  + ", ".join(f"{s} {a:.3f}" for s, a in cv_auc.items())) if cv else ""
        what = (f"the mean of the {folds} folds' fits; top-patch AUC on the training slides: "
                if bagged else "top-patch AUC on them after each fit: ")
        picking = (f", positives chosen out of part ({p.inst_init_pick_folds} parts)"
                   if p.inst_init_pick_folds >= 2 else "")
        log(f"train: {tag}: instance head ({scale}) fitted by mi-SVM on the {len(train)} training slides "
            f"(start: {start}{chosen}{picking}); {what}" + ", ".join(f"{a:.3f}" for a in history)
            + f" ({time.perf_counter() - started:.0f} s; regressions: "
            + (f"torch L-BFGS on {device})" if tensors else "scikit-learn L-BFGS)"))
    return out
