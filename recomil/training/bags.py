"""Bags of one fold's slides, read from the feature store as float32 tensors.

On a GPU the bags can be held in device memory for the whole fold (:meth:`BagSet.keep_on`,
``device_features``): copied once in the store's dtype, each then reaches the model without a host
round trip (converted to float32 on the device: the same values as streaming from the store)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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

    _resident: list[dict[str, torch.Tensor]] | None = field(default=None, init=False, repr=False)

    def nbytes(self) -> int:
        """Bytes of this set's features in the store's dtype (every chosen scale)."""
        item = np.dtype(self.store.meta["dtype"]).itemsize
        return int(sum(int(self.store.sizes(s)[self.positions].sum()) * self.store.dims[s] * item
                       for s in self.scales)) if self.positions else 0

    def keep_on(self, device: torch.device | str, budget_bytes: float) -> bool:
        """Copy every bag to ``device`` in the store's dtype when they take at most ``budget_bytes``;
        :meth:`bag` and :meth:`prefetch` then serve them from there. Returns whether they were kept."""
        if self.nbytes() > budget_bytes:
            return False
        self._resident = [{s: torch.from_numpy(np.array(self.store.features(i, s))).to(device)
                           for s in self.scales} for i in self.positions]
        return True

    @property
    def resident(self) -> bool:
        """Whether the bags are held on a device (:meth:`keep_on`)."""
        return self._resident is not None

    def __len__(self) -> int:
        return len(self.slide_ids)

    def _host(self, j: int, pin: bool) -> dict[str, torch.Tensor]:
        i = self.positions[j]
        out = {s: torch.from_numpy(np.asarray(self.store.features(i, s), dtype=np.float32)) for s in self.scales}
        return {s: t.pin_memory() for s, t in out.items()} if pin else out

    def bag(self, j: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Features of the j-th slide per scale, ``[N_s, D_s]`` float32 on ``device``."""
        if self._resident is not None:
            return {s: t.to(device).float() for s, t in self._resident[j].items()}
        return {s: t.to(device) for s, t in self._host(j, False).items()}

    def prefetch(self, order: Iterable[int], device: torch.device | str = "cpu") -> Iterator[dict[str, torch.Tensor]]:
        """The bags of ``order`` in turn, as :meth:`bag` gives them, the next one read (and on CUDA
        pinned and copied without blocking) by a background thread while the current one is used."""
        device = torch.device(device)
        cuda = device.type == "cuda"
        order = [int(j) for j in order]
        if not order:
            return
        if self._resident is not None:
            for j in order:
                yield self.bag(j, device)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._host, order[0], cuda)
            for k in range(len(order)):
                host = pending.result()
                if k + 1 < len(order):
                    pending = pool.submit(self._host, order[k + 1], cuda)
                yield {s: t.to(device, non_blocking=cuda) for s, t in host.items()}
