"""L2-regularised logistic regression of patches, for the instance heads' fit (:mod:`instance_init`).

The objective is scikit-learn's ``LogisticRegression(C=c)`` (L-BFGS, intercept not penalised)::

    min_{w, b}  (1 / S) sum_i s_i log(1 + exp(-t_i (w . x_i + b))) + |w|^2 / (2 C S),   t_i = 2 y_i - 1,

with ``s_i = 1`` or, class-balanced, ``s_i = n / (2 n_{y_i})`` and ``S = sum_i s_i``. Host arrays
(numpy) are fitted by scikit-learn itself; tensors by :func:`torch.optim.LBFGS` on the objective above,
where they lie (on a GPU the fit's rows never leave the device), stopping as scikit-learn's L-BFGS does
(largest gradient entry at most ``tol``, at most ``max_iter`` iterations). Both reach the objective's
single minimum (it is strictly convex in ``w``), within that tolerance of each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression


@dataclass
class LinearScorer:
    """A fitted patch scorer: ``scorer(x)`` -> ``[N]`` logits ``x . w + b`` for ``x`` ``[N, D]`` of the fit's
    kind (array or tensor); ``coef`` ``[D]`` float64 and ``intercept``: the fit on the host."""

    coef: np.ndarray
    intercept: float
    model: Any  # scikit-learn's estimator (host arrays) or the ``(w [D], b [1])`` tensors

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        if isinstance(self.model, LogisticRegression):
            return self.model.decision_function(x)
        w, b = self.model
        return x @ w + b


def fit_logistic(x: np.ndarray | torch.Tensor, y: np.ndarray, c: float, balanced: bool = False,
                 max_iter: int = 300, tol: float = 1e-4, start: LinearScorer | None = None) -> LinearScorer:
    """Fit the module's objective to rows ``x`` ``[N, D]`` (float32 array, or a tensor on any device)
    and labels ``y`` ``[N]`` in {0, 1}; ``balanced`` weighs both classes equally. ``start``: an earlier
    fit whose ``w``, ``b`` the solver starts from (a warm start: the same minimum, fewer iterations when
    it is near), else zero."""
    if not isinstance(x, torch.Tensor):
        clf = LogisticRegression(C=c, max_iter=max_iter, tol=tol, warm_start=start is not None,
                                 class_weight="balanced" if balanced else None)
        if start is not None:  # scikit-learn's warm start reads the estimator's coef_ and intercept_
            clf.coef_ = np.asarray(start.coef, dtype=np.float64)[None, :].copy()
            clf.intercept_ = np.array([float(start.intercept)])
        clf.fit(x, y)
        return LinearScorer(clf.coef_[0].astype(np.float64), float(clf.intercept_[0]), clf)
    y = np.asarray(y)
    counts = np.bincount(y.astype(np.int64), minlength=2)
    weight = (len(y) / (2.0 * counts))[y.astype(np.int64)] if balanced else np.ones(len(y))
    s = torch.from_numpy(weight).to(x.device, x.dtype)
    t = torch.from_numpy(2.0 * y - 1.0).to(x.device, x.dtype)
    total = float(weight.sum())
    w = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    b = torch.zeros(1, dtype=x.dtype, device=x.device)
    if start is not None:
        w.copy_(torch.from_numpy(np.asarray(start.coef, dtype=np.float64)))
        b.fill_(float(start.intercept))
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=10, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        opt.zero_grad()
        loss = (s * torch.nn.functional.softplus(-t * (x @ w + b))).sum() / total + (w @ w) / (2.0 * c * total)
        loss.backward()
        return loss

    opt.step(objective)
    w, b = w.detach(), b.detach()
    return LinearScorer(w.double().cpu().numpy(), float(b.item()), (w, b))
