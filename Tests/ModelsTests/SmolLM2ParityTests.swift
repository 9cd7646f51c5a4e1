// SmolLM2-135M logits and greedy continuations against Hugging Face transformers
// (fp32, loaded from the same GGUF; see scripts/fixtures/make_inference_fixtures.py).
//
// Tolerance: both sides use the same dequantized fp32 weights; they differ only in
// summation order (and fused multiply-adds) through 30 layers, which moves
// logits by ~1e-3 of their magnitude. We allow 0.05 absolute on logits whose range
// is ~±30, and require greedy continuations to agree token for token.
import Foundation
import Models
import Runtime
import XCTest

struct InferenceFixture: Decodable {
    struct Prompt: Decodable {
        var text: String
        var ids: [Int]
        var greedy: [Int]
        var topk: [[[Double]]]
        var last_logits: String
    }
    var vocab_size: Int
    var prompts: [Prompt]
}

final class SmolLM2ParityTests: XCTestCase {
    static let tolerance: Float = 0.05
    nonisolated(unsafe) static var shared: LlamaModel?

    func model() throws -> LlamaModel {
        if let m = Self.shared { return m }
        let m = try LlamaModel(source: GGUFWeights(path: TestAssets.require(TestAssets.smolLM2)), threads: 2)
        Self.shared = m
        return m
    }

    func fixture() throws -> InferenceFixture {
        let url = TestAssets.fixtures.appendingPathComponent("smollm2/reference.json")
        return try JSONDecoder().decode(InferenceFixture.self, from: Data(contentsOf: url))
    }

    func testLastLogitsMatchReference() throws {
        let m = try model(), f = try fixture()
        XCTAssertGreaterThanOrEqual(f.prompts.count, 5)
        for (i, p) in f.prompts.enumerated() {
            let data = try Data(contentsOf: TestAssets.fixtures.appendingPathComponent("smollm2/" + p.last_logits))
            let ref = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            XCTAssertEqual(ref.count, f.vocab_size)
            let ours = try m.forward(p.ids, cache: m.makeCache(capacity: p.ids.count))
            var worst: Float = 0
            for j in 0..<ref.count { worst = max(worst, abs(ours[j] - ref[j])) }
            XCTAssertLessThan(worst, Self.tolerance, "prompt \(i) (\(p.text.prefix(30))): max |logit diff| \(worst)")
            XCTAssertEqual(ours.indices.max { ours[$0] < ours[$1] }, ref.indices.max { ref[$0] < ref[$1] },
                           "prompt \(i): argmax differs")
        }
    }

    func testTopKLogitsAtEveryPosition() throws {
        let m = try model(), f = try fixture()
        for (i, p) in f.prompts.enumerated() {
            let logits = try m.forward(p.ids, cache: m.makeCache(capacity: p.ids.count), allLogits: true)
            XCTAssertEqual(p.topk.count, p.ids.count)
            for (pos, top) in p.topk.enumerated() {
                for pair in top {
                    let id = Int(pair[0]), want = Float(pair[1])
                    let got = logits[pos * f.vocab_size + id]
                    XCTAssertLessThan(abs(got - want), Self.tolerance, "prompt \(i) position \(pos) id \(id)")
                }
            }
        }
    }

    func testGreedyContinuationsEqualReference() throws {
        let m = try model(), f = try fixture()
        for (i, p) in f.prompts.enumerated() {
            var sampler = Sampler(options: SamplingOptions(temperature: 0), seed: 0)
            let r = try Generator(model: m).generate(prompt: p.ids, maxTokens: p.greedy.count, sampler: &sampler)
            XCTAssertEqual(r.tokens, p.greedy, "prompt \(i) (\(p.text.prefix(30))): greedy continuation differs")
        }
    }
}
