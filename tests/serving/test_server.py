"""`facemtl serve` as clients use it: TF Serving's REST API, photos, galleries, bad input, shutdown."""

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from tests.helpers import API_KEY, b64, png, png_claiming, start_server, stop_server

# One worker runs them all: one `server` process per run (each loads TensorFlow and the model: about 15 s).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("server")]

MODEL = "/v1/models/release"


def _release_version():
    """The shipped release's newest version, as the server reports it (a string)."""
    from facemtl.installed import default_model

    return os.path.basename(default_model())


@pytest.fixture(scope="module")
def astronaut_jpeg():
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def crops():
    """Two face-sized crops: the astronaut's face region and a flipped copy."""
    from skimage import data

    face = np.asarray(Image.fromarray(data.astronaut()[50:190, 170:280]).resize((150, 150)))
    return np.stack([face, face[:, ::-1]])


@pytest.fixture(scope="module")
def expected(crops):
    from facemtl.inference import Predictor

    predictor = Predictor(backend="savedmodel")  # :predict runs the SavedModel, as TF Serving does
    return predictor.forward(crops)


def multipart(files):
    """A multipart/form-data body with the given `(field, filename, bytes, content type)` parts."""
    boundary = "facemtl-test-boundary"
    parts = []
    for field, name, data, ctype in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_status_and_metadata(server):
    status, body, _ = server.request("GET", MODEL)
    assert status == 200
    version = _release_version()
    assert body == {"model_version_status": [{"version": version, "state": "AVAILABLE",
                                              "status": {"error_code": "OK", "error_message": ""}}]}
    assert server.request("GET", f"{MODEL}/versions/{version}")[1] == body
    status, meta, _ = server.request("GET", f"{MODEL}/metadata")
    assert status == 200 and meta["model_spec"] == {"name": "release", "signature_name": "", "version": version}
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "serving_bytes", "analyze_photo"}
    assert sigs["serving_default"]["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert [d["size"] for d in sigs["serving_default"]["inputs"]["images"]["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "3"]
    assert sigs["serving_bytes"]["inputs"]["images"]["dtype"] == "DT_STRING"
    assert sigs["serving_bytes"]["method_name"] == "tensorflow/serving/predict"
    # The release model's open-set rule adds the closest trained name and its similarity; release 4, age and gender.
    answers = {"expression_probs", "expression", "identity_probs", "identity", "identity_closest",
               "identity_similarity", "embedding", "age", "gender_probs", "gender"}
    for name in ("serving_default", "serving_bytes"):
        assert set(sigs[name]["outputs"]) == answers
    photo = sigs["analyze_photo"]
    assert photo["inputs"]["images"]["dtype"] == "DT_STRING"
    assert set(photo["outputs"]) == answers | {"count", "image_size", "boxes", "scores", "keypoints"}
    assert photo["outputs"]["count"]["dtype"] == "DT_INT32"
    assert [d["size"] for d in photo["outputs"]["keypoints"]["tensor_shape"]["dim"]] == ["-1", "16", "6", "2"]
    assert server.request("GET", "/healthz")[1] == {"status": "ok"}


def test_predict_row_column_and_b64_match_the_model(server, crops, expected):
    requests = {
        "row": {"instances": crops.tolist()},
        "row-named": {"signature_name": "serving_default", "instances": [{"images": c.tolist()} for c in crops]},
        "column": {"inputs": {"images": crops.tolist()}},
        "b64": {"instances": [b64(png(c)) for c in crops]},
        "b64-bytes-signature": {"signature_name": "serving_bytes", "inputs": [b64(png(c)) for c in crops]},
    }
    for kind, body in requests.items():
        path = f"{MODEL}/versions/{_release_version()}:predict" if kind == "column" else f"{MODEL}:predict"
        status, answer, _ = server.request("POST", path, body)
        assert status == 200, (kind, answer)
        if "instances" in body:
            assert len(answer["predictions"]) == 2
            got = {k: [p[k] for p in answer["predictions"]] for k in answer["predictions"][0]}
        else:
            got = answer["outputs"]
        for key in ("expression_probs", "identity_probs", "embedding"):
            np.testing.assert_allclose(np.asarray(got[key]), expected[key], atol=1e-5, err_msg=kind)
        assert got["expression"] == [s.decode() for s in expected["expression"]], kind
        assert got["identity"] == [s.decode() for s in expected["identity"]], kind


