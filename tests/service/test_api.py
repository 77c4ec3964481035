"""POST /translate and the other routes, through the real app around the tiny bundle.

The tiny model's Spanish is junk; these tests check shapes, fields and behaviour, not quality.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from service.api import ClientGone, until_disconnect
from service.logs import JsonFormatter
from service.main import create_app
from service.translator import DeadlineExceeded, DecodeOptions, Translator
from tests.conftest import ROOT
from tests.service.conftest import tiny_settings

TEXT = "In the beginning God created the heavens and the earth."


def test_one_text_gets_libretranslate_fields_and_details(client):
    r = client.post("/translate", json={"q": TEXT, "source": "en", "target": "es"})
    assert r.status_code == 200
    body = r.json()
    assert isinstance(body["translatedText"], str) and body["translatedText"]
    assert body["alternatives"] == []
    assert (body["model"], body["source"], body["target"]) == ("en-es", "en", "es")
    [t] = body["translations"]
    assert t["text"] == body["translatedText"]
    assert t["source_tokens"][-1] == "</s>"
    assert t["tokens"] and t["stop_reason"] in ("eos", "max_length")
    assert t["queue_ms"] >= 0 and t["decode_ms"] > 0 and t["cached"] is False
    assert "attention" not in t and "alignment" not in t and "score" not in t


def test_a_list_of_texts_gets_a_list_of_translations_in_order(client):
    texts = ["God said.", "Light.", "And there was evening and there was morning, the first day."]
    body = client.post("/translate", json={"q": texts}).json()
    assert isinstance(body["translatedText"], list) and len(body["translatedText"]) == 3
    assert body["alternatives"] == [[], [], []]
    for text, t in zip(texts, body["translations"], strict=True):
        one = client.post("/translate", json={"q": text}).json()
        assert one["translatedText"] == t["text"]


@pytest.mark.parametrize("as_multipart", [False, True])
def test_form_data_is_accepted_like_json(client, as_multipart):
    json_body = client.post("/translate", json={"q": TEXT, "source": "en", "target": "es"}).json()
    form = {"q": TEXT, "source": "en", "target": "es", "format": "text"}
    if as_multipart:
        r = client.post("/translate", data=form, files={"unused": (None, "")})
    else:
        r = client.post("/translate", data=form)
    assert r.status_code == 200, r.text
    assert r.json()["translatedText"] == json_body["translatedText"]


def test_a_repeated_form_q_makes_a_list(client):
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = client.post("/translate", content="q=God+said.&q=Light.", headers=form)
    assert r.status_code == 200
    assert len(r.json()["translatedText"]) == 2


def test_beam_returns_n_best_alternatives_with_scores_best_first(client):
    body = client.post(
        "/translate", json={"q": TEXT, "decoding": "beam", "beam_size": 4, "n_best": 3, "return_scores": True}
    ).json()
    [t] = body["translations"]
    assert len(t["alternatives"]) == 2
    scores = [t["score"]] + [a["score"] for a in t["alternatives"]]
    assert scores == sorted(scores, reverse=True)
    assert all(math.isfinite(a["logprob"]) for a in t["alternatives"])


def test_libretranslate_alternatives_ask_for_beam_search(client):
    body = client.post("/translate", data={"q": TEXT, "source": "en", "target": "es", "alternatives": "2"}).json()
    assert len(body["alternatives"]) == 2
    assert all(isinstance(a, str) for a in body["alternatives"])
    assert body["alternatives"] == [a["text"] for a in body["translations"][0]["alternatives"]]


def test_attention_has_a_row_per_output_token_over_the_source_and_rows_sum_to_one(client):
    body = client.post(
        "/translate", json={"q": TEXT, "decoding": "beam", "return_attention": True, "return_alignment": True}
    ).json()
    t = body["translations"][0]
    att = t["attention"]
    assert len(att["subwords"]) == len(t["tokens"])
    assert all(len(row) == len(t["source_tokens"]) for row in att["subwords"])
    assert all(abs(sum(row) - 1) < 1e-3 for row in att["subwords"])
    assert len(att["words"]) == len(att["target_words"])
    assert all(len(row) == len(att["source_words"]) for row in att["words"])
    for target_word, source_word in t["alignment"]:
        assert 0 <= target_word < len(att["target_words"]) and 0 <= source_word < len(att["source_words"])


def test_the_same_request_twice_is_served_from_the_cache(client):
    first = client.post("/translate", json={"q": "  God   saw the light. "}).json()["translations"][0]
    second = client.post("/translate", json={"q": "God saw the light."}).json()["translations"][0]
    assert first["cached"] is False and second["cached"] is True
    assert second["text"] == first["text"] and second["decode_ms"] == 0
    beam = client.post("/translate", json={"q": "God saw the light.", "decoding": "beam"}).json()
    assert beam["translations"][0]["cached"] is False
    metrics = client.get("/metrics").text
    assert 'mt_cache_total{result="hit"} 1.0' in metrics


def test_an_empty_text_translates_to_an_empty_text(client):
    body = client.post("/translate", json={"q": ["", "   "]}).json()
    assert body["translatedText"] == ["", ""]


def test_languages_answer_as_libretranslate(client):
    assert client.get("/languages").json() == [
        {"code": "en", "name": "English", "targets": ["es"]},
        {"code": "es", "name": "Spanish", "targets": []},
    ]


def test_models_list_the_loaded_bundle_and_its_card(client, translator):
    [card] = client.get("/models").json()["models"]
    assert card["id"] == "en-es" and card["version"] == translator.version
    assert card["attention"] in ("dot", "general", "additive")
    assert card["sizes"]["tgt_vocab"] > 4


def test_health_live_and_ready_answer_200_when_the_model_is_loaded(client):
    assert client.get("/health/live").json() == {"status": "ok", "degraded": []}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_metrics_count_requests_by_route_and_status_and_expose_the_batcher(client):
    client.post("/translate", json={"q": TEXT})
    client.post("/translate", json={"q": TEXT, "beam_size": 99})
    text = client.get("/metrics").text
    assert 'mt_requests_total{method="POST",route="/translate",status="200"} 1.0' in text
    assert 'mt_requests_total{method="POST",route="/translate",status="422"} 1.0' in text
    assert 'mt_request_seconds_count{route="/translate"} 2.0' in text
    for name in ("mt_queue_depth", "mt_batch_rows_per_step", "mt_tokens_generated_total", "mt_cache_total"):
        assert name in text
    assert "mt_decode_tokens_per_second_count 1.0" in text


def test_openapi_documents_translate_with_examples_and_error_answers(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/translate"]["post"]
    content = op["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded", "multipart/form-data"} <= set(content)
    assert "libretranslate" in content["application/json"]["examples"]
    assert {"400", "401", "403", "413", "422", "429", "503", "504"} <= set(op["responses"])
    assert client.get("/docs").status_code == 200


def test_a_full_queue_answers_503_at_once_with_retry_after(tiny_bundle):
    full = Translator(tiny_settings(tiny_bundle, queue_size=0))
    try:
        with TestClient(create_app(tiny_settings(tiny_bundle), full)) as client:
            r = client.post("/translate", json={"q": TEXT})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "queue is full" in r.json()["error"]
            assert 'mt_rejections_total{reason="queue_full"} 1.0' in client.get("/metrics").text
    finally:
        full.close()


def test_a_request_past_its_deadline_answers_504_naming_the_timeout(make_client, translator, monkeypatch):
    client = make_client(request_timeout_s=0.5)
    seen = []

    async def too_slow(text, options, *, deadline):
        seen.append(deadline)
        raise DeadlineExceeded("deadline passed after 500 ms")

    monkeypatch.setattr(translator, "translate", too_slow)
    r = client.post("/translate", json={"q": TEXT})
    assert r.status_code == 504
    assert r.json() == {
        "error": "the translation did not finish within request_timeout_s=0.5",
        "limit": "request_timeout_s",
    }
    assert seen and seen[0] is not None


def test_a_deadline_already_passed_answers_504_through_the_real_batcher(make_client):
    client = make_client(request_timeout_s=1e-9)
    r = client.post("/translate", json={"q": TEXT})
    assert r.status_code == 504


def test_a_client_that_hangs_up_cancels_its_entries(translator, monkeypatch):
    cancelled = []
    real_cancel = translator.batcher.cancel
    monkeypatch.setattr(translator.batcher, "cancel", lambda entry: (cancelled.append(entry), real_cancel(entry)))

    class HungUp:
        async def receive(self):
            await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

    async def go():
        blocker = asyncio.Event()

        async def slow_translation():
            options = DecodeOptions("beam", beam_size=16, n_best=1, max_length=256)
            texts = [TEXT * 20] * 8
            await asyncio.gather(*(translator.translate(t, options) for t in texts))
            await blocker.wait()

        with pytest.raises(ClientGone):
            await until_disconnect(HungUp(), [slow_translation()])  # type: ignore[arg-type]

    asyncio.run(go())
    assert cancelled, "the entries of a client that hung up were not cancelled"


def test_request_lines_are_json_with_id_status_and_timings_but_no_text(client, caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    r = client.post("/translate", json={"q": TEXT}, headers={"X-Request-ID": "req-42"})
    assert r.headers["x-request-id"] == "req-42"
    [record] = [rec for rec in caplog.records if rec.name == "service.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["id"] == "req-42" and line["status"] == 200 and line["route"] == "/translate"
    assert line["ms"] > 0 and "decode_ms" in line and line["texts"] == 1 and line["chars"] == len(TEXT)
    assert "God created" not in JsonFormatter().format(record)


def test_texts_are_logged_only_when_log_texts_is_set(make_client, caplog):
    client = make_client(log_texts=True)
    caplog.set_level(logging.INFO, logger="service.access")
    client.post("/translate", json={"q": TEXT})
    [record] = [rec for rec in caplog.records if rec.name == "service.access"]
    assert json.loads(JsonFormatter().format(record))["q"] == [TEXT]


def test_the_service_never_imports_torch():
    code = "import sys, service.main, service.api; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
