// `offload generate --budget`: the streamed run as a user runs it — the same
// greedy tokens as without a budget, the report, the trace, the error below
// the minimum.
import Foundation
import XCTest

final class StreamingCLITests: XCTestCase {
    func json(_ r: CommandResult, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        return try XCTUnwrap(obj, "not a JSON object: \(r.stdout)", file: file, line: line)
    }

    let base = ["generate", "--model", CLI.smolLM2, "--prompt", "The tide came in and", "--temperature", "0",
                "--max-tokens", "16", "--ignore-eos", "--threads", "2"]

    func testBudgetedGreedyTokensEqualUnbudgetedAndReportIsComplete() throws {
        let plain = try json(CLI.run(base + ["--json"]))
        let tokens = try XCTUnwrap(plain["tokens"] as? [Int])
        XCTAssertEqual(tokens.count, 16)
        for budget in ["64MB", "8MB"] {
            let out = try json(CLI.run(base + ["--json", "--budget", budget]))
            XCTAssertEqual(out["tokens"] as? [Int], tokens, "--budget \(budget)")
            let s = try XCTUnwrap(out["streaming"] as? [String: Any])
            let budgetBytes = try XCTUnwrap(s["budget_bytes"] as? Int)
            XCTAssertLessThanOrEqual(s["peak_compute_bytes"] as? Int ?? .max, budgetBytes)
            XCTAssertGreaterThan(s["streamed_stages"] as? Int ?? 0, 0)
            // Streamed decode reads megabytes per token; the limit and ratio are computed from them.
            XCTAssertGreaterThan(s["bytes_read_per_token"] as? Double ?? 0, 1e6)
            XCTAssertGreaterThan(s["disk_read_bytes_per_second"] as? Double ?? 0, 1e6)
            let ratio = s["ratio_to_limit"] as? Double ?? 0
            XCTAssertGreaterThan(ratio, 0.05)
            XCTAssertLessThan(ratio, 5)
            XCTAssertGreaterThan(out["time_to_first_token_seconds"] as? Double ?? 0, 0)
        }
    }

    func testTraceHasReadAndComputeSpansPerStage() throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("t.json").path
        let r = try CLI.run(base + ["--budget", "8MB", "--trace", path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("[stream] budget"), r.stderr)
        let root = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any]
        let events = try XCTUnwrap(root?["traceEvents"] as? [[String: Any]])
        let spans = events.filter { $0["ph"] as? String == "X" }.compactMap { $0["name"] as? String }
        XCTAssertTrue(spans.contains("read blk.29"), "no read span of the last block")
        XCTAssertTrue(spans.contains("compute blk.0"), "no compute span of the first block")
        XCTAssertGreaterThanOrEqual(spans.filter { $0 == "read blk.7" }.count, 16, "blk.7 read fewer times than forwards")
    }

    func testBudgetBelowMinimumSaysTheMinimum() throws {
        let r = try CLI.run(base + ["--budget", "1MB"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("below the minimum"), r.stderr)
        XCTAssertTrue(r.stderr.contains("KV cache"), r.stderr)
        XCTAssertTrue(r.stdout.isEmpty, r.stdout)
    }
}

final class StreamingPromptsCLITests: XCTestCase {
    func testPromptsFileGivesJSONLinesInInputOrderSameWithAndWithoutBudget() throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("p.txt")
        try "The tide came in and\n{\"prompt\": \"Once upon a time\"}\n\nHi\nWhat is the capital of France?\n"
            .write(to: file, atomically: true, encoding: .utf8)
        let args = ["generate", "--model", CLI.smolLM2, "--prompts", file.path, "--temperature", "0",
                    "--max-tokens", "8", "--ignore-eos", "--threads", "2"]
        let plain = try CLI.run(args)
        XCTAssertEqual(plain.status, 0, plain.stderr)
        let blocked = try CLI.run(args + ["--budget", "12MB", "--json"])
        XCTAssertEqual(blocked.status, 0, blocked.stderr)
        XCTAssertEqual(blocked.stdout, plain.stdout)
        let lines = plain.stdout.split(separator: "\n").map {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        XCTAssertEqual(lines.count, 4)
        XCTAssertEqual(lines.map { $0?["index"] as? Int }, [0, 1, 2, 3])
        XCTAssertEqual(lines.map { ($0?["tokens"] as? [Int])?.count }, [8, 8, 8, 8])
        let summary = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(blocked.stderr.utf8)) as? [String: Any])
        XCTAssertEqual(summary["block_size"] as? Int, 4)
        let s = try XCTUnwrap(summary["streaming"] as? [String: Any])
        XCTAssertLessThanOrEqual(s["peak_compute_bytes"] as? Int ?? .max, 12_000_000)
    }
}