def test_analyze_a_photo_three_ways(server, astronaut_jpeg):
    body, headers = multipart([("files", "astronaut.jpg", astronaut_jpeg, "image/jpeg")])
    answers = [server.request("POST", "/v1/analyze", body, headers),
               server.request("POST", "/v1/analyze", astronaut_jpeg, {"Content-Type": "image/jpeg"}),
               server.request("POST", "/v1/analyze", b64(astronaut_jpeg))]
    for status, answer, _ in answers:
        assert status == 200, answer
        photo = answer["photos"][0]
        assert photo["size"] == [512, 512] and len(photo["faces"]) == 1
        face = photo["faces"][0]
        assert face["expression"]["label"] == "happy"
        assert face["detector"] == "blazeface"
        assert set(face["landmarks"]) == {"right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear"}
        assert len(face["embedding"]) == 128
        assert 150 < face["box"][0] < 220 and 40 < face["box"][1] < 100
    assert answers[0][1]["photos"][0]["source"] == "astronaut.jpg"


def test_analyze_answers_as_facemtl_analyze_does(server, astronaut_jpeg):
    """`/v1/analyze` and `facemtl analyze` (`FaceAnalyzer`) run the same engine, the export's LiteRT copy: the same
    answers, not answers within the copy's quantisation noise of each other."""
    from facemtl.inference import FaceAnalyzer

    status, answer, _ = server.request("POST", "/v1/analyze", astronaut_jpeg, {"Content-Type": "image/jpeg"})
    assert status == 200, answer
    served, = answer["photos"][0]["faces"]
    here, = FaceAnalyzer().analyze([astronaut_jpeg])[0]["faces"]
    assert served["expression"] == here["expression"] and served["identity"] == here["identity"]
    np.testing.assert_allclose(served["embedding"], here["embedding"], atol=1e-6)
    assert served["age"] == here["age"] and served["gender"] == here["gender"]


def test_analyze_photo_signature_answers_photos_like_the_python_route(server, astronaut_jpeg):
    """`:predict` with `analyze_photo`: detection and alignment inside the SavedModel, as stock TF Serving runs it."""
    status, python, _ = server.request("POST", "/v1/analyze", astronaut_jpeg, {"Content-Type": "image/jpeg"})
    assert status == 200, python
    face = python["photos"][0]["faces"][0]
    status, answer, _ = server.request("POST", f"{MODEL}:predict", {"signature_name": "analyze_photo",
                                                                     "instances": [b64(astronaut_jpeg)] * 2})
    assert status == 200, answer
    assert len(answer["predictions"]) == 2
    photo = answer["predictions"][0]
    assert photo["count"] == 1 and photo["image_size"] == [512, 512]
    np.testing.assert_allclose(photo["boxes"][0], face["box"], atol=2.0)
    assert photo["expression"][0] == face["expression"]["label"] == "happy"
    assert photo["expression"][1] == "" and not any(photo["boxes"][1])  # padding past `count`
    assert float(np.dot(photo["embedding"][0], face["embedding"])) > 0.99
    status, answer, _ = server.request("POST", f"{MODEL}:predict", {"signature_name": "analyze_photo",
                                                                     "instances": [[[[0, 0, 0]]]]})
    assert status == 400 and "analyze_photo takes encoded photos" in answer["error"]


def test_one_bad_photo_does_not_cost_the_good_ones(server, astronaut_jpeg):
    body, headers = multipart([("files", "good.jpg", astronaut_jpeg, "image/jpeg"),
                               ("files", "bad.jpg", b"not a jpeg at all", "image/jpeg")])
    status, answer, _ = server.request("POST", "/v1/analyze", body, headers)
    assert status == 200
    good, bad = answer["photos"]
    assert len(good["faces"]) == 1 and "faces" not in bad and "bad.jpg" in bad["error"]


