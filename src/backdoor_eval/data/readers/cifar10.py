"""``cifar10``: the official pickled batches, read from the tar.gz without extracting."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from backdoor_eval.hashing import file_digest

from ..download import DEFAULT_CACHE_DIR, RemoteArchive, archive_path, check_md5, check_md5_param, download
from ..factory import DATASETS
from ..store import RawDataset


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches while refusing every global but NumPy's array rebuilders.

    A downloaded pickle could otherwise run arbitrary code.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"  # NumPy 2 name; avoids the deprecation shim
        return super().find_class(module, name)


@DATASETS.register("cifar10")
class Cifar10:
    """CIFAR-10 from the official ``cifar-10-python.tar.gz``, train and test pooled (docs/decisions.md#datasets).

    ``path``: a local copy of the archive; otherwise it is downloaded from
    ``url`` into ``cache_dir``. ``md5``: expected checksum (``None`` skips it).
    Images are in the official order: ``data_batch_1`` .. ``data_batch_5``
    (50,000) then ``test_batch`` (10,000).
    """

    URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    MD5 = "c58f30108f718f92721af3b95e74349a"
    FOLDER = "cifar-10-batches-py"
    TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
    TEST_BATCHES = ("test_batch",)

    def __init__(
        self,
        path: str | None = None,
        url: str = URL,
        md5: str | None = MD5,
        cache_dir: str = DEFAULT_CACHE_DIR,
    ):
        if path is None and not url:
            raise ValueError("cifar10 needs `path` (a local cifar-10-python.tar.gz) or `url`")
        self.path, self.url, self.md5, self.cache_dir = path, url, check_md5_param(md5), cache_dir
        self.params = {
            "path": None if path is None else str(path),
            "url": url,
            "md5": self.md5,
            "cache_dir": str(cache_dir),
        }

    def remote_archive(self) -> RemoteArchive | None:
        """The archive :meth:`load` downloads (``None`` with a local ``path``), for the workflow's fetch rule."""
        if self.path is not None:
            return None
        return RemoteArchive(self.url, self.md5, archive_path(self.url, self.cache_dir))

    def known_class_counts(self) -> list[int] | None:
        """6,000 images per class in the official archive (checked by its md5); unknown for any other."""
        return [6000] * 10 if self.md5 == self.MD5 else None

    def load(self, progress: bool = True) -> RawDataset:
        if self.path is not None:
            archive = Path(self.path)
            if not archive.is_file():
                raise ValueError(
                    f"cifar10 path {str(archive)!r} does not exist or is not a file; expected cifar-10-python.tar.gz"
                )
            archive_md5 = check_md5(archive, self.md5)
        else:
            archive = download(self.url, self.cache_dir, self.md5, progress)
            archive_md5 = file_digest(archive, "md5")
        batches: dict[str, dict[str, Any]] = {}
        try:
            tar = tarfile.open(archive, "r:*")  # noqa: SIM115 -- closed by the `with tar:` below, after the error check
        except tarfile.TarError as exc:
            raise ValueError(f"{archive} is not a tar archive ({exc}); expected cifar-10-python.tar.gz") from None
        with tar:
            for batch in (*self.TRAIN_BATCHES, *self.TEST_BATCHES, "batches.meta"):
                member = f"{self.FOLDER}/{batch}"
                try:
                    fh = tar.extractfile(member)
                except KeyError:
                    fh = None
                if fh is None:
                    raise ValueError(f"{archive} has no file {member!r}; is it the CIFAR-10 python archive?")
                try:
                    with fh:
                        raw = _ArrayUnpickler(fh, encoding="bytes").load()
                    if not isinstance(raw, dict):
                        raise pickle.UnpicklingError(f"expected a dict, got {type(raw).__name__}")
                except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
                    raise ValueError(f"{member!r} in {archive} is not a CIFAR-10 python batch: {exc}") from None
                batches[batch] = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
                required = ("label_names",) if batch == "batches.meta" else ("data", "labels")
                if missing := [k for k in required if k not in batches[batch]]:
                    raise ValueError(f"{member!r} in {archive} lacks {missing}; is it the CIFAR-10 python archive?")
        images, labels = [], []
        for batch in (*self.TRAIN_BATCHES, *self.TEST_BATCHES):
            data = np.asarray(batches[batch]["data"], dtype=np.uint8)
            # Rows are 1024 red, 1024 green, 1024 blue values of a 32 x 32 image.
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batches[batch]["labels"], dtype=np.int64))
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in batches["batches.meta"]["label_names"]]
        source = {
            "kind": "cifar10-python",
            "archive": str(archive),
            "url": None if self.path is not None else self.url,
            "md5": archive_md5,
            "pooled": [*self.TRAIN_BATCHES, *self.TEST_BATCHES],
            "split_counts": {
                "train": int(sum(len(batches[b]["labels"]) for b in self.TRAIN_BATCHES)),
                "test": int(sum(len(batches[b]["labels"]) for b in self.TEST_BATCHES)),
            },
        }
        return RawDataset(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), class_names, source)


__all__ = ["Cifar10"]
