"""Seconds per bag of a training step: one bag per step (today's default) against B bags per step,
accumulated one at a time or padded into one forward pass (issue #33).

Synthetic dual-scale bags of the chosen size range (high-scale N uniform in [min, max], low N/4),
the model at params.yaml's defaults (D 768 unless --dim), a full optimiser step (forward, backward,
clipping, Adam) and the trainer's own code for the losses and padding. Every configuration runs on
the same bags in the same order; figures are the median over --repeats passes of the epoch, after one
warm-up pass. ``pad_share`` is the padded share of the padded steps' slots (length buckets on).

    python benchmarks/batched_step.py --device cpu --threads 1                 # this machine
    python benchmarks/batched_step.py --device cuda --bags 64 --min 3000 --max 15000   # a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recomil import build_model  # noqa: E402
from recomil.config import load_params  # noqa: E402
from recomil.training.optim import build_optimizer, clip_gradients  # noqa: E402
from recomil.training.padding import bucket_steps, pad_bags  # noqa: E402
from recomil.training.trainer import _instance_losses, bag_cross_entropy  # noqa: E402


def epoch(model, opt, bags, labels, plan, padded: bool, device, amp) -> tuple[float, float]:
    """One pass over ``plan``; returns (seconds, pad share)."""
    real = slots = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step in plan:
        opt.zero_grad(set_to_none=True)
        groups = [list(step)] if padded else [[j] for j in step]
        for group in groups:
            y = labels[torch.as_tensor(group, device=device)]
            masks: dict = {}
            if padded:
                x, masks, r, s = pad_bags([bags[j] for j in group])
                real, slots = real + r, slots + s
            else:
                x = bags[group[0]]
            with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = model(x["high"], x["low"], mask_high=masks.get("high"), mask_low=masks.get("low"))
            loss = bag_cross_entropy(out["logits"], y, None, 0.03)
            loss = loss + sum(_instance_losses(out[f"instance_logits_{s}"], y, 0.01, masks.get(s))
                              for s in ("high", "low")) / 2
            (loss.sum() / len(step)).backward()
        clip_gradients(model, 1.0, opt)
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, (1 - real / slots) if slots else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bags", type=int, default=32)
    ap.add_argument("--min", type=int, default=300)
    ap.add_argument("--max", type=int, default=1500)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--per-step", type=int, nargs="*", default=[4, 8, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--amp", choices=["off", "bf16"], default="off")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.min, args.max + 1, size=args.bags)
    g = torch.Generator().manual_seed(0)
    bags = [{"high": torch.randn(int(n), args.dim, generator=g).to(device),
             "low": torch.randn(max(1, int(n) // 4), args.dim, generator=g).to(device)} for n in lengths]
    labels = torch.as_tensor(rng.integers(0, 2, size=args.bags), device=device)
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    p = p.__class__(**{**p.to_dict(), "feat_dim_high": args.dim, "feat_dim_low": args.dim, "num_classes": 2})
    torch.manual_seed(0)
    model = build_model(p).to(device).train()
    opt = build_optimizer(model, p)
    order = rng.permutation(args.bags)
    configs = [("one bag per step (today)", 1, False)]
    for b in args.per_step:
        configs += [(f"{b} bags, accumulate", b, False), (f"{b} bags, padded", b, True)]
    rows = []
    for name, b, padded in configs:
        plan = bucket_steps(order, lengths, b, p.length_buckets if padded else 1, np.random.default_rng(1))
        epoch(model, opt, bags, labels, plan, padded, device, amp)  # warm-up (allocator, oneDNN primitives)
        times, share = [], 0.0
        for _ in range(args.repeats):
            t, share = epoch(model, opt, bags, labels, plan, padded, device, amp)
            times.append(t)
        med = statistics.median(times)
        rows.append({"config": name, "bags_per_step": b, "padded": padded, "s_per_bag": med / args.bags,
                     "pad_share": share})
        print(f"{name:28s} {1000 * med / args.bags:9.2f} ms/bag  pad {share:.3f}", flush=True)
    base = rows[0]["s_per_bag"]
    print("\n| configuration | ms per bag | ratio to one bag per step | padding share |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['config']} | {1000 * r['s_per_bag']:.2f} | {r['s_per_bag'] / base:.2f} | "
              f"{r['pad_share']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
