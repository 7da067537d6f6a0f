"""Bags of one fold's slides, read from the feature store as float32 tensors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from recomil.data.store import FeatureStore


@dataclass
class BagSet:
    """A list of slides in a store: ``bag(j)`` -> ``{scale: [N, D] tensor}`` for the chosen scales.

    ``scales`` defaults to every scale of the store; a high-only model passes ``("high",)``.
    """

    store: FeatureStore
    slide_ids: list[str]
    scales: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.scales = tuple(self.store.scales) if self.scales is None else tuple(self.scales)
        missing = [s for s in self.scales if s not in self.store.scales]
        if missing:
            raise ValueError(f"the feature store has no {missing} scale (it holds {list(self.store.scales)})")
        self.positions = [self.store.position(s) for s in self.slide_ids]
        self.labels = self.store.labels[self.positions] if self.positions else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.slide_ids)

    def _host(self, j: int, pin: bool) -> dict[str, torch.Tensor]:
        i = self.positions[j]
        out = {s: torch.from_numpy(np.asarray(self.store.features(i, s), dtype=np.float32)) for s in self.scales}
        return {s: t.pin_memory() for s, t in out.items()} if pin else out

    def bag(self, j: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Features of the j-th slide per scale, ``[N_s, D_s]`` float32 on ``device``."""
        return {s: t.to(device) for s, t in self._host(j, False).items()}

    def prefetch(self, order: Iterable[int], device: torch.device | str = "cpu") -> Iterator[dict[str, torch.Tensor]]:
        """The bags of ``order`` in turn, as :meth:`bag` gives them, the next one read (and on CUDA
        pinned and copied without blocking) by a background thread while the current one is used."""
        device = torch.device(device)
        cuda = device.type == "cuda"
        order = [int(j) for j in order]
        if not order:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._host, order[0], cuda)
            for k in range(len(order)):
                host = pending.result()
                if k + 1 < len(order):
                    pending = pool.submit(self._host, order[k + 1], cuda)
                yield {s: t.to(device, non_blocking=cuda) for s, t in host.items()}
