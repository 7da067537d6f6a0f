"""The model's mathematics: invariances, the gate, the regulariser, reducers, freezing, edge cases."""

import math

import numpy as np
import pytest
import torch

from recomil import build_model
from recomil.model.orthogonal import orthogonal_loss
from recomil.model.rarity import rare_prototype_weights, rarity_gate
from recomil.model.reducers import GraphReducer, MLPReducer, graph_adjacency
from recomil.model.similarity import similarity

BASE = {"feat_dim_high": 12, "feat_dim_low": 10, "num_protos_high": 16, "num_protos_low": 8,
        "embed_dim_high": 24, "embed_dim_low": 16}

OPTIONS = [
    {},
    {"similarity_method_high": "cosine", "similarity_method_low": "dot"},
    {"route_topk_high": 0, "hard_high": True, "hard_low": True},
    {"use_graph_reducer_high": True, "use_graph_reducer_low": True, "graph_thresh_high": 0.0},
    {"fusion": "confidence"},
    {"fusion": "fixed", "alpha_init": -1.0},
    {"feat_dim_low": None},
    {"num_classes": 4, "instance_stream": False},
    {"gate_at_eval": True, "outlier_top_p_high": 0.2, "outlier_alpha_high": 1.0},
    {"gate_at_eval": True, "gate_in_embed_high": True, "outlier_top_p_high": 0.2},
    {"model": "abmil"},
    {"recalibrate": False},
    {"use_low_scale": False},
]


