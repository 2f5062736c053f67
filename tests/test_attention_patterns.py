"""lib.analyses.attention_patterns: k-means against separated blobs, the autoencoder's fit, the
per-query rows against hand-made maps, and the vocabulary's shapes and shares."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.analyses import attention_patterns

pytestmark = pytest.mark.usefixtures("one_thread")


# --- 12. k-means, autoencoder, patterns ----------------------------------------------------------

def blobs(seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0], [50.0, 0.0, 0.0], [0.0, 0.0, 80.0]], dtype=torch.float64)
    truth = torch.randint(3, (60,), generator=g)
    truth[:3] = torch.arange(3)
    z = centres[truth] + torch.randn(60, 3, generator=g, dtype=torch.float64)
    return z, truth.numpy()


def test_kmeans_recovers_separated_blobs_and_is_deterministic():
    """Three far-apart blobs: labels equal to the truth up to a permutation, centroids the blob means."""
    z, truth = blobs()
    centroids, lab = attention_patterns.kmeans(z, 3, seed=1)
    lab = lab.numpy()
    perm = {int(t): int(lab[truth == t][0]) for t in range(3)}
    assert sorted(perm.values()) == [0, 1, 2]
    np.testing.assert_array_equal(lab, np.array([perm[int(t)] for t in truth]))
    for t in range(3):
        torch.testing.assert_close(centroids[perm[t]], z[torch.from_numpy(truth == t)].mean(0), rtol=1e-12, atol=1e-12)
    again_c, again_l = attention_patterns.kmeans(z, 3, seed=1)
    assert torch.equal(again_c, centroids) and np.array_equal(again_l.numpy(), lab)
    for seed in range(5):  # any start finds these blobs
        _, l2 = attention_patterns.kmeans(z, 3, seed=seed)
        assert len({(int(a), int(b)) for a, b in zip(truth, l2)}) == 3


@pytest.mark.parametrize("k", [0, 61, 2.0, True, -1])
def test_kmeans_rejects_bad_k(k):
    """k must be a whole number in [1, number of points]."""
    z, _ = blobs()
    with pytest.raises(ValueError, match=r"k must be a whole number in \[1, 60\]"):
        attention_patterns.kmeans(z, k)


def test_kmeans_with_k_equal_to_the_number_of_points():
    """k = M distinct points: every point its own cluster."""
    z = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    centroids, lab = attention_patterns.kmeans(z, 4)
    assert sorted(lab.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(centroids[lab], z)


def test_fit_autoencoder_loss_falls_and_decodes_distributions():
    """The training loss falls over epochs, the fit is seeded, and decoded rows sum to 1."""
    g = torch.Generator().manual_seed(0)
    peaks = torch.randint(49, (300,), generator=g)
    rows = (F.one_hot(peaks, 49).double() * 6 + torch.randn(300, 49, generator=g, dtype=torch.float64)).softmax(-1).float()
    ae, history = attention_patterns.fit_autoencoder(rows, latent=4, hidden=32, epochs=15, batch_size=64, seed=0)
    assert len(history) == 15
    assert history[-1] < history[0] - 0.1
    assert not ae.training
    _, history2 = attention_patterns.fit_autoencoder(rows, latent=4, hidden=32, epochs=15, batch_size=64, seed=0)
    assert history2 == history
    with torch.no_grad():
        decoded = ae.decode(ae.encode(rows[:10]))
    assert decoded.shape == (10, 49) and (decoded >= 0).all()
    torch.testing.assert_close(decoded.sum(-1), torch.ones(10), rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        attention_patterns.fit_autoencoder(rows[:1])


def test_query_maps_rows_and_owners(hand_maps, random_rows):
    """Row j of a unit's head-h block is query j % 49 of image/window j // 49, renormalised."""
    p0 = random_rows(2, 1, 3, 50, 50, seed=7)
    p1 = random_rows(2, 2, 2, 49, 49, seed=8)  # windowed, no CLS
    maps = [hand_maps(p0), hand_maps(p1, cls=False, windowed=True)]
    rows, owners = attention_patterns.query_maps(maps)
    n0, n1 = 3 * 2 * 1 * 49, 2 * 2 * 2 * 49
    assert rows.shape == (n0 + n1, 49) and owners.shape == (n0 + n1, 3)
    torch.testing.assert_close(rows.sum(-1), torch.ones(n0 + n1), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(owners[:n0, 0], 0)
    np.testing.assert_array_equal(owners[n0:, 0], 1)
    # unit 0, head 1: rows n0/3 .. 2n0/3, image j // 49, query j % 49
    block = slice(2 * 49, 4 * 49)
    np.testing.assert_array_equal(owners[block, 1], 1)
    for j in range(2 * 49):
        b, q = j // 49, j % 49
        assert owners[block][j, 2] == q
        expected = p0[b, 0, 1, 1 + q, 1:] / p0[b, 0, 1, 1 + q, 1:].sum()
        torch.testing.assert_close(rows[block][j].double(), expected, rtol=1e-6, atol=1e-7)
    # unit 1, head 1: image j // 98, window (j // 49) % 2
    start = n0 + 4 * 49
    for j in range(4 * 49):
        b, w, q = j // 98, (j // 49) % 2, j % 49
        assert tuple(owners[start + j]) == (1, 1, q)
        torch.testing.assert_close(rows[start + j].double(), p1[b, w, 1, q], rtol=1e-6, atol=1e-7)


def test_query_maps_refuses_mixed_grids_and_nothing(hand_maps, random_rows):
    """Maps on different grids (7x7 and 14x14) cannot share a vocabulary; no maps is an error."""
    a = hand_maps(random_rows(1, 1, 2, 50, 50))
    b = hand_maps(random_rows(1, 1, 2, 197, 197), pixels=2)
    with pytest.raises(ValueError, match=r"same grid.*\[7, 14\]"):
        attention_patterns.query_maps([a, b])
    with pytest.raises(ValueError):
        attention_patterns.query_maps([])


def test_attention_patterns_on_hand_made_maps(hand_maps, random_rows):
    """Vocabulary (k, 7, 7) of distributions, mix rows summing to 1 for present heads, queries in range."""
    p0 = random_rows(2, 1, 2, 50, 50, seed=11)
    p1 = random_rows(2, 1, 3, 50, 50, seed=12)
    maps = [hand_maps(p0), hand_maps(p1)]
    pat = attention_patterns.attention_patterns(maps, k=4, latent=4, hidden=16, epochs=3, seed=0)
    assert pat.vocabulary.shape == (4, 7, 7)
    np.testing.assert_allclose(pat.vocabulary.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert (pat.vocabulary >= 0).all()
    assert pat.mix.shape == (2, 3, 4)
    np.testing.assert_allclose(pat.mix[0, :2].sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(pat.mix[1].sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(pat.mix[0, 2], 0.0)  # unit 0 has no head 2
    m = 2 * 2 * 49 + 2 * 3 * 49
    assert pat.labels.shape == (m,) and pat.owners.shape == (m, 3) and len(pat.history) == 3
    assert set(pat.labels.tolist()) <= set(range(4))
    assert pat.query.shape == (4,) and ((0 <= pat.query) & (pat.query < 49)).all()
    for u, h in [(0, 1), (1, 2)]:
        mine = pat.labels[(pat.owners[:, 0] == u) & (pat.owners[:, 1] == h)]
        np.testing.assert_allclose(pat.mix[u, h], np.bincount(mine, minlength=4) / len(mine), rtol=1e-12)
    for c in range(4):
        if (pat.labels == c).any():
            counts = np.bincount(pat.owners[pat.labels == c, 2], minlength=49)
            assert counts[pat.query[c]] == counts.max()
