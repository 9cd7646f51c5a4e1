// Bad model files and flags: one line on stderr naming the file and the problem,
// a non-zero exit, never a crash.
import Foundation
import Formats
import Tensors
import XCTest

final class BadInputTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try CLI.tempDir() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// A small valid llama GGUF (the "tiny" shape) whose bytes the cases then damage.
    func tinyModel(dropping missing: String? = nil) throws -> Data {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        let meta: [(String, Int)] = [("block_count", 1), ("embedding_length", 32), ("feed_forward_length", 64),
                                     ("attention.head_count", 2), ("attention.head_count_kv", 1),
                                     ("context_length", 64), ("vocab_size", 64)]
        for (k, v) in meta { w.set("llama." + k, .uint(UInt64(v), .uint32)) }
        let shapes: [(String, [Int])] = [
            ("token_embd.weight", [64, 32]), ("output_norm.weight", [32]),
            ("blk.0.attn_norm.weight", [32]), ("blk.0.ffn_norm.weight", [32]),
            ("blk.0.attn_q.weight", [32, 32]), ("blk.0.attn_k.weight", [16, 32]), ("blk.0.attn_v.weight", [16, 32]),
            ("blk.0.attn_output.weight", [32, 32]), ("blk.0.ffn_gate.weight", [64, 32]),
            ("blk.0.ffn_up.weight", [64, 32]), ("blk.0.ffn_down.weight", [32, 64]),
        ]
        for (name, shape) in shapes where name != missing {
            w.tensors.append(.init(name: name, dtype: .f32, shape: shape, data: Data(count: shape.reduce(1, *) * 4)))
        }
        return try w.encode()
    }

    func expectOneLineError(_ args: [String], mentions: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try CLI.run(args, file: file, line: line)
        XCTAssertNotEqual(r.status, 0, "expected failure for \(args)", file: file, line: line)
        let lines = r.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "expected one line on stderr, got: \(r.stderr)", file: file, line: line)
        for m in mentions {
            XCTAssertTrue(r.stderr.contains(m), "stderr \"\(r.stderr)\" does not mention \"\(m)\"", file: file, line: line)
        }
    }

    func write(_ data: Data, _ name: String) throws -> String {
        let url = dir.appendingPathComponent(name)
        try data.write(to: url)
        return url.path
    }

    func testTruncatedModel() throws {
        let real = try Data(contentsOf: URL(fileURLWithPath: CLI.smolLM2))
        let cases: [(Int, String)] = [(10, "too short"), (5000, "truncated"), (3_000_000, "past end of file"),
                                      (real.count - 100, "past end of file")]
        for (cut, problem) in cases {
            let path = try write(real.prefix(cut), "cut\(cut).gguf")
            try expectOneLineError(["inspect", path], mentions: ["cut\(cut).gguf", problem])
        }
    }

    func testCorruptedHeader() throws {
        var d = try tinyModel()
        d[0] = 0x58
        try expectOneLineError(["inspect", try write(d, "magic.gguf")], mentions: ["magic.gguf", "bad magic"])
        d = try tinyModel()
        d.replaceSubrange(4..<8, with: [9, 0, 0, 0])
        try expectOneLineError(["inspect", try write(d, "version.gguf")], mentions: ["version.gguf", "unsupported version 9"])
    }

    func testAbsurdCountsAndDimensions() throws {
        var d = try tinyModel()
        d.replaceSubrange(8..<16, with: withUnsafeBytes(of: UInt64(1) << 40) { Array($0) })
        try expectOneLineError(["inspect", try write(d, "count.gguf")], mentions: ["count.gguf", "tensor count"])
        // The first tensor info follows the metadata; find its first dimension by the name.
        d = try tinyModel()
        let name = Array("token_embd.weight".utf8)
        let at = d.firstRange(of: Data(name))!.upperBound + 4   // skip n_dims
        d.replaceSubrange(at..<at + 8, with: withUnsafeBytes(of: UInt64(1) << 50) { Array($0) })
        try expectOneLineError(["inspect", try write(d, "dim.gguf")], mentions: ["dim.gguf", "token_embd.weight", "dimension"])
    }

    func testOffsetPastEnd() throws {
        var d = try tinyModel()
        let name = Array("blk.0.ffn_down.weight".utf8)
        let at = d.firstRange(of: Data(name))!.upperBound + 4 + 2 * 8 + 4   // n_dims, 2 dims, type
        d.replaceSubrange(at..<at + 8, with: withUnsafeBytes(of: UInt64(1) << 30) { Array($0) })
        try expectOneLineError(["inspect", try write(d, "offset.gguf")], mentions: ["offset.gguf", "blk.0.ffn_down.weight", "past end"])
    }

    func testMissingTensor() throws {
        let path = try write(try tinyModel(dropping: "blk.0.attn_v.weight"), "missing.gguf")
        try expectOneLineError(["inspect", path], mentions: ["missing.gguf", "missing tensor blk.0.attn_v.weight"])
    }

    func testWrongSHA256() throws {
        let path = try write(try tinyModel(), "tiny.gguf")
        try expectOneLineError(["inspect", path, "--sha256", String(repeating: "0", count: 64)],
                               mentions: ["tiny.gguf", "sha256 mismatch", "expected 0000"])
    }

    func testBadFlagsAreRejectedWithTheirName() throws {
        let r = try CLI.run(["generate", "--model", CLI.smolLM2, "--prompt", "x", "--top-p", "2"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--top-p"), r.stderr)
        // A negative value reaches the option's own check (not "missing value"), in every command.
        for (args, says) in [(["generate", "--model", CLI.smolLM2, "--prompt", "x", "--max-tokens", "-3"], "--max-tokens must be 0 or more, got -3"),
                             (["generate", "--model", CLI.smolLM2, "--prompt", "x", "--temperature", "-.5"], "--temperature must be a number ≥ 0, got -0.5"),
                             (["train", "--config", "tiny", "--data", CLI.fixtures.appendingPathComponent("smollm2/hamlet_excerpt.txt").path, "--steps", "-2"], "--steps must be positive, got -2")] {
            let n = try CLI.run(args)
            XCTAssertNotEqual(n.status, 0, "\(args)")
            XCTAssertTrue(n.stderr.contains(says) && !n.stderr.contains("Missing value"), "\(args): \(n.stderr)")
        }
        let e = try CLI.run(["eval", "--model", dir.appendingPathComponent("nope.gguf").path, "--data",
                                CLI.fixtures.appendingPathComponent("smollm2/hamlet_excerpt.txt").path])
        XCTAssertNotEqual(e.status, 0)
        XCTAssertTrue(e.stderr.contains("nope.gguf"), e.stderr)
    }

    /// A context past the model's is planned at the model's (where generate and serve stop), and said so.
    func testPlanSaysWhenTheContextIsPastTheModels() throws {
        let model = dir.appendingPathComponent("tiny.gguf")
        try tinyModel().write(to: model)
        for mode in ["generate", "serve"] {
            let r = try CLI.run(["plan", "--model", model.path, "--mode", mode, "--seq-len", "100", "--budget", "4MB", "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stderr.contains("--seq-len 100 is past") && r.stderr.contains("context of 64 positions; planned at 64"),
                          "\(mode): \(r.stderr)")
            let out = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            XCTAssertEqual(out["seqLen"] as? Int, 64, mode)
            let within = try CLI.run(["plan", "--model", model.path, "--mode", mode, "--seq-len", "64", "--budget", "4MB", "--json"])
            XCTAssertFalse(within.stderr.contains("is past"), within.stderr)
        }
    }
}
