// `generate --prompt-cache DIR`: a prompt's whole blocks of 256 tokens stored on disk and loaded by a
// later run that starts with the same tokens — the same tokens warm and cold, with and without a
// budget; torn, corrupt and other models' entries never used; the folder kept under its limit.
import Foundation
import XCTest

final class PromptCacheCLITests: XCTestCase {
    func args(_ promptTokens: Int, model: String = CLI.smolLM2) -> [String] {
        ["generate", "--model", model, "--prompt-tokens", "\(promptTokens)", "--seed", "5", "--temperature", "0",
         "--max-tokens", "6", "--ignore-eos", "--threads", "2", "--json"]
    }

    func run(_ a: [String], file: StaticString = #filePath, line: UInt = #line) throws -> (tokens: [Int], cached: Int) {
        let r = try CLI.run(a)
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        return (try XCTUnwrap(o["tokens"] as? [Int], file: file, line: line),
                try XCTUnwrap(o["cached_prompt_tokens"] as? Int, file: file, line: line))
    }

    func entries(_ dir: URL) throws -> [URL] {
        try FileManager.default.contentsOfDirectory(at: dir, includingPropertiesForKeys: nil)
            .filter { $0.pathExtension == "kvblock" }.sorted { $0.path < $1.path }
    }

    func testWarmEqualsColdWithAndWithoutABudgetAndALongerPromptReusesThePrefix() throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let cache = ["--prompt-cache", dir.path]
        let cold = try run(args(700))
        let first = try run(args(700) + cache)
        XCTAssertEqual(first.tokens, cold.tokens)
        XCTAssertEqual(first.cached, 0)
        XCTAssertEqual(try entries(dir).count, 2, "700 tokens hold two whole blocks of 256")
        let warm = try run(args(700) + cache)
        XCTAssertEqual(warm.cached, 512)
        XCTAssertEqual(warm.tokens, cold.tokens, "warm and cold differ")
        // Streamed under a budget, KV heads on disk: the same blocks load into them.
        let budgeted = try run(args(700) + cache + ["--budget", "16MB"])
        XCTAssertEqual(budgeted.cached, 512)
        XCTAssertEqual(budgeted.tokens, cold.tokens, "warm under --budget differs")
        // A longer prompt with the same first 700 tokens (the same seed): two blocks loaded, a third stored.
        let longCold = try run(args(1000))
        let longWarm = try run(args(1000) + cache)
        XCTAssertEqual(longWarm.cached, 512)
        XCTAssertEqual(longWarm.tokens, longCold.tokens)
        XCTAssertEqual(try entries(dir).count, 3)
        XCTAssertEqual(try run(args(1000) + cache).cached, 768)
        // Fewer than 9 tokens left after the blocks: one block fewer is used (the direct path's rows).
        XCTAssertEqual(try run(args(520) + cache).cached, 256)
    }

    func testTornCorruptAndForeignEntriesAreNeverUsed() throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let cache = ["--prompt-cache", dir.path]
        let cold = try run(args(600))
        _ = try run(args(600) + cache)
        let stored = try entries(dir)
        XCTAssertEqual(stored.count, 2)
        // Another model (the same shapes and tokenizer, requantized) with the same token ids: no entry is its.
        let other = CLI.cache + "/models/quant/SmolLM2-135M-Instruct.Q4_K_M.gguf"
        let otherCold = try run(args(600, model: other))
        let foreign = try run(args(600, model: other) + cache)
        XCTAssertEqual(foreign.cached, 0, "another model's entries were used")
        XCTAssertEqual(foreign.tokens, otherCold.tokens)
        // A writer that died mid-entry without the rename (a leftover temporary) and a torn entry.
        let blocks = try entries(dir).filter { stored.contains($0) }
        XCTAssertEqual(blocks.count, 2)
        try Data(repeating: 7, count: 1000).write(to: dir.appendingPathComponent(".tmp-99999-deadbeef"))
        let whole = try Data(contentsOf: blocks[1])
        // Which file is block 1 is unknown from its name (a hash): tear the one whose header says block 1.
        let blockIndex = { (d: Data) in d.subdata(in: 92..<96).withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } }
        let second = blockIndex(whole) == 1 ? blocks[1] : blocks[0]
        let secondData = try Data(contentsOf: second)
        try secondData.prefix(secondData.count / 2).write(to: second)
        let torn = try run(args(600) + cache)
        XCTAssertEqual(torn.cached, 256, "the torn block must not be used")
        XCTAssertEqual(torn.tokens, cold.tokens)
        // A flipped bit in the first block's payload: its checksum fails, nothing is used, the file goes.
        let first = blocks.first { $0 != second }!
        var data = try Data(contentsOf: first)
        data[data.count - 100] ^= 0x10
        try data.write(to: first)
        let corrupt = try run(args(600) + cache)
        XCTAssertEqual(corrupt.cached, 0, "a corrupt block was used")
        XCTAssertEqual(corrupt.tokens, cold.tokens)
        // The run stored its blocks again; the next one uses them.
        XCTAssertEqual(try run(args(600) + cache).cached, 512)
    }

    func testTheFolderStaysUnderItsLimitAndBadFlagsAreRefused() throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        // One SmolLM2 block is 30 layers × 2 × 256 × 192 floats ≈ 11.3 MiB: a 20 MB limit keeps one.
        _ = try run(args(600) + ["--prompt-cache", dir.path, "--prompt-cache-limit", "20MB"])
        let left = try entries(dir)
        XCTAssertEqual(left.count, 1)
        let bytes = try left.reduce(0) { $0 + (try FileManager.default.attributesOfItem(atPath: $1.path)[.size] as! Int) }
        XCTAssertLessThanOrEqual(bytes, 20_000_000)
        let file = dir.appendingPathComponent("plain")
        try Data().write(to: file)
        let notFolder = try CLI.run(args(600) + ["--prompt-cache", file.path])
        XCTAssertNotEqual(notFolder.status, 0)
        XCTAssertTrue(notFolder.stderr.contains("\(file.path) is not a folder"), notFolder.stderr)
        let limit = try CLI.run(args(600) + ["--prompt-cache", dir.path, "--prompt-cache-limit", "lots"])
        XCTAssertNotEqual(limit.status, 0)
        XCTAssertTrue(limit.stderr.contains("--prompt-cache-limit must be a size"), limit.stderr)
        let alone = try CLI.run(args(600) + ["--prompt-cache-limit", "1GB"])
        XCTAssertNotEqual(alone.status, 0)
        XCTAssertTrue(alone.stderr.contains("--prompt-cache-limit needs --prompt-cache"), alone.stderr)
    }
}
