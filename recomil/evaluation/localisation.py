"""Does attention point at the tumour? Instance-level AUC against per-patch ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def load_ground_truth(root: Path, slide_id: str, scale: str = "high") -> np.ndarray | None:
    """Per-patch tumour flags ``[N]`` of a demo slide (same order as its features), or None."""
    path = root / f"{slide_id}_{scale}.npy"
    return np.load(path, allow_pickle=False).astype(bool) if path.is_file() else None


def localisation_auc(attentions: list[np.ndarray], truths: list[np.ndarray], seed: int) -> dict[str, float | None]:
    """Mean over slides of the AUC of patch attention for tumour patches.

    Only slides with both tumour and normal patches count. ``loc_auc_random`` is the same figure
    for random attention (the control; about 0.5).

    Args:
        attentions: per slide ``[N]`` attention; truths: per slide ``[N]`` bool tumour flags.
    """
    rng = np.random.default_rng(seed)
    real, rand = [], []
    for att, gt in zip(attentions, truths):
        if gt is None or len(gt) != len(att) or gt.all() or not gt.any():
            continue
        real.append(roc_auc_score(gt, att))
        rand.append(roc_auc_score(gt, rng.random(len(att))))
    if not real:
        return {"loc_auc": None, "loc_auc_random": None, "loc_slides": 0}
    return {"loc_auc": float(np.mean(real)), "loc_auc_random": float(np.mean(rand)), "loc_slides": len(real)}
