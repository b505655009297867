"""The local web page: upload one case's images and clinical values, get the bundle's prediction.

``create_app(bundle)`` builds a FastAPI application with

* ``GET /``: a form with one file input per image modality the bundle reads (mammography as CC and
  MLO views, ultrasound as one or more frames) and one field per clinical variable its preprocessor
  was fitted on (numbers, or the categories seen in training; blank means missing, which the fold
  preprocessors impute as they did in cross-validation);
* ``POST /predict``: the same case as a result page (probability, the operating threshold, the call,
  how many fold networks agree, and the cross-validated performance the bundle recorded), with the
  case's explanation (:func:`~breastfusion.explain.case.explain_case`): each modality's exact Shapley
  contribution and a heatmap over every image, averaged over the fold networks (form field
  ``method``: scorecam, gradcam, gradcam++, or none; the default is ``create_app``'s ``heatmap_method``, scorecam
  unless the server says otherwise);
* ``POST /api/predict``: the same as JSON;
* ``GET /api/model``: what the bundle is (variant, modalities, metrics).

Each upload is decoded in memory (:func:`read_case`, :func:`~breastfusion.data.readers.read_image_bytes`; an
undecodable upload is a 400 naming the form field and the file) and the case is handed to
:meth:`~breastfusion.bundle.Bundle.predict` as ``images=`` / ``clinical=`` (and to the explainer likewise): no
image, manifest or temporary folder is written, so nothing the user uploads is kept (the form's spooled upload
files are closed, and so deleted, before the reply), and uploaded file names never become paths (only their
suffix is read).

Abuse and load: a request body over ``max_upload_bytes`` (:data:`MAX_UPLOAD_BYTES`, 50 MB, by default)
is answered 413 before it is read (from its Content-Length) or as soon as it passes the limit (a
streamed body); a form holds at most :data:`MAX_FORM_FILES` files. Predictions and explanations run one
at a time in a worker thread (the networks and the CAM hooks are shared), so the page keeps answering
while a queue of requests waits. :func:`serve` binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from jinja2 import Environment, select_autoescape

from breastfusion.data.readers import ImageData, ImageReadError, read_image_bytes
from breastfusion.explain.cams import CAM_METHODS
from breastfusion.explain.case import explain_case
from breastfusion.explain.gallery import enlarged, overlay

__all__ = ["IMAGE_SUFFIXES", "MAX_FORM_FILES", "MAX_UPLOAD_BYTES", "BodyLimit", "CaseError", "ClinicalField",
           "clinical_fields", "read_case", "create_app", "serve"]

log = logging.getLogger(__name__)

#: Heatmap methods the page offers ("none": no explanation).
METHODS = (*CAM_METHODS, "none")

#: Image file types the page accepts (the readers decode these).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
#: Default largest request body, so largest upload (a full-field DICOM mammogram is about 30–60 MB
#: uncompressed, most are compressed well under it); ``create_app(max_upload_bytes=...)`` changes it.
MAX_UPLOAD_BYTES = 50 * 2**20
#: Most files one form may carry (CC, MLO and ultrasound frames).
MAX_FORM_FILES = 16
#: The image inputs of the form: (modality, view, field name, label, several files allowed).
IMAGE_INPUTS = (("mammography", "CC", "mammography_cc", "Mammogram, CC view", False),
                ("mammography", "MLO", "mammography_mlo", "Mammogram, MLO view", False),
                ("ultrasound", "frame", "ultrasound", "Ultrasound frame(s)", True))


class CaseError(ValueError):
    """The submitted case cannot be predicted; the message says which field and what was expected."""


@dataclass(frozen=True)
class ClinicalField:
    """One clinical variable of the form: ``kind`` is numeric, categorical or binary."""

    name: str
    kind: str
    choices: tuple[str, ...] = field(default_factory=tuple)


def clinical_fields(preprocessor: Any) -> list[ClinicalField]:
    """The clinical variables a fitted ``data.clinical_features.ClinicalPreprocessor`` reads, in its order."""
    types = preprocessor.types_
    categories = getattr(preprocessor, "categories_", {})
    out = [ClinicalField(c, "numeric") for c in types.get("numeric", [])]
    out += [ClinicalField(c, "categorical", tuple(sorted(map(str, categories.get(c, ())))))
            for c in types.get("categorical", [])]
    out += [ClinicalField(c, "binary", ("0", "1")) for c in types.get("binary", [])]
    return out


def parse_clinical(fields: list[ClinicalField], form: dict[str, str]) -> dict[str, Any]:
    """Form values → one clinical row (blank = missing).

    Raises:
        CaseError: a number that does not parse, or a category / binary value outside its choices.
    """
    row: dict[str, Any] = {}
    problems = []
    for f in fields:
        raw = (form.get(f"clinical__{f.name}") or "").strip()
        if not raw:
            row[f.name] = math.nan if f.kind != "categorical" else None
            continue
        if f.kind == "numeric":
            try:
                value = float(raw)
            except ValueError:
                problems.append(f"{f.name}: {raw!r} is not a number")
                continue
            if not math.isfinite(value):
                problems.append(f"{f.name}: {raw!r} is not a finite number")
                continue
            row[f.name] = value
        elif raw not in f.choices:
            problems.append(f"{f.name}: {raw!r} is not one of {list(f.choices)}")
        else:
            row[f.name] = int(raw) if f.kind == "binary" else raw
    if problems:
        raise CaseError("clinical values: " + "; ".join(problems))
    return row


def _field(modality: str, view: str) -> str:
    """The form field an image of ``modality`` / ``view`` came from (for messages)."""
    for m, v, name, _, _ in IMAGE_INPUTS:
        if m == modality and (v == view or (v == "frame" and view.startswith("frame"))):
            return name
    return modality


def read_case(images: list[tuple[str, str, str, bytes]], clinical: dict[str, Any] | None, *,
              max_bytes: int = MAX_UPLOAD_BYTES) -> tuple[dict[str, dict[str, ImageData]], dict[str, Any] | None]:
    """One unlabelled case's uploads decoded in memory, as :meth:`~breastfusion.bundle.Bundle.predict` takes them.

    Args:
        images: ``(modality, view, uploaded file name, content)``; the name only gives the file type.
        clinical: one clinical row (``None`` or all missing: the case has no clinical data).
        max_bytes: largest accepted file.

    Returns:
        ``(images, clinical)``: ``{modality: {view: decoded image}}`` in upload order, and the clinical row, or
        ``None`` when no value was given.

    Raises:
        CaseError: no image and no clinical value, an empty, oversized or undecodable file, or an unknown
            file type; the message names the form field and the uploaded file name.
    """
    decoded: dict[str, dict[str, ImageData]] = {}
    for i, (modality, view, name, content) in enumerate(images):
        where = f"field '{_field(modality, view)}': file {str(name)[:80]!r}"
        suffix = Path(name or "").suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            raise CaseError(f"{where} has type {suffix or 'none'}; expected one of {list(IMAGE_SUFFIXES)}")
        if not content:
            raise CaseError(f"{where} is empty")
        if len(content) > max_bytes:
            raise CaseError(f"{where} is {len(content) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.1f} MB")
        if view in decoded.get(modality, {}):
            raise CaseError(f"{where}: a second {modality} {view} image; expected one file per view")
        label = f"{modality}_{i}{suffix}"  # the decoders' name for it: its suffix hints the format, never a path
        try:
            decoded.setdefault(modality, {})[view] = read_image_bytes(content, name=label)
        except ImageReadError as exc:  # say which upload, not the decoders' name for it
            reason = str(exc).removeprefix(label).lstrip(": ")
            raise CaseError(f"{where} cannot be read as an image: {reason}") from None
    has_clinical = clinical is not None and any(not _missing(v) for v in clinical.values())
    if not decoded and not has_clinical:
        raise CaseError("nothing to predict from: upload an image or fill in a clinical value")
    return decoded, (clinical if has_clinical else None)


def _png_data_uri(rgb: np.ndarray, *, min_side: int = 256) -> str:
    """An RGB uint8 image as an inline PNG, enlarged (nearest neighbour) to at least ``min_side`` px."""
    buffer = io.BytesIO()
    enlarged(rgb, min_side=min_side).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


_ENV = Environment(autoescape=select_autoescape(default=True))
_PAGE = _ENV.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>breastfusion · {{ variant }}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}
fieldset{margin:1rem 0;border:1px solid #ccc;border-radius:6px} label{display:block;margin:.4rem 0}
input,select{margin-left:.5rem} .call{font-size:1.6rem;font-weight:600} .malignant{color:#b00020}
.benign{color:#1b5e20} .error{background:#fdecea;padding:.8rem;border-radius:6px} table{border-collapse:collapse}
td,th{padding:.2rem .8rem;border-bottom:1px solid #eee;text-align:left} .note{color:#666;font-size:.9rem}
</style></head><body>
<h1>breastfusion: {{ variant }}</h1>
<p class="note">Model: {{ modalities|join(" + ") }}, {{ n_folds }} fold networks from cross-validation
{%- if auc %}; cross-validated AUC {{ "%.3f"|format(auc) }}{% if auc_ci %} (95% CI {{ "%.3f"|format(auc_ci[0]) }}–{{ "%.3f"|format(auc_ci[1]) }}){% endif %}{% endif %}.
A research tool, not a medical device.</p>
{% if error %}<p class="error">{{ error }}</p>{% endif %}
{% if result %}
<h2>Result</h2>
<p class="call {{ result.call }}">{{ result.call }}</p>
<table>
<tr><th>P(malignant)</th><td>{{ "%.3f"|format(result.prob) }} (sd over fold networks {{ "%.3f"|format(result.prob_sd) }})</td></tr>
<tr><th>operating threshold</th><td>{{ "%.3f"|format(result.threshold) }} (Youden, from the training folds)</td></tr>
<tr><th>fold networks calling malignant</th><td>{{ result.fold_votes_malignant }} of {{ n_folds }}</td></tr>
<tr><th>used</th><td>{{ used|join(", ") or "nothing" }}</td></tr>
</table>
{% if explanation %}
<h2>Why</h2>
<p class="note">Exact Shapley values over modalities, averaged over the fold networks: how much each modality moved
P(malignant) away from the no-information value {{ "%.3f"|format(explanation.empty) }}
{%- if recalibration != "none" %} (on the networks' output before {{ recalibration }} recalibration, mean
{{ "%.3f"|format(explanation.full) }}){% endif %}.
{%- if not dropout %} These networks were trained without modality dropout, so predictions from a subset of
modalities are extrapolations: read the contributions with care.{% endif %}</p>
<table>{% for m, v in explanation.phi.items() %}
<tr><th>{{ m }}</th><td>{{ "%+.3f"|format(v) }}</td><td>{{ "%.0f"|format(explanation.shares[m]) }}% of the change</td></tr>
{% endfor %}</table>
{% if heatmaps %}<p class="note">{{ explanation.method }} heatmaps (the malignant logit as target), averaged over
the fold networks, on the images as the networks saw them.</p>
<div>{% for label, src in heatmaps %}<figure style="display:inline-block;margin:.5rem">
<img src="{{ src }}" alt="{{ label }} heatmap" width="256"><figcaption>{{ label }}</figcaption></figure>{% endfor %}</div>
{% endif %}{% endif %}
{% if explain_error %}<p class="error">No explanation: {{ explain_error }}</p>{% endif %}
<p><a href="/">another case</a></p>
{% else %}
<form method="post" action="/predict" enctype="multipart/form-data">
{% for name, label, multiple in image_inputs %}
<label>{{ label }} <input type="file" name="{{ name }}" accept="{{ accept }}"{% if multiple %} multiple{% endif %}></label>
{% endfor %}
{% if fields %}<fieldset><legend>Clinical data (leave blank when unknown)</legend>
{% for f in fields %}<label>{{ f.name }}
{% if f.kind == "numeric" %}<input type="text" inputmode="decimal" name="clinical__{{ f.name }}">
{% else %}<select name="clinical__{{ f.name }}"><option value="">unknown</option>
{% for c in f.choices %}<option>{{ c }}</option>{% endfor %}</select>{% endif %}</label>
{% endfor %}</fieldset>{% endif %}
<label>Heatmaps <select name="method">{% for m in heatmap_methods %}<option{% if m == heatmap_method %} selected{%
endif %}>{{ m }}</option>{% endfor %}</select></label>
<button type="submit">Predict</button>
</form>
{% endif %}
</body></html>""")


