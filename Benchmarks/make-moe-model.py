#!/usr/bin/env python3
"""Writes a Mixtral-shaped mixture of experts with random weights as GGUF (arch llama, experts merged
as llama.cpp's converter writes them, Q8_0 or Q4_0 matrices, f32 norms and routers) for the expert-
offloading benchmark: numpy and gguf only, deterministic (seed), the file larger than memory if the
shape says so. The vocabulary is a stand-in (one token per byte value, one merge).
    python3 Benchmarks/make-moe-model.py OUT.gguf [--dim 1024] [--ffn 3584] [--layers 16] [--experts 8]
        [--used 2] [--heads 16] [--kv-heads 4] [--vocab 256] [--type q8_0|q4_0]
"""
import argparse
import numpy as np
import gguf

p = argparse.ArgumentParser()
p.add_argument("out")
for name, default in [("dim", 1024), ("ffn", 3584), ("layers", 16), ("experts", 8), ("used", 2), ("heads", 16),
                      ("kv-heads", 4), ("vocab", 256)]:
    p.add_argument("--" + name, type=int, default=default)
p.add_argument("--type", default="q8_0", choices=["q8_0", "q4_0"])
a = p.parse_args()
qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[a.type]
rng = np.random.default_rng(0)
hd = a.dim // a.heads

w = gguf.GGUFWriter(a.out, "llama")
w.add_name("moe-bench")
w.add_block_count(a.layers)
w.add_context_length(4096)
w.add_embedding_length(a.dim)
w.add_feed_forward_length(a.ffn)
w.add_head_count(a.heads)
w.add_head_count_kv(a.kv_heads)
w.add_rope_freq_base(1e6)
w.add_layer_norm_rms_eps(1e-5)
w.add_expert_count(a.experts)
w.add_expert_used_count(a.used)
w.add_vocab_size(a.vocab)
w.add_rope_dimension_count(hd)
w.add_file_type(7 if a.type == "q8_0" else 2)
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("default")
# One token per byte value but the last, which is "AB" with its one merge (a BPE vocabulary needs merges).
w.add_token_list([bytes([i]).decode("latin-1") for i in range(a.vocab - 1)] + ["AB"])
w.add_token_types([1] * a.vocab)
w.add_token_merges(["A B"])


def matrix(name, rows, cols, std=0.02):
    x = (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float32)
    w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)


def experts(name, rows, cols):
    x = (rng.standard_normal((a.experts, rows, cols), dtype=np.float32) * 0.02).astype(np.float32)
    w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)


w.add_tensor("token_embd.weight", (rng.standard_normal((a.vocab, a.dim), dtype=np.float32) * 0.5).astype(np.float32))
for l in range(a.layers):
    b = f"blk.{l}."
    w.add_tensor(b + "attn_norm.weight", np.ones(a.dim, dtype=np.float32))
    matrix(b + "attn_q.weight", a.dim, a.dim)
    matrix(b + "attn_k.weight", a.kv_heads * hd, a.dim)
    matrix(b + "attn_v.weight", a.kv_heads * hd, a.dim)
    matrix(b + "attn_output.weight", a.dim, a.dim)
    w.add_tensor(b + "ffn_norm.weight", np.ones(a.dim, dtype=np.float32))
    w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((a.experts, a.dim), dtype=np.float32)).astype(np.float32))
    experts(b + "ffn_gate_exps.weight", a.ffn, a.dim)
    experts(b + "ffn_up_exps.weight", a.ffn, a.dim)
    experts(b + "ffn_down_exps.weight", a.dim, a.ffn)
w.add_tensor("output_norm.weight", np.ones(a.dim, dtype=np.float32))
matrix("output.weight", a.vocab, a.dim)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
