"""Parity with an independent restatement of METHOD.md §1–§3.

``reference_logits`` below is written from METHOD.md alone, in plain tensor operations, and shares
no code with ``recomil/model/``: it reads the model's weights from its ``state_dict`` and nothing
else. For every option combination that matters it must give the model's logits, so a change to
any formula of the forward pass (similarity, top-k, temperature, hard routing, rare weights and
their reduction, reducers, gate, pooling, fusion) fails here.

Dropout is turned off by ``drop: 0``, so that the model can also be compared in training mode,
where the rarity gate is active (METHOD.md "Decide": the gate is applied in training only).
"""

from __future__ import annotations

import math

import pytest
import torch

from recomil import build_model

ATOL = 2e-5
_HARD_ST = False  # reference_logits_st: straight-through hard routing (gradient of the soft A)


# ----------------------------------------------------------------------------- the reference
def _linear(x, sd, name):
    y = x @ sd[f"{name}.weight"].T
    bias = sd.get(f"{name}.bias")
    return y if bias is None else y + bias


def _layer_norm(x, sd, name):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _leaky(x):
    return torch.where(x > 0, x, 0.01 * x)


def _sim(a, b, method):
    """METHOD.md §1.2.1, written entry by entry."""
    if method == "l2":
        return -torch.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    if method == "cosine":
        an = a / a.norm(dim=-1, keepdim=True)
        bn = b / b.norm(dim=-1, keepdim=True)
        return an @ bn.T
    return a @ b.T


def _gate(best, top_p, alpha):
    """METHOD.md §3: the m = max(1, floor(N p)) lowest best similarities get 1 + alpha."""
    n = best.shape[0]
    if top_p <= 0 or alpha <= 0:
        return torch.ones(n)
    m = max(1, math.floor(n * top_p))
    thr = torch.sort(best).values[m - 1]
    return torch.where(best <= thr, torch.tensor(1.0 + alpha), torch.tensor(1.0))


def _interp_half(w):
    """Linear interpolation of w [K] to K/2 samples at the centres of the new cells
    (``align_corners=False``, as the original's ``_reduce_weights_by_interp``)."""
    k_in = w.shape[0]
    k_out = k_in // 2
    out = []
    for j in range(k_out):
        src = (j + 0.5) * k_in / k_out - 0.5
        src = min(max(src, 0.0), k_in - 1)
        lo = math.floor(src)
        hi = min(lo + 1, k_in - 1)
        frac = src - lo
        out.append(w[lo] * (1 - frac) + w[hi] * frac)
    return torch.stack(out)


