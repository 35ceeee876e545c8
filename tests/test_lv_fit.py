"""Tests for backdoor_eval.lv_fit: the LV trigger's PCA fit, its backends and the fit file.

The ``lv_fit`` and ``low_rank_images`` fixtures are in conftest.py (test_triggers.py uses them too).
"""

from __future__ import annotations

import numpy as np
import pytest

from backdoor_eval.lv_fit import fit_low_variance, load_lv_fit, save_lv_fit


def test_lv_chooses_the_fewest_trailing_components_reaching_the_fraction(lv_fit):
    ratios = lv_fit.explained_variance_ratio
    assert ratios.sum() >= 0.005
    assert ratios.sum() - ratios.max() < 0.005  # dropping the largest chosen one falls short
    assert np.all(np.diff(ratios) <= 0)  # ordered by variance, highest first
    k = len(ratios)
    np.testing.assert_array_equal(
        lv_fit.component_indices, np.arange(lv_fit.total_components - k, lv_fit.total_components)
    )
    assert lv_fit.components.shape == (k, 6 * 5 * 3)


def test_lv_ratios_match_an_independent_eigendecomposition(lv_fit, low_rank_images):
    images = low_rank_images(n=41)[:40].reshape(40, -1).astype(np.float64) / 255
    centred = images - images.mean(axis=0)
    eigenvalues = np.sort(np.linalg.eigvalsh(centred @ centred.T))[::-1][: lv_fit.total_components]
    all_ratios = eigenvalues / eigenvalues.sum()
    assert lv_fit.total_components == 39  # rank of 40 centred images
    np.testing.assert_allclose(lv_fit.explained_variance_ratio, all_ratios[lv_fit.component_indices], rtol=1e-3)


def test_lv_pattern_lies_in_the_span_of_the_chosen_components_plus_mean(lv_fit):
    components = lv_fit.components.astype(np.float64)
    np.testing.assert_allclose(components @ components.T, np.eye(len(components)), atol=1e-5)  # orthonormal
    projection = lv_fit.projection.reshape(-1).astype(np.float64)
    np.testing.assert_allclose(components.T @ (components @ projection), projection, atol=1e-6)
    # It is the projection of the reference, and here clipping is inactive: pattern = projection + mean.
    reference = lv_fit.reference.reshape(-1) / 255 - lv_fit.mean
    np.testing.assert_allclose(projection, components.T @ (components @ reference), atol=1e-6)
    unclipped = projection + lv_fit.mean
    assert unclipped.min() > 0 and unclipped.max() < 1
    np.testing.assert_allclose(lv_fit.pattern.reshape(-1), unclipped, atol=1e-6)


def test_lv_scaled_pattern_is_the_projection_min_max_scaled(lv_fit):
    scaled = lv_fit.pattern_scaled
    assert scaled.min() == 0 and scaled.max() == pytest.approx(1, abs=1e-6)
    p = lv_fit.projection
    np.testing.assert_allclose(scaled, (p - p.min()) / (p.max() - p.min()), atol=1e-6)


@pytest.mark.parametrize("n, height", [(40, 6), (60, 2)])  # N < D (Gram matrix) and N > D (scatter matrix)
def test_lv_backends_agree(n, height, low_rank_images):
    images = low_rank_images(n=n + 1, height=height)
    fits = {b: fit_low_variance(images[:n], images[n], backend=b) for b in ("gram", "numpy", "torch")}
    assert fits["gram"].total_components == min(n - 1, height * 5 * 3)
    for backend in ("numpy", "torch"):
        np.testing.assert_array_equal(fits[backend].component_indices, fits["gram"].component_indices)
        np.testing.assert_allclose(
            fits[backend].explained_variance_ratio, fits["gram"].explained_variance_ratio, rtol=1e-3
        )
        np.testing.assert_allclose(fits[backend].pattern, fits["gram"].pattern, atol=1e-5)  # component signs may differ
    with pytest.raises(ValueError, match="backend 'lapack' is unknown"):
        fit_low_variance(images[:n], images[n], backend="lapack")


def test_lv_fit_roundtrips_through_npz(lv_fit, tmp_path):
    path = tmp_path / "lv.npz"
    save_lv_fit(path, lv_fit, reference_index=np.int64(3))
    loaded = load_lv_fit(path)
    for field in ("pattern", "pattern_scaled", "components", "mean", "explained_variance_ratio", "component_indices"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(lv_fit, field))
    assert loaded.total_components == lv_fit.total_components and loaded.source_path == str(path)
    assert int(np.load(path)["reference_index"]) == 3
    light = load_lv_fit(path, with_components=False)  # what the lv trigger loads: no (k, D) block
    assert light.components is None and np.array_equal(light.pattern, lv_fit.pattern)
    with pytest.raises(ValueError, match="without its components"):
        save_lv_fit(tmp_path / "again.npz", light)


def test_lv_fit_input_errors(low_rank_images):
    with pytest.raises(ValueError, match="variance_fraction"):
        fit_low_variance(low_rank_images(n=5), low_rank_images(n=1)[0], variance_fraction=1.5)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_a_corrupt_lv_fit_file_is_named_with_how_to_rebuild_it(lv_fit, tmp_path, damage):
    path = tmp_path / "lv_fit.npz"
    save_lv_fit(path, lv_fit)
    if damage == "garbage":
        path.write_bytes(b"\x00not an npz\xff" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        np.savez(path, pattern=lv_fit.pattern)  # an npz, but not a whole fit
    with pytest.raises(ValueError) as info:
        load_lv_fit(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a readable LV fit file (") and "--forcerun fit_lv" in message
    if damage == "foreign":
        assert "arrays ['pattern_scaled'," in message
