"""Tests for backdoor_eval.models.nasnet_mobile: NASNet-A Mobile from timm's NASNet cells, its timm registration
and Cadene's checkpoint."""

from __future__ import annotations

import json

import timm
import torch

from backdoor_eval.models import create_model
from backdoor_eval.models.nasnet_mobile import (
    CADENE_NASNET_MOBILE_URL,
    NASNetAMobile,
    convert_cadene_nasnet_mobile_state_dict,
)
from model_fixtures import CADENE_LOGITS, cadene_reference, one_thread, random_cadene_state_dict  # noqa: F401


def test_full_nasnet_mobile_has_the_published_size():
    model = create_model("nasnet_mobile", num_classes=1000)
    num_parameters = sum(p.numel() for p in model.parameters())
    assert num_parameters == 5_289_978
    assert abs(num_parameters - 5.3e6) / 5.3e6 < 0.02
    assert model.num_features == 1056
    backbone = model.backbone
    assert backbone.conv0.conv.out_channels == 32
    assert [n for n in backbone.layer_names if n.startswith("cell_")] == [f"cell_{i}" for i in range(12)]
    assert backbone.layer_names.index("reduction_cell_0") == 4
    assert backbone.layer_names.index("reduction_cell_1") == 9
    assert backbone.cell_0.conv_1x1.conv.out_channels == 44  # 1056 / 24 filters in the first stage


def test_nasnet_mobile_is_registered_with_timm():
    assert timm.is_model("nasnetamobile")
    model = timm.create_model("nasnetamobile", num_classes=7, cells_per_stage=1, num_features=96, stem_size=8)
    assert isinstance(model, NASNetAMobile)
    assert model.pretrained_cfg["url"] == CADENE_NASNET_MOBILE_URL
    assert model.pretrained_cfg["label_offset"] == 1
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_cadene_mapping_covers_every_checkpoint_key_with_identical_shapes():
    reference = cadene_reference()
    assert len(reference) == 1318
    model = NASNetAMobile(num_classes=1001)
    own_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = convert_cadene_nasnet_mobile_state_dict({k: torch.empty(s) for k, s in reference}, model)
    assert len(mapped) == len(reference)  # one-to-one
    assert {k: tuple(v.shape) for k, v in mapped.items()} == own_shapes
    # only the cell numbering changes: Cadene's 0-3, 6-9, 12-15 become 0-11
    renamed = {k: m for k, m in zip((k for k, _ in reference), mapped) if k != m}
    assert {k.split(".")[0] for k in renamed} == {f"cell_{i}" for i in (6, 7, 8, 9, 12, 13, 14, 15)}


def test_cadene_state_dict_loads_and_reproduces_the_tensors():
    cadene = random_cadene_state_dict(seed=1)
    model = NASNetAMobile(num_classes=1001)
    model.load_state_dict(convert_cadene_nasnet_mobile_state_dict(cadene, model), strict=True)
    loaded = model.state_dict()
    assert torch.equal(loaded["cell_4.conv_1x1.conv.weight"], cadene["cell_6.conv_1x1.conv.weight"])
    assert torch.equal(
        loaded["cell_11.comb_iter_4_left.bn_sep_2.running_var"], cadene["cell_15.comb_iter_4_left.bn_sep_2.running_var"]
    )
    converted = convert_cadene_nasnet_mobile_state_dict(cadene, model)
    assert all(torch.equal(loaded[k], v) for k, v in converted.items())


def test_cadene_mapping_handles_old_and_wrapped_checkpoints():
    cadene = random_cadene_state_dict(seed=2)
    old = {f"module.{k}": v for k, v in cadene.items() if not k.endswith("num_batches_tracked")}
    model = NASNetAMobile(num_classes=1001)
    converted = convert_cadene_nasnet_mobile_state_dict(old, model)
    model.load_state_dict(converted, strict=True)
    assert int(model.state_dict()["conv0.bn.num_batches_tracked"]) == 0
    # already converted: unchanged
    again = convert_cadene_nasnet_mobile_state_dict(converted, model)
    assert again.keys() == converted.keys()


def test_nasnet_mobile_loads_a_cadene_checkpoint_file_with_a_fresh_head(tmp_path):
    cadene = random_cadene_state_dict(seed=3)
    path = tmp_path / "nasnetamobile-7e03cead.pth"
    torch.save(cadene, path)
    torch.manual_seed(0)
    model = create_model("nasnet_mobile", num_classes=5, pretrained=True, weights=path)
    backbone_state = model.backbone.state_dict()
    assert torch.equal(backbone_state["cell_9.conv_prev_1x1.conv.weight"], cadene["cell_13.conv_prev_1x1.conv.weight"])
    assert torch.equal(backbone_state["conv0.conv.weight"], cadene["conv0.conv.weight"])
    assert model.head.weight.shape == (5, 1056)
    # even with 1001 classes the head is new, not the checkpoint's
    model_1001 = create_model("nasnet_mobile", num_classes=1001, pretrained=True, weights=str(path))
    assert not torch.equal(model_1001.head.weight, cadene["last_linear.weight"])


def test_nasnet_mobile_computes_what_the_cadene_model_computes():
    """Same weights, same input: the logits of Cadene's NASNetAMobile (tests/data), to float rounding.

    At 224 px against its own forward; at 32 px against its features averaged over the 1x1 map.
    """
    reference = json.loads(CADENE_LOGITS.read_text())
    model = NASNetAMobile(num_classes=1001)
    cadene = random_cadene_state_dict(seed=reference["weights_seed"])
    model.load_state_dict(convert_cadene_nasnet_mobile_state_dict(cadene, model))
    model.eval()
    for size, expected in reference["logits"].items():
        generator = torch.Generator().manual_seed(reference["input_seed"])
        images = torch.randn(2, 3, int(size), int(size), generator=generator)
        with torch.no_grad():
            logits = model(images)[:, reference["classes"]]
        torch.testing.assert_close(logits, torch.tensor(expected), atol=1e-4, rtol=1e-4)
