#!/usr/bin/env python3
"""MoEfies SmolLM2-135M-Instruct: turns the dense model into a Mixtral-style mixture of experts GGUF (arch llama,
llama.cpp's merged expert layout) whose routing is real: driven by the model's own hidden states on real text. It is
a source of real expert choices (with their real temporal locality) for the expert-cache benchmarks of
`offload generate --budget`; the text it writes stays close to the dense model's, not equal to it.
    python3 Benchmarks/moefy-smollm2.py [--experts 8] [--used 2] [--shared 256] [--type q8_0|q4_0|f32] [--tokens 4096]
        [--heldout 1024] [--seed 0] [--source SmolLM2-135M-Instruct.Q4_1.gguf] [--text-dir DIR] [--out OUT.gguf]
Method, after MoEfication (Zhang et al. 2022), per block, on --tokens calibration tokens from Shakespeare plays:
  1. shared: the --shared neurons of largest mean squared contribution (h_i^2 * ||down_i||^2) are copied into every
     expert (down x1: the k renormalized weights sum to 1, so they come back exactly); without them (--shared 0, plain
     MoEfication) SwiGLU's activations are too dense for 2 of 8 clusters, and held-out perplexity goes 44 -> ~5000;
  2. the other neurons are split into E equal clusters by balanced spherical k-means (fixed seed; each step assigns
     greedily, most similar pair first) on their |activation| profiles over the calibration tokens (MoEfication's
     co-activation split: better router recall than clustering gate rows); expert e = shared + cluster e's rows of
     gate and up and columns of down, the cluster's down columns x k (the k chosen weights are about 1/k each);
  3. the router (E x dim, no bias) is a ridge least-squares fit from the MLP input x (the ffn_norm output) to each
     cluster's activation norm ||silu(gate x) * up x||_cluster, standardized per token across the clusters (which keeps
     their order); its logits are scaled to the spread (std across experts, from a small grid) that best reproduces
     the dense MLP output on the calibration tokens.
The dense forward (to capture x and to score) is a small torch llama over the GGUF's dequantized weights. Reported:
per block the top-k recall (share of the true top-k clusters the router picks) on --heldout tokens from other plays,
and the held-out perplexity of the dense model and of the MoE (f32 experts). Every other tensor (raw quantized bytes)
and every metadata key is copied; general.name, the expert keys and feed_forward_length (= the expert's size,
shared + (ffn - shared)/E) are set.
Needs (PyPI): numpy (2.4), torch (2.x, CPU is enough), gguf (0.19), transformers (5.x, only for the GGUF tokenizer).
Deterministic; about 2-3 minutes on 2 CPU cores. Routing is the engine's: softmax over E, top-k, renormalized.
"""
import argparse, glob, math, os, sys, time
import numpy as np
import torch
import torch.nn.functional as F
import gguf
from transformers import AutoTokenizer

HOME = os.path.expanduser("~/.cache/offload")
p = argparse.ArgumentParser()
p.add_argument("--experts", type=int, default=8)
p.add_argument("--used", type=int, default=2)
p.add_argument("--type", default="q8_0", choices=["q8_0", "q4_0", "f32"])
p.add_argument("--tokens", type=int, default=4096, help="calibration tokens (windows of 512)")
p.add_argument("--heldout", type=int, default=1024, help="held-out tokens for recall and perplexity")
p.add_argument("--source", default=f"{HOME}/models/SmolLM2-135M-Instruct.Q4_1.gguf")
p.add_argument("--text-dir", default=f"{HOME}/shakespeare")
p.add_argument("--out", default=f"{HOME}/models/smollm2-moefied-e8k2.gguf")
p.add_argument("--shared", type=int, default=256, help="neurons copied into every expert (0: plain MoEfication)")
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
E, K, WIN = a.experts, a.used, 512
t0 = time.time()
def log(*s): print(f"[{time.time() - t0:6.1f}s]", *s, file=sys.stderr, flush=True)
torch.manual_seed(a.seed)

