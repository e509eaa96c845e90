"""Fixtures shared by the data tests."""

import numpy as np
import pytest
from PIL import Image

from facemtl.data.synthetic import generate_faces


@pytest.fixture
def datasets(tmp_path):
    """A FER2013 CSV (expressions) and two identity-folder datasets with train/test splits."""
    images, ids, exprs = generate_faces(4, 3, size=48, seed=1)
    rows = [f"{e},\"{' '.join(map(str, np.asarray(Image.fromarray(im).convert('L')).ravel()))}\",{u}"
            for im, e, u in zip(images, exprs, ["Training", "Training", "PublicTest"] * 28)]
    (tmp_path / "fer.csv").write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    for name, seed in (("lfw", 2), ("orl", 3)):
        imgs, pids, _ = generate_faces(3, 1, size=64, seed=seed, style_seed=seed)
        for k, (im, p) in enumerate(zip(imgs, pids)):
            split = "test" if k % 4 == 0 else "train"
            d = tmp_path / name / split / f"person{p}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im).save(d / f"{k}.png")
    return tmp_path
