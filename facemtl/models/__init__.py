"""Backbones, heads, the multi-task model and the presets (the shipped models as Keras models)."""

_WHERE = {"build_resnet": "backbones", "TASKS": "multitask", "build_multitask": "multitask",
          "build_multitask_model": "multitask", "set_backbone_trainable": "multitask", "from_preset": "presets",
          "list_presets": "presets"}
__all__ = sorted(_WHERE)


def __getattr__(name):
    # Imported when first asked for: `facemtl.models.presets` (metadata, paths) is read without Keras.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"facemtl.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
