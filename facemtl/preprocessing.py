"""The one image preprocessing step shared by training data and the SavedModel, and the `Preprocessor`.

`Preprocessor` says in one object how a photo or a loose crop becomes the
model's input: the detector, the crop layout and size faces are aligned to,
and the scaling inside the model. Exports store it in their metadata
(`preprocessor`); training, `FaceAnalyzer`, `Predictor.frame_crops`, the server
and the `analyze_photo` graph read it from there or from the recipe.

Training pipelines and the exported serving graph both call `prepare_images`,
and the crops that training decodes once (`facemtl.data.materialize`) are sized
by `resize_face`, the same TensorFlow resize: a face crop reaches the model
with the same pixel values whichever path it takes. Aligned crops are warped
straight to the model's size (`facemtl.faces.align.align_face`), so they are
never resized at all. Scaling to the backbone's range happens inside the model
(`ImageNormalization`).
"""

from __future__ import annotations

import dataclasses
import functools

from facemtl.faces.align import align_face
from facemtl.faces.detection import DEFAULT_DETECTOR

# A loose face crop smaller than this (square) is upscaled to this side before detection: the small photo it
# stands for (BlazeFace finds a face in ~95% of FER2013's 48 px crops at 160).
CROP_UPSCALE = 160


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """How a photo or a face crop becomes the model's input.

    Attributes:
        height, width: the model's input size (aligned crops are warped straight to it).
        layout: where aligned faces put their landmarks (`facemtl.faces.align.LAYOUTS`).
        detector: the face detector's name (`facemtl.faces.detect.get_detector`).
        face_scale: the face's size in the crop relative to the layout (`align.template`).
        scaling: the pixel scaling inside the model (`ImageNormalization`: "dlib", "tf", "caffe").
        crop_upscale: loose square crops smaller than this are upscaled to it before detection.

    Example:
        >>> Preprocessor.from_metadata(read_metadata("saved_models/quickstart/1")).layout
        'arcface'
    """

    height: int
    width: int
    layout: str = "arcface"
    detector: str = DEFAULT_DETECTOR
    face_scale: float = 1.0
    scaling: str = "tf"
    crop_upscale: int = CROP_UPSCALE

    @classmethod
    def from_model_config(cls, config):
        """The preprocessor a recipe's `model` section trains and exports with."""
        scaling = config.normalization
        if config.backbone == "dlib_resnet":
            scaling = "dlib"
        elif scaling == "auto":  # ImageNet weights were trained on caffe-scaled pixels
            scaling = "caffe" if config.backbone_weights == "imagenet" else "tf"
        return cls(config.height, config.width, config.crop_layout, scaling=scaling)

    @classmethod
    def from_metadata(cls, metadata):
        """An export's preprocessor: its `preprocessor` entry, or (older exports) its input size and crop layout."""
        entry = metadata.get("preprocessor")
        if entry:
            fields = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in entry.items() if k in fields})
        size = metadata["input"]
        return cls(size["height"], size["width"], metadata.get("crop", {}).get("layout", "arcface"),
                   scaling="dlib" if metadata.get("backbone") == "dlib_resnet" else "tf")

    def to_dict(self):
        return dataclasses.asdict(self)

    @property
    def crop_min_face(self):
        """The smallest face side a detector looks for in a crop upscaled to `crop_upscale` (its detector's setting)."""
        return max(8, self.crop_upscale // 8)

    def crop_photo(self, crop, always=False):
        """A loose face crop as the small photo it stands for, the first step of framing a crop.

        A square crop smaller than `crop_upscale` (every crop, with `always`:
        how training frames a dataset of crops) becomes `crop_upscale` px square
        by the one resize (`resize_face`); any other is a photo already.
        """
        h, w = crop.shape[:2]
        return resize_face(crop, self.crop_upscale) if always or (h == w and h < self.crop_upscale) else crop

    def align(self, image, detection):
        """`(crop uint8 [height, width, 3], matrix 2x3)`: a detected face warped onto the layout at the model's size."""
        return align_face(image, detection.landmarks, (self.height, self.width), self.face_scale, self.layout,
                          detection.points)

    def frame(self, photo, detector):
        """The framing rule: the detector's best-scoring face in `photo`, aligned (`align`); `None` when none is found.

        Training's framed views (`facemtl.data.photo_framing`), `Predictor`'s
        crops and `FaceAnalyzer`'s photos all go through it.
        """
        detections = detector.detect(photo)
        return self.align(photo, max(detections, key=lambda d: d.score)) if detections else None


def prepare_images(images, height, width, channels):
    """Resizes RGB images to the model's input and converts their channels.

    Args:
        images: `[batch, h, w, 3]` (or unbatched `[h, w, 3]`) uint8 or float
            tensor with values in [0, 255], any `h, w`.
        height, width: the model's input size.
        channels: 1 (converted to gray with ITU-R 601 weights) or 3.

    Returns:
        A float32 tensor `[..., height, width, channels]` in [0, 255].
    """
    import tensorflow as tf  # imported when pixels are prepared: the Preprocessor itself needs none

    x = resize_images(images, height, width)
    if channels == 1:
        x = tf.image.rgb_to_grayscale(x)
    return tf.clip_by_value(x, 0.0, 255.0)


def prepare_batch(images, height, width, channels, *, augmenters=(), grayscale_probability=0.0, seed=None):
    """A training or evaluation batch, in the one order every pipeline uses.

    The serving resize first (`prepare_images`: a crop reaches the model with
    the pixels serving gives it), then, for training, random grayscale and the
    augmentation layers at the model's size, clipped to [0, 255], then the
    model's channels.

    Args:
        images: `[batch, h, w, 3]` uint8 or float in [0, 255].
        height, width, channels: the model's input.
        augmenters: Keras augmentation layers (`data.pipeline.augmentation_layers`), run with `training=True`.
        grayscale_probability: per-sample chance of random grayscale.
        seed: the grayscale draw's seed.

    Returns:
        float32 `[batch, height, width, channels]` in [0, 255].
    """
    import tensorflow as tf  # imported when pixels are prepared: the Preprocessor itself needs none

    x = resize_images(images, height, width)
    if grayscale_probability:
        x = random_grayscale(x, grayscale_probability, seed)
    for layer in augmenters:
        x = tf.clip_by_value(layer(x, training=True), 0.0, 255.0)
    if channels == 1:
        x = tf.image.rgb_to_grayscale(x)
    return x


def random_grayscale(images, probability, seed=None):
    """Turns each image gray (still 3 channels) with `probability`, so colour cannot tell which dataset a face is from."""
    import tensorflow as tf  # imported when pixels are prepared: the Preprocessor itself needs none

    gray = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(images))
    pick = tf.random.uniform([tf.shape(images)[0], 1, 1, 1], seed=seed) < probability
    return tf.where(pick, gray, images)