def test_galleries_need_the_key_and_never_leave_the_store(server, astronaut_jpeg):
    body, headers = multipart([("files", "astronaut.jpg", astronaut_jpeg, "image/jpeg")])
    path = "/v1/galleries/crew/people/Eileen%20Collins"
    assert server.request("POST", path, body, headers)[0] == 401
    assert server.request("POST", path, body, {**headers, "X-API-Key": "wrong"})[0] == 401
    status, answer, _ = server.request("POST", path, body, {**headers, "Authorization": f"Bearer {API_KEY}"})
    assert status == 200 and answer["enrolled"] == 1 and answer["name"] == "Eileen Collins"
    assert server.request("GET", "/v1/galleries")[1] == {"galleries": ["crew"]}
    assert server.request("GET", "/v1/galleries/crew")[1] == {"gallery": "crew", "people": {"Eileen Collins": 1}}
    status, answer, _ = server.request("POST", "/v1/galleries/crew:identify", body, headers)
    assert status == 200 and answer["photos"][0]["faces"][0]["match"]["name"] == "Eileen Collins"
    status, answer, _ = server.request("POST", "/v1/analyze?gallery=crew", body, headers)
    assert answer["photos"][0]["faces"][0]["match"]["name"] == "Eileen Collins"
    for bad in ("..", "%2E%2E%2Fescape", "a%2Fb", "-x", "x" * 65):
        status, answer, _ = server.request("POST", f"/v1/galleries/{bad}/people/p", body,
                                           {**headers, "X-API-Key": API_KEY})
        assert status in (400, 404) and "error" in answer, bad
    assert server.request("POST", "/v1/galleries/crew/people/unknown", body, {**headers, "X-API-Key": API_KEY})[0] == 400
    assert server.request("GET", "/v1/galleries/nobody")[0] == 404
    assert server.request("DELETE", path)[0] == 401
    status, answer, _ = server.request("DELETE", path, headers={"X-API-Key": API_KEY})
    assert status == 200 and answer["embeddings"] == 1
    assert server.request("GET", "/v1/galleries/crew")[1]["people"] == {}
    # Nothing else was written, nothing outside: the gallery's folder in the embedded store.
    assert sorted(os.listdir(server.store)) == ["crew.gallery"]
    written = set(os.listdir(os.path.join(server.store, "crew.gallery")))
    assert {"gallery.sqlite"} <= written <= {"gallery.sqlite", "gallery.sqlite-wal", "gallery.sqlite-shm",
                                             "compact.lock"}


