"""lib.analyses.localisation: patches cut in row-major order, and the patch embedding, a linear map of
each patch alone, localised position by position with the empty patches masked."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.core import residual
from lib.analyses import localisation

pytestmark = pytest.mark.usefixtures("one_thread")


def test_patches_cut_the_grid_in_row_major_order():
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    ps = localisation.patches(x, 7)
    assert len(ps) == 49 and ps[0].shape == (2, 16)
    torch.testing.assert_close(ps[7 * 2 + 3], x[:, 0, 8:12, 12:16].reshape(2, 16))
    with pytest.raises(ValueError, match="5x5"):
        localisation.patches(x, 5)


def test_patch_embedding_is_localised_and_empty_patches_are_masked(seeded_model, random_images):
    vit, x = seeded_model("vit"), random_images(64)
    x[:, :, :4, :4] = 0.0  # the top-left patch is empty in every image
    (embed,) = localisation.localisation(vit, x, unit_indices=[0], batch_size=32, progress=False)
    assert embed.side == 7 and not embed.valid[0] and embed.valid[1:].all()
    cka = embed.cka
    valid = np.flatnonzero(embed.valid)
    sub = cka[np.ix_(valid, valid)]
    # the embedding of position p is a linear function of patch p alone (plus a constant)
    assert (sub.argmax(axis=1) == np.arange(valid.size)).all()
    assert localisation.localisation_score(cka, embed.valid) > 0.5
    shown = embed.map(0, 0)
    assert shown.mask.all()  # an invalid position shows nothing, not NaN
    assert not np.isnan(embed.map(3, 3).filled(0)).any() and embed.map(3, 3).mask.sum() == 1
    with pytest.raises(ValueError, match="outside"):
        embed.map(7, 0)
    with pytest.raises(ValueError, match="no spatial grid"):
        localisation.localisation(vit, x, unit_indices=[len(residual.units(vit)) - 1], progress=False)
