// Sampling and the perplexity windowing, checked against their definitions.
import Foundation
import Runtime
import XCTest

final class SamplerTests: XCTestCase {
    let logits: [Float] = [1.0, 3.0, 2.5, -1.0, 0.0, 2.9]

    func testGreedyIsArgmax() {
        var s = Sampler(options: SamplingOptions(temperature: 0), seed: 1)
        XCTAssertEqual(s.sample(logits), 1)
    }

    func testTopKOneIsGreedyAtAnyTemperature() {
        var s = Sampler(options: SamplingOptions(temperature: 5, topK: 1, topP: 1), seed: 3)
        for _ in 0..<50 { XCTAssertEqual(s.sample(logits), 1) }
    }

    func testSameSeedSameSequenceAndDifferentSeedDiffers() {
        var a = Sampler(options: SamplingOptions(temperature: 1, topK: 0, topP: 1), seed: 42)
        var b = a
        var c = Sampler(options: SamplingOptions(temperature: 1, topK: 0, topP: 1), seed: 43)
        let sa = (0..<64).map { _ in a.sample(logits) }, sb = (0..<64).map { _ in b.sample(logits) }
        let sc = (0..<64).map { _ in c.sample(logits) }
        XCTAssertEqual(sa, sb)
        XCTAssertNotEqual(sa, sc)
    }

    func testFrequenciesFollowTheTemperedSoftmax() {
        let t: Float = 0.7
        var s = Sampler(options: SamplingOptions(temperature: t, topK: 0, topP: 1), seed: 9)
        var counts = [Int](repeating: 0, count: logits.count)
        let n = 40_000
        for _ in 0..<n { counts[s.sample(logits)] += 1 }
        let e = logits.map { exp(Double($0 / t)) }, z = e.reduce(0, +)
        for i in logits.indices {
            let p = e[i] / z, sd = (p * (1 - p) / Double(n)).squareRoot()
            XCTAssertEqual(Double(counts[i]) / Double(n), p, accuracy: 5 * sd + 1e-4, "token \(i)")
        }
    }

    func testTopKAndTopPRestrictTheCandidates() {
        // top-k 2: only ids 1 and 5 (the two largest logits).
        var k = Sampler(options: SamplingOptions(temperature: 1, topK: 2, topP: 1), seed: 5)
        XCTAssertEqual(Set((0..<500).map { _ in k.sample(logits) }), [1, 5])
        // top-p 0.5: softmax(3.0, 2.9, 2.5, …) ≈ (0.33, 0.30, 0.20, …): ids 1 and 5 reach 0.5.
        var p = Sampler(options: SamplingOptions(temperature: 1, topK: 0, topP: 0.5), seed: 6)
        XCTAssertEqual(Set((0..<500).map { _ in p.sample(logits) }), [1, 5])
    }

    func testPerplexityWindowsScoreEveryTokenOnce() {
        for (count, seqLen) in [(10, 3), (11, 5), (2, 8), (9, 8), (1000, 128)] {
            let w = perplexityWindows(count: count, seqLen: seqLen)
            // Targets of window r are r.lowerBound+1 ..< r.upperBound.
            let targets = w.flatMap { ($0.lowerBound + 1)..<$0.upperBound }
            XCTAssertEqual(targets, Array(1..<count), "count \(count) seq-len \(seqLen)")
            XCTAssertTrue(w.allSatisfy { $0.count <= seqLen + 1 && $0.lowerBound % seqLen == 0 })
        }
        XCTAssertEqual(perplexityWindows(count: 10, seqLen: 3), [0..<4, 3..<7, 6..<10])
    }
}
