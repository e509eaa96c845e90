"""Photo to aligned face crops inside a TensorFlow graph: BlazeFace in TF ops, weighted NMS, a similarity warp.

This is what the SavedModel's `analyze_photo` signature runs, so stock TF
Serving answers photos with no Python front end. Each step mirrors the Python
path of `FaceAnalyzer` with the BlazeFace detector:

- `TFLiteNet`: the BlazeFace network rebuilt op by op from MediaPipe's
  `.tflite` file (its float16 weights kept as float16 constants), so the
  graph computes what the TFLite interpreter computes;
- `detect_faces`: letterbox, network, anchor decoding and weighted NMS as in
  `facemtl.faces.blazeface`, with the same "auto" order (full range; then
  full range on the photo inside a black border; then short range);
- `align_crops`: the least-squares similarity from the 4 BlazeFace points to
  the crop template (`facemtl.faces.align.template`), applied by a bilinear
  warp with reflected borders, like `cv2.warpAffine` in `align_face`.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import tensorflow as tf

from facemtl.faces.align import template
from facemtl.faces.blazeface import MODEL_DIR, MODELS, DetectorModelError, ssd_anchors

# TFLite's fused activation codes -> functions.
_ACTIVATIONS = {0: tf.identity, 1: tf.nn.relu, 3: tf.nn.relu6}
_PADDING = {0: "SAME", 1: "VALID"}


class TFLiteNet:
    """A small float `.tflite` network (convolutions, pooling, adds, pads) re-expressed in TensorFlow ops.

    Only the op types BlazeFace uses are known; any other is an error naming it.
    Constant tensors are read from the file's buffers; float16 weights stay
    float16 in the graph and are cast where used.

    Args:
        path: the `.tflite` file.

    Example:
        >>> net = TFLiteNet("face_detection_full_range.tflite")
        >>> boxes, scores = net(tf.zeros([1, 192, 192, 3]))
    """

    def __init__(self, path):
        from tensorflow.lite.python import schema_py_generated as schema
        from tensorflow.lite.tools import flatbuffer_utils

        try:
            model = flatbuffer_utils.read_model(path)
        except Exception as exc:  # a flatbuffer that does not parse raises anything from struct to IndexError
            raise DetectorModelError(f"{path}: not a readable TFLite model ({exc})") from None
        self.path = path
        graph = model.subgraphs[0]
        codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        dtypes = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}
        self._constants = {}
        for i, t in enumerate(graph.tensors):
            data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            if data is not None and len(data):
                if t.type not in dtypes:
                    raise DetectorModelError(f"{path}: constant {t.name!r} has an unsupported type {t.type}")
                self._constants[i] = np.frombuffer(bytes(data), dtypes[t.type]).reshape(t.shape)
        self._ops = []
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = codes.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
            if name not in _OPS:
                raise DetectorModelError(f"{path}: op {name} is not supported in the graph")
            self._ops.append((name, list(op.inputs), list(op.outputs), op.builtinOptions))
        self.inputs, self.outputs = list(graph.inputs), list(graph.outputs)
        self.output_names = [graph.tensors[i].name.decode() for i in self.outputs]
        self.input_shape = [int(v) for v in graph.tensors[self.inputs[0]].shape]

    def constant(self, index):
        value = self._constants[index]
        return tf.cast(tf.constant(value), tf.float32) if value.dtype == np.float16 else tf.constant(value)

    @tf.autograph.experimental.do_not_convert  # plain TF ops: autograph's rewrite only costs tracing time
    def __call__(self, x):
        """Runs the network on `float32 [batch, h, w, 3]` (already scaled to [-1, 1]); returns its outputs in order."""
        values = {self.inputs[0]: x}

        def get(i):
            if i not in values:
                values[i] = self.constant(i)
            return values[i]

        for name, inputs, outputs, options in self._ops:
            values[outputs[0]] = _OPS[name](self, [get(i) if i >= 0 else None for i in inputs], inputs, options)
        return [values[i] for i in self.outputs]


def _conv(net, args, _, o):
    kernel = tf.transpose(args[1], [1, 2, 3, 0])  # TFLite [out, kh, kw, in] -> TF [kh, kw, in, out]
    y = tf.nn.conv2d(args[0], kernel, [1, o.strideH, o.strideW, 1], _PADDING[o.padding],
                     dilations=[1, o.dilationHFactor, o.dilationWFactor, 1])
    if args[2] is not None:
        y += args[2]
    return _ACTIVATIONS[o.fusedActivationFunction](y)


def _depthwise(net, args, _, o):
    in_ch = args[0].shape[-1]
    kernel = tf.reshape(args[1], [args[1].shape[1], args[1].shape[2], in_ch, o.depthMultiplier])
    y = tf.nn.depthwise_conv2d(args[0], kernel, [1, o.strideH, o.strideW, 1], _PADDING[o.padding],
                               dilations=[o.dilationHFactor, o.dilationWFactor])
    if args[2] is not None:
        y += args[2]
    return _ACTIVATIONS[o.fusedActivationFunction](y)


def _max_pool(net, args, _, o):
    y = tf.nn.max_pool2d(args[0], [o.filterHeight, o.filterWidth], [o.strideH, o.strideW], _PADDING[o.padding])
    return _ACTIVATIONS[o.fusedActivationFunction](y)


def _resize(net, args, _, o):
    return tf.raw_ops.ResizeBilinear(images=args[0], size=tf.cast(args[1], tf.int32), align_corners=o.alignCorners,
                                     half_pixel_centers=o.halfPixelCenters)


def _reshape(net, args, _, o):
    shape = o.newShape if o is not None and o.newShape is not None else args[1]
    return tf.reshape(args[0], tf.cast(shape, tf.int32))


_OPS = {
    "DEQUANTIZE": lambda net, args, _, o: tf.cast(args[0], tf.float32),
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _depthwise,
    "RELU": lambda net, args, _, o: tf.nn.relu(args[0]),
    "ADD": lambda net, args, _, o: _ACTIVATIONS[o.fusedActivationFunction](args[0] + args[1]),
    "PAD": lambda net, args, _, o: tf.pad(args[0], tf.cast(args[1], tf.int32)),
    "MAX_POOL_2D": _max_pool,
    "RESIZE_BILINEAR": _resize,
    "RESHAPE": _reshape,
    "CONCATENATION": lambda net, args, _, o: _ACTIVATIONS[o.fusedActivationFunction](tf.concat(args, o.axis)),
}


class BlazeFaceGraph:
    """BlazeFace's "auto" detector (`facemtl.faces.blazeface.BlazeFaceDetector`) in TensorFlow ops.

    Args:
        min_face_size: smallest face side in pixels to keep (as the Python detector).
        max_faces: the most faces returned per photo (the best ones).
        iou_threshold: weighted NMS merge threshold.

    Example:
        >>> faces = BlazeFaceGraph(max_faces=8)
        >>> boxes, keypoints, scores, count = faces.detect(image)  # image: uint8 [h, w, 3]
    """

    def __init__(self, min_face_size=20, max_faces=16, iou_threshold=0.3):
        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1. Received: max_faces={max_faces}")
        self.min_face_size = float(min_face_size)
        self.max_faces = int(max_faces)
        self.iou_threshold = float(iou_threshold)
        self.nets, self.anchors = {}, {}
        for key in ("full", "short"):
            spec = MODELS[key]
            net = TFLiteNet(os.path.join(MODEL_DIR, spec.file))
            if net.input_shape != [1, spec.size, spec.size, 3]:
                raise DetectorModelError(f"{net.path}: expected input [1, {spec.size}, {spec.size}, 3]. "
                                         f"Received {net.input_shape}")
            self.nets[key] = net
            self.anchors[key] = ssd_anchors(spec.size, spec.strides, spec.anchors_per_layer)
        # One traced function per model, called wherever it runs (the full-range model runs twice in
        # "auto"): the graph, the export's tracing time and its size hold each network once.
        self._runs = {key: tf.function(functools.partial(self._run, key), autograph=False,
                                       input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
                      for key in self.nets}

    @tf.autograph.experimental.do_not_convert
    def _run(self, key, image):
        """One model on one float photo: `(boxes [m, 4] xyxy px, keypoints [m, 6, 2] px, scores [m], count)`."""
        spec = MODELS[key]
        size = spec.size
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = size / tf.reduce_max(shape)
        new = tf.maximum(1, tf.cast(tf.round(shape * scale), tf.int32))
        resized = tf.image.resize(image, new, method="area")
        top, left = (size - new[0]) // 2, (size - new[1]) // 2
        canvas = tf.pad(resized, [[top, size - new[0] - top], [left, size - new[1] - left], [0, 0]])
        canvas = tf.ensure_shape(canvas / 127.5 - 1.0, [size, size, 3])
        outputs = self.nets[key](canvas[None])
        # The regressor has 16 numbers per anchor, the classifier 1 (as the Python detector picks them).
        outputs = sorted(outputs, key=lambda t: t.shape[-1])
        raw_scores, raw_boxes = tf.reshape(outputs[0], [-1]), tf.reshape(outputs[-1], [-1, 16]) / size
        anchors = tf.constant(self.anchors[key])
        centre = raw_boxes[:, 0:2] + anchors
        half = raw_boxes[:, 2:4] / 2
        boxes = tf.concat([centre - half, centre + half], axis=1)
        keypoints = tf.reshape(raw_boxes[:, 4:16], [-1, 6, 2]) + anchors[:, None, :]
        scores = tf.sigmoid(tf.clip_by_value(raw_scores, -100.0, 100.0))
        boxes, keypoints, scores, count = weighted_nms(boxes, keypoints, scores, spec.min_score, self.iou_threshold,
                                                       self.max_faces * 2)
        offset = tf.cast(tf.stack([left, top]), tf.float32)
        boxes = (tf.reshape(boxes, [-1, 2, 2]) * size - offset) / scale
        keypoints = (keypoints * size - offset) / scale
        side = tf.reduce_min(boxes[:, 1] - boxes[:, 0], axis=-1)
        keep = tf.logical_and(tf.range(tf.shape(scores)[0]) < count, side >= self.min_face_size)
        boxes, keypoints, scores = (tf.boolean_mask(t, keep) for t in (tf.reshape(boxes, [-1, 4]), keypoints, scores))
        n = tf.minimum(tf.shape(scores)[0], self.max_faces)
        return boxes[:n], keypoints[:n], scores[:n], n

    @tf.autograph.experimental.do_not_convert
    def detect(self, image):
        """Faces in one `uint8 [h, w, 3]` photo, best first.

        Returns:
            `(boxes [k, 4] (x0, y0, x1, y1), keypoints [k, 6, 2], scores [k], k)` in
            the photo's pixels, `k <= max_faces`.
        """
        image = tf.cast(image, tf.float32)
        tiny = tf.reduce_min(tf.shape(image)[:2]) < 2

        def empty():
            return tf.zeros([0, 4]), tf.zeros([0, 6, 2]), tf.zeros([0]), tf.constant(0)

        def padded():
            # A face that filled the frame fills half of it inside a black border of half its size.
            pad = tf.reduce_max(tf.shape(image)[:2]) // 2
            found = self._runs["full"](tf.pad(image, [[pad, pad], [pad, pad], [0, 0]]))
            shift = tf.cast(pad, tf.float32)
            return found[0] - shift, found[1] - shift, found[2], found[3]

        def short():
            return self._runs["short"](image)

        def auto():
            first = self._runs["full"](image)
            return tf.cond(first[3] > 0, lambda: first,
                           lambda: (lambda second: tf.cond(second[3] > 0, lambda: second, short))(padded()))

        return tf.cond(tiny, empty, auto)


@tf.autograph.experimental.do_not_convert
def weighted_nms(boxes, keypoints, scores, min_score, iou_threshold, max_out):
    """MediaPipe's weighted NMS (`facemtl.faces.blazeface.weighted_nms`) as a TF loop, at most `max_out` faces.

    Returns:
        `(boxes [max_out, 4], keypoints [max_out, 6, 2], scores [max_out], count)`; rows past `count` are zeros.
    """
    remaining = scores >= min_score
    out_boxes = tf.TensorArray(tf.float32, size=max_out, element_shape=[4])
    out_points = tf.TensorArray(tf.float32, size=max_out, element_shape=[6, 2])
    out_scores = tf.TensorArray(tf.float32, size=max_out, element_shape=[])
    area = tf.maximum(boxes[:, 2] - boxes[:, 0], 0.0) * tf.maximum(boxes[:, 3] - boxes[:, 1], 0.0)

    def body(i, remaining, ob, op, os_):
        best = tf.argmax(tf.where(remaining, scores, -1.0), output_type=tf.int32)
        b = boxes[best]
        inter = (tf.maximum(tf.minimum(b[2], boxes[:, 2]) - tf.maximum(b[0], boxes[:, 0]), 0.0)
                 * tf.maximum(tf.minimum(b[3], boxes[:, 3]) - tf.maximum(b[1], boxes[:, 1]), 0.0))
        iou = inter / tf.maximum(area[best] + area - inter, 1e-12)
        group = tf.logical_and(remaining, tf.logical_or(iou > iou_threshold, tf.range(tf.shape(scores)[0]) == best))
        w = tf.where(group, scores, 0.0)
        total = tf.reduce_sum(w)
        ob = ob.write(i, tf.reduce_sum(boxes * w[:, None], 0) / total)
        op = op.write(i, tf.reduce_sum(keypoints * w[:, None, None], 0) / total)
        os_ = os_.write(i, scores[best])
        return i + 1, tf.logical_and(remaining, tf.logical_not(group)), ob, op, os_

    count, _, out_boxes, out_points, out_scores = tf.while_loop(
        lambda i, remaining, *_: tf.logical_and(i < max_out, tf.reduce_any(remaining)),
        body, [0, remaining, out_boxes, out_points, out_scores])

    def padded(array, shape):
        return tf.concat([array.gather(tf.range(count)), tf.zeros([max_out - count, *shape])], 0)

    return padded(out_boxes, [4]), padded(out_points, [6, 2]), padded(out_scores, []), count


@tf.autograph.experimental.do_not_convert
def similarity_matrices(src, dst):
    """Least-squares similarity transforms mapping each `src [k, n, 2]` onto `dst [n, 2]`: `[k, 2, 3]`.

    Solved in complex form (`dst ~ a * src + t` with complex `a`), which is the
    same rotation-and-scale fit as Umeyama's method in `facemtl.faces.align`.
    """
    dst = tf.constant(dst, tf.float32)
    mu_s = tf.reduce_mean(src, axis=1, keepdims=True)
    mu_d = tf.reduce_mean(dst, axis=0)
    s, d = src - mu_s, dst - mu_d
    norm = tf.maximum(tf.reduce_sum(s ** 2, axis=[1, 2]), 1e-12)
    re = tf.reduce_sum(s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1], axis=1) / norm
    im = tf.reduce_sum(s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0], axis=1) / norm
    linear = tf.stack([tf.stack([re, -im], -1), tf.stack([im, re], -1)], 1)  # [k, 2, 2]
    shift = mu_d - tf.einsum("kij,kj->ki", linear, mu_s[:, 0])
    return tf.concat([linear, shift[..., None]], axis=2)


@tf.autograph.experimental.do_not_convert
def align_crops(image, points, size, face_scale=1.0, layout="arcface"):
    """Warps the faces of one photo onto the crop template, like `facemtl.faces.align.align_face`.

    Args:
        image: `uint8 [h, w, 3]`.
        points: `[k, 4, 2]` BlazeFace alignment points (eyes, nose tip, mouth centre).
        size: `(height, width)` of the crops.
        face_scale, layout: see `facemtl.faces.align.template`.

    Returns:
        `uint8 [k, height, width, 3]` crops.
    """
    height, width = size
    matrices = similarity_matrices(points, template((height, width), face_scale, layout, "blazeface"))
    # The warp op maps output pixels to input pixels: invert each crop's photo -> crop matrix.
    full = tf.concat([matrices, tf.tile([[[0.0, 0.0, 1.0]]], [tf.shape(matrices)[0], 1, 1])], axis=1)
    inverse = tf.reshape(tf.linalg.inv(full), [-1, 9])[:, :8]
    photo = tf.cast(image, tf.float32)[None]

    def warp(transform):  # one face at a time: the photo is never copied per face
        crop = tf.raw_ops.ImageProjectiveTransformV3(images=photo, transforms=transform[None],
                                                      output_shape=[height, width], fill_value=0.0,
                                                      interpolation="BILINEAR", fill_mode="REFLECT")[0]
        return tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8)

    return tf.map_fn(warp, inverse, fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8))
