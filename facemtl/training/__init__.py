"""Training: masked multi-task losses, callbacks and the recipe-driven trainer."""

from facemtl.training.losses import MaskedSparseCategoricalAccuracy, MaskedSparseCategoricalCrossentropy

__all__ = ["MaskedSparseCategoricalAccuracy", "MaskedSparseCategoricalCrossentropy"]
