"""The evidence report's arithmetic (benchmarks/results.py): exponents, paired differences, verdicts."""

import importlib.util
import math

import numpy as np
import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("results", REPO / "benchmarks" / "results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fit_exponent_recovers_power_laws(results):
    x = [8, 16, 32, 64]
    assert results.fit_exponent(x, [3.0 * v ** 1.0 for v in x]) == pytest.approx(1.0)
    assert results.fit_exponent(x, [5.0 * v ** 0.5 for v in x]) == pytest.approx(0.5)
    assert results.fit_exponent(x, [7.0 for _ in x]) == pytest.approx(0.0, abs=1e-12)


def test_paired_difference_uses_shared_runs_only(results):
    a = {(1, 0): 0.9, (1, 1): 0.8, (2, 0): 0.7, (3, 0): None}
    b = {(1, 0): 0.8, (1, 1): 0.8, (2, 0): 0.5, (9, 9): 0.1}
    mean, se, wins, n = results._paired(a, b)
    d = np.array([0.1, 0.0, 0.2])
    assert n == 3 and wins == 2
    assert mean == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / math.sqrt(3))


def _rec(row, seed, aucs):
    return {"dataset": "toy", "seed": seed, "folds": len(aucs), "row": row, "per_fold":
            [{"auc": a, "acc": a} for a in aucs], "epochs": [20] * len(aucs), "loc_auc": None}


def test_accuracy_section_states_where_a_component_does_not_help(results):
    recs = []
    for seed in (1, 2, 3):
        recs.append(_rec("ReCo-MIL (defaults)", seed, [0.80, 0.85, 0.90]))
        recs.append(_rec("no rarity gate", seed, [0.80 + 0.001 * seed, 0.85 - 0.001 * seed, 0.90]))
        recs.append(_rec("no orthogonal term", seed, [0.60, 0.65, 0.70 + 0.01 * seed]))
    text = "\n".join(results.accuracy_section(recs))
    assert "| ReCo-MIL (defaults) | 0.850 +- 0.041 |" in text
    assert "the rarity gate does not measurably help here" in text
    assert "the orthogonal term helps" in text


def test_verdicts_for_replacements(results):
    assert results.verdict("ABMIL baseline", -0.05, 0.01) == "ReCo-MIL beats the ABMIL baseline"
    assert results.verdict("graph reducer", 0.05, 0.01) == "the graph reducer beats the MLP reducer (default)"
    assert "do not differ measurably" in results.verdict("original early stopping", -0.01, 0.01)


def test_coverage_lists_what_the_full_specification_still_needs(results):
    recs = [_rec(row, s, [0.8]) | {"dataset": "musk1"} for row in results.ROWS for s in (1, 2, 3)
            if row != "high scale only"]
    recs = [r for r in recs if not (r["row"] == "graph reducer" and r["seed"] == 3)]
    gaps = results.coverage(recs)
    assert "musk1: graph reducer (seeds 3)" in gaps
    assert "elephant: everything" in gaps and not any(g.startswith("musk1") and "high scale" in g for g in gaps)


def test_glance_table_marks_clear_differences_and_gaps(results):
    verdicts = [("musk1", "no rarity gate", -0.05, 0.01), ("musk1", "graph reducer", 0.01, 0.02),
                ("demo", "high scale only", -0.002, 0.004)]
    text = "\n".join(results.glance(verdicts, ["demo", "musk1"]))
    assert "| row | demo | musk1 |" in text
    assert "| no rarity gate | not run | **-0.050 +- 0.010** |" in text
    assert "| graph reducer | not run | +0.010 +- 0.020 |" in text
    assert "| high scale only | -0.002 +- 0.004 | n/a |" in text
    assert results.glance([], ["demo"]) == []


