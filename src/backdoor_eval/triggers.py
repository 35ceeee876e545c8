"""Trigger patterns and their embedding (paper section 2.4, eq. 7; docs/decisions.md#trigger-geometry).

Images here are float in [0, 1], shape ``(N, H, W, 3)`` (channels last, as
eq. 7 is written), NumPy arrays or torch tensors. Every trigger produces a
pattern ``T`` and a mask ``m`` (1 where the image is left alone) and is
embedded with eq. 7 followed by a clip to [0, 1]:

    p = ((1 - alpha) x + alpha T(x)) * (1 - m) + x * m

Geometry is given on a 224 x 224 reference canvas and scaled by the image
size (rounded, at least 1 px), so one config draws the same picture at every
resolution; absolute pixels may be given instead (``size_px``, ``offset_px``).

A trigger whose pattern is fitted on the training data says so: its class's
``fitter`` (a :class:`TriggerFit`) makes one fit file per dataset and split,
and everything else (the workflow's ``fit_<name>`` rule, the poison and
gallery commands' ``--<name>-fit`` option, the config's checks) asks
:func:`needs_fit` rather than testing a name. The LV trigger's pattern is
fitted in ``backdoor_eval.lv_fit``; the ``LowVariance`` trigger here loads
and embeds it.

A new trigger is one class here, registered in ``TRIGGERS``, plus a test
(see docs/attack.md; README.md: Add a trigger, Add a fitted trigger).
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from backdoor_eval.hashing import file_digest
from backdoor_eval.lv_fit import LOW_VARIANCE_FIT, LowVarianceFit, load_lv_fit
from backdoor_eval.registry import Registry

REFERENCE_SIZE = 224
LV_READINGS = ("literal", "scaled")

TRIGGERS: Registry[type[Trigger]] = Registry("trigger")


def _is_torch(x: Any) -> bool:
    # Import-free check so NumPy-only users never pay for importing torch.
    return type(x).__module__.startswith("torch")


def validate_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float, or raise if it is not a number in [0, 1].

    The one rule for alpha: the config's checks (a trigger's default, an
    experiment's values) call it too.
    """
    if isinstance(alpha, (bool, str)) or not isinstance(alpha, (int, float, np.number)):
        raise ValueError(f"alpha={alpha!r} is not a number; allowed: a number in [0, 1]")
    value = float(alpha)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"alpha={alpha!r} is outside the allowed range [0, 1]")
    return value


