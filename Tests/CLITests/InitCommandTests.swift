// `offload init`: a random model of a built-in shape that the other commands load,
// with the tensor types asked for, unit norms, and the same bytes for the same seed.
import Foundation
import Formats
import Tensors
import XCTest

final class InitCommandTests: XCTestCase {
    func testInitWritesALoadableDeterministicModel() throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let a = dir.appendingPathComponent("a.gguf").path, b = dir.appendingPathComponent("b.gguf").path
        let c = dir.appendingPathComponent("c.gguf").path
        for (path, seed, type) in [(a, "1", "q8_0"), (b, "1", "q8_0"), (c, "2", "f16")] {
            let r = try CLI.run(["init", "--config", "small", "--type", type, "--seed", seed, "--out", path])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        XCTAssertEqual(try sha256Hex(ofFile: a), try sha256Hex(ofFile: b), "same seed, same bytes")
        let f = try GGUFFile(path: a), g = try GGUFFile(path: c)
        XCTAssertEqual(f.int("llama.block_count"), 4)
        XCTAssertEqual(f.info("blk.0.ffn_up.weight")?.dtype, .q8_0)
        XCTAssertEqual(g.info("blk.0.ffn_up.weight")?.dtype, .f16)
        let norm = try f.data("blk.1.attn_norm.weight")
        XCTAssertEqual(Set(norm.bytes.bindMemory(to: Float.self)), [1])
        let wa = try f.data("blk.0.attn_q.weight").bytes, wc = try g.data("blk.0.attn_q.weight").bytes
        XCTAssertNotEqual(Array(wa.prefix(64)), Array(wc.prefix(64)))
        // Every parameter of the config is there, and generate runs on it.
        let inspect = try CLI.run(["inspect", a, "--json"])
        let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(obj["parameters"] as? Int, 4 * (256 * 2 + 256 * 256 * 2 + 128 * 256 * 2 + 688 * 256 * 3) + 1024 * 256 * 2 + 256)
        let gen = try CLI.run(["generate", "--model", a, "--prompt", "ab", "--max-tokens", "3", "--temperature", "0",
                               "--ignore-eos", "--json"])
        XCTAssertEqual(gen.status, 0, gen.stderr)
        let bad = try CLI.run(["init", "--config", "small", "--type", "q4_k", "--out", a])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--type"), bad.stderr)
    }

    /// A mixture of experts: the expert keys and merged expert tensors, every tensor on a page (for
    /// direct reads), routers in f32; it runs in memory and with expert offloading, the same tokens.
    func testInitWritesAMixtureOfExperts() throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("moe.gguf").path
        let r = try CLI.run(["init", "--config", "small-moe", "--type", "q4_0", "--out", path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.int("llama.expert_count"), 8)
        XCTAssertEqual(f.int("llama.expert_used_count"), 2)
        XCTAssertEqual(f.int("general.alignment"), 4096)
        for t in f.tensors { XCTAssertEqual(f.fileOffset(of: t.name)! % 4096, 0, t.name) }
        XCTAssertEqual(f.info("blk.0.ffn_gate_exps.weight")?.dtype, .q4_0)
        XCTAssertEqual(f.info("blk.0.ffn_gate_exps.weight")?.shape, [8, 512, 256])
        XCTAssertEqual(f.info("blk.0.ffn_gate_inp.weight")?.dtype, .f32)
        var tokens: [String] = []
        for extra in [[], ["--budget", "3MB"]] {
            let g = try CLI.run(["generate", "--model", path, "--prompt-tokens", "6", "--seed", "1", "--max-tokens", "6",
                                 "--temperature", "0", "--ignore-eos", "--json"] + extra)
            XCTAssertEqual(g.status, 0, g.stderr)
            let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(g.stdout.utf8)) as? [String: Any])
            tokens.append("\(o["tokens"] ?? "")")
            if !extra.isEmpty { XCTAssertNotNil(o["experts"], "expert offloading ran") }
        }
        XCTAssertEqual(tokens[0], tokens[1])
    }
}
