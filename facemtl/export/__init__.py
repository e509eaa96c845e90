"""Export: the SavedModel in TF Serving's versioned layout (its three signatures) and the LiteRT copy.

`facemtl.export.saved_model` writes and reads SavedModels and their metadata
(re-exported here: `from facemtl.export import export_saved_model`);
`facemtl.export.tflite` converts a model to LiteRT. `facemtl.serving` serves
what these write; `facemtl.litert` runs the LiteRT copy. `facemtl.export.metadata`
reads an export's metadata without TensorFlow.
"""

__all__ = ["EXPORT_FILE", "FORMAT_VERSION", "MAX_FACES", "MAX_PHOTO_SIDE", "METADATA_FILE", "OWN_METADATA", "SIGNATURES",
           "attribute_output", "crop_layout", "export_run", "export_saved_model", "load_run_model", "make_serving_fns",
           "next_version", "read_metadata", "resolve_run_path", "run_export", "run_relative", "update_metadata"]


def __getattr__(name):
    # Imported when first asked for: importing facemtl.export does not start TensorFlow.
    if name == "attribute_output":
        from facemtl.export.outputs import attribute_output

        return attribute_output
    if name in ("EXPORT_FILE", "METADATA_FILE", "crop_layout", "read_metadata", "update_metadata"):
        from facemtl.export import metadata

        return getattr(metadata, name)
    if name in __all__:
        from facemtl.export import saved_model

        return getattr(saved_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
