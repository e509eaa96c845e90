"""TF Serving's REST API, in JSON: request parsing and response shapes.

What `tensorflow/serving` documents for its REST API (and what its clients send):

- `GET /v1/models/<name>[/versions/<v>]` -> `{"model_version_status": [{"version": "1",
  "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}`
- `GET /v1/models/<name>[/versions/<v>]/metadata` -> `{"model_spec": {...},
  "metadata": {"signature_def": {"signature_def": {<name>: {"inputs": ..., "outputs": ...,
  "method_name": "tensorflow/serving/predict"}}}}}`
- `POST /v1/models/<name>[/versions/<v>]:predict` with `{"signature_name": ...,
  "instances": [...]}` (row format, answered by `{"predictions": [...]}`) or
  `{"inputs": ...}` (column format, answered by `{"outputs": ...}`). Binary values
  are `{"b64": "<base64>"}`. Errors are `{"error": "<message>"}`.

facemtl's signatures take one input, `images`; an instance is an image (a nested
`[h][w][3]` list of 0-255 integers) or `{"b64": ...}` (an encoded JPEG/PNG crop),
or either under the key `images`. With `"signature_name": "analyze_photo"` an
instance is a whole photo as `{"b64": ...}`, and each prediction holds every face
found in it (see `facemtl.export`).
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from facemtl.errors import FacemtlError, ImageError, ImageTooLarge
from facemtl.images import image_size

INPUT = "images"
PREDICT_METHOD = "tensorflow/serving/predict"


class RequestError(FacemtlError):
    """A request that cannot be answered; `status` is its HTTP status (4xx)."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def model_status(version):
    """The body of `GET /v1/models/<name>`: one available version."""
    return {"model_version_status": [{"version": str(version), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


_DTYPES = {"uint8": "DT_UINT8", "string": "DT_STRING", "float32": "DT_FLOAT", "int64": "DT_INT64",
           "int32": "DT_INT32", "float64": "DT_DOUBLE"}


def _tensor_info(spec, name):
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape.as_list()]
    return {"dtype": _DTYPES.get(spec.dtype.name, "DT_INVALID"), "tensor_shape": {"dim": dims, "unknown_rank": False},
            "name": name}


def signature_defs(signatures):
    """TF Serving's `signature_def` map (as `saved_model_cli` shows it) for loaded concrete functions."""
    defs = {}
    for sig_name, fn in signatures.items():
        _, kwargs = fn.structured_input_signature
        defs[sig_name] = {
            "inputs": {k: _tensor_info(spec, f"{sig_name}_{k}:0") for k, spec in kwargs.items()},
            "outputs": {k: _tensor_info(spec, k) for k, spec in fn.structured_outputs.items()},
            "method_name": PREDICT_METHOD,
        }
    return defs


def model_metadata(name, version, signatures):
    """The body of `GET /v1/models/<name>/metadata`."""
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": signature_defs(signatures)}}}


def decode_b64(value, where):
    """The bytes of TF Serving's binary value `{"b64": "<base64 string>"}` (a 400 `RequestError` for anything else)."""
    if not isinstance(value, dict) or set(value) != {"b64"} or not isinstance(value["b64"], str):
        got = f"keys {sorted(value)}" if isinstance(value, dict) else f"a {type(value).__name__}"
        raise RequestError(f"{where}: a binary value is {{\"b64\": \"<base64 string>\"}}. Received {got}")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"{where}: invalid base64 ({exc})") from None


def check_encoded_image(data, where, max_pixels):
    """Reads only the header of encoded image bytes: a known format, non-empty, at most `max_pixels`.

    Decompression bombs (a small file claiming a huge size) stop here, before anything is decoded
    (`facemtl.images.image_size`, the check `load_image` makes too); too large is a 413, unreadable a 400.
    """
    try:
        return image_size(data, where, max_pixels)
    except ImageTooLarge as exc:
        raise RequestError(str(exc).replace("facemtl's limit", "the limit"), status=413) from None
    except ImageError as exc:
        raise RequestError(str(exc)) from None


def _image_array(value, where, max_pixels):
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = None
    numeric = array is not None and array.dtype.kind in "biuf"
    if not numeric or array.ndim != 3 or array.shape[-1] != 3:
        shape = list(array.shape) if numeric else None
        raise RequestError(f"{where}: an image is a [height][width][3] list of integers 0-255 or {{\"b64\": ...}}. "
                           f"Received {'a ragged or mixed list' if shape is None else f'shape {shape}'}")
    if array.size == 0:
        raise RequestError(f"{where}: empty image")
    if array.shape[0] * array.shape[1] > max_pixels:
        raise RequestError(f"{where}: {array.shape[1]}x{array.shape[0]} pixels is over the limit of {max_pixels}",
                           status=413)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.mod(array, 1) == 0):
            raise RequestError(f"{where}: pixel values must be integers 0-255 (DT_UINT8). Received dtype {array.dtype}")
    if array.min() < 0 or array.max() > 255:
        raise RequestError(f"{where}: pixel values must be in 0-255 (DT_UINT8). "
                           f"Received values in [{array.min()}, {array.max()}]")
    return array.astype(np.uint8)


