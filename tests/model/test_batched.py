"""Padded bags with masks (issue #33): B bags in one forward pass give, per bag, the logits, attention,
gate, instance logits and gradients of B one-bag passes, for every option combination that
``test_reference.py`` covers, in training mode (rarity gate on) and at evaluation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recomil import build_model
from recomil.model.rarity import rarity_gate
from recomil.training.instance_loss import instance_loss, instance_losses
from recomil.training.padding import bucket_steps, pad_bags
from recomil.training.trainer import bag_cross_entropy
from tests.model.test_reference import BASE, CASES

ATOL = 2e-5
LENGTHS = {"high": (37, 5, 121), "low": (13, 2, 9)}  # the gate's floor(N p) differs per bag
EXTRA = {
    "instance_tokens": {"lambda_inst": 1.0, "outlier_top_p_high": 0.1, "outlier_alpha_high": 2.0},
    "instance_stream_input": {"lambda_inst": 1.0, "instance_stream": True, "inst_on": "input", "stream_weight": 0.5},
    # the defaults' top patch alone: in training the attention head is skipped (no attention, no gate)
    "instance_stream_input_top_only": {"lambda_inst": 1.0, "instance_stream": True, "inst_on": "input",
                                       "stream_weight": 1.0},
    "instance_stream_gate_embed": {"lambda_inst": 1.0, "instance_stream": True, "gate_in_embed_high": True,
                                   "outlier_top_p_high": 0.2, "outlier_alpha_high": 1.0},
    "abmil": {"model": "abmil"},
    "abmil_single": {"model": "abmil", "feat_dim_low": None},
}


def _model_and_bags(opts: dict, seed: int = 0):
    params = {**BASE, "lambda_inst": 0.0, **opts}
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 100)
    scales = ["high"] + (["low"] if params["feat_dim_low"] is not None else [])
    dims = {"high": params["feat_dim_high"], "low": params["feat_dim_low"]}
    k = {"high": params["num_protos_high"], "low": params["num_protos_low"]}
    if params.get("model") == "abmil":
        model = build_model(params)
    else:
        model = build_model(params, {s: torch.randn(k[s], dims[s], generator=g) * 1.5 for s in scales},
                            counts={s: torch.randint(0, 400, (k[s],), generator=g) for s in scales})
    bags = [{s: torch.randn(LENGTHS[s][b], dims[s], generator=g) * 1.5 for s in scales} for b in range(3)]
    return model, bags, scales


def _losses(out: dict, y: torch.Tensor, scales: list[str], masks: dict) -> torch.Tensor:
    """A loss per bag that reaches every output: cross-entropy, attention, instance logits."""
    ce = bag_cross_entropy(out["logits"], y, torch.tensor([0.7, 1.9]), 0.03)
    extra = 0.0
    for s in scales:
        if f"attention_{s}" in out:
            att = out[f"attention_{s}"]
            extra = extra + (att * att).sum(-1)
        if f"instance_logits_{s}" in out:
            il = out[f"instance_logits_{s}"]
            if il.ndim == 1:
                extra = extra + instance_loss(il, bool(y == 1), 0.1)
            else:
                extra = extra + instance_losses(il, y == 1, 0.1, masks.get(s))
    return ce + extra


@pytest.mark.parametrize("name", [*CASES, *EXTRA])
@pytest.mark.parametrize("train", [True, False])
def test_padded_bags_equal_one_bag_passes(name, train):
    opts = {**CASES, **EXTRA}[name]
    model, bags, scales = _model_and_bags(opts)
    model.train(train)
    y = torch.tensor([1, 0, 1])
    singles, grads = [], {}
    model.zero_grad()
    for b, bag in enumerate(bags):
        out = model(bag["high"], bag.get("low"))
        singles.append(out)
        if train:
            (_losses(out, y[b:b + 1], scales, {}).sum() / len(bags)).backward()
    if train:
        grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
        model.zero_grad()
    x, masks, real, slots = pad_bags(bags)
    assert real == sum(sum(LENGTHS[s]) for s in scales)
    assert slots == sum(3 * max(LENGTHS[s]) for s in scales)
    for s in scales:  # what padding holds must not matter: fill it with values that would win any max
        x[s][~masks[s]] = 9.0
    out = model(x["high"], x.get("low"), mask_high=masks["high"], mask_low=masks.get("low"))
    assert out["logits"].shape == (3, 2)
    for b, one in enumerate(singles):
        torch.testing.assert_close(out["logits"][b], one["logits"][0], atol=ATOL, rtol=1e-5)
        for s in scales:
            n = LENGTHS[s][b]
            assert (f"attention_{s}" in out) == (f"attention_{s}" in one)
            if f"attention_{s}" not in one:  # training's shortcut: the logits and instance logits alone
                torch.testing.assert_close(out[f"instance_logits_{s}"][b, :n], one[f"instance_logits_{s}"],
                                           atol=ATOL, rtol=1e-5)
                continue
            torch.testing.assert_close(out[f"attention_{s}"][b, :n], one[f"attention_{s}"], atol=ATOL, rtol=1e-5)
            assert float(out[f"attention_{s}"][b, n:].detach().abs().sum()) == 0.0  # padding gets no attention
            assert torch.equal(out[f"gate_{s}"][b, :n], one[f"gate_{s}"])
            assert not out[f"gate_{s}"][b, n:].any()
            for key in ("instance_logits", "assignment"):
                if f"{key}_{s}" in one:
                    torch.testing.assert_close(out[f"{key}_{s}"][b, :n], one[f"{key}_{s}"], atol=ATOL, rtol=1e-5)
            if f"proto_attention_{s}" in one:
                torch.testing.assert_close(out[f"proto_attention_{s}"][b], one[f"proto_attention_{s}"],
                                           atol=ATOL, rtol=1e-5)
        if "fusion_weight" in one:
            w = out["fusion_weight"]
            torch.testing.assert_close(w[b] if w.ndim else w, one["fusion_weight"], atol=ATOL, rtol=1e-5)
    if train:
        (_losses(out, y, scales, masks).sum() / len(bags)).backward()
        batched = {n: q.grad for n, q in model.named_parameters() if q.grad is not None}
        assert batched.keys() == grads.keys()
        for n, g in grads.items():
            torch.testing.assert_close(batched[n], g, atol=1e-5, rtol=1e-4, msg=f"gradient of {n}")


def test_the_gate_counts_each_bags_own_patches_and_never_boosts_padding():
    torch.manual_seed(0)
    bags = [torch.randn(n) for n in (10, 3, 41)]
    padded = torch.nn.utils.rnn.pad_sequence(bags, batch_first=True, padding_value=-100.0)  # lowest: tempting
    mask = torch.arange(41)[None, :] < torch.tensor([10, 3, 41])[:, None]
    got = rarity_gate(padded, 0.1, 0.5, mask)
    for b, bag in enumerate(bags):
        assert torch.equal(got[b, :len(bag)], rarity_gate(bag, 0.1, 0.5))
        assert (got[b, len(bag):] == 1).all()
    assert [int((got[b] > 1).sum()) for b in range(3)] == [1, 1, 4]  # max(1, floor(N 0.1)) of each bag


def test_batched_cross_entropy_is_each_bags_own_weighted_mean():
    logits, y, w = torch.randn(4, 3), torch.tensor([0, 2, 1, 2]), torch.tensor([0.5, 2.0, 3.0])
    got = bag_cross_entropy(logits, y, w, 0.1)
    ref = torch.stack([F.cross_entropy(logits[i:i + 1], y[i:i + 1], weight=w, label_smoothing=0.1) for i in range(4)])
    torch.testing.assert_close(got, ref)


def test_a_mask_that_leaves_a_bag_empty_or_has_the_wrong_shape_is_refused():
    model, bags, _ = _model_and_bags({"feat_dim_low": None})
    x, masks, _, _ = pad_bags(bags)
    bad = masks["high"].clone()
    bad[1] = False
    with pytest.raises(ValueError, match="leaves a bag without any patch"):
        model(x["high"], mask_high=bad)
    with pytest.raises(ValueError, match=r"mask_high must be a bool \[B, N\]"):
        model(x["high"], mask_high=masks["high"][:, :5])
    with pytest.raises(ValueError, match="mask_high is for padded bags"):
        model(bags[0]["high"], mask_high=masks["high"][0])


def test_length_buckets_keep_every_bag_once_and_cut_the_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1000, 16000, size=270)
    order = rng.permutation(270)
    plain = bucket_steps(order, lengths, 8, 1, np.random.default_rng(1))
    buckets = bucket_steps(order, lengths, 8, 8, np.random.default_rng(1))
    for steps in (plain, buckets):
        assert sorted(np.concatenate(steps).tolist()) == list(range(270))
        assert len(steps) == 34 and sorted(len(s) for s in steps)[1:] == [8] * 33

    def pad_share(steps):
        slots = sum(len(s) * lengths[s].max() for s in steps)
        return 1 - lengths.sum() / slots

    assert [s.tolist() for s in plain] == [order[i:i + 8].tolist() for i in range(0, 270, 8)]
    assert pad_share(buckets) < 0.1 < pad_share(plain)
    assert bucket_steps(order, lengths, 1, 8, rng)[5].tolist() == [order[5]]


def test_a_padded_training_step_equals_accumulated_one_bag_steps(project, tiny_params):
    """Trained end to end, bags_per_step 3 with bag_batching padded and accumulate (same steps:
    length_buckets 1) end with the same weights within float rounding; the log records pad_share.
    The instance heads start from their random initialisation (``inst_init: none``): a fitted head that
    ranks unseen slides at chance starts flat (every patch's logit equal), and float rounding then decides
    which of the tied patches is a bag's top one, in each mode differently."""
    from recomil.pipeline import paths, train_stage
    from tests.conftest import prepare_demo

    p = dataclasses.replace(tiny_params, epochs=2, warmup_epochs=1, freeze_protos_epochs=1, drop=0.0,
                            bags_per_step=3, length_buckets=1, save_policy="last", inst_init="none")
    prepare_demo(p)
    weights = {}
    for mode in ("accumulate", "padded"):
        train_stage.run_train(dataclasses.replace(p, bag_batching=mode), progress=False)
        weights[mode] = torch.load(paths.MODELS / "fold_0" / "best.pt", weights_only=True)["state_dict"]
        log = __import__("pandas").read_csv(paths.TRAIN_LOG / "fold_0.csv")
        assert (log["pad_share"].notna() if mode == "padded" else log["pad_share"].isna()).all()
    assert weights["padded"].keys() == weights["accumulate"].keys()
    for k, v in weights["accumulate"].items():
        torch.testing.assert_close(weights["padded"][k], v, atol=2e-4, rtol=1e-3, msg=k)


def test_features_held_on_the_device_train_exactly_as_streamed_ones(project, tiny_params, capfd):
    """device_features: on (here on the CPU) serves the same float32 bags as the store: the trained
    weights are bitwise those of a streamed run; a budget too small streams and says so."""
    from recomil.data.store import FeatureStore
    from recomil.pipeline import paths, train_stage
    from recomil.training.bags import BagSet
    from tests.conftest import prepare_demo

    p = dataclasses.replace(tiny_params, epochs=2, warmup_epochs=1, freeze_protos_epochs=1)
    prepare_demo(p)
    weights = {}
    for mode in ("off", "on"):
        train_stage.run_train(dataclasses.replace(p, device_features=mode), progress=False)
        weights[mode] = torch.load(paths.MODELS / "fold_0" / "best.pt", weights_only=True)["state_dict"]
    assert "held on cpu for the fold (device_features: on)" in capfd.readouterr().err
    assert all(torch.equal(weights["on"][k], v) for k, v in weights["off"].items())
    store = FeatureStore(paths.STORE)
    ids = list(store.manifest["slide_id"][:3])
    bags = BagSet(store, ids)
    assert not bags.keep_on("cpu", bags.nbytes() - 1) and not bags.resident
    streamed = [bags.bag(j) for j in range(3)]
    assert bags.keep_on("cpu", bags.nbytes()) and bags.resident
    for one, kept in zip(streamed, bags.prefetch([0, 1, 2])):
        assert all(kept[s].dtype == torch.float32 and torch.equal(kept[s], one[s]) for s in one)


def test_validation_in_padded_batches_gives_the_one_bag_probabilities():
    from recomil.inference import predict_bags, predict_probs

    model, bags, _ = _model_and_bags({"fusion": "confidence", "lambda_inst": 1.0, "instance_stream": True})
    bags = bags + [{s: t[: max(1, t.shape[0] // 3)] for s, t in b.items()} for b in bags]
    one, _ = predict_bags(model, bags)
    assert np.array_equal(predict_probs(model, bags), one)  # one at a time: the same computation
    for batch in (2, 4, 6):
        np.testing.assert_allclose(predict_probs(model, bags, batch=batch), one, atol=1e-6)
