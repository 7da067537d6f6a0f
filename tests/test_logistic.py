"""The instance heads' logistic regression on tensors (torch L-BFGS, the GPU path) against scikit-learn's."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from recomil.training.instance_init import fit_misvm, init_instance_heads
from recomil.training.logistic import fit_logistic
from tests.test_instance_init import _cohort, _demo_model


def _rows(seed: int = 0, n: int = 3000, d: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a rare positive class (about 8 %) along dimension 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x[:, 0] + rng.normal(size=n) > 2.0).astype(np.float64)


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("c", [0.01, 1.0])
def test_on_tensors_the_fit_reaches_scikit_learns_minimum(balanced, c):
    """The same objective (weighted mean log-loss, |w|^2 / (2 C S), intercept free, classes weighed
    equally when balanced) minimised by torch's L-BFGS: scikit-learn's coefficients to the solvers'
    tolerance, and the tensors' scores are ``x . w + b`` on the tensors' device."""
    x, y = _rows()
    ref = fit_logistic(x, y, c, balanced)
    fit = fit_logistic(torch.from_numpy(x), y, c, balanced)
    assert np.abs(fit.coef - ref.coef).max() < 2e-3 * max(1.0, np.abs(ref.coef).max())
    assert fit.intercept == pytest.approx(ref.intercept, abs=5e-3)
    scores = fit(torch.from_numpy(x))
    assert isinstance(scores, torch.Tensor) and scores.shape == (len(x),)
    np.testing.assert_allclose(scores.numpy(), ref(x), atol=2e-2)


def test_balancing_and_the_penalty_move_the_minimum_as_they_should():
    """Weighing the rare class up raises its scores (a higher intercept); a smaller C shrinks w."""
    x, y = _rows(1)
    t = torch.from_numpy(x)
    plain, balanced = fit_logistic(t, y, 0.01), fit_logistic(t, y, 0.01, balanced=True)
    assert balanced.intercept > plain.intercept + 1.0
    assert np.linalg.norm(fit_logistic(t, y, 0.001).coef) < 0.7 * np.linalg.norm(plain.coef)


@pytest.mark.parametrize("start", ["bags", "novelty"])
@pytest.mark.parametrize("pick_folds", [1, 3])
def test_the_fit_on_tensors_picks_the_patches_the_fit_on_arrays_picks(start, pick_folds):
    """fit_misvm on tensor bags (where a GPU keeps them) runs the same rounds as on arrays: the same
    top-patch AUCs after each fit and the same head to the solvers' tolerance, with a row cap too."""
    bags, labels, _ = _cohort(2, d=300, slides=30, tumour=4)
    tensors = [torch.from_numpy(b) for b in bags]
    for rows in (10**6, 2000):
        w, b, history = fit_misvm(bags.__getitem__, labels, 0.04, 20, 0.01, rows, np.random.default_rng(0),
                                  start=start, pick_folds=pick_folds)
        wt, bt, history_t = fit_misvm(tensors.__getitem__, labels, 0.04, 20, 0.01, rows, np.random.default_rng(0),
                                      start=start, pick_folds=pick_folds)
        assert history_t == history
        assert np.abs(wt - w).max() < 5e-3 * np.abs(w).max() and bt == pytest.approx(b, abs=0.05)


def test_the_trainer_fits_on_the_device_when_asked_and_says_which_solver_ran(project, tiny_params):
    """``on_device`` keeps the slides as tensors on the head's device (an accelerator's by default): the
    heads come out as with host arrays, and the log line names the solver."""
    p = dataclasses.replace(tiny_params, inst_on="input", inst_init="misvm", instance_stream=True, epochs=1)
    model, train, _, _ = _demo_model(p)
    other = copy.deepcopy(model)
    said: dict[bool, list[str]] = {True: [], False: []}
    for m, on in ((model, False), (other, True)):
        init_instance_heads(m, train, p, 0, "fold 0", log=said[on].append, on_device=on)
    assert all("regressions: scikit-learn L-BFGS" in line for line in said[False] if "fitted by mi-SVM" in line)
    assert sum("regressions: torch L-BFGS on cpu" in line for line in said[True]) == 2
    with torch.no_grad():
        assert float(model.branches["high"].instance_head.weight.abs().max()) > 0.01  # a fit, not a flat head
        for scale in ("high", "low"):
            a, b = model.branches[scale].instance_head, other.branches[scale].instance_head
            assert torch.allclose(a.weight, b.weight, atol=5e-3 * max(1e-3, float(a.weight.abs().max())))
            assert float(a.bias) == pytest.approx(float(b.bias), abs=0.05)


@pytest.mark.parametrize("tensors", [False, True])
def test_a_warm_start_reaches_the_same_minimum_in_fewer_iterations(tensors):
    """``start``: the solver begins at an earlier fit's ``w``, ``b``. From a nearby fit (the same rows
    with a few labels changed, as one refit round to the next) it ends at the cold fit's minimum to the
    solver's tolerance, and (scikit-learn's count) in fewer L-BFGS iterations; a warm start from a far
    point still ends at the minimum."""
    x, y = _rows(2)
    near = y.copy()
    near[np.flatnonzero(y == 1)[:5]] = 0  # the round before: a few chosen positives differ
    data = torch.from_numpy(x) if tensors else x
    before = fit_logistic(data, near, 0.01, balanced=True)
    cold = fit_logistic(data, y, 0.01, balanced=True)
    warm = fit_logistic(data, y, 0.01, balanced=True, start=before)
    far = fit_logistic(data, y, 0.01, balanced=True, start=type(before)(-5 * cold.coef, 3.0, None))
    for fit in (warm, far):
        assert np.abs(fit.coef - cold.coef).max() < 3e-3 * np.abs(cold.coef).max()
        assert fit.intercept == pytest.approx(cold.intercept, abs=1e-2)
    if not tensors:
        assert warm.model.n_iter_[0] < cold.model.n_iter_[0]
        assert np.array_equal(fit_logistic(x, y, 0.01, balanced=True).coef, cold.coef)  # no start: as before


@pytest.mark.parametrize("pick_folds", [1, 3])
def test_warm_started_refits_give_the_same_fit_with_fewer_iterations(pick_folds, monkeypatch):
    """fit_misvm with ``warm_start``: every round's regressions start from the round before's (per part),
    the last from the mean of the last parts' fits: the same chosen patches and head to the solver's
    tolerance, in fewer L-BFGS iterations over the fit."""
    import recomil.training.instance_init as instance_init

    bags, labels, _ = _cohort(4, d=200, slides=30, tumour=4)
    iterations: list[int] = []
    real = instance_init.fit_logistic

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        iterations.append(int(out.model.n_iter_[0]))
        return out

    monkeypatch.setattr(instance_init, "fit_logistic", counted)
    runs = {}
    for warm in (False, True):
        iterations.clear()
        w, b, history = fit_misvm(bags.__getitem__, labels, 0.04, 20, 0.01, 10**6, np.random.default_rng(0),
                                  start="bags", pick_folds=pick_folds, warm_start=warm)
        runs[warm] = (w, b, history, sum(iterations), len(iterations))
    (w0, b0, h0, it0, n0), (w1, b1, h1, it1, n1) = runs[False], runs[True]
    assert h1 == h0 and n1 == n0  # the same rounds, the same slides' ranking after each fit
    assert np.abs(w1 - w0).max() < 5e-3 * np.abs(w0).max() and b1 == pytest.approx(b0, abs=0.05)
    assert it1 < it0