def _instance(value, where, max_pixels):
    if isinstance(value, dict) and set(value) == {INPUT}:
        value, where = value[INPUT], f"{where}.{INPUT}"
    if isinstance(value, dict):
        data = decode_b64(value, where)
        check_encoded_image(data, where, max_pixels)
        return data
    if isinstance(value, list):
        return _image_array(value, where, max_pixels)
    raise RequestError(f"{where}: expected an image ({{\"b64\": ...}} or a [h][w][3] list). "
                       f"Received {type(value).__name__}")


def parse_predict(body, *, max_instances, max_pixels):
    """Reads a `:predict` body into the images it holds.

    Args:
        body: the decoded JSON.
        max_instances: most images per request (more is answered 413).
        max_pixels: most pixels per image (more is answered 413).

    Returns:
        `(signature_name or None, images, row_format)`: `images` is a list of
        encoded `bytes` (all `{"b64": ...}`) or one `uint8 [n, h, w, 3]` array
        (nested lists, one shape).

    Raises:
        RequestError: naming the field that is wrong.

    Example:
        >>> parse_predict({"instances": [[[[0, 0, 0]]]]}, max_instances=8, max_pixels=100)[1].shape
        (1, 1, 1, 3)
    """
    if not isinstance(body, dict):
        raise RequestError(f"The request body must be a JSON object. Received {type(body).__name__}")
    unknown = set(body) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise RequestError(f"Unknown request fields {sorted(unknown)}: expected 'instances' or 'inputs' "
                           "and optionally 'signature_name'")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError("The request must hold exactly one of 'instances' (row format) or 'inputs' (column format)")
    signature = body.get("signature_name")
    if signature is not None and not isinstance(signature, str):
        raise RequestError(f"'signature_name' must be a string. Received {type(signature).__name__}")
    row = "instances" in body
    if row:
        values, where = body["instances"], "instances"
    else:
        values, where = body["inputs"], "inputs"
        if isinstance(values, dict) and set(values) == {INPUT}:
            values, where = values[INPUT], f"inputs.{INPUT}"
        elif isinstance(values, dict) and set(values) != {"b64"}:
            raise RequestError(f"'inputs' names unknown inputs {sorted(values)}: the only input is '{INPUT}'")
    if not isinstance(values, list) or not values:
        raise RequestError(f"'{where}' must be a non-empty list of images")
    if len(values) > max_instances:
        raise RequestError(f"'{where}' holds {len(values)} images; the limit is {max_instances} per request",
                           status=413)
    images = [_instance(v, f"{where}[{i}]", max_pixels) for i, v in enumerate(values)]
    kinds = {isinstance(im, bytes) for im in images}
    if len(kinds) > 1:
        raise RequestError(f"'{where}' mixes {{\"b64\": ...}} and pixel lists: send one kind per request")
    if isinstance(images[0], bytes):
        return signature, images, row
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise RequestError(f"The images of '{where}' have different shapes {sorted(shapes)}: a batch needs one "
                           "shape (send {\"b64\": ...} crops to mix sizes)")
    return signature, np.stack(images), row


def _jsonable(array):
    if array.dtype == object or array.dtype.kind == "S":
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(array).tolist()
    return array.tolist()


def format_predict(outputs, row_format):
    """The `:predict` answer: `{"predictions": [{output: value}, ...]}` or `{"outputs": {output: [...]}}`."""
    names = sorted(outputs)
    if not row_format:
        return {"outputs": {k: _jsonable(outputs[k]) for k in names}}
    columns = {k: _jsonable(outputs[k]) for k in names}
    n = len(columns[names[0]]) if names else 0
    return {"predictions": [{k: columns[k][i] for k in names} for i in range(n)]}
