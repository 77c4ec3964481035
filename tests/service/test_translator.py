"""The Translator facade: the ONNX engine against the PyTorch reference, options, words,
queue policy through asyncio, and a service that never imports torch."""

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from model.corpus import read_tsv
from service.alignment import group_words, merge_to_words
from service.config import Settings
from service.translator import DeadlineExceeded, DecodeOptions, QueueFull, Translator

ROOT = Path(__file__).resolve().parents[2]
TINY_CORPUS = ROOT / "tests" / "fixtures" / "tiny"
LONG_TEXT = " ".join(["And God said, Let there be light: and there was light."] * 6)


def make_translator(bundle, **overrides) -> Translator:
    return Translator(Settings(bundle_dir=bundle, device="cpu", intra_op_threads=1, **overrides))


@pytest.fixture(scope="module")
def translator(tiny_bundle):
    t = make_translator(tiny_bundle)
    yield t
    t.close()


@pytest.fixture(scope="module")
def pairs():
    """200 sentences: the tiny test and dev splits, then the first of train."""
    return (
        read_tsv(TINY_CORPUS / "test.tsv") + read_tsv(TINY_CORPUS / "dev.tsv") + read_tsv(TINY_CORPUS / "train.tsv")
    )[:200]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    torch = pytest.importorskip("torch")
    from model.model import load_checkpoint

    torch.set_num_threads(1)
    model, src_tok, _, _ = load_checkpoint(tiny_checkpoint)
    return model, src_tok


def translate_all(translator, texts, options):
    """Submit every text at once (they share the continuous batch), then collect."""
    submitted = [translator.submit(text, options) for text in texts]
    return [translator.finish(src_ids, entry.future.result(60)) for src_ids, entry in submitted]


def ids_of(translator, translation):
    return [translator.bundle.tgt_tokenizer.token_to_id(t) for t in translation.tokens]


def test_the_service_never_imports_torch():
    code = "import sys, service, service.translator, service.api\nassert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_greedy_gives_the_pytorch_reference_tokens_on_200_sentences(translator, pairs, reference):
    from export.convert import torch_logprobs
    from model.decode import greedy

    model, src_tok = reference
    assert len(pairs) == 200
    srcs = [translator.bundle.encode(p.src) for p in pairs]
    expected = greedy(model, srcs)
    got = translate_all(translator, [p.src for p in pairs], DecodeOptions())
    ties, worst = [], 0.0
    for src, (ref_tokens, ref_attention), ours in zip(srcs, expected, got, strict=True):
        tokens = ids_of(translator, ours)
        if tokens == ref_tokens:
            worst = max(worst, float(np.abs(np.array(ours.attention) - ref_attention.numpy()).max()))
            continue
        # Only an exact tie may send the two apart: at the first difference both tokens
        # must be equally likely under PyTorch.
        t = next(i for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=False)) if a != b)
        logp = torch_logprobs(model, src, tokens)[t]
        assert abs(logp[tokens[t]] - logp[ref_tokens[t]]) < 1e-5, f"not a tie at step {t}: {ours.text!r}"
        ties.append(t)
    print(f"greedy: {len(ties)} of {len(pairs)} differ, all at exact ties; attention max diff {worst:.2e}")
    assert len(ties) <= 2
    assert worst < 1e-5


def test_beam_agrees_with_the_pytorch_reference(translator, pairs, reference):
    from model.decode import beam

    model, _ = reference
    options = DecodeOptions(strategy="beam", beam_size=4, n_best=2, length_penalty=0.6)
    got = translate_all(translator, [p.src for p in pairs[:40]], options)
    for pair, ours in zip(pairs[:40], got, strict=True):
        expected = beam(model, translator.bundle.encode(pair.src), beam_size=4, n_best=2, alpha=0.6)
        found = [ours, *ours.alternatives]
        assert [ids_of(translator, t) for t in found] == [e["tokens"] for e in expected]
        assert [t.score for t in found] == pytest.approx([e["score"] for e in expected], abs=1e-4)
        assert [t.stop_reason for t in found] == [e["stop"] for e in expected]
        for t, e in zip(found, expected, strict=True):
            np.testing.assert_allclose(t.attention, e["attention"].numpy(), atol=1e-5)


