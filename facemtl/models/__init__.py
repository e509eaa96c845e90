"""Backbones, heads, the multi-task model and the presets (the shipped models as Keras models)."""

from facemtl.models.backbones import build_resnet
from facemtl.models.multitask import TASKS, build_from_recipe, build_multitask_model, set_backbone_trainable
from facemtl.models.presets import from_preset, list_presets

__all__ = ["TASKS", "build_from_recipe", "build_multitask_model", "build_resnet", "from_preset", "list_presets",
           "set_backbone_trainable"]