def test_near_chance_warns_only_when_defaults_are_indistinguishable_from_chance(results):
    assert "not measurably better than chance" in results.near_chance("rare", [0.45, 0.55, 0.50, 0.52])
    assert results.near_chance("musk1", [0.90, 0.95, 0.92, 0.97]) is None
    assert results.near_chance("one", [0.5]) is None
    recs = [_rec("ReCo-MIL (defaults)", s, [0.40, 0.60, 0.50]) for s in (1, 2, 3)]
    assert "toy: ReCo-MIL (defaults) is not measurably better than chance" in "\n".join(
        results.accuracy_section(recs))


def test_coverage_reports_the_ablation_grid_apart_from_protocol_checks(results):
    recs = [_rec(row, s, [0.8]) | {"dataset": ds} for ds in ("demo", "demo-rare", "musk1", "elephant")
            for row in results.GRID_ROWS for s in (1, 2, 3)
            if not (row in results.DUAL_ONLY and ds in results.REAL_SETS)]
    assert results.coverage(recs, among=results.GRID_ROWS) == []
    assert "demo: original early stopping (seeds 1, 2, 3); validation split 0.2 (seeds 1, 2, 3); " \
        "last epoch, no selection (seeds 1, 2, 3)" in results.coverage(recs, among=results.PROTOCOL_ROWS)
    text = "\n".join(results.accuracy_section(recs))
    assert "Baseline and ablations (" in text and "): complete on every data set." in text
    assert "Training-protocol checks (" in text and "not run yet:" in text


def test_step_change_pairs_the_defaults_row_of_the_two_steps_on_shared_folds(results):
    now = [_rec("ReCo-MIL (defaults)", s, [0.9, 0.8]) | {"dataset": "musk1"} for s in (1, 2)]
    was = [_rec("ReCo-MIL (defaults)", s, [0.8, 0.8]) | {"dataset": "musk1"} for s in (1, 2, 3)]
    was.append(_rec("ReCo-MIL (defaults)", 1, [0.5]) | {"dataset": "elephant"})  # not re-run: no row
    was.append(_rec("no rarity gate", 1, [0.5]) | {"dataset": "musk1"})
    text = "\n".join(results.step_change_section(now, was, "Step X."))
    d = np.array([0.1, 0.0, 0.1, 0.0])
    assert f"| musk1 | 0.850 +- 0.050 | 0.000 | 0.800 +- 0.000 | 0.000 | +{d.mean():.3f} +- " \
        f"{d.std(ddof=1) / 2:.3f} (2/4) | 20.0 / 20.0 |" in text
    assert "elephant" not in text and "Step X." in text
    was.append(_rec("ReCo-MIL (defaults)", 3, [0.1, 0.1]) | {"dataset": "musk1"})  # a seed not re-run: left out
    assert "| musk1 | 0.850 +- 0.050 | 0.000 | 0.800 +- 0.000 |" in "\n".join(results.step_change_section(now, was, ""))
    assert results.step_change_section([], was, "Step X.") == []


def test_the_earlier_section_keeps_only_rows_the_current_step_has_not_run(results):
    was = [_rec(row, 1, [0.8]) | {"dataset": ds} for ds in ("musk1", "demo")
           for row in ("ReCo-MIL (defaults)", "no rarity gate")]
    now = [_rec(row, 1, [0.9]) | {"dataset": "musk1"} for row in ("ReCo-MIL (defaults)", "no rarity gate")]
    now.append(_rec("ReCo-MIL (defaults)", 1, [0.9]) | {"dataset": "demo"})
    kept = {(r["dataset"], r["row"]) for r in results.earlier_only(was, now)}
    assert kept == {("demo", "ReCo-MIL (defaults)"), ("demo", "no rarity gate")}
    text = "\n".join(results.accuracy_section(results.earlier_only(was, now), earlier="Earlier step."))
    assert "## Accuracy, earlier training step" in text and "### demo (1-fold CV, seeds [1], earlier step)" in text
    assert "musk1" not in text and "### Coverage" not in text