def test_beam_of_one_is_exactly_greedy(translator, pairs):
    texts = [p.src for p in pairs[:20]]
    greedy = translate_all(translator, texts, DecodeOptions())
    beam = translate_all(translator, texts, DecodeOptions(strategy="beam", beam_size=1))
    for g, b in zip(greedy, beam, strict=True):
        assert (b.tokens, b.score, b.logprob, b.stop_reason) == (g.tokens, g.score, g.logprob, g.stop_reason)
        assert b.attention == g.attention


def test_n_best_comes_sorted_best_first(translator, pairs):
    for t in translate_all(translator, [p.src for p in pairs[:10]], DecodeOptions(strategy="beam", n_best=3)):
        scores = [t.score] + [a.score for a in t.alternatives]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert all(not a.alternatives for a in t.alternatives)


def test_a_translation_carries_tokens_attention_and_words(translator, pairs):
    t = translator.translate_sync(pairs[0].src, DecodeOptions())
    assert t.source_tokens[-1] == "</s>"
    assert len(t.attention) == len(t.tokens) and all(len(row) == len(t.source_tokens) for row in t.attention)
    np.testing.assert_allclose(np.sum(t.attention, axis=1), 1.0, atol=1e-5)
    assert np.array(t.word_attention).shape == (len(t.target_words), len(t.source_words))
    np.testing.assert_allclose(np.sum(t.word_attention, axis=1), 1.0, atol=1e-5)
    assert all(0 <= i < len(t.target_words) and 0 <= j < len(t.source_words) - 1 for i, j in t.alignment)
    assert t.stop_reason in ("eos", "max_length") and t.decode_ms > 0 and t.queue_ms >= 0


def test_max_length_is_obeyed_and_capped_by_the_settings(tiny_bundle, translator, pairs):
    t = translator.translate_sync(pairs[0].src, DecodeOptions(max_length=3))
    assert len(t.tokens) <= 3
    capped = make_translator(tiny_bundle, max_output_tokens=4)
    try:
        assert len(capped.translate_sync(LONG_TEXT, DecodeOptions(max_length=100)).tokens) <= 4
    finally:
        capped.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (DecodeOptions(strategy="beam", beam_size=17), "beam_size must be between 1 and 16"),
        (DecodeOptions(strategy="beam", beam_size=2, n_best=3), r"n_best must be between 1 and beam_size \(2\)"),
        (DecodeOptions(max_length=0), "max_length must be at least 1"),
        (DecodeOptions(strategy="sample"), "strategy must be 'greedy' or 'beam'"),  # type: ignore[arg-type]
    ],
)
def test_bad_options_are_refused_before_queueing(translator, options, message):
    with pytest.raises(ValueError, match=message):
        translator.translate_sync("Hello.", options)


def test_text_round_trips_the_target_tokenizer(translator):
    bundle = translator.bundle
    texts = [p.tgt for p in read_tsv(TINY_CORPUS / "train.tsv") if any(c in p.tgt for c in "áéíóúñ¿")][:20]
    assert texts
    for text in texts:
        assert bundle.decode(bundle.tgt_tokenizer.encode(text).ids + [bundle.eos_id, 7]) == text


def test_words_merge_subword_attention_by_the_metaspace_marker():
    source = ["▁The", "▁sh", "ip", "▁sa", "iled", ".", "</s>"]
    target = ["▁El", "▁bar", "co", "▁zar", "pó", ".", "</s>"]
    attention = np.array(
        [
            [0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1],
            [0.0, 0.4, 0.4, 0.1, 0.0, 0.0, 0.1],
            [0.0, 0.2, 0.6, 0.0, 0.0, 0.0, 0.2],
            [0.0, 0.0, 0.0, 0.5, 0.3, 0.1, 0.1],
            [0.0, 0.0, 0.1, 0.3, 0.5, 0.0, 0.1],
            [0.0, 0.0, 0.0, 0.0, 0.2, 0.7, 0.1],
            [0.1, 0.0, 0.0, 0.0, 0.0, 0.1, 0.8],
        ]
    )
    words = merge_to_words(attention, target, source, {"</s>"})
    assert words.source_words == ["The", "ship", "sailed.", "</s>"]
    assert words.target_words == ["El", "barco", "zarpó.", "</s>"]
    np.testing.assert_allclose(
        words.attention,
        [
            [0.9, 0.0, 0.0, 0.1],
            [0.0, 0.8, 0.05, 0.15],  # mean of the "▁bar" and "co" rows; "▁sh" + "ip" columns summed
            [0.0, 0.1 / 3, 2.6 / 3, 0.1],
            [0.1, 0.0, 0.1, 0.8],
        ],
        atol=1e-6,
    )
    assert words.alignment == [(0, 0), (1, 1), (2, 2)]


