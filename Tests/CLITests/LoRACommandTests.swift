// `offload train --lora-rank` as a user runs it on SmolLM2's Q4_1 file: a peft adapter folder as the
// checkpoint, a stopped-and-resumed run bit-identical to an uninterrupted one, the adapter applied by
// `generate --lora` and `eval --lora`, and one-line errors for LoRA options that cannot work.
import Foundation
import XCTest

final class LoRACommandTests: XCTestCase {
    var dir: URL!
    override func setUpWithError() throws { dir = try CLI.tempDir() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    var text: String { CLI.fixtures.appendingPathComponent("smollm2/hamlet_excerpt.txt").path }

    func train(_ extra: [String]) throws -> CommandResult {
        try CLI.run(["train", "--model", CLI.smolLM2, "--data", text, "--lora-rank", "4", "--lora-alpha", "16",
                     "--lora-targets", "q,v,down", "--lora-dropout", "0.1", "--batch", "1", "--seq-len", "32", "--steps", "4", "--lr", "1e-3",
                     "--threads", "2"] + extra)
    }

    func losses(_ log: URL) throws -> [String] {
        try String(contentsOf: log, encoding: .utf8).split(separator: "\n").map { line in
            // step, loss and grad_norm: everything but the timings.
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return "\(o["step"]!) \(o["loss"]!) \(o["grad_norm"]!)"
        }
    }

    func testLoRARunSavesAPeftAdapterAndResumesBitForBit() throws {
        guard FileManager.default.fileExists(atPath: CLI.smolLM2) else { XCTFail("\(CLI.smolLM2) not found"); return }
        let whole = dir.appendingPathComponent("whole"), part = dir.appendingPathComponent("part")
        let r = try train(["--save", whole.path, "--log", dir.appendingPathComponent("whole.jsonl").path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("LoRA rank 4"), r.stderr)
        // The checkpoint is a peft adapter: its config and peft's tensor names.
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: whole.appendingPathComponent("adapter_config.json"))) as! [String: Any]
        XCTAssertEqual(config["peft_type"] as? String, "LORA")
        XCTAssertEqual(config["r"] as? Int, 4)
        XCTAssertEqual(config["lora_alpha"] as? Double, 16)
        XCTAssertEqual(config["target_modules"] as? [String], ["q_proj", "v_proj", "down_proj"])
        XCTAssertEqual(config["lora_dropout"] as? Double ?? 0, 0.1, accuracy: 1e-6)
        let header = try Data(contentsOf: whole.appendingPathComponent("adapter_model.safetensors"))
        let length = header.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        let names = (try JSONSerialization.jsonObject(with: header.subdata(in: 8..<(8 + Int(length)))) as! [String: Any]).keys
        XCTAssertTrue(names.contains("base_model.model.model.layers.29.mlp.down_proj.lora_B.weight"))
        XCTAssertEqual(names.filter { $0 != "__metadata__" }.count, 30 * 3 * 2)

        // Stopped after 2 steps and resumed: the same losses and gradient norms (and dropout masks), bit for bit.
        let r1 = try train(["--save", part.path, "--stop-after", "2", "--log", dir.appendingPathComponent("part.jsonl").path])
        XCTAssertEqual(r1.status, 0, r1.stderr)
        let r2 = try CLI.run(["train", "--resume", part.path, "--data", text, "--log", dir.appendingPathComponent("part.jsonl").path])
        XCTAssertEqual(r2.status, 0, r2.stderr)
        let a = try losses(dir.appendingPathComponent("whole.jsonl")), b = try losses(dir.appendingPathComponent("part.jsonl"))
        XCTAssertEqual(a.count, 4)
        XCTAssertEqual(a, b)
        XCTAssertEqual(try Data(contentsOf: whole.appendingPathComponent("adapter_model.safetensors")),
                       try Data(contentsOf: part.appendingPathComponent("adapter_model.safetensors")))

        // Inference applies it: another perplexity than the base model's, the same as its own run again.
        let short = dir.appendingPathComponent("short.txt")
        try String(try String(contentsOfFile: text, encoding: .utf8).prefix(800)).write(to: short, atomically: true, encoding: .utf8)
        func ppl(_ extra: [String]) throws -> Double {
            let e = try CLI.run(["eval", "--model", CLI.smolLM2, "--data", short.path, "--seq-len", "64", "--threads", "2", "--json"] + extra)
            XCTAssertEqual(e.status, 0, e.stderr)
            let o = try JSONSerialization.jsonObject(with: Data(e.stdout.utf8)) as? [String: Any]
            return o?["mean_nll"] as? Double ?? .nan
        }
        let plain = try ppl([]), adapted = try ppl(["--lora", whole.path])
        XCTAssertNotEqual(plain, adapted)
        XCTAssertEqual(adapted, try ppl(["--lora", whole.path]))
        let g = try CLI.run(["generate", "--model", CLI.smolLM2, "--lora", whole.path, "--prompt", "To be, or not",
                             "--max-tokens", "4", "--temperature", "0", "--threads", "2"])
        XCTAssertEqual(g.status, 0, g.stderr)

        // Merged into the base (q8_0): close to the unmerged adapter (q8_0's own error), not to the base.
        let merged = dir.appendingPathComponent("merged.gguf").path
        let plainExport = try CLI.run(["export", whole.path, "--out", merged])
        XCTAssertNotEqual(plainExport.status, 0)
        XCTAssertTrue(plainExport.stderr.contains("--merge"), plainExport.stderr)
        let x = try CLI.run(["export", whole.path, "--merge", "--out", merged, "--type", "q8_0"])
        XCTAssertEqual(x.status, 0, x.stderr)
        let e = try CLI.run(["eval", "--model", merged, "--data", short.path, "--seq-len", "64", "--threads", "2", "--json"])
        let mergedNLL = (try JSONSerialization.jsonObject(with: Data(e.stdout.utf8)) as? [String: Any])?["mean_nll"] as? Double ?? .nan
        XCTAssertEqual(mergedNLL, adapted, accuracy: 0.02)
        XCTAssertLessThan(abs(mergedNLL - adapted), abs(plain - adapted))
    }

