"""``build_model``: the stable entry point from flat params to a ready model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from recomil.config import Params, make_params
from recomil.model.abmil import ABMILBranch
from recomil.model.branch import ReCoBranch
from recomil.model.fusion import DualFusion
from recomil.model.mil import MILClassifier


def build_model(params: dict[str, Any] | Params, prototypes: dict[str, torch.Tensor] | None = None, *,
                counts: dict[str, torch.Tensor] | None = None,
                input_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> MILClassifier:
    """Build a ReCo-MIL (``model: recomil``) or ABMIL (``model: abmil``) classifier.

    Args:
        params: flat ``params.yaml`` keys plus ``feat_dim_high``, ``feat_dim_low`` (None for single
            scale) and ``num_classes``; missing keys take their defaults, unknown keys are refused.
        prototypes: scale name -> ``[K, D]`` initial prototypes. A scale without an entry gets
            random prototypes (tests, benchmarks); an entry whose K or D does not fit is an error.
        counts: scale name -> ``[K]`` k-means cluster counts, for the rare-prototype weights.
        input_stats: scale name -> ``([D] mean, [D] std)`` to standardise the features with
            (the prototypes must then live in the standardised space too).

    Returns:
        A :class:`MILClassifier`; call it as ``model(x_high, x_low=None)``.
    """
    p = params if isinstance(params, Params) else make_params(params)
    if p.feat_dim_high is None:
        raise ValueError("build_model needs 'feat_dim_high' (the width of the high-scale features)")
    prototypes, counts = prototypes or {}, counts or {}
    unknown = sorted(set(prototypes) - set(p.scales))
    if unknown:
        raise ValueError(f"prototypes given for scale(s) {unknown} that the model does not have {list(p.scales)}")
    branches: dict[str, nn.Module] = {}
    for name in p.scales:
        sp = p.scale(name)
        feat_dim = sp.feat_dim
        assert feat_dim is not None
        if p.model == "abmil":
            branches[name] = ABMILBranch(feat_dim, sp.embed_dim, p.num_classes, p.drop)
            continue
        protos = prototypes.get(name)
        if protos is not None:
            protos = torch.as_tensor(protos).float()
        branches[name] = ReCoBranch(
            sp, feat_dim, p.num_classes, p.num_enhancers, p.drop, prototypes=protos,
            counts=None if counts.get(name) is None else torch.as_tensor(counts[name]),
            gate_at_eval=p.gate_at_eval, ortho_on_projected=p.ortho_on_projected, recalibrate=p.recalibrate,
            instance_head=p.lambda_inst > 0, instance_stream=p.instance_stream, inst_on=p.inst_on,
            stream_weight=p.stream_weight,
        )
    fusion = DualFusion(p.fusion, p.alpha_init) if len(branches) > 1 else None
    model = MILClassifier(branches, fusion, {s: p.scale(s).feat_dim for s in p.scales})
    for name, (mean, std) in (input_stats or {}).items():
        model.input_norm[name].set_stats(torch.as_tensor(mean), torch.as_tensor(std))
    return model


def build_model_from_prototypes(params: dict[str, Any] | Params,
                                prototypes: Mapping[str, Mapping[str, np.ndarray]]) -> MILClassifier:
    """``build_model`` from the prototypes stage's arrays for one fold, as the trainer builds it.

    Args:
        params: as for :func:`build_model`.
        prototypes: scale name -> ``{"centres": [K, D], "counts": [K]}`` and, where the features are
            standardised, ``"mean": [D]`` and ``"std": [D]`` (``load_prototypes``' return value).
    """
    return build_model(params, {s: torch.from_numpy(v["centres"]) for s, v in prototypes.items()},
                       counts={s: torch.from_numpy(v["counts"]) for s, v in prototypes.items()},
                       input_stats={s: (torch.from_numpy(v["mean"]), torch.from_numpy(v["std"]))
                                    for s, v in prototypes.items() if "mean" in v})
