"""Backbones, heads and the multi-task model."""

from facemtl.models.backbones import build_resnet
from facemtl.models.multitask import TASKS, build_from_recipe, build_multitask_model, set_backbone_trainable

__all__ = ["TASKS", "build_from_recipe", "build_multitask_model", "build_resnet", "set_backbone_trainable"]
