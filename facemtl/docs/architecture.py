"""Draws docs/architecture.png: facemtl's layers and how a recipe and a photo travel through them.

    python docs/architecture.py
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

LAYERS = [  # (name, modules, colour)
    ("front end", "cli.py · serving/ (REST, web page) · inference.py (Predictor, FaceAnalyzer)", "#fde2c8"),
    ("export", "export/ (SavedModel + 3 signatures, metadata) · export/tflite.py · litert.py", "#f9d0d0"),
    ("task / training", "training/ (trainer.py: fit; custom_loop.py: multi-worker; feature_cache.py: CPU recipe)",
     "#e3d7f4"),
    ("model", "models/ (backbones, dlib_resnet, heads, multitask, presets) · pretrained/ (release preset)", "#d4e6f7"),
    ("faces", "faces/ (detect: BlazeFace, MTCNN, Haar · align · graph: detection in TF ops)", "#d8f0dc"),
    ("data", "data/ (readers per format · catalog: mix, split, hold out · pipeline: tf.data) · preprocessing.py",
     "#eeeeee"),
]


def main(out=os.path.join(os.path.dirname(os.path.abspath(__file__)), "architecture.png")):
    fig, ax = plt.subplots(figsize=(12, 6.4))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 7.2)
    ax.axis("off")
    top = 6.6
    for i, (name, modules, colour) in enumerate(LAYERS):
        y = top - i * 1.0
        ax.add_patch(FancyBboxPatch((2.2, y - 0.38), 7.6, 0.76, boxstyle="round,pad=0.02", fc=colour, ec="#555"))
        ax.text(2.4, y + 0.12, name, fontsize=11, weight="bold", va="center")
        ax.text(2.4, y - 0.17, modules, fontsize=7.6, va="center", color="#333")
    # A recipe travels up the left side, a photo down and up the right side.
    arrow = dict(arrowstyle="-|>", mutation_scale=14, lw=1.6)
    ax.add_patch(FancyArrowPatch((1.2, 0.9), (1.2, 5.6), color="#7a3", **arrow))
    ax.text(0.1, 0.55, "recipe.yaml\n(facemtl train)", fontsize=9, color="#7a3")
    recipe_steps = ["read sources,\nmix, split", "align like\nserving", "build model\n(preset)", "fit with λ,\nmasked losses",
                    "export\nSavedModel"]
    for k, step in enumerate(recipe_steps):
        ax.text(0.05, 1.5 + k * 0.95, step, fontsize=7, color="#575", va="center")
    ax.add_patch(FancyArrowPatch((10.8, 6.7), (10.8, 2.3), color="#c62", **arrow))
    ax.add_patch(FancyArrowPatch((11.2, 2.3), (11.2, 6.7), color="#c62", **arrow))  # the answer, back up
    ax.text(10.25, 6.95, "photo (facemtl analyze, /v1/analyze)", fontsize=9, color="#c62")
    photo_steps = [(9.95, 6.35, "decode"), (9.95, 2.65, "detect,\nalign chip"), (11.3, 3.6, "one forward\npass"),
                   (11.3, 6.3, "open-set rule,\nJSON answer")]
    for x, y, step in photo_steps:
        ax.text(x, y, step, fontsize=7, color="#a52", va="center")
    ax.text(6.0, 0.35, "Metadata (assets.extra/facemtl.json) carries class names, crop layout, model id and the "
            "open-set rule from export to every front end.", fontsize=8, ha="center", style="italic")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
