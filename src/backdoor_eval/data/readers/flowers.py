"""``flowers``: Kaggle "Flowers Recognition", the image-folder reader at 224 x 224."""

from __future__ import annotations

from ..factory import DATASETS
from .image_folder import ImageFolder


@DATASETS.register("flowers")
class Flowers(ImageFolder):
    """Kaggle "Flowers Recognition" (https://www.kaggle.com/alxmamaev/flowers-recognition).

    The image-folder reader with the paper's 224 x 224 size. Kaggle downloads
    need a login, so pass ``path`` to the archive (or its unpacked folder)
    you fetched, or a ``url`` you can reach.
    """

    DEFAULT_SIZE = 224


__all__ = ["Flowers"]
