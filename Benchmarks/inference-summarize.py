#!/usr/bin/env python3
"""Reads the raw results bench-inference.sh left in a folder (llama-N.json from llama-bench
-o json, offload-N.json from `offload generate --json`) and prints the comparison table.
Each file is one round; llama-bench may hold several repetitions (all are samples).
"""
import argparse
import glob
import json
import os
import statistics
import sys


def fail(msg):
    print(f"[bench-inference] {msg}", file=sys.stderr)
    sys.exit(1)


def last_json_object(text, path):
    """offload may log before its result: take the whole output if it is JSON, else the
    last line that starts a JSON object."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    fail(f"{path}: no JSON object in the output")


def llama_samples(folder, prompt, gen):
    pre, dec = [], []
    files = sorted(glob.glob(os.path.join(folder, "llama-*.json")))
    for path in files:
        with open(path) as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                fail(f"{path}: not llama-bench JSON ({e})")
        for row in rows:
            ts = row.get("samples_ts") or [row["avg_ts"]]
            if row.get("n_prompt") == prompt and row.get("n_gen") == 0:
                pre += ts
            elif row.get("n_gen") == gen and row.get("n_prompt") == 0:
                dec += ts
    return files, pre, dec


def offload_samples(folder):
    """Prefill from offload-prefill-N.json, decode from offload-decode-N.json."""
    out = {}
    files = []
    for kind, key in (("prefill", "prefill_tokens_per_second"), ("decode", "decode_tokens_per_second")):
        out[kind] = []
        for path in sorted(glob.glob(os.path.join(folder, f"offload-{kind}-*.json"))):
            files.append(path)
            with open(path) as f:
                obj = last_json_object(f.read(), path)
            if key not in obj:
                fail(f"{path}: the result has no '{key}' (keys: {', '.join(obj)})")
            out[kind].append(float(obj[key]))
    return files, out["prefill"], out["decode"]


def stats(xs):
    if not xs:
        return None
    return min(xs), statistics.median(xs), max(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--prompt-tokens", type=int, required=True)
    ap.add_argument("--gen-tokens", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    a = ap.parse_args()

    lfiles, lpre, ldec = llama_samples(a.folder, a.prompt_tokens, a.gen_tokens)
    if not lfiles or not lpre or not ldec:
        fail(f"{a.folder}: no llama-bench results for pp{a.prompt_tokens} / tg{a.gen_tokens}")
    ofiles, opre, odec = offload_samples(a.folder)

    tools = [("llama.cpp", lpre, ldec)]
    if ofiles:
        tools.append(("offload", opre, odec))
    print(f"tokens/second, {a.threads} threads, prefill = pp{a.prompt_tokens}, decode = tg{a.gen_tokens}")
    print(f"{'tool':<10} {'n':>3} {'prefill min':>12} {'median':>9} {'max':>9}   "
          f"{'decode min':>11} {'median':>9} {'max':>9}")
    for name, pre, dec in tools:
        p, d = stats(pre), stats(dec)
        print(f"{name:<10} {len(pre):>3} {p[0]:>12.1f} {p[1]:>9.1f} {p[2]:>9.1f}   "
              f"{d[0]:>11.1f} {d[1]:>9.1f} {d[2]:>9.1f}")
    if ofiles:
        lp, ld, op, od = stats(lpre), stats(ldec), stats(opre), stats(odec)
        print(f"{'offload/llama.cpp':<17} prefill: min {op[0] / lp[0]:.2f}x  median {op[1] / lp[1]:.2f}x  "
              f"max {op[2] / lp[2]:.2f}x   decode: min {od[0] / ld[0]:.2f}x  median {od[1] / ld[1]:.2f}x  "
              f"max {od[2] / ld[2]:.2f}x")
    else:
        print("(offload not run)")


if __name__ == "__main__":
    main()