r = gguf.GGUFReader(a.source)
T = {t.name: t for t in r.tensors}
def meta(key): return r.fields[key].contents()
def deq(name):  # numpy shape (rows, cols) = GGUF ne reversed
    t = T[name]
    return torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
NL, DIM, FFN = meta("llama.block_count"), meta("llama.embedding_length"), meta("llama.feed_forward_length")
H, KVH = meta("llama.attention.head_count"), meta("llama.attention.head_count_kv")
HD, EPS, BASE = DIM // H, meta("llama.attention.layer_norm_rms_epsilon"), meta("llama.rope.freq_base")
M = (FFN - a.shared) // E  # routed neurons an expert; X = an expert's size
X = a.shared + M
assert (FFN - a.shared) % E == 0 and K <= E, "ffn - shared must split evenly into --experts; --used <= --experts"
assert a.type == "f32" or X % 32 == 0 and DIM % 32 == 0, "quantized experts need shared + (ffn-shared)/E divisible by 32"
assert "output.weight" not in T, "expects tied embeddings"
emb = deq("token_embd.weight")
W = [{k: deq(f"blk.{l}.{k}.weight") for k in ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                                              "ffn_gate", "ffn_up", "ffn_down"]} for l in range(NL)]
out_norm = deq("output_norm.weight")
log(f"loaded {a.source}: {NL} blocks, dim {DIM}, ffn {FFN} -> {E} experts of {X} ({a.shared} shared + {M}), {K} a token")

