#!/usr/bin/env bash
# Integration tests: run the real tokd binary on real models and check what a user sees.
# Env: TOKD_BIN (build/tokd), TOKD_SHARED (../shared), TOKD_MODEL (SmolLM2 Q4_1 gguf).
set -u
BIN=${TOKD_BIN:-build/tokd}
SHARED=${TOKD_SHARED:-../shared}
MODEL=${TOKD_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
STORIES="$SHARED/testdata/models/stories260K.gguf"
pass=0
fail=0
check() { # name, condition-command...
    local name=$1; shift
    if "$@"; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name"; fi
}
contains() { grep -qF -- "$2" <<<"$1"; }

out=$("$BIN" generate --model "$STORIES" --prompt "Once upon a time" --max-tokens 32 2>/dev/null)
check "stories260K greedy continuation (Karpathy's sample)" \
    contains "$out" ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw"

out=$("$BIN" generate --model "$MODEL" --chat --prompt "What is the capital of France?" --max-tokens 48 2>/dev/null)
check "SmolLM2 --chat answers Paris" contains "$out" "Paris"

a=$("$BIN" generate --model "$MODEL" --prompt "Tell me a story" --temperature 0.9 --seed 7 --max-tokens 24 2>/dev/null)
b=$("$BIN" generate --model "$MODEL" --prompt "Tell me a story" --temperature 0.9 --seed 7 --max-tokens 24 2>/dev/null)
check "same seed, same output" test "$a" = "$b"

out=$("$BIN" generate --model "$MODEL" --prompt "The capital of France is" --stop "." --max-tokens 32 2>/dev/null)
check "stop string cuts the output" test "$out" = " Paris"

err=$("$BIN" generate --model /nonexistent.gguf --prompt x 2>&1 >/dev/null); rc=$?
check "missing model: exit 1 with the path in the message" bash -c "[ $rc -eq 1 ] && grep -q /nonexistent.gguf <<<'$err'"

tmp=$(mktemp); head -c 5000 "$STORIES" >"$tmp"
err=$("$BIN" generate --model "$tmp" --prompt x 2>&1 >/dev/null); rc=$?
check "truncated model: clear error" bash -c "[ $rc -eq 1 ] && grep -q '$tmp' <<<\"\$0\"" "$err"
rm -f "$tmp"

err=$("$BIN" generate --model "$MODEL" --prompt x --temperature abc 2>&1 >/dev/null); rc=$?
check "bad flag value: usage error naming it" bash -c "[ $rc -eq 2 ] && grep -q temperature <<<\"\$0\"" "$err"

# --device cuda: answers where a GPU is usable (tests/gpu/ checks it there); elsewhere exit 1 with
# a message that says why (no GPU or driver, or a build without CUDA), never a crash
out=$("$BIN" generate --model "$MODEL" --chat --prompt "What is the capital of France?" --max-tokens 16 --device cuda 2>&1); rc=$?
check "--device cuda: an answer, or a clear error" bash -c \
    "{ [ $rc -eq 0 ] && grep -q Paris <<<\"\$0\"; } || { [ $rc -eq 1 ] && grep -qiE 'GPU|CUDA' <<<\"\$0\"; }" "$out"

# tokd serve: the official openai client, then raw HTTP (tests/integration/test_*.py)
here=$(cd "$(dirname "$0")" && pwd)
python3 -c "import openai" 2>/dev/null || python3 -m pip install --quiet -r "$here/requirements.txt" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages -r "$here/requirements.txt"
for t in test_openai test_http; do
    check "serve: $t.py" env TOKD_BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")" \
        TOKD_MODEL="$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")" \
        bash -c "cd '$here' && timeout 900 python3 -m unittest -v $t"
done

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
