"""npgpt serve (npgpt.server, npgpt.openai_api): OpenAI's legacy completions API on a live server on 127.0.0.1,
driven by the official openai client, answering what model.generate answers; every bad request an error in
OpenAI's shape with the right status, after which the server still serves."""

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import npgpt
from npgpt import cores, ops
from npgpt.errors import BusyError, DistributionError, NpgptError, SettingsError
from npgpt.scheduler import CANCELLED, Scheduler
from npgpt.server import MAX_BODY, SHUTDOWN_WAIT, Handler, Server, is_loopback

from conftest import ROOT, golden_dir

openai = pytest.importorskip("openai")

PROMPT = "Hello, I am"
LONG = "The cat sat on the mat. " * 12  # 85 tokens: more than tiny's 64-token context


class Log(io.StringIO):
    """The server's log, kept for the assertions (the server writes it under a lock)."""

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


@pytest.fixture(scope="module")
def model():
    return npgpt.load(golden_dir("tiny"))


@pytest.fixture(scope="module")
def log():
    return Log()


@pytest.fixture(scope="module")
def server(model, log):
    with Server(model, port=0, model_name="tiny", log=log) as s:
        yield s
    assert s._thread is None and not [t for t in threading.enumerate() if "process_request" in t.name]


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def request(server, method, path, body=None, headers=None, raw: bytes | None = None):
    """(status, headers, parsed JSON body or text) of one request on a new connection."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        text = response.read().decode()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        return response.status, dict(response.getheaders()), parsed
    finally:
        conn.close()


def complete(server, body=None, **kwargs):
    return request(server, "POST", "/v1/completions", body, **kwargs)


def ids(model, text):
    return model.tokenizer.encode(text)


# ---------------------------------------------------------------------------------------------- completions


def test_a_completion_is_what_generate_gives(server, client, model):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=0)
    expected = model.generate(PROMPT, max_new_tokens=10)
    assert r.choices[0].text == expected.text and r.choices[0].finish_reason == "length"
    assert r.id.startswith("cmpl-") and r.object == "text_completion" and r.model == "tiny"
    assert r.choices[0].index == 0 and r.choices[0].logprobs is None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (4, 10, 14)


def test_openai_defaults_sample_16_tokens_at_temperature_1(client, model):
    r = client.completions.create(model="tiny", prompt=PROMPT, seed=1)
    expected = model.generate(PROMPT, temperature=1.0, max_new_tokens=16, seed=1)
    assert r.choices[0].text == expected.text and r.usage.completion_tokens == len(expected.ids) == 16


def test_sampling_with_a_seed_is_generate_and_reproducible(client, model):
    settings = dict(temperature=0.9, top_p=0.95, presence_penalty=0.5, frequency_penalty=0.3, seed=5)
    first = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, **settings)
    again = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, **settings)
    assert first.choices[0].text == again.choices[0].text == model.generate(PROMPT, max_new_tokens=12,
                                                                            **settings).text


def test_a_list_of_prompts_and_token_ids(client, model):
    texts = ["Hello", "The cat sat on the"]
    expected = [c.text for c in model.generate(texts, max_new_tokens=6)]
    as_text = client.completions.create(model="tiny", prompt=texts, max_tokens=6, temperature=0)
    as_ids = client.completions.create(model="tiny", prompt=[ids(model, t) for t in texts], max_tokens=6,
                                       temperature=0)
    one_id_list = client.completions.create(model="tiny", prompt=ids(model, texts[1]), max_tokens=6, temperature=0)
    assert [c.text for c in as_text.choices] == [c.text for c in as_ids.choices] == expected
    assert [c.index for c in as_text.choices] == [0, 1]
    assert one_id_list.choices[0].text == expected[1]
    assert as_ids.usage.prompt_tokens == 1 + 5


def test_n_choices_per_prompt_are_prompt_major_and_reproducible(client, model):
    prompts = ["Hello", "A cat"]
    body = dict(model="tiny", prompt=prompts, n=3, max_tokens=7, temperature=0.8, seed=11, extra_body={"top_k": 40})
    first, again = client.completions.create(**body), client.completions.create(**body)
    expected = model.generate(prompts, n=3, max_new_tokens=7, temperature=0.8, top_k=40, seed=11)
    assert [c.index for c in first.choices] == list(range(6))
    assert [c.text for c in first.choices] == [c.text for c in again.choices] \
        == [c.text for per_prompt in expected for c in per_prompt]
    assert len({c.text for c in first.choices[:3]}) > 1  # three samples, not one three times
    assert first.usage.prompt_tokens == 1 + 2 and first.usage.completion_tokens == 6 * 7


def test_n_at_temperature_0_is_the_greedy_text_n_times(client, model):
    r = client.completions.create(model="tiny", prompt=PROMPT, n=2, max_tokens=5, temperature=0)
    assert [c.text for c in r.choices] == [model.generate(PROMPT, max_new_tokens=5).text] * 2


def test_stop_strings(client, model):
    greedy = model.generate(PROMPT, max_new_tokens=12).text
    stop = greedy[len(greedy) // 2:len(greedy) // 2 + 3]
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop, "zzzz"])
    expected = model.generate(PROMPT, max_new_tokens=12, stop=[stop, "zzzz"])
    assert r.choices[0].text == expected.text == greedy[:greedy.index(stop)]
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == len(expected.ids)


def test_logit_bias_and_npgpt_settings(client, model):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, temperature=0, logit_bias={"13": 100})
    assert r.choices[0].text == "...."
    extra = dict(top_k=5, min_p=0.01, repetition_penalty=1.3, no_repeat_ngram_size=2)
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=9, seed=2,
                                  extra_body=dict(extra, min_tokens=3))
    assert r.choices[0].text == model.generate(PROMPT, max_new_tokens=9, seed=2, temperature=1.0, min_new_tokens=3,
                                               **extra).text


def test_max_tokens_0_with_echo_scores_the_prompt(client, model):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    choice, prompt_ids = r.choices[0], ids(model, PROMPT)
    assert choice.text == PROMPT and choice.finish_reason == "length" and r.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp.tokens == [model.tokenizer.token_text(t) for t in prompt_ids] and "".join(lp.tokens) == PROMPT
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and lp.text_offset == [0, 5, 6, 8]
    expected = ops.log_softmax(model(prompt_ids))  # [T, V]
    np.testing.assert_allclose(lp.token_logprobs[1:], [expected[i - 1, t] for i, t in enumerate(prompt_ids)][1:],
                               atol=1e-5)
    for i, top in enumerate(lp.top_logprobs[1:], 1):
        best = np.argsort(-expected[i - 1])[:2]
        assert list(top)[:2] == [model.tokenizer.token_text(int(t)) for t in best]


def test_echo_logprobs_come_in_blocks_of_positions_with_the_same_numbers(model, monkeypatch):
    """The prompt's logits are made HEAD_ROWS positions at a time (never all T x V at once): blocks of 3 here."""
    from npgpt import openai_api

    prompt_ids = ids(model, "The quick brown fox jumps over the lazy dog, and then it runs away")
    whole = openai_api.echo_prompt(model, prompt_ids, 2)
    monkeypatch.setattr(openai_api, "HEAD_ROWS", 3)
    blocks = openai_api.echo_prompt(model, prompt_ids, 2)
    expected = ops.log_softmax(model(prompt_ids))  # [T, V]
    assert whole.logprobs[0] is None and blocks.logprobs[0] is None and len(blocks.logprobs) == len(prompt_ids)
    for i, (a, b) in enumerate(zip(whole.logprobs[1:], blocks.logprobs[1:]), 1):
        assert a.id == b.id == prompt_ids[i] and [x.id for x in a.top_logprobs] == [x.id for x in b.top_logprobs]
        assert b.logprob == pytest.approx(float(expected[i - 1, prompt_ids[i]]), abs=1e-5)
        assert a.logprob == pytest.approx(b.logprob, abs=1e-6)