def _bag(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_logits_do_not_depend_on_patch_order(opts):
    torch.manual_seed(0)
    params = {**BASE, **opts}
    counts = {"high": torch.randint(0, 100, (16,)), "low": torch.randint(0, 100, (8,))}
    single = params.get("feat_dim_low", 10) is None or params.get("use_low_scale") is False
    if single:
        counts.pop("low")
    model = build_model(params, counts=None if params.get("model") == "abmil" else counts).eval()
    xh, xl = _bag(57, 12, 1), _bag(15, 10, 2)
    if single:
        xl = None
    out = model(xh, xl)
    ph, pl = torch.randperm(57), torch.randperm(15)
    out2 = model(xh[ph], None if xl is None else xl[pl])
    assert out["logits"].shape == (1, params.get("num_classes", 2))
    torch.testing.assert_close(out["logits"], out2["logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["attention_high"][ph], out2["attention_high"], rtol=1e-4, atol=1e-6)
    assert out["attention_high"].shape == (57,)


def test_gate_marks_exactly_the_m_least_typical_instances():
    best = torch.randn(200, generator=torch.Generator().manual_seed(3))
    for p in (0.001, 0.015, 0.1, 0.5):
        g = rarity_gate(best, p, 0.2)
        m = max(1, math.floor(200 * p))
        expected = torch.zeros(200, dtype=torch.bool)
        expected[torch.argsort(best)[:m]] = True
        assert torch.equal(g > 1, expected)
        assert torch.allclose(g[expected], torch.tensor(1.2))
        assert torch.all(g[~expected] == 1)


@pytest.mark.parametrize("p,alpha", [(0.0, 0.2), (-1, 0.2), (0.1, 0.0), (0.1, -0.5)])
def test_gate_is_identity_when_off(p, alpha):
    assert torch.all(rarity_gate(torch.randn(50), p, alpha) == 1)


def test_gate_boosts_one_of_two_and_includes_ties():
    assert int((rarity_gate(torch.tensor([0.3, 0.9]), 0.015, 0.2) > 1).sum()) == 1
    tied = torch.tensor([0.1, 0.1, 0.5, 0.7])
    assert int((rarity_gate(tied, 0.25, 0.2) > 1).sum()) == 2


def test_branch_gate_follows_raw_similarity_to_prototypes():
    torch.manual_seed(0)
    protos = torch.randn(8, 6)
    model = build_model({"feat_dim_high": 6, "num_protos_high": 8, "embed_dim_high": 8,
                         "outlier_top_p_high": 0.1, "gate_at_eval": True}, {"high": protos}).eval()
    x = torch.randn(40, 6)
    out = model(x)
    best = similarity(x, protos, "l2").amax(1)
    expected = torch.zeros(40, dtype=torch.bool)
    expected[torch.argsort(best)[:4]] = True
    assert torch.equal(out["gate_high"], expected)
    model_eval = build_model({"feat_dim_high": 6, "num_protos_high": 8, "embed_dim_high": 8,
                              "outlier_top_p_high": 0.1}, {"high": protos}).eval()
    assert not model_eval(x)["gate_high"].any()  # training-only by default


def test_orthogonal_loss_zero_for_orthonormal_and_matches_direct_sum():
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    assert orthogonal_loss(q[:10]).item() == pytest.approx(0.0, abs=1e-10)
    assert orthogonal_loss(3.0 * q[:10]).item() == pytest.approx(0.0, abs=1e-10)
    p = torch.randn(7, 5)
    pn = p / p.norm(dim=1, keepdim=True)
    direct = sum((pn[i] @ pn[j]) ** 2 for i in range(7) for j in range(7) if i != j) / (7 * 6)
    assert orthogonal_loss(p).item() == pytest.approx(direct.item(), rel=1e-5)


def test_graph_adjacency_is_symmetric_normalised():
    c = torch.randn(12, 9)
    a = graph_adjacency(c, 0.15)
    cn = torch.nn.functional.normalize(c, dim=1)
    raw = (cn @ cn.T).clamp(0, 1)
    raw[raw < 0.15] = 0
    raw = raw + torch.eye(12)
    d = raw.sum(1)
    torch.testing.assert_close(a, raw / torch.sqrt(d[:, None] * d[None, :]))
    torch.testing.assert_close(a, a.T)


@pytest.mark.parametrize("graph", [False, True])
def test_prototypes_halve_and_rare_weights_follow(graph):
    torch.manual_seed(0)
    sizes, w = [], rare_prototype_weights(torch.randint(1, 1000, (128,)), 0.3)
    assert w.shape == (128,) and w.mean().item() == pytest.approx(1.0, rel=1e-4)
    c = torch.randn(128, 32)
    for k in (128, 64, 32):
        red = GraphReducer(k, 32, 0.15, 0.0) if graph else MLPReducer(k, 0.0)
        c, w = red(c), red.reduce_weights(w)
        sizes.append(c.shape[0])
        assert w.shape == (c.shape[0],)
    assert sizes == [64, 32, 16]
    model = build_model({"feat_dim_high": 8, "use_graph_reducer_high": graph}).eval()
    assert model(torch.randn(30, 8))["proto_attention_high"].shape == (16,)


def test_rare_weights_off():
    assert rare_prototype_weights(None, 0.3) is None
    assert rare_prototype_weights(torch.ones(4), 0.0) is None


def test_raw_prototypes_get_gradient_only_when_released():
    torch.manual_seed(0)
    model = build_model(BASE)
    model.train()
    xh, xl = torch.randn(30, 12), torch.randn(9, 10)
    for frozen in (True, False):
        model.zero_grad(set_to_none=True)
        model.set_prototypes_frozen(frozen)
        out = model(xh, xl)
        loss = out["logits"].sum() + sum(model.ortho_losses().values())
        loss.backward()
        for branch in model.branches.values():
            if frozen:
                assert branch.protos.grad is None
            else:
                assert branch.protos.grad is not None and branch.protos.grad.abs().sum() > 0


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_bags(n):
    model = build_model({**BASE, "route_topk_high": 5}).train()
    out = model(torch.randn(n, 12), torch.randn(1, 10))
    assert torch.isfinite(out["logits"]).all()
    out["logits"].sum().backward()


def test_bag_of_100k_patches():
    model = build_model({"feat_dim_high": 32, "feat_dim_low": 32, "embed_dim_high": 64, "embed_dim_low": 64}).eval()
    with torch.no_grad():
        out = model(torch.randn(100_000, 32), torch.randn(25_000, 32))
    assert out["attention_high"].shape == (100_000,)
    assert torch.isfinite(out["logits"]).all()
    assert out["attention_high"].sum() <= 1.0 + 1e-4


def test_prototype_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="num_protos_high"):
        build_model({"feat_dim_high": 12}, {"high": torch.randn(64, 12)})
    with pytest.raises(ValueError, match="num_protos_high"):
        build_model({"feat_dim_high": 12}, {"high": torch.randn(128, 11)})


def test_fusion_modes():
    torch.manual_seed(0)
    m = build_model({**BASE, "fusion": "fixed", "alpha_init": 0.0}).eval()
    out = m(torch.randn(20, 12), torch.randn(5, 10))
    torch.testing.assert_close(out["logits"], 0.5 * out["logits_high"] + 0.5 * out["logits_low"])
    assert not any(n.endswith("fusion.a") for n, _ in m.named_parameters())
    learned = build_model({**BASE, "fusion": "learned"})
    assert any(n.endswith("fusion.a") for n, _ in learned.named_parameters())


def test_similarity_methods():
    x, c = torch.randn(5, 3), torch.randn(4, 3)
    torch.testing.assert_close(similarity(x, c, "l2"), -torch.cdist(x, c), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(similarity(x, c, "dot"), x @ c.T)
    cos = torch.nn.functional.cosine_similarity(x[:, None], c[None], dim=-1)
    torch.testing.assert_close(similarity(x, c, "cosine"), cos, rtol=1e-5, atol=1e-6)


def test_without_recalibration_instances_ignore_the_prototype_context():
    """``recalibrate: false`` leaves ``A C`` out: a stage's output no longer depends on the prototypes."""
    from recomil.model.branch import EnhancerStage

    torch.manual_seed(0)
    p, c1, c2 = torch.randn(9, 8), torch.randn(4, 8), torch.randn(4, 8)
    kw = {"w": None, "method": "l2", "topk": 2, "temp": torch.tensor(1.0), "hard": False}
    off, on = EnhancerStage(8, 0.0, recalibrate=False).eval(), EnhancerStage(8, 0.0).eval()
    on.load_state_dict(off.state_dict())
    torch.testing.assert_close(off(p, c1, **kw), off(p, c2, **kw))
    assert not torch.allclose(on(p, c1, **kw), on(p, c2, **kw))


def test_high_only_model_on_dual_scale_params():
    model = build_model({**BASE, "use_low_scale": False})
    assert model.scales == ["high"] and model.fusion is None
    with pytest.raises(ValueError, match="single-scale"):
        model(_bag(5, 12, 0), _bag(3, 10, 0))


@pytest.mark.parametrize("alpha_init", [0.5, -0.7])
def test_learned_fusion_starts_at_sigmoid_of_alpha_init_and_trains(alpha_init):
    torch.manual_seed(0)
    m = build_model({**BASE, "fusion": "learned", "alpha_init": alpha_init}).eval()
    out = m(torch.randn(20, 12), torch.randn(5, 10))
    w = 1 / (1 + math.exp(-alpha_init))
    assert out["fusion_weight"].item() == pytest.approx(w, abs=1e-6)
    torch.testing.assert_close(out["logits"], w * out["logits_high"] + (1 - w) * out["logits_low"])
    out["logits"][0, 1].backward()
    assert m.fusion.a.grad is not None and m.fusion.a.grad.abs().item() > 0


def test_fixed_fusion_uses_sigmoid_of_alpha_init_without_gradient():
    torch.manual_seed(0)
    m = build_model({**BASE, "fusion": "fixed", "alpha_init": 1.5}).eval()
    out = m(torch.randn(20, 12), torch.randn(5, 10))
    w = 1 / (1 + math.exp(-1.5))
    torch.testing.assert_close(out["logits"], w * out["logits_high"] + (1 - w) * out["logits_low"])
    assert out["fusion_weight"].item() == pytest.approx(w, abs=1e-6)


def test_similarity_scale_is_fixed_at_one_and_never_trains():
    m = build_model(BASE)
    names = {n for n, _ in m.named_parameters()}
    assert not any("sim_scale" in n for n in names)
    assert all(b.sim_scale.item() == 1.0 for b in m.branches.values())


def test_ortho_on_projected_trains_the_projection_and_the_prototypes():
    """METHOD.md "Decide": unlike the original (no gradient), ``ortho_on_projected`` regularises
    the projected prototypes C with gradient, reaching the projection and the raw prototypes."""
    torch.manual_seed(0)
    on = build_model({**BASE, "ortho_on_projected": True})
    loss = on.ortho_losses()["high"]
    c = on.branches["high"].proj_c(on.branches["high"].protos)
    assert loss.item() == pytest.approx(orthogonal_loss(c).item(), rel=1e-6)
    loss.backward()
    assert on.branches["high"].proj_c[0].weight.grad.abs().sum() > 0
    assert on.branches["high"].protos.grad.abs().sum() > 0
    off = build_model(BASE)
    off.load_state_dict(on.state_dict())
    off.ortho_losses()["high"].backward()
    assert off.branches["high"].proj_c[0].weight.grad is None
    assert off.branches["high"].protos.grad.abs().sum() > 0


def test_routing_runs_in_float32_under_bf16_autocast():
    """METHOD.md §1.2.2: the assignment A is computed in float32 even under autocast, so the
    routing of a bf16 forward equals the float32 routing of the same (bf16-rounded) inputs."""
    from recomil.model.branch import EnhancerStage

    torch.manual_seed(0)
    stage = EnhancerStage(24, 0.0).eval()
    p = torch.randn(50, 24) * 3
    c = torch.randn(16, 24) * 3
    seen = []
    orig = torch.softmax

    def spy(x, *a, **k):
        seen.append(x.dtype)
        return orig(x, *a, **k)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.softmax = spy
        try:
            stage(p, c, None, method="l2", topk=3, temp=torch.tensor(0.7), hard=False)
        finally:
            torch.softmax = orig
    assert seen and all(dt == torch.float32 for dt in seen)


def test_route_topk_keeps_exactly_k_prototypes_even_with_ties():
    from recomil.model.branch import drop_surplus_ties

    s = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.1], [0.2, 0.8, 0.8, 0.3, 0.8]])
    k = 2
    kth = s.topk(k, dim=1).values[:, -1:]
    kept = drop_surplus_ties(s.masked_fill(s < kth, float("-inf")), kth, k)
    assert (kept > float("-inf")).sum(1).tolist() == [2, 2]
    assert torch.isfinite(kept[0]).tolist() == [True, True, False, False, False]
    assert torch.isfinite(kept[1]).tolist() == [False, True, True, False, False]


