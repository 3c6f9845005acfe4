#!/usr/bin/env python3
"""tests/reference/transformer_ref.py — an independent numpy forward pass for llama, qwen2 and
gemma3 GGUF files (float64, dense attention, no KV cache), used by tests/unit/test_model.c.

Usage: transformer_ref.py MODEL.gguf TOKENS  (TOKENS comma-separated; one sequence from
position 0). Prints one line per token: the next-token logits after it, space-separated.

Written from the architectures' descriptions, not from cairn's C code:
- llama:  x = embd; per layer x += Wo attn(rope(Wq n(x)), rope(Wk n(x)), Wv n(x));
          x += Wd (silu(Wg n(x)) * Wu n(x)); logits = Wout n(x); RoPE rotates (2i, 2i+1).
- qwen2:  as llama plus q/k/v biases; RoPE rotates (i, i + d/2) (NeoX layout).
- gemma3: x = embd * sqrt(d); q/k RMSNorm per head; post-attention and post-FFN RMSNorms;
          GELU (tanh) gate; layer l is global when (l + 1) % pattern == 0, else it sees only the
          last `sliding_window` positions and uses RoPE base 10000; NeoX layout; tied output.
RMSNorm weights are used as stored (the GGUF converter stores Gemma's 1 + w).
"""
import sys

import numpy as np
import gguf
from gguf import quants


def field(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    v = f.parts[f.data[0]]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(v).decode()
    return v.tolist()[0]


def main():
    path, toks = sys.argv[1], [int(t) for t in sys.argv[2].split(",")]
    r = gguf.GGUFReader(path)
    arch = field(r, "general.architecture")
    W = {}
    for t in r.tensors:
        a = quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        W[t.name] = a.reshape([int(d) for d in reversed(t.shape.tolist())]) if len(t.shape) > 1 \
            else a.reshape(-1)

    def hp(k, d=None):
        return field(r, f"{arch}.{k}", d)

    d = hp("embedding_length")
    nl = hp("block_count")
    nh = hp("attention.head_count")
    nkv = hp("attention.head_count_kv", nh)
    hd = hp("attention.key_length", d // nh)
    eps = hp("attention.layer_norm_rms_epsilon", 1e-6)
    base = hp("rope.freq_base", 10000.0)
    gemma = arch == "gemma3"
    neox = arch in ("gemma3", "qwen2")
    window = hp("attention.sliding_window", 0) if gemma else 0
    pattern = hp("attention.sliding_window_pattern", 6) if gemma else 0

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def rope(x, pos, b):  # x: [T, heads, hd]
        out = x.copy()
        inv = b ** (-np.arange(0, hd, 2) / hd)
        ang = np.outer(pos, inv)[:, None, :]
        c, s = np.cos(ang), np.sin(ang)
        if neox:
            a, bb = x[..., :hd // 2], x[..., hd // 2:]
            out[..., :hd // 2] = a * c - bb * s
            out[..., hd // 2:] = a * s + bb * c
        else:
            a, bb = x[..., 0::2], x[..., 1::2]
            out[..., 0::2] = a * c - bb * s
            out[..., 1::2] = a * s + bb * c
        return out

    T = len(toks)
    pos = np.arange(T)
    x = W["token_embd.weight"][toks]
    if gemma:
        x = x * np.sqrt(d)
    for l in range(nl):
        p = f"blk.{l}."
        local = gemma and (l + 1) % pattern != 0
        h = rms(x, W[p + "attn_norm.weight"])
        q = h @ W[p + "attn_q.weight"].T
        k = h @ W[p + "attn_k.weight"].T
        v = h @ W[p + "attn_v.weight"].T
        if arch == "qwen2":
            q, k, v = q + W[p + "attn_q.bias"], k + W[p + "attn_k.bias"], v + W[p + "attn_v.bias"]
        q, k, v = q.reshape(T, nh, hd), k.reshape(T, nkv, hd), v.reshape(T, nkv, hd)
        if gemma:
            q, k = rms(q, W[p + "attn_q_norm.weight"]), rms(k, W[p + "attn_k_norm.weight"])
        b = 10000.0 if local else base
        q, k = rope(q, pos, b), rope(k, pos, b)
        att = np.zeros((T, nh, hd))
        for i in range(T):
            lo = max(0, i - window + 1) if local else 0
            for hh in range(nh):
                kh = hh // (nh // nkv)
                sc = k[lo:i + 1, kh] @ q[i, hh] / np.sqrt(hd)
                sc = np.exp(sc - sc.max())
                sc /= sc.sum()
                att[i, hh] = sc @ v[lo:i + 1, kh]
        a = att.reshape(T, nh * hd) @ W[p + "attn_output.weight"].T
        if gemma:
            a = rms(a, W[p + "post_attention_norm.weight"])
        x = x + a
        h = rms(x, W[p + "ffn_norm.weight"])
        g = h @ W[p + "ffn_gate.weight"].T
        u = h @ W[p + "ffn_up.weight"].T
        if gemma:
            g = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
        else:
            g = g / (1 + np.exp(-g))
        f = (g * u) @ W[p + "ffn_down.weight"].T
        if gemma:
            f = rms(f, W[p + "post_ffw_norm.weight"])
        x = x + f
    h = rms(x, W["output_norm.weight"])
    out = W.get("output.weight", W["token_embd.weight"])
    logits = h @ out.T
    for row in logits:
        print(" ".join(f"{v:.6f}" for v in row))


if __name__ == "__main__":
    main()