/// A long prompt under a budget: prefilled in passes the plan sizes, so the budget it needs is
/// bounded by a pass's activations rather than the prompt's, and the tokens are the unbudgeted
/// run's from that smallest budget up (KV heads on disk or not, any pass size).
final class ChunkedPrefillCLITests: XCTestCase {
    let prompt = 1500, context = 1508
    var base: [String] {
        ["generate", "--model", CLI.smolLM2, "--prompt-tokens", "\(prompt)", "--seed", "11", "--temperature", "0",
         "--max-tokens", "8", "--ignore-eos", "--threads", "2", "--json"]
    }

    func json(_ r: CommandResult, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
                             r.stdout, file: file, line: line)
    }

    func testSameTokensFromTheSmallestBudgetUpAndPlanAgrees() throws {
        let plain = try json(CLI.run(base))
        let tokens = try XCTUnwrap(plain["tokens"] as? [Int])
        XCTAssertEqual(tokens.count, 8)
        // What `plan` says the smallest budget is, and that in one pass the prompt would need far more.
        let planArgs = ["plan", "--model", CLI.smolLM2, "--mode", "generate", "--seq-len", "\(context)",
                        "--prompt-tokens", "\(prompt)", "--json"]
        let least = try XCTUnwrap(try json(CLI.run(planArgs))["minimumBudget"] as? Int)
        let onePass = try XCTUnwrap(try json(CLI.run(planArgs + ["--prefill-chunk", "2048"]))["minimumBudget"] as? Int)
        XCTAssertLessThan(Double(least), 0.5 * Double(onePass), "passes of 256 tokens should need far less than one pass")
        let below = try CLI.run(base + ["--budget", "\(least - 1)"])
        XCTAssertNotEqual(below.status, 0)
        XCTAssertTrue(below.stderr.contains("below the minimum") && below.stderr.contains("(\(least) bytes)"), below.stderr)
        var diskHeads: [Int] = []
        for (budget, extra) in [("\(least)", [String]()), ("24MB", []), ("48MB", []), ("48MB", ["--prefill-chunk", "512"]),
                                ("400MB", [])] {
            let out = try json(CLI.run(base + ["--budget", budget] + extra))
            XCTAssertEqual(out["tokens"] as? [Int], tokens, "--budget \(budget) \(extra)")
            let s = try XCTUnwrap(out["streaming"] as? [String: Any])
            XCTAssertLessThanOrEqual(try XCTUnwrap(s["peak_compute_bytes"] as? Int), try XCTUnwrap(s["budget_bytes"] as? Int))
            diskHeads.append(try XCTUnwrap(s["kv_disk_heads"] as? Int))
        }
        // SmolLM2: 30 layers of 3 KV heads. At the minimum every head is on disk; in between, some.
        XCTAssertEqual(diskHeads.first, 90, "at the minimum every KV head is on disk")
        XCTAssertEqual(diskHeads.last, 0, "with room, every KV head is in memory")
        XCTAssertTrue(diskHeads.contains { $0 > 0 && $0 < 90 }, "some heads on disk at some budget: \(diskHeads)")
    }

    /// The minimum budget hardly grows with the prompt: passes bound the activations, and the KV
    /// heads on disk are read through spans of fixed size.
    func testMinimumBudgetHardlyGrowsWithThePrompt() throws {
        func minimum(_ tokens: Int) throws -> Int {
            let r = try CLI.run(["plan", "--model", CLI.smolLM2, "--mode", "generate", "--seq-len", "\(tokens + 64)",
                                 "--prompt-tokens", "\(tokens)", "--json"])
            return try XCTUnwrap(try json(r)["minimumBudget"] as? Int)
        }
        let short = try minimum(500), long = try minimum(8000)
        XCTAssertLessThanOrEqual(Double(long), 1.5 * Double(short), "8,000 tokens need \(long) bytes, 500 need \(short)")
    }

    func testPrefillChunkMustBeWholeBlocks() throws {
        let r = try CLI.run(base + ["--prefill-chunk", "100"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--prefill-chunk must be a positive multiple of 256 tokens, got 100"), r.stderr)
    }
}
