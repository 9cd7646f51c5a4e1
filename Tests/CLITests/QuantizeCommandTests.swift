// `offload quantize` and `offload export --type` end to end: the mix llama-quantize writes,
// a file the other commands load, and errors that say what to do.
import Foundation
import Formats
import Tensors
import XCTest

final class QuantizeCommandTests: XCTestCase {
    func testQuantizeWritesTheMixAndRefusesWhatItCannot() throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let src = dir.appendingPathComponent("f32.gguf").path, out = dir.appendingPathComponent("q.gguf").path
        XCTAssertEqual(try CLI.run(["init", "--config", "small", "--type", "f32", "--seed", "7", "--out", src]).status, 0)
        let r = try CLI.run(["quantize", src, out, "--type", "Q4_K_M", "--threads", "2"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("[quantize]") && r.stderr.contains("q4_k_m"), r.stderr)
        let f = try GGUFFile(path: out)
        XCTAssertEqual(f.int("general.file_type"), 15)
        XCTAssertEqual(f.info("blk.1.attn_v.weight")?.dtype, .q4_k)
        XCTAssertEqual(f.info("blk.2.attn_v.weight")?.dtype, .q6_k, "use_more_bits layer")
        XCTAssertEqual(f.info("blk.0.ffn_down.weight")?.dtype, .f16, "688-value rows fall back to f16")
        XCTAssertEqual(f.info("output.weight")?.dtype, .q6_k)
        XCTAssertEqual(f.info("blk.0.attn_norm.weight")?.dtype, .f32)
        XCTAssertNotNil(f.metadata["tokenizer.ggml.tokens"], "the source's vocabulary is copied")
        let gen = try CLI.run(["generate", "--model", out, "--prompt", "ab", "--max-tokens", "3", "--temperature", "0",
                               "--ignore-eos", "--json"])
        XCTAssertEqual(gen.status, 0, gen.stderr)
        // A quantized input is read too (dequantized first).
        let again = dir.appendingPathComponent("q8.gguf").path
        XCTAssertEqual(try CLI.run(["quantize", out, again, "--type", "q8_0"]).status, 0)
        XCTAssertEqual(try GGUFFile(path: again).info("blk.0.attn_q.weight")?.dtype, .q8_0)

        let bad = try CLI.run(["quantize", src, dir.appendingPathComponent("x.gguf").path, "--type", "q3_k"])
        XCTAssertNotEqual(bad.status, 0)
        for name in ["q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "q4_0"] { XCTAssertTrue(bad.stderr.contains(name), bad.stderr) }
        let missing = try CLI.run(["quantize", dir.appendingPathComponent("nope.gguf").path, out + "2", "--type", "q6_k"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("nope.gguf"), missing.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "2"), "nothing written on failure")
        let help = try CLI.run(["quantize", "--help"])
        XCTAssertTrue(help.stdout.contains("offload quantize") && help.stdout.contains("--type"), help.stdout)
    }

    func testExportOfACheckpointTakesTheMixes() throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = dir.appendingPathComponent("t.txt").path
        try String(repeating: "To be, or not to be, that is the question. ", count: 40).write(toFile: text, atomically: true, encoding: .utf8)
        let run = dir.appendingPathComponent("run").path
        let t = try CLI.run(["train", "--config", "small", "--data", text, "--batch", "1", "--seq-len", "32", "--steps", "1",
                             "--threads", "2", "--save", run])
        XCTAssertEqual(t.status, 0, t.stderr)
        let out = dir.appendingPathComponent("run.gguf").path
        let r = try CLI.run(["export", run, "--out", out, "--type", "q5_k_m"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let f = try GGUFFile(path: out)
        XCTAssertEqual(f.int("general.file_type"), 17)
        XCTAssertEqual(f.info("blk.1.ffn_up.weight")?.dtype, .q5_k)
        XCTAssertEqual(f.info("blk.3.attn_v.weight")?.dtype, .q6_k)
        let bad = try CLI.run(["export", run, "--out", out, "--type", "q4_k_s"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("q4_k_m"), bad.stderr)
    }
}
