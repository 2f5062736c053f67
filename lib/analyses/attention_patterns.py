"""The vocabulary of attention patterns (after Li et al. 2023): which shapes of attention a
ViT's heads use, and how much each head uses each.

Every patch query's attention map of every head (:func:`query_maps`) is a distribution over the
patch grid. A small autoencoder (:class:`PatternAutoencoder`, trained by :func:`fit_autoencoder`)
compresses the maps to a few latent numbers; k-means (:func:`kmeans`) groups the latents; each
centroid, decoded, is itself an attention map: a *pattern*. :func:`attention_patterns` does all
of it and describes each head by the share of its maps in each pattern.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..core.running import progress_bar
from .attention import AttentionMaps, patch_attention


def query_maps(maps: Sequence[AttentionMaps]) -> tuple[torch.Tensor, np.ndarray]:
    """Every patch query's renormalised patch attention as a row, with the head it came from.

    Returns ``(rows, owners)``: ``rows`` of shape ``(M, grid²)`` (each a distribution over the
    positions) and ``owners`` ``(M, 3)``, the ``(position in maps, head, query position)`` of each
    row. All units
    need the same grid (the ViTs: 7x7).
    """
    if not maps:
        raise ValueError("query_maps needs the maps of at least one unit")
    grids = {m.grid for m in maps}
    if len(grids) != 1:
        raise ValueError(f"all units need the same grid for one pattern vocabulary, got grids {sorted(grids)}")
    rows, owners = [], []
    for k, m in enumerate(maps):
        a, _ = patch_attention(m)  # (B, W, H, P, P)
        a = a.permute(2, 0, 1, 3, 4)  # heads first
        n_heads = a.shape[0]
        a = a.reshape(n_heads, -1, a.shape[-1])
        rows.append(a.reshape(-1, a.shape[-1]))
        head = np.repeat(np.arange(n_heads), a.shape[1])
        query = np.tile(np.arange(a.shape[-1]), a.shape[1] // a.shape[-1] * n_heads)
        owners.append(np.stack((np.full_like(head, k), head, query), axis=1))
    return torch.cat(rows).float(), np.concatenate(owners)


class PatternAutoencoder(nn.Module):
    """A small autoencoder for attention maps: ``P -> hidden -> latent -> hidden -> P``.

    The decoder ends in a softmax, so a decoded latent is itself an attention map (a distribution
    over the positions); training minimises the cross-entropy between a map and its reconstruction.
    """

    def __init__(self, positions: int, latent: int = 8, hidden: int = 64):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(positions, hidden), nn.GELU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, positions))

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        return self.encoder(rows)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoded attention maps, rows summing to 1."""
        return self.decoder(z).softmax(dim=-1)

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the reconstructions against the maps ``rows``."""
        log_q = self.decoder(self.encoder(rows)).log_softmax(dim=-1)
        return -(rows * log_q).sum(dim=-1).mean()


def fit_autoencoder(rows: torch.Tensor, latent: int = 8, hidden: int = 64, epochs: int = 10,
                    batch_size: int = 512, lr: float = 3e-3, seed: int = 0,
                    progress: bool = False) -> tuple[PatternAutoencoder, list[float]]:
    """Train a :class:`PatternAutoencoder` on ``rows`` (``(M, P)`` maps) with Adam; seeded.

    Returns the model (in eval mode) and the mean training loss of each epoch.
    """
    if rows.ndim != 2 or rows.shape[0] < 2:
        raise ValueError(f"rows must be (M, P) with M >= 2 maps, got {tuple(rows.shape)}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PatternAutoencoder(rows.shape[1], latent, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in progress_bar(range(epochs), total=epochs, desc="autoencoder", progress=progress):
        perm = torch.randperm(rows.shape[0], generator=gen)
        total, count = 0.0, 0
        for idx in perm.split(batch_size):
            loss = model.loss(rows[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        history.append(total / count)
    return model.eval(), history


def kmeans(z: torch.Tensor, k: int, iterations: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded k-means (k-means++ start, Lloyd iterations) of the rows of ``z``.

    Returns ``(centroids (k, d), labels (M,))``, each centroid the mean of its points. A cluster
    left empty takes the point farthest from every centroid (a different one for each empty
    cluster), so there are always ``k`` non-empty clusters.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= z.shape[0]:
        raise ValueError(f"k must be a whole number in [1, {z.shape[0]}] (the number of points), got {k!r}")
    z = z.double()
    gen = torch.Generator().manual_seed(seed)
    centroids = z[torch.randint(z.shape[0], (1,), generator=gen)]
    for _ in range(1, k):
        d2 = torch.cdist(z, centroids).min(dim=1).values ** 2
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        centroids = torch.cat((centroids, z[torch.multinomial(weights, 1, generator=gen)]))
    labels = torch.full((z.shape[0],), -1, dtype=torch.long)
    for _ in range(iterations):
        dist = torch.cdist(z, centroids)
        new = dist.argmin(dim=1)
        empty = [c for c in range(k) if not (new == c).any()]
        if empty:  # re-seed each empty cluster with a different far point from a cluster that can spare it
            far = dist.min(dim=1).values.clone()
            counts = torch.bincount(new, minlength=k)
            for c in empty:
                far[counts[new] <= 1] = -1.0
                i = int(far.argmax())
                counts[new[i]] -= 1
                new[i], far[i], counts[c] = c, -1.0, 1
        if torch.equal(new, labels):
            break
        labels = new
        for c in range(k):
            centroids[c] = z[labels == c].mean(dim=0)
    return centroids, labels


@dataclass(frozen=True)
class Patterns:
    """The vocabulary of attention patterns and how each head uses it.

    ``vocabulary`` ``(k, grid, grid)``: the decoded cluster centroids, each an attention map;
    ``query`` ``(k,)``: the query position whose maps a pattern most often comes from (row-major);
    ``mix`` ``(units, heads, k)``: the share of each head's maps in each pattern (rows sum to 1);
    ``labels`` ``(M,)`` and ``owners`` ``(M, 3)``: each map's pattern and ``(unit, head, query)``;
    ``history``: the autoencoder's training loss per epoch.
    """

    vocabulary: np.ndarray
    query: np.ndarray
    mix: np.ndarray
    labels: np.ndarray
    owners: np.ndarray
    history: list[float]


def attention_patterns(maps: Sequence[AttentionMaps], k: int = 8, latent: int = 8, hidden: int = 64,
                       epochs: int = 10, seed: int = 0, progress: bool = False) -> Patterns:
    """Learn a vocabulary of ``k`` attention patterns from the per-query maps of ``maps``.

    Every patch query's map of every head (:func:`query_maps`) is encoded by a small autoencoder
    (:func:`fit_autoencoder`); k-means groups the latents (:func:`kmeans`); each centroid, decoded,
    is a pattern. A head is then described by the share of its maps in each pattern.
    """
    rows, owners = query_maps(maps)
    ae, history = fit_autoencoder(rows, latent, hidden, epochs, seed=seed, progress=progress)
    with torch.no_grad():
        z = ae.encode(rows)
        centroids, labels = kmeans(z, k, seed=seed)
        vocab = ae.decode(centroids.float()).double().numpy()
    grid = maps[0].grid
    positions = grid * grid
    n_heads = max(m.unit.heads for m in maps)
    labels_np = labels.numpy()
    mix = np.zeros((len(maps), n_heads, k))
    np.add.at(mix, (owners[:, 0], owners[:, 1], labels_np), 1.0)
    mix /= np.maximum(mix.sum(axis=-1, keepdims=True), 1.0)
    query = np.array([np.bincount(owners[labels_np == c, 2], minlength=positions).argmax() for c in range(k)])
    return Patterns(vocab.reshape(k, grid, grid), query, mix, labels_np, owners, history)
