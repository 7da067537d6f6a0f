"""Train one fold: METHOD.md §4 (schedules, freezing, losses, model selection, early stopping).

Beyond the original (one param away): with ``early_stop_after_warmup`` (default) the patience
counter starts only after the warm-up and the prototype freezing, because a validation score
taken while the learning rate is still ramping up and the prototypes are frozen says little
about the model; ``early_stop_after_warmup: false`` restores the original's behaviour.

Under ``torchrun`` each rank trains on its shard of the bags and gradients are averaged after
every step (:mod:`recomil.training.distributed`); only rank 0 writes files and logs.

Every epoch ends with an atomic resume checkpoint; a run killed mid-way continues from its last
complete epoch when started again with the same params, data, split and prototypes (checked by
a fingerprint), and ends exactly as an uninterrupted run: the bag order of epoch ``e`` is drawn
from ``(seed, fold, e)`` and the torch RNG state is saved with the checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from recomil.config import Params
from recomil.data.store import FeatureStore
from recomil.inference import predict_bags
from recomil.metrics import auc_score
from recomil.model import build_model
from recomil.model.mil import MILClassifier
from recomil.training import distributed as ddp
from recomil.training.bags import BagSet
from recomil.training.device import auto_precision_reason, autocast_dtype, pick_device, precision_name
from recomil.training.schedule import lr_factor, temperature
from recomil.training.threads import ThreadShare, running_trainings, usable_cores
from recomil.training.tracking import Tracker

VAL_POLICIES = ("val_auc", "val_acc", "joint", "val_loss")


def model_params(p: Params, store: FeatureStore) -> Params:
    """``p`` completed with the store's feature widths and class count."""
    return dataclasses.replace(p, feat_dim_high=store.dims["high"], feat_dim_low=store.dims.get("low"),
                               num_classes=len(store.classes))


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``w_c = 1 / (C * p_c)``; for two classes ``w0 = 0.5 / (1 - p)``, ``w1 = 0.5 / p``."""
    freq = np.bincount(labels, minlength=num_classes) / max(1, len(labels))
    w = np.where(freq > 0, 1.0 / (num_classes * np.maximum(freq, 1e-12)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def selection_score(policy: str, val_auc: float | None, val_acc: float | None, train_loss: float,
                    val_loss: float | None = None) -> float:
    """Higher is better. ``val_auc`` falls back to accuracy when AUC is undefined; ``joint``
    counts an undefined AUC as 0; ``val_loss`` is the negated validation cross-entropy (CLAM's
    criterion: continuous, so it does not saturate on a few slides); ``train_loss`` is the negated
    training loss; ``last`` always improves."""
    if policy == "val_auc":
        return val_auc if val_auc is not None else (val_acc or 0.0)
    if policy == "val_acc":
        return val_acc or 0.0
    if policy == "joint":
        return ((val_auc or 0.0) + (val_acc or 0.0)) / 2
    if policy == "val_loss":
        return -val_loss if val_loss is not None else -math.inf
    if policy == "train_loss":
        return -train_loss
    return math.inf


def validation_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy ``-log p[y]`` of the validation slides (``probs`` ``[S, C]``, ``labels`` ``[S]``);
    probabilities are floored at 1e-12 so that a confident mistake costs ~27.6, not infinity."""
    picked = probs[np.arange(len(labels)), np.asarray(labels, dtype=int)]
    return float(-np.log(np.maximum(picked, 1e-12)).mean())


def improves(policy: str, tie_break: str, score: float, val_loss: float | None, best_score: float,
             best_val_loss: float, min_delta: float) -> bool:
    """Whether this epoch becomes the selected model.

    A score above the best by more than ``min_delta`` always does. With ``tie_break: val_loss`` a
    validation policy also takes an epoch whose score is at least the best one's (on a handful of
    validation slides the AUC and accuracy saturate, often in the first epochs) and whose
    validation cross-entropy is lower; ``none`` keeps the first epoch of a tied score (the original).
    """
    if policy == "last" or score > best_score + min_delta:
        return True
    return (tie_break == "val_loss" and policy in VAL_POLICIES and val_loss is not None
            and score >= best_score and val_loss < best_val_loss)


