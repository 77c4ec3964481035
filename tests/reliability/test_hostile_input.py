"""A catalogue of hostile inputs sent over real HTTP to a real server process with the default
limits, each with the exact status and answer it must get; afterwards the server is still
healthy, logged no server error, and translates as it did before.

The same limits at small sizes, with the translator guarded against being reached, are in
tests/service/test_api_limits.py; this file is the end-to-end catalogue.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.service.conftest import Server

JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
PROBE = {"q": "In the beginning God created the heavens and the earth."}


def as_json(body: object) -> bytes:
    return json.dumps(body).encode()


# (name, body bytes, headers, status, the whole JSON answer for errors)
REFUSED = [
    (
        "one text of 100,000 characters",
        as_json({"q": "a" * 100_000}),
        JSON,
        413,
        {"error": "text 0 has 100000 characters; the limit is max_chars_per_text=2000", "limit": "max_chars_per_text"},
    ),
    (
        "a list of 10,000 texts",
        as_json({"q": ["a"] * 10_000}),
        JSON,
        413,
        {
            "error": "10000 texts in one request; the limit is max_texts_per_request=32",
            "limit": "max_texts_per_request",
        },
    ),
    (
        "10,000 form fields",
        b"&".join([b"q=a"] * 10_000),
        FORM,
        400,
        {"error": "Too many fields. Maximum number of fields is 1000."},
    ),
    (
        "an oversized body",
        as_json({"q": "a" * 300_000}),
        JSON,
        413,
        {"error": "the body has 300009 bytes or more; the limit is max_body_bytes=262144", "limit": "max_body_bytes"},
    ),
    (
        "q of the wrong type",
        as_json({"q": 5}),
        JSON,
        422,
        {"error": "q.str: Input should be a valid string; q.list[str]: Input should be a valid list"},
    ),
    (
        "q null",
        as_json({"q": None}),
        JSON,
        422,
        {"error": "q.str: Input should be a valid string; q.list[str]: Input should be a valid list"},
    ),
    (
        "a boolean that is not one",
        as_json({"q": "x", "return_attention": "perhaps"}),
        JSON,
        422,
        {"error": "return_attention: Input should be a valid boolean, unable to interpret input"},
    ),
    (
        "a JSON array body",
        as_json(["x"]),
        JSON,
        422,
        {"error": "the body must be a JSON object with at least a q field"},
    ),
    (
        "malformed JSON",
        b'{"q": "x"',
        JSON,
        422,
        {"error": "the body is not valid JSON: Expecting ',' delimiter: line 1 column 10 (char 9)"},
    ),
    (
        "JSON nested 100,000 deep",
        b'{"q": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        JSON,
        422,
        {"error": "the body is not valid JSON: it is nested too deeply"},
    ),
    (
        "an integer of 5,000 digits",
        b'{"q": "x", "beam_size": ' + b"9" * 5000 + b"}",
        JSON,
        422,
        {
            "error": "the body is not valid JSON: Exceeds the limit (4300 digits) for integer string conversion: "
            "value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit"
        },
    ),
    (
        "the wrong content type",
        b"q=x",
        {"content-type": "text/plain"},
        415,
        {"error": "unsupported content type 'text/plain'; send application/json or form data"},
    ),
    (
        "invalid UTF-8",
        b'{"q": "\xff\xfe"}',
        JSON,
        422,
        {"error": "the body is not valid JSON: 'utf-8' codec can't decode byte 0xff in position 7: invalid start byte"},
    ),
    (
        "a lone surrogate",
        b'{"q": "\\ud800"}',
        JSON,
        422,
        {"error": "q: Value error, q is not valid Unicode text (surrogates not allowed at 0)"},
    ),
    (
        "format html",
        as_json({"q": "<b>hello</b>", "format": "html"}),
        JSON,
        400,
        {"error": "format=html is not supported yet; send plain text with format=text"},
    ),
    (
        "beam_size 0",
        as_json({"q": "x", "beam_size": 0}),
        JSON,
        422,
        {"error": "beam_size: Input should be greater than or equal to 1"},
    ),
    (
        "beam_size -1",
        as_json({"q": "x", "beam_size": -1}),
        JSON,
        422,
        {"error": "beam_size: Input should be greater than or equal to 1"},
    ),
    (
        "beam_size 17",
        as_json({"q": "x", "beam_size": 17}),
        JSON,
        422,
        {"error": "beam_size=17 is over the limit max_beam_size=16", "limit": "max_beam_size"},
    ),
    (
        'beam_size "abc"',
        as_json({"q": "x", "beam_size": "abc"}),
        JSON,
        422,
        {"error": "beam_size: Input should be a valid integer, unable to parse string as an integer"},
    ),
    (
        "n_best above beam_size",
        as_json({"q": "x", "decoding": "beam", "beam_size": 2, "n_best": 3}),
        JSON,
        422,
        {"error": "n_best=3 is more than beam_size=2"},
    ),
    (
        "max_length over the cap",
        as_json({"q": "x", "max_length": 10**9}),
        JSON,
        422,
        {"error": "max_length=1000000000 is over the limit max_output_tokens=256", "limit": "max_output_tokens"},
    ),
    (
        "an unknown source language",
        as_json({"q": "x", "source": "fr"}),
        JSON,
        400,
        {"error": "no model translates fr->es; the pairs available are en->es"},
    ),
    (
        "an unknown target language",
        as_json({"q": "x", "target": "zz"}),
        JSON,
        400,
        {"error": "no model translates en->zz; the pairs available are en->es"},
    ),
]

# (name, q): texts that are odd but legal; each gets 200 and a translation per text.
TRANSLATED = [
    ("an empty text", ""),
    ("a whitespace-only text", " \t\n\u3000 "),
    ("NUL and control characters", "a\u0000b\u0007c\u001b[31m red\u007f"),
    ("emoji", "God saw the light \U0001f600\U0001f3f3\ufe0f\u200d\U0001f308 and it was good"),
    ("right-to-left", "\u202e\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd"),
    ("CJK", "\u592a\u521d\u6709\u9053 \u306f\u3058\u3081\u306b \ud0dc\ucd08\uc5d0"),
    ("HTML sent as text", "<script>alert(1)</script><b onmouseover='x'>light</b>"),
    ("2,000 characters without a space", "x" * 2000),
]


@pytest.fixture(scope="module")
def server(tiny_bundle):
    """A server with the default limits and no cache, and its answer to PROBE before any hostile input."""
    s = Server(tiny_bundle, CACHE_SIZE="0")
    s.wait_ready()
    s.before = httpx.post(f"{s.url}/translate", json=PROBE, timeout=30).json()  # type: ignore[attr-defined]
    yield s
    s.stop()


@pytest.mark.parametrize(("name", "content", "headers", "status", "answer"), REFUSED, ids=[c[0] for c in REFUSED])
def test_hostile_input_gets_its_exact_status_and_answer(server, name, content, headers, status, answer):
    r = httpx.post(f"{server.url}/translate", content=content, headers=headers, timeout=30)
    assert (r.status_code, r.json()) == (status, answer)


@pytest.mark.parametrize(("name", "q"), TRANSLATED, ids=[c[0] for c in TRANSLATED])
def test_odd_but_legal_text_is_translated(server, name, q):
    r = httpx.post(f"{server.url}/translate", json={"q": [q, q]}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["translatedText"]) == 2 and all(isinstance(t, str) for t in body["translatedText"])
    assert all(t["stop_reason"] in ("eos", "max_length") for t in body["translations"])
    if not q.strip():
        assert body["translatedText"] == ["", ""]


def test_after_the_catalogue_the_server_is_healthy_logged_no_error_and_translates_as_before(server):
    ready = httpx.get(f"{server.url}/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    after = httpx.post(f"{server.url}/translate", json=PROBE, timeout=30).json()
    assert after["translations"][0]["cached"] is False
    assert after["translatedText"] == server.before["translatedText"]
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    statuses = [line["status"] for line in lines if line.get("logger") == "service.access"]
    assert len(statuses) >= len(REFUSED) + len(TRANSLATED)
    assert all(s < 500 for s in statuses), statuses
    assert not [line for line in lines if line["level"] == "error"], "the server logged an error"
