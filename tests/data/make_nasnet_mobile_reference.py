"""Regenerate the NASNet-A Mobile reference files from Cadene's pretrainedmodels (not a project dependency).

    pip install --target /tmp/pm pretrainedmodels --no-deps
    .venv/bin/python tests/data/make_nasnet_mobile_reference.py /tmp/pm

Writes, next to this script:
- nasnet_mobile_cadene_state_dict_shapes.json: (key, shape) of NASNetAMobile(num_classes=1001),
  the layout of the public checkpoint nasnetamobile-7e03cead.pth (no weights are downloaded);
- nasnet_mobile_cadene_reference_logits.json: Cadene's model loaded with the seeded random
  tensors of tests/model_fixtures.py::random_cadene_state_dict, its eval-mode logits for a seeded
  input at 224 px (its own forward) and 32 px (its features, ReLU, mean over the map: its fixed
  7x7 average pool cannot run on the 1x1 map that 32 px gives), for every 25th class.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from backdoor_eval.io import write_json

HERE = Path(__file__).resolve().parent
CHECKPOINT_URL = "http://data.lip6.fr/cadene/pretrainedmodels/nasnetamobile-7e03cead.pth"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(pretrainedmodels_root: str) -> None:
    # the module file alone: the package __init__ imports extra dependencies
    cadene = _load("cadene_nasnet_mobile", Path(pretrainedmodels_root) / "pretrainedmodels/models/nasnet_mobile.py")
    model = cadene.NASNetAMobile(num_classes=1001)
    write_json(
        HERE / "nasnet_mobile_cadene_state_dict_shapes.json",
        {
            "source": "pretrainedmodels 0.7.4, pretrainedmodels/models/nasnet_mobile.py, "
            "NASNetAMobile(num_classes=1001).state_dict()",
            "checkpoint": CHECKPOINT_URL,
            "torch": torch.__version__,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "state_dict": [[k, list(v.shape)] for k, v in model.state_dict().items()],
        },
    )

    fixtures = _load("model_fixtures", HERE.parent / "model_fixtures.py")
    weights_seed, input_seed = 5, 0
    model.load_state_dict(fixtures.random_cadene_state_dict(seed=weights_seed))
    model.eval()
    logits = {}
    with torch.no_grad():
        for size in (224, 32):
            images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(input_seed))
            if size == 224:
                logits[str(size)] = model(images)
            else:
                features = model.relu(model.features(images))
                logits[str(size)] = model.last_linear(features.mean((2, 3)))
    write_json(
        HERE / "nasnet_mobile_cadene_reference_logits.json",
        {
            "source": "pretrainedmodels 0.7.4 NASNetAMobile(num_classes=1001), eval mode",
            "weights_seed": weights_seed,
            "input_seed": input_seed,
            "input": "torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(input_seed))",
            "classes": list(range(0, 1001, 25)),  # a sample of the 1001 outputs keeps the file small
            "logits": {size: value[:, ::25].tolist() for size, value in logits.items()},
        },
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/pm")
