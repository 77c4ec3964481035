"""Every setting of the service, read from the environment here and nowhere else.

Names are the environment variables (case-insensitive): PORT=9000, REDIS_URL=redis://...,
BATCHING_MODE=request. A `.env` file in the working directory is read too.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "en-es"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Server
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"
    log_texts: bool = False  # put request texts in the logs
    drain_timeout_s: float = 20.0  # on SIGTERM, time given to in-flight requests

    # Model and onnxruntime
    bundle_dir: Path = DEFAULT_BUNDLE
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when onnxruntime offers it, else CPU
    cuda_device_id: int = 0
    intra_op_threads: int = 0  # 0: one per core but one, left to the event loop (at least 1)
    encoder_threads: int = 1  # onnxruntime threads of the encoder, which runs beside the decoder; 0: as the decoder
    intra_op_spinning: bool = False  # let onnxruntime's idle intra-op threads spin (busy-wait) between runs
    warmup: bool = True  # decode a sentence before reporting ready

    # Batching and queue policy
    batching_mode: Literal["continuous", "request", "none"] = "continuous"
    max_batch_rows: int = 64  # row budget: sum of beam sizes decoded in one step
    max_batch_tokens: int = 8192  # token budget: rows x source length in one step
    max_batch_requests: int = 32  # request-level mode: run at most this many together
    batch_wait_ms: float = 5.0  # request-level mode: collect for this long
    queue_size: int = 256  # waiting entries; a full queue rejects at once (503)
    max_in_flight: int = 512  # requests handled at once (reading, queued, decoding); past it 503 at once; 0: no cap
    request_timeout_s: float = 30.0  # deadline from arrival; past it the request answers 504
    worker_nice: int = 10  # niceness added to the decoder and encoder threads: the event loop goes first (Linux)

    # Decoding defaults and caps
    default_beam_size: int = 4
    default_length_penalty: float = 0.6
    max_beam_size: int = 16
    max_n_best: int = 16
    max_output_tokens: int = 256  # hard cap on max_length

    # Request limits (checked before any work)
    max_chars_per_text: int = 2000
    max_texts_per_request: int = 32
    max_total_chars: int = 20000
    max_body_bytes: int = 262144

    # Cache
    redis_url: str | None = None  # set to share cache, keys and rate limits between replicas
    redis_prefix: str = "mt:"  # prefix of every Redis key the service writes
    redis_timeout_s: float = 0.25  # connect and read timeout; past it Redis counts as down for that call
    cache_size: int = 10000  # embedded LRU entries
    cache_ttl_s: int = 86400

    # API keys
    api_keys_required: bool = False
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)  # comma-separated
    api_keys_redis_set: str | None = None  # a Redis set of valid keys, used with REDIS_URL

    # Rate limits, in source characters per client per minute
    rate_limit_chars_per_minute: int = 60000  # 0 turns limits off
    rate_limit_fail_open: bool = True  # when Redis is down: let requests through (True) or refuse (False)
    trust_forwarded_for: bool = False  # take the client address from X-Forwarded-For

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