class _TooLarge(Exception):
    """Raised inside the application when a streamed body passes the limit (answered 413 by :class:`BodyLimit`)."""

    def __init__(self, seen: int):
        self.seen = seen


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413, naming the limit.

    A declared Content-Length over the limit is refused before any byte is read; a body without one
    (chunked) is counted as it arrives and refused once it passes the limit.
    """

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, int(declared))
            return
        seen, started = 0, False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(seen)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge as exc:
            if started:
                raise
            await self._refuse(send, exc.seen, streamed=True)

    async def _refuse(self, send: Callable, size: int, *, streamed: bool = False) -> None:
        what = f"more than {size} bytes" if streamed else f"{size} bytes"
        body = JSONResponse({"detail": f"upload: the request body is {what}; the limit is {self.limit} bytes "
                                       f"({self.limit / 2**20:.1f} MB, max_upload_bytes): send smaller files"},
                            status_code=413)
        await body({"type": "http"}, None, send)


def create_app(bundle: Any, *, explainer: Callable[..., Any] | None = explain_case,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, heatmap_method: str = "scorecam") -> FastAPI:
    """The FastAPI application serving ``bundle`` (a :class:`~breastfusion.bundle.Bundle`).

    Args:
        bundle: the loaded bundle.
        explainer: ``explainer(bundle, images=..., clinical=..., method=...)`` (the in-memory case, as
            ``bundle.predict`` takes it) → a :class:`~breastfusion.explain.case.CaseExplanation`; ``None`` serves
            predictions only.
        max_upload_bytes: largest request body (413 above it), so largest upload.
        heatmap_method: the page's preselected heatmap method and the one a form without ``method`` gets:
            Score-CAM runs the network once per channel of its target layer for every image and fold network
            (27 s per image and network on one core for EfficientNet-Lite0 at 128 px), Grad-CAM once.

    Raises:
        ValueError: a bad ``max_upload_bytes`` or an unknown ``heatmap_method``.
    """
    if heatmap_method not in METHODS:
        raise ValueError(f"heatmap_method: {heatmap_method!r} is not one of {list(METHODS)}")
    if not isinstance(max_upload_bytes, int) or max_upload_bytes <= 0:
        raise ValueError(f"max_upload_bytes should be a positive number of bytes, got {max_upload_bytes!r}")
    if getattr(bundle, "members", None) is not None:
        explainer = None  # an ensemble bundle: Score-CAM and Shapley shares explain one run's networks
    busy = threading.Lock()  # one prediction at a time: the fold networks and CAM hooks are shared
    modalities = tuple(bundle.modalities)
    image_inputs = [(name, label, multiple) for modality, _, name, label, multiple in IMAGE_INPUTS
                    if modality in modalities]
    fields = clinical_fields(bundle.clinical_preprocessors[0]) if "clinical" in modalities else []
    metrics = bundle.meta.get("metrics", {}) or {}
    context = {"recalibration": bundle.config.evaluation.recalibration,
               "dropout": bundle.config.training.modality_dropout,
               "variant": bundle.variant, "modalities": modalities, "n_folds": bundle.n_folds,
               "auc": metrics.get("auc"), "auc_ci": metrics.get("auc_ci"), "image_inputs": image_inputs,
               "fields": fields, "accept": ",".join(IMAGE_SUFFIXES), "heatmap_method": heatmap_method,
               "heatmap_methods": METHODS}
    app = FastAPI(title=f"breastfusion · {bundle.variant}", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=max_upload_bytes)

    async def predict_form(request: Request, default_method: str) -> dict[str, Any]:
        """Parse the form, predict the case and, unless ``method`` is none, explain it."""
        images = []
        async with request.form(max_files=MAX_FORM_FILES, max_fields=200) as form:  # closing deletes spooled files
            for modality, view, name, _, _ in IMAGE_INPUTS:
                if modality not in modalities:
                    continue
                for j, upload in enumerate(form.getlist(name)):
                    if isinstance(upload, str) or not upload.filename:
                        continue  # an empty file input
                    images.append((modality, view if view != "frame" else f"frame{j + 1}", upload.filename,
                                   await upload.read()))
            texts = {k: v for k, v in form.items() if isinstance(v, str)}
        return await run_in_threadpool(_predict_case, images, texts, default_method)

    def _predict_case(images: list, texts: dict[str, str], default_method: str) -> dict[str, Any]:
        with busy:
            return _predict_locked(images, texts, default_method)

    def _predict_locked(images: list, texts: dict[str, str], default_method: str) -> dict[str, Any]:
        method = texts.get("method") or default_method
        if method not in METHODS:
            raise CaseError(f"method: {method!r} is not one of {list(METHODS)}")
        clinical = parse_clinical(fields, texts) if fields else None
        used = sorted({m for m, *_ in images})
        if clinical and any(not _missing(v) for v in clinical.values()):
            used.append("clinical")
        out: dict[str, Any] = {"used": used, "explanation": None, "explain_error": None}
        case_images, case_clinical = read_case(images, clinical, max_bytes=max_upload_bytes)
        row = bundle.predict(images=case_images, clinical=case_clinical).iloc[0]
        if explainer is not None and method != "none":
            try:
                out["explanation"] = explainer(bundle, images=case_images, clinical=case_clinical, method=method)
            except Exception as exc:  # the prediction stands; say why the explanation is missing
                log.exception("explaining the case failed")
                out["explain_error"] = f"{type(exc).__name__}: {exc}"
        out["result"] = {"prob": float(row["prob"]), "prob_sd": float(row["prob_sd"]),
                         "threshold": float(row["threshold"]), "call": str(row["call"]),
                         "fold_votes_malignant": int(row["fold_votes_malignant"])}
        return out

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return _PAGE.render(**context)

    @app.post("/predict", response_class=HTMLResponse)
    async def predict_page(request: Request):
        try:
            out = await predict_form(request, heatmap_method)
        except (CaseError, ValueError, KeyError, OSError) as exc:
            return HTMLResponse(_PAGE.render(**context, error=str(exc)), status_code=400)
        explanation = out["explanation"]
        heatmaps = [(f"{h.modality} {h.view}", _png_data_uri(overlay(h.image, h.heatmap)))
                    for h in explanation.heatmaps] if explanation is not None else []
        return _PAGE.render(**context, **out, heatmaps=heatmaps)

    @app.post("/api/predict")
    async def predict_json(request: Request):
        try:
            out = await predict_form(request, "none")
        except (CaseError, ValueError, KeyError, OSError) as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        body = {**out["result"], "used": out["used"], "variant": bundle.variant}
        explanation = out["explanation"]
        if explanation is not None:
            body["contributions"] = {"phi": explanation.phi, "share_percent": explanation.shares,
                                     "full": explanation.full, "empty": explanation.empty,
                                     "method": explanation.method}
        if out["explain_error"]:
            body["explain_error"] = out["explain_error"]
        return JSONResponse(body)

    @app.get("/api/model")
    def model() -> dict[str, Any]:
        return {"variant": bundle.variant, "modalities": list(modalities), "n_folds": bundle.n_folds,
                "metrics": metrics, "clinical_fields": [f.__dict__ | {"choices": list(f.choices)} for f in fields]}

    return app


def serve(bundle: Any, *, host: str = "127.0.0.1", port: int = 8765, max_upload_bytes: int = MAX_UPLOAD_BYTES,
          heatmap_method: str = "scorecam") -> None:
    """Serve a bundle's page with uvicorn (blocks). Binds to the loopback interface by default.

    Args:
        bundle: a loaded :class:`~breastfusion.bundle.Bundle`, or a bundle folder.
        host, port: where to listen (127.0.0.1: this machine only).
        max_upload_bytes: largest request body (413 above it).
        heatmap_method: the page's default heatmap method (see :func:`create_app`).
    """
    import uvicorn

    if isinstance(bundle, (str, Path)):
        from breastfusion.bundle import load_bundle

        bundle = load_bundle(bundle)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: the page is reachable from other machines and has no authentication", host)
    uvicorn.run(create_app(bundle, max_upload_bytes=max_upload_bytes, heatmap_method=heatmap_method), host=host,
                port=port, log_level="info")
