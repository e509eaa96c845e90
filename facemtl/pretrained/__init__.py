"""The models that ship inside the facemtl package: data only.

Each shipped model is a preset (`facemtl.models.presets`):
`facemtl/pretrained/<name>/<version>/` holds its metadata, LiteRT copy and the
weights that are not dlib's (dlib's network ships once, beside them, as
`dlib_face_recognition_resnet_model_v1.npz`). Which model a command loads is
`facemtl.installed.resolve_model`'s answer; a preset's SavedModel is written
on first use by `facemtl.export.cache`.
"""

import os

PRETRAINED_DIR = os.path.dirname(os.path.abspath(__file__))
RELEASE = "release"
