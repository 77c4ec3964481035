"""Request and response models of the HTTP API (pydantic v2), with the examples shown at /docs.

POST /translate is a superset of LibreTranslate's: `q`, `source`, `target`, `format`,
`alternatives` and `api_key` in, `translatedText` and `alternatives` out. Everything else is
ours: the decoding parameters in, the per-text details (`translations`) out.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

StopReason = Literal["eos", "max_length", "deadline", "cancelled"]

TRANSLATE_EXAMPLES = {
    "libretranslate": {
        "summary": "A LibreTranslate request",
        "value": {"q": "In the beginning God created the heavens and the earth.", "source": "en", "target": "es"},
    },
    "beam": {
        "summary": "Beam search, two alternatives, scores, attention and alignment",
        "value": {
            "q": "God said, let there be light.",
            "decoding": "beam",
            "beam_size": 5,
            "n_best": 3,
            "length_penalty": 0.6,
            "return_scores": True,
            "return_attention": True,
            "return_alignment": True,
        },
    },
    "batch": {
        "summary": "Several texts at once",
        "value": {"q": ["The light was good.", "And there was evening."], "source": "en", "target": "es"},
    },
}


class TranslateRequest(BaseModel):
    """The body of POST /translate, as JSON or as form data (repeat `q` for a list).

    Unknown fields are ignored, as LibreTranslate clients send extras. Caps that depend on the
    server's settings (beam size, n-best, max length, sizes) are checked by the route, which
    answers 413/422 naming the setting.
    """

    model_config = ConfigDict(extra="ignore")

    q: str | list[str] = Field(description="The text to translate, or a list of texts.")
    source: str | None = Field(
        None, description="Source language code; `auto` or absent means the loaded model's source.", examples=["en"]
    )
    target: str | None = Field(None, description="Target language code; absent means the loaded model's target.")
    format: Literal["text", "html"] = Field("text", description="`text`; `html` is refused with 400 for now.")
    alternatives: int = Field(0, ge=0, description="LibreTranslate: how many alternative translations to return.")
    api_key: str | None = Field(None, repr=False, description="API key (or the X-API-Key / Bearer header).")
    decoding: Literal["greedy", "beam"] | None = Field(
        None, description="Search strategy. Default greedy, or beam when more than one hypothesis is asked for."
    )
    beam_size: int | None = Field(None, ge=1, description="Beam width (1..MAX_BEAM_SIZE); default DEFAULT_BEAM_SIZE.")
    n_best: int | None = Field(None, ge=1, description="Hypotheses to return, best first (at most beam_size).")
    length_penalty: float | None = Field(
        None, ge=0.0, le=10.0, description="GNMT length penalty alpha for beam scores; default DEFAULT_LENGTH_PENALTY."
    )
    max_length: int | None = Field(None, ge=1, description="Most output subwords (at most MAX_OUTPUT_TOKENS).")
    return_attention: bool = Field(False, description="Add the attention matrices, subword and word level.")
    return_alignment: bool = Field(False, description="Add hard word alignments (target word, source word).")
    return_scores: bool = Field(False, description="Add the score and log-probability of each hypothesis.")

    @field_validator("q")
    @classmethod
    def _texts(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("q is an empty list; send at least one text")
        for text in [value] if isinstance(value, str) else value:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"q is not valid Unicode text ({e.reason} at {e.start})") from e
        return value

    @property
    def texts(self) -> list[str]:
        return [self.q] if isinstance(self.q, str) else list(self.q)


class Attention(BaseModel):
    """Attention weights of the chosen hypothesis; every row sums to 1 (up to rounding)."""

    subwords: list[list[float]] = Field(description="One row per output subword, over the source subwords.")
    words: list[list[float]] = Field(description="One row per target word, over the source words.")
    source_words: list[str]
    target_words: list[str]


class Hypothesis(BaseModel):
    """One of the n-best alternatives of a text."""

    text: str
    tokens: list[str]
    score: float | None = Field(None, description="Length-normalized score used to rank (return_scores).")
    logprob: float | None = Field(None, description="Sum of the log-probabilities of the tokens (return_scores).")


class TextResult(BaseModel):
    """What came back for one input text."""

    text: str = Field(description="The translation.")
    tokens: list[str] = Field(description="Output subwords, EOS left out.")
    source_tokens: list[str] = Field(description="Source subwords the model read.")
    score: float | None = Field(None, description="Present with return_scores.")
    logprob: float | None = Field(None, description="Present with return_scores.")
    stop_reason: StopReason = Field(description="Why decoding stopped.")
    alternatives: list[Hypothesis] = Field(default_factory=list, description="The other n-best hypotheses.")
    attention: Attention | None = Field(None, description="Present with return_attention.")
    alignment: list[tuple[int, int]] | None = Field(
        None, description="(target word index, source word index) pairs; present with return_alignment."
    )
    cached: bool = Field(False, description="Served from the translation cache.")
    queue_ms: float = Field(description="Time waiting for a place in the batch.")
    decode_ms: float = Field(description="Time from joining the batch to the last step.")


class TranslateResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "translatedText": "Dijo Dios: Sea la luz.",
                    "alternatives": ["Y dijo Dios: Sea la luz."],
                    "model": "en-es",
                    "version": "3f0c9a1b2c4d5e6f",
                    "source": "en",
                    "target": "es",
                    "translations": [
                        {
                            "text": "Dijo Dios: Sea la luz.",
                            "tokens": ["▁Dijo", "▁Dios", ":", "▁Sea", "▁la", "▁luz", "."],
                            "source_tokens": ["▁God", "▁said", ",", "▁let", "▁there", "▁be", "▁light", "."],
                            "stop_reason": "eos",
                            "alternatives": [{"text": "Y dijo Dios: Sea la luz.", "tokens": ["▁Y", "▁dijo"]}],
                            "cached": False,
                            "queue_ms": 0.4,
                            "decode_ms": 21.7,
                        }
                    ],
                }
            ]
        }
    )

    translatedText: str | list[str] = Field(description="A string, or a list when q was a list (LibreTranslate).")
    alternatives: list[str] | list[list[str]] = Field(
        description="Alternative texts (LibreTranslate); a list per text when q was a list."
    )
    model: str = Field(description="Id of the model that translated.")
    version: str = Field(description="Version of the bundle (a digest of its files).")
    source: str
    target: str
    translations: list[TextResult] = Field(description="One entry per input text, in order.")


class Language(BaseModel):
    """GET /languages, as LibreTranslate answers it."""

    code: str
    name: str
    targets: list[str]


class ModelCard(BaseModel):
    id: str
    version: str
    source: str
    target: str
    attention: str | None = None
    quantization: str | None = None
    sizes: dict = Field(default_factory=dict)
    training: dict | None = None
    metrics: dict | None = Field(None, description="BLEU/chrF measured on the test split at export.")
    exported_at: str | None = None


class ModelsResponse(BaseModel):
    models: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "ready", "draining", "not ready"]
    model: str | None = None
    version: str | None = None
    degraded: list[str] = Field(default_factory=list, description="What works at reduced capacity, e.g. Redis.")


class ErrorResponse(BaseModel):
    """Every error answer. `limit` names the setting a request went over, when that is the reason."""

    error: str
    limit: str | None = None


class ApiError(Exception):
    """An answer other than 200, raised anywhere a request is handled and rendered as ErrorResponse.

    Args:
        status: the HTTP status.
        message: what went wrong, for a person; names the setting when a limit was passed.
        limit: the setting's name, when a limit was passed.
        retry_after: seconds, sent as Retry-After (429, 503).
    """

    def __init__(self, status: int, message: str, *, limit: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.limit, self.retry_after = status, message, limit, retry_after

    @property
    def body(self) -> dict:
        return ErrorResponse(error=self.message, limit=self.limit).model_dump(exclude_none=True)

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
