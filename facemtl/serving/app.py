"""`facemtl serve`: TF Serving's REST API for a facemtl SavedModel, photos, galleries and a web page.

Routes (OpenAPI docs at `/docs`, served offline):

- `GET /v1/models/<name>[/versions/<v>]`, `.../metadata`, `POST ...:predict`: TF Serving's REST API
  (see `facemtl.serving.rest`), so TF Serving clients work unchanged.
- `POST /v1/analyze`: photos (multipart `files`, raw `image/*`, or JSON `{"b64": ...}` /
  `{"photos": [{"b64": ...}]}`) -> every face's box, landmarks, expression, identity, embedding;
  with `?gallery=NAME` each face's match.
- `GET /v1/galleries`, `GET /v1/galleries/<g>`, `POST /v1/galleries/<g>:identify`,
  `POST|DELETE /v1/galleries/<g>/people/<person>` (writes need the API key).
- `GET /` the web page; `/healthz` (the process is up), `/readyz` (the model is loaded).

Safety: binds 127.0.0.1 unless told otherwise; bodies over `max_body_bytes` are answered 413
before they are read whole; images are checked from their header (pixel count) before they
are decoded; gallery and person names are validated, never used as paths; CORS is off unless
origins are given; every bad input is a 4xx JSON `{"error": ...}`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import json
import logging
import os
import threading
from contextlib import asynccontextmanager

from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from facemtl import __version__
from facemtl.errors import FacemtlError
from facemtl.faces.detect import DEFAULT_DETECTOR
from facemtl.images import decode_each, load_image
from facemtl.inference import FaceAnalyzer
from facemtl.litert import split_cores
from facemtl.recognition.gallery import (
    Gallery,
    GalleryError,
    check_gallery_name,
    check_person_name,
    list_galleries,
    model_info,
)
from facemtl.recognition.stores import default_store, open_store
from facemtl.serving import rest
from facemtl.serving.model import ServedModel
from facemtl.serving.rest import RequestError

log = logging.getLogger("facemtl.serve")
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
API_KEY_ENV = "FACEMTL_API_KEY"


class BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: answers 413 for bodies over the limit, by header or as they stream in."""

    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            body = json.dumps({"error": f"Request body of {length.decode(errors='replace')} bytes is over the "
                                        f"limit of {self.max_bytes} bytes"}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
            return await send({"type": "http.response.body", "body": body})
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return message

        return await self.app(scope, limited_receive, send)


@dataclasses.dataclass(eq=False)
class ServerState:
    """What the routes share: the model (loaded in the background), the analyzer, settings and locks."""

    model_path: str
    name: str
    detector: str
    max_batch_size: int
    max_wait_ms: float
    api_key: str | None
    gallery_store: str
    max_instances: int
    max_pixels: int
    max_photos: int
    analyze_workers: int

    def __post_init__(self):
        self.model = None
        self.analyzer = None
        self.load_error = None
        self.ready = threading.Event()
        self.gallery_lock = threading.Lock()
        self.galleries = {}  # name -> Gallery, opened once: the store follows other writers by itself
        # Detection is CPU-heavy: a small pool keeps concurrent photos from thrashing the cores.
        self.photo_pool = concurrent.futures.ThreadPoolExecutor(self.analyze_workers, initializer=split_cores,
                                                                initargs=(self.analyze_workers,),
                                                                thread_name_prefix="facemtl-photo")

    def load(self):
        try:
            model = ServedModel(self.model_path, name=self.name, max_batch_size=self.max_batch_size,
                                max_wait_ms=self.max_wait_ms)
            self.analyzer = FaceAnalyzer(model.predictor, detector=self.detector, max_side=2048)
            self.model = model
            log.info("facemtl: serving %s version %s from %s", self.model.name, self.model.version, self.model.path)
        except Exception as exc:  # reported by /readyz and every model route
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("facemtl: the model could not be loaded: %s", self.load_error)
        finally:
            self.ready.set()

    def gallery(self, name, create=False):
        """Gallery `name` of the store, opened once per process (a blocking call: run it in the pool)."""
        with self.gallery_lock:
            if name not in self.galleries:
                model = model_info(self.model.metadata, self.model.path)
                self.galleries[name] = Gallery.open(name, self.gallery_store, model=model, create=create)
            return self.galleries[name]

    def require_model(self):
        if not self.ready.is_set():
            raise RequestError("The model is still loading; retry shortly (see /readyz)", status=503)
        if self.model is None:
            raise RequestError(f"The model could not be loaded: {self.load_error}", status=503)
        return self.model

    def check_model(self, name, version=None):
        model = self.require_model()
        if name != model.name:
            raise RequestError(f"Servable not found for request: Latest({name})", status=404)
        if version is not None and str(version) != str(model.version):
            raise RequestError(f"Servable not found for request: Specific({name}, {version}); "
                               f"version {model.version} is served", status=404)
        return model

    def check_api_key(self, request):
        if not self.api_key:
            raise RequestError("Gallery writes are disabled: start the server with --api-key "
                               f"(or ${API_KEY_ENV})", status=403)
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise RequestError("Missing or wrong API key (send it as X-API-Key or Authorization: Bearer)",
                               status=401)

    def close(self):
        self.photo_pool.shutdown(wait=True)
        if self.model is not None:
            self.model.close()


# `curl -d '{...}'` labels a JSON body as a form; stock TF Serving reads the body as JSON whatever its label.
JSON_TYPES = ("application/json", "", "application/x-www-form-urlencoded", "text/plain")


async def _json_body(request):
    """The request's JSON body, whatever its Content-Type says (as TF Serving's REST API reads it)."""
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"Malformed JSON body: {exc}") from None


