// Gemma 3 270M Q4_K_M — the real file (Q5_0, Q4_K, Q6_K and Q8_0 tensors, a SentencePiece
// vocabulary of 262,144 tokens) — against Hugging Face transformers in fp32 on the same file
// dequantized (scripts/fixtures/make_gemma3_fixtures.py): token ids, the top 20 logits at every
// position (one prompt of 650 tokens runs past the local layers' 512-position window), greedy
// continuations, and the perplexity of a text.
import Foundation
import Formats
import Models
import Runtime
import Tensors
import XCTest

final class Gemma3ParityTests: XCTestCase {
    struct Fixture: Decodable {
        struct Case: Decodable {
            var text: String?
            var ids: [Int]
            var greedy: [Int]
            var greedy_margin: [Double]
            var topk: [[[Double]]]
        }
        struct Eval: Decodable { var tokens: Int; var scored: Int; var seq_len: Int; var perplexity: Double }
        var cases: [Case]
        var eval: Eval
    }
    nonisolated(unsafe) static var shared: (GGUFWeights, LlamaModel)?

    func model() throws -> (GGUFWeights, LlamaModel) {
        if let m = Self.shared { return m }
        let g = try GGUFWeights(path: TestAssets.require(TestAssets.gemma3))
        let m = (g, try LlamaModel(source: g, threads: 2))
        Self.shared = m
        return m
    }

    func fixture() throws -> Fixture {
        try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: TestAssets.fixtures.appendingPathComponent("gemma3/reference.json")))
    }

    func testConfigurationAndTokenizer() throws {
        let (g, _) = try model(), f = try fixture()
        let c = g.config
        XCTAssertEqual(c.architecture, .gemma3)
        XCTAssertEqual(c.headDim, 256)
        XCTAssertEqual(c.slidingWindow?.size, 512)
        XCTAssertTrue(c.isLocalLayer(0))
        XCTAssertFalse(c.isLocalLayer(5))
        let tok = try Tokenizer(gguf: g.file)
        for k in f.cases { if let text = k.text { XCTAssertEqual(tok.encode(text), k.ids, "ids of \(text.prefix(30))") } }
    }

    /// Logits at every position: the fixture's top 20 per position. The two sides share the
    /// dequantized weights and differ in summation order through 18 layers.
    func testTopLogitsAtEveryPosition() throws {
        let (g, m) = try model(), f = try fixture()
        let vocab = g.config.vocabSize
        var worst: Double = 0
        for (i, k) in f.cases.enumerated() {
            let logits = try m.forward(k.ids, cache: m.makeCache(capacity: k.ids.count), allLogits: true)
            for (pos, top) in k.topk.enumerated() {
                let scale = abs(top[0][1])
                for pair in top {
                    let err = abs(Double(logits[pos * vocab + Int(pair[0])]) - pair[1]) / max(scale, 1)
                    worst = max(worst, err)
                    if err > 1e-4 {
                        return XCTFail("case \(i) position \(pos) id \(Int(pair[0])): \(logits[pos * vocab + Int(pair[0])]), expected \(pair[1])")
                    }
                }
            }
        }
        print("[gemma3] worst top-20 logit error relative to the top logit: \(worst)")
    }

    func testGreedyContinuations() throws {
        let (_, m) = try model(), f = try fixture()
        for (i, k) in f.cases.enumerated() where !k.greedy.isEmpty {
            var sampler = Sampler(options: SamplingOptions(temperature: 0), seed: 0)
            let r = try Generator(model: m).generate(prompt: k.ids, maxTokens: k.greedy.count, sampler: &sampler)
            // A step whose top two logits are within 1e-3 may flip under another summation order; none here is.
            XCTAssertGreaterThan(k.greedy_margin.min()!, 1e-3)
            XCTAssertEqual(r.tokens, k.greedy, "case \(i): greedy continuation differs")
        }
    }

    func testPerplexity() throws {
        let (g, m) = try model(), f = try fixture()
        let excerpt = try String(contentsOf: TestAssets.fixtures.appendingPathComponent("smollm2/hamlet_excerpt.txt"), encoding: .utf8)
        let tokens = try Tokenizer(gguf: g.file).encode(excerpt)
        XCTAssertEqual(tokens.count, f.eval.tokens)
        let r = try perplexity(model: m, tokens: tokens, seqLen: f.eval.seq_len)
        XCTAssertEqual(r.perplexity, f.eval.perplexity, accuracy: 1e-4 * f.eval.perplexity)
    }

    /// Under a 40 MB budget (weights streamed from the file; the 600-token prefill needs 30) the same greedy tokens and the same
    /// logits, bit for bit, as with the whole model in memory: past the window too.
    func testStreamedUnderABudgetIsBitIdentical() throws {
        let (g, m) = try model(), k = try fixture().cases[4]   // the 650-token case
        let prompt = Array(k.ids.prefix(600))
        let (s, _) = try makeStreamingModel(weights: g, budget: 40 << 20, threads: 2, promptTokens: prompt.count,
                                            contextCapacity: prompt.count + 4)
        let a = m.makeCache(capacity: prompt.count + 4), b = try s.newCache(capacity: prompt.count + 4)
        var la = try m.forward(prompt, cache: a), lb = try s.forward(prompt, cache: b)
        for _ in 0..<4 {
            XCTAssertEqual(la, lb)
            let next = la.indices.max { la[$0] < la[$1] }!
            la = try m.forward([next], cache: a); lb = try s.forward([next], cache: b)
        }
        XCTAssertEqual(la, lb)
    }
}