def selection_start(p: Params, policy: str) -> int:
    """The first epoch that may become the selected model.

    With ``select_after_warmup`` (default) and a validation policy, the epochs of the learning-rate
    warm-up and of the frozen prototypes are not candidates (``max(warmup_epochs,
    freeze_protos_epochs) + 1`` on): on a few validation slides an undertrained warm-up epoch often
    scores highest by chance and was then kept. When the run has no epoch after them, every epoch
    is a candidate. ``false``: every epoch, as the original.
    """
    boundary = max(p.warmup_epochs, p.freeze_protos_epochs)
    if p.select_after_warmup and policy in VAL_POLICIES and p.epochs > boundary:
        return boundary + 1
    return 1


def selection_step(state: dict[str, Any], p: Params, policy: str, epoch: int, score: float,
                   val_loss: float | None, select_from: int) -> bool:
    """Model selection and early stopping after ``epoch``: whether it becomes the selected model.

    Updates ``state``'s ``best_score``, ``best_val_loss``, ``best_epoch``, ``stale`` (candidate
    epochs without improvement; with ``early_stop_after_warmup`` only those after warm-up and
    prototype freezing count) and ``stopped_early`` (``stale`` reached ``patience``; never with
    ``last``). The trainer calls it once per epoch; ``benchmarks/selection_replay.py`` replays
    logged epochs through it.
    """
    candidate = epoch >= select_from
    chosen = candidate and improves(policy, p.tie_break, score, val_loss, state["best_score"],
                                    state["best_val_loss"], p.min_delta)
    if chosen:
        state.update(best_score=score, best_val_loss=val_loss if val_loss is not None else math.inf,
                     best_epoch=epoch, stale=0)
    elif candidate and (not p.early_stop_after_warmup or epoch > max(p.warmup_epochs, p.freeze_protos_epochs)):
        state["stale"] += 1
    if policy != "last" and state["stale"] >= p.patience:
        state["stopped_early"] = True
    return chosen


def snapshot_epochs(p: Params) -> list[int]:
    """The epochs whose weights ``snapshots: K`` keeps: K evenly spaced (rounded) over the epochs after
    warm-up and prototype freezing, the last epoch included (13, 22, 32, 41, 50 for K 5 and the
    defaults); ``[]`` when ``snapshots`` is 1 (off)."""
    if p.snapshots <= 1:
        return []
    boundary = max(p.warmup_epochs, p.freeze_protos_epochs)
    first = boundary + 1 if p.epochs > boundary else 1
    return sorted({int(e) for e in np.linspace(first, p.epochs, p.snapshots).round()})


def ema_decay(ema_epochs: float, steps_per_epoch: int) -> float:
    """Per-step decay of the weight average whose time constant is ``ema_epochs`` epochs of
    ``steps_per_epoch`` optimiser steps: ``1 - 1 / (ema_epochs * steps_per_epoch)`` (0 when that is
    below one step: the average is then the current weights)."""
    return max(0.0, 1.0 - 1.0 / (ema_epochs * max(1, steps_per_epoch)))


def weight_average(model: MILClassifier, p: Params, steps_per_epoch: int) -> AveragedModel | None:
    """The exponential moving average of ``model``'s parameters (``ema_epochs`` > 0), else None.

    torch's :class:`~torch.optim.swa_utils.AveragedModel`: the first update copies the weights,
    each later one moves the average ``1 - decay`` of the way to them. Buffers (temperature,
    standardisation statistics, rare weights) are not averaged: :func:`sync_buffers` copies them.
    """
    if p.ema_epochs <= 0:
        return None
    decay = ema_decay(p.ema_epochs, steps_per_epoch)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def sync_buffers(average: AveragedModel, model: MILClassifier) -> MILClassifier:
    """Copy ``model``'s buffers into the averaged module and return that module."""
    for mine, theirs in zip(average.module.buffers(), model.buffers(), strict=True):
        mine.copy_(theirs)
    return average.module


def member_seed(seed: int, fold: int, member: int) -> int:
    """The torch seed of a fold's ensemble member: ``seed + fold`` for member 0 (a run without an
    ensemble), a draw from ``(seed, fold, member)`` for the others."""
    if member == 0:
        return seed + fold
    return int(np.random.default_rng([seed, fold, member]).integers(2**62))


def member_file(member: int) -> str:
    """``best.pt`` for member 0, ``best_m<member>.pt`` for the others."""
    return "best.pt" if member == 0 else f"best_m{member}.pt"


