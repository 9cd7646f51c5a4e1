"""Concurrent streaming clients against an OpenAI-compatible server (loopback only),
bounded in requests and time. Prints one JSON object: total generated tokens per
second over the wall time, and p50/p99 time to first token.

  python3 load_clients.py --url http://127.0.0.1:PORT --model ID --clients 16 --requests 2 --max-tokens 32
"""
import argparse
import http.client
import json
import statistics
import threading
import time

WORDS = ("river stone lantern orchard copper meadow harbor violet thunder pebble candle summit "
         "willow marble falcon ember glacier saffron").split()


def prompt(i):
    # Distinct prompts of about 16 tokens, so no server can reuse another's prefill.
    w = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(8)]
    return "Write a short story about the %s, the %s and the %s. Begin with %s %s." % (w[0], w[1], w[2], w[3], w[4])


def one(host, port, model, text, max_tokens, deadline):
    body = json.dumps({"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    conn = http.client.HTTPConnection(host, port, timeout=max(1, deadline - time.time()))
    t0 = time.time()
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        r.read()
        return {"status": r.status}
    first, events, usage = None, 0, None
    for raw in r:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        obj = json.loads(line[6:])
        if obj.get("usage"):
            usage = obj["usage"].get("completion_tokens")
        for c in obj.get("choices", []):
            if c.get("text"):
                events += 1
                if first is None:
                    first = time.time() - t0
    conn.close()
    return {"status": 200, "ttft": first, "tokens": usage if usage is not None else events}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--time-limit", type=float, default=300)
    a = ap.parse_args()
    host, port = a.url.split("//")[1].split(":")
    assert host in ("127.0.0.1", "localhost", "[::1]"), "loopback only"
    deadline = time.time() + a.time_limit
    results, lock = [], threading.Lock()

    def client(c):
        for k in range(a.requests):
            if time.time() > deadline:
                return
            try:
                r = one(host, int(port), a.model, prompt(c * a.requests + k), a.max_tokens, deadline)
            except Exception as e:  # counted as a failure
                r = {"status": -1, "error": str(e)}
            with lock:
                results.append(r)

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    ok = [r for r in results if r["status"] == 200]
    ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)

    def pct(p):
        return ttfts[min(len(ttfts) - 1, int(round(p / 100 * (len(ttfts) - 1))))] if ttfts else None
    print(json.dumps({"clients": a.clients, "requests": len(results), "ok": len(ok),
                      "tokens": sum(r["tokens"] for r in ok), "wall_s": wall,
                      "tokens_per_s": sum(r["tokens"] for r in ok) / wall if wall > 0 else 0,
                      "ttft_p50_s": pct(50), "ttft_p99_s": pct(99),
                      "ttft_mean_s": statistics.mean(ttfts) if ttfts else None}))


if __name__ == "__main__":
    main()
