#!/usr/bin/env python3
"""Load generator for OpenAI-compatible streaming servers (tokd, vLLM, llama.cpp).

Standard library only: asyncio plus raw HTTP/1.1 over asyncio streams, one
connection per request. Every request streams (stream: true, include_usage);
per request we record TTFT, inter-token latencies, end-to-end latency, output
tokens and errors, then print a table and optionally write JSON.

    python3 deploy/loadtest/loadgen.py --concurrency 8 --num-requests 200
    python3 deploy/loadtest/loadgen.py --rate 4 --duration 60 --chat
    python3 deploy/loadtest/loadgen.py --self-test

See deploy/loadtest/README.md for metric definitions.
"""

import argparse
import asyncio
import itertools
import json
import os
import random
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Short common English words: each is one token (with its leading space) in the
# usual BPE vocabularies (Llama, GPT-2/4, SmolLM, Qwen), so N words ~ N tokens.
WORDS = (
    "the of and to in is it you that he was for on are with as his they be at "
    "one have this from or had by but what some we can out other were all there "
    "when up use your how said an each she which do their time if will way about "
    "many then them write would like so these her long make thing see him two has "
    "look more day could go come did number sound no most people my over know "
    "water than call first who may down side been now find"
).split()


# ----------------------------------------------------------------- HTTP client

def split_base_url(base_url):
    """Return (scheme, host, port, path_prefix) for a base URL; a trailing /v1 is dropped."""
    u = urlsplit(base_url if "://" in base_url else "http://" + base_url)
    if u.scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {u.scheme!r}")
    prefix = u.path.rstrip("/")
    if prefix.endswith("/v1"):
        prefix = prefix[:-3]
    port = u.port or (443 if u.scheme == "https" else 80)
    return u.scheme, u.hostname or "127.0.0.1", port, prefix


