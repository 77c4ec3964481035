"""The routes: POST /translate, GET /languages, /models, /health/live, /health/ready, /metrics, /.

POST /translate, in order: parse (JSON or form, 415/422) -> API key (401/403) -> format and
language pair (400) -> size limits (413) -> decoding limits (422) -> rate limit (429) -> cache,
else the batcher (503 queue full, 504 deadline). A client that hangs up cancels its entries.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.cache import cache_key, normalize
from service.config import Settings
from service.deps import Service, ServiceDep, TranslatorDep
from service.limits import client_address, request_key
from service.schemas import (
    TRANSLATE_EXAMPLES,
    ApiError,
    Attention,
    ErrorResponse,
    Health,
    Hypothesis,
    Language,
    ModelCard,
    ModelsResponse,
    TextResult,
    TranslateRequest,
    TranslateResponse,
)
from service.translator import DeadlineExceeded, DecodeOptions, QueueFull, Translation

WEB_DIR = Path(__file__).resolve().parent / "web"
LANGUAGE_NAMES = {"en": "English", "es": "Spanish", "fr": "French", "de": "German", "pt": "Portuguese", "it": "Italian"}
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
DIGITS = 4  # attention weights are rounded to this many decimals in responses

router = APIRouter()


def errors(*statuses: int) -> dict:
    return {s: {"model": ErrorResponse} for s in statuses}


class ClientGone(Exception):
    """The client disconnected before its translations were done."""


@router.post(
    "/translate",
    response_model=TranslateResponse,
    response_model_exclude_none=True,
    summary="Translate one text or a list of texts",
    responses=errors(400, 401, 403, 413, 415, 422, 429, 503, 504),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": TranslateRequest.model_json_schema(), "examples": TRANSLATE_EXAMPLES},
                **{t: {"schema": TranslateRequest.model_json_schema()} for t in FORM_TYPES},
            },
        }
    },
)
async def translate(request: Request, svc: ServiceDep) -> TranslateResponse | Response:
    """LibreTranslate-compatible (`q`, `source`, `target`, `format`, `alternatives`, `api_key` in;
    `translatedText`, `alternatives` out), with beam search, scores, attention and alignments."""
    arrived = time.monotonic()
    settings, translator = svc.settings, svc.translator
    body = await read_request(request)
    key = await svc.keys.authenticate(request_key(request, body.api_key))
    check_pair(body, translator.source_lang, translator.target_lang)
    texts = body.texts
    chars = check_sizes(texts, settings)
    options = decode_options(body, settings)
    identity = svc.limiter.identity(key, client_address(request, settings.trust_forwarded_for))
    await svc.limiter.charge(identity, chars)

    log = request.state.log
    log |= {"texts": len(texts), "chars": chars, "strategy": options.strategy}
    if settings.log_texts:
        log["q"] = texts
    svc.metrics.chars.inc(chars)
    deadline = arrived + settings.request_timeout_s if settings.request_timeout_s > 0 else None
    jobs = [translate_text(svc, text, options, deadline) for text in texts]
    try:
        found = await until_disconnect(request, jobs)
    except ClientGone:
        log["status"] = 499
        return Response(status_code=499)  # nobody is listening any more
    except QueueFull as e:
        svc.metrics.rejected.labels("queue_full").inc()
        raise ApiError(503, f"the translation queue is full or closing ({e}); retry shortly", retry_after=1) from e
    except DeadlineExceeded as e:
        svc.metrics.rejected.labels("deadline").inc()
        raise ApiError(
            504,
            f"the translation did not finish within request_timeout_s={settings.request_timeout_s}",
            limit="request_timeout_s",
        ) from e
    except ValueError as e:  # options the bundle cannot serve (e.g. a beam wider than its top-k)
        raise ApiError(422, str(e)) from e

    results = [text_result(t, cached, body) for t, cached in found]
    log |= {
        "cached": sum(cached for _, cached in found),
        "queue_ms": round(max(r.queue_ms for r in results), 2),
        "decode_ms": round(max(r.decode_ms for r in results), 2),
    }
    alternatives = [[a.text for a in r.alternatives[: body.alternatives]] for r in results]
    single = isinstance(body.q, str)
    return TranslateResponse(
        translatedText=results[0].text if single else [r.text for r in results],
        alternatives=alternatives[0] if single else alternatives,
        model=translator.model_id,
        version=translator.version,
        source=translator.source_lang,
        target=translator.target_lang,
        translations=results,
    )


async def read_request(request: Request) -> TranslateRequest:
    """The body as JSON, or as form data (a repeated `q` makes a list)."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type in FORM_TYPES:
        form = await request.form()
        data: object = {k: (form.getlist(k) if k == "q" and len(form.getlist(k)) > 1 else form[k]) for k in form}
        if any(isinstance(v, UploadFile) for v in form.values()):
            raise ApiError(422, "file uploads are not accepted; send the text in the q field")
    elif content_type == "application/json" or content_type.endswith("+json"):
        try:
            data = json.loads(await request.body())
        except ValueError as e:
            raise ApiError(422, f"the body is not valid JSON: {e}") from e
        except RecursionError as e:  # the json module's answer to deep nesting, which fits in any body cap
            raise ApiError(422, "the body is not valid JSON: it is nested too deeply") from e
        if not isinstance(data, dict):
            raise ApiError(422, "the body must be a JSON object with at least a q field")
    else:
        raise ApiError(415, f"unsupported content type {content_type!r}; send application/json or form data")
    try:
        return TranslateRequest.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise ApiError(422, problems) from e


