"""Bags of one fold's slides, read from the feature store as float32 tensors."""

from __future__ import annotations

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

    def bag(self, j: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Features of the j-th slide per scale, ``[N_s, D_s]`` float32 on ``device``."""
        i = self.positions[j]
        return {s: torch.from_numpy(np.asarray(self.store.features(i, s), dtype=np.float32)).to(device)
                for s in self.scales}