def test_logprobs_are_generates(client, model):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3)
    expected = model.generate(PROMPT, max_new_tokens=8, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text == expected.text
    assert lp.tokens == [e.token for e in expected.logprobs]
    np.testing.assert_allclose(lp.token_logprobs, [e.logprob for e in expected.logprobs], atol=1e-5)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for top, e in zip(lp.top_logprobs, expected.logprobs):
        assert list(top)[:3] == [a.token for a in e.top_logprobs]  # the 3 most likely, then the chosen one
        assert len(top) in (3, 4) and top[e.token] == pytest.approx(e.logprob, abs=1e-5)
        np.testing.assert_allclose(list(top.values())[:3], [a.logprob for a in e.top_logprobs], atol=1e-5)


def test_echo_comes_first(client, model):
    r = client.completions.create(model="tiny", prompt=[PROMPT, "Hi"], max_tokens=5, temperature=0, echo=True,
                                  logprobs=1)
    for choice, prompt in zip(r.choices, [PROMPT, "Hi"]):
        generated = model.generate(prompt, max_new_tokens=5).text
        assert choice.text == prompt + generated and "".join(choice.logprobs.tokens) == choice.text
        assert choice.logprobs.token_logprobs[0] is None and None not in choice.logprobs.token_logprobs[1:]
        assert choice.logprobs.text_offset[len(ids(model, prompt))] == len(prompt)
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3, temperature=0, echo=True)
    assert plain.choices[0].text.startswith(PROMPT) and plain.choices[0].logprobs is None