def reference_branch(sd, x, o, *, tau, gate_on, counts):
    """One branch of METHOD.md §1 with weights ``sd`` (prefix stripped) and options ``o``."""
    protos = sd["protos"]
    if gate_on and not o["gate_in_embed"]:
        best = _sim(x, protos, o["sim"]).max(dim=1).values
        x = x * _gate(best, o["top_p"], o["alpha"])[:, None]
    p = _leaky(_linear(x, sd, "proj_x.0"))
    c = _leaky(_linear(protos, sd, "proj_c.0"))
    if gate_on and o["gate_in_embed"]:
        best = _sim(p, c, o["sim"]).max(dim=1).values
        p = p * _gate(best, o["top_p"], o["alpha"])[:, None]
    w = None
    if counts is not None and o["beta"] > 0:
        w = (counts.double() + 1.0) ** (-o["beta"])
        w = (w / (w.mean() + 1e-6)).float()
    for i in range(o["stages"]):
        s = _sim(p, c, o["sim"])
        k = s.shape[1]
        if 0 < o["topk"] < k:
            keep = torch.zeros_like(s, dtype=torch.bool)
            for row in range(s.shape[0]):
                keep[row, torch.argsort(s[row], descending=True)[: o["topk"]]] = True
            s = torch.where(keep, s, torch.tensor(float("-inf")))
        a = torch.exp(s / max(1e-6, tau * 1.0) - (s / max(1e-6, tau)).max(dim=1, keepdim=True).values)
        a = a / a.sum(dim=1, keepdim=True)
        if o["hard"]:
            one_hot = torch.zeros_like(a).scatter_(1, a.argmax(dim=1, keepdim=True), 1.0)
            a = one_hot + a - a.detach() if _HARD_ST else one_hot
        if w is not None:
            a = a * w[None, :]
            a = a / (a.sum(dim=1, keepdim=True) + 1e-6)
        p = _layer_norm(p + a @ c, sd, f"stages.{i}.norm")
        h = torch.relu(_linear(p, sd, f"stages.{i}.mlp.0"))
        p = p + _linear(h, sd, f"stages.{i}.mlp.3")
        if o["graph"]:
            cn = c / c.norm(dim=-1, keepdim=True)
            adj = (cn @ cn.T).clamp(0.0, 1.0)
            adj = torch.where(adj < o["thresh"], torch.zeros_like(adj), adj) + torch.eye(k)
            d = adj.sum(1) ** -0.5
            adj = d[:, None] * adj * d[None, :]
            m = torch.relu(_linear(adj @ c, sd, f"reducers.{i}.message.0"))
            pool = sd[f"reducers.{i}.pool"]
            c = pool @ m
            if w is not None:
                q = torch.relu(pool)
                q = q / (q.sum(1, keepdim=True) + 1e-6)
                w = q @ w
        else:
            h = torch.relu(_linear(c.T, sd, f"reducers.{i}.net.0"))
            c = _linear(h, sd, f"reducers.{i}.net.3").T
            if w is not None:
                w = _interp_half(w)
    z = torch.cat([p, c], dim=0)
    z = _layer_norm(torch.relu(_linear(z, sd, "tokens.0")), sd, "tokens_norm")
    v = torch.tanh(_linear(z, sd, "pool.v.0"))
    u = torch.sigmoid(_linear(z, sd, "pool.u.0"))
    scores = _linear(v * u, sd, "pool.w")[:, 0]
    att = torch.exp(scores - scores.max())
    att = att / att.sum()
    r = att @ z
    h = torch.relu(_linear(r, sd, "head.0"))
    return _linear(h, sd, "head.3")[None, :], att[: x.shape[0]]


def reference_logits(model, params, xs, *, tau, gate_on, counts):
    """Full model of METHOD.md §1–§2 (standardisation is the identity here)."""
    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    out = {}
    for scale, x in xs.items():
        sub = {k[len(f"branches.{scale}."):]: v for k, v in sd.items() if k.startswith(f"branches.{scale}.")}
        o = {"sim": params.get(f"similarity_method_{scale}", "l2"), "topk": params.get(f"route_topk_{scale}", 3),
             "hard": params.get(f"hard_{scale}", False), "graph": params.get(f"use_graph_reducer_{scale}", False),
             "thresh": params.get(f"graph_thresh_{scale}", 0.15), "beta": params.get(f"rare_beta_{scale}", 0.3),
             "top_p": params.get(f"outlier_top_p_{scale}", 0.015), "alpha": params.get(f"outlier_alpha_{scale}", 0.2),
             "gate_in_embed": params.get(f"gate_in_embed_{scale}", False),
             "stages": params.get("num_enhancers", 3)}
        out[scale] = reference_branch(sub, x, o, tau=tau[scale], gate_on=gate_on, counts=counts.get(scale))
    if len(xs) == 1:
        return out["high"][0], out
    lh, ll = out["high"][0], out["low"][0]
    fusion = params.get("fusion", "learned")
    if fusion == "confidence":
        ch, cl = torch.softmax(lh, -1).max(), torch.softmax(ll, -1).max()
        wt = ch / (ch + cl + 1e-8)
    else:  # learned: sigmoid of the (trained) scalar; fixed: sigmoid(alpha_init)
        a = sd["fusion.a"] if fusion == "learned" else torch.tensor(float(params.get("alpha_init", 0.5)))
        wt = 1.0 / (1.0 + torch.exp(-a))
    return wt * lh + (1 - wt) * ll, out


