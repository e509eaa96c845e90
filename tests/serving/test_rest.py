"""TF Serving's REST formats: what requests may hold and what answers look like."""

import base64

import numpy as np
import pytest

from facemtl.serving.rest import RequestError, format_predict, model_status, parse_predict
from tests.helpers import b64, png, png_claiming

LIMITS = dict(max_instances=4, max_pixels=10_000)


def test_row_and_column_formats_of_pixel_lists():
    images = np.arange(2 * 3 * 4 * 3).reshape(2, 3, 4, 3) % 256
    for body in ({"instances": images.tolist()}, {"instances": [{"images": im.tolist()} for im in images]},
                 {"inputs": images.tolist()}, {"inputs": {"images": images.tolist()}}):
        signature, parsed, row = parse_predict(body, **LIMITS)
        assert signature is None and row == ("instances" in body)
        assert parsed.dtype == np.uint8 and parsed.shape == (2, 3, 4, 3)
        np.testing.assert_array_equal(parsed, images)


def test_b64_crops_of_any_size():
    crops = [png(np.zeros((5, 7, 3), np.uint8)), png(np.ones((9, 4, 3), np.uint8))]
    signature, parsed, row = parse_predict({"signature_name": "serving_bytes",
                                            "instances": [{"images": b64(crops[0])}, {"images": b64(crops[1])}]},
                                           **LIMITS)
    assert signature == "serving_bytes" and parsed == crops and row
    assert parse_predict({"inputs": [b64(crops[0])]}, **LIMITS)[1] == crops[:1]


@pytest.mark.parametrize("body, status, message", [
    ([1, 2], 400, "JSON object"),
    ({"instances": [], "inputs": []}, 400, "exactly one"),
    ({}, 400, "exactly one"),
    ({"instances": [[[[0, 0, 0]]]], "extra": 1}, 400, "Unknown request fields"),
    ({"instances": []}, 400, "non-empty list"),
    ({"instances": "abc"}, 400, "non-empty list"),
    ({"instances": [[[[0, 0, 0]]]] * 5}, 413, "limit is 4"),
    ({"instances": [[[0, 0]]]}, 400, r"shape \[1, 2\]"),
    ({"instances": [[[[0, 0, 0]], [[0, 0]]]]}, 400, "ragged"),
    ({"instances": [[[[0, 0, 300]]]]}, 400, "0-255"),
    ({"instances": [[[[0, 0, -1]]]]}, 400, "0-255"),
    ({"instances": [[[[0.5, 0, 0]]]]}, 400, "integers"),
    ({"instances": [[[["a", 0, 0]]]]}, 400, "ragged or mixed"),
    ({"instances": [np.zeros((101, 100, 3), int).tolist()]}, 413, "over the limit"),
    ({"instances": [[[[0, 0, 0]]], [[[0, 0, 0], [0, 0, 0]]]]}, 400, "different shapes"),
    ({"instances": [{"b64": "%%%"}]}, 400, "invalid base64"),
    ({"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}, 400, "not a readable image"),
    ({"instances": [{"b64": ""}]}, 400, "empty image"),
    ({"instances": [{"b64": 3}]}, 400, "b64"),
    ({"instances": [{"other": 1}]}, 400, "b64"),
    ({"instances": [7]}, 400, "Received int"),
    ({"instances": [[[[0, 0, 0]]], {"b64": base64.b64encode(png(np.zeros((2, 2, 3), np.uint8))).decode()}]},
     400, "mixes"),
    ({"inputs": {"pixels": []}}, 400, "unknown inputs"),
    ({"instances": [[[[0, 0, 0]]]], "signature_name": 3}, 400, "signature_name"),
])
def test_bad_requests_name_the_field(body, status, message):
    with pytest.raises(RequestError, match=message) as info:
        parse_predict(body, **LIMITS)
    assert info.value.status == status


@pytest.mark.parametrize("side", [200, 25000])  # over our limit; over Pillow's own guard too
def test_decompression_bomb_is_refused_from_its_header(side):
    bomb = png_claiming(side, side)
    assert len(bomb) < 200
    with pytest.raises(RequestError, match="over the limit") as info:
        parse_predict({"instances": [b64(bomb)]}, **LIMITS)
    assert info.value.status == 413


def test_answers_have_tf_serving_shapes():
    outputs = {"expression": np.array([b"happy", b"sad"], dtype=object),
               "expression_probs": np.array([[0.9, 0.1], [0.2, 0.8]], np.float32),
               "embedding": np.zeros((2, 3), np.float32)}
    row = format_predict(outputs, row_format=True)
    assert list(row) == ["predictions"] and len(row["predictions"]) == 2
    assert row["predictions"][0]["expression"] == "happy"
    assert row["predictions"][1]["expression_probs"] == pytest.approx([0.2, 0.8])
    assert set(row["predictions"][0]) == set(outputs)
    column = format_predict(outputs, row_format=False)
    assert list(column) == ["outputs"] and column["outputs"]["expression"] == ["happy", "sad"]
    assert np.asarray(column["outputs"]["embedding"]).shape == (2, 3)
    assert model_status(3) == {"model_version_status": [
        {"version": "3", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
