"""HTTP-level behaviour of a real `tokd serve`, with the standard library only: every bad input
gets the right status and a well-formed error while the server keeps serving, limits, many
connections, concurrency equal to solo runs, disconnects, chunked prefill, preemption, the prefix
cache and a graceful SIGTERM drain.

Run by tests/integration/run.sh: python3 -m unittest -v test_http
"""
import json
import resource
import signal
import socket
import statistics
import threading
import time
import unittest

from tokd_server import Server, stream_events

KEY = "sk-http-test"
srv = None


def setUpModule():
    global srv
    srv = Server("--max-connections", 4096, "--max-body-bytes", 65536, "--ctx-size", 2048,
                 "--max-batched-tokens", 256, "--max-n", 4, api_key=KEY)


def tearDownModule():
    assert srv.stop() == 0


def completion(server, prompt, max_tokens=16, **kw):
    body = dict(prompt=prompt, max_tokens=max_tokens, temperature=0, **kw)
    status, r, _ = server.request("POST", "/v1/completions", body)
    assert status == 200, r
    return r


def open_stream(server, body, path="/v1/completions"):
    c = server.conn(300)
    c.request("POST", path, body=json.dumps(dict(body, stream=True)), headers=server.headers())
    r = c.getresponse()
    assert r.status == 200, r.read()
    return c, r


def stream_text(server, body, times=None):
    c, r = open_stream(server, body)
    text, done = "", False
    for t, ev in stream_events(r):
        if ev == "[DONE]":
            done = True
            break
        assert "error" not in ev, ev
        for ch in ev["choices"]:
            text += ch.get("text", "")
            if times is not None and ch.get("text"):
                times.append(t)
    c.close()
    assert done
    return text


PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "The best way to learn is",
           "In 1492,", "My favourite food is", "Water boils at", "The quick brown fox"]