# ----------------------------------------------------------------------------- the cases
# the method of METHOD.md: the attention head's prediction (the instance stream, a default since issue #31, off)
BASE = {"feat_dim_high": 12, "feat_dim_low": 10, "num_protos_high": 16, "num_protos_low": 8,
        "embed_dim_high": 24, "embed_dim_low": 16, "drop": 0.0, "instance_stream": False, "inst_on": "tokens",
        "inst_init": "none"}

CASES = {
    "defaults": {},
    "cosine_dot": {"similarity_method_high": "cosine", "similarity_method_low": "dot"},
    "topk_all": {"route_topk_high": 0, "route_topk_low": 0},
    "topk_1_and_5": {"route_topk_high": 1, "route_topk_low": 5},
    "hard": {"hard_high": True, "hard_low": True, "route_topk_high": 0},
    "graph_rare": {"use_graph_reducer_high": True, "use_graph_reducer_low": True, "graph_thresh_high": 0.0,
                   "graph_thresh_low": 0.3},
    "mlp_rare_strong": {"rare_beta_high": 1.0, "rare_beta_low": 0.7},
    "no_rare": {"rare_beta_high": 0.0, "rare_beta_low": 0.0},
    "gate_raw": {"outlier_top_p_high": 0.1, "outlier_alpha_high": 2.0, "outlier_top_p_low": 0.25,
                 "outlier_alpha_low": 1.5},
    "gate_embed": {"gate_in_embed_high": True, "gate_in_embed_low": True, "outlier_top_p_high": 0.1,
                   "outlier_alpha_high": 2.0, "outlier_top_p_low": 0.25, "outlier_alpha_low": 1.5},
    "confidence": {"fusion": "confidence"},
    "fixed": {"fusion": "fixed", "alpha_init": -1.3},
    "learned_init": {"fusion": "learned", "alpha_init": 0.8},
    "single_scale": {"feat_dim_low": None},
    "two_stages_cosine_graph": {"num_enhancers": 2, "similarity_method_high": "cosine",
                                "use_graph_reducer_high": True},
}


