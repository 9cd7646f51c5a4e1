"""PyTorch side of Benchmarks/bench-training.sh: LlamaForCausalLM (transformers, fp32,
loaded from the same GGUF), AdamW or MeZO's zero-order SGD (its reference loop: z regenerated
from a seed with torch.normal for every parameter at each of the three perturbations and the
update; two forward passes under no_grad) or peft's LoRA (rank 8, alpha 16, every projection, AdamW on the
adapters), B x T windows of the same text, N steps on
`--threads` threads. Prints one JSON object: per-step seconds and peak RSS."""
import argparse, json, os, resource, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seq-len", type=int, default=256)
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--method", choices=["adamw", "adamw8bit", "zo-sgd", "lora"], default="adamw")
a = ap.parse_args()

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(a.threads)
folder, name = os.path.split(os.path.abspath(a.model))
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
model.train()
ids = tok(open(a.data, encoding="utf-8").read(), add_special_tokens=False)["input_ids"]
T, B = a.seq_len, a.batch
windows = [ids[s:s + T + 1] for s in range(0, len(ids) - T, T)]
if not windows:
    sys.exit(f"{a.data}: shorter than one window of {T + 1} tokens")
if a.method == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
params = [p for p in model.parameters() if p.requires_grad]


def zo_step(batch, k, eps=1e-3, lr=1e-4):
    """MeZO (Malladi et al. 2023), as its trainer's zo_step / zo_update do it."""
    seed = 1000 + k
    def perturb(scale):
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scale * z * eps
    def loss_of():
        out = model(input_ids=batch[:, :-1])
        return torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), batch[:, 1:].reshape(-1))
    with torch.no_grad():
        perturb(1); l1 = loss_of()
        perturb(-2); l2 = loss_of()
        perturb(1)
        g = ((l1 - l2) / (2 * eps)).item()
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data - lr * (g * z)
    return l1


if a.method == "zo-sgd":
    model.eval()
if a.method == "adamw8bit":
    from torchao.optim import AdamW8bit  # its update compiled by torch.compile, as torchao runs it
    opt = AdamW8bit(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
else:
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) if a.method != "zo-sgd" else None
steps = []
for k in range(a.steps):
    batch = torch.tensor([windows[(k * B + b) % len(windows)] for b in range(B)])
    t0 = time.perf_counter()
    if a.method == "zo-sgd":
        loss = zo_step(batch, k)
    else:
        out = model(input_ids=batch[:, :-1], labels=None)
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    steps.append({"step": k, "seconds": time.perf_counter() - t0, "loss": loss.item()})
print(json.dumps({"steps": steps, "tokens_per_step": B * T,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "torch": torch.__version__, "threads": a.threads}))
