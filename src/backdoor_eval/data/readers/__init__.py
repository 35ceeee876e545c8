"""The dataset readers, one module per dataset; importing this package registers them all in ``DATASETS``.

Adding a dataset is one module here: a class decorated with
``@DATASETS.register("<name>")`` whose ``load(progress)`` returns a
``RawDataset``, plus its import line below.
"""

from __future__ import annotations

from .cifar10 import Cifar10
from .flowers import Flowers
from .image_folder import ImageFolder
from .synthetic import Synthetic, make_synthetic

__all__ = ["Cifar10", "Flowers", "ImageFolder", "Synthetic", "make_synthetic"]