def _build(opts, seed=0):
    params = {**BASE, **opts}
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 100)
    counts = {"high": torch.randint(0, 400, (16,), generator=g), "low": torch.randint(0, 400, (8,), generator=g)}
    if params["feat_dim_low"] is None:
        counts.pop("low")
    protos = {"high": torch.randn(16, 12, generator=g) * 1.5}
    if "low" in counts:
        protos["low"] = torch.randn(8, 10, generator=g) * 1.5
    model = build_model(params, protos, counts=counts)
    xs = {"high": torch.randn(37, 12, generator=g) * 1.5}
    if "low" in counts:
        xs["low"] = torch.randn(13, 10, generator=g) * 1.5
    return model, params, counts, xs


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("tau", [1.2, 0.45])
def test_model_matches_the_reference_at_evaluation(name, tau):
    model, params, counts, xs = _build(CASES[name])
    model.eval()
    taus = {s: tau for s in xs}
    model.set_temperatures(taus)
    with torch.no_grad():
        out = model(xs["high"], xs.get("low"))
        ref, per_scale = reference_logits(model, params, xs, tau=taus, gate_on=params.get("gate_at_eval", False),
                                          counts=counts)
    torch.testing.assert_close(out["logits"].float(), ref, rtol=1e-4, atol=ATOL)
    torch.testing.assert_close(out["attention_high"].float(), per_scale["high"][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["gate_raw", "gate_embed", "defaults", "graph_rare"])
def test_model_matches_the_reference_in_training_mode_with_the_gate(name):
    """In training the gate is on (METHOD.md §3); with drop 0 the forward is deterministic."""
    model, params, counts, xs = _build(CASES[name], seed=3)
    model.train()
    taus = {s: 0.9 for s in xs}
    model.set_temperatures(taus)
    with torch.no_grad():
        out = model(xs["high"], xs.get("low"))
        ref, _ = reference_logits(model, params, xs, tau=taus, gate_on=True, counts=counts)
        ungated, _ = reference_logits(model, params, xs, tau=taus, gate_on=False, counts=counts)
    torch.testing.assert_close(out["logits"].float(), ref, rtol=1e-4, atol=ATOL)
    if name.startswith("gate"):
        assert not torch.allclose(ref, ungated, atol=1e-4), "the case must exercise the gate"


def test_gate_at_eval_matches_the_gated_reference():
    opts = {**CASES["gate_raw"], "gate_at_eval": True}
    model, params, counts, xs = _build(opts, seed=5)
    model.eval()
    with torch.no_grad():
        out = model(xs["high"], xs["low"])
        ref, _ = reference_logits(model, params, xs, tau={"high": 1.2, "low": 1.2}, gate_on=True, counts=counts)
    torch.testing.assert_close(out["logits"], ref, rtol=1e-4, atol=ATOL)


def test_the_cases_are_sensitive_to_their_options():
    """Guard against a reference that agrees because an option has no effect on these bags."""
    def logits(opts, tau=1.0):
        model, params, counts, xs = _build(opts)
        model.eval().set_temperatures({s: tau for s in xs})
        with torch.no_grad():
            return model(xs["high"], xs.get("low"))["logits"]

    base = logits({})
    for opts in (CASES["topk_all"], CASES["hard"], CASES["no_rare"], CASES["mlp_rare_strong"],
                 CASES["cosine_dot"], CASES["confidence"], CASES["fixed"]):
        assert not torch.allclose(logits(opts), base, atol=1e-4), opts
    assert not torch.allclose(logits({}, tau=0.3), base, atol=1e-4)


@pytest.mark.parametrize("name", ["defaults", "hard", "graph_rare", "gate_embed"])
def test_gradients_match_the_reference(name):
    """The backward pass too: gradients of the logits with respect to the input features equal
    those of the reference. For ``hard`` the reference routes with the one-hot in the forward pass
    and the soft assignment's gradient in the backward pass (straight-through, METHOD.md §1.2.2)."""
    model, params, counts, xs = _build(CASES[name], seed=7)
    model.train()
    taus = {s: 0.8 for s in xs}
    model.set_temperatures(taus)
    xs_m = {s: x.clone().requires_grad_(True) for s, x in xs.items()}
    out = model(xs_m["high"], xs_m.get("low"))["logits"]
    (out[0, 1] - out[0, 0]).backward()
    xs_r = {s: x.clone().requires_grad_(True) for s, x in xs.items()}
    ref, _ = reference_logits_st(model, params, xs_r, tau=taus, counts=counts)
    (ref[0, 1] - ref[0, 0]).backward()
    for s in xs:
        torch.testing.assert_close(xs_m[s].grad, xs_r[s].grad, rtol=1e-3, atol=1e-5)


def reference_logits_st(model, params, xs, *, tau, counts):
    """The reference with straight-through hard routing: ``one_hot + soft - soft.detach()``."""
    global _HARD_ST
    _HARD_ST = True
    try:
        return reference_logits(model, params, xs, tau=tau, gate_on=True, counts=counts)
    finally:
        _HARD_ST = False


def test_hard_routing_forward_is_one_hot_and_backward_is_soft():
    """Straight-through: the forward output equals routing with one prototype per patch (top-1),
    the gradient differs from top-1 routing's (which has none through the assignment)."""
    base = {"route_topk_high": 0, "route_topk_low": 0, "rare_beta_high": 0.0, "rare_beta_low": 0.0}
    hard, params, counts, xs = _build({**base, "hard_high": True, "hard_low": True}, seed=9)
    top1, _, _, _ = _build({**base, "route_topk_high": 1, "route_topk_low": 1}, seed=9)
    top1.load_state_dict(hard.state_dict())
    hard.eval()
    top1.eval()
    xh = xs["high"].clone().requires_grad_(True)
    xh1 = xs["high"].clone().requires_grad_(True)
    lh = hard(xh, xs["low"])["logits"]
    l1 = top1(xh1, xs["low"])["logits"]
    torch.testing.assert_close(lh, l1, rtol=1e-5, atol=1e-6)
    lh[0, 1].backward()
    l1[0, 1].backward()
    assert not torch.allclose(xh.grad, xh1.grad, atol=1e-6)
