"""The CPU dropout (recomil/model/dropout.py): nn.Dropout's distribution from a cheaper mask."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import recomil
from recomil.model.dropout import Dropout, dropout_mask, keep_threshold, random_bits16


def test_the_16_bit_draws_are_uniform_over_all_values():
    torch.manual_seed(0)
    bits = random_bits16(65536 * 64, torch.device("cpu")).to(torch.int64) + 32768
    counts = torch.bincount(bits, minlength=65536).float()
    assert counts.numel() == 65536 and counts.min() > 0
    assert abs(counts.mean().item() - 64) < 1e-9
    # chi-square with 65535 degrees of freedom: mean 65535, sd ~362
    chi2 = (((counts - 64) ** 2) / 64).sum().item()
    assert abs(chi2 - 65535) < 6 * 362
    for bit in range(16):  # every bit fair
        assert abs(((bits >> bit) & 1).float().mean().item() - 0.5) < 0.002


@pytest.mark.parametrize("p", [0.25, 0.1, 0.5, 0.7])
def test_keep_rate_and_scale_are_those_of_nn_dropout(p):
    torch.manual_seed(1)
    n = 2_000_000
    m = dropout_mask(torch.Size([n]), p, torch.float32, torch.device("cpu"))
    q = keep_threshold(p) / 65536
    assert abs(q - (1 - p)) <= 2 ** -17
    kept = m != 0
    values = m[kept].unique()
    assert values.numel() == 1 and values.item() == pytest.approx(1 / q, rel=1e-6)
    rate = kept.float().mean().item()
    sd = (q * (1 - q) / n) ** 0.5
    assert abs(rate - (1 - p)) < 6 * sd + 2 ** -16
    assert m.mean().item() == pytest.approx(1.0, abs=6 * sd / q)  # unbiased: E[mask] = 1


def test_dropout_is_seeded_by_torch_and_differs_between_calls():
    d = Dropout(0.25).train()
    x = torch.ones(64, 32)
    torch.manual_seed(3)
    a, b = d(x), d(x)
    torch.manual_seed(3)
    assert torch.equal(d(x), a) and not torch.equal(a, b)


def test_eval_mode_and_zero_rate_are_the_identity_and_the_gradient_is_the_mask():
    x = torch.randn(10, 7, requires_grad=True)
    assert Dropout(0.25).eval()(x) is x and Dropout(0.0).train()(x) is x
    d = Dropout(0.5).train()
    y = d(x)
    y.sum().backward()
    mask = y.detach() / x.detach()
    assert torch.allclose(x.grad, mask) and set(mask.unique().tolist()) <= {0.0, 2.0}
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_the_models_use_the_cheap_dropout_everywhere():
    for name in ("recomil", "abmil"):
        model = recomil.build_model({"model": name, "feat_dim_high": 16, "feat_dim_low": 16,
                                     "num_protos_high": 8, "num_protos_low": 8})
        kinds = {type(m) for m in model.modules()}
        assert Dropout in kinds and nn.Dropout not in kinds
        assert all(m.p == 0.25 for m in model.modules() if isinstance(m, Dropout))
