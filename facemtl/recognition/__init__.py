"""Open-set identity: verification metrics, threshold calibration, galleries."""

from facemtl.recognition.gallery import Gallery
from facemtl.recognition.metrics import (
    rank1_identification,
    threshold_at_far,
    verification_report,
)

__all__ = ["Gallery", "rank1_identification", "threshold_at_far", "verification_report"]