# ------------------------------------------------------------------------------------------------- streaming


def test_stream_joins_to_the_whole_answer(client):
    body = dict(model="tiny", prompt=["Hello", "A cat"], n=2, max_tokens=10, temperature=0.9, seed=3)
    whole = client.completions.create(**body)
    chunks = list(client.completions.create(stream=True, **body))
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks if c.choices[0].index == choice.index]
        assert "".join(c.text for c in mine) == choice.text
        assert [c.finish_reason for c in mine] == [None] * (len(mine) - 1) + [choice.finish_reason]
    assert all(len(c.choices) == 1 and c.object == "text_completion" and c.id == chunks[0].id for c in chunks)


def test_stream_with_logprobs_echo_and_usage(client, model):
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, echo=True,
                                            logprobs=2, stream=True, stream_options={"include_usage": True}))
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, echo=True,
                                      logprobs=2)
    *pieces, last = chunks
    assert pieces[0].choices[0].text == PROMPT and pieces[0].choices[0].logprobs.token_logprobs[0] is None
    assert last.choices == [] and last.usage.completion_tokens == 6 and last.usage.prompt_tokens == 4
    lp = whole.choices[0].logprobs
    assert [t for c in pieces for t in c.choices[0].logprobs.tokens] == lp.tokens
    assert [o for c in pieces for o in c.choices[0].logprobs.text_offset] == lp.text_offset
    np.testing.assert_allclose([x for c in pieces for x in c.choices[0].logprobs.token_logprobs[1 if c is
                                                                                               pieces[0] else 0:]],
                               lp.token_logprobs[1:], atol=1e-5)


def test_stream_on_the_wire(server):
    """Server-sent events: `data: {json}` chunks, then `data: [DONE]`; also when nothing is generated."""
    for max_tokens in (3, 0):
        status, headers, text = complete(server, {"prompt": PROMPT, "max_tokens": max_tokens, "stream": True,
                                                  "temperature": 0})
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        events = [e for e in text.split("\n\n") if e]
        assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
        finals = [json.loads(e[6:])["choices"][0]["finish_reason"] for e in events[:-1]]
        assert finals[-1] == "length" and finals[:-1] == [None] * (len(finals) - 1)


# ------------------------------------------------------------------------------------------------------ routes


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "npgpt"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    assert request(server, "GET", "/health")[:3:2] == (200, {"status": "ok"})


def test_chat_completions_say_gpt2_has_no_chat_format(client):
    with pytest.raises(openai.NotFoundError, match="no chat format.*/v1/completions"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])


def error_of(response, status):
    got, _, body = response
    assert got == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


