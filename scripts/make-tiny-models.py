#!/usr/bin/env python3
"""Makes the tiny random-weight models the parity tests read, into $CACHE/models/tiny/, with
nothing but Python's standard library (CI's python has no numpy or torch). Model files are
never committed: they are made here, deterministically, and pinned by sha256 below.

  llama3/  linear/  qwen2/  kquant/   Hugging Face folders: config.json, generation_config.json
  gemma3/  gemma3cap/  long/          and model.safetensors (float32), as transformers 5's
                                      save_pretrained writes them
  llama3.f32.gguf  qwen2.f32.gguf     the folders as llama.cpp's convert_hf_to_gguf.py converts them
  gemma3.f32.gguf  kquant.f16.gguf    (f32, f16 matrices for kquant; a 64/256-token stand-in
                                      vocabulary; Llama's Q/K rows permuted to adjacent pairs,
                                      Llama 3.1's scaling as rope_freqs.weight, Gemma's norm
                                      weights + 1): byte for byte what the converter writes from
                                      these folders, which scripts/fixtures/make_tiny_model_fixtures.py
                                      checks
  (scripts/make-quant-models.sh then makes kquant.<TYPE>.gguf from kquant.f16.gguf with
  llama.cpp's llama-quantize.)

Shapes: long (a Llama with an 8,192-position context, for training at that length) has vocabulary
64, hidden 64, feed-forward 128, 2 layers, 4 heads of 16, 2 KV heads; llama3/linear/qwen2 have vocabulary 64, hidden 32, feed-forward 64, 2 layers, 2 heads of
16, 1 KV head; kquant has every row a multiple of 256 (hidden 256, feed-forward 512, vocabulary
256, 1 layer, 4 heads of 64, 2 KV heads) so that llama-quantize gives every matrix a K-quant block;
gemma3 has vocabulary 64, hidden 32, feed-forward 64, 6 layers (0-4 local with a sliding window of
8, 5 global), 4 heads of 16, 2 KV heads, RoPE base 1e6 global and 1e4 local, tied head; gemma3cap
is the same shape with other weights, linear RoPE scaling ×8 on the global layer and
final_logit_softcapping 10.

Weights: each tensor from its own splitmix64 stream, seeded by the sha256 of "<model>/<tensor
name>". Matrices (and qwen2's biases) are approximately N(0, std²) -- the sum of four 16-bit
uniforms, centred and scaled (Irwin-Hall), std 0.3 for the small models (so RoPE and biases move
logits visibly) and 0.1 for kquant; norm weights are uniform in [0.5, 1.5) (Gemma's, which its
RMSNorm multiplies by as 1 + weight, in [-0.5, 0.5)). Only integer
arithmetic and correctly rounded float operations are used (no libm), so every platform makes
the same bytes.

Idempotent: files that exist with their pinned sha256 are kept; otherwise every file is made in a
temporary folder, checked against its pin, and moved into place.
    python3 scripts/make-tiny-models.py           # env: OFFLOAD_CACHE (default ~/.cache/offload)
    python3 scripts/make-tiny-models.py --pins    # print the sha256s of freshly made files (after
                                                  # changing this script: paste them into PINS)
"""
import hashlib
import json
import math
import os
import shutil
import struct
import sys
import tempfile

