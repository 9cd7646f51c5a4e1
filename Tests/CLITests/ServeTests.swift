// `offload serve` as users' tools reach it: the official OpenAI Python client for
// completions and streaming (Support/openai_client.py), raw HTTP for the error cases.
// Greedy text through the server equals `offload generate` on the same prompt, alone
// and with 8 requests at once (batching changes throughput, never tokens).
import Foundation
import XCTest

/// `offload serve` on a free loopback port, stopped (SIGINT) when released.
final class ServerProcess: @unchecked Sendable {
    let process = Process()
    private(set) var port = 0
    private let lock = NSLock()
    private var log = ""

    init(_ args: [String], environment: [String: String] = [:]) throws {
        process.executableURL = URL(fileURLWithPath: CLI.binary)
        process.arguments = ["serve", "--port", "0"] + args
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        process.environment = env
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        err.fileHandleForReading.readabilityHandler = { [weak self] h in
            let d = h.availableData
            guard let self, !d.isEmpty else { return }
            self.lock.lock(); self.log += String(decoding: d, as: UTF8.self); self.lock.unlock()
        }
        try process.run()
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline && process.isRunning {
            if let r = stderr.range(of: #"listening on http://127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                port = Int(stderr[r].split(separator: ":").last!)!
                return
            }
            usleep(20_000)
        }
        process.terminate()
        throw OffloadTestError("offload serve did not start listening: \(stderr)")
    }

    var stderr: String { lock.lock(); defer { lock.unlock() }; return log }
    var base: String { "http://127.0.0.1:\(port)" }

    func stop() {
        if process.isRunning { process.interrupt(); process.waitUntilExit() }
    }
    deinit { stop() }

    /// Resident memory of the server process (kB), from /proc.
    var residentKB: Int {
        guard let s = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return 0 }
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
}

struct OffloadTestError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

enum OpenAIClient {
    static var python: String { CLI.cache + "/openai-venv/bin/python" }
    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Support/openai_client.py").path
    }

    /// Runs `calls` through Support/openai_client.py against `server`; one result per call.
    static func run(_ calls: [[String: Any]], server: ServerProcess, apiKey: String? = nil,
                    file: StaticString = #filePath, line: UInt = #line) throws -> [[String: Any]] {
        guard FileManager.default.isExecutableFile(atPath: python) else {
            XCTFail("missing \(python): run scripts/fetch-assets.sh (it installs the openai client)", file: file, line: line)
            throw CocoaError(.fileNoSuchFile)
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [script]
        var env = ProcessInfo.processInfo.environment
        env["OFFLOAD_SERVER"] = server.base
        env["OFFLOAD_API_KEY"] = apiKey
        p.environment = env
        let input = Pipe(), out = Pipe(), err = Pipe()
        p.standardInput = input; p.standardOutput = out; p.standardError = err
        try p.run()
        input.fileHandleForWriting.write(try JSONSerialization.data(withJSONObject: calls))
        try input.fileHandleForWriting.close()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let results = try JSONSerialization.jsonObject(with: o) as? [[String: Any]] else {
            XCTFail("client failed: \(String(decoding: e, as: UTF8.self))", file: file, line: line)
            throw CocoaError(.fileReadCorruptFile)
        }
        for r in results where r["exception"] != nil { XCTFail("client: \(r["exception"]!)", file: file, line: line) }
        return results
    }
}