def test_a_special_token_is_a_word_of_its_own():
    assert group_words(["▁a", "b", "</s>", "c"], {"</s>"}) == (["ab", "</s>", "c"], pytest.approx([0, 0, 1, 2]))


class SlowEngine:
    """The real engine, slowed down (and optionally held) so the queue policy can be watched."""

    def __init__(self, engine, delay=0.005):
        self.engine, self.delay = engine, delay

    def encode(self, batch):
        return self.engine.encode(batch)

    def decode_step(self, state):
        time.sleep(self.delay)
        return self.engine.decode_step(state)


@pytest.fixture
def slow(tiny_bundle):
    t = make_translator(tiny_bundle, queue_size=2, max_batch_rows=1)
    t.batcher.engine = SlowEngine(t.engine)
    yield t
    t.close()


def wait_for(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.002)


async def until(predicate, timeout=5.0):
    """wait_for for a coroutine: the event loop keeps running (texts are encoded off it)."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        await asyncio.sleep(0.002)


def test_a_full_queue_raises_queue_full_at_once(slow):
    async def scenario():
        running = asyncio.ensure_future(slow.translate(LONG_TEXT, DecodeOptions()))
        await until(lambda: slow.stats()["active_entries"] == 1)
        waiting = [asyncio.ensure_future(slow.translate("Hello.", DecodeOptions())) for _ in range(2)]
        await until(lambda: slow.stats()["queue_depth"] == 2)
        with pytest.raises(QueueFull, match="queue is full"):
            await slow.translate("Hello.", DecodeOptions())
        for task in (running, *waiting):
            task.cancel()
        await asyncio.gather(running, *waiting, return_exceptions=True)

    asyncio.run(scenario())


def test_a_request_past_its_deadline_raises_deadline_exceeded(slow):
    async def scenario():
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await slow.translate(LONG_TEXT, DecodeOptions(), deadline=time.monotonic() + 0.05)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0


def test_a_client_that_goes_away_frees_its_rows_at_the_next_step(slow):
    async def scenario():
        task = asyncio.ensure_future(slow.translate(LONG_TEXT, DecodeOptions(strategy="beam", beam_size=1)))
        await until(lambda: slow.stats()["active_rows"] == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        steps = slow.stats()["steps"]
        wait_for(lambda: slow.stats()["active_rows"] == 0, timeout=1.0)
        assert slow.stats()["steps"] <= steps + 1

    asyncio.run(scenario())


def test_a_closed_translator_refuses_new_work(tiny_bundle):
    t = make_translator(tiny_bundle)
    t.warmup()
    assert t.accepting and t.stats()["entries_done"] == 2
    t.close(drain_timeout=1.0)
    assert not t.accepting
    with pytest.raises(QueueFull, match="shutting down"):
        asyncio.run(t.translate("Hello.", DecodeOptions()))


def test_a_text_being_encoded_when_the_translator_closes_is_refused_cleanly(tiny_bundle):
    t = make_translator(tiny_bundle)
    started, release = threading.Event(), threading.Event()
    real = t._encode

    def held(text):
        started.set()
        release.wait(5)
        return real(text)

    t._encode = held

    async def scenario():
        task = asyncio.ensure_future(t.translate("Hello.", DecodeOptions()))
        await until(started.is_set)
        assert t.stats()["queue_depth"] == 1  # its place is held while it is encoded
        t.close()
        release.set()
        with pytest.raises(QueueFull, match="shutting down"):
            await task

    asyncio.run(scenario())
    assert t.stats()["queue_depth"] == 0
