"""1,000 malformed or hostile requests against `offload serve` on loopback, from a
seeded generator (the same requests every run): garbage bytes, truncated and deeply
nested JSON, every field with wrong types and absurd values, unknown routes and
methods, bad headers, invalid UTF-8, oversized bodies, and valid streams dropped
mid-way. Prints a JSON summary of the statuses; the Swift test asserts on it and on
the server's health and memory afterwards.

  OFFLOAD_SERVER=http://127.0.0.1:PORT python3 fuzz_requests.py MODEL_ID [COUNT]
"""
import http.client
import json
import os
import random
import socket
import sys

BASE = os.environ["OFFLOAD_SERVER"]
HOST, PORT = BASE.split("//")[1].split(":")
PORT = int(PORT)
assert HOST in ("127.0.0.1", "localhost"), "loopback only"
MODEL = sys.argv[1]
COUNT = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
rng = random.Random(20261202)

VALUES = [None, True, False, 0, -1, 1, 2 ** 63, -2 ** 63, 1e308, -1e308, 0.5, "", "x", "0", "NaN", [], [1], {},
          {"a": 1}, "\u0000", "\udc80" * 0, "é中文😀", "A" * 3000]
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
          "seed", "stop", "n", "stream", "stream_options", "logprobs", "user"]


def body_case():
    kind = rng.randrange(9)
    good = {"model": MODEL, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if kind == 1:
        s = json.dumps(good)
        return s[: rng.randrange(1, len(s))].encode()
    if kind == 2:
        d = rng.randrange(50, 3000)
        return ("[" * d + "]" * d).encode() if rng.random() < 0.5 else ('{"a":' * d + "1" + "}" * d).encode()
    if kind == 3:
        b = dict(good)
        b[rng.choice(FIELDS)] = rng.choice(VALUES)
        return json.dumps(b).encode()
    if kind == 4:
        b = {"model": MODEL, "messages": rng.choice(VALUES + [[{"role": "user"}], [{"role": 5, "content": "x"}],
                                                             [{"role": "wizard", "content": "x"}],
                                                             [{"role": "user", "content": [{"type": "image_url"}]}]])}
        return json.dumps(b).encode()
    if kind == 5:
        return b'{"model": "' + bytes([0xff, 0xfe, 0xc3]) + b'", "prompt": "\xc3\x28"}'
    if kind == 6:
        return json.dumps(rng.choice(VALUES)).encode()
    if kind == 7:
        return b'{"model": "%s", "prompt": "%s", "max_tokens": 1}' % (MODEL.encode(), b"a" * rng.randrange(1, 3000))
    return json.dumps({**good, "max_tokens": rng.randrange(-5, 3)}).encode()


def request(method, path, body, headers):
    conn = http.client.HTTPConnection(HOST, PORT, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        ok_shape = True
        if r.status >= 400:
            try:
                ok_shape = isinstance(json.loads(data)["error"]["message"], str)
            except Exception:
                ok_shape = False
        return r.status, ok_shape
    finally:
        conn.close()


def dropped_stream():
    s = socket.create_connection((HOST, PORT), timeout=60)
    body = json.dumps({"model": MODEL, "prompt": "Count to ten:", "max_tokens": 400, "stream": True}).encode()
    whole = rng.random() < 0.7   # else the connection closes in the middle of the body
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % len(body) + body[: len(body) if whole else rng.randrange(len(body))])
    if whole and rng.random() < 0.5:
        s.recv(200)
    s.close()
    return "dropped", True


statuses, bad_shape = {}, 0
for i in range(COUNT):
    r = rng.random()
    if r < 0.08:
        try:
            status, shape = dropped_stream()
        except Exception as e:
            status, shape = "exception:" + type(e).__name__, True
    else:
        path = rng.choice(["/v1/completions", "/v1/chat/completions"] * 4 + ["/v1/models", "/v1/", "/../etc/passwd",
                                                                              "/v1/completions?x=%ff", "/metrics"])
        method = "POST" if rng.random() < 0.9 else rng.choice(["GET", "PUT", "DELETE", "PATCH"])
        headers = {"Content-Type": rng.choice(["application/json", "text/plain", "application/x-www-form-urlencoded"])}
        if rng.random() < 0.05:
            headers["X-Junk"] = "j" * rng.randrange(1, 8000)
        try:
            status, shape = request(method, path, body_case(), headers)
        except Exception as e:
            status, shape = "exception:" + type(e).__name__, True
    statuses[str(status)] = statuses.get(str(status), 0) + 1
    bad_shape += 0 if shape else 1
print(json.dumps({"statuses": statuses, "bad_error_shape": bad_shape}))
