"""Tests for backdoor_eval.triggers: eq. 7, the four triggers' geometry, the lv trigger, registry.

The LV fit itself is tested in test_lv_fit.py; the ``lv_fit`` and ``low_rank_images`` fixtures are in conftest.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backdoor_eval import triggers
from backdoor_eval.lv_fit import LowVarianceFit, fit_low_variance, save_lv_fit
from backdoor_eval.triggers import (
    TRIGGERS,
    BlackSquare,
    RandomSquare,
    apply_uint8,
    create_trigger,
    embed,
    scale_reference_px,
    to_float,
    to_uint8,
)


def random_images(n, height, width, seed=0):
    return np.random.default_rng(seed).random((n, height, width, 3), dtype=np.float32)


def all_triggers(lv_fit, alpha=None):
    return [create_trigger(name, alpha=alpha, **({"fit": lv_fit} if name == "lv" else {})) for name in TRIGGERS]


# --- eq. 7 -----------------------------------------------------------------


def test_registry_holds_the_four_paper_triggers():
    assert TRIGGERS.names() == ["bs", "lv", "rs", "sin"]


def test_embed_is_eq7_then_clip():
    images = random_images(2, 4, 4)
    pattern = np.linspace(-0.5, 1.5, 16, dtype=np.float32).reshape(1, 4, 4, 1)
    mask = (np.arange(16).reshape(1, 4, 4, 1) % 2).astype(np.float32)
    alpha = 0.3
    expected = np.clip(((1 - alpha) * images + alpha * pattern) * (1 - mask) + images * mask, 0, 1)
    np.testing.assert_allclose(embed(images, pattern, mask, alpha), expected, atol=1e-7)
    # Pixels with m = 1 are the original, bit for bit.
    out = embed(images, pattern, mask, alpha)
    keep = np.broadcast_to(mask == 1, images.shape)
    np.testing.assert_array_equal(out[keep], images[keep])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embed_keeps_numpy_dtype(dtype):
    images = random_images(1, 3, 3).astype(dtype)
    out = embed(images, np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.float32), 0.5)
    assert isinstance(out, np.ndarray) and out.dtype == dtype
    np.testing.assert_allclose(out, images * 0.5, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_embed_keeps_torch_type_dtype_device(dtype):
    images = torch.rand(2, 3, 3, 3, dtype=dtype)
    out = embed(images, np.ones((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.float32), 0.25)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.device == images.device
    torch.testing.assert_close(out, 0.75 * images + 0.25)


def test_embed_rejects_integer_images():
    with pytest.raises(ValueError, match="not floating point"):
        embed(np.zeros((1, 2, 2, 3), np.uint8), 0.0, 0.0, 1.0)


@pytest.mark.parametrize("alpha", [-0.01, 1.01, float("nan"), "half"])
def test_alpha_outside_unit_interval_is_an_error(alpha):
    for name in ("bs", "rs", "sin"):
        with pytest.raises(ValueError, match="alpha"):
            create_trigger(name, alpha=alpha)


def test_default_alphas_follow_the_paper(lv_fit):
    assert {t.name: t.alpha for t in all_triggers(lv_fit)} == {"bs": 1.0, "rs": 1.0, "sin": 0.1, "lv": 0.5}


def test_alpha_zero_leaves_every_image_unchanged(lv_fit):
    images = random_images(3, 6, 5)
    for trigger in all_triggers(lv_fit, alpha=0.0):
        out = trigger.apply(images, np.random.default_rng(0))
        np.testing.assert_array_equal(out, images, err_msg=trigger.name)


# --- BS / RS ---------------------------------------------------------------


@pytest.mark.parametrize("size, top_left, side", [(224, 22, 22), (32, 3, 3), (64, 6, 6), (299, 29, 29)])
def test_bs_square_scales_from_the_reference_canvas(size, top_left, side):
    assert BlackSquare().square(size, size) == (top_left, top_left, side)


def test_scale_reference_px_rounds_half_up_with_a_minimum_of_one():
    assert scale_reference_px(22, 224) == 22
    assert scale_reference_px(22, 32) == 3  # 3.14
    assert scale_reference_px(1, 16) == 1  # 0.07 -> at least 1 px
    assert scale_reference_px(7, 32) == 1  # exactly 1.0
    assert scale_reference_px(3.5, 224) == 4  # half up, not to even


@pytest.mark.parametrize("size, top, side", [(224, 22, 22), (32, 3, 3)])
def test_bs_at_alpha_one_blackens_exactly_the_square(size, top, side):
    images = random_images(2, size, size) * 0.9 + 0.05  # no pixel is already 0
    out = BlackSquare().apply(images)
    inside = np.zeros(images.shape, dtype=bool)
    inside[:, top : top + side, top : top + side, :] = True
    assert (out[inside] == 0).all()
    np.testing.assert_array_equal(out[~inside], images[~inside])


def test_bs_absolute_pixels_override_reference_geometry():
    trigger = BlackSquare(size_px=5, offset_px=0)
    assert trigger.square(32, 32) == (0, 0, 5)
    out = trigger.apply(np.ones((1, 32, 32, 3), np.float32))
    assert out[0, :5, :5].sum() == 0 and out.sum() == 32 * 32 * 3 - 25 * 3


def test_bs_square_that_leaves_the_image_is_an_error():
    with pytest.raises(ValueError, match="leaves"):
        BlackSquare(offset_px=30).apply(np.ones((1, 32, 32, 3), np.float32))


def test_rs_square_stays_inside_and_moves_between_images():
    size, side, n = 32, 3, 500
    images = np.ones((n, size, size, 3), np.float32)
    out = RandomSquare().apply(images, np.random.default_rng(1))
    black = out[..., 0] == 0
    assert (black.sum(axis=(1, 2)) == side * side).all()  # the whole square, so fully inside
    rows = black.any(axis=2).argmax(axis=1)
    cols = black.any(axis=1).argmax(axis=1)
    corners = set(zip(rows.tolist(), cols.tolist()))
    assert len(corners) > n // 2  # positions differ between images
    # Every position inside is reachable, including both edges.
    assert rows.min() == 0 and rows.max() == size - side and cols.min() == 0 and cols.max() == size - side
    np.testing.assert_array_equal(out[..., 0] == 0, out[..., 2] == 0)  # all channels alike


def test_rs_positions_are_seeded_and_independent_of_batching():
    trigger = RandomSquare()
    whole = trigger.positions(100, 224, 224, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    batched = np.concatenate([trigger.positions(n, 224, 224, rng) for n in (30, 30, 40)])
    np.testing.assert_array_equal(whole, batched)
    assert not np.array_equal(whole, trigger.positions(100, 224, 224, np.random.default_rng(8)))


def test_rs_without_rng_is_an_error():
    with pytest.raises(ValueError, match="rng"):
        RandomSquare().apply(np.ones((1, 8, 8, 3), np.float32))


# --- SIN -------------------------------------------------------------------


@pytest.mark.parametrize("width", [224, 32])
def test_sin_at_alpha_one_is_the_clipped_formula(width):
    images = random_images(2, 4, width)
    out = create_trigger("sin", alpha=1.0).apply(images)
    columns = np.arange(width) * 224 / width
    raw = 0.4 * np.sin(0.05 * np.pi * columns)
    np.testing.assert_allclose(out, np.broadcast_to(np.clip(raw, 0, 1)[None, None, :, None], out.shape), atol=1e-7)
    negative = raw < 0  # columns 20 < j' < 40 on the reference canvas, and so on
    assert negative.any() and (out[:, :, negative, :] == 0).all()


def test_sin_at_default_alpha_blends_a_negative_pattern_then_clips():
    images = random_images(1, 3, 224)
    out = create_trigger("sin").apply(images)
    pattern = 0.4 * np.sin(0.05 * np.pi * np.arange(224))[None, None, :, None]
    np.testing.assert_allclose(out, np.clip(0.9 * images + 0.1 * pattern, 0, 1), atol=1e-6)
    assert (pattern < 0).any()


# --- LV (the fit itself: test_lv_fit.py) -----------------------------------


def test_lv_scaled_reading_applies_the_scaled_pattern(lv_fit):
    trigger = create_trigger("lv", alpha=1.0, fit=lv_fit, reading="scaled")
    np.testing.assert_allclose(trigger.apply(random_images(1, 6, 5))[0], lv_fit.pattern_scaled, atol=1e-7)


def test_lv_trigger_loads_its_fit_without_components(lv_fit, tmp_path):
    path = tmp_path / "lv.npz"
    save_lv_fit(path, lv_fit)
    assert create_trigger("lv", fit=str(path)).fit.components is None


def test_lv_spec_names_the_fit_file_and_detects_changes(lv_fit, low_rank_images, tmp_path):
    path = tmp_path / "lv.npz"
    save_lv_fit(path, lv_fit)
    trigger = create_trigger("lv", fit=str(path))
    spec = json.loads(json.dumps(trigger.spec()))
    rebuilt = create_trigger(**spec)
    np.testing.assert_array_equal(rebuilt.pattern, lv_fit.pattern)
    other = fit_low_variance(low_rank_images(n=41, seed=5)[:40], low_rank_images(n=41, seed=5)[40])
    save_lv_fit(path, other)
    with pytest.raises(ValueError, match="sha256"):
        create_trigger(**spec)


def test_lv_input_errors(lv_fit):
    with pytest.raises(ValueError, match="fit"):
        create_trigger("lv")
    with pytest.raises(ValueError, match="reading"):
        create_trigger("lv", fit=lv_fit, reading="sideways")
    with pytest.raises(ValueError, match="6x5"):
        create_trigger("lv", fit=lv_fit).apply(random_images(1, 8, 8))
    with pytest.raises(ValueError, match="never saved"):
        create_trigger("lv", fit=LowVarianceFit(**{**vars(lv_fit), "source_path": None})).spec()


# --- all triggers ----------------------------------------------------------


def test_torch_and_numpy_give_the_same_images(lv_fit):
    images = random_images(4, 6, 5)
    for trigger in all_triggers(lv_fit, alpha=0.7):
        out_np = trigger.apply(images, np.random.default_rng(3))
        out_torch = trigger.apply(torch.from_numpy(images), np.random.default_rng(3))
        assert isinstance(out_torch, torch.Tensor)
        np.testing.assert_allclose(out_torch.numpy(), out_np, atol=1e-6, err_msg=trigger.name)


def test_one_quantized_embedding_for_numpy_and_torch_in_any_batches(lv_fit):
    images = np.random.default_rng(1).integers(0, 256, (7, 6, 5, 3), dtype=np.uint8)
    for trigger in all_triggers(lv_fit, alpha=0.7):
        whole = apply_uint8(trigger, images, np.random.default_rng(3), batch=7)
        assert whole.dtype == np.uint8
        np.testing.assert_array_equal(apply_uint8(trigger, images, np.random.default_rng(3), batch=2), whole)
        on_torch = apply_uint8(trigger, torch.from_numpy(images), np.random.default_rng(3), batch=3)
        assert on_torch.dtype == torch.uint8
        np.testing.assert_array_equal(on_torch.numpy(), whole, err_msg=trigger.name)
        # Rounded as an 8-bit image file stores it (half to even), as the engine did before.
        expected = torch.from_numpy(np.asarray(trigger.apply(images / np.float32(255), np.random.default_rng(3))))
        np.testing.assert_array_equal(whole, (expected.float() * 255.0).round().clamp(0, 255).to(torch.uint8).numpy())
    assert to_uint8(torch.tensor([0.0, 0.5 / 255, 1.5 / 255, 0.999, 1.2, -0.1])).tolist() == [0, 0, 2, 255, 255, 0]


def test_spec_is_json_and_rebuilds_the_same_trigger():
    for name in ("bs", "rs", "sin"):
        trigger = create_trigger(name, alpha=0.3)
        spec = json.loads(json.dumps(trigger.spec()))
        assert spec["name"] == name and spec["alpha"] == 0.3
        assert create_trigger(**spec).spec() == spec
    assert create_trigger("bs", size_px=4).spec()["size_px"] == 4


def test_unknown_trigger_and_parameter_are_clear_errors():
    with pytest.raises(ValueError, match=r"^unknown trigger 'checkerboard'; registered triggers: bs, lv, rs, sin$"):
        create_trigger("checkerboard")
    with pytest.raises(ValueError, match=r"^trigger 'bs' has no parameter 'radius'; allowed: alpha, size, offset"):
        create_trigger("bs", radius=3)


def test_apply_rejects_channels_first():
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        BlackSquare().apply(np.ones((1, 3, 32, 32), np.float32))


def test_to_uint8_rounds_and_clips_in_numpy_and_torch():
    values = np.array([0.0, 1.0, 0.5, 1.4 / 255, 1.6 / 255, -0.2, 1.3], dtype=np.float32)
    expected = np.array([0, 255, 128, 1, 2, 0, 255], dtype=np.uint8)  # 127.5 -> 128 (half to even)
    np.testing.assert_array_equal(to_uint8(values), expected)
    np.testing.assert_array_equal(to_uint8(torch.from_numpy(values)).numpy(), expected)
    every = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8(to_float(every)), every)  # uint8 -> float -> uint8 is lossless


# --------------------------------------------------------------------------- fitted triggers


def test_a_trigger_that_needs_a_fit_says_so_in_its_class():
    assert triggers.fitted_triggers() == ["lv"]
    assert triggers.needs_fit("lv") and not any(triggers.needs_fit(kind) for kind in ("bs", "rs", "sin"))
    assert triggers.fit_parameters("lv") == ["variance_fraction", "save_components"]
    assert triggers.fit_parameters("sin") == []
    assert triggers.fitter_of("lv").options(variance_fraction=0.005, save_components=False) == [
        "--variance-fraction",
        "0.005",
        "--no-components",
    ]
    with pytest.raises(ValueError, match=r"^trigger 'bs' needs no fit; fitted triggers: lv$"):
        triggers.fitter_of("bs")
    with pytest.raises(ValueError, match=r"^variance_fraction=1\.0; allowed: a number in \(0, 1\)$"):
        triggers.fitter_of("lv").options(variance_fraction=1.0)


def test_a_new_fitted_trigger_is_one_class_and_its_fit(fitted_toy):
    assert triggers.fitted_triggers() == ["lv", fitted_toy.NAME]
    assert triggers.fit_parameters(fitted_toy.NAME) == ["shade"]
    assert triggers.trigger_title(fitted_toy.NAME) == "Mean image"
    assert triggers.TRIGGERS.in_order() == ["bs", "rs", "sin", "lv", fitted_toy.NAME]


def test_titles_name_the_paper_triggers():
    assert [triggers.trigger_title(kind) for kind in triggers.TRIGGERS.in_order()] == ["Square", "RS", "Sine", "LV"]
    assert triggers.trigger_title("lv_scaled") == "lv_scaled"  # a config entry's own name: as-is
