#!/usr/bin/env python3
"""Writes tests/data/quant_vectors.bin: reference vectors for tests/unit/test_quant.c,
computed independently of tokd by the PyPI `gguf` package (gguf.quants) and numpy.

Usage: python3 tests/data/gen_quant_vectors.py [--model PATH.gguf] [OUT]
(the model is optional; without it the 'model' records are left out.)

File format (little-endian):
  magic "TKQV0001", u32 n_records, then n_records records of
    char label[32]  (NUL-padded; a tensor name for model records)
    u32 kind        (0 quantized from floats by gguf-py, 1 random raw blocks,
                     2 rows of a real tensor, 3 f32 -> f16/bf16 conversions)
    u32 type        (ggml type id; unused for kind 3)
    u32 n_rows, u32 n (elements per row)
  kinds 0-2 then hold:
    kind 0 only: f32 input[n_rows*n]  (what was quantized)
    u8  q[n_rows * row_bytes]         (gguf-py's quantization / the raw blocks)
    f32 deq[n_rows*n]                 (gguf-py's dequantization of q)
    f32 x[n]                          (random activations)
    f64 dot[n_rows]                   (sum(deq * x) in float64)
  kind 3 (n_rows = 1): f32 in[n], u16 f16[n] (numpy astype), u16 bf16[n] (gguf-py BF16)
"""
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

KIND_QUANT, KIND_RAW, KIND_MODEL, KIND_CONV = 0, 1, 2, 3
rng = np.random.default_rng(20240601)
records = []


def row_bytes(t, n):
    be, bb = GGML_QUANT_SIZES[t]
    return n // be * bb


def dequant(t, q, n_rows, n):
    return quants.dequantize(q.reshape(n_rows, -1), t).astype(np.float32).reshape(n_rows, n)


def add_record(label, kind, t, q, n_rows, n, inp=None):
    deq = dequant(t, q, n_rows, n)
    x = rng.standard_normal(n).astype(np.float32)
    dot = deq.astype(np.float64) @ x.astype(np.float64)
    body = b"" if inp is None else inp.astype("<f4").tobytes()
    body += q.astype(np.uint8).tobytes() + deq.astype("<f4").tobytes()
    body += x.astype("<f4").tobytes() + dot.astype("<f8").tobytes()
    head = struct.pack("<32sIIII", label.encode()[:31], kind, int(t), n_rows, n)
    records.append(head + body)


def quantize(t, rows):
    if t == T.F16:
        q = rows.astype("<f2").view(np.uint8)
    elif t == T.F32:
        q = rows.astype("<f4").view(np.uint8)
    else:
        q = quants.quantize(rows, t)
    return np.ascontiguousarray(q).reshape(-1)


def tie_block(t):
    """32 values whose quantization hits exact rounding ties (x*id lands on k + 0.5)."""
    half = rng.integers(-15, 15, 32).astype(np.float32) + 0.5
    if t == T.Q8_0:  # amax 127 -> d = 1, id = 1: roundf ties go away from zero
        v = rng.integers(-120, 120, 32).astype(np.float32) + 0.5
        v[3] = 127.0
    elif t == T.Q4_0:  # max -8 -> d = 1: x + 8.5 truncated at a tie
        v = np.clip(half, -7.5, 7.5)
        v[5] = -8.0
    else:  # Q4_1: min 0, max 15 -> d = 1
        v = np.clip(half + 7.5, 0.5, 14.5)
        v[0], v[7] = 0.0, 15.0
    return v