async def http_open(base_url, method, path, payload=None, api_key=None):
    """Send one request; return (status, headers, reader, writer) once headers arrive."""
    scheme, host, port, prefix = split_base_url(base_url)
    ctx = ssl.create_default_context() if scheme == "https" else None
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    body = b"" if payload is None else json.dumps(payload).encode()
    head = [f"{method} {prefix}{path} HTTP/1.1", f"Host: {host}:{port}",
            "Connection: close", "Accept: text/event-stream, application/json",
            f"Content-Length: {len(body)}"]
    if payload is not None:
        head.append("Content-Type: application/json")
    if api_key:
        head.append(f"Authorization: Bearer {api_key}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    while True:  # skip any 1xx interim responses
        status_line = await reader.readline()
        if not status_line:
            writer.close()
            raise ConnectionError("connection closed before response")
        parts = status_line.decode("latin-1").split()
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            writer.close()
            raise ConnectionError(f"bad status line {status_line[:80]!r}")
        status, headers = int(parts[1]), {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if status >= 200:
            return status, headers, reader, writer


async def body_chunks(reader, headers):
    """Yield the response body as it arrives (chunked, Content-Length, or until EOF)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise ConnectionError("connection closed inside chunked body")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            data = await reader.readexactly(size)
            await reader.readline()  # CRLF after the chunk
            yield data
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            data = await reader.read(min(left, 65536))
            if not data:
                raise ConnectionError("connection closed before Content-Length bytes")
            left -= len(data)
            yield data
    else:
        while data := await reader.read(65536):
            yield data


async def read_body(reader, headers):
    return b"".join([c async for c in body_chunks(reader, headers)])


async def sse_lines(chunks):
    """Yield (arrival_time, line) for each line of an SSE stream."""
    buf = b""
    async for data in chunks:
        now = time.perf_counter()
        *lines, buf = (buf + data).split(b"\n")
        for line in lines:
            yield now, line.rstrip(b"\r").decode("utf-8", "replace")
    if buf:
        yield time.perf_counter(), buf.decode("utf-8", "replace")


async def fetch_first_model(base_url, api_key):
    status, headers, reader, writer = await http_open(base_url, "GET", "/v1/models", api_key=api_key)
    try:
        body = await read_body(reader, headers)
    finally:
        writer.close()
    if status != 200:
        raise RuntimeError(f"GET /v1/models: HTTP {status}: {body[:200]!r}")
    data = json.loads(body).get("data") or []
    if not data:
        raise RuntimeError("GET /v1/models returned no models; pass --model")
    return data[0]["id"]


# ----------------------------------------------------------------- requests

@dataclass
class Result:
    start: float                      # perf_counter when the request was sent
    ok: bool = False
    error: str = ""
    ttft: float = None                # s, to the first non-empty content delta
    e2e: float = None                 # s, to the end of the stream
    itls: list = field(default_factory=list)  # s, per output token after the first
    output_tokens: int = 0
    prompt_tokens: int = 0            # from usage, else estimated from the prompt's words
    prompt_estimated: bool = False

    @property
    def tpot(self):                   # per-request mean ITL (used for the ITL SLO)
        return sum(self.itls) / len(self.itls) if self.itls else None


def attribute_itls(times, n_tokens):
    """Inter-token latencies from content-chunk arrival times.

    One sample per gap when each chunk is one token. When usage says there were
    more tokens than chunks, the first chunk is taken to be one token and the
    remaining n_tokens-1 are spread as evenly as integers allow over the gaps;
    each gap yields k samples of gap/k. The samples always sum to the span.
    """
    gaps = [b - a for a, b in zip(times, times[1:])]
    extra = n_tokens - 1
    if not gaps or extra <= len(gaps):
        return gaps
    itls = []
    for i, g in enumerate(gaps):
        k = (i + 1) * extra // len(gaps) - i * extra // len(gaps)
        itls += [g / k] * k
    return itls


def chunk_text(obj):
    """Generated text carried by one stream chunk (completions or chat)."""
    out = []
    for ch in obj.get("choices") or []:
        if ch.get("text"):
            out.append(ch["text"])
        delta = ch.get("delta") or {}
        for key in ("content", "reasoning_content"):
            if delta.get(key):
                out.append(delta[key])
    return "".join(out)


def build_payload(args, item):
    payload = {"model": args.model, "stream": True, "stream_options": {"include_usage": True},
               "max_tokens": item.get("max_tokens", args.output_len)}
    if args.chat:
        payload["messages"] = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
    else:
        payload["prompt"] = item["prompt"]
    if args.ignore_eos:
        payload["ignore_eos"] = True
    if args.extra_body:
        payload.update(json.loads(args.extra_body))
    return payload


async def stream_request(args, item, res):
    path = "/v1/chat/completions" if args.chat else "/v1/completions"
    status, headers, reader, writer = await http_open(
        args.base_url, "POST", path, build_payload(args, item), args.api_key)
    try:
        if status != 200:
            body = await read_body(reader, headers)
            res.error = f"HTTP {status}: {body[:160].decode('utf-8', 'replace')}"
            return
        times, usage, event, done, finished = [], None, "", False, False
        async for now, line in sse_lines(body_chunks(reader, headers)):
            if line.startswith("event:"):
                event = line[6:].strip()
                continue
            if not line.startswith("data:"):
                if not line:
                    event = ""
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                obj = json.loads(data)
            except ValueError:
                res.error = f"bad JSON in stream: {data[:80]}"
                return
            if event == "error" or not isinstance(obj, dict) or obj.get("error"):
                err = obj.get("error", obj) if isinstance(obj, dict) else obj
                msg = err.get("message", err) if isinstance(err, dict) else err
                res.error = f"stream error: {str(msg)[:160]}"
                return
            if obj.get("usage"):
                usage = obj["usage"]
            if chunk_text(obj):
                times.append(now)
            finished = finished or any(c.get("finish_reason") for c in obj.get("choices") or [])
        end = time.perf_counter()
        if not (done or finished):  # a clean end with a finish_reason but no [DONE] is accepted
            res.error = "stream ended without [DONE] or finish_reason"
            return
        res.e2e = end - res.start
        res.output_tokens = (usage or {}).get("completion_tokens") or len(times)
        res.prompt_tokens = (usage or {}).get("prompt_tokens")
        if res.prompt_tokens is None:
            res.prompt_tokens, res.prompt_estimated = estimate_prompt_tokens(item), True
        if times:
            res.ttft = times[0] - res.start
            res.itls = attribute_itls(times, res.output_tokens)
        res.ok = True
    finally:
        writer.close()


async def timed_request(args, item):
    """One request; never raises (errors are recorded on the result)."""
    res = Result(start=time.perf_counter())
    try:
        await asyncio.wait_for(stream_request(args, item, res), args.timeout)
    except asyncio.TimeoutError:
        res.error = f"timeout after {args.timeout:g} s"
    except Exception as e:  # connection refused/reset, malformed HTTP, ...
        res.error = f"{type(e).__name__}: {e}"
    if res.error:
        res.ok = False
    return res


# ----------------------------------------------------------------- prompts

def synthetic_prompt(input_len, seed, i):
    rng = random.Random(f"{seed}:{i}")  # str seeds are stable across runs
    return " ".join(rng.choice(WORDS) for _ in range(input_len))


def load_dataset(path, chat):
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if "messages" in obj and not chat:
                raise SystemExit(f"{path}:{n}: 'messages' needs --chat")
            if "messages" not in obj and not isinstance(obj.get("prompt"), str):
                raise SystemExit(f"{path}:{n}: need a string 'prompt' or a 'messages' list")
            items.append(obj)
    if not items:
        raise SystemExit(f"{path}: no requests")
    return items


def make_item_source(args):
    """Return f(i) -> request item dict for the i-th request."""
    if args.dataset:
        items = load_dataset(args.dataset, args.chat)
        return lambda i: items[i % len(items)]
    return lambda i: {"prompt": synthetic_prompt(args.input_len, args.seed, i)}


def estimate_prompt_tokens(item):
    if "messages" in item:
        return sum(len(str(m.get("content", "")).split()) for m in item["messages"])
    return len(item["prompt"].split())


# ----------------------------------------------------------------- load shapes

async def run_load(args, item_at):
    """Run the configured load; return (results, duration_s)."""
    results, t0 = [], time.perf_counter()
    deadline = t0 + args.duration if args.duration else None
    limit = args.num_requests

    def more(i, t):
        return (not limit or i < limit) and (deadline is None or t < deadline)

    if args.rate:  # open loop: Poisson arrivals, independent of completions
        rng, tasks, t_next = random.Random(args.seed), [], t0
        for i in itertools.count():
            if not more(i, t_next):
                break
            await asyncio.sleep(max(0.0, t_next - time.perf_counter()))
            tasks.append(asyncio.create_task(timed_request(args, item_at(i))))
            t_next += rng.expovariate(args.rate)
        results = list(await asyncio.gather(*tasks))
    else:  # closed loop: N workers, each sends its next request when one finishes
        counter = itertools.count()

        async def worker():
            while more(i := next(counter), time.perf_counter()):
                results.append(await timed_request(args, item_at(i)))
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return results, time.perf_counter() - t0


# ----------------------------------------------------------------- report

def percentile(xs, p):
    """Linear-interpolated percentile (numpy's default); None for no data."""
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def stats_ms(xs):
    xs = [x * 1000.0 for x in xs]
    return {"mean": sum(xs) / len(xs) if xs else None, "p50": percentile(xs, 50),
            "p90": percentile(xs, 90), "p99": percentile(xs, 99), "n": len(xs)}


def meets_slo(r, args):
    if args.slo_ttft_ms is not None and (r.ttft is None or r.ttft * 1000 > args.slo_ttft_ms):
        return False
    if args.slo_itl_ms is not None and r.tpot is not None and r.tpot * 1000 > args.slo_itl_ms:
        return False
    return True


def summarize(args, results, duration):
    ok = [r for r in results if r.ok]
    out_tok = sum(r.output_tokens for r in ok)
    estimated = any(r.prompt_estimated for r in ok)
    in_tok = sum(r.prompt_tokens for r in ok)
    errors = {}
    for r in results:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    has_slo = args.slo_ttft_ms is not None or args.slo_itl_ms is not None
    good = sum(meets_slo(r, args) for r in ok) if has_slo else None
    d = max(duration, 1e-9)
    return {
        "requests": len(results), "completed": len(ok), "errors": len(results) - len(ok),
        "duration_s": duration, "request_throughput": len(ok) / d,
        "output_tokens": out_tok, "prompt_tokens": in_tok, "prompt_tokens_estimated": estimated,
        "output_throughput": out_tok / d, "total_token_throughput": (in_tok + out_tok) / d,
        "goodput": good / d if has_slo else None, "slo_met": good,
        "slo": {"ttft_ms": args.slo_ttft_ms, "itl_ms": args.slo_itl_ms, "itl_stat": "per-request mean"},
        "ttft_ms": stats_ms([r.ttft for r in ok if r.ttft is not None]),
        "tpot_ms": stats_ms([r.tpot for r in ok if r.tpot is not None]),
        "itl_ms": stats_ms([x for r in ok for x in r.itls]),
        "e2e_ms": stats_ms([r.e2e for r in ok]),
        "error_kinds": errors,
    }


def format_report(args, s):
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    load = (f"open loop, Poisson {args.rate:g} req/s" if args.rate
            else f"closed loop, concurrency {args.concurrency}")
    scheme, host, port, prefix = split_base_url(args.base_url)
    mode = "chat/completions" if args.chat else "completions"
    lines = [
        f"target      {scheme}://{host}:{port}{prefix}/v1/{mode}  model={args.model}",
        f"load        {load}; output_len={args.output_len}"
        + ("" if args.dataset else f" input_len={args.input_len}")
        + (f" dataset={args.dataset}" if args.dataset else ""),
        f"requests    {s['completed']} ok, {s['errors']} errors in {s['duration_s']:.2f} s",
        f"throughput  {s['request_throughput']:.2f} req/s, {s['output_throughput']:.1f} output tok/s, "
        f"{s['total_token_throughput']:.1f} total tok/s"
        + (" (prompt tokens estimated)" if s["prompt_tokens_estimated"] else ""),
    ]
    if s["goodput"] is not None:
        slo = []
        if args.slo_ttft_ms is not None:
            slo.append(f"TTFT<={args.slo_ttft_ms:g}ms")
        if args.slo_itl_ms is not None:
            slo.append(f"mean ITL<={args.slo_itl_ms:g}ms")
        pct = 100.0 * s["slo_met"] / s["requests"] if s["requests"] else 0.0
        lines.append(f"goodput     {s['goodput']:.2f} req/s ({s['slo_met']}/{s['requests']} = "
                     f"{pct:.1f}% of requests meet {', '.join(slo)})")
    lines.append(f"{'latency (ms)':<22}{'mean':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'n':>8}")
    for key, name in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT (req mean ITL)"),
                      ("itl_ms", "ITL (all tokens)"), ("e2e_ms", "E2E")):
        st = s[key]
        lines.append(f"{name:<22}" + "".join(f"{fmt(st[k]):>9}" for k in ("mean", "p50", "p90", "p99"))
                     + f"{st['n']:>8}")
    for msg, n in sorted(s["error_kinds"].items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"error x{n}: {msg}")
    return "\n".join(lines)


def _ms(x):
    return None if x is None else x * 1000.0


def write_json(args, s, results):
    results = sorted(results, key=lambda r: r.start)
    t0 = results[0].start if results else 0.0
    doc = {"config": {k: v for k, v in vars(args).items() if k not in ("api_key", "self_test")},
           "summary": s,
           "requests": [{"ok": r.ok, "error": r.error or None, "start_s": r.start - t0, "ttft_ms": _ms(r.ttft),
                         "tpot_ms": _ms(r.tpot), "e2e_ms": _ms(r.e2e), "output_tokens": r.output_tokens,
                         "prompt_tokens": r.prompt_tokens} for r in results]}
    text = json.dumps(doc, indent=2)
    if args.json == "-":
        print(text)
    else:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")


async def run(args):
    """Resolve the model, run the load, return (summary, results)."""
    if not args.model:
        try:
            args.model = await fetch_first_model(args.base_url, args.api_key)
        except (OSError, ValueError, KeyError) as e:
            raise RuntimeError(f"GET {args.base_url}/v1/models failed ({e}); is the server up? "
                               "or pass --model") from e
    item_at = make_item_source(args)
    results, duration = await run_load(args, item_at)
    return summarize(args, results, duration), results


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8080", metavar="URL",
                   help="server root (default %(default)s); a trailing /v1 is accepted")
    p.add_argument("--model", help="model name (default: first id from GET /v1/models)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), metavar="KEY",
                   help="sent as 'Authorization: Bearer'; default $OPENAI_API_KEY")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="closed loop: N requests always in flight (default 1)")
    g.add_argument("--rate", type=float, metavar="R", help="open loop: Poisson arrivals, R requests/s")
    p.add_argument("--num-requests", type=int, metavar="N",
                   help="stop after this many requests (default 100 if --duration is not given)")
    p.add_argument("--duration", type=float, metavar="S", help="stop sending new requests after this many seconds")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="per-request timeout (default %(default)g s)")
    p.add_argument("--input-len", type=int, default=128, metavar="N",
                   help="synthetic prompt length in ~tokens (default %(default)s)")
    p.add_argument("--output-len", type=int, default=128, metavar="N",
                   help="max_tokens per request (default %(default)s)")
    p.add_argument("--ignore-eos", action="store_true", help='send "ignore_eos": true')
    p.add_argument("--dataset", metavar="FILE", help='JSONL file, one {"prompt": ...} or {"messages": [...]} per line')
    p.add_argument("--seed", type=int, default=0, help="prompt words and arrival times (default 0)")
    p.add_argument("--extra-body", metavar="JSON", help='JSON merged into each request body, e.g. \'{"temperature": 0}\'')
    p.add_argument("--slo-ttft-ms", type=float, metavar="MS", help="goodput SLO: TTFT limit per request")
    p.add_argument("--slo-itl-ms", type=float, metavar="MS", help="goodput SLO: limit on each request's mean ITL")
    p.add_argument("--json", metavar="FILE", help="write results as JSON to FILE ('-' for stdout)")
    p.add_argument("--self-test", action="store_true", help="check the client against a built-in fake server")
    return p


