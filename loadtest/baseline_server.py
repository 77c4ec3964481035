"""The naive yardstick of loadtest/bench_http.py: the same model in PyTorch eager mode behind a
plain FastAPI handler, one request at a time. Not a product path.

    python -m loadtest.baseline_server --checkpoint runs/en-es/best.pt --port 8001   # 127.0.0.1 only

POST /translate takes the service's request (`{"q": "text"}` or a list; service/schemas.py) and
answers `translatedText` and `translations: [{text, tokens, source_tokens, stop_reason, queue_ms,
decode_ms}]` as the service does, `tokens` being the target subwords with "</s>" last when
reached, so a client counts target tokens the same way for both. Decoding is greedy only (beam
is refused with 422), batch 1, with model/decode.py's `greedy`; GET /health/ready answers 200
once the model is loaded and has decoded one sentence.

One request at a time: the async handler hands each text to a single-thread executor and awaits
it, so decodes run strictly one after the other, first come first served, on one thread (one
OpenMP team of torch.set_num_threads(one per core) threads), while the event loop stays free to
accept connections and answer /health/ready. A sync handler would run in AnyIO's pool of 40
threads, several decodes at once, each thread with a thread team of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, HTTPException

from model.decode import greedy
from model.model import load_checkpoint
from model.tokenizer import EOS_ID, UNK, decode, encode
from service.schemas import TextResult, TranslateRequest

WARMUP_TEXT = "In the beginning God created the heavens and the earth."


class EagerTranslator:
    """A checkpoint's model, tokenizers and greedy decoding, one sentence per call.

    Args:
        checkpoint: a training checkpoint (.pt) as model.model.load_checkpoint reads it.
    """

    def __init__(self, checkpoint: Path) -> None:
        self.model, self.src_tok, self.tgt_tok, _ = load_checkpoint(checkpoint)

    def translate(self, text: str, arrived: float) -> TextResult:
        """Greedy, batch 1. `arrived` (time.monotonic) makes queue_ms the wait for the executor."""
        started = time.monotonic()
        src_ids = encode(self.src_tok, text)  # (S,) ids, EOS last
        ids = greedy(self.model, [src_ids])[0][0]  # (T,) ids, EOS last when reached
        return TextResult(
            text=decode(self.tgt_tok, ids),
            tokens=[self.tgt_tok.id_to_token(i) or UNK for i in ids],
            source_tokens=[self.src_tok.id_to_token(i) or UNK for i in src_ids],
            stop_reason="eos" if ids and ids[-1] == EOS_ID else "max_length",
            queue_ms=round((started - arrived) * 1e3, 2),
            decode_ms=round((time.monotonic() - started) * 1e3, 2),
        )


def create_app(checkpoint: Path) -> FastAPI:
    """The app: loads the model in its lifespan and decodes on one executor thread."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
    state: dict[str, EagerTranslator] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        state["translator"] = translator = await loop.run_in_executor(executor, EagerTranslator, checkpoint)
        await loop.run_in_executor(executor, translator.translate, WARMUP_TEXT, time.monotonic())
        try:
            yield
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="PyTorch eager baseline (bench_http)", lifespan=lifespan)

    @app.post("/translate")
    async def translate(body: TranslateRequest) -> dict:
        if body.decoding == "beam" or (body.n_best or 1) > 1:
            raise HTTPException(422, "the baseline decodes greedy only")
        loop, arrived = asyncio.get_running_loop(), time.monotonic()
        results = [
            await loop.run_in_executor(executor, state["translator"].translate, text, arrived) for text in body.texts
        ]
        texts = [r.text for r in results]
        return {
            "translatedText": texts[0] if isinstance(body.q, str) else texts,
            "translations": [r.model_dump(exclude_none=True) for r in results],
        }

    @app.get("/health/ready")
    async def ready() -> dict:
        return {"status": "ready"}

    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtest.baseline_server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (.pt)")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)  # one per core, as the service's INTRA_OP_THREADS=0
    uvicorn.run(create_app(args.checkpoint), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