# Text: windows of WIN+1 tokens (stride WIN, as `offload eval` scores) from the middle of plays, one play a window.
tok = AutoTokenizer.from_pretrained(os.path.dirname(a.source), gguf_file=os.path.basename(a.source))
plays = sorted(f for f in glob.glob(f"{a.text_dir}/*.txt") if os.path.getsize(f) > 60000)
np.random.default_rng(a.seed).shuffle(plays)
def windows(files, n):
    out = []
    for f in files[:math.ceil(n / WIN)]:
        s = open(f, encoding="utf-8", errors="replace").read()
        ids = tok(s[len(s) // 3: len(s) // 3 + 8 * WIN]).input_ids
        out.append(torch.tensor(ids[:WIN + 1]))
    return out
held = windows(plays, a.heldout)
calib = windows(plays[len(held):], a.tokens)
assert len(plays) >= len(held) + len(calib), "not enough plays for these token counts"

# A llama forward over the dequantized weights; GGUF's q/k rows are permuted for RoPE on adjacent pairs.
inv = BASE ** (-torch.arange(0, HD, 2, dtype=torch.float64) / HD)
def rms(x, w): return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w
def rope(x, n):  # x (n, heads, HD)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None]
    c, s = ang.cos().float()[:, None], ang.sin().float()[:, None]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).flatten(-2)
def dense_mlp(w, x): return (F.silu(x @ w["ffn_gate"].T) * (x @ w["ffn_up"].T)) @ w["ffn_down"].T
def forward(ids, mlp=None, capture=None):
    n, x = len(ids), emb[ids]
    for l, w in enumerate(W):
        h = rms(x, w["attn_norm"])
        q, k, v = (h @ w[f"attn_{c}"].T for c in "qkv")
        q, k = rope(q.view(n, H, HD), n), rope(k.view(n, KVH, HD), n)
        k, v = k.repeat_interleave(H // KVH, 1), v.view(n, KVH, HD).repeat_interleave(H // KVH, 1)
        att = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True)
        x = x + att.transpose(0, 1).reshape(n, DIM) @ w["attn_output"].T
        h = rms(x, w["ffn_norm"])
        if capture is not None: capture[l].append(h)
        x = x + (dense_mlp(w, h) if mlp is None else mlp(l, w, h))
    return rms(x, out_norm) @ emb.T
def nll(wins, mlp=None):
    return sum(F.cross_entropy(forward(ids[:-1], mlp), ids[1:], reduction="sum").item() for ids in wins) \
        / sum(len(ids) - 1 for ids in wins)

def balanced_kmeans(V, rng, iters=25):  # V: (n, features) unit rows -> a cluster per row, n/E rows each
    C, labels, cap = V[rng.choice(len(V), E, replace=False)], None, len(V) // E
    for _ in range(iters):
        S = V @ C.T
        new, count = np.full(len(V), -1), np.zeros(E, int)
        for idx in np.argsort(-S, axis=None, kind="stable"):  # most similar (neuron, cluster) pair first
            i, e = divmod(int(idx), E)
            if new[i] < 0 and count[e] < cap: new[i] = e; count[e] += 1
        if labels is not None and (new == labels).all(): break
        labels = new
        C = np.stack([V[labels == e].mean(0) for e in range(E)])
        C /= np.linalg.norm(C, axis=1, keepdims=True)
    return labels

def act(w, x): return F.silu(x @ w["ffn_gate"].T) * (x @ w["ffn_up"].T)  # (n, FFN) intermediate activations
def route(logits):  # the engine's rule: softmax over E, top-k (ties -> lower index), renormalized
    pr = logits.softmax(-1)
    top = torch.topk(pr, K, dim=-1, sorted=True).indices  # torch.topk is not tie-stable; ties are measure-zero here
    wt = pr.gather(-1, top)
    return top, wt / wt.sum(-1, keepdim=True)
def moe_out(h, w, shared, perm, top, wt):  # the engine's sum over chosen experts, from the dense activations h
    coef = torch.zeros(len(h), E).scatter_(1, top, wt * K).repeat_interleave(M, 1)
    return (h[:, perm] * coef) @ w["ffn_down"][:, perm].T + h[:, shared] @ w["ffn_down"][:, shared].T

log(f"capturing MLP inputs on {sum(len(i) - 1 for i in calib)} calibration tokens ({len(calib)} plays)")
cap_c, cap_h = [[] for _ in range(NL)], [[] for _ in range(NL)]
with torch.no_grad():
    for ids in calib: forward(ids[:-1], capture=cap_c)
    for ids in held: forward(ids[:-1], capture=cap_h)
rng = np.random.default_rng(a.seed)
split, routers, recalls, errs = [], [], [], []
for l, w in enumerate(W):
    Xc, Xh = torch.cat(cap_c[l]), torch.cat(cap_h[l])
    hc, hh = act(w, Xc), act(w, Xh)
    # Shared: the --shared neurons of largest mean squared contribution; the rest clustered by co-activation.
    order = torch.argsort(hc.pow(2).mean(0) * w["ffn_down"].pow(2).sum(0), descending=True, stable=True)
    shared, rest = torch.sort(order[:a.shared]).values, torch.sort(order[a.shared:]).values
    prof = hc[:, rest].abs().T.double()
    labels = balanced_kmeans((prof / prof.norm(dim=1, keepdim=True)).numpy(), rng)
    perm = rest[torch.from_numpy(np.argsort(labels, kind="stable"))]  # routed neurons of expert 0, then 1, ...
    Yc, Yh = (h[:, perm].view(len(h), E, M).norm(dim=-1) for h in (hc, hh))
    Ys = (Yc - Yc.mean(1, keepdim=True)) / (Yc.std(1, keepdim=True) + 1e-6)
    X64 = Xc.double()
    G = X64.T @ X64
    R = torch.linalg.solve(G + 1e-3 * G.trace() / DIM * torch.eye(DIM, dtype=torch.float64), X64.T @ Ys.double())
    R = R.T.float()  # (E, DIM)
    # Temperature: the logit spread (std across experts) that best reproduces the dense MLP output on calibration.
    lc, yd, yh = Xc @ R.T, hc @ w["ffn_down"].T, hh @ w["ffn_down"].T
    def err(h, y, top, wt): return ((moe_out(h, w, shared, perm, top, wt) - y).norm() / y.norm()).item()
    best = min([0.25, 0.5, 1, 2], key=lambda s: err(hc, yd, *route(lc * (s / lc.std(1).mean()))))
    R = R * (best / lc.std(1).mean())
    top, truth = route(Xh @ R.T)[0], torch.topk(Yh, K, dim=-1).indices
    recall = (top[:, :, None] == truth[:, None, :]).any(-1).float().mean().item()
    e_r, e_o = err(hh, yh, *route(Xh @ R.T)), err(hh, yh, truth, torch.full(truth.shape, 1 / K))
    split.append((shared, perm)); routers.append(R); recalls.append(recall); errs.append((e_r, e_o))
    log(f"block {l:2d}: held-out top-{K} recall {recall:.3f} (random {K / E:.3f}), logit spread {best}, "
        f"MLP output rel. error {e_r:.3f} (oracle top-{K}: {e_o:.3f})")

def moe_mlp(l, w, h): return moe_out(act(w, h), w, *split[l], *route(h @ routers[l].T))
with torch.no_grad():
    d_nll, m_nll = nll(held), nll(held, moe_mlp)
log(f"held-out perplexity ({sum(len(i) - 1 for i in held)} tokens): dense {math.exp(d_nll):.2f}, "
    f"MoE E{E}k{K} {math.exp(m_nll):.2f}")

# Write: every source tensor and key as is, but each block's dense ffn_gate/up/down -> router and merged experts.
qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0, "f32": None}[a.type]
out = gguf.GGUFWriter(a.out, "llama")
skip = {"general.architecture", "general.name", "llama.feed_forward_length"}
for key, f in r.fields.items():
    if key.startswith("GGUF.") or key in skip: continue
    out.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None)