def test_bad_input_is_4xx_json_and_the_server_keeps_serving(server, crops, astronaut_jpeg):
    tiny = np.zeros((2, 2, 3), np.uint8).tolist()
    truncated = astronaut_jpeg[: len(astronaut_jpeg) // 3]
    bomb = png_claiming(25000, 25000)
    cases = [
        ("corrupt photo", "POST", "/v1/analyze", truncated[:200], {"Content-Type": "image/jpeg"}, 400),
        ("text as photo", "POST", "/v1/analyze", b"hello", {"Content-Type": "image/png"}, 400),
        ("bomb photo", "POST", "/v1/analyze", bomb, {"Content-Type": "image/png"}, 413),
        ("bomb crop", "POST", f"{MODEL}:predict", {"instances": [b64(bomb)]}, None, 413),
        ("corrupt crop", "POST", f"{MODEL}:predict", {"instances": [b64(truncated)]}, None, 400),
        ("not json, any content type", "POST", f"{MODEL}:predict", b"instances", {"Content-Type": "text/plain"}, 400),
        ("photo content type", "POST", "/v1/analyze", b"x", {"Content-Type": "application/pdf"}, 415),
        ("malformed json", "POST", f"{MODEL}:predict", b'{"instances": [', {"Content-Type": "application/json"}, 400),
        ("not utf-8 json", "POST", f"{MODEL}:predict", b"\xff\xfe{", {"Content-Type": "application/json"}, 400),
        ("huge instances", "POST", f"{MODEL}:predict", {"instances": [tiny] * 300}, None, 413),
        ("wrong dtype", "POST", f"{MODEL}:predict", {"instances": [[[[0.5, 1, 2]]]]}, None, 400),
        ("wrong shape", "POST", f"{MODEL}:predict", {"instances": [[[1, 2, 3, 4]]]}, None, 400),
        ("wrong signature", "POST", f"{MODEL}:predict", {"signature_name": "nope", "instances": [tiny]}, None, 400),
        ("bytes signature, pixels", "POST", f"{MODEL}:predict",
         {"signature_name": "serving_bytes", "instances": [tiny]}, None, 400),
        ("unknown model", "POST", "/v1/models/nope:predict", {"instances": [tiny]}, None, 404),
        ("unknown version", "POST", f"{MODEL}/versions/9:predict", {"instances": [tiny]}, None, 404),
        ("unknown model status", "GET", "/v1/models/nope", None, None, 404),
        ("unknown route", "GET", "/v1/nothing", None, None, 404),
        ("bad query", "POST", "/v1/analyze?top_k=0", astronaut_jpeg, {"Content-Type": "image/jpeg"}, 400),
        ("empty multipart", "POST", "/v1/analyze", *multipart([]), 400),
        ("json without photo", "POST", "/v1/analyze", {"url": "http://example.com/a.jpg"}, None, 400),
        ("unknown gallery", "POST", "/v1/analyze?gallery=none", astronaut_jpeg, {"Content-Type": "image/jpeg"}, 404),
    ]
    oversize = [  # the 2 MB limit: declared up front, or only found while a chunked body streams in
        server.raw_request("POST", "/v1/analyze", {"Content-Type": "image/jpeg", "Content-Length": str(3 * 2**20)}),
        server.raw_request("POST", f"{MODEL}:predict", {"Content-Type": "application/json",
                                                        "Transfer-Encoding": "chunked"}, [b"[" * 2**16] * 33),
        server.raw_request("POST", "/v1/analyze", {"Content-Type": "multipart/form-data; boundary=x",
                                                   "Transfer-Encoding": "chunked"},
                           [b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n'
                            b"Content-Type: image/jpeg\r\n\r\n"] + [b"x" * 2**16] * 33),
    ]
    for status, answer in oversize:
        assert status == 413 and "limit" in answer["error"], answer
    for name, method, path, body, headers, expected_status in cases:
        status, answer, _ = server.request(method, path, body, headers)
        assert status == expected_status, (name, status, answer)
        assert isinstance(answer, dict) and answer.get("error"), (name, answer)
    status, answer, _ = server.request("POST", f"{MODEL}:predict", {"instances": crops.tolist()})
    assert status == 200 and len(answer["predictions"]) == 2
    assert server.request("GET", "/readyz")[0] == 200


def test_the_documented_curl_lines_work_unchanged(server, astronaut_jpeg, crops, tmp_path):
    """Every `curl ... -d "..."` of docs/serving.md, its `$(base64 -w0 FILE)` filled in, sent as curl sends it."""
    import base64
    import re

    files = {"face_crop.jpg": io.BytesIO(), "group.jpg": io.BytesIO(astronaut_jpeg)}
    Image.fromarray(crops[0]).save(files["face_crop.jpg"], "JPEG", quality=95)
    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "serving.md"), encoding="utf-8").read()
    calls = re.findall(r'curl -s localhost:8501(\S+) \\\n\s+-d "(.*)"\n', text)
    assert len(calls) >= 3, calls
    for path, body in calls:
        body = body.replace('\\"', '"')
        body = re.sub(r"\$\(base64 -w0 (\S+)\)", lambda m: base64.b64encode(files[m.group(1)].getvalue()).decode(), body)
        # curl -d labels its body application/x-www-form-urlencoded, which stock TF Serving reads as JSON too.
        status, answer, _ = server.request("POST", path, body.encode(),
                                           {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200, (path, answer)
        assert answer["predictions"], answer


def test_docs_and_page_work_offline(server):
    status, page, headers = server.request("GET", "/docs")
    assert status == 200 and b"swagger" in page.lower()
    assert b"cdn" not in page.lower() and b"https://" not in page
    status, spec, _ = server.request("GET", "/openapi.json")
    assert status == 200 and "/v1/models/{name}:predict" in spec["paths"] and "/v1/analyze" in spec["paths"]
    status, page, _ = server.request("GET", "/")
    assert status == 200 and b"<canvas" in page and b"http://" not in page and b"https://" not in page


def test_sigterm_finishes_open_requests_then_exits(tmp_path, astronaut_jpeg):
    """Open requests are answered after SIGTERM; then the process ends (uvicorn re-raises the signal)."""
    import signal
    import time

    srv = start_server(tmp_path, "--detector", "mtcnn")  # the slow detector: ~0.25 s a photo keeps requests open
    results, finished, started = [], [], threading.Barrier(7)

    def send():
        started.wait()
        results.append(srv.request("POST", "/v1/analyze", astronaut_jpeg, {"Content-Type": "image/jpeg"})[0])
        finished.append(time.monotonic())

    threads = [threading.Thread(target=send) for _ in range(6)]  # photos one at a time: ~seconds of work queued
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.5)
    signalled = time.monotonic()
    code = stop_server(srv)
    for t in threads:
        t.join(60)
    assert code in (0, -signal.SIGTERM)
    assert results == [200] * 6
    assert max(finished) > signalled  # some requests were still open when the signal came
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert "Traceback" not in log
