#!/usr/bin/env bash
# tests/gpu/serve_check.sh TOKD MODEL LOGDIR: the real daemon on the GPU (run by tests/gpu/run.sh).
#  1. `tokd generate --device cuda` answers a chat prompt greedily with the same text as --device cpu;
#  2. `tokd serve --device cuda` gives that text again through /v1/chat/completions, streamed and not;
#  3. 16 concurrent streams of 128-token prompts and 128 output tokens (deploy/loadtest/loadgen.py);
#  4. SIGTERM drains and the daemon exits 0.
set -u
TOKD=$1 MODEL=$2 LOGDIR=$3
PORT=${PORT:-18431}
DEV=${DEV:-cuda} # DEV=cpu: a dry run of the script on a machine without a GPU
cd "$(dirname "$0")/../.."
fail() { echo "FAIL serve: $*"; [ -n "${pid:-}" ] && kill -9 "$pid" 2>/dev/null; exit 1; }
Q="What is the capital of France?"
want=$("$TOKD" generate --model "$MODEL" --chat --prompt "$Q" --max-tokens 24 --device cpu) || fail "generate on cpu"
got=$("$TOKD" generate --model "$MODEL" --chat --prompt "$Q" --max-tokens 24 --device "$DEV") || fail "generate on $DEV"
echo "cpu : $want"
echo "$DEV: $got"
[ "$want" = "$got" ] || fail "generate: cuda and cpu answers differ"
"$TOKD" serve --model "$MODEL" --device "$DEV" --host 127.0.0.1 --port "$PORT" > "$LOGDIR/serve_tokd.log" 2>&1 &
pid=$!
python3 - "$PORT" "$want" <<'PY' || fail "HTTP checks"
import json, sys, time, urllib.request
port, want = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
for _ in range(600):
    try:
        if urllib.request.urlopen(base + "/ready", timeout=1).status == 200: break
    except Exception: time.sleep(0.1)
else: sys.exit("not ready after 60 s")
body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 24, "temperature": 0}
def post(b):
    req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(b).encode(), {"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=60)
text = json.load(post(body))["choices"][0]["message"]["content"]
print("served  :", text)
parts = []
with post(dict(body, stream=True)) as r:
    for line in r:
        line = line.decode().strip()
        if line.startswith("data: ") and line != "data: [DONE]":
            for c in json.loads(line[6:])["choices"]:
                parts.append(c.get("delta", {}).get("content") or "")
print("streamed:", "".join(parts))
if text != want or "".join(parts) != want: sys.exit("served text differs from tokd generate's")
PY
python3 deploy/loadtest/loadgen.py --base-url "http://127.0.0.1:$PORT" --chat --concurrency 16 --num-requests 64 \
    --input-len 128 --output-len 128 --ignore-eos || fail "loadgen"
kill -TERM "$pid"
wait "$pid"
rc=$?
[ $rc -eq 0 ] || { pid=; fail "daemon exited $rc after SIGTERM"; }
echo "PASS serve: cuda generate == cpu generate == served (plain and streamed); 64 requests at 16 streams; clean exit"
