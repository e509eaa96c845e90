import numpy as np
import pytest

from facemtl.models import build_resnet


@pytest.mark.parametrize(
    "name, params",
    # Published parameter counts of the convolutional trunks (no classifier).
    [("resnet18", 11_186_112), ("resnet34", 21_301_696), ("resnet50", 23_587_712)],
)
def test_standard_resnets_have_the_published_size(name, params):
    backbone = build_resnet(name, (64, 64, 3))
    assert backbone.name == "backbone"
    assert backbone.output_shape == (None, 2, 2, 2048 if name == "resnet50" else 512)
    assert backbone.count_params() == params


def test_tiny_resnet_for_tests():
    backbone = build_resnet("resnet18", (64, 64, 3), stage_blocks=[1, 1], base_filters=16, stem="small")
    assert backbone.output_shape == (None, 32, 32, 32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="resnet99"), "Unknown backbone"),
        (dict(name="resnet18", stage_blocks=[0, 1]), "stage_blocks"),
        (dict(name="resnet18", stem="huge"), "stem"),
        (dict(name="resnet18", weights="imagenet"), "ImageNet weights"),
        (dict(name="resnet18", weights="/nonexistent/w.weights.h5"), "not found"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_resnet(input_shape=(64, 64, 3), **kwargs)


def test_weights_load_from_a_local_file(tmp_path):
    a = build_resnet("resnet18", (64, 64, 3), stage_blocks=[1, 1], base_filters=16)
    path = str(tmp_path / "backbone.weights.h5")
    a.save_weights(path)
    b = build_resnet("resnet18", (64, 64, 3), stage_blocks=[1, 1], base_filters=16, weights=path)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(a(x), b(x), atol=1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        build_resnet("resnet18", (64, 64, 3), stage_blocks=[2, 2], base_filters=16, weights=path)
