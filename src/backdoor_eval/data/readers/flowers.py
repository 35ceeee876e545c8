"""``flowers``: Kaggle "Flowers Recognition", the image-folder reader at 224 x 224."""

from __future__ import annotations

from ..decode import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from ..download import DEFAULT_CACHE_DIR
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

    def __init__(
        self,
        path: str | None = None,
        url: str | None = None,
        md5: str | None = None,
        size: int | None = DEFAULT_SIZE,
        splits: list[str] | None = None,
        cache_dir: str = DEFAULT_CACHE_DIR,
        workers: int | None = None,
        executor: str = "thread",
        max_image_bytes: int = MAX_IMAGE_BYTES,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ):
        super().__init__(
            path=path,
            url=url,
            md5=md5,
            size=size,
            splits=splits,
            cache_dir=cache_dir,
            workers=workers,
            executor=executor,
            max_image_bytes=max_image_bytes,
            max_image_pixels=max_image_pixels,
        )


__all__ = ["Flowers"]