def fingerprint(p: Params, split: dict[str, list[str]], store: FeatureStore,
                prototypes: dict[str, dict[str, np.ndarray]], member: int = 0) -> str:
    """Hash of everything a training run depends on (to refuse resuming a different run)."""
    h = hashlib.sha256(json.dumps([p.to_dict(), split, store.meta, member], sort_keys=True, default=str).encode())
    for scale in sorted(prototypes):
        for key in sorted(prototypes[scale]):
            h.update(np.ascontiguousarray(prototypes[scale][key]).tobytes())
    return h.hexdigest()


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_model(path: Path, model: MILClassifier, p: Params, classes: list[str], extra: dict[str, Any]) -> None:
    """Write a self-describing checkpoint (loadable with ``weights_only=True``)."""
    _atomic_save({"state_dict": model.state_dict(), "params": p.to_dict(), "classes": classes, **extra}, path)


def train_fold(p: Params, store: FeatureStore, split: dict[str, list[str]],
               prototypes: dict[str, dict[str, np.ndarray]], out_dir: Path, resume_path: Path,
               tracker: Tracker, fold: int = 0, progress: bool = True, member: int = 0) -> dict[str, Any]:
    """Train on ``split["train"]``, select on ``split["val"]``; write ``out_dir/best.pt``
    (``out_dir/best_m<member>.pt`` for a further ensemble member).

    Args:
        member: ensemble member (0: the run of ``seed``; ``m`` >= 1 draws its initial weights, dropout
            and bag order from ``(seed, fold, m)``, on the same data, split and prototypes).
        prototypes: scale -> ``{"centres": [K, D], "counts": [K], "mean": [D], "std": [D]}`` from the
            prototypes stage (centres and counts are ignored by ABMIL).
        resume_path: per-epoch state file (resumed when its fingerprint matches).

    Returns:
        Summary: best epoch, selection score, epochs run, whether early stopping fired.
    """
    mp = model_params(p, store)
    tag = f"fold {fold}" + (f" member {member}" if member else "")
    device = pick_device()
    world, rank, main = ddp.world_size(), ddp.rank(), ddp.is_main()
    check_sync = os.environ.get("RECOMIL_CHECK_SYNC") == "1"
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    train, val = BagSet(store, split["train"], mp.scales), BagSet(store, split["val"], mp.scales)
    median_patches = float(np.median(store.sizes(mp.scales[0])[train.positions])) if len(train) else None
    amp = autocast_dtype(p.amp, device, median_patches)
    torch.manual_seed(member_seed(p.seed, fold, member))
    recomil = mp.model == "recomil"
    model = build_model(mp, {s: torch.from_numpy(v["centres"]) for s, v in prototypes.items()} if recomil else None,
                        counts={s: torch.from_numpy(v["counts"]) for s, v in prototypes.items()} if recomil else None,
                        input_stats={s: (torch.from_numpy(v["mean"]), torch.from_numpy(v["std"]))
                                     for s, v in prototypes.items() if "mean" in v}).to(device)
    # fused: one kernel for all parameters (CPU and CUDA), the same Adam update as the loop of the original
    opt = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    # the weights validated, selected and saved: their moving average (ema_epochs > 0) or the weights
    average = weight_average(model, p, len(ddp.shard(np.arange(len(train)), rank, world)))
    weight = class_weights(train.labels, mp.num_classes).to(device) if p.class_weight else None
    policy = p.save_policy
    snap_at = snapshot_epochs(p)
    if snap_at:  # no selection: every epoch is trained, the snapshot epochs' weights are kept
        policy = "last"
    elif policy in VAL_POLICIES and len(val) == 0:
        print(f"train: {tag} has no validation slides; save_policy {policy} falls back to 'last'",
              file=sys.stderr)
        policy = "last"
    fp = fingerprint(p, split, store, prototypes, member)
    state = {"epoch": 0, "best_score": -math.inf, "best_val_loss": math.inf, "best_epoch": 0, "stale": 0,
             "best_state": None, "snapshots": {}, "rows": [], "finished": False, "stopped_early": False}
    saved = _read_resume(resume_path, fp, device, tag)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if average is not None:
            average.load_state_dict(saved["average"])
        torch.set_rng_state(saved["rng"])
        if saved.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        state = {**state, **saved["state"]}
        for row in state["rows"]:
            tracker.rows.append(row)
        done = "has already finished" if state["finished"] else f"resumes after epoch {state['epoch']}"
        print(f"train: {tag} {done} ({resume_path})", file=sys.stderr)

    def checkpoint_state() -> None:
        if main:
            _atomic_save({"fingerprint": fp, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "rng": torch.get_rng_state(), "scaler": scaler.state_dict(),
                          "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                          "average": average.state_dict() if average is not None else None,
                          "state": state}, resume_path)

    threads, share = None, None
    if device.type == "cpu":  # fixed for the whole run (restored on resume): results depend on it bitwise
        share = ThreadShare(p.threads)  # registered until this fold ends, so later trainings count it
        threads = share.apply(state.get("threads"))
        state["threads"] = threads
        if main:
            print(f"train: {tag}: {threads} torch thread(s) of {usable_cores()} usable cores"
                  f"{' (shared with the other recomil trainings running)' if p.threads == 0 else ''}; a rerun "
                  f"gives bitwise the same result with the same thread counts (the log's threads column)",
                  file=sys.stderr)
    if main:
        print(f"train: {tag} on {device.type}, autocast {precision_name(amp)} (amp: {p.amp}"
              f"{'; amp: off trains in float32' if amp is not None else ''}"
              f"{auto_precision_reason(p.amp, device, median_patches)})", file=sys.stderr)
    select_from = selection_start(p, policy)
    if main and select_from > 1:
        print(f"train: {tag}: the model is selected from epoch {select_from} on, after warm-up and prototype "
              f"freezing (select_after_warmup: false selects from epoch 1)", file=sys.stderr)
    fold_started = time.perf_counter()
    member_key = [member] if member else []  # member 0 keeps the streams of a run without an ensemble
    first_epoch = p.epochs + 1 if state["finished"] else state["epoch"] + 1
    for epoch in range(first_epoch, p.epochs + 1):
        lr = p.lr * lr_factor(epoch, p.warmup_epochs, p.epochs)
        for g in opt.param_groups:
            g["lr"] = lr
        taus = {s: temperature(epoch, mp.scale(s).tau_start, mp.scale(s).tau_end, mp.scale(s).tau_epochs)
                for s in mp.scales}
        model.set_temperatures(taus)
        model.set_prototypes_frozen(epoch <= p.freeze_protos_epochs)
        model.train()
        if share is not None and (lowered := share.lower(threads)) is not None:
            if main:
                print(f"train: {tag}: {running_trainings()} recomil trainings share the cores now: "
                      f"{lowered} torch thread(s) from epoch {epoch} on (was {threads})", file=sys.stderr)
            threads = state["threads"] = lowered
        if world > 1:  # each rank its own dropout stream, reproducible per epoch (also after a resume)
            torch.manual_seed(int(np.random.default_rng([p.seed, fold, epoch, rank, *member_key]).integers(2**62)))
        order = ddp.shard(np.random.default_rng([p.seed, fold, epoch, *member_key]).permutation(len(train)),
                          rank, world)
        # running sums stay on the device: no host synchronisation per step (read once per epoch)
        sums = {k: torch.zeros((), device=device) for k in ("ce", "loss", *(f"ortho_{s}" for s in mp.scales))}
        fusion = []
        started = time.perf_counter()
        bar = tqdm(order, desc=f"{tag} epoch {epoch}/{p.epochs}", unit="bag",
                   disable=None if progress and main else True,
                   file=sys.stderr, leave=False)
        labels = torch.as_tensor(train.labels, device=device)
        for j, bag in zip(bar, train.prefetch(order, device)):
            y = labels[int(j)][None]
            with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = model(bag["high"], bag.get("low"))
            ce = F.cross_entropy(out["logits"].float(), y, weight=weight, label_smoothing=p.label_smoothing)
            orth = model.ortho_losses()
            loss = ce + sum(getattr(p, f"lambda_ortho_{s}") * orth[s] for s in mp.scales)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            ddp.average_gradients(model)
            if p.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            scaler.step(opt)
            scaler.update()
            if average is not None:
                average.update_parameters(model)
            if check_sync:
                ddp.check_in_sync(model)
            sums["ce"] += ce.detach()
            sums["loss"] += loss.detach()
            for s in mp.scales:
                sums[f"ortho_{s}"] += orth[s].detach()
            if "fusion_weight" in out:
                fusion.append(out["fusion_weight"].detach().float())
        totals = ddp.sum_across({**{k: float(v) for k, v in sums.items()}, "_steps": float(len(order))})
        steps = max(1.0, totals.pop("_steps"))
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, **{k: v / steps for k, v in totals.items()},
                               **{f"tau_{s}": t for s, t in taus.items()},
                               "fusion_weight": float(torch.stack(fusion).mean()) if fusion else None,
                               "threads": threads,
                               "train_seconds": round(time.perf_counter() - started, 3)}
        val_auc = val_acc = val_loss = None
        judged = sync_buffers(average, model) if average is not None else model
        if len(val):
            mine = list(range(len(val)))[rank::world]
            local, _ = predict_bags(judged, (val.bag(j, device) for j in mine), amp)
            probs = np.zeros((len(val), mp.num_classes))
            for idx, pr in ddp.gather_objects((mine, local)):
                probs[idx] = pr
            val_auc = auc_score(val.labels, probs)
            val_acc = float((probs.argmax(1) == val.labels).mean())
            val_loss = validation_loss(probs, val.labels)
        row.update(val_auc=val_auc, val_acc=val_acc, val_loss=val_loss,
                   epoch_seconds=round(time.perf_counter() - started, 3))
        score = selection_score(policy, val_auc, val_acc, row["loss"], val_loss)
        if selection_step(state, p, policy, epoch, score, val_loss, select_from):
            state["best_state"] = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        if epoch in snap_at[:-1]:  # the last one is the final epoch's best_state
            state["snapshots"][epoch] = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        row["best_epoch"] = state["best_epoch"]
        state["epoch"] = epoch
        state["rows"].append(row)
        tracker.log_epoch(row)
        state["finished"] = state["stopped_early"] or epoch == p.epochs
        if main:
            per_epoch = (time.perf_counter() - fold_started) / (epoch - first_epoch + 1)
            left = 0 if state["finished"] else p.epochs - epoch
            print(f"{tag} epoch {epoch}/{p.epochs}: loss {row['loss']:.4f} val_auc {_fmt(val_auc)} "
                  f"val_acc {_fmt(val_acc)} | {row['epoch_seconds']:.1f} s, at most {_duration(left * per_epoch)} "
                  f"left in this fold", file=sys.stderr, flush=True)
        checkpoint_state()  # the fact that a fold has finished is saved too: a resume never trains it on
        if state["stopped_early"]:
            break
    if share is not None:
        share.close()
    best = copy.deepcopy(model)
    best.load_state_dict(state["best_state"])  # the selected epoch's weights (their average with ema_epochs)
    summary = {"fold": fold, "member": member, "best_epoch": state["best_epoch"], "best_score": state["best_score"],
               "epochs_run": state["epoch"], "stopped_early": state["stopped_early"], "save_policy": policy,
               "threads": threads, "precision": precision_name(amp), "ema_epochs": p.ema_epochs}
    if p.ensemble > 1:  # members may select on validation slides of their own (ensemble_val: resplit)
        summary["val_slides"] = list(split["val"])
    if snap_at:
        summary["snapshot_epochs"] = snap_at
    if main:
        save_model(out_dir / member_file(member), best, mp, store.classes, {"summary": summary})
        snap = copy.deepcopy(model) if snap_at else None
        for j, e in enumerate(snap_at[:-1], start=1):  # the earlier snapshots: further members of the fold
            snap.load_state_dict(state["snapshots"][e])
            save_model(out_dir / member_file(j), snap, mp, store.classes, {"summary": {**summary, "best_epoch": e}})
        print(f"{tag}: {state['epoch']} epochs{' (early stop)' if state['stopped_early'] else ''}, "
              f"best epoch {state['best_epoch']} (score {state['best_score']:.4f}), "
              f"{_duration(time.perf_counter() - fold_started)} this run", file=sys.stderr, flush=True)
    return summary


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _read_resume(path: Path, fp: str, device: torch.device, tag: str) -> dict[str, Any] | None:
    """The saved state of this very run, or None (fresh start). A corrupt, foreign or stale file is
    reported with its path and ignored; it is overwritten after the first epoch."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(saved, dict) or not {"model", "optimizer", "rng", "state"} <= set(saved):
            raise ValueError("not a recomil resume file")
    except Exception as exc:  # noqa: BLE001 - any unreadable file means: start afresh, say so
        print(f"warning: train: {tag}: ignoring the unreadable resume file {path} ({type(exc).__name__}: "
              f"{str(exc)[:200]}); training starts afresh", file=sys.stderr)
        return None
    if saved.get("fingerprint") != fp:
        print(f"warning: train: {tag}: the resume file {path} belongs to a run with other params, data, "
              f"split or prototypes; ignored, training starts afresh", file=sys.stderr)
        return None
    return saved


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
