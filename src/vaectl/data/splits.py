"""Stratified, seeded splits: every class keeps its share in every split."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Split indices into len(fractions) + 1 parts: the first holds the rest, the others
    `round(n_class * fraction)` items of each class. Indices come back sorted."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for k, fraction in enumerate(fractions, start=1):
            take = int(round(len(members) * fraction))
            parts[k].append(members[start : start + take])
            start += take
        parts[0].append(members[start:])
    return [np.sort(np.concatenate(p)) for p in parts]
