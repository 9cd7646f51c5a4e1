// Where tests find the fetched assets and the committed fixtures.
import Foundation
import Models
import Tensors
import XCTest

enum TestAssets {
    static var cache: String {
        AssetCache.directory
    }
    static var smolLM2: String { cache + "/models/SmolLM2-135M-Instruct.Q4_1.gguf" }
    static var gemma3: String { cache + "/models/gemma-3-270m-q4_k_m.gguf" }
    /// The tiny random models of the parity tests: made (never committed) by
    /// scripts/make-tiny-models.py, the K-quant files by scripts/make-quant-models.sh.
    static var tiny: String { cache + "/models/tiny" }
    static let tinyHint = "run scripts/test.sh, or python3 scripts/make-tiny-models.py (it makes the tiny models into the cache)"
    static var repoRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }
    static var fixtures: URL { repoRoot.appendingPathComponent("Fixtures") }

    /// The path, or a test failure telling how to get it (never a skip).
    static func require(_ path: String, hint: String = "run scripts/fetch-assets.sh",
                        file: StaticString = #filePath, line: UInt = #line) throws -> String {
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("missing asset \(path): \(hint)", file: file, line: line)
            throw CocoaError(.fileNoSuchFile)
        }
        return path
    }
}

/// Logits of `ids` at every position (the prefill path), and the last position again after a decode
/// step from a cache filled by all but the last token (the direct path, one row): what the tiny-model
/// parity tests hold against transformers.
func prefillAndDecodeLogits(_ source: WeightSource, _ ids: [Int]) throws -> (all: [Float], decoded: [Float]) {
    let m = try LlamaModel(source: source, threads: 2)
    let all = try m.forward(ids, cache: m.makeCache(capacity: ids.count), allLogits: true)
    let cache = m.makeCache(capacity: ids.count)
    _ = try m.forward(Array(ids.dropLast()), cache: cache)
    return (all, try m.forward([ids.last!], cache: cache))
}

/// Fixtures/tiny/reference.json: transformers' logits for the tiny models the generator makes.
struct TinyReference: Decodable {
    struct Model: Decodable {
        let folder: String; let logits: String; let shape: [Int]
        let safetensors_sha256: String; let config_sha256: String?; let gguf: String?; let gguf_sha256: String?
        let greedy_prompt: Int?; let greedy: [Int]?; let greedy_margin: [Float]?
    }
    let ids: [Int]
    let models: [String: Model]

    static let root = TestAssets.fixtures.appendingPathComponent("tiny")
    static func load() -> TinyReference {
        try! JSONDecoder().decode(TinyReference.self, from: Data(contentsOf: root.appendingPathComponent("reference.json")))
    }
}