class TestErrors(unittest.TestCase):
    def check(self, status, body, param=None, path="/v1/completions", method="POST", headers=None, code=None):
        st, r, _ = srv.request(method, path, body, headers)
        self.assertEqual(st, status, r)
        self.assertIsInstance(r, dict, r)
        err = r["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"})
        self.assertTrue(err["message"])
        if param is not None:
            self.assertEqual(err["param"], param, err)
        if code is not None:
            self.assertEqual(err["code"], code)
        return err

    def tearDown(self):
        self.assertEqual(srv.request("GET", "/health")[0], 200)  # still alive

    def test_bad_json(self):
        self.check(400, "{not json")
        self.check(400, "[" * 10000 + "]" * 10000)
        self.check(400, '{"prompt":' + '{"a":' * 10000 + "1" + "}" * 10001)
        self.check(400, "[1, 2]")

    def test_wrong_types(self):
        self.check(400, {"prompt": 5}, "prompt")
        self.check(400, {"prompt": "x", "max_tokens": "10"}, "max_tokens")
        self.check(400, {"prompt": "x", "max_tokens": 1.5}, "max_tokens")
        self.check(400, {"prompt": "x", "temperature": "hot"}, "temperature")
        self.check(400, {"prompt": "x", "stream": "yes"}, "stream")
        self.check(400, {"prompt": "x", "stop": [1]}, "stop")
        self.check(400, {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop")
        self.check(400, {"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias")
        self.check(400, {"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias")
        self.check(400, {"prompt": "x", "logprobs": 6}, "logprobs")
        self.check(400, {"prompt": ["a", "b"]}, "prompt")
        self.check(400, {"prompt": [1, 99999999]}, "prompt")
        self.check(400, {"messages": "hi"}, "messages", path="/v1/chat/completions")
        self.check(400, {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 30}, "top_logprobs",
                   path="/v1/chat/completions")

    def test_body_too_large(self):
        self.check(413, {"prompt": "x" * 70000})

    def test_messages(self):
        self.check(400, {"messages": []}, "messages", path="/v1/chat/completions")
        self.check(400, {"messages": [{"role": "wizard", "content": "x"}]}, "messages", path="/v1/chat/completions")
        self.check(400, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages",
                   path="/v1/chat/completions")

    def test_context_limits(self):
        self.check(400, {"prompt": [42] * 2100, "max_tokens": 1}, "prompt")
        self.check(400, {"prompt": "hello", "max_tokens": 5000}, "max_tokens")
        self.check(400, {"prompt": "hello", "max_tokens": 0}, "max_tokens")
        self.check(400, {"prompt": "hello", "n": 5}, "n")

    def test_temperature(self):
        self.check(400, {"prompt": "x", "temperature": -0.5}, "temperature")
        self.check(400, '{"prompt": "x", "temperature": NaN}')
        self.check(400, '{"prompt": "x", "temperature": 1e999}', "temperature")

    def test_invalid_utf8(self):
        self.check(400, b'{"prompt": "abc \xff\xfe def"}', "prompt")
        self.check(400, b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}', "messages",
                   path="/v1/chat/completions")

    def test_not_found_and_method(self):
        self.check(404, {"prompt": "x", "model": "no-such-model"}, "model", code="model_not_found")
        self.check(404, None, path="/v2/nothing", method="GET")
        err = self.check(405, None, path="/v1/completions", method="GET")
        self.assertIn("POST", err["message"])
        self.check(405, {"x": 1}, path="/v1/models", method="POST")

    def test_api_key(self):
        self.check(401, {"prompt": "x"}, headers={"Authorization": ""}, code="invalid_api_key")
        self.check(401, {"prompt": "x"}, headers={"Authorization": "Bearer nope"}, code="invalid_api_key")
        self.check(401, None, path="/v1/models", method="GET", headers={"Authorization": "Basic abc"})
        st, _, _ = srv.request("GET", "/health", headers={"Authorization": ""})
        self.assertEqual(st, 200)


class TestServing(unittest.TestCase):
    def test_tokenize_roundtrip(self):
        st, r, _ = srv.request("POST", "/tokenize", {"content": "Hello world", "add_special": False})
        self.assertEqual(st, 200)
        st, d, _ = srv.request("POST", "/detokenize", {"tokens": r["tokens"]})
        self.assertEqual(d["content"], "Hello world")

    def test_idle_connections(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, 4500)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        n = min(2000, want - 200)
        socks = []
        try:
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", srv.port))
                socks.append(s)
            t0 = time.monotonic()
            r = completion(srv, "The capital of France is", 4)
            self.assertTrue(r["choices"][0]["text"])
            self.assertLess(time.monotonic() - t0, 30)
        finally:
            for s in socks:
                s.close()
        self.assertEqual(n, 2000)

    def test_concurrent_streams_match_solo(self):
        solo = {p: completion(srv, p, 16, ignore_eos=True)["choices"][0]["text"] for p in PROMPTS}
        before = srv.metrics().get("tokd_steps_multi_seq_total", 0)
        results, errors = {}, []

        def run(i):
            try:
                p = PROMPTS[i % len(PROMPTS)]
                results[i] = (p, stream_text(srv, dict(prompt=p, max_tokens=16, temperature=0, ignore_eos=True)))
            except Exception as e:  # noqa: BLE001 — reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 64)
        for i, (p, text) in results.items():
            self.assertEqual(text, solo[p], "stream %d (%r) differs from its solo run" % (i, p))
        self.assertGreater(srv.metrics()["tokd_steps_multi_seq_total"], before)

    def test_disconnect_mid_stream(self):
        c, r = open_stream(srv, dict(prompt="Once upon a time", max_tokens=1500, ignore_eos=True))
        events = stream_events(r)
        for _ in range(3):
            next(events)
        self.assertGreaterEqual(srv.metrics()["tokd_requests_running"], 1)
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end and srv.metrics()["tokd_requests_running"] > 0:
            time.sleep(0.05)
        self.assertEqual(srv.metrics()["tokd_requests_running"], 0)
        self.assertGreater(srv.metrics().get('tokd_requests_total{status="499"}', 0), 0)

    def test_prefix_cache(self):
        long = " ".join("word%d" % i for i in range(150))
        m0 = srv.metrics()
        t0 = time.monotonic()
        a = completion(srv, long, 1)
        t1 = time.monotonic()
        b = completion(srv, long, 1)
        t2 = time.monotonic()
        m1 = srv.metrics()
        self.assertGreater(m1["tokd_prefix_cache_hits_total"], m0["tokd_prefix_cache_hits_total"])
        self.assertEqual(a["choices"][0]["text"], b["choices"][0]["text"])
        self.assertGreater(b["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        print("\nprefix cache: first %.3f s, second %.3f s, cached %d of %d tokens" % (
            t1 - t0, t2 - t1, b["usage"]["prompt_tokens_details"]["cached_tokens"], b["usage"]["prompt_tokens"]))
        self.assertLess(t2 - t1, t1 - t0)

    def test_long_prompt_does_not_stall_decodes(self):
        times = [[] for _ in range(8)]
        threads = [threading.Thread(target=stream_text, args=(srv, dict(prompt=PROMPTS[i], max_tokens=120,
                                                                      temperature=0, ignore_eos=True), times[i]))
                   for i in range(8)]
        for t in threads:
            t.start()
        while min(len(t) for t in times) < 10:
            time.sleep(0.01)
        long_prompt = [100 + (i * 7) % 1000 for i in range(1500)]
        t_submit = time.monotonic()
        completion(srv, long_prompt, 1)
        t_done = time.monotonic()
        for t in threads:
            t.join(300)
        gaps_before = [b - a for ts in times for a, b in zip(ts, ts[1:]) if b < t_submit]
        gaps_during = [b - a for ts in times for a, b in zip(ts, ts[1:]) if b > t_submit and a < t_done]
        median = statistics.median(gaps_before)
        worst = max(gaps_during)
        prefill = t_done - t_submit
        n_chunks = -(-1500 // (256 - 8))
        print("\nchunked prefill: median decode step %.4f s, 1500-token prompt %.3f s (%d chunks), worst "
              "decode gap meanwhile %.3f s" % (median, prefill, n_chunks, worst))
        # the prompt is chunked: a decode waits about one chunk step, never the whole prefill
        self.assertLess(worst, 3 * prefill / n_chunks + 5 * median)
        self.assertLess(worst, 0.6 * prefill)


class TestPreemption(unittest.TestCase):
    def test_tiny_kv_pool(self):
        prompts = PROMPTS[:6]
        solo = {p: completion(srv, p, 48, ignore_eos=True)["choices"][0]["text"] for p in prompts}
        small = Server("--kv-blocks", 20, "--ctx-size", 256, "--no-prefix-cache")
        try:
            results, errors = {}, []

            def run(p):
                try:
                    results[p] = stream_text(small, dict(prompt=p, max_tokens=48, temperature=0, ignore_eos=True))
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))

            threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            self.assertEqual(errors, [])
            for p in prompts:
                self.assertEqual(results[p], solo[p], p)
            self.assertGreater(small.metrics()["tokd_preemptions_total"], 0)
        finally:
            self.assertEqual(small.stop(), 0)


class TestDrain(unittest.TestCase):
    def test_sigterm_during_streams(self):
        s = Server("--drain-timeout-s", 60)
        results, errors = [], []

        def run(p):
            try:
                results.append(stream_text(s, dict(prompt=p, max_tokens=40, temperature=0, ignore_eos=True)))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS[:4]]
        for t in threads:
            t.start()
        time.sleep(0.3)
        while s.metrics()["tokd_generation_tokens_total"] < 4:
            time.sleep(0.02)
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", s.port), timeout=2).close()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 4)
        self.assertEqual(s.proc.wait(60), 0)
        s.stop()


if __name__ == "__main__":
    unittest.main()
