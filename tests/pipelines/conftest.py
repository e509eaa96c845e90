"""Pipeline tests run Apache Beam's local runner in this process; they skip where `facemtl[beam]` is absent."""


import numpy as np
import pytest
from PIL import Image

pytest.importorskip("apache_beam")
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A small photo collection as users have them: faces, no face, a video, bad and odd files, sub-folders."""
    import cv2

    d = tmp_path_factory.mktemp("collection")
    astro = skimage_data.astronaut()
    (d / "trip" / "day1").mkdir(parents=True)
    (d / ".thumbs").mkdir()
    Image.fromarray(astro).save(d / "astronaut.jpg", quality=95)
    Image.fromarray(astro[:, ::-1]).save(d / "trip" / "mirror.png")
    Image.fromarray(np.concatenate([astro, astro[:, ::-1]], axis=1)).save(d / "trip" / "day1" / "two.jpg")
    Image.fromarray(skimage_data.coffee()).save(d / "trip" / "coffee.jpg")  # no face
    Image.fromarray(astro).save(d / ".thumbs" / "hidden.jpg")  # hidden: left out, as by `facemtl analyze`
    (d / "readme.txt").write_text("not a photo")  # ignored by name
    data = (d / "astronaut.jpg").read_bytes()
    (d / "trip" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "trip" / "empty.png").write_bytes(b"")
    writer = cv2.VideoWriter(str(d / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (512, 512))
    for i in range(6):
        writer.write(cv2.cvtColor(np.roll(astro, 4 * i, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()
    return d


