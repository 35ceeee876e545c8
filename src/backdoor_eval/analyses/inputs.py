"""What an analysis reads of one run: its poisoned data, its trained model and how to feed it.

:class:`AnalysisInputs` is built at the edge (:func:`backdoor_eval.analyses.job.run_analysis`)
from the run's files and handed to :meth:`Analysis.run`. Images reach the
model exactly as in training and evaluation (:class:`backdoor_eval.train.BatchPreparer`:
the model's normalisation and the run's ``input_size``), in eval mode, in
float32 (no autocast: an analysis is cheap beside training, and its numbers
then do not depend on the device's half-precision kernels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class AnalysisInputs:
    data: Any  # backdoor_eval.poison.PoisonedData
    seed: int  # the run's seed
    model: Any = None  # the trained poison-phase Classifier (None for analyses that need no model)
    prepare: Any = None  # backdoor_eval.train.BatchPreparer of the run's settings
    batch_size: int = 256
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def poison_class(self) -> int:
        return int(self.data.poison_class)

    @property
    def poison_rate(self) -> float:
        return float(self.data.manifest["poison_rate"])

    def poison_train_labels(self) -> np.ndarray:
        return np.asarray(self.data.sets["poison_train"][1])

    def poison_train_poisoned(self) -> np.ndarray:
        """Ground truth: which poison-train samples are triggered copies. :func:`backdoor_eval.poison.load_poisoned`
        appends them after the kept images, as many as the overlay manifest records."""
        labels = self.poison_train_labels()
        count = int(self.data.manifest["sets"]["poison_train"]["num_poisoned"])
        poisoned = np.zeros(len(labels), dtype=bool)
        poisoned[len(labels) - count :] = True
        return poisoned

    def _forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(hidden, probabilities)`` of uint8 NHWC ``images``, in batches."""
        import torch

        if self.model is None:
            raise ValueError("this analysis needs the run's model, but none was given (--model-file)")
        self.model.eval()
        hidden, probabilities = [], []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size]))
                h, logits = self.model.forward_hidden(self.prepare(batch))
                hidden.append(h.float().cpu().numpy())
                probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        if not hidden:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(hidden), np.concatenate(probabilities)

    def poison_train_activations(self) -> np.ndarray:
        """Penultimate activations h (Classifier.forward_hidden) of every poison-train image, (n, d) float32."""
        if "poison_train" not in self._cache:
            self._cache["poison_train"] = self._forward(np.asarray(self.data.sets["poison_train"][0]))[0]
        return self._cache["poison_train"]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities of uint8 NHWC ``images``, (n, classes)."""
        return self._forward(np.asarray(images))[1]

    def adv_test_triggered(self) -> np.ndarray:
        """The adversarial-test images with the trigger, exactly as the run's evaluation made them."""
        import torch

        from backdoor_eval.train import triggered_uint8

        images = torch.from_numpy(np.ascontiguousarray(self.data.adv_test_images))
        return triggered_uint8(self.data.trigger, images, self.data.adv_seed).numpy()