def _number(label: str, value: Any, allowed: str) -> float:
    """``value`` as a float, or a ``ValueError`` naming the parameter (``size='big'``) and what is allowed."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{label}={value!r} is not a number; allowed: {allowed}")
    return float(value)


def _whole_or_none(label: str, value: Any, minimum: int) -> int | None:
    """``value`` as an int (``None`` stays ``None``), or a ``ValueError`` naming the parameter."""
    if value is None:
        return None
    number = _number(label, value, f"a whole number of pixels >= {minimum}")
    if number != int(number) or number < minimum:
        raise ValueError(f"{label}={value!r}; allowed: a whole number of pixels >= {minimum}")
    return int(number)


def embed(images, pattern, mask, alpha: float):
    """Embed a trigger with eq. 7, then clip to [0, 1].

    ``p = ((1 - alpha) x + alpha T) * (1 - m) + x * m``. ``images`` is float
    ``(N, H, W, 3)`` in [0, 1], NumPy or torch; ``pattern`` and ``mask`` are
    broadcastable to it (NumPy arrays are moved to the tensor's device and
    dtype). The result has the type, dtype and device of ``images``.
    """
    alpha = validate_alpha(alpha)
    if _is_torch(images):
        import torch

        if not torch.is_floating_point(images):
            raise ValueError(f"images dtype {images.dtype} is not floating point; allowed: float images in [0, 1]")
        pattern = torch.as_tensor(pattern, dtype=images.dtype, device=images.device)
        mask = torch.as_tensor(mask, dtype=images.dtype, device=images.device)
        blended = (1.0 - alpha) * images + alpha * pattern
        return (blended * (1.0 - mask) + images * mask).clamp_(0.0, 1.0)
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images dtype {images.dtype} is not floating point; allowed: float images in [0, 1]")
    pattern = np.asarray(pattern, dtype=images.dtype)
    mask = np.asarray(mask, dtype=images.dtype)
    # Python-float alpha keeps the images' dtype (NumPy 2 weak scalar promotion).
    blended = (1.0 - alpha) * images + alpha * pattern
    out = blended * (1.0 - mask) + images * mask
    return np.clip(out, 0.0, 1.0, out=out)


def to_uint8(images):
    """Round float images in [0, 1] to 8 bits (uint8), NumPy or torch.

    Poisoned pixels are stored as 8-bit images, as a published poisoned
    dataset would be. Rounding is half-to-even in both libraries.
    """
    if _is_torch(images):
        import torch

        return torch.round(images.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    images = np.asarray(images)
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_float(images_uint8):
    """uint8 images to float32 in [0, 1] (the inverse of :func:`to_uint8` up to rounding)."""
    if _is_torch(images_uint8):
        import torch

        return images_uint8.to(torch.float32) / 255.0
    return np.asarray(images_uint8, dtype=np.float32) / np.float32(255.0)


def apply_uint8(trigger: Trigger, images_uint8, rng: np.random.Generator | None, batch: int = 256):
    """Embed ``trigger`` in uint8 ``(N, H, W, 3)`` images and round back to 8 bits, ``batch`` images at a time.

    The one quantized embedding: the poisoned sets (NumPy, ``backdoor_eval.poison``) and the adversarial
    test set on the training device (torch, ``backdoor_eval.train``) both come from it. Drawing in batches
    gives the same random positions as drawing all at once.
    """
    if _is_torch(images_uint8):
        import torch

        out = torch.empty_like(images_uint8)
    else:
        out = np.empty_like(images_uint8, dtype=np.uint8)
    for start in range(0, len(images_uint8), batch):
        out[start : start + batch] = to_uint8(trigger.apply(to_float(images_uint8[start : start + batch]), rng))
    return out


def scale_reference_px(reference_px: float, size: int) -> int:
    """Pixels on an image of side ``size`` for a length on the 224 reference canvas.

    Rounded half up (not half-to-even, so 0.5 px always grows) and at least 1 px.
    """
    return max(1, int(math.floor(reference_px * size / REFERENCE_SIZE + 0.5)))


class TriggerFit(Protocol):
    """How a fitted trigger's fit is made: one file per dataset and split, before that split's poisoned sets.

    The workflow's ``fit_<name>`` rule runs ``backdoor-eval fit-<name>`` (``backdoor_eval.names.fit_name``), whose
    options are :meth:`options` of the config's fit parameters; the command reads the store and the
    split's partitions and calls :meth:`fit`. The trigger is then built with ``fit=<that file>``.
    """

    help: str  # the fit command's one-line help

    def options(self, **params: Any) -> list[str]:
        """The fit command's options for the fit parameters under ``triggers.<entry>.params`` (the keyword
        parameters this method takes), each checked: a ``ValueError`` naming a bad one."""
        ...

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the options :meth:`options` writes to the fit command."""
        ...

    def fit(
        self,
        images: Any,
        partitions: Mapping[str, Any],
        *,
        split: str,
        seed: int,
        split_keys: Sequence[int],
        args: argparse.Namespace,
        out: str,
    ) -> None:
        """Fit on the store's uint8 ``images`` (N, H, W, 3) and the split's ``partitions``, and write ``out``
        atomically; ``seed`` and ``split_keys`` seed any draw (``backdoor_eval.seeding``)."""
        ...


