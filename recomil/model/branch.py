"""One ReCo-MIL branch: a single magnification (METHOD.md §1 and §3).

Decisions on the original's quirks (METHOD.md "Decide"), kept here where a reader of the code
meets them:

* The similarity scale ``s`` is a buffer fixed at 1, as in the original (it never trains).
* The rarity gate is applied in training only; ``gate_at_eval`` applies it at evaluation too.
  With ``gate_in_embed`` the gate is computed from ``P`` against ``C`` and scales the projected
  instances ``P`` (scaling ``X`` would need a second projection for no benefit).
* ``ortho_on_projected`` computes the orthogonal term on the projected prototypes *with*
  gradient; the original computed it without one, so that option trained nothing.
* Fewer prototypes than ``2 ** num_enhancers`` would leave a stage with none: refused at build.
* Long bags: every enhancer stage is row-wise in ``P`` given ``C``, so large bags are run with
  activation checkpointing per stage (``checkpoint_min_patches``), which bounds the memory of a
  100,000-patch bag at the cost of one extra forward of the enhancers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from recomil.config import ScaleParams
from recomil.model.attention import GatedAttention
from recomil.model.dropout import Dropout
from recomil.model.orthogonal import orthogonal_loss
from recomil.model.rarity import rare_prototype_weights, rarity_gate
from recomil.model.reducers import GraphReducer, MLPReducer
from recomil.model.similarity import best_similarity, nearest_prototype, similarity


def drop_surplus_ties(s: torch.Tensor, kth: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly ``k`` entries per row of ``s`` ``[N, K]`` when several equal the k-th largest
    value ``kth`` ``[N, 1]`` (identical prototypes give exact ties): the lowest-index tied ones stay,
    the rest become -inf, as the original's ``torch.topk`` mask keeps exactly k."""
    tied = s == kth
    allowed = k - (s > kth).sum(dim=1, keepdim=True)
    surplus = tied & (tied.cumsum(dim=1) > allowed)
    return s.masked_fill(surplus, float("-inf"))


class EnhancerStage(nn.Module):
    """Context recalibration of the instances by the current prototypes (METHOD.md §1.2.1–4).

    With ``recalibrate=False`` (an ablation) the prototype context ``A C`` is left out:
    ``P <- LayerNorm(P)``, then the residual MLP; the prototypes still reach the pooled tokens.
    """

    def __init__(self, embed_dim: int, drop: float, recalibrate: bool = True) -> None:
        super().__init__()
        self.recalibrate = recalibrate
        self.norm = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.ReLU(), Dropout(drop),
            nn.Linear(embed_dim, embed_dim), Dropout(drop),
        )

    def forward(self, p: torch.Tensor, c: torch.Tensor, w: torch.Tensor | None, *, method: str, topk: int,
                temp: torch.Tensor, hard: bool) -> torch.Tensor:
        """Recalibrate the rows ``p`` ``[N, E]`` (B bags' padded rows flattened: row-wise, so padding
        never reaches a real patch) by prototypes ``c`` ``[K, E]``; ``w`` ``[K]`` optional weights."""
        if not self.recalibrate:
            p = self.norm(p)
            return p + self.mlp(p)
        with torch.autocast(device_type=p.device.type, enabled=False):
            s = similarity(p.float(), c.float(), method)
            if 0 < topk < s.shape[1]:
                kth = s.topk(topk, dim=1).values[:, -1:]
                s = s.masked_fill(s < kth, float("-inf"))
                s = drop_surplus_ties(s, kth, topk)
            a = torch.softmax(s / temp, dim=1)
            if hard:
                one_hot = F.one_hot(a.argmax(dim=1), a.shape[1]).to(a.dtype)
                a = one_hot + a - a.detach()
            if w is not None:
                a = a * w[None, :]
                a = a / (a.sum(dim=1, keepdim=True) + 1e-6)
        ctx = a.to(c.dtype) @ c
        p = self.norm(p + ctx.to(p.dtype))
        return p + self.mlp(p)


