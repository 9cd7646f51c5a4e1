// The prompt cache restores the KV cache bit for bit: blocks stored from one prefill, loaded into a
// fresh cache, and the rest prefilled from there give the one-pass prefill's logits and the next
// decode step's, bit for bit (SmolLM2, 700 tokens: two blocks loaded, 188 tokens prefilled).
import Foundation
import Models
import Runtime
import Tensors
import XCTest

final class PromptCacheTests: XCTestCase {
    func testRestoredBlocksAndTheRestGiveOnePassBitForBit() throws {
        let path = AssetCache.directory + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else { return XCTFail("missing \(path): run scripts/fetch-assets.sh") }
        let source = try GGUFWeights(path: path)
        let m = try LlamaModel(source: source, threads: 2)
        var g = SeededGenerator(seed: 9)
        let ids = (0..<700).map { _ in Int.random(in: 0..<m.config.vocabSize, using: &g) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pc-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try PromptCache(folder: dir.path, limitBytes: 1 << 30, model: source)
        func prefill(restoring: Bool) throws -> (logits: [Float], next: [Float], restored: Int) {
            let cache = m.makeCache(capacity: ids.count + 1)
            let restored = restoring ? try store.restore(prompt: ids, into: cache) : 0
            let logits = try m.forward(Array(ids[restored...]), cache: cache)
            if !restoring { XCTAssertNil(store.save(prompt: ids, from: cache, restored: 0)) }
            return (logits, try m.forward([ids[3]], cache: cache), restored)
        }
        let cold = try prefill(restoring: false)
        XCTAssertEqual(store.storedBlocks, 2)
        let warm = try prefill(restoring: true)
        XCTAssertEqual(warm.restored, 512)
        XCTAssertEqual(zip(warm.logits, cold.logits).filter { $0.bitPattern != $1.bitPattern }.count, 0, "prompt logits")
        XCTAssertEqual(zip(warm.next, cold.next).filter { $0.bitPattern != $1.bitPattern }.count, 0, "next step (the cache)")
        XCTAssertEqual(warm.logits.count, m.config.vocabSize)
    }
}