BAD_FIELDS = [  # (body, the field named, a part of the message)
    ({"prompt": PROMPT, "temprature": 0.5}, "temprature", "did you mean temperature"),
    ({"prompt": PROMPT, "best_of": 2}, "best_of", "not supported"),
    ({"prompt": PROMPT, "suffix": "end"}, "suffix", "not supported"),
    ({"prompt": PROMPT, "max_tokens": "10"}, "max_tokens", "integer"),
    ({"prompt": PROMPT, "max_tokens": -1}, "max_tokens", ">= 0"),
    ({"prompt": PROMPT, "max_tokens": 2.5}, "max_tokens", "integer"),
    ({"prompt": PROMPT, "n": 0}, "n", ">= 1"),
    ({"prompt": PROMPT, "temperature": 2.5}, "temperature", "<= 2"),
    ({"prompt": PROMPT, "top_p": 0}, "top_p", "> 0"),
    ({"prompt": PROMPT, "logprobs": 21}, "logprobs", "<= 20"),
    ({"prompt": PROMPT, "logprobs": True}, "logprobs", "integer"),
    ({"prompt": PROMPT, "stream": "yes"}, "stream", "true or false"),
    ({"prompt": PROMPT, "stream_options": {"include_usage": True}}, "stream_options", "stream: true"),
    ({"prompt": PROMPT, "echo": 1}, "echo", "true or false"),
    ({"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"prompt": PROMPT, "stop": [""]}, "stop", "non-empty"),
    ({"prompt": PROMPT, "stop": "x" * 1001}, "stop", "at most 1000 characters"),
    ({"prompt": ["x"] * 11, "n": 100}, "n", "at most 1024"),
    ({"prompt": PROMPT, "presence_penalty": 3}, "presence_penalty", "<= 2"),
    ({"prompt": PROMPT, "logit_bias": {"gonna": 5}}, "logit_bias", "token ids"),
    ({"prompt": PROMPT, "logit_bias": {"13": 101}}, "logit_bias", "[-100, 100]"),
    ({"prompt": PROMPT, "logit_bias": {"99999": 1}}, "logit_bias", "outside the vocabulary"),
    ({"prompt": PROMPT, "seed": -1}, "seed", ">= 0"),
    ({"prompt": PROMPT, "top_k": "5"}, "top_k", "integer"),
    ({"prompt": PROMPT, "min_tokens": -2}, "min_tokens", ">= 0"),
    ({"max_tokens": 5}, "prompt", "prompt is required"),
    ({"prompt": 5}, "prompt", "a string, a list of strings"),
    ({"prompt": []}, "prompt", "empty list"),
    ({"prompt": [1, "a"]}, "prompt", "mixing"),
    ({"prompt": [[1, 2], [3, True]]}, "prompt", "integers"),
    ({"prompt": [50257]}, "prompt", "outside the vocabulary"),
    ({"prompt": LONG}, "prompt", "context is 64 tokens"),
    ({"prompt": ["short", LONG]}, "prompt", "prompt[1] is 85 tokens"),
]


@pytest.mark.parametrize("body, param, message", BAD_FIELDS, ids=[b[1] + "-" + b[2] for b in BAD_FIELDS])
def test_a_bad_field_is_a_400_naming_it(server, body, param, message):
    error = error_of(complete(server, {"model": "tiny", **body}), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error" and message in error["message"]


def test_bad_bodies_and_routes(server):
    assert "not valid JSON" in error_of(complete(server, raw=b'{"prompt": "x",'), 400)["message"]
    assert "NaN is not a JSON number" in error_of(complete(server, raw=b'{"prompt": "x", "top_p": NaN}'),
                                                   400)["message"]
    assert "not UTF-8" in error_of(complete(server, raw=b'{"prompt": "\xff"}'), 400)["message"]
    assert "JSON object" in error_of(complete(server, ["a list"]), 400)["message"]
    unknown = error_of(complete(server, {"model": "gpt-4", "prompt": "x"}), 404)
    assert unknown["param"] == "model" and "'tiny'" in unknown["message"]
    assert "no route" in error_of(request(server, "POST", "/v1/embeddings", {}), 404)["message"]
    status, headers, body = request(server, "GET", "/v1/completions")
    assert error_of((status, headers, body), 405) and headers["Allow"] == "POST"
    assert error_of(request(server, "POST", "/v1/models", {}), 405)
    assert error_of(request(server, "BREW", "/v1/completions"), 501)


def test_a_request_without_model_gets_the_served_one(server, model):
    _, _, body = complete(server, {"prompt": PROMPT, "max_tokens": 3, "temperature": 0})
    assert body["model"] == "tiny" and body["choices"][0]["text"] == model.generate(PROMPT, max_new_tokens=3).text


def test_body_limit_and_length(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Length", str(MAX_BODY + 1))  # the body is never sent: refused before it is read
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and response.getheader("Connection") == "close"
    assert json.loads(response.read())["error"]["code"] == "request_too_large"
    conn.close()
    status, _, body = complete(server, raw=b"x" * (MAX_BODY + 1))
    assert status == 413
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()


def test_the_server_still_serves_and_logs_a_line_per_request(server, client, log, model):
    for body in ({"prompt": 5}, {"prompt": PROMPT, "n": 0}):
        complete(server, body)
    request(server, "GET", "/nowhere")
    r = client.completions.create(model="tiny", prompt="One two three", max_tokens=5, temperature=0)
    assert r.choices[0].text == model.generate("One two three", max_new_tokens=5).text
    done = r"npgpt serve: 127\.0\.0\.1 POST /v1/completions 200 3\+5 tokens \d+ ms"
    wait_for(lambda: any(re.fullmatch(done, line) for line in log.lines()))  # written once the answer is sent
    lines = log.lines()
    assert any(re.fullmatch(r"npgpt serve: 127\.0\.0\.1 POST /v1/completions 400 \d+ ms \(prompt must be "
                            r"a string.*\)", line) for line in lines)
    assert any(re.fullmatch(r"npgpt serve: 127\.0\.0\.1 GET /nowhere 404 \d+ ms \(no route .*\)", line)
               for line in lines)
    assert "Traceback" not in log.getvalue()


def test_keep_alive_connections_take_several_requests(server, model):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    for body in ({"prompt": 5}, {"prompt": PROMPT, "max_tokens": 2, "temperature": 0}, {"prompt": "x", "n": 0}):
        conn.request("POST", "/v1/completions", body=json.dumps(body))
        response = conn.getresponse()
        response.read()
    assert response.status == 400
    conn.close()


def test_a_connection_reset_between_requests_is_no_error(model):
    log = Log()
    with Server(model, port=0, model_name="tiny", log=log) as server:
        sock = socket.create_connection((server.host, server.port))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # with SO_LINGER 0: a reset, not an orderly close
        wait_for(lambda: not server.httpd.connections)
    assert "Traceback" not in log.getvalue() and len(log.lines()) == 1


# ----------------------------------------------------------------------------------- auth, busy, failures


def test_an_api_key_is_required_when_set(model):
    with Server(model, port=0, model_name="tiny", api_key="sekrit", log=Log()) as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"}):
            status, got, body = complete(server, {"prompt": "x", "max_tokens": 1}, headers=headers)
            assert error_of((status, got, body), 401)["code"] == "invalid_api_key"
            assert got["WWW-Authenticate"] == "Bearer"
        assert request(server, "GET", "/health")[0] == 200  # for load balancers: no key needed
        with openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError):
                wrong.models.list()
        with openai.OpenAI(base_url=server.url + "/v1", api_key="sekrit", max_retries=0) as right:
            assert right.completions.create(model="tiny", prompt="x", max_tokens=2).usage.completion_tokens == 2


def test_a_full_queue_is_a_429_then_the_server_serves(model):
    scheduler = Scheduler(model, max_waiting=1)  # not started: a job submitted waits
    filler = scheduler.submit([[1, 2, 3]], {"max_new_tokens": 1})
    try:
        with Server(model, port=0, model_name="tiny", scheduler=scheduler, log=Log()) as server:
            status, headers, body = complete(server, {"prompt": "x", "max_tokens": 1})
            assert error_of((status, headers, body), 429)["type"] == "server_busy" and headers["Retry-After"] == "1"
            filler.cancel()
            scheduler.start()
            status, _, body = complete(server, {"prompt": "x", "max_tokens": 2, "temperature": 0})
            assert status == 200 and body["usage"]["completion_tokens"] == 2
    finally:
        scheduler.close()


class Broken:
    """A scheduler with a bug: the server answers 500 in OpenAI's shape and logs the traceback."""

    def submit(self, prompts, settings):
        raise RuntimeError("a bug")


def test_an_internal_error_is_a_500_without_traceback(model):
    log = Log()
    with Server(model, port=0, model_name="tiny", scheduler=Broken(), log=log) as server:
        error = error_of(complete(server, {"prompt": "x"}), 500)
        assert error["type"] == "server_error" and "a bug" not in error["message"]
        assert request(server, "GET", "/health")[0] == 200
    assert "Traceback" in log.getvalue() and "RuntimeError: a bug" in log.getvalue()


class Failing:
    """A scheduler whose jobs fail while they run (as one whose rules leave nothing to choose from, or one that
    shuts down)."""

    def __init__(self, error):
        self.error = error

    def submit(self, prompts, settings):
        error = self.error

        class Job:
            rows, done = [], True

            def steps(self):
                raise error
                yield

            def wait(self):
                raise error

            def cancel(self):
                pass

        return Job()


@pytest.mark.parametrize("error, status", [(DistributionError("the decoding rule TopP(p=0.1) removes every token"),
                                            400), (BusyError("the server is shutting down"), 503)])
def test_a_job_that_fails_while_it_runs(model, error, status):
    with Server(model, port=0, model_name="tiny", scheduler=Failing(error), log=Log()) as server:
        assert str(error) in error_of(complete(server, {"prompt": "x"}), status)["message"]
        got, _, text = complete(server, {"prompt": "x", "stream": True})
        assert got == 200 and text.startswith("data: {") and "[DONE]" not in text  # the stream ends on the error
        assert str(error) in json.loads(text.strip()[len("data: "):])["error"]["message"]


class Recording(Scheduler):
    """The real scheduler, keeping the jobs it was given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.jobs = []

    def submit(self, prompts, settings):
        job = super().submit(prompts, settings)
        self.jobs.append(job)
        return job


@pytest.fixture
def slow_server(model):
    """A server whose every decoding step takes 20 ms (a forward hook), to leave it mid-answer."""
    slow = npgpt.load(golden_dir("tiny"))
    scheduler = Recording(slow).start()
    with slow.hooks(fwd_hooks=[("hook_embed", lambda x, hook: time.sleep(0.02))]):
        with Server(slow, port=0, model_name="tiny", scheduler=scheduler, log=Log()) as server:
            yield server, scheduler
    scheduler.close()


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_cancels_its_job(slow_server, stream):
    server, scheduler = slow_server
    body = json.dumps({"prompt": PROMPT, "max_tokens": 50, "stream": stream, "temperature": 0}).encode()
    sock = socket.create_connection((server.host, server.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    if stream:
        received = b""
        while b"data: " not in received:  # the first chunk came
            received += sock.recv(65536)
    else:
        wait_for(lambda: scheduler.jobs and scheduler.jobs[-1].rows[0].ids)
    sock.close()
    job = scheduler.jobs[-1]
    job.wait(timeout=10)
    assert job.rows[0].finish_reason == CANCELLED and len(job.rows[0].ids) < 50
    wait_for(lambda: server.jobs == 0 and "client went away" in server._log.getvalue())
    status, _, answer = complete(server, {"prompt": PROMPT, "max_tokens": 2, "temperature": 0})
    assert status == 200 and answer["usage"]["completion_tokens"] == 2


def test_close_ends_idle_connections_and_joins_threads(model):
    before = set(threading.enumerate())
    server = Server(model, port=0, model_name="tiny", log=Log()).start()
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as c:
        c.completions.create(model="tiny", prompt="x", max_tokens=1)  # its connection stays open (keep-alive)
        started = time.monotonic()
        server.close()
    assert time.monotonic() - started < 5
    assert set(threading.enumerate()) <= before  # the scheduler's, the listener's and the connections' threads


# ----------------------------------------------------------------------------------------------- the command


def test_a_port_that_cannot_be_used_is_one_clear_error(model):
    for port in (-1, 70000, "8000", True):
        with pytest.raises(SettingsError, match="port must be an integer from 0 to 65535"):
            Server(model, port=port, log=Log())
    with Server(model, port=0, log=Log()) as taken:
        with pytest.raises(NpgptError, match=f"cannot listen on 127.0.0.1:{taken.port}"):
            Server(model, port=taken.port, log=Log())


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.com"))


def test_npgpt_serve_answers_and_stops_on_sigterm():
    process = subprocess.Popen([sys.executable, "-m", "npgpt", "serve", "--model", golden_dir("tiny"), "--port", "0",
                                "--served-model-name", "tiny", "--api-key", "k"], cwd=ROOT, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "NPGPT_PROGRESS": "0"})
    kernels = cores.kernels_for_batches()  # the same CPU and environment as the server's: it starts again if set
    try:
        banner = process.stderr.readline()
        url = re.search(r"on (http://127\.0\.0\.1:\d+) ", banner).group(1)
        with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as c:
            assert c.completions.create(model="tiny", prompt="x", max_tokens=2).usage.completion_tokens == 2
        environ = b""
        if kernels and os.path.exists(f"/proc/{process.pid}/environ"):  # the server's, after it started again
            with open(f"/proc/{process.pid}/environ", "rb") as f:
                environ = f.read()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        rest = process.stderr.read()  # not communicate(timeout=...): it reads the pipe itself, past readline's buffer
    finally:
        process.kill()
    assert process.returncode == 0, rest
    assert "API key required" in banner and "POST /v1/completions 200 1+2 tokens" in rest
    assert rest.rstrip().endswith("npgpt serve: stopped") and "Traceback" not in rest
    note = f"\nnpgpt serve: OpenBLAS chose its {cores.blas_kernels()} kernels, slow at a few rows a step: started " \
        f"again with OPENBLAS_CORETYPE={kernels} and now runs its {kernels} ones ("
    assert (note in "\n" + rest) == bool(kernels), rest  # the address first, then the note
    if kernels:  # the same process, started again with other kernels
        assert not environ or f"OPENBLAS_CORETYPE={kernels}".encode() in environ.split(b"\0")


# --------------------------------------------------------------------------------------------- shutting down


def send_completion(address: tuple, body: dict) -> socket.socket:
    """A socket that has sent POST /v1/completions with `body` to (host, port); 10 s timeouts on every call."""
    sock = socket.create_connection(address, timeout=10)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def read_to_end(sock: socket.socket, received: bytes = b"") -> bytes:
    """All the server sends until it closes the connection."""
    with sock:
        while data := sock.recv(65536):
            received += data
    return received


def parse_response(wire: bytes):
    """(status, body text) of one HTTP response as it came over the wire; http.client checks its framing (a
    chunked body must end with its last chunk: IncompleteRead otherwise)."""

    class Wire:
        def makefile(self, *args, **kwargs):
            return io.BytesIO(wire)

    response = http.client.HTTPResponse(Wire())
    response.begin()
    return response.status, response.read().decode()


@pytest.fixture
def slow_model():
    """tiny, with every decoding step taking 20 ms (a forward hook): a 50-token request lasts a second."""
    slow = npgpt.load(golden_dir("tiny"))
    with slow.hooks(fwd_hooks=[("hook_embed", lambda x, hook: time.sleep(0.02))]):
        yield slow


SHUTTING_DOWN = "the server is shutting down; try again shortly"


@pytest.mark.parametrize("stream", [False, True])
def test_close_answers_the_requests_in_flight(slow_model, stream):
    log = Log()
    server = Server(slow_model, port=0, model_name="tiny", log=log).start()  # its own scheduler, closed with it
    try:
        body = {"prompt": PROMPT, "max_tokens": 50, "stream": stream, "temperature": 0}
        sock = send_completion((server.host, server.port), body)
        received = b""
        if stream:
            while b"data: " not in received:  # the first chunk came
                received += sock.recv(65536) or pytest.fail("the connection closed before the first chunk")
        else:
            wait_for(lambda: server.scheduler.rows)  # the job is decoding
    finally:
        started = time.monotonic()
        server.close()
    assert time.monotonic() - started < 3
    status, text = parse_response(read_to_end(sock, received))
    line = [line for line in log.lines() if "POST /v1/completions" in line][-1]
    if stream:  # the stream ends on an error event, as when a job fails mid-stream (no [DONE])
        events = [event[len("data: "):] for event in text.split("\n\n") if event]
        assert status == 200 and len(events) >= 2 and "[DONE]" not in events
        assert json.loads(events[-1]) == {"error": {"message": SHUTTING_DOWN, "type": "server_busy", "param": None,
                                                    "code": "server_busy"}}
        assert re.search(rf" 200 \d+ ms \({re.escape(SHUTTING_DOWN)}\)$", line), line
    else:
        assert status == 503 and json.loads(text)["error"]["message"] == SHUTTING_DOWN
        assert json.loads(text)["error"]["type"] == "server_busy"
        assert re.search(rf" 503 \d+ ms \({re.escape(SHUTTING_DOWN)}\)$", line), line


def test_close_does_not_wait_long_for_a_client_that_stopped_reading(model, monkeypatch):
    """A stream bigger than the connection's buffers, to a client that reads nothing: its thread's write blocks,
    and close() cuts the connection after SHUTDOWN_WAIT instead of waiting for it."""
    setup = Handler.setup

    def small_buffer(handler):  # a few KB, where loopback's would take the whole stream
        handler.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        setup(handler)

    monkeypatch.setattr(Handler, "setup", small_buffer)
    log, scheduler = Log(), Recording(model).start()  # the caller's scheduler: the server fails its jobs itself
    server = Server(model, port=0, model_name="tiny", scheduler=scheduler, log=log).start()
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((server.host, server.port))
        data = json.dumps({"prompt": PROMPT, "max_tokens": 60, "n": 4, "logprobs": 5, "stream": True}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(data) + data)  # about 100 KB of chunks, none read
        wait_for(lambda: scheduler.jobs and scheduler.jobs[0].done)  # all decoded: its thread is stuck writing
    finally:
        started = time.monotonic()
        server.close()
        scheduler.close()
    assert SHUTDOWN_WAIT <= time.monotonic() - started < SHUTDOWN_WAIT + 3
    line = [line for line in log.lines() if "POST /v1/completions" in line][-1]
    assert " 200 " in line and "cut off by the server's shutdown" in line, line
    assert "1 request(s) had not sent their answer after 2 s" in log.getvalue()
    sock.close()


def test_npgpt_serve_answers_the_requests_in_flight_on_sigint(tmp_path):
    """Ctrl-C with two long requests under way: the one waiting for its whole answer gets its 503, the stream an
    error event and its end, and the log says so; the server exits 0."""
    config = npgpt.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=1024)  # 1,000 tokens: many seconds
    npgpt.GPT2.random(config, seed=0).save(tmp_path / "model")
    process = subprocess.Popen([sys.executable, "-m", "npgpt", "serve", "--model", str(tmp_path / "model"), "--port",
                                "0", "--served-model-name", "m"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "NPGPT_PROGRESS": "0"})
    try:
        port = re.search(r"on http://127\.0\.0\.1:(\d+) ", process.stderr.readline()).group(1)
        address = ("127.0.0.1", int(port))
        whole = send_completion(address, {"prompt": "x", "max_tokens": 1000, "n": 4})
        stream = send_completion(address, {"prompt": "x", "max_tokens": 1000, "n": 4, "stream": True})
        received = b""
        while b"data: " not in received:  # the stream's first chunk: both requests are under way
            received += stream.recv(65536) or pytest.fail("the connection closed before the first chunk")
        process.send_signal(signal.SIGINT)
        whole_status, whole_text = parse_response(read_to_end(whole))
        stream_status, stream_text = parse_response(read_to_end(stream, received))
        process.wait(timeout=20)
        rest = process.stderr.read()
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    assert process.returncode == 0 and "Traceback" not in rest, rest
    assert whole_status == 503 and json.loads(whole_text)["error"]["message"] == SHUTTING_DOWN
    events = [event[len("data: "):] for event in stream_text.split("\n\n") if event]
    assert stream_status == 200 and json.loads(events[-1])["error"]["message"] == SHUTTING_DOWN
    assert re.search(rf"POST /v1/completions 503 \d+ ms \({re.escape(SHUTTING_DOWN)}\)\n", rest), rest
    assert re.search(rf"POST /v1/completions 200 \d+ ms \({re.escape(SHUTTING_DOWN)}\)\n", rest), rest
    assert rest.rstrip().endswith("npgpt serve: stopped")
