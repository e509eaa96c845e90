"""The Preprocessor: one object for how photos and crops become the model's input, stored in the metadata."""

import pytest

from facemtl.config import ModelConfig
from facemtl.preprocessing import CROP_UPSCALE, Preprocessor


def test_from_a_recipe_and_back_from_the_metadata_it_is_stored_in():
    p = Preprocessor.from_model_config(ModelConfig(backbone="dlib_resnet", height=150, width=150, crop_layout="dlib"))
    assert (p.height, p.width, p.layout, p.detector, p.scaling, p.crop_upscale) == (
        150, 150, "dlib", "blazeface", "dlib", CROP_UPSCALE)
    assert Preprocessor.from_metadata({"preprocessor": p.to_dict(), "input": {"height": 1, "width": 1}}) == p
    # Older exports say only their input size and crop layout.
    old = Preprocessor.from_metadata({"input": {"height": 64, "width": 64}, "crop": {"layout": "arcface"}})
    assert (old.height, old.layout, old.detector) == (64, "arcface", "blazeface")
    with pytest.raises(KeyError):
        Preprocessor.from_metadata({})


@pytest.mark.slow
def test_an_export_stores_its_preprocessor_and_face_analyzer_uses_it(trained):
    from facemtl.export import read_metadata
    from facemtl.inference import FaceAnalyzer

    meta = read_metadata(trained.export_dir)
    stored = Preprocessor.from_metadata(meta)
    assert meta["preprocessor"]["layout"] == meta["crop"]["layout"] == stored.layout
    analyzer = FaceAnalyzer(trained.export_dir)
    assert analyzer.preprocessor == stored and analyzer.crop_size == (stored.height, stored.width)


def test_every_pipeline_resizes_first_then_augments_at_the_models_size():
    import keras
    import numpy as np

    from facemtl.preprocessing import prepare_batch, prepare_images

    images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3)).astype(np.uint8)
    np.testing.assert_array_equal(prepare_batch(images, 64, 64, 3), prepare_images(images, 64, 64, 3))
    np.testing.assert_array_equal(prepare_batch(images, 64, 64, 1), prepare_images(images, 64, 64, 1))
    seen = []

    class Spy(keras.layers.Layer):
        def call(self, x, training=None):
            seen.append(tuple(x.shape))
            return x + 300.0  # out of range: the pipeline clips

    out = prepare_batch(images, 64, 64, 1, augmenters=[Spy()])
    assert seen == [(2, 64, 64, 3)] and out.shape == (2, 64, 64, 1) and float(np.max(out)) <= 255.0