def special_row(t, n):
    """A row of blocks with edge cases: zeros, a constant, ties, wide dynamic range."""
    r = (rng.standard_normal(n) * np.exp(rng.uniform(-6, 2, n // 32).repeat(32))).astype(np.float32)
    r[0:32] = 0.0
    r[32:64] = 0.3
    if t in (T.Q8_0, T.Q4_0, T.Q4_1):
        r[64:96] = tie_block(t)
    else:  # plain types: f16 / bf16 rounding ties and f16 subnormals
        r[64:72] = [1 + 2**-11, 1 + 3 * 2**-11, 2**-25, 3 * 2**-25, 1 + 2**-8, 1 + 3 * 2**-8, 65519.0, -2**-20]
    r[96:128] = rng.standard_normal(32) * np.array([1e-4, 100.0] * 16, dtype=np.float32)
    return r


def gen_quantized():
    for t in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1):
        for n, n_rows in ((256, 3), (512, 2)):
            rows = (rng.standard_normal((n_rows, n)) * 0.05).astype(np.float32)
            if n == 256:
                rows[1] = special_row(t, n)
                rows[2] = rng.uniform(-2.0, 1.0, n).astype(np.float32)
            add_record(f"{t.name} quant {n}", KIND_QUANT, t, quantize(t, rows), n_rows, n, rows)


def sane_f16(count, lo, hi):
    return (np.exp(rng.uniform(np.log(lo), np.log(hi), count)).astype(np.float16)).view(np.uint8)


def random_blocks(t, n_blocks):
    """Random bytes with f16 scales in a sane range (no inf/nan), in ggml's layout."""
    _, bb = GGML_QUANT_SIZES[t]
    b = rng.integers(0, 256, (n_blocks, bb), dtype=np.uint8)
    if t in (T.Q8_0, T.Q4_0):
        b[:, 0:2] = sane_f16(n_blocks, 1e-4, 0.1).reshape(n_blocks, 2)
    elif t == T.Q4_1:
        b[:, 0:2] = sane_f16(n_blocks, 1e-4, 0.1).reshape(n_blocks, 2)
        b[:, 2:4] = (-sane_f16(n_blocks, 1e-3, 1.0).view(np.float16)).view(np.uint8).reshape(n_blocks, 2)
    elif t in (T.Q4_K, T.Q5_K):
        b[:, 0:4] = sane_f16(2 * n_blocks, 1e-5, 0.01).reshape(n_blocks, 4)
    elif t == T.Q6_K:
        b[:, bb - 2:] = sane_f16(n_blocks, 1e-5, 0.01).reshape(n_blocks, 2)
    return b.reshape(-1)


def gen_raw():
    for t in (T.Q4_K, T.Q5_K, T.Q6_K):
        for n, n_rows in ((256, 2), (512, 2), (1280, 1)):
            add_record(f"{t.name} raw {n}", KIND_RAW, t, random_blocks(t, n_rows * n // 256), n_rows, n)
    for t in (T.Q8_0, T.Q4_0, T.Q4_1):
        add_record(f"{t.name} raw 96", KIND_RAW, t, random_blocks(t, 2 * 3), 2, 96)


def gen_model(path):
    from gguf import GGUFReader

    r = GGUFReader(path)
    for name in ("blk.0.attn_q.weight", "token_embd.weight"):
        ti = next(ti for ti in r.tensors if ti.name == name)
        n = int(ti.shape[0])
        q = np.ascontiguousarray(ti.data[:2]).reshape(-1)
        add_record(name, KIND_MODEL, ti.tensor_type, q, 2, n)


def gen_conv():
    special = np.array([
        0.0, -0.0, 1.0, -1.0, 65504.0, 65519.0, 65520.0, 1e9, -1e9, np.inf, -np.inf,
        2**-14, 2**-24, 2**-25, 3 * 2**-25, 2**-26, 1.5 * 2**-24, 2**-15 + 2**-25, 1e-30,
        1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8, 1 + 3 * 2**-8, 3.3895314e38, 3.4028235e38,
        1.17549435e-38, 1e-45, 0.1, -0.333333343, 2049.0, 2051.0,
    ], dtype=np.float32)
    bits = rng.integers(0, 2**32, 1500, dtype=np.uint64).astype(np.uint32)
    bits = bits[(bits & 0x7F800000) != 0x7F800000]  # no nan: payload handling differs
    near = (rng.standard_normal(1000) * np.exp(rng.uniform(-20, 12, 1000))).astype(np.float32)
    v = np.concatenate([special, bits.view(np.float32), near])
    with np.errstate(over="ignore"):
        f16 = v.astype("<f2").view("<u2")
    bf16 = quants.BF16.quantize_blocks(v.copy().reshape(1, -1)).view("<u2").reshape(-1)
    head = struct.pack("<32sIIII", b"f16 bf16 conversions", KIND_CONV, 0, 1, len(v))
    records.append(head + v.astype("<f4").tobytes() + f16.tobytes() + bf16.astype("<u2").tobytes())


def main():
    args = sys.argv[1:]
    model = None
    if len(args) >= 2 and args[0] == "--model":
        model, args = args[1], args[2:]
    out = args[0] if args else "tests/data/quant_vectors.bin"
    gen_quantized()
    gen_raw()
    if model:
        gen_model(model)
    gen_conv()
    with open(out, "wb") as f:
        f.write(b"TKQV0001" + struct.pack("<I", len(records)))
        for r in records:
            f.write(r)
    print(f"{out}: {len(records)} records, {sum(map(len, records)) + 12} bytes")


if __name__ == "__main__":
    main()
