"""Bags of one fold's slides, read from the feature store as float32 tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recomil.data.store import FeatureStore


@dataclass
class BagSet:
    """A list of slides in a store: ``bag(j)`` -> ``({scale: [N, D] tensor}, label)``."""

    store: FeatureStore
    slide_ids: list[str]

    def __post_init__(self) -> None:
        self.positions = [self.store.position(s) for s in self.slide_ids]
        self.labels = self.store.labels[self.positions] if self.positions else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.slide_ids)

    def bag(self, j: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Features of the j-th slide per scale, ``[N_s, D_s]`` float32 on ``device``."""
        i = self.positions[j]
        return {s: torch.from_numpy(np.asarray(self.store.features(i, s), dtype=np.float32)).to(device)
                for s in self.store.scales}