final class ServeTests: XCTestCase {
    static let model = "SmolLM2-135M-Instruct.Q4_1"
    let prompts = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "The tide",
                   "In 1492, Columbus", "Water boils at", "My favourite colour is", "import numpy as np\n"]

    /// `offload generate`'s greedy text for `prompt`.
    func generated(_ prompt: String, maxTokens: Int) throws -> String {
        let r = try CLI.run(["generate", "--model", CLI.smolLM2, "--prompt", prompt, "--max-tokens", "\(maxTokens)",
                             "--temperature", "0", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        return try XCTUnwrap(j["text"] as? String)
    }

    func testCompletionsThroughTheOpenAIClientEqualGenerateAloneAndConcurrently() throws {
        let server = try ServerProcess(["--model", CLI.smolLM2, "--max-concurrent", "8"])
        let want = try prompts.map { try generated($0, maxTokens: 16) }
        func call(_ i: Int, stream: Bool) -> [String: Any] {
            var c: [String: Any] = ["op": "completion", "model": Self.model, "prompt": prompts[i], "max_tokens": 16,
                                    "temperature": 0, "stream": stream]
            if stream { c["stream_options"] = ["include_usage": true] }
            return c
        }
        // Alone: plain and streamed.
        let alone = try OpenAIClient.run([call(0, stream: false), call(0, stream: true)], server: server)
        XCTAssertEqual(alone[0]["text"] as? String, want[0])
        XCTAssertEqual(alone[1]["text"] as? String, want[0])
        XCTAssertEqual(alone[0]["object"] as? String, "text_completion")
        let usage = try XCTUnwrap(alone[0]["usage"] as? [String: Any])
        XCTAssertEqual(usage["completion_tokens"] as? Int, 16)
        XCTAssertGreaterThan(alone[1]["chunks"] as? Int ?? 0, 2, "streamed in several events")
        // Eight at once, half streamed: the same texts.
        let together = try OpenAIClient.run([["op": "concurrent", "calls": prompts.indices.map { call($0, stream: $0 % 2 == 0) }]],
                                            server: server)
        let results = try XCTUnwrap(together[0]["results"] as? [[String: Any]])
        XCTAssertEqual(results.map { $0["text"] as? String ?? "<\($0)>" }, want)
        // The metrics counted every token the responses report, and decode steps were shared.
        let tokens = try (alone + results).map { r -> Int in
            let u = try XCTUnwrap(r["usage"] as? [String: Any], "usage of \(r)")
            return try XCTUnwrap(u["completion_tokens"] as? Int)
        }.reduce(0, +)
        let metrics = try OpenAIClient.run([["op": "raw", "method": "GET", "path": "/metrics"]], server: server)[0]
        let text = try XCTUnwrap(metrics["body"] as? String)
        XCTAssertTrue(text.contains("offload_generated_tokens_total \(tokens)\n"), "\(tokens) tokens: \(text)")
        let steps = try XCTUnwrap(text.split(separator: "\n").first { $0.hasPrefix("offload_decode_steps_total ") })
        XCTAssertLessThan(Int(steps.split(separator: " ")[1])!, tokens / 2, "decode steps not shared: \(steps)")
    }

    /// `offload generate --chat`'s greedy answer to `user` (after `system`).
    func chatAnswer(_ user: String, system: String? = nil, maxTokens: Int) throws -> String {
        let r = try CLI.run(["generate", "--model", CLI.smolLM2, "--chat", "--prompt", user, "--max-tokens", "\(maxTokens)",
                             "--temperature", "0", "--json"] + (system.map { ["--system", $0] } ?? []))
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        return try XCTUnwrap(j["text"] as? String)
    }

    func testChatThroughTheOpenAIClientEqualsGenerateWithTheChatTemplate() throws {
        let server = try ServerProcess(["--model", CLI.smolLM2, "--max-concurrent", "8"])
        let questions = ["What is the capital of France?", "Name a prime number.", "Say hello in Spanish.",
                         "What colour is the sky?", "How many legs has a spider?", "Write a haiku about tea.",
                         "What is 2 + 2?", "Who wrote Hamlet?"]
        let system = "You answer in one short sentence."
        let want = try questions.enumerated().map { i, q in try chatAnswer(q, system: i % 2 == 0 ? system : nil, maxTokens: 24) }
        func call(_ i: Int, stream: Bool) -> [String: Any] {
            var messages: [[String: Any]] = [["role": "user", "content": questions[i]]]
            if i % 2 == 0 { messages.insert(["role": "system", "content": system], at: 0) }
            return ["op": "chat", "model": Self.model, "messages": messages, "max_tokens": 24, "temperature": 0,
                    "stream": stream]
        }
        let alone = try OpenAIClient.run([call(0, stream: false), call(1, stream: true)], server: server)
        XCTAssertEqual(alone[0]["text"] as? String, want[0])
        XCTAssertEqual(alone[0]["object"] as? String, "chat.completion")
        XCTAssertEqual(alone[1]["text"] as? String, want[1])
        let together = try OpenAIClient.run([["op": "concurrent", "calls": questions.indices.map { call($0, stream: $0 % 3 == 0) }]],
                                            server: server)
        let results = try XCTUnwrap(together[0]["results"] as? [[String: Any]])
        XCTAssertEqual(results.map { $0["text"] as? String ?? "<\($0)>" }, want)
        // The template ended each answer with its end-of-turn token, not the length limit.
        XCTAssertEqual(alone[0]["finish_reason"] as? String, "stop")
    }

    func testChatCommandKeepsTheConversationInItsCache() throws {
        let first = try chatAnswer("What is the capital of France?", maxTokens: 40)
        let (o, e) = try chat(["--max-tokens", "40"],
                              input: "What is the capital of France?\nAnd of Italy?\n/reset\nWhat is the capital of France?\n/exit\n")
        let answers = o.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        XCTAssertEqual(answers.first, first, "the first answer is generate --chat's")
        XCTAssertEqual(answers.count, 4, o)   // three answers and the last newline
        XCTAssertEqual(answers[2], first, "after /reset the same question gets the same answer")
        // Turn two prefilled only its new tokens; after /reset the cache still held the first turn's prompt.
        let turns = e.split(separator: "\n").filter { $0.contains("prefilled") }
        XCTAssertEqual(turns.count, 3, e)
        func reused(_ line: Substring) -> Int { Int(line.split(separator: "(")[1].split(separator: " ")[0])! }
        XCTAssertEqual(reused(turns[0]), 0)
        XCTAssertGreaterThan(reused(turns[1]), 30, String(turns[1]))
        XCTAssertGreaterThan(reused(turns[2]), 30, String(turns[2]))
        XCTAssertTrue(e.contains("conversation reset"), e)
    }

    /// `offload chat` greedy on SmolLM2 with `args`, fed `input`: its standard output and error (it must exit 0).
    private func chat(_ args: [String], input text: String) throws -> (out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.binary)
        p.arguments = ["chat", "--model", CLI.smolLM2, "--temperature", "0"] + args
        let input = Pipe(), out = Pipe(), err = Pipe()
        p.standardInput = input; p.standardOutput = out; p.standardError = err
        try p.run()
        input.fileHandleForWriting.write(Data(text.utf8))
        try input.fileHandleForWriting.close()
        let o = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, e)
        return (o, e)
    }

    /// `chat --prompt-cache`: a long opening is loaded warm (its blocks of 256 tokens) and every answer,
    /// the later turn's too, is the cold run's.
    func testChatLoadsItsOpeningFromThePromptCache() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("chat-pc-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let system = String(repeating: "You answer questions about European geography in one short sentence. ", count: 30)
        func run() throws -> (answers: [String], reused: [Int]) {
            let (o, e) = try chat(["--max-tokens", "16", "--system", system, "--prompt-cache", dir],
                                  input: "What is the capital of France?\nAnd of Italy?\n/exit\n")
            let turns = e.split(separator: "\n").filter { $0.contains("prefilled") }
            XCTAssertEqual(turns.count, 2, e)
            return (o.split(separator: "\n", omittingEmptySubsequences: false).map(String.init),
                    turns.map { Int($0.split(separator: "(")[1].split(separator: " ")[0])! })
        }
        let cold = try run(), warm = try run()
        XCTAssertEqual(cold.reused.first, 0)
        XCTAssertGreaterThanOrEqual(warm.reused.first ?? 0, 256, "the opening's block loaded")
        XCTAssertEqual(warm.answers, cold.answers, "warm answers differ from cold")
    }

    func testStopSequencesMaxTokensAndSamplingOptions() throws {
        let server = try ServerProcess(["--model", CLI.smolLM2])
        let full = try generated(prompts[0], maxTokens: 16)   // " Paris.\n\nThe answer is..." or similar
        let stopAt = String(full.dropFirst(3).prefix(2))
        let r = try OpenAIClient.run([
            ["op": "completion", "model": Self.model, "prompt": prompts[0], "max_tokens": 16, "temperature": 0, "stop": [stopAt]],
            ["op": "completion", "model": Self.model, "prompt": prompts[0], "max_tokens": 16, "temperature": 0, "stop": stopAt,
             "stream": true],
            ["op": "completion", "model": Self.model, "prompt": prompts[0], "max_tokens": 3, "temperature": 0],
            ["op": "completion", "model": Self.model, "prompt": prompts[1], "max_tokens": 12, "temperature": 0.9, "seed": 7],
            ["op": "completion", "model": Self.model, "prompt": prompts[1], "max_tokens": 12, "temperature": 0.9, "seed": 7],
        ], server: server)
        let cut = String(full[..<full.range(of: stopAt)!.lowerBound])
        XCTAssertEqual(r[0]["text"] as? String, cut)
        XCTAssertEqual(r[0]["finish_reason"] as? String, "stop")
        XCTAssertEqual(r[1]["text"] as? String, cut, "a stop string split over streamed tokens")
        XCTAssertEqual(r[1]["finish_reason"] as? String, "stop")
        XCTAssertEqual(r[2]["finish_reason"] as? String, "length")
        XCTAssertTrue(full.hasPrefix(r[2]["text"] as? String ?? "?"))
        XCTAssertEqual(r[3]["text"] as? String, r[4]["text"] as? String, "the same seed samples the same text")
    }

    func testBadRequestsGetOpenAIShapedErrorsAndTheServerKeepsServing() throws {
        let server = try ServerProcess(["--model", CLI.smolLM2, "--api-key", "sekret", "--max-body", "4KB",
                                        "--context", "64"])
        let auth = ["Content-Type": "application/json", "Authorization": "Bearer sekret"]
        func raw(_ body: String?, path: String = "/v1/completions", method: String = "POST",
                 headers: [String: String]? = nil) -> [String: Any] {
            var c: [String: Any] = ["op": "raw", "method": method, "path": path, "headers": headers ?? auth]
            if let body { c["body"] = body }
            return c
        }
        let good = #"{"model": "\#(Self.model)", "prompt": "Hi", "max_tokens": 2}"#
        let long = String(repeating: "word ", count: 100)
        let cases: [(call: [String: Any], status: Int, param: String?)] = [
            (raw("{\"model\": "), 400, nil),                                                 // malformed JSON
            (raw("[1, 2]"), 400, nil),                                                        // not an object
            (raw(#"{"model": "\#(Self.model)", "prompt": "Hi", "max_tokens": "2"}"#), 400, "max_tokens"),
            (raw(#"{"model": "\#(Self.model)", "prompt": 5}"#), 400, "prompt"),
            (raw(#"{"model": "\#(Self.model)", "prompt": "Hi", "temperature": true}"#), 400, "temperature"),
            (raw(#"{"model": "\#(Self.model)", "prompt": "Hi", "n": 3}"#), 400, "n"),
            (raw(#"{"model": "\#(Self.model)", "prompt": "Hi", "logprobs": 2}"#), 400, "logprobs"),
            (raw(#"{"model": "gpt-9", "prompt": "Hi"}"#), 404, "model"),
            (raw(#"{"model": "\#(Self.model)", "prompt": "\#(long)"}"#), 400, "prompt"),     // past --context 64
            (raw(#"{"model": "\#(Self.model)", "prompt": "\#(String(repeating: "x", count: 5000))"}"#), 413, nil),
            (raw(good, headers: ["Content-Type": "application/json"]), 401, nil),           // no key
            (raw(good, headers: ["Content-Type": "application/json", "Authorization": "Bearer wrong"]), 401, nil),
            (raw(nil, path: "/v1/nothing", method: "GET"), 404, nil),
            (raw(#"{"model": "\#(Self.model)", "messages": "hello"}"#, path: "/v1/chat/completions"), 400, nil),
        ]
        let results = try OpenAIClient.run(cases.map(\.call) + [raw(good)], server: server)
        for ((_, status, param), r) in zip(cases, results) {
            XCTAssertEqual(r["status"] as? Int, status, "\(r)")
            let error = (r["json"] as? [String: Any])?["error"] as? [String: Any]
            XCTAssertNotNil(error?["message"] as? String, "OpenAI error shape: \(r)")
            XCTAssertNotNil(error?["type"] as? String, "\(r)")
            if let param { XCTAssertEqual(error?["param"] as? String, param, "\(r)") }
        }
        // And after all of that it still answers.
        XCTAssertEqual(results.last?["status"] as? Int, 200, "\(results.last!)")
        // The client library sees the same statuses.
        let viaClient = try OpenAIClient.run([["op": "completion", "model": "gpt-9", "prompt": "Hi"]], server: server,
                                             apiKey: "sekret")
        XCTAssertEqual(viaClient[0]["status"] as? Int, 404)
    }

    /// `plan --mode serve` answers for `serve --budget`: the same number of sequences, and the
    /// served text under the budget (KV on disk when only one sequence fits) is generate's.
    func testPlanAnswersForServeUnderABudget() throws {
        for (budget, want) in [("32MB", 7), ("10MB", 1)] {
            let plan = try CLI.run(["plan", "--model", CLI.smolLM2, "--mode", "serve", "--budget", budget, "--seq-len", "64",
                                    "--json"])
            XCTAssertEqual(plan.status, 0, plan.stderr)
            let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(plan.stdout.utf8)) as? [String: Any])
            let planned = try XCTUnwrap(j["sequences"] as? Int)
            XCTAssertEqual(planned, want, "SmolLM2's 46 KB of KV per position at \(budget)")
            let server = try ServerProcess(["--model", CLI.smolLM2, "--budget", budget, "--context", "64"])
            XCTAssertTrue(server.stderr.contains("(\(planned) sequence\(planned == 1 ? "" : "s") of 64 positions"), server.stderr)
            let r = try OpenAIClient.run([["op": "completion", "model": Self.model, "prompt": prompts[0], "max_tokens": 12,
                                           "temperature": 0]], server: server)
            XCTAssertEqual(r[0]["text"] as? String, try generated(prompts[0], maxTokens: 12), "under \(budget)")
        }
        let refused = try CLI.run(["plan", "--model", CLI.smolLM2, "--mode", "serve", "--budget", "3MB", "--seq-len", "64"])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stderr.contains("below the minimum"), refused.stderr)
    }

    func testAPortInUseAndAMissingModelAreClearErrors() throws {
        let first = try ServerProcess(["--model", CLI.smolLM2])
        let r = try CLI.run(["serve", "--model", CLI.smolLM2, "--port", "\(first.port)"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("127.0.0.1:\(first.port)") && r.stderr.contains("already in use"), r.stderr)
        let missing = try CLI.run(["serve", "--model", "/nonexistent/model.gguf"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("/nonexistent/model.gguf"), missing.stderr)
        let noTemplate = try CLI.run(["chat", "--model", CLI.cache + "/models/gemma-3-270m-q4_k_m.gguf"])
        XCTAssertNotEqual(noTemplate.status, 0)
        XCTAssertTrue(noTemplate.stderr.contains("has no chat template"), noTemplate.stderr)
    }

    func testAFullQueueAnswers429AndADisconnectedStreamFreesItsSequence() throws {
        let server = try ServerProcess(["--model", CLI.smolLM2, "--max-concurrent", "1", "--max-queue", "1"])
        // Sampled with a fixed seed: 300 tokens that do not end early (checked below), so the first
        // request still runs when the others arrive.
        let long: [String: Any] = ["op": "completion", "model": Self.model, "prompt": "Once upon a time", "max_tokens": 300,
                                   "temperature": 1, "seed": 3]
        let results = try OpenAIClient.run([["op": "concurrent", "calls": Array(repeating: long, count: 4)]], server: server)
        let answered = try XCTUnwrap(results[0]["results"] as? [[String: Any]])
        let statuses = answered.map { $0["status"] as? Int ?? 200 }
        for r in answered where r["usage"] != nil {
            XCTAssertEqual((r["usage"] as? [String: Any])?["completion_tokens"] as? Int, 300, "ended early: \(r)")
        }
        XCTAssertEqual(statuses.filter { $0 == 200 }.count, 2, "one running and one waiting: \(statuses)")
        XCTAssertEqual(statuses.filter { $0 == 429 }.count, 2, "\(statuses)")
        // A client that hangs up after the first event: its sequence is cancelled, and the next request runs.
        let body = #"{"model": "\#(Self.model)", "prompt": "Count:", "max_tokens": 2000, "stream": true}"#
        let r = try OpenAIClient.run([["op": "disconnect", "path": "/v1/completions", "body": body],
                                      ["op": "completion", "model": Self.model, "prompt": "Hi", "max_tokens": 2]], server: server)
        XCTAssertEqual(r[0]["got_event"] as? Bool, true)
        XCTAssertNotNil(r[1]["text"] as? String, "\(r[1])")
        let metrics = try OpenAIClient.run([["op": "raw", "method": "GET", "path": "/metrics"]], server: server)[0]
        let text = try XCTUnwrap(metrics["body"] as? String)
        XCTAssertTrue(text.contains("offload_requests_finished_total{reason=\"cancelled\"} 1"), text)
        XCTAssertTrue(text.contains("offload_running_sequences 0"), text)
    }
}

final class ServeFuzzTests: XCTestCase {
    /// 1,000 malformed or hostile requests (Support/fuzz_requests.py): no crash, no 5xx, every
    /// error in OpenAI's shape, the server still answers, and its memory is back near idle.
    func testThousandHostileRequestsLeaveTheServerUpAndItsMemoryAtIdle() throws {
        let server = try ServerProcess(["--model", CLI.smolLM2, "--context", "128", "--max-body", "64KB"])
        let warm: [[String: Any]] = (0..<4).map { _ in
            ["op": "completion", "model": ServeTests.model, "prompt": "Count to ten:", "max_tokens": 100, "temperature": 0,
             "stream": true]
        }
        _ = try OpenAIClient.run([["op": "concurrent", "calls": warm]], server: server)
        let idle = server.residentKB
        let p = Process()
        p.executableURL = URL(fileURLWithPath: OpenAIClient.python)
        p.arguments = [URL(fileURLWithPath: OpenAIClient.script).deletingLastPathComponent()
            .appendingPathComponent("fuzz_requests.py").path, ServeTests.model, "1000"]
        p.environment = ProcessInfo.processInfo.environment.merging(["OFFLOAD_SERVER": server.base]) { $1 }
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let summary = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let statuses = try XCTUnwrap(summary["statuses"] as? [String: Int])
        XCTAssertEqual(statuses.values.reduce(0, +), 1000)
        XCTAssertTrue(server.process.isRunning, "the server died: \(server.stderr.suffix(2000))")
        for (s, n) in statuses {
            XCTAssertFalse(s.hasPrefix("5") || s.hasPrefix("exception"), "\(n) requests got \(s): \(statuses)")
        }
        XCTAssertEqual(summary["bad_error_shape"] as? Int, 0, "errors not in OpenAI's shape: \(statuses)")
        // Still serving, and the dropped streams freed their sequences.
        let after = try OpenAIClient.run([["op": "completion", "model": ServeTests.model, "prompt": "Hi", "max_tokens": 2],
                                          ["op": "raw", "method": "GET", "path": "/metrics"]], server: server)
        XCTAssertNotNil(after[0]["text"] as? String, "\(after[0])")
        XCTAssertTrue((after[1]["body"] as? String ?? "").contains("offload_running_sequences 0"))
        let grown = server.residentKB - idle
        XCTAssertLessThan(grown, 32 * 1024, "resident memory grew by \(grown) kB over 1,000 requests (idle \(idle) kB)")
    }
}
