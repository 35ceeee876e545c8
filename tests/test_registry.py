"""One registry per concept: names and parameters checked the same way, with one wording, for every concept."""

from __future__ import annotations

import pytest

from backdoor_eval.data import DATASETS, Flowers, ImageFolder
from backdoor_eval.models import MODELS
from backdoor_eval.registry import Registry, params_error_key
from backdoor_eval.regularizers import REGULARIZERS
from backdoor_eval.train import OPTIMIZERS
from backdoor_eval.triggers import TRIGGERS

ALL = {"dataset": DATASETS, "model": MODELS, "trigger": TRIGGERS, "regularizer": REGULARIZERS, "optimizer": OPTIMIZERS}


@pytest.fixture
def things() -> Registry:
    registry: Registry = Registry("thing")

    @registry.register("square")
    class Square:
        def __init__(self, side: int = 1, colour: str = "black"):
            self.side, self.colour = side, colour

    @registry.register("open")
    def open_builder(size: int, **anything):
        return size, anything

    return registry


def test_create_checks_the_name_and_the_parameters_against_the_signature(things):
    assert things.create("square", side=3).side == 3
    assert things.parameters("square") == ["side", "colour"]
    with pytest.raises(ValueError, match=r"^thing 'square' has no parameter 'radius'; allowed: side, colour$"):
        things.create("square", radius=2)
    with pytest.raises(ValueError, match=r"^unknown thing 'circle'; registered things: open, square$"):
        things.create("circle")
    # **kwargs: anything goes through (the builder is the judge).
    assert things.parameters("open") is None
    assert things.create("open", size=2, extra=1) == (2, {"extra": 1})
    with pytest.raises(ValueError, match="already registered"):
        things.register("square")(object)


@pytest.mark.parametrize("kind", list(ALL))
def test_every_concept_words_an_unknown_name_the_same_way(kind):
    with pytest.raises(ValueError, match=rf"^unknown {kind} 'nope'; registered {kind}s: "):
        ALL[kind].create("nope")


def test_every_concepts_unknown_parameter_is_worded_the_same_way():
    cases = {
        "dataset": ("synthetic", {"colour": 1}),
        "trigger": ("bs", {"radius": 1}),
        "regularizer": ("snnl", {"radius": 1}),
        "optimizer": ("adam", {"radius": 1}),
    }
    for kind, (name, params) in cases.items():
        with pytest.raises(ValueError, match=rf"^{kind} '{name}' has no parameter 'radius|colour'; allowed: "):
            ALL[kind].create(name, **params)


def test_a_regularizer_declares_what_its_kwargs_accept():
    assert REGULARIZERS.parameters("contrastive") == ["weight", "margin"]
    assert REGULARIZERS.parameters("none") == ["weight"]


def test_a_model_name_may_also_be_any_timm_model():
    with pytest.raises(ValueError, match=r"registered models: .*small_cnn, or 'timm:<name>' for any timm model$"):
        MODELS.get("vgg_nonexistent")


def test_a_subclass_changes_a_default_without_repeating_the_signature():
    assert "__init__" not in vars(Flowers)
    assert DATASETS.parameters("flowers") == DATASETS.parameters("imagefolder")
    assert Flowers(path="x.zip").params["size"] == 224
    assert ImageFolder(path="x.zip").params["size"] is None
    assert Flowers(path="x.zip", size=None).params["size"] is None


def test_the_parameter_an_error_is_about():
    params = {"width": 0, "depth": 2}
    assert params_error_key(ValueError("width=0 is invalid"), params) == "width"
    assert params_error_key(TypeError("got an unexpected keyword argument 'depth'"), params) == "depth"
    assert params_error_key(ValueError("depth 2 is too small"), params) == "depth"
    assert params_error_key(ValueError("something else"), params) is None