out.add_name(f"SmolLM2-135M-Instruct MoEfied E{E}k{K}")
out.add_feed_forward_length(X)
out.add_expert_count(E)
out.add_expert_used_count(K)
def add(name, x):  # x: float32 numpy
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype is None: out.add_tensor(name, x)
    else: out.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
for t in r.tensors:
    name, part = t.name, t.name.split(".")
    if len(part) == 4 and part[2] in ("ffn_gate", "ffn_up", "ffn_down"):
        l, w = int(part[1]), W[int(part[1])]
        shared, perm = split[l]
        idx = torch.cat([shared.expand(E, -1), perm.view(E, M)], 1)  # (E, X): each expert's neurons, shared first
        if part[2] == "ffn_gate": out.add_tensor(f"blk.{l}.ffn_gate_inp.weight", routers[l].numpy())
        if part[2] == "ffn_down":  # shared columns x1 (the k weights sum to 1), routed columns x k
            scale = torch.cat([torch.ones(a.shared), torch.full((M,), float(K))])
            add(f"blk.{l}.ffn_down_exps.weight", (w["ffn_down"].T[idx] * scale[:, None]).transpose(1, 2).numpy())
        else:
            add(f"blk.{l}.{part[2]}_exps.weight", w[part[2]][idx].numpy())
    elif t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        out.add_tensor(name, t.data)
    else:
        out.add_tensor(name, t.data, raw_dtype=t.tensor_type)  # raw bytes (rows, bytes a row): shape from the type
out.write_header_to_file()
out.write_kv_data_to_file()
out.write_tensors_to_file()
out.close()
log(f"wrote {a.out} ({os.path.getsize(a.out) / 2**20:.1f} MiB)")
print(f"top-{K} router recall per block (held-out): " + " ".join(f"{x:.2f}" for x in recalls))
print(f"mean recall {np.mean(recalls):.3f} (random {K / E:.3f}); mean MLP output rel. error {np.mean([e[0] for e in errs]):.3f}"
      f" (oracle {np.mean([e[1] for e in errs]):.3f}); held-out perplexity dense {math.exp(d_nll):.2f}, MoE {math.exp(m_nll):.2f}")
