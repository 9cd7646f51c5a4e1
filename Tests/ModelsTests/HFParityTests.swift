// A Hugging Face checkpoint of SmolLM2 (written by exportHFCheckpoint: HF names,
// Q/K rows permuted back to the half-split RoPE order) gives the same logits as
// the GGUF it came from. A wrong permutation or RoPE convention moves logits by
// whole units, far past the tolerance.
import Foundation
import Formats
import Models
import XCTest

final class HFParityTests: XCTestCase {
    func testHFCheckpointLogitsEqualGGUFLogits() throws {
        let gguf = try GGUFWeights(path: TestAssets.require(TestAssets.smolLM2))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("offload-hf-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try exportHFCheckpoint(from: gguf, to: dir.path)
        let hf = try HFCheckpoint(folder: dir.path)
        XCTAssertEqual(hf.ropeStyle, .halfSplit)
        XCTAssertEqual(hf.config.layers, gguf.config.layers)

        let ids = [504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30, 1073, 314, 253, 1345]
        let a = try LlamaModel(source: gguf, threads: 2), b = try LlamaModel(source: hf, threads: 2)
        // All positions (the sgemm path) and the last one after a decode step (the direct path).
        let la = try a.forward(ids, cache: a.makeCache(capacity: 32), allLogits: true)
        let lb = try b.forward(ids, cache: b.makeCache(capacity: 32), allLogits: true)
        var worst: Float = 0
        for i in la.indices { worst = max(worst, abs(la[i] - lb[i])) }
        XCTAssertLessThan(worst, 2e-3, "max |logit diff| between GGUF and HF layouts")
        let ca = a.makeCache(capacity: 32), cb = b.makeCache(capacity: 32)
        _ = try a.forward(ids, cache: ca); _ = try b.forward(ids, cache: cb)
        let da = try a.forward([42], cache: ca), db = try b.forward([42], cache: cb)
        worst = 0
        for i in da.indices { worst = max(worst, abs(da[i] - db[i])) }
        XCTAssertLessThan(worst, 2e-3, "decode step")
    }
}