class Trigger:
    """A trigger: a pattern and mask embedded with eq. 7 at transparency ``alpha``.

    Subclasses set ``name``, ``title`` (its name in tables and figures) and
    ``default_alpha``, implement :meth:`pattern_and_mask` and :meth:`params`
    (the JSON-able constructor arguments other than ``alpha``), and are
    registered in ``TRIGGERS``. A trigger fitted on the training data sets
    ``fitter`` and takes its fit file as the constructor parameter ``fit``.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    default_alpha: ClassVar[float] = 1.0
    fitter: ClassVar[TriggerFit | None] = None

    def __init__(self, alpha: float | None = None):
        self.alpha = self.default_alpha if alpha is None else validate_alpha(alpha)

    def pattern_and_mask(self, n: int, height: int, width: int, rng: np.random.Generator | None):
        """Float32 NumPy ``(pattern, mask)`` broadcastable to ``(n, height, width, 3)``."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """JSON-able constructor arguments besides ``alpha``."""
        return {}

    def spec(self) -> dict[str, Any]:
        """JSON-able description; ``create_trigger(**spec)`` rebuilds the trigger."""
        return {"name": self.name, "alpha": self.alpha, **self.params()}

    def apply(self, images, rng: np.random.Generator | None = None):
        """Embed this trigger in float images ``(N, H, W, 3)`` (eq. 7, then clip).

        NumPy or torch; the same type, dtype and device come back. ``rng``
        feeds triggers with randomness (RS draws one position per image).
        """
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"images have shape {shape}; allowed: (N, H, W, 3) channels-last")
        n, height, width, _ = shape
        pattern, mask = self.pattern_and_mask(n, height, width, rng)
        return embed(images, pattern, mask, self.alpha)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "name")
        return f"{type(self).__name__}({args})"


def _square_geometry(height: int, width: int, size: float, size_px: int | None):
    side = int(size_px) if size_px is not None else scale_reference_px(size, height)
    if not 1 <= side <= min(height, width):
        raise ValueError(
            f"square side {side} px does not fit a {height}x{width} image; allowed: 1..{min(height, width)}"
        )
    return side


@TRIGGERS.register("bs")
class BlackSquare(Trigger):
    """BS: a black square (T = 0), side 22 reference px, 22 px from top and left.

    On a 224 px image that is a 22 px square at (22, 22); on CIFAR-10's 32 px,
    a 3 px square at (3, 3). ``size_px``/``offset_px`` give absolute pixels.
    """

    name = "bs"
    title = "Square"
    default_alpha = 1.0

    def __init__(
        self,
        alpha: float | None = None,
        size: float = 22.0,
        offset: float = 22.0,
        size_px: int | None = None,
        offset_px: int | None = None,
    ):
        super().__init__(alpha)
        for label, value in (("size", size), ("offset", offset)):
            if not _number(label, value, "reference pixels >= 0") >= 0:
                raise ValueError(f"{label}={value!r} is negative; allowed: reference pixels >= 0")
        self.size, self.offset = float(size), float(offset)
        self.size_px = _whole_or_none("size_px", size_px, 0)
        self.offset_px = _whole_or_none("offset_px", offset_px, 0)

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "offset": self.offset, "size_px": self.size_px, "offset_px": self.offset_px}

    def square(self, height: int, width: int) -> tuple[int, int, int]:
        """``(top, left, side)`` in pixels for an image of ``height`` x ``width``."""
        side = _square_geometry(height, width, self.size, self.size_px)
        if self.offset_px is not None:
            top = left = self.offset_px
        else:
            # Offsets of 0 stay 0 (a square in the corner), unlike sizes which are at least 1 px.
            top = 0 if self.offset == 0 else scale_reference_px(self.offset, height)
            left = 0 if self.offset == 0 else scale_reference_px(self.offset, width)
        if top + side > height or left + side > width:
            raise ValueError(
                f"square at ({top}, {left}) of side {side} px leaves a {height}x{width} image; "
                "allowed: offset + side <= image size"
            )
        return top, left, side

    def pattern_and_mask(self, n, height, width, rng=None):
        top, left, side = self.square(height, width)
        mask = np.ones((1, height, width, 1), dtype=np.float32)
        mask[:, top : top + side, left : left + side, :] = 0.0
        return np.zeros((1, 1, 1, 1), dtype=np.float32), mask


@TRIGGERS.register("rs")
class RandomSquare(Trigger):
    """RS: the BS square at a uniformly random position fully inside the image.

    One position per image, drawn from ``rng`` (the run's seed). Positions
    come from ``rng.random`` (one double per coordinate), so drawing in
    batches gives the same positions as drawing all at once.
    """

    name = "rs"
    title = "RS"
    default_alpha = 1.0

    def __init__(self, alpha: float | None = None, size: float = 22.0, size_px: int | None = None):
        super().__init__(alpha)
        if not _number("size", size, "reference pixels >= 0") >= 0:
            raise ValueError(f"size={size!r} is negative; allowed: reference pixels >= 0")
        self.size = float(size)
        self.size_px = _whole_or_none("size_px", size_px, 1)

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "size_px": self.size_px}

    def positions(self, n: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, 2)`` int64 top-left corners, uniform over all positions inside the image."""
        if rng is None:
            raise ValueError("the rs trigger needs rng=np.random.Generator (its position is random); got None")
        side = _square_geometry(height, width, self.size, self.size_px)
        uniform = rng.random((n, 2))
        limits = np.array([height - side + 1, width - side + 1])
        return np.minimum((uniform * limits).astype(np.int64), limits - 1)

    def pattern_and_mask(self, n, height, width, rng=None):
        side = _square_geometry(height, width, self.size, self.size_px)
        corners = self.positions(n, height, width, rng)
        rows = np.arange(height)[None, :]
        cols = np.arange(width)[None, :]
        in_rows = (rows >= corners[:, :1]) & (rows < corners[:, :1] + side)  # (n, H)
        in_cols = (cols >= corners[:, 1:]) & (cols < corners[:, 1:] + side)  # (n, W)
        inside = in_rows[:, :, None] & in_cols[:, None, :]
        mask = (~inside).astype(np.float32)[..., None]
        return np.zeros((1, 1, 1, 1), dtype=np.float32), mask


@TRIGGERS.register("sin")
class Sine(Trigger):
    """SIN: T(i, j) = 0.4 sin(0.05 pi j') on all channels, j' = j * 224 / W; m = 0.

    ``j`` is the 0-based column. T is negative on half the periods; eq. 7 is
    applied as written and the result clipped, so at alpha = 1 those
    columns are black.
    """

    name = "sin"
    title = "Sine"
    default_alpha = 0.1

    def __init__(self, alpha: float | None = None, amplitude: float = 0.4, frequency: float = 0.05):
        super().__init__(alpha)
        self.amplitude = _number("amplitude", amplitude, "a number (the pattern's peak, 0.4 in the paper)")
        self.frequency = _number("frequency", frequency, "a number (0.05 in the paper)")

    def params(self) -> dict[str, Any]:
        return {"amplitude": self.amplitude, "frequency": self.frequency}

    def pattern_and_mask(self, n, height, width, rng=None):
        reference_columns = np.arange(width, dtype=np.float64) * REFERENCE_SIZE / width
        row = self.amplitude * np.sin(self.frequency * np.pi * reference_columns)
        pattern = row.astype(np.float32).reshape(1, 1, width, 1)
        return pattern, np.zeros((1, 1, 1, 1), dtype=np.float32)


# ---------------------------------------------------------------------------
# LV: the low-variance trigger (Tanay et al.), fitted by PCA on poison-train
# in backdoor_eval.lv_fit (docs/decisions.md#low-variance-trigger).


@TRIGGERS.register("lv")
class LowVariance(Trigger):
    """LV: the fitted low-variance pattern over the whole image (m = 0), default alpha 0.5.

    ``fit`` is a :class:`~backdoor_eval.lv_fit.LowVarianceFit` or the path of
    one saved with :func:`backdoor_eval.lv_fit.save_lv_fit`; ``reading`` picks ``"literal"`` (projection plus
    mean, clipped: the default) or ``"scaled"`` (projection alone, min-max
    scaled). ``fit_sha256``, when given, must match the file.
    """

    name = "lv"
    title = "LV"
    default_alpha = 0.5
    fitter = LOW_VARIANCE_FIT

    def __init__(
        self,
        alpha: float | None = None,
        fit: LowVarianceFit | str | os.PathLike | None = None,
        reading: str = "literal",
        fit_sha256: str | None = None,
    ):
        super().__init__(alpha)
        if fit is None:
            raise ValueError("the lv trigger needs fit=<path of an LV fit npz or a LowVarianceFit>; got None")
        if not isinstance(reading, str) or reading not in LV_READINGS:
            raise ValueError(f"reading={reading!r}; allowed: {', '.join(LV_READINGS)}")
        self.reading = reading
        self._fit_sha256 = None
        if isinstance(fit, LowVarianceFit):
            self.fit = fit
        else:
            if fit_sha256 is not None:
                actual = file_digest(fit)
                if actual != fit_sha256:
                    raise ValueError(f"LV fit {fit} has sha256 {actual}, not fit_sha256={fit_sha256}: the file changed")
                self._fit_sha256 = actual
            self.fit = load_lv_fit(fit, with_components=False)

    @property
    def pattern(self) -> np.ndarray:
        return self.fit.pattern if self.reading == "literal" else self.fit.pattern_scaled

    def params(self) -> dict[str, Any]:
        if self.fit.source_path is None:
            raise ValueError("this lv trigger's fit was never saved; save it with save_lv_fit so the spec can name it")
        if self._fit_sha256 is None:  # hashed once: a 224 px fit file is large
            self._fit_sha256 = file_digest(self.fit.source_path)
        return {"fit": self.fit.source_path, "reading": self.reading, "fit_sha256": self._fit_sha256}

    def pattern_and_mask(self, n, height, width, rng=None):
        if (height, width) != self.pattern.shape[:2]:
            raise ValueError(
                f"images are {height}x{width} but the LV fit is {self.pattern.shape[0]}x{self.pattern.shape[1]}; "
                "allowed: the size the fit was made on"
            )
        return self.pattern[None], np.zeros((1, 1, 1, 1), dtype=np.float32)


def needs_fit(kind: str) -> bool:
    """Whether registered trigger ``kind`` is fitted on each split's training data (its class has a ``fitter``)."""
    return TRIGGERS.get(kind).fitter is not None


def fitted_triggers() -> list[str]:
    """The registered triggers that need a fit, in registration order."""
    return [kind for kind in TRIGGERS.in_order() if needs_fit(kind)]


def fitter_of(kind: str) -> TriggerFit:
    """The fit of registered trigger ``kind``; a ``ValueError`` when it needs none."""
    fitter = TRIGGERS.get(kind).fitter
    if fitter is None:
        raise ValueError(f"trigger {kind!r} needs no fit; fitted triggers: {', '.join(fitted_triggers()) or '(none)'}")
    return fitter


def fit_parameters(kind: str) -> list[str]:
    """The config parameters (under ``triggers.<entry>.params``) that set trigger ``kind``'s fit, not the
    trigger itself: the keyword parameters of its fitter's ``options``; none for a trigger without a fit."""
    if not needs_fit(kind):
        return []
    return list(inspect.signature(fitter_of(kind).options).parameters)


def trigger_title(name: str) -> str:
    """How tables and figures name trigger ``name``: its class's ``title``, else the name itself."""
    return (TRIGGERS.get(name).title or name) if name in TRIGGERS else name


def create_trigger(name: str, alpha: float | None = None, **params: Any) -> Trigger:
    """Build a registered trigger (``TRIGGERS.create``); ``create_trigger(**trigger.spec())`` rebuilds one."""
    return TRIGGERS.create(name, alpha=alpha, **params)