PINS = {
    "llama3/config.json": "ae4c9ebd052607a2ad901fad13ac193cf1193ff8dc1e906243c4191a5cc44aa9",
    "llama3/generation_config.json": "92a5c418526e535ff093b96e8d3288d73c828b7968340737b0efe3f8ce94d8a8",
    "llama3/model.safetensors": "764cfd710892370bc9b058be6a8b97c5d881e58e842b080185c88cc0781220c6",
    "linear/config.json": "62900f595d7b738d81f70c78a90c818fd1defb32131318d48a05a4180b97a1a3",
    "linear/generation_config.json": "92a5c418526e535ff093b96e8d3288d73c828b7968340737b0efe3f8ce94d8a8",
    "linear/model.safetensors": "d332ecd56d8d82c389b26830ce61ae52caff26e6b8de93bcf461dec5feb985ea",
    "qwen2/config.json": "cc9e5a3f820d1dc5d0a661b06f49ee6300674fea6d2961b79f68471703129f1a",
    "qwen2/generation_config.json": "e5c6e58a01492ff8b88e11c8545ad8747e6449f0cf250083c544c0013105dfb9",
    "qwen2/model.safetensors": "649567e467598231566f03dd08570fcb2c6b6d2d4273ca3cec7984cda022cfe1",
    "kquant/config.json": "31e73e2a71caf8009a1ab3f9386510ef937564ed1ff5a18679f353ed451e4b61",
    "kquant/generation_config.json": "92a5c418526e535ff093b96e8d3288d73c828b7968340737b0efe3f8ce94d8a8",
    "kquant/model.safetensors": "d509fae63e35aff5bf38026b1d14dd7fe75942edc1a22b63e815d808a2417a9e",
    "llama3.f32.gguf": "94ffa5a7d19d82732bc4b0b54b5a612ea8ffba8bc0e9504aead5ba2d3566af12",
    "qwen2.f32.gguf": "33910d848048ca28716c6bddec8fdc06ec4c04bc4e8aad2da5d9cdacfcc2efdd",
    "kquant.f16.gguf": "d1485b4f4ef7dc4e11ff88c6fa9deaa6d3ddf8f2f6522eb7a1158052bf0958cd",
    "gemma3/config.json": "c15318b9072434973a87bf476bcd80a033796ca1f2be5ff823e42eb7c7fe7fe0",
    "gemma3/generation_config.json": "e5c6e58a01492ff8b88e11c8545ad8747e6449f0cf250083c544c0013105dfb9",
    "gemma3/model.safetensors": "590596b5ee1d5595ab6348a9224159c4088bb91d033ddf20402a767eb2d3d957",
    "gemma3cap/config.json": "a29addd83553fa0c58b457f0db0a3b5f1ecd6bdae6047c585e9cb5668076574d",
    "gemma3cap/generation_config.json": "e5c6e58a01492ff8b88e11c8545ad8747e6449f0cf250083c544c0013105dfb9",
    "gemma3cap/model.safetensors": "41bc379d2ebeaace008942c7b60e6ecda7da5eb400847989675c38abc8a5aae1",
    "gemma3.f32.gguf": "02f4220453df2577a4974f55db674082c009be7e872fd5e30775ad47d6fc09dd",
    "long/config.json": "b6105d9fb57f28b7ceba6acbc6cefd5ac1ebe85f70e1ac35dcd42240238e5379",
    "long/generation_config.json": "92a5c418526e535ff093b96e8d3288d73c828b7968340737b0efe3f8ce94d8a8",
    "long/model.safetensors": "afdb6ebc4ca9fedc108cb071ec701c441fc2d697e67275006203c52972f6c67c",
    "mixtral/config.json": "d8699d89d0a6f640180af6d4b754b96cef4a02ad72e0f145205b9e45dd9910d7",
    "mixtral/generation_config.json": "92a5c418526e535ff093b96e8d3288d73c828b7968340737b0efe3f8ce94d8a8",
    "mixtral/model.safetensors": "67bf6c8293b711c15bb5e9da56e5459b736050264aa72ab5e3b13f50b72be0e0",
    "mixtral.f32.gguf": "877b7b36a919e2354c728e60ce1f3191d0e28a14207c899cda33e3a9a6fc9569",
    "qwen2moe/config.json": "2b71bad99cfba04108479ce9afd4d0d78cc87f4c5f697be6d9a43478e98260d3",
    "qwen2moe/generation_config.json": "e5c6e58a01492ff8b88e11c8545ad8747e6449f0cf250083c544c0013105dfb9",
    "qwen2moe/model.safetensors": "150247665b6a8e55d6119c1969c00853dcdb41bbd82f31305a563edfeae50143",
    "qwen2moe.f32.gguf": "b8ecdef3652ed8d37fef6626d50124315cf6e508b7703d65f97597821838c620",
    "olmoe/config.json": "7c9ae4077f52af845825904d6f3afe370c26c17c619b498413d2a827438cdfb2",
    "olmoe/generation_config.json": "e5c6e58a01492ff8b88e11c8545ad8747e6449f0cf250083c544c0013105dfb9",
    "olmoe/model.safetensors": "a12de06e0ff58f91b8b84a6e1c582ae7f22e56eb84f29c93d8b251fdf5f34d2f",
    "olmoe.f32.gguf": "8b620b93bd66f427ac3d366a39d7bb5cc91074f6dae8f4028061a754563b3808",
    "qwen3moe/config.json": "40d20161322195be54c865b5245bad22547fec6ef7cf7f857e356d99b29586ce",
    "qwen3moe/generation_config.json": "e5c6e58a01492ff8b88e11c8545ad8747e6449f0cf250083c544c0013105dfb9",
    "qwen3moe/model.safetensors": "825b70513a00404e72d4cb53024c0b3a5dd638aa100986815dbf5da6882ef98b",
    "qwen3moe.f32.gguf": "69cf5c67131edfcfb6df37b3142d9118152e9e902c9bd8ac1d41814c601eb383",
    "mixtral-split.f32.gguf": "3ca5fd093e81c23599fae73f8ecc77822681980d1c72fd6fff726f8416cd2f34",
    "mixtral-fused.f32.gguf": "18340ac79a70143cc6a650386996bedf6542b68d4f263d6eb2c6bcbde24a6afa",
}

MASK = (1 << 64) - 1
TRANSFORMERS_VERSION = "5.24.0"   # what the config files say wrote them (the format they follow)


