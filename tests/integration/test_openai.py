"""The official `openai` client against a real `tokd serve` (SmolLM2-135M-Instruct).

Run by tests/integration/run.sh: python3 -m unittest -v test_openai
"""
import unittest

import openai

from tokd_server import Server

KEY = "sk-tokd-test"
srv = None
client = None
MODEL = None


def setUpModule():
    global srv, client, MODEL
    srv = Server("--max-n", 4, api_key=KEY)
    client = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % srv.port, api_key=KEY, max_retries=0, timeout=120)
    MODEL = client.models.list().data[0].id


def tearDownModule():
    assert srv.stop() == 0


CHAT = [{"role": "user", "content": "What is the capital of France?"}]


class TestOpenAI(unittest.TestCase):
    def test_models(self):
        ids = [m.id for m in client.models.list().data]
        self.assertEqual(ids, [MODEL])

    def test_chat(self):
        r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=32, temperature=0)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertIn("Paris", r.choices[0].message.content)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        u = r.usage
        self.assertGreater(u.prompt_tokens, 10)
        self.assertGreater(u.completion_tokens, 0)
        self.assertEqual(u.total_tokens, u.prompt_tokens + u.completion_tokens)

    def test_chat_stream_matches_non_stream(self):
        full = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=32, temperature=0)
        chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=32, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, full.choices[0].message.content)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, [full.choices[0].finish_reason])
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, full.usage.completion_tokens)
        self.assertEqual(chunks[-1].usage.prompt_tokens, full.usage.prompt_tokens)

    def test_completions(self):
        r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
        self.assertEqual(r.object, "text_completion")
        self.assertIn("Paris", r.choices[0].text)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 8)

    def test_completions_stream(self):
        full = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=0)
        chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=24,
                                                temperature=0, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        self.assertEqual(text, full.choices[0].text)
        self.assertEqual(chunks[-1].usage.completion_tokens, full.usage.completion_tokens)
        # without include_usage there is no usage chunk
        plain = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, stream=True))
        self.assertTrue(all(c.usage is None for c in plain))

    def test_n2(self):
        r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16, temperature=0.8, seed=5, n=2)
        self.assertEqual(sorted(c.index for c in r.choices), [0, 1])
        self.assertTrue(all(c.message.content for c in r.choices))
        chunks = list(client.completions.create(model=MODEL, prompt="Hello", max_tokens=8, n=2, stream=True,
                                                temperature=0.8, seed=3, stream_options={"include_usage": True}))
        self.assertEqual({c.choices[0].index for c in chunks if c.choices}, {0, 1})
        self.assertEqual(chunks[-1].usage.completion_tokens, 16)

    def test_stop(self):
        r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=32, temperature=0,
                                      stop=".")
        self.assertEqual(r.choices[0].text, " Paris")
        self.assertEqual(r.choices[0].finish_reason, "stop")
        r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=32, temperature=0,
                                      stop=["xyz", " Par"])
        self.assertEqual(r.choices[0].text, "")

    def test_seed_reproducible(self):
        args = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=24,
                    temperature=0.8, seed=1234)
        a = client.chat.completions.create(**args).choices[0].message.content
        b = client.chat.completions.create(**args).choices[0].message.content
        self.assertEqual(a, b)

    def test_logprobs(self):
        r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0,
                                      logprobs=3)
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 4)
        self.assertEqual(len(lp.token_logprobs), 4)
        self.assertTrue(all(v <= 0 for v in lp.token_logprobs))
        self.assertTrue(all(1 <= len(t) <= 3 for t in lp.top_logprobs))
        r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=0, logprobs=True,
                                           top_logprobs=2)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), 4)
        self.assertTrue(all(len(c.top_logprobs) == 2 for c in content))
        # greedy: the chosen token is the most likely one
        self.assertTrue(all(abs(c.logprob - c.top_logprobs[0].logprob) < 1e-4 for c in content))

    def test_bad_parameter(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            client.chat.completions.create(model=MODEL, messages=CHAT, temperature=-1)
        self.assertEqual(cm.exception.body.get("param"), "temperature")
        with self.assertRaises(openai.BadRequestError):
            client.completions.create(model=MODEL, prompt="x", n=100)

    def test_unknown_model(self):
        with self.assertRaises(openai.NotFoundError):
            client.completions.create(model="gpt-9", prompt="x", max_tokens=1)

    def test_wrong_key(self):
        bad = openai.OpenAI(base_url=client.base_url, api_key="sk-wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError):
            bad.models.list()
        with self.assertRaises(openai.AuthenticationError):
            bad.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)


if __name__ == "__main__":
    unittest.main()