def check_pair(body: TranslateRequest, source: str, target: str) -> None:
    if body.format == "html":
        raise ApiError(400, "format=html is not supported yet; send plain text with format=text")
    asked_source = (body.source or source).lower()
    asked_source = source if asked_source == "auto" else asked_source
    asked_target = (body.target or target).lower()
    if asked_source != source or asked_target != target:
        raise ApiError(
            400, f"no model translates {asked_source}->{asked_target}; the pairs available are {source}->{target}"
        )


def check_sizes(texts: list[str], s: Settings) -> int:
    """Total characters, after checking each size limit (413)."""
    if len(texts) > s.max_texts_per_request:
        raise ApiError(
            413,
            f"{len(texts)} texts in one request; the limit is max_texts_per_request={s.max_texts_per_request}",
            limit="max_texts_per_request",
        )
    for i, text in enumerate(texts):
        if len(text) > s.max_chars_per_text:
            raise ApiError(
                413,
                f"text {i} has {len(text)} characters; the limit is max_chars_per_text={s.max_chars_per_text}",
                limit="max_chars_per_text",
            )
    total = sum(map(len, texts))
    if total > s.max_total_chars:
        raise ApiError(
            413,
            f"the texts have {total} characters in all; the limit is max_total_chars={s.max_total_chars}",
            limit="max_total_chars",
        )
    return total


def decode_options(body: TranslateRequest, s: Settings) -> DecodeOptions:
    """The request's decoding, with defaults filled in and every cap checked (422 naming it).

    `alternatives` (LibreTranslate) asks for that many hypotheses beyond the best, so it raises
    n_best; more than one hypothesis, or a beam size, implies beam search unless greedy is asked.
    """
    n_best = max(body.n_best or 1, body.alternatives + 1)
    strategy = body.decoding or ("beam" if n_best > 1 or (body.beam_size or 1) > 1 else "greedy")
    if n_best > s.max_n_best:
        raise ApiError(422, f"n_best={n_best} is over the limit max_n_best={s.max_n_best}", limit="max_n_best")
    if strategy == "greedy" and n_best > 1:
        raise ApiError(422, f"n_best={n_best} (or alternatives) needs decoding=beam; greedy finds one hypothesis")
    beam_size = (body.beam_size or max(s.default_beam_size, n_best)) if strategy == "beam" else 1
    if beam_size > s.max_beam_size:
        raise ApiError(
            422, f"beam_size={beam_size} is over the limit max_beam_size={s.max_beam_size}", limit="max_beam_size"
        )
    if n_best > beam_size:
        raise ApiError(422, f"n_best={n_best} is more than beam_size={beam_size}")
    if body.max_length is not None and body.max_length > s.max_output_tokens:
        raise ApiError(
            422,
            f"max_length={body.max_length} is over the limit max_output_tokens={s.max_output_tokens}",
            limit="max_output_tokens",
        )
    penalty = s.default_length_penalty if body.length_penalty is None else body.length_penalty
    return DecodeOptions(strategy, beam_size, n_best, penalty, body.max_length)


async def translate_text(
    svc: Service, text: str, options: DecodeOptions, deadline: float | None
) -> tuple[Translation, bool]:
    """(translation, whether it came from the cache). An empty text translates to an empty text."""
    text = normalize(text)
    if not text:
        return Translation("", [], [], 0.0, 0.0, "eos"), False
    key = cache_key(svc.translator.version, text, options)
    if (hit := await svc.cache.get(key)) is not None:
        return hit, True
    found = await svc.translator.translate(text, options, deadline=deadline)
    svc.metrics.texts.labels(options.strategy).inc()
    svc.metrics.queue_seconds.observe(found.queue_ms / 1e3)
    svc.metrics.decode_seconds.observe(found.decode_ms / 1e3)
    if found.decode_ms > 0 and found.tokens:
        svc.metrics.tokens_per_second.observe(len(found.tokens) / (found.decode_ms / 1e3))
    await svc.cache.put(key, found)
    return found, False