    func expectError(_ args: [String], mentions: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try CLI.run(args, file: file, line: line)
        XCTAssertNotEqual(r.status, 0, "expected failure for \(args)", file: file, line: line)
        for m in mentions {
            XCTAssertTrue(r.stderr.contains(m), "stderr \"\(r.stderr)\" does not mention \"\(m)\"", file: file, line: line)
        }
        XCTAssertFalse(r.stderr.contains("Fatal error"), r.stderr, file: file, line: line)
    }

    func testBadLoRAOptionsAreRefusedByName() throws {
        guard FileManager.default.fileExists(atPath: CLI.smolLM2) else { XCTFail("\(CLI.smolLM2) not found"); return }
        let base = ["train", "--model", CLI.smolLM2, "--data", text, "--steps", "1", "--batch", "1", "--seq-len", "16"]
        try expectError(base + ["--lora-rank", "4", "--lora-targets", "q,attn"], mentions: ["--lora-targets", "'attn'"])
        try expectError(base + ["--lora-rank", "0"], mentions: ["--lora-rank"])
        try expectError(base + ["--lora-rank", "4", "--lora-dropout", "1"], mentions: ["--lora-dropout"])
        try expectError(base + ["--lora-alpha", "16"], mentions: ["--lora-rank"])
        try expectError(base + ["--lora-rank", "4", "--optimizer", "zo-sgd"], mentions: ["zo-sgd", "LoRA"])
        try expectError(base + ["--lora-rank", "4", "--budget", "1GB"], mentions: ["--budget"])
        try expectError(["train", "--config", "tiny", "--data", text, "--lora-rank", "4"], mentions: ["--model"])
        // A rank-2 adapter for SmolLM2 on every projection, made by one step.
        let fixture = dir.appendingPathComponent("rank2").path
        XCTAssertEqual(try CLI.run(base + ["--lora-rank", "2", "--lora-targets", "q,k,v,o,gate,up,down", "--save", fixture]).status, 0)
        try expectError(base + ["--lora-init", fixture, "--lora-rank", "8"], mentions: ["--lora-init", "--lora-rank"])
        try expectError(base + ["--lora-init", dir.path], mentions: ["adapter_config.json"])
        // An adapter for another model: a tiny random model's checkpoint is not SmolLM2's.
        let tiny = dir.appendingPathComponent("tiny.gguf").path
        XCTAssertEqual(try CLI.run(["init", "--config", "tiny", "--out", tiny]).status, 0)
        let ids = dir.appendingPathComponent("ids.txt")
        try (1...60).map(String.init).joined(separator: " ").write(to: ids, atomically: true, encoding: .utf8)
        try expectError(["train", "--model", tiny, "--tokens", ids.path, "--lora-init", fixture, "--steps", "1", "--batch", "1",
                         "--seq-len", "16"], mentions: ["for another model"])
        try expectError(["generate", "--model", tiny, "--lora", fixture, "--prompt", "x"], mentions: ["adapter", "model"])
    }
}
