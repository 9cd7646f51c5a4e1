// A trained model exported to GGUF gives the logits it had before export.
import Foundation
import Formats
import Models
import Runtime
import XCTest

final class ExportTests: XCTestCase {
    override func setUp() { setTrainingThreads(2) }

    func testExportedGGUFGivesTheSameLogits() throws {
        let m = try TrainableLlama.random(config: smallConfig(), seed: 11)
        var o = TrainingOptions(); o.batch = 2; o.seqLen = 8; o.steps = 2; o.lr = 1e-2
        let s = try TrainingSession(model: m, data: TokenWindows(tokens: corpus(200), seqLen: 8, vocabSize: 64), options: o)
        _ = try s.trainStep(); _ = try s.trainStep()
        let dir = tempDir("export"), out = dir + ".gguf"
        defer { try? FileManager.default.removeItem(atPath: dir); try? FileManager.default.removeItem(atPath: out) }
        try Checkpoint.save(s, to: dir)
        let prompt = Array(corpus(12).reversed())
        let before = try LlamaTrainer(model: m, batch: 1, seqLen: 12).logits(inputs: prompt)
        for (type, tol) in [(ExportType.f32, Float(1e-4)), (.f16, 2e-2), (.q8_0, 5e-2), (.q6_k, 5e-2), (.q4_k_m, 0.15)] {
            try Checkpoint.exportGGUF(dir, to: out, type: type)
            let weights = try GGUFWeights(path: out)
            let loaded = try LlamaModel(source: weights, threads: 2)
            XCTAssertEqual(loaded.config.dim, 32)
            XCTAssertNil(weights.file.metadata["tokenizer.ggml.tokens"], "64 ids cannot be bytes: no vocabulary")
            let after = try loaded.forward(prompt, cache: loaded.makeCache(), allLogits: true)
            let scale = before.map(abs).max()!
            var worst: Float = 0
            for i in 0..<before.count { worst = max(worst, abs(before[i] - after[i])) }
            XCTAssertLessThanOrEqual(worst, tol * max(scale, 1), "\(type): worst logit difference \(worst)")
            // The last position's greedy token survives even quantization.
            let last = before.count - 64
            XCTAssertEqual(before[last...].indices.max { before[$0] < before[$1] },
                           after[last...].indices.max { after[$0] < after[$1] }, "\(type)")
        }
    }

    func testByteModelsGetAByteLevelVocabulary() throws {
        // --config shapes train on UTF-8 bytes: the GGUF says so, for llama.cpp and Offload's tokenizer.
        let m = try TrainableLlama.random(config: LlamaConfig.named("tiny"), seed: 13)
        let out = tempDir("bytes") + ".gguf"
        defer { try? FileManager.default.removeItem(atPath: out) }
        try Checkpoint.exportGGUF(m, to: out, type: .f16)
        let f = try GGUFWeights(path: out).file
        let tokens = f.strings("tokenizer.ggml.tokens") ?? []
        XCTAssertEqual(tokens.count, 256)
        guard tokens.count == 256 else { return }
        XCTAssertEqual(tokens[65], "A")
        XCTAssertEqual(tokens[32], "\u{120}")   // GPT-2's stand-in for the space byte
        XCTAssertEqual(tokens[10], "\u{10A}")   // and for newline
        XCTAssertEqual(Set(tokens).count, 256)
        XCTAssertEqual(f.string("tokenizer.ggml.model"), "gpt2")
        XCTAssertEqual(f.strings("tokenizer.ggml.merges"), [])
    }

    func testHalfSplitModelsArePermutedToAdjacentPairs() throws {
        // A model trained in the half-split convention must give the same logits after export,
        // where the GGUF reader assumes adjacent pairs.
        let src = try TrainableLlama.random(config: smallConfig(), seed: 12)
        let m = try TrainableLlama(config: smallConfig(), ropeStyle: .halfSplit)
        _ = m.weights.buffer.update(fromContentsOf: src.weights.buffer)
        // Large q and k weights, so attention (and with it the RoPE convention) shapes the logits.
        for l in 0..<2 { for name in ["attn_q", "attn_k"] {
            let w = try m.weight("blk.\(l).\(name).weight")
            for i in 0..<w.count { w[i] *= 50 }
        } }
        let out = tempDir("halfsplit") + ".gguf"
        defer { try? FileManager.default.removeItem(atPath: out) }
        try Checkpoint.exportGGUF(m, to: out, type: .f32)
        let prompt = corpus(10)
        let before = try LlamaTrainer(model: m, batch: 1, seqLen: 10).logits(inputs: prompt)
        let loaded = try LlamaModel(source: GGUFWeights(path: out), threads: 2)
        let after = try loaded.forward(prompt, cache: loaded.makeCache(), allLogits: true)
        let scale = before.map(abs).max()!
        for i in 0..<before.count { XCTAssertEqual(before[i], after[i], accuracy: 1e-4 * scale) }
    }
}
