#!/usr/bin/env bash
# Serve one GGUF with tokd and with llama.cpp's llama-server, one after the other on this machine,
# and run the same closed-loop load against each (deploy/loadtest/loadgen.py), so the two figures
# are measured side by side. Prints one summary line per server and concurrency.
#
#   deploy/loadtest/compare.sh MODEL.gguf [LLAMA_SERVER_BIN] [CONCURRENCIES] [REQUESTS_PER_STREAM]
#   e.g. deploy/loadtest/compare.sh /tmp/s135-q8_0.gguf ~/llama.cpp/build/bin/llama-server "1 4 16"
#
# Env (tokd rejects unknown TOKD_* variables, hence these names): TOKD_BIN (build/tokd), THREADS (2), INPUT_LEN (128), OUTPUT_LEN (128), OUT (results dir),
#      EXTRA_TOKD_FLAGS / EXTRA_LLAMA_FLAGS (extra flags, e.g. EXTRA_LLAMA_FLAGS="-fa on").
set -euo pipefail
model=$1
llama=${2:-}
concs=${3:-"1 4 16"}
per=${4:-4}
here=$(cd "$(dirname "$0")" && pwd)
tokd=${TOKD_BIN:-$here/../../build/tokd}
threads=${THREADS:-2}
in_len=${INPUT_LEN:-128}
out_len=${OUTPUT_LEN:-128}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
port=18181

wait_ready() { # url
    for _ in $(seq 1 600); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "server did not become ready: $1" >&2; return 1
}

run_load() { # name conc
    local n=$(($2 * per))
    python3 "$here/loadgen.py" --base-url "http://127.0.0.1:$port" --concurrency "$2" --num-requests "$n" \
        --input-len "$in_len" --output-len "$out_len" --ignore-eos --json "$out/$1-c$2.json" >/dev/null
    python3 - "$out/$1-c$2.json" "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("summary", r)
def g(*keys):
    d = s
    for k in keys:
        d = d.get(k, {}) if isinstance(d, dict) else {}
    return d if not isinstance(d, dict) else float("nan")
print(f"{sys.argv[2]:>6} c={sys.argv[3]:>3}  out tok/s {g('output_throughput'):8.1f}  "
      f"TTFT p50 {g('ttft_ms','p50'):8.1f} ms  ITL p50 {g('itl_ms','p50'):7.1f} ms  errors {g('errors')}")
PY
}

for c in $concs; do
    ctx=$(( c * (in_len + out_len + 64) )); [ "$ctx" -lt 4096 ] && ctx=4096
    "$tokd" serve --model "$model" --port "$port" --threads "$threads" --max-seqs $(( c > 64 ? c : 64 )) \
        ${EXTRA_TOKD_FLAGS:-} >"$out/tokd-c$c.log" 2>&1 &
    pid=$!; wait_ready "http://127.0.0.1:$port/ready"; run_load tokd "$c"; kill -TERM $pid; wait $pid || true
    if [ -n "$llama" ]; then
        "$llama" -m "$model" --port "$port" -t "$threads" --parallel "$c" -c "$ctx" ${EXTRA_LLAMA_FLAGS:-} \
            >"$out/llama-c$c.log" 2>&1 &
        pid=$!; wait_ready "http://127.0.0.1:$port/health"; run_load llama "$c"; kill -TERM $pid; wait $pid || true
    fi
done
echo "results: $out"
