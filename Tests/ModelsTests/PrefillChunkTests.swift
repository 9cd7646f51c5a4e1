// Chunked prefill: a prompt run in passes of `prefillChunk` rows gives the logits at every position
// and the cache (seen through the next decode step) of one pass, bit for bit, on every architecture
// and weight type the tests have: the tiny Llama 3 / Qwen2 GGUFs (fp32), the tiny Gemma 3 folder
// (sliding-window layers whose window the prompt passes), the tiny K-quant file and SmolLM2 (Q4_1).
import Foundation
import Kernels
import Models
import Tensors
import XCTest

final class PrefillChunkTests: XCTestCase {
    func testPiecesAreWholeBlocksAndATinyTailJoinsThePieceBeforeIt() {
        XCTAssertEqual(Matmul.rowBlock, 256)
        XCTAssertEqual(LlamaModel.prefillPieces(count: 700, chunk: nil), [0..<700])
        XCTAssertEqual(LlamaModel.prefillPieces(count: 700, chunk: 256), [0..<256, 256..<512, 512..<700])
        // 2 × 256 + 8: the 8-row tail would take the direct kernels one pass never uses for it.
        XCTAssertEqual(LlamaModel.prefillPieces(count: 520, chunk: 256), [0..<256, 256..<520])
        XCTAssertEqual(LlamaModel.prefillPieces(count: 521, chunk: 256), [0..<256, 256..<512, 512..<521])
        // No longer than a chunk and its joined tail: one pass.
        XCTAssertEqual(LlamaModel.prefillPieces(count: 264, chunk: 256), [0..<264])
        XCTAssertEqual(LlamaModel.largestPrefillPiece(count: 520, chunk: 256), 264)
        XCTAssertEqual(Matmul.directRowLimit, 8, "the tail rule above is stated for the direct path's 8 rows")
    }

    /// The tiny models have 256 positions: their passes use blocks of 64 rows (the rule holds for any
    /// block that attention's bands divide; the product's is 256, checked on SmolLM2 below).
    func withBlocksOf64(_ body: () throws -> Void) rethrows {
        let before = Matmul.rowBlock
        Matmul.rowBlock = 64
        defer { Matmul.rowBlock = before }
        try body()
    }

    /// Logits at every prompt position, then the next decode step's, for `ids` prefilled with `chunk`.
    func run(_ m: LlamaModel, _ ids: [Int], chunk: Int?) throws -> (prompt: [Float], next: [Float]) {
        m.prefillChunk = chunk
        defer { m.prefillChunk = nil }
        let cache = m.makeCache(capacity: ids.count + 1)
        let all = try m.forward(ids, cache: cache, allLogits: true)
        XCTAssertEqual(cache.length, ids.count)
        let next = try m.forward([ids[0]], cache: cache)
        return (all, next)
    }

    func assertChunksGiveOnePass(_ m: LlamaModel, lengths: [Int], chunks: [Int], seed: UInt64,
                                 file: StaticString = #filePath, line: UInt = #line) throws {
        var g = SeededGenerator(seed: seed)
        for n in lengths {
            let ids = (0..<n).map { _ in Int.random(in: 0..<m.config.vocabSize, using: &g) }
            let one = try run(m, ids, chunk: nil)
            XCTAssertEqual(one.prompt.count, n * m.config.vocabSize)
            let several = chunks.filter { LlamaModel.prefillPieces(count: n, chunk: $0).count > 1 }
            XCTAssertFalse(several.isEmpty, "\(n) tokens: no chunk of \(chunks) splits the prompt", file: file, line: line)
            for chunk in several {
                let passes = try run(m, ids, chunk: chunk)
                XCTAssertEqual(differing(passes.prompt, one.prompt), 0,
                               "\(n) tokens, passes of \(chunk): prompt logits that differ", file: file, line: line)
                XCTAssertEqual(differing(passes.next, one.next), 0,
                               "\(n) tokens, passes of \(chunk): the decode step after (the cache)", file: file, line: line)
            }
        }
    }

    /// Elements whose bits differ (arrays of another length all differ).
    func differing(_ a: [Float], _ b: [Float]) -> Int {
        a.count != b.count ? max(a.count, b.count) : zip(a, b).filter { $0.bitPattern != $1.bitPattern }.count
    }

    func tiny(_ name: String) throws -> String {
        try TestAssets.require(TestAssets.tiny + "/" + name, hint: TestAssets.tinyHint)
    }

    func testTinyLlama3AndQwen2GGUFs() throws {
        for name in ["llama3.f32.gguf", "qwen2.f32.gguf"] {
            let m = try LlamaModel(source: GGUFWeights(path: tiny(name)), threads: 2)
            try withBlocksOf64 { try assertChunksGiveOnePass(m, lengths: [250, 200, 137], chunks: [64, 128, 192], seed: 1) }
        }
    }

    func testTinyGemma3PastItsSlidingWindow() throws {
        let m = try LlamaModel(source: HFCheckpoint(folder: tiny("gemma3")), threads: 2)
        let window = try XCTUnwrap(m.config.slidingWindow?.size)
        XCTAssertLessThan(window, 64, "the prompt's passes must cross the window")
        try withBlocksOf64 { try assertChunksGiveOnePass(m, lengths: [250, 130], chunks: [64, 128], seed: 2) }
    }

    func testTinyKQuantFile() throws {
        let m = try LlamaModel(source: GGUFWeights(path: tiny("kquant.Q4_K_M.gguf")), threads: 2)
        try withBlocksOf64 { try assertChunksGiveOnePass(m, lengths: [240], chunks: [64, 128], seed: 3) }
    }

    func testSmolLM2() throws {
        let m = try LlamaModel(source: GGUFWeights(path: TestAssets.require(TestAssets.smolLM2)), threads: 2)
        var g = SeededGenerator(seed: 4)
        let ids = (0..<700).map { _ in Int.random(in: 0..<m.config.vocabSize, using: &g) }
        func last(_ chunk: Int?) throws -> ([Float], [Float]) {
            m.prefillChunk = chunk
            let cache = m.makeCache(capacity: ids.count + 1)
            let l = try m.forward(ids, cache: cache)
            m.prefillChunk = nil
            return (l, try m.forward([ids[1]], cache: cache))
        }
        let one = try last(nil)
        for chunk in [256, 512] {
            let passes = try last(chunk)
            XCTAssertEqual(differing(passes.0, one.0), 0, "passes of \(chunk): last logits that differ")
            XCTAssertEqual(differing(passes.1, one.1), 0, "passes of \(chunk): next step's logits that differ")
        }
    }
}
