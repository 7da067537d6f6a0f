import pytest

from recomil.training.schedule import lr_factor, temperature


def test_warmup_then_cosine_to_zero():
    assert lr_factor(1, 12, 50) == pytest.approx(1 / 12)
    assert lr_factor(12, 12, 50) == pytest.approx(1.0)
    assert lr_factor(31, 12, 50) == pytest.approx(0.5)
    assert lr_factor(50, 12, 50) == pytest.approx(0.0, abs=1e-12)
    factors = [lr_factor(e, 12, 50) for e in range(12, 51)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_temperature_schedule():
    assert temperature(0, 1.2, 0.7, 35) == pytest.approx(1.2)
    assert temperature(35, 1.2, 0.7, 35) == pytest.approx(0.7)
    assert temperature(50, 1.2, 0.7, 35) == pytest.approx(0.7)
    assert temperature(7, 1.2, 0.7, 35) == pytest.approx(1.1)
