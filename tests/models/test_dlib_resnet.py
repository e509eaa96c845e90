import glob
import os

import numpy as np
import pytest

from facemtl.models.dlib_format import DlibModelError, default_model_path, expected_convs, read_dlib_resnet
from facemtl.models.dlib_resnet import PadAdd, build_dlib_resnet
from tests.helpers import SHARED_DATA


def _model_file():
    try:
        path = default_model_path()
    except DlibModelError:
        pytest.skip("face_recognition_models is not installed (pip install 'facemtl[pretrained]')")
    return path


def test_architecture_matches_dlibs_feature_map_sizes():
    model = build_dlib_resnet(weights=None)
    sizes = {name: model.get_layer(name).output.shape[1:] for name in
             ("stem_conv", "stem_pool", "stage2_block1_out", "stage3_block1_out", "stage4_block1_out",
              "stage5_block1_out")}
    assert sizes == {"stem_conv": (72, 72, 32), "stem_pool": (35, 35, 32), "stage2_block1_out": (17, 17, 64),
                     "stage3_block1_out": (8, 8, 128), "stage4_block1_out": (4, 4, 256),
                     "stage5_block1_out": (2, 2, 256)}
    assert model.output_shape == (None, 128)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [(c.filters, c.kernel_size[0], c.strides[0]) for c in convs] == [(f, k, s) for f, _, k, s in expected_convs()]


def test_pad_add_zero_pads_the_smaller_tensor_at_its_end():
    a = np.ones((1, 3, 3, 2), "float32")
    b = np.full((1, 4, 4, 1), 10.0, "float32")
    out = np.asarray(PadAdd()([a, b]))
    assert out.shape == (1, 4, 4, 2)
    assert out[0, 0, 0].tolist() == [11.0, 1.0]  # both present, b's missing channel is zero
    assert out[0, 3, 3].tolist() == [10.0, 0.0]  # a's missing row/column is zero


def test_missing_package_names_the_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DlibModelError, match=r"pip install \"facemtl\[pretrained\]\""):
        default_model_path()


def test_a_file_that_is_not_dlibs_is_a_clear_error(tmp_path):
    bad = tmp_path / "weights.dat"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(DlibModelError, match="weights.dat"):
        read_dlib_resnet(bad)
    with pytest.raises(DlibModelError, match="Cannot read"):
        read_dlib_resnet(tmp_path / "absent.dat")


def test_reads_the_shipped_model_file():
    weights = read_dlib_resnet(_model_file())
    assert (weights.margin, weights.threshold) == pytest.approx((0.04, 0.6))
    assert weights.mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    assert len(weights.convs) == len(weights.affines) == 29
    assert weights.convs[0][0].shape == (7, 7, 3, 32)
    assert weights.fc.shape == (256, 128)


@pytest.mark.parametrize("cut", [0.001, 0.5, 0.999])
def test_truncated_model_file_is_a_clear_error(tmp_path, cut):
    data = open(_model_file(), "rb").read()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(DlibModelError, match="truncated.dat"):
        read_dlib_resnet(truncated)


def test_corrupt_tensor_is_a_clear_error(tmp_path):
    data = bytearray(open(_model_file(), "rb").read())
    at = data.index(b"\x01\x05con_4") + 7
    data[at + 2:at + 4] = b"\x02\x02"  # the first convolution's size field: now 514 values
    corrupt = tmp_path / "corrupt.dat"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(DlibModelError, match="corrupt.dat"):
        read_dlib_resnet(corrupt)


@pytest.mark.shared_data
def test_descriptors_agree_with_dlib_on_real_faces():
    """facemtl's rebuild and dlib's own network give the same descriptor for the same chips."""
    dlib = pytest.importorskip("dlib")
    from PIL import Image

    paths = sorted(glob.glob(os.path.join(SHARED_DATA, "lfw_subset", "test", "*", "*.jpg")))[:40]
    paths += sorted(glob.glob(os.path.join(SHARED_DATA, "orl", "att_faces", "s*", "1.pgm")))[:20]
    assert len(paths) >= 50
    chips = np.stack([np.asarray(Image.open(p).convert("RGB").resize((150, 150), Image.BICUBIC)) for p in paths])
    ours = build_dlib_resnet().predict(chips.astype("float32"), batch_size=32, verbose=0)
    encoder = dlib.face_recognition_model_v1(_model_file())
    reference = np.array([np.array(encoder.compute_face_descriptor(chip)) for chip in chips])
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.mean() >= 0.999
    assert cosine.min() >= 0.99
    # dlib's scale too: its 0.6 distance threshold must mean the same.
    np.testing.assert_allclose(ours, reference, atol=1e-4)



def test_the_shipped_copy_of_dlibs_network_is_the_dat_file_exactly(monkeypatch):
    """facemtl builds the release without face_recognition_models: its copy holds the same numbers."""
    import numpy as np

    from facemtl.models import dlib_format

    dat = dlib_format.read_dlib_resnet(_model_file())  # found without importing it (it needs pkg_resources)
    shipped = dlib_format.default_weights()
    assert shipped.source == dlib_format.SHIPPED_WEIGHTS
    for (a, b, s), (c, d, t) in zip(dat.convs, shipped.convs):
        assert np.array_equal(a, c) and np.array_equal(b, d) and s == t
    for (a, b), (c, d) in zip(dat.affines, shipped.affines):
        assert np.array_equal(a, c) and np.array_equal(b, d)
    assert np.array_equal(dat.fc, shipped.fc) and dat.mean_rgb == shipped.mean_rgb
    assert (dat.margin, dat.threshold) == (shipped.margin, shipped.threshold)

    def missing():
        raise dlib_format.DlibModelError("face_recognition_models is not installed")

    monkeypatch.setattr(dlib_format, "default_model_path", missing)  # as on a user's machine now
    assert dlib_format.default_weights().fc.shape == (256, 128)