def test_tied_prototypes_do_not_widen_the_routing():
    """Two different prototypes with exactly the same similarity to a patch: with route_topk 1 the
    patch still routes to one of them (the lower index), not to their average."""
    from recomil.model.branch import EnhancerStage

    torch.manual_seed(0)
    stage = EnhancerStage(8, 0.0).eval()
    c = torch.randn(6, 8) * 0.1
    p = torch.zeros(1, 8)
    p[0, 0] = 1.0
    c[2, :2] = torch.tensor([1.0, 1.0])
    c[4, :2] = torch.tensor([1.0, -1.0])  # same dot product with p as prototype 2, another vector
    out = stage(p, c, None, method="dot", topk=1, temp=torch.tensor(1.0), hard=False)
    ref = stage.norm(p + c[2:3])
    torch.testing.assert_close(out, ref + stage.mlp(ref))


def test_rare_weights_switch_follows_a_loaded_state_dict():
    """The host-side copy of ``rare_on`` (no device sync per step) follows load_state_dict, so a
    checkpoint trained with rare weights predicts with them in a model built without counts."""
    import recomil

    cfg = {"feat_dim_high": 8, "num_protos_high": 8, "use_low_scale": False}
    torch.manual_seed(0)
    with_w = recomil.build_model(cfg, counts={"high": torch.arange(1, 9).float()}).eval()
    without = recomil.build_model(cfg).eval()
    x = torch.randn(30, 8)
    assert with_w.branches["high"]._rare_on and not without.branches["high"]._rare_on
    without.load_state_dict(with_w.state_dict())
    assert without.branches["high"]._rare_on
    with torch.no_grad():
        assert torch.allclose(without(x)["logits"], with_w(x)["logits"])


def test_an_ensembles_prediction_is_the_mean_of_its_members():
    """predict_members: class probabilities and patch attention are the members' means; the gate
    and assignment are the first member's."""
    import recomil
    from recomil.inference import predict_bags, predict_members

    cfg = {"feat_dim_high": 8, "feat_dim_low": 8, "num_protos_high": 8, "num_protos_low": 8}
    models = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        models.append(recomil.build_model(cfg).eval())
    bags = [{"high": torch.randn(n, 8), "low": torch.randn(n // 2, 8)} for n in (20, 33)]
    probs, extras = predict_members(models, iter(bags))
    each = [predict_bags(m, bags) for m in models]
    assert np.allclose(probs, np.mean([pr for pr, _ in each], axis=0))
    for j in range(len(bags)):
        for s in ("high", "low"):
            att = np.mean([ex[j][f"attention_{s}"] for _, ex in each], axis=0)
            assert np.allclose(extras[j][f"attention_{s}"], att) and 0 < att.sum() <= 1 + 1e-6
            assert not np.allclose(att, each[0][1][j][f"attention_{s}"])
            assert np.array_equal(extras[j][f"gate_{s}"], each[0][1][j][f"gate_{s}"])
