"""Every limit is checked before any work and answered 413/422 (400, 415 for what is not a
limit) with a message naming it; bad input never gets a 500."""

from __future__ import annotations

import re

import pytest

LIMITS = {
    "max_chars_per_text": 50,
    "max_texts_per_request": 3,
    "max_total_chars": 80,
    "max_body_bytes": 2000,
    "max_beam_size": 6,
    "max_n_best": 3,
    "max_output_tokens": 40,
}


@pytest.fixture
def client(make_client, translator, monkeypatch):
    """An app with small limits whose translator must not be reached by the requests here."""
    c = make_client(**LIMITS)

    async def must_not_run(*args, **kwargs):
        raise AssertionError("a request over a limit reached the translator")

    monkeypatch.setattr(translator, "translate", must_not_run)
    return c


@pytest.mark.parametrize(
    ("body", "status", "limit", "message"),
    [
        ({"q": "x" * 51}, 413, "max_chars_per_text", r"text 0 has 51 characters; the limit is max_chars_per_text=50"),
        ({"q": ["a", "b", "c", "d"]}, 413, "max_texts_per_request", r"4 texts .* max_texts_per_request=3"),
        ({"q": ["x" * 50, "y" * 31]}, 413, "max_total_chars", r"81 characters in all; .* max_total_chars=80"),
        ({"q": "x", "beam_size": 7}, 422, "max_beam_size", r"beam_size=7 is over the limit max_beam_size=6"),
        ({"q": "x", "decoding": "beam", "n_best": 4}, 422, "max_n_best", r"n_best=4 .* max_n_best=3"),
        ({"q": "x", "alternatives": 3}, 422, "max_n_best", r"n_best=4 .* max_n_best=3"),
        ({"q": "x", "max_length": 41}, 422, "max_output_tokens", r"max_length=41 .* max_output_tokens=40"),
    ],
)
def test_a_request_over_a_limit_is_refused_naming_the_limit(client, body, status, limit, message):
    r = client.post("/translate", json=body)
    assert r.status_code == status
    assert r.json()["limit"] == limit
    assert re.search(message, r.json()["error"]), r.json()


def test_a_body_over_max_body_bytes_is_refused_by_its_content_length(client):
    r = client.post("/translate", json={"q": "x" * 3000})
    assert r.status_code == 413
    assert r.json()["limit"] == "max_body_bytes"


def test_a_streamed_body_is_cut_off_once_it_passes_max_body_bytes(client):
    def chunks():
        yield b'{"q": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    r = client.post("/translate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "max_body_bytes=2000" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"q": "x", "decoding": "greedy", "n_best": 2}, 422, r"n_best=2 \(or alternatives\) needs decoding=beam"),
        ({"q": "x", "decoding": "beam", "beam_size": 2, "n_best": 3}, 422, r"n_best=3 is more than beam_size=2"),
        ({"q": "x", "beam_size": 0}, 422, r"beam_size: Input should be greater than or equal to 1"),
        ({"q": "x", "max_length": 0}, 422, r"max_length: Input should be greater than or equal to 1"),
        ({"q": "x", "length_penalty": -1}, 422, r"length_penalty: Input should be greater than or equal to 0"),
        ({"q": "x", "decoding": "sampling"}, 422, r"decoding: Input should be 'greedy' or 'beam'"),
        ({"q": []}, 422, r"q is an empty list"),
        ({"q": 5}, 422, r"q"),
        ({"q": ["a", 5]}, 422, r"q"),
        ({"source": "en"}, 422, r"q: Field required"),
        ({"q": "x", "format": "html"}, 400, r"format=html is not supported yet"),
        ({"q": "x", "format": "markdown"}, 422, r"format: Input should be 'text' or 'html'"),
        ({"q": "x", "source": "fr"}, 400, r"no model translates fr->es; the pairs available are en->es"),
        ({"q": "x", "target": "de"}, 400, r"no model translates en->de; the pairs available are en->es"),
    ],
)
def test_bad_input_gets_a_clear_4xx(client, body, status, message):
    r = client.post("/translate", json=body)
    assert r.status_code == status
    assert re.search(message, r.json()["error"]), r.json()


@pytest.mark.parametrize(
    ("content", "content_type", "status", "message"),
    [
        (b"{", "application/json", 422, r"the body is not valid JSON"),
        (b"[1, 2]", "application/json", 422, r"the body must be a JSON object"),
        (b"\xff\xfe", "application/json", 422, r"not valid JSON"),
        (b"", "application/json", 422, r"not valid JSON"),
        (b"q=x", "text/plain", 415, r"unsupported content type 'text/plain'"),
        (b"q=x&beam_size=many", "application/x-www-form-urlencoded", 422, r"beam_size: Input should be a valid"),
    ],
)
def test_malformed_bodies_get_a_clear_4xx(client, content, content_type, status, message):
    r = client.post("/translate", content=content, headers={"content-type": content_type})
    assert r.status_code == status
    assert re.search(message, r.json()["error"]), r.json()


def test_a_file_upload_is_refused(client):
    r = client.post("/translate", data={"source": "en"}, files={"q": ("q.txt", b"hello", "text/plain")})
    assert r.status_code == 422
    assert r.json() == {"error": "file uploads are not accepted; send the text in the q field"}


def test_malformed_multipart_and_unknown_routes_answer_in_the_error_shape(client):
    r = client.post("/translate", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400 and r.json()["error"]
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    not_allowed = client.get("/translate")
    assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "content",
    [
        b'{"q": null}',
        b'{"q": {"a": 1}}',
        b'{"q": "x", "beam_size": "NaN"}',
        b'{"q": "x", "length_penalty": NaN}',
        b'{"q": "x", "length_penalty": 1e400}',
        b'{"q": "x", "alternatives": -1}',
        b'{"q": "x", "return_attention": "perhaps"}',
        b'{"q": "\\ud800"}',
        b'{"q": ["ok", "\\udfff x"]}',
        b'{"q": "x", "beam_size": 1e30}',
        b'"just a string"',
        b"null",
    ],
)
def test_garbage_never_gets_a_500(make_client, content):
    r = make_client(**LIMITS).post("/translate", content=content, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]