async def until_disconnect(request: Request, jobs: list) -> list:
    """Run the jobs together; the first failure, or the client hanging up, cancels the rest."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    hangup = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending | {hangup}, return_when=asyncio.FIRST_COMPLETED)
            if hangup in done:
                raise ClientGone
            pending.discard(hangup)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        for task in [*tasks, hangup]:
            task.cancel()


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def text_result(t: Translation, cached: bool, body: TranslateRequest) -> TextResult:
    scores = body.return_scores
    return TextResult(
        text=t.text,
        tokens=t.tokens,
        source_tokens=t.source_tokens,
        score=t.score if scores else None,
        logprob=t.logprob if scores else None,
        stop_reason=t.stop_reason,  # type: ignore[arg-type]
        alternatives=[
            Hypothesis(
                text=a.text, tokens=a.tokens, score=a.score if scores else None, logprob=a.logprob if scores else None
            )
            for a in t.alternatives
        ],
        attention=Attention(
            subwords=rounded(t.attention),
            words=rounded(t.word_attention),
            source_words=t.source_words,
            target_words=t.target_words,
        )
        if body.return_attention
        else None,
        alignment=[(int(i), int(j)) for i, j in t.alignment] if body.return_alignment else None,
        cached=cached,
        queue_ms=0.0 if cached else round(t.queue_ms, 2),
        decode_ms=0.0 if cached else round(t.decode_ms, 2),
    )


def rounded(matrix: list[list[float]]) -> list[list[float]]:
    return [[round(float(w), DIGITS) for w in row] for row in matrix]


@router.get("/languages", response_model=list[Language], summary="Languages, as LibreTranslate lists them")
async def languages(translator: TranslatorDep) -> list[Language]:
    src, tgt = translator.source_lang, translator.target_lang
    return [
        Language(code=src, name=LANGUAGE_NAMES.get(src, src), targets=[tgt]),
        Language(code=tgt, name=LANGUAGE_NAMES.get(tgt, tgt), targets=[]),
    ]


@router.get("/models", response_model=ModelsResponse, response_model_exclude_none=True, summary="Loaded models")
async def models(translator: TranslatorDep) -> ModelsResponse:
    m = translator.manifest
    card = ModelCard(
        id=translator.model_id,
        version=translator.version,
        source=translator.source_lang,
        target=translator.target_lang,
        attention=m.get("attention"),
        quantization=m.get("quantization"),
        sizes=m.get("sizes", {}),
        training=m.get("training"),
        metrics=m.get("metrics"),
        exported_at=m.get("exported_at"),
    )
    return ModelsResponse(models=[card])


@router.get("/health/live", response_model=Health, response_model_exclude_none=True, summary="The process is up")
async def live() -> Health:
    return Health(status="ok")


@router.get("/health/ready", response_model=Health, responses={503: {"model": Health}}, summary="Ready for traffic")
async def ready(svc: ServiceDep) -> JSONResponse:
    """503 while draining or when the batcher does not accept work; `degraded` lists what runs
    at reduced strength (Redis down) without making the replica unready."""
    t = svc.translator
    status: Literal["ready", "draining", "not ready"]
    if svc.gate.draining:
        status, code = "draining", 503
    elif not t.accepting:
        status, code = "not ready", 503
    else:
        status, code = "ready", 200
    health = Health(status=status, model=t.model_id, version=t.version, degraded=await svc.degraded())
    return JSONResponse(health.model_dump(), code)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format)")
async def metrics(svc: ServiceDep) -> Response:
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", headers={"Content-Security-Policy": "default-src 'self'"})


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Renders ApiError; its message goes in the request's log line (messages hold no texts nor keys)."""
    assert isinstance(exc, ApiError)
    request.state.log["error"] = exc.message
    return JSONResponse(exc.body, exc.status, headers=exc.headers)


async def client_gone_handler(request: Request, exc: Exception) -> Response:
    """A client that hung up while its body was read: nobody is listening (499, as in `translate`)."""
    request.state.log["status"] = 499
    return Response(status_code=499)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (404, 405, malformed multipart) in the same shape."""
    assert isinstance(exc, StarletteHTTPException)
    request.state.log["error"] = str(exc.detail)
    body = ErrorResponse(error=str(exc.detail)).model_dump(exclude_none=True)
    return JSONResponse(body, exc.status_code, exc.headers)
