"""Face detection and alignment."""

from facemtl.faces.align import align_face, similarity_transform, template
from facemtl.faces.detect import Detection, get_detector

__all__ = ["Detection", "align_face", "get_detector", "similarity_transform", "template"]