def say(msg):
    print(f"[tiny] {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Values


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


SD4 = 37837.22668          # standard deviation of the sum of four uniform 16-bit integers: 65536/sqrt(3)
F32 = struct.Struct("<f")


def f32(x):
    """x rounded to the nearest float32 (ties to even), as a Python float."""
    return F32.unpack(F32.pack(x))[0]


def stream(model, name):
    return SplitMix64(int.from_bytes(hashlib.sha256(f"{model}/{name}".encode()).digest()[:8], "little"))


def normal(model, name, count, std):
    rng, out = stream(model, name), []
    for _ in range(count):
        z = rng.next()
        s = (z & 0xFFFF) + ((z >> 16) & 0xFFFF) + ((z >> 32) & 0xFFFF) + (z >> 48)
        out.append(f32((s - 131070) / SD4 * std))
    return out


def uniform(model, name, count, lo, hi):
    rng = stream(model, name)
    return [f32(lo + (rng.next() >> 11) * (hi - lo) / 9007199254740992.0) for _ in range(count)]


# ---------------------------------------------------------------------------------------------
# The models


SMALL = dict(vocab=64, hidden=32, ff=64, layers=2, heads=2, kv_heads=1, head_dim=16, std=0.3)
# Gemma 3: 6 layers, the last global and five with a sliding window of 8 (shorter than the tests'
# sequences); 4 heads of 16 (head_dim ≠ hidden/heads) over 2 KV heads.
GEMMA = dict(vocab=64, hidden=32, ff=64, layers=6, heads=4, kv_heads=2, head_dim=16, std=0.3, window=8, pattern=6)
# Long: an 8,192-position context, for training at T = 8192 (4 heads of 16 over 2 KV heads).
LONG = dict(vocab=64, hidden=64, ff=128, layers=2, heads=4, kv_heads=2, head_dim=16, std=0.3)
KQUANT = dict(vocab=256, hidden=256, ff=512, layers=1, heads=4, kv_heads=2, head_dim=64, std=0.1)
# Mixtures of experts: 8 experts; routers with std 1 (logits a few units apart, so the top-k choice
# is not a near tie); Qwen2-MoE with 4 per token, experts of 32 and a shared expert of 48.
MIXTRAL = dict(SMALL, experts=8, used=2, router_std=1.0)
QWEN2MOE = dict(SMALL, experts=8, used=4, ff=32, shared_ff=48, router_std=1.0)
OLMOE = dict(SMALL, experts=8, used=2, router_std=1.0)
# Qwen3-MoE: 4 heads of 16 over 2 KV heads (head_dim ≠ hidden/heads), experts of 32, 2 per token.
QWEN3MOE = dict(vocab=64, hidden=32, ff=32, layers=2, heads=4, kv_heads=2, head_dim=16, std=0.3, experts=8, used=2,
                router_std=1.0)

MODELS = {
    # name: (shape, architecture, tied head, rope_parameters, GGUF output type or None)
    "llama3": (SMALL, "llama", False, {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                       "original_max_position_embeddings": 32, "rope_theta": 10000.0,
                                       "rope_type": "llama3"}, "f32"),
    "linear": (SMALL, "llama", False, {"factor": 4.0, "rope_theta": 10000.0, "rope_type": "linear"}, None),
    "qwen2": (SMALL, "qwen2", True, {"rope_theta": 1000000.0, "rope_type": "default"}, "f32"),
    "kquant": (KQUANT, "llama", False, {"rope_theta": 10000.0, "rope_type": "default"}, "f16"),
    "long": (LONG, "llama", False, {"rope_theta": 10000.0, "rope_type": "default"}, None),
    # Gemma 3's rope_parameters: global layers' base (and, in gemma3cap, linear scaling) and the
    # local layers' base, 10,000 (what llama.cpp assumes: its converter does not write it).
    "gemma3": (GEMMA, "gemma3", True, {"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                                       "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}, "f32"),
    "gemma3cap": (GEMMA, "gemma3", True, {"full_attention": {"factor": 8.0, "rope_theta": 1000000.0, "rope_type": "linear"},
                                          "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}, None),
    "mixtral": (MIXTRAL, "mixtral", False, {"rope_theta": 1000000.0, "rope_type": "default"}, "f32"),
    "qwen2moe": (QWEN2MOE, "qwen2_moe", False, {"rope_theta": 10000.0, "rope_type": "default"}, "f32"),
    "olmoe": (OLMOE, "olmoe", False, {"rope_theta": 10000.0, "rope_type": "default"}, "f32"),
    "qwen3moe": (QWEN3MOE, "qwen3_moe", False, {"rope_theta": 10000.0, "rope_type": "default"}, "f32"),
}
# The GGUF architecture of each Hugging Face model_type (Mixtral is a Llama with experts).
GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3", "mixtral": "llama", "qwen2_moe": "qwen2moe",
             "olmoe": "olmoe", "qwen3_moe": "qwen3moe"}
# Mixtral's other two GGUF expert layouts, beside the merged one of today's converter: one tensor
# per expert (older files) and gate and up fused (newer llama.cpp).
MIXTRAL_LAYOUTS = {"mixtral-split.f32.gguf": "split", "mixtral-fused.f32.gguf": "fused"}
# max_position_embeddings (256 for the others).
CONTEXT = {"long": 8192}
# Gemma 3's final_logit_softcapping (null for the others).
SOFTCAP = {"gemma3cap": 10.0}


def hf_tensors(name):
    """{HF name: (shape, float values)}: the folder's weights."""
    shape, arch, tied, _, _ = MODELS[name]
    h, ff, v, hd = shape["hidden"], shape["ff"], shape["vocab"], shape["head_dim"]
    q, kv = shape["heads"] * hd, shape["kv_heads"] * hd
    mats = {"model.embed_tokens.weight": [v, h]}
    if not tied:
        mats["lm_head.weight"] = [v, h]
    norms = {"model.norm.weight": [h]}
    routers = {}
    for i in range(shape["layers"]):
        p = f"model.layers.{i}."
        mats.update({p + "self_attn.q_proj.weight": [q, h], p + "self_attn.k_proj.weight": [kv, h],
                     p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.o_proj.weight": [h, q]})
        if "experts" not in shape:
            mats.update({p + "mlp.gate_proj.weight": [ff, h], p + "mlp.up_proj.weight": [ff, h],
                         p + "mlp.down_proj.weight": [h, ff]})
        else:
            moe = "block_sparse_moe" if arch == "mixtral" else "mlp"
            routers[p + moe + ".gate.weight"] = [shape["experts"], h]
            names = ("w1", "w3", "w2") if arch == "mixtral" else ("gate_proj", "up_proj", "down_proj")
            for e in range(shape["experts"]):
                x = f"{p}{moe}.experts.{e}."
                mats.update({x + names[0] + ".weight": [ff, h], x + names[1] + ".weight": [ff, h],
                             x + names[2] + ".weight": [h, ff]})
            if "shared_ff" in shape:
                sf = shape["shared_ff"]
                mats.update({p + "mlp.shared_expert.gate_proj.weight": [sf, h], p + "mlp.shared_expert.up_proj.weight": [sf, h],
                             p + "mlp.shared_expert.down_proj.weight": [h, sf], p + "mlp.shared_expert_gate.weight": [1, h]})
        if arch == "olmoe":
            norms.update({p + "self_attn.q_norm.weight": [q], p + "self_attn.k_norm.weight": [kv]})
        if arch == "qwen3_moe":
            norms.update({p + "self_attn.q_norm.weight": [hd], p + "self_attn.k_norm.weight": [hd]})
        if arch == "gemma3":
            norms.update({p + "pre_feedforward_layernorm.weight": [h], p + "post_feedforward_layernorm.weight": [h],
                          p + "self_attn.q_norm.weight": [hd], p + "self_attn.k_norm.weight": [hd]})
        if arch in ("qwen2", "qwen2_moe"):
            mats.update({p + "self_attn.q_proj.bias": [q], p + "self_attn.k_proj.bias": [kv],
                         p + "self_attn.v_proj.bias": [kv]})
        norms.update({p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h]})
    out = {}
    for n, s in mats.items():
        out[n] = (s, normal(name, n, math.prod(s), shape["std"]))
    for n, s in routers.items():
        out[n] = (s, normal(name, n, math.prod(s), shape["router_std"]))
    for n, s in norms.items():
        # Gemma's RMSNorm multiplies by (1 + weight): its weights are around 0.
        lo, hi = (-0.5, 0.5) if arch == "gemma3" else (0.5, 1.5)
        out[n] = (s, uniform(name, n, math.prod(s), lo, hi))
    return dict(sorted(out.items()))


def config_json(name):
    """config.json as transformers 5.24 writes it for this model (json, indent 2, sorted keys)."""
    shape, arch, tied, rope, _ = MODELS[name]
    if arch == "gemma3":
        return gemma3_config_json(name)
    if "experts" in shape:
        return moe_config_json(name)
    c = {"architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
         "attention_dropout": 0.0, "dtype": "float32", "head_dim": shape["head_dim"], "hidden_act": "silu",
         "hidden_size": shape["hidden"], "initializer_range": 0.02, "intermediate_size": shape["ff"],
         "max_position_embeddings": CONTEXT.get(name, 256), "model_type": arch,
         "num_attention_heads": shape["heads"],
         "num_hidden_layers": shape["layers"], "num_key_value_heads": shape["kv_heads"], "pad_token_id": None,
         "rms_norm_eps": 1e-05, "rope_parameters": rope, "tie_word_embeddings": tied,
         "transformers_version": TRANSFORMERS_VERSION, "use_cache": True, "vocab_size": shape["vocab"]}
    if arch == "llama":
        c.update({"attention_bias": False, "bos_token_id": 1, "eos_token_id": 2, "mlp_bias": False,
                  "pretraining_tp": 1})
    else:
        c.update({"bos_token_id": None, "eos_token_id": None, "layer_types": ["full_attention"] * shape["layers"],
                  "max_window_layers": 28, "sliding_window": None, "use_sliding_window": False})
    return json.dumps(c, indent=2, sort_keys=True) + "\n"


def moe_config_json(name):
    """What save_pretrained writes (transformers 5.25) for MixtralForCausalLM, Qwen2MoeForCausalLM and
    OlmoeForCausalLM, with this model's shape."""
    shape, arch, tied, rope, _ = MODELS[name]
    c = {"attention_dropout": 0.0, "dtype": "float32", "hidden_act": "silu", "hidden_size": shape["hidden"],
         "initializer_range": 0.02, "intermediate_size": shape["ff"], "max_position_embeddings": 256,
         "model_type": arch, "num_attention_heads": shape["heads"], "num_experts_per_tok": shape["used"],
         "num_hidden_layers": shape["layers"], "num_key_value_heads": shape["kv_heads"],
         "output_router_logits": False, "pad_token_id": None, "rms_norm_eps": 1e-05, "rope_parameters": rope,
         "router_aux_loss_coef": 0.001, "tie_word_embeddings": tied, "transformers_version": TRANSFORMERS_VERSION,
         "use_cache": True, "vocab_size": shape["vocab"]}
    if arch == "mixtral":
        c.update({"architectures": ["MixtralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
                  "head_dim": shape["head_dim"], "num_local_experts": shape["experts"], "router_jitter_noise": 0.0,
                  "sliding_window": None})
    elif arch == "qwen2_moe":
        c.update({"architectures": ["Qwen2MoeForCausalLM"], "bos_token_id": None, "decoder_sparse_step": 1,
                  "eos_token_id": None, "intermediate_size": 64, "layer_types": ["full_attention"] * shape["layers"],
                  "max_window_layers": 28, "mlp_only_layers": [], "moe_intermediate_size": shape["ff"],
                  "norm_topk_prob": False, "num_experts": shape["experts"], "qkv_bias": True, "rms_norm_eps": 1e-06,
                  "shared_expert_intermediate_size": shape["shared_ff"], "sliding_window": None,
                  "use_sliding_window": False})
    elif arch == "qwen3_moe":
        c.update({"architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "bos_token_id": None,
                  "decoder_sparse_step": 1, "eos_token_id": None, "head_dim": shape["head_dim"], "intermediate_size": 64,
                  "mlp_only_layers": [], "moe_intermediate_size": shape["ff"], "norm_topk_prob": True,
                  "num_local_experts": shape["experts"], "rms_norm_eps": 1e-06, "sliding_window": None,
                  "use_sliding_window": False})
    else:
        c.update({"architectures": ["OlmoeForCausalLM"], "attention_bias": False, "bos_token_id": None,
                  "clip_qkv": None, "eos_token_id": None, "norm_topk_prob": False, "num_experts": shape["experts"],
                  "router_aux_loss_coef": 0.01})
    return json.dumps(c, indent=2, sort_keys=True) + "\n"


def gemma3_config_json(name):
    """What save_pretrained writes for Gemma3ForCausalLM (Gemma3TextConfig, transformers 5.24)."""
    shape, _, tied, rope, _ = MODELS[name]
    n, p = shape["layers"], shape["pattern"]
    c = {"_sliding_window_pattern": p, "architectures": ["Gemma3ForCausalLM"], "attention_bias": False,
         "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": None, "dtype": "float32",
         "eos_token_id": None, "final_logit_softcapping": SOFTCAP.get(name), "head_dim": shape["head_dim"],
         "hidden_activation": "gelu_pytorch_tanh", "hidden_size": shape["hidden"], "initializer_range": 0.02,
         "intermediate_size": shape["ff"],
         "layer_types": ["sliding_attention" if (i + 1) % p else "full_attention" for i in range(n)],
         "max_position_embeddings": 256, "model_type": "gemma3_text", "num_attention_heads": shape["heads"],
         "num_hidden_layers": n, "num_key_value_heads": shape["kv_heads"], "pad_token_id": None,
         "query_pre_attn_scalar": shape["head_dim"], "rms_norm_eps": 1e-06, "rope_parameters": rope,
         "sliding_window": shape["window"], "tie_word_embeddings": tied,
         "transformers_version": TRANSFORMERS_VERSION, "use_bidirectional_attention": False, "use_cache": True,
         "vocab_size": shape["vocab"]}
    return json.dumps(c, indent=2, sort_keys=True) + "\n"


def generation_config_json(name):
    arch = MODELS[name][1]
    c = {"_from_model_config": True, "output_attentions": False, "output_hidden_states": False,
         "transformers_version": TRANSFORMERS_VERSION, "use_cache": True}
    if arch in ("llama", "mixtral"):
        c.update({"bos_token_id": 1, "eos_token_id": 2})
    return json.dumps(c, indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------------------
# Files


def f32_bytes(values):
    return struct.pack(f"<{len(values)}f", *values)


def f16_bytes(values):
    # Each value is already a float32; float32 -> float16 rounds to nearest even, as numpy does.
    return struct.pack(f"<{len(values)}e", *values)


def safetensors_bytes(tensors):
    """safetensors as the Rust library writes it: header length (u64), the JSON header (metadata
    first, then tensors by name, compact), padded with spaces to 8 bytes, then the data in order."""
    header, data, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for n, (shape, values) in tensors.items():
        b = f32_bytes(values)
        header[n] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(b)]}
        data.append(b)
        offset += len(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(data)


GGUF_UINT32, GGUF_INT32, GGUF_FLOAT32, GGUF_STRING, GGUF_ARRAY = 4, 5, 6, 8, 9
GGML_F32, GGML_F16 = 0, 1
ALIGN = 32


def gguf_bytes(kvs, tensors):
    """GGUF v3. kvs: [(key, type, value)] (an array: (key, GGUF_ARRAY, (element type, values)));
    tensors: [(name, ggml type, row-major shape, bytes)], each aligned to 32 bytes."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)))

    def string(s):
        b = s.encode()
        out.extend(struct.pack("<Q", len(b)) + b)

    def scalar(t, v):
        if t == GGUF_STRING:
            string(v)
        else:
            out.extend(struct.pack({GGUF_UINT32: "<I", GGUF_INT32: "<i", GGUF_FLOAT32: "<f"}[t], v))

    for key, t, v in kvs:
        string(key)
        out.extend(struct.pack("<I", t))
        if t == GGUF_ARRAY:
            et, items = v
            out.extend(struct.pack("<IQ", et, len(items)))
            for x in items:
                scalar(et, x)
        else:
            scalar(t, v)
    offset = 0
    for name, gt, shape, data in tensors:
        string(name)
        out.extend(struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in reversed(shape)))
        out.extend(struct.pack("<IQ", gt, offset))
        offset += len(data) + (-len(data) % ALIGN)
    out.extend(b"\0" * (-len(out) % ALIGN))
    for _, _, _, data in tensors:
        out.extend(data + b"\0" * (-len(data) % ALIGN))
    return bytes(out)


GGUF_NAMES = {"input_layernorm.weight": "attn_norm.weight", "mlp.down_proj.weight": "ffn_down.weight",
              "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
              "post_attention_layernorm.weight": "ffn_norm.weight", "self_attn.k_proj.bias": "attn_k.bias",
              "self_attn.k_proj.weight": "attn_k.weight", "self_attn.o_proj.weight": "attn_output.weight",
              "self_attn.q_proj.bias": "attn_q.bias", "self_attn.q_proj.weight": "attn_q.weight",
              "self_attn.v_proj.bias": "attn_v.bias", "self_attn.v_proj.weight": "attn_v.weight"}


# Gemma 3's blocks (convert_hf_to_gguf's tensor map): GGUF's ffn_norm is the norm before the feed-forward.
GEMMA3_GGUF_NAMES = {**GGUF_NAMES, "post_attention_layernorm.weight": "post_attention_norm.weight",
                     "pre_feedforward_layernorm.weight": "ffn_norm.weight",
                     "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
                     "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight"}


MOE_GGUF_NAMES = {"block_sparse_moe.gate.weight": "ffn_gate_inp.weight", "mlp.gate.weight": "ffn_gate_inp.weight",
                  "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
                  "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
                  "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
                  "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
                  "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight"}
# An expert's matrices by their name in Mixtral's and the others' checkpoints.
EXPERT_KIND = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


def gguf_name(n, arch="llama"):
    if n == "lm_head.weight":
        return "output.weight"
    if n == "model.embed_tokens.weight":
        return "token_embd.weight"
    if n == "model.norm.weight":
        return "output_norm.weight"
    _, _, i, rest = n.split(".", 3)
    if rest in MOE_GGUF_NAMES:
        return f"blk.{i}.{MOE_GGUF_NAMES[rest]}"
    return f"blk.{i}.{(GEMMA3_GGUF_NAMES if arch == 'gemma3' else GGUF_NAMES)[rest]}"


def permute(values, shape, heads):
    """convert_hf_to_gguf's LlamaModel.permute: each head's rows from halves to adjacent pairs
    (reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2))."""
    rows, cols = shape
    half = rows // heads // 2
    out = []
    for h in range(heads):
        for i in range(half):
            for j in range(2):
                r = h * 2 * half + j * half + i
                out.extend(values[r * cols:(r + 1) * cols])
    return out


def llama3_rope_factors(rope, head_dim):
    """convert_hf_to_gguf's rope_freqs.weight for Llama 3.1's scaling, in float32 as torch computes
    it there: a Python number over a float32 tensor is the tensor's reciprocal times the number
    (rounded to float32), and each float32 operation is emulated exactly by the double operation
    rounded to float32. Only the power is a libm call: freq = 1 / base^(2i/dim)."""
    base, factor = rope["rope_theta"], rope["factor"]
    lo, hi, old = rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / lo, old / hi
    rdiv = lambda number, x: f32(f32(1 / x) * f32(number))   # number / tensor
    out = []
    for i in range(0, head_dim, 2):
        freq = rdiv(1.0, f32(base ** f32(f32(i) / head_dim)))
        wavelen = rdiv(2 * math.pi, freq)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = f32(f32(rdiv(old, wavelen) - lo) / f32(hi - lo))
            out.append(rdiv(1, f32(f32(f32(1 - smooth) / factor) + smooth)))
    return out


def size_label(n):
    """gguf-py's size label for n parameters (all models here are below a million)."""
    scaled = n * 1e-3
    return f"{scaled:.{max(2 - len(str(round(scaled)).lstrip('0')), 0)}f}K"


def expert_tensors(tensors, shape, layout):
    """The HF per-expert matrices of a mixture of experts as GGUF tensors [(name, shape, values)] in
    `layout`: "merged" (ffn_{gate,up,down}_exps [E, rows, cols], convert_hf_to_gguf's), "fused"
    (ffn_gate_up_exps [E, 2·ff, dim], gate rows first, and ffn_down_exps) or "split"
    (blk.L.ffn_gate.E.weight...)."""
    experts = {}   # (layer, kind) -> {expert: (shape, values)}
    for n, (s, values) in tensors.items():
        parts = n.split(".")
        if "experts" in parts:
            e = int(parts[parts.index("experts") + 1])
            experts.setdefault((int(parts[2]), EXPERT_KIND[parts[-2]]), {})[e] = (s, values)
    out = []
    for (layer, kind), by in sorted(experts.items()):
        p = f"blk.{layer}."
        if layout == "split":
            out += [(f"{p}ffn_{kind}.{e}.weight", s, v) for e, (s, v) in sorted(by.items())]
        elif layout == "merged" or kind == "down":
            s = by[0][0]
            out.append((f"{p}ffn_{kind}_exps.weight", [len(by)] + s, [x for e in sorted(by) for x in by[e][1]]))
        elif kind == "gate":
            up = experts[(layer, "up")]
            s = by[0][0]
            out.append((f"{p}ffn_gate_up_exps.weight", [len(by), 2 * s[0], s[1]],
                        [x for e in sorted(by) for x in by[e][1] + up[e][1]]))
    return out


def gguf_file(name, tensors, layout="merged"):
    shape, arch, tied, rope, outtype = MODELS[name]
    gt = GGML_F32 if outtype == "f32" else GGML_F16
    out = []
    if "experts" in shape:
        tensors = {n: t for n, t in tensors.items() if ".experts." not in n}
        for n, s, values in expert_tensors(hf_tensors(name), shape, layout):
            out.append((n, gt, s, f32_bytes(values)))
    hf_arch, arch = arch, GGUF_ARCH[arch]
    if rope.get("rope_type") == "llama3":
        out.append(("rope_freqs.weight", GGML_F32, [shape["head_dim"] // 2],
                    f32_bytes(llama3_rope_factors(rope, shape["head_dim"]))))
    for n, (s, values) in tensors.items():
        if arch == "llama" and n.endswith("q_proj.weight"):
            values = permute(values, s, shape["heads"])
        elif arch == "llama" and n.endswith("k_proj.weight"):
            values = permute(values, s, shape["kv_heads"])
        elif arch == "gemma3" and n.endswith("norm.weight"):
            # Gemma3RMSNorm multiplies by (1 + weight): the converter stores weight + 1 (float32 addition).
            values = [f32(x + 1.0) for x in values]
        # The converter keeps 1-D tensors (norms, biases) in float32.
        out.append((gguf_name(n, arch), gt if len(s) == 2 else GGML_F32, s,
                    (f16_bytes if gt == GGML_F16 and len(s) == 2 else f32_bytes)(values)))
    a, v, gemma = arch, shape["vocab"], arch == "gemma3"
    kvs = [("general.architecture", GGUF_STRING, arch), ("general.type", GGUF_STRING, "model"),
           ("general.name", GGUF_STRING, name.capitalize()),
           ("general.size_label", GGUF_STRING, size_label(sum(math.prod(t[2]) for t in out))),
           (f"{a}.block_count", GGUF_UINT32, shape["layers"]), (f"{a}.context_length", GGUF_UINT32, 256),
           (f"{a}.embedding_length", GGUF_UINT32, shape["hidden"]),
           # Qwen2-MoE's is its dense intermediate_size (unused: every layer has experts).
           (f"{a}.feed_forward_length", GGUF_UINT32, 64 if hf_arch in ("qwen2_moe", "qwen3_moe") else shape["ff"]),
           (f"{a}.attention.head_count", GGUF_UINT32, shape["heads"]),
           (f"{a}.attention.head_count_kv", GGUF_UINT32, shape["kv_heads"]),
           (f"{a}.rope.freq_base", GGUF_FLOAT32, rope["full_attention"]["rope_theta"] if gemma else rope["rope_theta"])]
    if gemma:
        kvs.append((f"{a}.rope.freq_base_swa", GGUF_FLOAT32, rope["sliding_attention"]["rope_theta"]))
    kvs += [(f"{a}.attention.layer_norm_rms_epsilon", GGUF_FLOAT32,
             1e-06 if gemma or hf_arch in ("qwen2_moe", "qwen3_moe") else 1e-05),
            # (as the converter: only from a config.json with head_dim, which Qwen2-MoE's and OLMoE's lack)
            *([(f"{a}.attention.key_length", GGUF_UINT32, shape["head_dim"]),
               (f"{a}.attention.value_length", GGUF_UINT32, shape["head_dim"])]
              if hf_arch not in ("qwen2_moe", "olmoe") else []),
            ("general.file_type", GGUF_UINT32, 0 if gt == GGML_F32 else 1)]
    if gemma:
        kvs.append((f"{a}.attention.sliding_window", GGUF_UINT32, shape["window"]))
    if arch == "llama":
        kvs += [("llama.vocab_size", GGUF_UINT32, v), ("llama.rope.dimension_count", GGUF_UINT32, shape["head_dim"])]
    if "experts" in shape:
        kvs += [(f"{a}.expert_count", GGUF_UINT32, shape["experts"]), (f"{a}.expert_used_count", GGUF_UINT32, shape["used"])]
    if hf_arch in ("qwen2_moe", "qwen3_moe"):
        kvs.append((f"{a}.expert_feed_forward_length", GGUF_UINT32, shape["ff"]))
    if "shared_ff" in shape:
        kvs.append((f"{a}.expert_shared_feed_forward_length", GGUF_UINT32, shape["shared_ff"]))
    kvs += [("general.quantization_version", GGUF_UINT32, 2),
            # The stand-in vocabulary make_tiny_model_fixtures.py patches into the converter
            # (the folders have no tokenizer).
            ("tokenizer.ggml.model", GGUF_STRING, "gpt2"), ("tokenizer.ggml.pre", GGUF_STRING, "default"),
            ("tokenizer.ggml.tokens", GGUF_ARRAY, (GGUF_STRING, [chr(65 + i) if i < 26 else f"<t{i}>" for i in range(v)])),
            ("tokenizer.ggml.token_type", GGUF_ARRAY, (GGUF_INT32, [1] * v))]
    if "experts" in shape:
        # No merges (each byte its own token): enough for `offload generate` to load the vocabulary.
        kvs.append(("tokenizer.ggml.merges", GGUF_ARRAY, (GGUF_STRING, [])))
    return gguf_bytes(kvs, out)


def make(folder):
    """Writes every file into folder; returns {relative path: bytes length}."""
    for name, (_, _, _, _, outtype) in MODELS.items():
        tensors = hf_tensors(name)
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        files = {f"{name}/config.json": config_json(name).encode(),
                 f"{name}/generation_config.json": generation_config_json(name).encode(),
                 f"{name}/model.safetensors": safetensors_bytes(tensors)}
        if outtype:
            files[f"{name}.{outtype}.gguf"] = gguf_file(name, tensors)
        if name == "mixtral":
            for file, layout in MIXTRAL_LAYOUTS.items():
                files[file] = gguf_file(name, tensors, layout)
        for rel, b in files.items():
            with open(os.path.join(folder, rel), "wb") as f:
                f.write(b)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    cache = os.environ.get("OFFLOAD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "offload")
    out = os.path.join(cache, "models", "tiny")
    if "--pins" in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as tmp:
            make(tmp)
            for rel in PINS:
                print(f'    "{rel}": "{sha256(os.path.join(tmp, rel))}",')
        return
    have = lambda rel: os.path.isfile(os.path.join(out, rel)) and sha256(os.path.join(out, rel)) == PINS[rel]
    if all(have(rel) for rel in PINS):
        say(f"have {len(PINS)} files in {out}")
        return
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".make-", dir=out)
    try:
        say(f"making tiny models into {out}")
        make(tmp)
        bad = [(rel, sha256(os.path.join(tmp, rel))) for rel in PINS if sha256(os.path.join(tmp, rel)) != PINS[rel]]
        for rel, got in bad:
            say(f"sha256 mismatch for {rel}: expected {PINS[rel]}, made {got}")
        if bad:
            say("the generator no longer makes the pinned files (changed script, or a platform that rounds "
                "differently); if the script was changed on purpose, update PINS (--pins) and the references")
            sys.exit(1)
        for rel in PINS:   # each file renamed into place whole: a reader never sees a partial file
            os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
            os.replace(os.path.join(tmp, rel), os.path.join(out, rel))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"ready in {out}")


if __name__ == "__main__":
    main()
