"""Train one fold: METHOD.md §4 (schedules, freezing, losses, model selection, early stopping).

Beyond the original (one param away): with ``early_stop_after_warmup`` (default) the patience
counter starts only after the warm-up and the prototype freezing, because a validation score
taken while the learning rate is still ramping up and the prototypes are frozen says little
about the model; ``early_stop_after_warmup: false`` restores the original's behaviour.

Under ``torchrun`` each rank trains on its shard of the bags and gradients are averaged after
every step (:mod:`recomil.training.distributed`); only rank 0 writes files and logs.

The recipe's parts live in modules of their own: :mod:`~recomil.training.optim` (Adam or AdamW,
clipping), :mod:`~recomil.training.batching` (bag order, bags per step, instance dropout),
:mod:`~recomil.training.instance_loss` (``lambda_inst``), :mod:`~recomil.training.selection` (model
selection, early stopping), :mod:`~recomil.training.averaging` (``ema_epochs``) and
:mod:`~recomil.training.diagnostics` (the per-epoch collapse figures and warning).

An epoch ends with an atomic resume checkpoint when ``resume_every_s`` seconds have passed since the
last one (0: after every epoch; always after the last epoch of a fold); a run killed mid-way continues
from its last saved epoch when started again with the same params, data, split and prototypes
(checked by a fingerprint), and ends exactly as an uninterrupted run: the bag order of epoch ``e`` is drawn
from ``(seed, fold, e)`` and the torch RNG state is saved with the checkpoint.
"""

from __future__ import annotations

import contextlib
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
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from recomil.config import Params
from recomil.data.errors import DataError
from recomil.data.store import FeatureStore
from recomil.inference import predict_probs
from recomil.metrics import auc_score
from recomil.model import build_model
from recomil.model.factory import build_model_from_prototypes
from recomil.model.mil import MILClassifier
from recomil.training import distributed as ddp
from recomil.training.averaging import ema_decay, sync_buffers, weight_average  # noqa: F401 (re-exported)
from recomil.training.bags import BagSet
from recomil.training.batching import drop_instances, epoch_order, step_groups
from recomil.training.device import auto_precision_reason, autocast_dtype, pick_device, precision_name
from recomil.training.diagnostics import CollapseWatch, StepStats, validation_row
from recomil.training.instance_init import init_instance_heads
from recomil.training.instance_loss import instance_loss, instance_losses
from recomil.training.optim import build_optimizer, clip_gradients
from recomil.training.padding import bucket_steps, pad_bags
from recomil.training.schedule import lr_factor, temperature
from recomil.training.selection import (  # noqa: F401 (re-exported: tests and benchmarks import them here)
    VAL_POLICIES,
    improves,
    selection_score,
    selection_start,
    selection_step,
    snapshot_epochs,
    validation_loss,
)
from recomil.training.threads import ThreadShare, running_trainings, usable_cores
from recomil.training.tracking import Tracker


def model_params(p: Params, store: FeatureStore) -> Params:
    """``p`` completed with the store's feature widths and class count."""
    return dataclasses.replace(p, feat_dim_high=store.dims["high"], feat_dim_low=store.dims.get("low"),
                               num_classes=len(store.classes))


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``w_c = 1 / (C * p_c)``; for two classes ``w0 = 0.5 / (1 - p)``, ``w1 = 0.5 / p``."""
    freq = np.bincount(labels, minlength=num_classes) / max(1, len(labels))
    w = np.where(freq > 0, 1.0 / (num_classes * np.maximum(freq, 1e-12)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def bag_cross_entropy(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None,
                      label_smoothing: float) -> torch.Tensor:
    """Each bag's cross-entropy ``[B]`` from ``logits`` ``[B, C]`` and classes ``y`` ``[B]``: the
    value ``F.cross_entropy`` gives that bag alone (with ``weight``, its mean over one bag divides by
    the bag's class weight, so the weights cancel per bag, as in a one-bag step)."""
    if logits.shape[0] == 1:
        return F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=label_smoothing).reshape(1)
    ce = F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=label_smoothing, reduction="none")
    return ce / weight[y] if weight is not None else ce


