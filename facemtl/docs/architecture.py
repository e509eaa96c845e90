"""Draws docs/architecture.png: facemtl's layers and how a recipe and a photo travel through them.

    python docs/architecture.py
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

LAYERS = [  # (name, modules, colour), top to bottom: tests/test_architecture.py checks no import goes up
    ("command line, server, pipelines", "cli.py · serving/ (TF Serving's REST API, photos, galleries, web page) · "
     "pipelines/ (Apache Beam) · annotate.py", "#fde2c8"),
    ("recognition", "recognition/ (galleries over stores/ · embed · calibration · clustering · enrolment) · "
     "scoring.py (facemtl evaluate)", "#fbe7a1"),
    ("inference", "inference.py: Predictor (crops) and FaceAnalyzer (photos), on the LiteRT copy by default",
     "#f9d0d0"),
    ("training and loading", "training/ (loop.fit_phases: the one fit loop · runs · trainer · task · feature_cache · "
     "attribute_heads) · installed.py", "#e3d7f4"),
    ("export", "export/ (saved_model: 3 signatures · tflite · cache: a preset's SavedModel · outputs: one decoder)",
     "#f4d6e8"),
    ("models, data, metrics", "models/ (multitask: BACKBONES · dlib_resnet · heads · presets: all loading) · data/ "
     "(readers · catalog · feature_cache · photo_framing) · evaluation.py", "#d4e6f7"),
    ("faces", "faces/ (detect: BlazeFace, MTCNN, Haar · blazeface · graph: detection in TF ops · align_folder)",
     "#d8f0dc"),
    ("records, runtimes, base", "config (recipes) · preprocessing (Preprocessor: the framing rule) · litert · "
     "faces/align · export/metadata · open_set · files, images, media", "#eeeeee"),
]


def main(out=os.path.join(os.path.dirname(os.path.abspath(__file__)), "architecture.png")):
    fig, ax = plt.subplots(figsize=(12, 8.2))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 9.2)
    ax.axis("off")
    top = 8.6
    for i, (name, modules, colour) in enumerate(LAYERS):
        y = top - i * 1.0
        ax.add_patch(FancyBboxPatch((2.2, y - 0.38), 7.6, 0.76, boxstyle="round,pad=0.02", fc=colour, ec="#555"))
        ax.text(2.4, y + 0.12, name, fontsize=11, weight="bold", va="center")
        ax.text(2.4, y - 0.17, modules, fontsize=6.6, va="center", color="#333")
    # A recipe travels up the left side, a photo down and up the right side.
    arrow = dict(arrowstyle="-|>", mutation_scale=14, lw=1.6)
    ax.add_patch(FancyArrowPatch((1.2, 0.9), (1.2, 8.6), color="#7a3", **arrow))
    ax.text(0.1, 0.45, "recipe.yaml\n(facemtl train)", fontsize=9, color="#7a3")
    recipe_steps = [(1.6, "1 validate;\n3 framing rule"), (2.6, "3 detect in\ncrops"),
                    (3.6, "2 read, split,\ncache; 4 build"), (4.6, "6 export"),
                    (5.6, "5 fit_phases;\n7 close_run"), (8.6, "facemtl train")]
    for y, step in recipe_steps:
        ax.text(0.05, y, step, fontsize=7, color="#575", va="center")
    ax.add_patch(FancyArrowPatch((10.8, 8.7), (10.8, 2.3), color="#c62", **arrow))
    ax.add_patch(FancyArrowPatch((11.2, 2.3), (11.2, 6.7), color="#c62", **arrow))  # the answer, back up
    ax.text(9.9, 9.0, "photo (facemtl analyze, /v1/analyze)", fontsize=9, color="#c62")
    photo_steps = [(9.95, 8.3, "decode"), (9.95, 2.65, "detect,\nframe"), (11.3, 6.3, "one forward\npass,\n"
                   "one decoder"), (11.3, 8.3, "open-set rule,\nJSON answer")]
    for x, y, step in photo_steps:
        ax.text(x, y, step, fontsize=7, color="#a52", va="center")
    ax.text(6.0, 0.35, "Metadata (assets.extra/facemtl.json) carries class names, the Preprocessor, model_config, "
            "model id and the open-set rule from export to every front end.", fontsize=8, ha="center", style="italic")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
