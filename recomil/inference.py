"""Inference below both training and evaluation: load a checkpoint, run a model over bags.

``training`` (validation), ``evaluation`` (the evaluate stage, ``recomil predict``,
``recomil heatmap``) and the benchmarks share this one path, so a validation score and a test
prediction of the same model on the same bag are the same computation.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from recomil.config import Params, make_params
from recomil.data.errors import DataError
from recomil.data.readers import torch_load_reason
from recomil.model import build_model
from recomil.model.mil import MILClassifier


@torch.no_grad()
def predict_bags(model: MILClassifier, bags: Iterable[dict[str, torch.Tensor]],
                 amp_dtype: torch.dtype | None = None) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Evaluate ``model`` (in eval mode) on each bag.

    Args:
        bags: iterable of ``{scale: [N_s, D_s] tensor}``.

    Returns:
        ``probs`` ``[S, C]`` float64 and, per bag, ``{"attention_<scale>": [N_s], "evidence_<scale>": [N_s]
        (:func:`patch_evidence`), "gate_<scale>": ...}``.
    """
    model.eval()
    probs, extras = [], []
    for bag in bags:
        device = next(model.parameters()).device
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(bag["high"], bag.get("low"))
        probs.append(torch.softmax(out["logits"].float(), -1)[0].cpu().numpy())
        extra = {k: v.detach().float().cpu().numpy() for k, v in out.items()
                 if k.startswith(("attention_", "gate_", "assignment_"))}
        for s, branch in model.branches.items():  # what decides the slide: see patch_evidence
            extra[f"evidence_{s}"] = patch_evidence(branch, out, s)
        extras.append(extra)
    c = model_num_classes(model)
    return (np.stack(probs).astype(np.float64) if probs else np.zeros((0, c))), extras


@torch.no_grad()
def predict_probs(model: MILClassifier, bags: list[dict[str, torch.Tensor]], amp_dtype: torch.dtype | None = None,
                  batch: int = 1) -> np.ndarray:
    """Class probabilities ``[S, C]`` float64 of ``bags`` (eval mode), nothing else: the validation
    of every epoch. ``batch`` > 1 pads that many bags of similar length into one forward pass
    (:func:`recomil.training.padding.pad_bags`; equal to one-bag passes within float rounding); the
    probabilities stay on the device until the end (one host transfer, not one per bag)."""
    from recomil.training.padding import pad_bags

    model.eval()
    c = model_num_classes(model)
    if not bags:
        return np.zeros((0, c))
    device = next(model.parameters()).device
    order = sorted(range(len(bags)), key=lambda j: bags[j]["high"].shape[0]) if batch > 1 else list(range(len(bags)))
    out_rows: list[torch.Tensor] = []
    for start in range(0, len(order), max(1, batch)):
        group = [bags[j] for j in order[start:start + max(1, batch)]]
        masks: dict[str, torch.Tensor] = {}
        if len(group) > 1:
            x, masks, _, _ = pad_bags(group)
        else:
            x = group[0]
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(x["high"], x.get("low"), mask_high=masks.get("high"), mask_low=masks.get("low"))
        out_rows.append(torch.softmax(out["logits"].float(), -1))
    probs = torch.cat(out_rows).cpu().numpy().astype(np.float64)
    result = np.zeros_like(probs)
    result[order] = probs
    return result


def member_files(fold_dir: str | Path) -> list[Path]:
    """The ensemble members of one fold: ``best.pt``, then ``best_m1.pt``, ``best_m2.pt``, ..."""
    fold_dir = Path(fold_dir)
    extra = sorted(fold_dir.glob("best_m*.pt"), key=lambda f: int(f.stem[6:]) if f.stem[6:].isdigit() else 0)
    return [fold_dir / "best.pt", *extra]


def predict_members(models: list[MILClassifier], bags: Iterable[dict[str, torch.Tensor]],
                    amp_dtype: torch.dtype | None = None) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """:func:`predict_bags` of an ensemble, one bag at a time (every member sees a bag before the
    next is read): the members' class probabilities averaged, and their patch attention averaged
    (each member's is the patches' share of its pooled attention, so the mean is such a share too);
    the rarity gate and the prototype assignment are the first member's (each member has
    prototypes of its own)."""
    if len(models) == 1:
        return predict_bags(models[0], bags, amp_dtype)
    probs, extras = [], []
    for bag in bags:
        runs = [predict_bags(m, [bag], amp_dtype) for m in models]
        probs.append(np.mean([pr[0] for pr, _ in runs], axis=0))
        first = dict(runs[0][1][0])
        for key in first:
            if key.startswith(("attention_", "evidence_")):
                first[key] = np.mean([ex[0][key] for _, ex in runs], axis=0)
        extras.append(first)
    c = model_num_classes(models[0])
    return (np.stack(probs).astype(np.float64) if probs else np.zeros((0, c))), extras


def patch_evidence(branch: torch.nn.Module, out: dict[str, torch.Tensor], scale: str) -> np.ndarray:
    """Each patch's share in the slide's prediction, ``[N]``: with the instance stream (``instance_stream``,
    the default) the instance head's patch probability ``sigmoid(s_i)`` (its top patch is the slide's
    log-odds), otherwise the attention weight. Heatmaps, top-patch galleries and ``loc_auc`` show this."""
    if getattr(branch, "instance_stream", False) and f"instance_logits_{scale}" in out:
        return torch.sigmoid(out[f"instance_logits_{scale}"].detach().float()).cpu().numpy()
    return out[f"attention_{scale}"].detach().float().cpu().numpy()


def model_num_classes(model: MILClassifier) -> int:
    """Number of output classes of ``model``."""
    last = [m for m in model.branches["high"].modules() if isinstance(m, torch.nn.Linear)][-1]
    return last.out_features


#: keys added after checkpoints were first written whose later default may differ from "off"
_ADDED_OFF = {"lambda_inst": 0.0, "instance_stream": False, "inst_on": "tokens", "stream_weight": 0.5,
              "inst_init": "none"}


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[MILClassifier, Params, list[str]]:
    """Load a checkpoint written by the train stage (safely: ``weights_only=True``, so a file
    cannot run code). A file that is not such a checkpoint is a :class:`DataError` naming it."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(ckpt, dict) or not {"params", "state_dict", "classes"} <= set(ckpt):
            raise ValueError("it lacks params, state_dict or classes")
        # a checkpoint written before a key existed was trained without what it adds: its default off
        p = make_params({**_ADDED_OFF, **ckpt["params"]})
        model = build_model(p)
        model.load_state_dict(ckpt["state_dict"])
    except FileNotFoundError:
        raise DataError(f"{path}: model file not found") from None
    except Exception as exc:  # noqa: BLE001 - unpickling refusals, zip errors, shape mismatches
        raise DataError(f"{path}: not a recomil model checkpoint ({type(exc).__name__}: "
                        f"{torch_load_reason(exc)})") from None
    return model.to(device).eval(), p, list(ckpt["classes"])