def _instance_losses(logits: torch.Tensor, y: torch.Tensor, top_p: float, mask: torch.Tensor | None,
                     host_y: np.ndarray | None = None) -> torch.Tensor:
    """``[B]`` instance-level losses of one bag's ``[N]`` or B padded bags' ``[B, N]`` patch logits;
    ``host_y``: the labels on the host too (one bag's positivity read from there, not the device)."""
    if logits.ndim == 1:
        positive = bool(host_y[0] == 1) if host_y is not None else bool(y == 1)
        return instance_loss(logits, positive, top_p).reshape(1)
    return instance_losses(logits, y == 1, top_p, mask)


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
    train_lengths = np.asarray(store.sizes(mp.scales[0]))[train.positions] if len(train) else np.zeros(0, np.int64)
    median_patches = float(np.median(train_lengths)) if len(train) else None
    amp = autocast_dtype(p.amp, device, median_patches)
    _keep_bags_on_device(p.device_features, device, train, val, tag, main)
    torch.manual_seed(member_seed(p.seed, fold, member))
    recomil = mp.model == "recomil"
    if recomil and (p.lambda_inst > 0 or p.instance_stream or p.inst_init != "none") and mp.num_classes != 2:
        raise DataError(f"lambda_inst is {p.lambda_inst}, instance_stream {p.instance_stream}, inst_init "
                        f"{p.inst_init}, but the instance-level parts need two classes (negative slides without "
                        f"positive patches); this cohort has {mp.num_classes}: set lambda_inst: 0, instance_stream: "
                        f"false, inst_init: none")
    model = (build_model_from_prototypes(mp, prototypes) if recomil else
             build_model(mp, input_stats={s: (torch.from_numpy(v["mean"]), torch.from_numpy(v["std"]))
                                          for s, v in prototypes.items() if "mean" in v})).to(device)
    fp = fingerprint(p, split, store, prototypes, member)
    saved = _read_resume(resume_path, fp, device, tag)
    threads, share = None, None
    if device.type == "cpu":  # fixed for the whole run (restored on resume): results depend on it bitwise
        share = ThreadShare(p.threads)  # registered until this fold ends, so later trainings count it
        threads = share.apply((saved or {}).get("state", {}).get("threads"))
    if p.inst_init == "misvm" and recomil and saved is None:  # the linear instance heads start from a fit
        # on a CPU in this training's share of the cores: numpy's BLAS threads too, not only torch's
        with threadpool_limits(threads) if threads is not None else contextlib.nullcontext():
            init_instance_heads(model, train, p, member_seed(p.seed, fold, member), tag,
                                log=None if main else (lambda line: None))
    opt = build_optimizer(model, p)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    # the weights validated, selected and saved: their moving average (ema_epochs > 0) or the weights
    average = weight_average(model, p, len(step_groups(ddp.shard(np.arange(len(train)), rank, world), p.bags_per_step)))
    weight = class_weights(train.labels, mp.num_classes).to(device) if p.class_weight else None
    inst_scales = [s for s in mp.scales if getattr(model.branches[s], "instance_head", None) is not None]
    if p.lambda_inst > 0 and not inst_scales and main:
        print(f"note: train: {tag}: model {mp.model} has no instance head; lambda_inst, instance_stream and "
              f"inst_init are not used", file=sys.stderr)
    policy = p.save_policy
    snap_at = snapshot_epochs(p)
    if snap_at:  # no selection: every epoch is trained, the snapshot epochs' weights are kept
        policy = "last"
    elif policy in VAL_POLICIES and len(val) == 0:
        print(f"train: {tag} has no validation slides; save_policy {policy} falls back to 'last'",
              file=sys.stderr)
        policy = "last"
    state = {"epoch": 0, "best_score": -math.inf, "best_val_loss": math.inf, "best_epoch": 0, "stale": 0,
             "best_state": None, "snapshots": {}, "rows": [], "finished": False, "stopped_early": False}
    if saved is not None:  # (the instance heads' fit was skipped: the saved weights hold its result)
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

    last_saved = [time.perf_counter()]

    def checkpoint_state(force: bool) -> None:
        """Write the resume file (every ``resume_every_s`` seconds; ``force``: now). The file holds the
        model, the optimiser and the selected weights (~110 MB at the defaults with D 768): on a GPU,
        where an epoch takes a fraction of a second, writing it after every epoch would dominate."""
        if not force and time.perf_counter() - last_saved[0] < p.resume_every_s:
            return
        last_saved[0] = time.perf_counter()
        if main:
            _atomic_save({"fingerprint": fp, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "rng": torch.get_rng_state(), "scaler": scaler.state_dict(),
                          "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                          "average": average.state_dict() if average is not None else None,
                          "state": state}, resume_path)

    if threads is not None:
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
    # several bags per step as one padded forward pass (GPUs), or one bag at a time (bag_batching)
    padded = p.bags_per_step > 1 and (p.bag_batching == "padded"
                                       or (p.bag_batching == "auto" and device.type == "cuda"))
    watch = CollapseWatch(tag, max(p.warmup_epochs, p.freeze_protos_epochs) + 1, store.classes)
    watch.load(state.get("collapse"))  # a resumed run continues its earlier epochs' watch
    fold_started = time.perf_counter()
    member_key = [member] if member else []  # member 0 keeps the streams of a run without an ensemble
    first_epoch = p.epochs + 1 if state["finished"] else state["epoch"] + 1
    for epoch in range(first_epoch, p.epochs + 1):
        factor = lr_factor(epoch, p.warmup_epochs, p.epochs)
        lr = p.lr * factor
        for g in opt.param_groups:
            g["lr"] = g.get("base_lr", p.lr) * factor
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
        rng = np.random.default_rng([p.seed, fold, epoch, *member_key])
        order = ddp.shard(epoch_order(p.sampler, train.labels, rng), rank, world)
        plan = (bucket_steps(order, train_lengths, p.bags_per_step, p.length_buckets, rng) if padded
                else step_groups(order, p.bags_per_step))
        order = np.concatenate(plan) if plan else order  # the visiting order of the steps
        # running sums stay on the device: no host synchronisation per step (read once per epoch)
        sums = {k: torch.zeros((), device=device)
                for k in ("ce", "loss", *(f"ortho_{s}" for s in mp.scales), *(["inst"] if inst_scales else []))}
        fusion = []
        real_slots = [0, 0]
        started = time.perf_counter()
        bar = tqdm(order, desc=f"{tag} epoch {epoch}/{p.epochs}", unit="bag",
                   disable=None if progress and main else True,
                   file=sys.stderr, leave=False)
        # the epoch's labels in visiting order, copied once: a step slices them (no host transfer per step)
        ordered_y = torch.as_tensor(train.labels[order], device=device)
        visited = 0
        stats = StepStats(mp.num_classes, device)
        bags = zip(bar, train.prefetch(order, device))
        for step_bags in plan:
            opt.zero_grad(set_to_none=True)
            # one forward pass over the step's padded bags, or one per bag with the gradients summed
            passes = [len(step_bags)] if padded else [1] * len(step_bags)
            for size in passes:
                taken = [next(bags) for _ in range(size)]
                host_y = train.labels[[int(j) for j, _ in taken]]
                y = ordered_y[visited:visited + size]
                visited += size
                batch = [drop_instances(bag, p.instance_dropout) for _, bag in taken]
                masks: dict[str, torch.Tensor | None] = {}
                if padded:
                    x, masks, real, slots = pad_bags(batch)
                    real_slots[0] += real
                    real_slots[1] += slots
                else:
                    x = batch[0]
                with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    out = model(x["high"], x.get("low"), mask_high=masks.get("high"), mask_low=masks.get("low"))
                ce = bag_cross_entropy(out["logits"], y, weight, label_smoothing=p.label_smoothing)  # [size]
                orth = model.ortho_losses()
                loss = ce + sum(getattr(p, f"lambda_ortho_{s}") * orth[s] for s in mp.scales)
                if inst_scales:  # the mean over scales of each branch's instance-level loss
                    inst = sum(_instance_losses(out[f"instance_logits_{s}"], y, p.inst_top_p, masks.get(s), host_y)
                               for s in inst_scales) / len(inst_scales)
                    loss = loss + p.lambda_inst * inst
                    sums["inst"] += inst.detach().sum()
                total = loss.sum()
                scaler.scale(total / len(step_bags) if len(step_bags) > 1 else total).backward()
                stats.bag(out["logits"], y)
                sums["ce"] += ce.detach().sum()
                sums["loss"] += loss.detach().sum()
                for s in mp.scales:
                    sums[f"ortho_{s}"] += orth[s].detach() * size
                if "fusion_weight" in out:
                    fusion.append(out["fusion_weight"].detach().float().expand(size))
            ddp.average_gradients(model)
            scaler.unscale_(opt)
            stats.step(clip_gradients(model, p.grad_clip, opt), p.grad_clip)
            scaler.step(opt)
            scaler.update()
            if average is not None:
                average.update_parameters(model)
            if check_sync:
                ddp.check_in_sync(model)
        totals = ddp.sum_across({**{k: float(v) for k, v in sums.items()}, "_steps": float(len(order))})
        steps = max(1.0, totals.pop("_steps"))
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, **{k: v / steps for k, v in totals.items()},
                               **{f"tau_{s}": t for s, t in taus.items()},
                               "fusion_weight": float(torch.cat(fusion).mean()) if fusion else None,
                               "pad_share": 1 - real_slots[0] / real_slots[1] if real_slots[1] else None,
                               **stats.row(store.classes), "threads": threads,
                               "train_seconds": round(time.perf_counter() - started, 3)}
        val_auc = val_acc = val_loss = None
        judged = sync_buffers(average, model) if average is not None else model
        if len(val):
            mine = list(range(len(val)))[rank::world]
            local = predict_probs(judged, [val.bag(j, device) for j in mine], amp,
                                  batch=p.bags_per_step if padded else 1)
            probs = np.zeros((len(val), mp.num_classes))
            for idx, pr in ddp.gather_objects((mine, local)):
                probs[idx] = pr
            val_auc = auc_score(val.labels, probs)
            val_acc = float((probs.argmax(1) == val.labels).mean())
            val_loss = validation_loss(probs, val.labels)
            row.update(validation_row(probs, val.labels, store.classes))
        watch.epoch(epoch, probs if len(val) else None, main)
        state["collapse"] = watch.state()
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
        checkpoint_state(state["finished"])  # a finished fold is always saved: a resume never trains it on
        if state["stopped_early"]:
            break
    if share is not None:
        share.close()
    best = copy.deepcopy(model)
    best.load_state_dict(state["best_state"])  # the selected epoch's weights (their average with ema_epochs)
    summary = {"fold": fold, "member": member, "best_epoch": state["best_epoch"], "best_score": state["best_score"],
               "epochs_run": state["epoch"], "stopped_early": state["stopped_early"], "save_policy": policy,
               "threads": threads, "precision": precision_name(amp), "ema_epochs": p.ema_epochs,
               "collapsed_epochs": watch.spans()}
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


def free_device_bytes(device: torch.device) -> float:
    """Free memory of ``device``: the CUDA allocator's free bytes, or the host's available memory."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return 0.0


def _keep_bags_on_device(mode: str, device: torch.device, train: BagSet, val: BagSet, tag: str, main: bool) -> None:
    """``device_features``: hold the fold's training and validation bags on ``device`` when they fit in
    half its free memory (``auto``: on CUDA only; ``on``: any device), or say why they are streamed."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return
    need = train.nbytes() + val.nbytes()
    budget = free_device_bytes(device) / 2
    kept = need <= budget and train.keep_on(device, budget) and val.keep_on(device, budget - train.nbytes())
    if main:
        if kept:
            print(f"train: {tag}: {need / 2**30:.2f} GiB of training and validation features held on "
                  f"{device.type} for the fold (device_features: {mode})", file=sys.stderr)
        else:
            print(f"train: {tag}: the fold's features ({need / 2**30:.2f} GiB) do not fit in half of the "
                  f"{device.type}'s free memory ({budget * 2 / 2**30:.2f} GiB): streamed from the store each "
                  f"step instead (store_dtype: float16 halves them; device_features: off silences this)",
                  file=sys.stderr)


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