class ReCoBranch(nn.Module):
    """ReCo-MIL on one magnification.

    Args:
        sp: the scale's settings.
        feat_dim: D of the input features.
        num_classes: output classes.
        num_enhancers: L, the number of enhancer stages (prototypes halve after each).
        drop: dropout everywhere.
        prototypes: ``[K, D]`` initial raw prototypes (k-means centres), or None for random ones.
        counts: ``[K]`` k-means cluster counts for the rare weights, or None.
        gate_at_eval: apply the rarity gate at evaluation too.
        ortho_on_projected: orthogonal term on projected prototypes ``C`` instead of raw ``Π``.
        recalibrate: add the prototype context to the instances (False: the ablation without it).
        instance_head: add a linear patch classifier on the patch tokens ``Z[:N]`` whose logits
            (``instance_logits`` ``[N]``) the instance-level auxiliary loss trains (``lambda_inst``).
        inst_on: ``tokens`` (the patch tokens ``Z[:N]``, default) or ``input`` (a linear classifier
            of the standardised input features, which cannot memorise a few patches per slide the way
            a head on deep tokens can; it shapes no representation, so use it with ``instance_stream``).
        instance_stream: two classes only; the bag's log-odds mix the attention head's (``l_1 - l_0``)
            and the highest patch logit of the instance head (DSMIL's max-pooling stream), the latter
            with weight ``w = stream_weight``: logits ``[(1 - w) l_0, (1 - w) l_1 + w max_i s_i]``
            (``w`` 0.5: their mean; 1: the top patch alone).
    """

    def __init__(self, sp: ScaleParams, feat_dim: int, num_classes: int, num_enhancers: int, drop: float,
                 prototypes: torch.Tensor | None = None, counts: torch.Tensor | None = None,
                 gate_at_eval: bool = False, ortho_on_projected: bool = False,
                 checkpoint_min_patches: int = 16384, recalibrate: bool = True, instance_head: bool = False,
                 instance_stream: bool = False, inst_on: str = "tokens", stream_weight: float = 0.5) -> None:
        super().__init__()
        k, e = sp.num_protos, sp.embed_dim
        if k < 2 ** num_enhancers:
            raise ValueError(f"scale {sp.name}: {k} prototypes cannot be halved {num_enhancers} times")
        if prototypes is None:
            prototypes = torch.randn(k, feat_dim)
        if tuple(prototypes.shape) != (k, feat_dim):
            raise ValueError(f"scale {sp.name}: prototypes have shape {tuple(prototypes.shape)}, "
                             f"expected [{k}, {feat_dim}] (num_protos_{sp.name}, feature width)")
        self.sp, self.gate_at_eval, self.ortho_on_projected = sp, gate_at_eval, ortho_on_projected
        self.checkpoint_min_patches = checkpoint_min_patches
        self.protos = nn.Parameter(prototypes.detach().float().clone())
        self.proj_x = nn.Sequential(nn.Linear(feat_dim, e), nn.LeakyReLU())
        self.proj_c = nn.Sequential(nn.Linear(feat_dim, e), nn.LeakyReLU())
        sizes = [k // 2 ** i for i in range(num_enhancers)]
        self.stages = nn.ModuleList(EnhancerStage(e, drop, recalibrate) for _ in sizes)
        self.reducers = nn.ModuleList(
            GraphReducer(ki, e, sp.graph_thresh, drop) if sp.use_graph_reducer else MLPReducer(ki, drop)
            for ki in sizes
        )
        self.tokens = nn.Sequential(nn.Linear(e, e), nn.ReLU(), Dropout(drop))
        self.tokens_norm = nn.LayerNorm(e)
        self.pool = GatedAttention(e, e, drop)
        self.head = nn.Sequential(nn.Linear(e, e), nn.ReLU(), Dropout(drop), nn.Linear(e, num_classes))
        # instance-level auxiliary classifier of the patch tokens (lambda_inst > 0; training signal only)
        self.inst_on = inst_on
        width = feat_dim if inst_on == "input" else e
        self.instance_head = nn.Linear(width, 1) if instance_head or instance_stream else None
        if instance_stream and num_classes != 2:
            raise ValueError(f"scale {sp.name}: instance_stream needs two classes, got {num_classes}")
        self.instance_stream = instance_stream
        self.stream_weight = float(stream_weight)
        self.register_buffer("sim_scale", torch.tensor(1.0))
        self.register_buffer("tau", torch.tensor(float(sp.tau_start)))
        w = rare_prototype_weights(counts, sp.rare_beta)
        if w is not None and w.shape[0] != k:
            raise ValueError(f"scale {sp.name}: {w.shape[0]} cluster counts for {k} prototypes")
        self.register_buffer("rare_weights", w if w is not None else torch.ones(k))
        self.register_buffer("rare_on", torch.tensor(w is not None))
        # read on the host once (here and after loading a state dict), never per step: on CUDA a
        # bool() of a device tensor in forward would stall the GPU every step
        self._rare_on = w is not None
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_rare_on())

    def _sync_rare_on(self) -> None:
        self._rare_on = bool(self.rare_on)

    def set_temperature(self, tau: float) -> None:
        """Set the routing temperature τ of the current epoch."""
        self.tau.fill_(float(tau))

    def set_prototypes_frozen(self, frozen: bool) -> None:
        """Freeze (no gradient) or release the raw prototypes Π."""
        self.protos.requires_grad_(not frozen)

    def _gate_active(self) -> bool:
        return (self.training or self.gate_at_eval) and self.sp.outlier_top_p > 0 and self.sp.outlier_alpha > 0

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Classify one bag, or B padded bags at once.

        Args:
            x: ``[N, D]`` instance features of one bag, or ``[B, N, D]`` of B bags padded to a common N.
            mask: with ``[B, N, D]``, ``[B, N]`` bool, True for each bag's real patches (None: all
                real). Every bag-level operation honours it: the rarity gate's ``floor(N p)`` uses each
                bag's own N and never boosts padding, padding gets no attention, the instance stream
                takes each bag's own highest patch. The rest is row-wise (routing, enhancers, tokens)
                or bag-independent (prototypes, reducers), so a real patch never sees a padded one.

        Returns:
            For one bag: ``logits`` ``[1, C]``, ``attention`` ``[N]`` (patch share of the pooled
            attention), ``proto_attention`` ``[K_L]``, ``gate`` ``[N]`` bool (instances the rarity gate
            boosted), ``assignment`` ``[N]`` (nearest prototype at the first stage; eval mode only),
            ``instance_logits`` ``[N]`` float32 (with an instance head). For B bags the same with a
            leading ``B`` (``logits`` ``[B, C]``, ``attention`` ``[B, N]`` with 0 on padding, ...).
            In training with :attr:`attention_unused`: ``logits`` and ``instance_logits`` alone.
        """
        if self.training and self.attention_unused:
            return self._top_patch_only(x, mask)
        sp = self.sp
        single = x.ndim == 2
        rows = x.shape[:-1]  # [N] or [B, N]
        x_in = x  # the (standardised) features before the gate: the input of a linear instance head
        gate_mask = torch.zeros(rows, dtype=torch.bool, device=x.device)
        gate_on = self._gate_active()
        if gate_on and not sp.gate_in_embed:
            best = best_similarity(x.detach().reshape(-1, x.shape[-1]), self.protos.detach(), sp.similarity_method)
            g = rarity_gate(best.view(rows), sp.outlier_top_p, sp.outlier_alpha, mask)
            gate_mask = g > 1
            x = x * g[..., None].to(x.dtype)
        p = self.proj_x(x)
        c = self.proj_c(self.protos.to(x.dtype))
        if gate_on and sp.gate_in_embed:
            best = best_similarity(p.detach().reshape(-1, p.shape[-1]), c.detach(), sp.similarity_method)
            g = rarity_gate(best.view(rows), sp.outlier_top_p, sp.outlier_alpha, mask)
            gate_mask = g > 1
            p = p * g[..., None].to(p.dtype)
        assignment = None
        if not self.training:  # an explanation only: training does not pay for it
            with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
                assignment = nearest_prototype(p.detach().reshape(-1, p.shape[-1]), c.detach(),
                                               sp.similarity_method).view(rows)
        w = self.rare_weights if self._rare_on else None
        temp = (self.tau * self.sim_scale).clamp_min(1e-6)
        use_ckpt = self.training and torch.is_grad_enabled() and rows.numel() >= self.checkpoint_min_patches
        p = p.reshape(-1, p.shape[-1])  # the enhancers are row-wise: B bags' rows as one [B * N, E]
        for stage, reducer in zip(self.stages, self.reducers):
            kwargs = dict(method=sp.similarity_method, topk=sp.route_topk, temp=temp, hard=sp.hard)
            if use_ckpt:
                p = checkpoint(stage, p, c, w, use_reentrant=False, **kwargs)
            else:
                p = stage(p, c, w, **kwargs)
            if w is not None:
                w = reducer.reduce_weights(w)
            c = reducer(c)
        p = p.view(*rows, p.shape[-1])
        n = rows[-1]
        c = c.to(p.dtype)
        z = torch.cat([p, c if single else c.expand(p.shape[0], *c.shape)], dim=-2)
        z = self.tokens_norm(self.tokens(z))
        token_mask = None if mask is None else F.pad(mask, (0, c.shape[0]), value=True)
        r, alpha = self.pool(z, token_mask)
        logits = self.head(r)
        if single:
            logits = logits[None, :]
        out = {"logits": logits, "attention": alpha[..., :n], "proto_attention": alpha[..., n:], "gate": gate_mask}
        if self.instance_head is not None:
            inst = self.instance_head(x_in.float() if self.inst_on == "input" else z[..., :n, :]).squeeze(-1).float()
            out["instance_logits"] = inst
            if self.instance_stream:  # DSMIL's two streams: the log-odds average that of the top patch
                head = logits.float()
                top = (inst if mask is None else inst.masked_fill(~mask, float("-inf"))).amax(-1)
                w = self.stream_weight
                out["logits"] = torch.stack([head[..., 0] * (1 - w), head[..., 1] * (1 - w) + top * w],
                                            dim=-1).view(head.shape)
        if assignment is not None:
            out["assignment"] = assignment
        return out

    @property
    def attention_unused(self) -> bool:
        """True when the slide's log-odds are the top patch of the input-level instance head alone
        (``instance_stream``, ``stream_weight`` 1, ``inst_on: input``): the attention head's logits enter
        them multiplied by 0, so nothing it computes has a gradient or a share in any prediction."""
        return self.instance_stream and self.stream_weight == 1.0 and self.inst_on == "input"

    def _top_patch_only(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Training's forward pass when :attr:`attention_unused`: the logits ``[0, max_i s_i]`` the full
        pass gives (``[1, 2]``, or ``[B, 2]`` for padded bags) and ``instance_logits`` ``[N]`` / ``[B, N]``,
        without the prototypes, enhancers and attention, whose output would be multiplied by 0 (and
        whose weights then get no gradient: they stay as initialised). Evaluation still runs the full
        pass, so attention and prototype assignments are reported as before."""
        inst = self.instance_head(x.float()).squeeze(-1).float()
        top = (inst if mask is None else inst.masked_fill(~mask, float("-inf"))).amax(-1)
        logits = torch.stack([torch.zeros_like(top), top], dim=-1).view(-1, 2)
        return {"logits": logits, "instance_logits": inst}

    def ortho_loss(self) -> torch.Tensor:
        """``L_orth`` of the raw prototypes, or of the projected ones with ``ortho_on_projected``."""
        protos = self.proj_c(self.protos) if self.ortho_on_projected else self.protos
        return orthogonal_loss(protos)