async def _photos(request, state):
    """The photos of an analyze/enroll/identify request: `[(name, bytes)]`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=state.max_photos, max_fields=state.max_photos + 8)
        except BodyTooLarge:
            raise
        except Exception as exc:  # python-multipart's parse errors and Starlette's limits
            raise RequestError(f"Malformed multipart body: {exc}") from None
        photos = []
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                photos.append((value.filename or key, await value.read()))
        if not photos:
            raise RequestError("The multipart body holds no file: send the photo(s) as field 'files'")
    elif content_type.startswith("image/"):
        photos = [("body", await request.body())]
    elif content_type in JSON_TYPES:
        body = await _json_body(request)
        if isinstance(body, dict) and set(body) == {"b64"}:
            photos = [("photo", rest.decode_b64(body, "body"))]
        elif isinstance(body, dict) and set(body) == {"photos"} and isinstance(body["photos"], list):
            photos = [(f"photos[{i}]", rest.decode_b64(v, f"photos[{i}]")) for i, v in enumerate(body["photos"])]
        else:
            raise RequestError("Expected {\"b64\": ...} or {\"photos\": [{\"b64\": ...}, ...]}")
    else:
        raise RequestError(f"Send photos as multipart/form-data, image/*, or JSON. Received {content_type!r}",
                           status=415)
    if not photos:
        raise RequestError("No photo in the request")
    if len(photos) > state.max_photos:
        raise RequestError(f"{len(photos)} photos; the limit is {state.max_photos} per request", status=413)
    return photos


def _analyze_photos(state, photos, gallery=None, threshold=None, top_k=3):
    """Runs in the photo pool: per photo its faces (with matches), or its error."""
    analyzer = state.analyzer

    def load(photo):
        name, data = photo
        rest.check_encoded_image(data, name, state.max_pixels)
        return load_image(data, max_side=analyzer.max_side)

    entries, images, owners = decode_each(photos, load, errors=(FacemtlError,))
    results = [{"source": name} if exc is None else
               {"source": name, "error": str(exc), "_status": getattr(exc, "status", 400)}
               for (name, _), exc in zip(photos, entries)]
    faces_per_photo = analyzer.analyze_images(images, gallery, threshold, top_k) if images else []
    for i, image, faces in zip(owners, images, faces_per_photo):
        results[i].update({"size": list(image.shape[:2]), "faces": faces})
    return results


def _check_photo_results(results):
    """The per-photo results to answer; when every photo failed, the request fails with their status."""
    statuses = [r.pop("_status") for r in results if "_status" in r]
    if len(statuses) == len(results):
        raise RequestError("; ".join(r["error"] for r in results), status=max(statuses))
    return results


def create_app(model=None, *, name=None, detector=DEFAULT_DETECTOR, max_batch_size=32, max_wait_ms=0.0, api_key=None,
               gallery_store=None, max_body_bytes=20 * 2**20, max_instances=256, max_pixels=40_000_000,
               max_photos=16, analyze_workers=1, cors_origins=()):
    """The ASGI application of `facemtl serve`.

    Args:
        model: a SavedModel version folder, a model's base folder (newest
            version) or `None` for the release model.
        name: the model's name in `/v1/models/<name>` (default: the export's).
        detector: face detector for photos (`blazeface`, `mtcnn` or `haar`).
        max_batch_size, max_wait_ms: dynamic batching (see `DynamicBatcher`).
        api_key: required for gallery writes (default `$FACEMTL_API_KEY`; none: writes refused).
        gallery_store: the gallery store, a folder or a Milvus URI (default `$FACEMTL_GALLERIES` or
            `~/.facemtl/galleries`); opened once, when the server starts.
        max_body_bytes: bigger request bodies are answered 413.
        max_instances: most images per `:predict` request.
        max_pixels: most pixels per image (decompression bombs are refused from their header).
        max_photos: most photos per analyze/enroll/identify request.
        analyze_workers: photos analysed at once.
        cors_origins: origins allowed by CORS (none: CORS off).

    Returns:
        A FastAPI app; the model loads in the background when it starts.

    Example:
        >>> import uvicorn
        >>> uvicorn.run(create_app("saved_models/quickstart"), host="127.0.0.1", port=8501)
    """
    for key, value in {"max_batch_size": max_batch_size, "max_body_bytes": max_body_bytes,
                       "max_instances": max_instances, "max_pixels": max_pixels, "max_photos": max_photos,
                       "analyze_workers": analyze_workers}.items():
        if int(value) < 1:
            raise ValueError(f"{key} must be >= 1. Received: {key}={value}")
    state = ServerState(model, name=name, detector=detector, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                        api_key=api_key if api_key is not None else os.environ.get(API_KEY_ENV),
                        gallery_store=gallery_store or default_store(), max_instances=max_instances,
                        max_pixels=max_pixels, max_photos=max_photos, analyze_workers=analyze_workers)
    open_store(state.gallery_store)  # one connection or client per process, kept

    @asynccontextmanager
    async def lifespan(app):
        loader = threading.Thread(target=state.load, name="facemtl-load", daemon=True)
        loader.start()
        yield
        # Graceful shutdown: uvicorn has stopped taking requests and waited for open ones; answer what is queued.
        await asyncio.get_running_loop().run_in_executor(None, loader.join)
        state.close()

    app = FastAPIOffline(title="facemtl", version=__version__, lifespan=lifespan,
                         description="Face expression and identity: TF Serving's REST API, photos and galleries.")
    app.state.facemtl = state
    app.add_middleware(_BodyLimit, max_bytes=int(max_body_bytes))
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Content-Type", "X-API-Key", "Authorization"])

    def error(status, message):
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestError)
    async def _request_error(request, exc):
        return error(exc.status, str(exc))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request, exc):
        return error(413, f"Request body over the limit of {max_body_bytes} bytes")

    @app.exception_handler(GalleryError)
    async def _gallery_error(request, exc):
        return error(404 if "No gallery" in str(exc) or "no such gallery" in str(exc) else 400, str(exc))

    @app.exception_handler(FacemtlError)
    async def _facemtl_error(request, exc):
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error(400, f"Invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):
        log.exception("facemtl: unexpected error on %s %s", request.method, request.url.path)
        return error(500, f"Internal error ({type(exc).__name__}); the server keeps serving")

    async def in_pool(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(state.photo_pool, fn, *args)

    # -- health and the page ------------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"], summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The model is loaded and answering")
    async def readyz():
        if not state.ready.is_set() or state.model is None:
            return error(503, state.load_error or "loading the model")
        return {"status": "ready", "model": state.model.name, "version": state.model.version}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html")

    # -- TF Serving's REST API ----------------------------------------------------------------------------------

    # Each route answers for the latest version and for a named one (TF Serving's two paths); the version comes
    # from the path only, as TF Serving reads it (a query string is not a version).
    @app.get("/v1/models/{name}", tags=["tf-serving"], summary="Model status")
    @app.get("/v1/models/{name}/versions/{version}", tags=["tf-serving"], summary="Model version status")
    async def status(name: str, request: Request):
        return rest.model_status(state.check_model(name, request.path_params.get("version")).version)

    @app.get("/v1/models/{name}/metadata", tags=["tf-serving"], summary="Signatures")
    @app.get("/v1/models/{name}/versions/{version}/metadata", tags=["tf-serving"], summary="Signatures")
    async def metadata(name: str, request: Request):
        model = state.check_model(name, request.path_params.get("version"))
        return rest.model_metadata(model.name, model.version, model.signatures)

    @app.post("/v1/models/{name}:predict", tags=["tf-serving"], summary="Predict (TF Serving's row or column format)")
    @app.post("/v1/models/{name}/versions/{version}:predict", tags=["tf-serving"], summary="Predict with a version")
    async def predict(name: str, request: Request):
        model = state.check_model(name, request.path_params.get("version"))
        body = await _json_body(request)
        signature, images, row = await asyncio.get_running_loop().run_in_executor(
            None, lambda: rest.parse_predict(body, max_instances=state.max_instances, max_pixels=state.max_pixels))
        outputs = await asyncio.wrap_future(model.predict(signature, images))
        return JSONResponse(rest.format_predict(outputs, row))

    # -- photos and galleries -----------------------------------------------------------------------------------

    @app.post("/v1/analyze", tags=["photos"], summary="Every face of photos: box, landmarks, expression, identity")
    async def analyze(request: Request, gallery: str | None = Query(None, description="name faces from this gallery"),
                      threshold: float | None = Query(None, ge=-1, le=1), top_k: int = Query(3, ge=1, le=50)):
        state.require_model()
        photos = await _photos(request, state)
        found = await in_pool(state.gallery, gallery) if gallery else None
        results = await in_pool(_analyze_photos, state, photos, found, threshold, top_k)
        return {"model": state.model.name, "version": state.model.version, "photos": _check_photo_results(results)}

    @app.get("/v1/galleries", tags=["galleries"], summary="The galleries of the store")
    async def galleries():
        return {"galleries": await in_pool(list_galleries, state.gallery_store)}

    @app.get("/v1/galleries/{gallery}", tags=["galleries"], summary="The people of a gallery")
    async def gallery_people(gallery: str):
        state.require_model()
        found = await in_pool(state.gallery, gallery)
        return {"gallery": gallery, "people": await in_pool(found.people)}

    @app.post("/v1/galleries/{gallery}:identify", tags=["galleries"], summary="Who is in these photos?")
    async def identify(gallery: str, request: Request, threshold: float | None = Query(None, ge=-1, le=1),
                       top_k: int = Query(3, ge=1, le=50)):
        state.require_model()
        found = await in_pool(state.gallery, gallery)
        photos = await _photos(request, state)
        results = await in_pool(_analyze_photos, state, photos, found, threshold, top_k)
        return {"gallery": gallery, "photos": _check_photo_results(results)}

    def enroll_photos(gallery, person, photos):
        results = _analyze_photos(state, photos)
        embeddings, sources, skipped = [], [], []
        for result in results:
            faces = result.get("faces") or []
            if not faces:
                skipped.append({"source": result["source"], "error": result.get("error", "no face found")})
                continue
            largest = max(faces, key=lambda f: f["box"][2] * f["box"][3])
            embeddings.append(largest["embedding"])
            sources.append(result["source"])
        if not embeddings:
            raise RequestError(f"No face to enrol for {person!r}: the gallery was not changed ("
                               + "; ".join(f"{s['source']}: {s['error']}" for s in skipped) + ")")
        # One transaction in the store: concurrent enrolments (threads, other servers, CLI processes) queue there.
        total = state.gallery(gallery, create=True).enroll(person, embeddings, sources)
        return {"gallery": gallery, "name": person, "enrolled": len(embeddings), "skipped": skipped,
                "photos_of_name": total}

    @app.post("/v1/galleries/{gallery}/people/{person}", tags=["galleries"],
              summary="Enrol photos of a person (needs the API key)")
    async def enroll(gallery: str, person: str, request: Request):
        state.check_api_key(request)
        state.require_model()
        check_gallery_name(gallery)
        check_person_name(person)
        photos = await _photos(request, state)
        return await in_pool(enroll_photos, gallery, person, photos)

    @app.delete("/v1/galleries/{gallery}/people/{person}", tags=["galleries"],
                summary="Remove a person (needs the API key)")
    async def remove(gallery: str, person: str, request: Request):
        state.check_api_key(request)
        state.require_model()
        return await in_pool(remove_person, gallery, person)

    def remove_person(gallery, person):
        removed = state.gallery(gallery).remove(person)
        return {"gallery": gallery, "removed": person, "embeddings": removed}

    return app