def resize_images(images, height, width):
    """The one resize of face crops: bilinear with antialiasing, rounded to whole values in [0, 255].

    Rounding makes a crop resized here, stored as uint8 and fed to the model
    equal to the same crop resized inside the serving graph. When the size
    already matches, the values pass through unchanged.

    Args:
        images: `[..., h, w, 3]` uint8 or float tensor in [0, 255].
        height, width: the output size.

    Returns:
        float32 `[..., height, width, 3]`.
    """
    import tensorflow as tf  # imported when pixels are prepared: the Preprocessor itself needs none

    x = tf.cast(images, tf.float32)
    if x.shape[-3] == height and x.shape[-2] == width:
        return x
    x = tf.image.resize(x, (height, width), method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(x), 0.0, 255.0)


def resize_face(image, size):
    """`resize_images` for one `uint8 [h, w, 3]` numpy crop to `size` x `size`; returns uint8 numpy.

    Example:
        >>> resize_face(np.zeros((48, 48, 3), np.uint8), 64).shape
        (64, 64, 3)
    """
    import numpy as np

    if image.shape[:2] == (size, size):
        return image
    return _resize_fn(size)(image).numpy().astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _resize_fn(size):
    import tensorflow as tf  # imported when pixels are prepared: the Preprocessor itself needs none

    # One traced function per output size: eager calls cost several times more per crop.
    return tf.function(lambda image: resize_images(image, size, size), autograph=False,
                       input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