def check_args(p, args):
    if args.num_requests is None and args.duration is None:
        args.num_requests = 100
    for name in ("concurrency", "rate", "num_requests", "duration", "timeout", "input_len", "output_len"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.extra_body:
        try:
            assert isinstance(json.loads(args.extra_body), dict)
        except (ValueError, AssertionError):
            p.error("--extra-body must be a JSON object")
    return args


# ----------------------------------------------------------------- self-test
# A tiny in-process streaming server with known timings. It checks this
# client's arithmetic, not any real server. Prompt markers pick behaviours.

class FakeServer:
    TTFT, ITL, SLOW_TTFT = 0.080, 0.015, 0.250

    def __init__(self):
        self.bodies = []

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def handle(self, reader, writer):
        try:
            await self.respond(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def respond(self, reader, writer):
        method, path, _ = (await reader.readline()).decode().split(" ", 2)
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        send = lambda status, ctype, data, extra="": writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{extra}".encode()
            + (b"" if data is None else f"Content-Length: {len(data)}\r\n\r\n".encode() + data))
        if method == "GET" and path == "/v1/models":
            return send("200 OK", "application/json", b'{"object":"list","data":[{"id":"fake-model"}]}')
        req = json.loads(body)
        self.bodies.append(req)
        text = req.get("prompt") or " ".join(m["content"] for m in req.get("messages", []))
        if "FAIL500" in text:
            return send("500 Internal Server Error", "application/json", b'{"error":{"message":"boom"}}')
        chat, n = "messages" in req, req["max_tokens"]
        send("200 OK", "text/event-stream", None, "Transfer-Encoding: chunked\r\n\r\n")

        async def event(obj):
            data = f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()

        def tok(k):
            s = " tok" * k
            return {"choices": [{"index": 0, "delta": {"content": s}} if chat else {"index": 0, "text": s}]}
        if chat:  # role-only first delta with empty content: must not count as TTFT
            await event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        if "HANG" in text:  # never answers; returns once the client gives up and closes
            return await reader.read()
        await asyncio.sleep(self.SLOW_TTFT if "SLOW" in text else self.TTFT)
        per_chunk = 2 if "PAIRS" in text else 1
        await event(tok(1))
        sent = 1
        while sent < n:
            k = min(per_chunk, n - sent)
            await asyncio.sleep(self.ITL * k)
            if "FAILMID" in text and sent >= 2:
                return await event({"error": {"message": "engine failure", "type": "server_error"}})
            await event(tok(k))
            sent += k
        if req.get("stream_options", {}).get("include_usage") and "NOUSAGE" not in text:
            await event({"choices": [], "usage": {"prompt_tokens": len(text.split()),
                                                  "completion_tokens": n, "total_tokens": len(text.split()) + n}})
        await event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def self_test():
    srv = await FakeServer().start()
    failures = []

    def check(name, cond, detail=""):
        print(f"  {'PASS' if cond else 'FAIL'}  {name}{'  (' + detail + ')' if detail else ''}")
        if not cond:
            failures.append(name)

    def near(name, got, want, rel=0.15, abs_tol=6.0):
        ok = got is not None and abs(got - want) <= rel * want + abs_tol
        check(name, ok, f"got {got if got is None else round(got, 2)}, want {want:.2f}")

    def parse(*argv):
        return check_args(build_parser(), build_parser().parse_args(["--base-url", srv.url, *argv]))

    T, I = FakeServer.TTFT * 1000, FakeServer.ITL * 1000
    tmp = tempfile.TemporaryDirectory()

    print("1. completions, closed loop, concurrency 4, 12 requests x 10 tokens")
    args = parse("--concurrency", "4", "--num-requests", "12", "--input-len", "16",
                 "--output-len", "10", "--ignore-eos")
    s, _ = await run(args)
    e2e = T + 9 * I
    check("model from /v1/models", args.model == "fake-model")
    check("all completed", s["completed"] == 12 and s["errors"] == 0, str(s["error_kinds"]))
    b = srv.bodies[-1]
    check("request body", b["stream"] and b["stream_options"] == {"include_usage": True}
          and b["max_tokens"] == 10 and b["ignore_eos"] is True and b["model"] == "fake-model")
    check("synthetic prompt has --input-len words", len(b["prompt"].split()) == 16)
    check("prompts deterministic and distinct", synthetic_prompt(16, 0, 3) == synthetic_prompt(16, 0, 3)
          != synthetic_prompt(16, 0, 4))
    check("output tokens from usage", s["output_tokens"] == 120 and s["prompt_tokens"] == 12 * 16)
    near("TTFT p50 ms", s["ttft_ms"]["p50"], T)
    near("ITL mean ms", s["itl_ms"]["mean"], I)
    near("ITL p50 ms", s["itl_ms"]["p50"], I)
    near("E2E p50 ms", s["e2e_ms"]["p50"], e2e)
    near("requests/s", s["request_throughput"], 4000 / e2e)
    near("output tok/s", s["output_throughput"], 40000 / e2e, abs_tol=0)

    print("2. chat, 2 tokens per chunk (usage-based ITL attribution), role-only first delta")
    path = os.path.join(tmp.name, "chat.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "hello PAIRS"}]}) + "\n")
        f.write(json.dumps({"prompt": "plain prompt PAIRS"}) + "\n")
    s, res = await run(parse("--chat", "--dataset", path, "--concurrency", "2",
                             "--num-requests", "4", "--output-len", "21"))
    check("all completed", s["completed"] == 4, str(s["error_kinds"]))
    check("21 tokens each, 20 ITL samples each", all(r.output_tokens == 21 and len(r.itls) == 20 for r in res))
    near("TTFT p50 ms (empty role delta ignored)", s["ttft_ms"]["p50"], T)
    near("ITL p50 ms", s["itl_ms"]["p50"], I)
    near("TPOT mean ms", s["tpot_ms"]["mean"], I)

    print("3. no usage chunk: tokens counted from content chunks")
    path = os.path.join(tmp.name, "nousage.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"prompt": "count me NOUSAGE"}) + "\n")
    s, _ = await run(parse("--dataset", path, "--num-requests", "2", "--output-len", "7"))
    check("7 tokens per request", s["output_tokens"] == 14 and s["prompt_tokens_estimated"])
    near("ITL mean ms", s["itl_ms"]["mean"], I)

    print("4. errors are counted, not crashes; goodput against a TTFT SLO")
    path = os.path.join(tmp.name, "mixed.jsonl")
    with open(path, "w") as f:
        for p in ("fast", "SLOW", "FAIL500", "FAILMID", "HANG"):
            f.write(json.dumps({"prompt": p}) + "\n")
    s, _ = await run(parse("--dataset", path, "--concurrency", "5", "--num-requests", "10",
                           "--output-len", "5", "--timeout", "0.6", "--slo-ttft-ms", "150",
                           "--slo-itl-ms", "50"))
    kinds = " | ".join(s["error_kinds"])
    check("4 ok, 6 errors", s["completed"] == 4 and s["errors"] == 6, kinds)
    check("HTTP 500, stream error, timeout all seen",
          "HTTP 500" in kinds and "engine failure" in kinds and "timeout" in kinds, kinds)
    check("2 of 10 meet the SLO", s["slo_met"] == 2)
    check("goodput = met / duration", abs(s["goodput"] - 2 / s["duration_s"]) < 1e-9)
    near("TTFT p50 ms over fast+slow", s["ttft_ms"]["p50"], (T + FakeServer.SLOW_TTFT * 1000) / 2)

    print("5. connection refused")
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead = f"http://127.0.0.1:{probe.sockets[0].getsockname()[1]}"
    probe.close()
    await probe.wait_closed()
    a = parse("--model", "m", "--num-requests", "3")
    a.base_url = dead
    s, _ = await run(a)
    check("3 errors, no crash", s["errors"] == 3 and s["completed"] == 0, " | ".join(s["error_kinds"]))

    print("6. open loop, Poisson 40 req/s, 40 requests")
    s, res = await run(parse("--rate", "40", "--num-requests", "40", "--output-len", "4", "--seed", "1"))
    starts = sorted(r.start - min(x.start for x in res) for r in res)
    rng, want = random.Random(1), [0.0]
    while len(want) < 40:
        want.append(want[-1] + rng.expovariate(40))
    lag = max(abs(a - b) for a, b in zip(starts, want)) * 1000
    check("all completed", s["completed"] == 40, str(s["error_kinds"]))
    check("sends follow the seeded Poisson schedule", lag < 10, f"max lag {lag:.1f} ms")
    rng = random.Random(2)
    near("mean rate of a long seeded schedule", 20000 / sum(rng.expovariate(40) for _ in range(20000)),
         40, rel=0.03, abs_tol=0)
    near("TTFT p50 ms (no queueing at this load)", s["ttft_ms"]["p50"], T)

    print("7. --duration bounds a closed loop")
    t = time.perf_counter()
    s, _ = await run(parse("--duration", "0.5", "--concurrency", "2", "--output-len", "4"))
    took, one = time.perf_counter() - t, (FakeServer.TTFT + 3 * FakeServer.ITL)
    check("stopped by itself", took < 0.5 + one + 0.2, f"{took:.2f} s")
    check("request count fits the duration", 2 * int(0.5 / one) <= s["requests"] <= 2 * (int(0.5 / one) + 1),
          str(s["requests"]))

    print("8. percentile / attribution arithmetic")
    check("percentile", percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 99) == 5)
    check("attribution uneven", attribute_itls([0, 1, 2], 6) == [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3])
    check("attribution 1:1", attribute_itls([0, 1, 3], 3) == [1, 2])

    srv.server.close()
    tmp.cleanup()
    print("self-test:", "OK" if not failures else f"{len(failures)} FAILED: {', '.join(failures)}")
    return 0 if not failures else 1


def main():
    p = build_parser()
    args = check_args(p, p.parse_args())
    if args.self_test:
        return asyncio.run(self_test())
    try:
        summary, results = asyncio.run(run(args))
    except (OSError, RuntimeError, ValueError) as e:
        print(f"loadgen: {e}", file=sys.stderr)
        return 2
    print(format_report(args, summary), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        write_json(args, summary, results)
    return 0 if summary["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
