"""Speaks to `offload serve` the way users' tools do: with the official OpenAI Python
client for completions, chat and streaming, and with raw HTTP for what a client
library would not send. Reads a list of calls as JSON on stdin, prints their
results as JSON; the Swift tests (ServeTests) assert on them.

  {"op": "completion" | "chat", "stream": bool, ...create() arguments...}
  {"op": "raw", "method": "POST", "path": "/v1/completions", "body": "...", "headers": {...}}
  {"op": "disconnect", "path": ..., "body": ...}: start a streamed request, read one event, hang up
  {"op": "concurrent", "calls": [...]}: the calls at once, each on its own thread
"""
import http.client
import json
import os
import socket
import sys
import threading

import openai

BASE = os.environ["OFFLOAD_SERVER"]  # http://127.0.0.1:PORT
HOST, PORT = BASE.split("//")[1].split(":")
KEY = os.environ.get("OFFLOAD_API_KEY") or "unused"
client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=600)


def run(call):
    op = call.pop("op")
    try:
        if op in ("completion", "chat"):
            create = client.completions.create if op == "completion" else client.chat.completions.create
            if call.get("stream"):
                text, finish, usage, chunks = "", None, None, 0
                for chunk in create(**call):
                    chunks += 1
                    if chunk.usage is not None:
                        usage = chunk.usage.model_dump()
                    for c in chunk.choices:
                        piece = c.text if op == "completion" else (c.delta.content or "")
                        text += piece or ""
                        finish = c.finish_reason or finish
                return {"text": text, "finish_reason": finish, "usage": usage, "chunks": chunks}
            r = create(**call)
            c = r.choices[0]
            text = c.text if op == "completion" else c.message.content
            return {"text": text, "finish_reason": c.finish_reason, "usage": r.usage.model_dump(),
                    "object": r.object, "model": r.model}
        if op == "raw":
            conn = http.client.HTTPConnection(HOST, int(PORT), timeout=600)
            body = call.get("body")
            conn.request(call.get("method", "POST"), call["path"], body=body.encode() if body is not None else None,
                         headers=call.get("headers", {"Content-Type": "application/json"}))
            r = conn.getresponse()
            data = r.read().decode("utf-8", "replace")
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
            return {"status": r.status, "retry_after": r.getheader("Retry-After"), "json": parsed, "body": data[:2000]}
        if op == "disconnect":
            s = socket.create_connection((HOST, int(PORT)), timeout=60)
            body = call["body"].encode()
            s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                       % (call["path"], len(body))).encode() + body)
            got = b""
            while b"data: " not in got:
                more = s.recv(4096)
                if not more:
                    break
                got += more
            s.close()
            return {"got_event": b"data: " in got}
        if op == "concurrent":
            out = [None] * len(call["calls"])

            def worker(i, c):
                out[i] = run(dict(c))
            threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(call["calls"])]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return {"results": out}
        return {"error": "unknown op " + op}
    except openai.APIStatusError as e:
        return {"status": e.status_code, "error_body": e.body}
    except Exception as e:  # reported, and the Swift test fails on it
        return {"exception": "%s: %s" % (type(e).__name__, e)}


print(json.dumps([run(c) for c in json.load(sys.stdin)]))
