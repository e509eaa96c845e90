"""`/v1/analyze` answers real strangers "unknown" (the release model's open-set rule; see
tests/recognition/test_strangers.py for the other surfaces)."""

import base64

import pytest

from tests.helpers import identity_labels, orl_photos

pytestmark = [pytest.mark.shared_data, pytest.mark.slow, pytest.mark.xdist_group("server")]  # one server per run


def test_strangers_are_unknown_through_the_rest_api(server):
    photos = orl_photos()[::10]  # 40 people, one photo each
    labels = []
    for s in range(0, len(photos), 8):
        body = {"photos": [{"b64": base64.b64encode(open(p, "rb").read()).decode()} for p in photos[s:s + 8]]}
        status, answer, _ = server.request("POST", "/v1/analyze", body)
        assert status == 200, answer
        labels += identity_labels(answer["photos"])
    assert len(labels) == 40 and set(labels) == {"unknown"}
