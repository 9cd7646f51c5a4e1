// The whole model's gradients: against central differences of its own fp32 loss
// on a small model (tied and untied head, both RoPE conventions), recompute
// against keep-all bit for bit, and the training forward against inference.
import Foundation
import Kernels
import Models
import Tensors
import XCTest

struct ModelTestRNG: RandomNumberGenerator {
    var s: UInt64
    init(_ seed: UInt64) { s = seed &+ 0x5555 }
    mutating func next() -> UInt64 { var g = SeededGenerator(seed: s); defer { s = g.state }; return g.next() }
    mutating func float(_ scale: Float = 1) -> Float { Float.random(in: -scale...scale, using: &self) }
    mutating func tokens(_ n: Int, vocab: Int) -> [Int] { (0..<n).map { _ in Int.random(in: 0..<vocab, using: &self) } }
}

func microConfig(tied: Bool) -> LlamaConfig {
    LlamaConfig(name: "micro", vocabSize: 29, dim: 16, ffnDim: 24, layers: 2, heads: 4, kvHeads: 2,
                contextLength: 16, tiedEmbeddings: tied)
}

/// Weights large enough that every gradient is well above fp32 noise.
func randomModel(_ config: LlamaConfig, ropeStyle: RopeStyle = .adjacentPairs, seed: UInt64) throws -> TrainableLlama {
    let m = try TrainableLlama(config: config, ropeStyle: ropeStyle)
    var g = ModelTestRNG(seed)
    for e in m.layout.entries {
        let w = try m.weight(e.name)
        for i in 0..<w.count { w[i] = e.spec.shape.count == 1 ? 1 + g.float(0.3) : g.float(0.5) }
    }
    return m
}

final class TrainingGradientTests: XCTestCase {
    override func setUp() { TrainingThreads.set(2) }

    func testGradientsMatchFiniteDifferences() throws {
        for (tied, style) in [(true, RopeStyle.adjacentPairs), (false, .halfSplit)] {
            let m = try randomModel(microConfig(tied: tied), ropeStyle: style, seed: tied ? 1 : 2)
            let B = 2, T = 6
            var g = ModelTestRNG(3)
            // Repeated ids so the embedding rows receive several contributions.
            let inputs = g.tokens(B * T, vocab: 8), targets = g.tokens(B * T, vocab: m.config.vocabSize)
            let trainer = try LlamaTrainer(model: m, batch: B, seqLen: T)
            m.zeroGradients()
            try trainer.forwardBackward(inputs: inputs, targets: targets)
            var checked = 0
            for e in m.layout.entries {
                let w = try m.weight(e.name), grad = try m.gradient(e.name)
                // The largest-gradient elements plus a few fixed ones, so a wrong sign or factor cannot hide.
                let largest = (0..<e.elements).max { abs(grad[$0]) < abs(grad[$1]) }!
                for i in Set([largest, 0, e.elements / 2, e.elements - 1]) {
                    let old = w[i], h: Float = 1e-2
                    w[i] = old + h; let lp = Double(try trainer.loss(inputs: inputs, targets: targets))
                    w[i] = old - h; let lm = Double(try trainer.loss(inputs: inputs, targets: targets))
                    w[i] = old
                    let numeric = (lp - lm) / Double(2 * h)
                    let tol = 2e-3 + 2e-2 * abs(numeric)
                    XCTAssertEqual(Double(grad[i]), numeric, accuracy: tol, "\(e.name)[\(i)] tied \(tied) \(style)")
                    checked += 1
                }
            }
            XCTAssertGreaterThan(checked, 40)
        }
    }

    func testTiedHeadReceivesBothGradients() throws {
        // With a tied head, token_embd's gradient is the head's plus the lookup's: compare with an
        // untied model whose output.weight equals token_embd.
        let tied = try randomModel(microConfig(tied: true), seed: 4)
        let untied = try TrainableLlama(config: microConfig(tied: false))
        for e in tied.layout.entries { try untied.weight(e.name).update(fromContentsOf: try tied.weight(e.name)) }
        _ = try untied.weight("output.weight").update(fromContentsOf: try tied.weight("token_embd.weight"))
        var g = ModelTestRNG(5)
        let inputs = g.tokens(8, vocab: 29), targets = g.tokens(8, vocab: 29)
        for m in [tied, untied] {
            m.zeroGradients()
            try LlamaTrainer(model: m, batch: 1, seqLen: 8).forwardBackward(inputs: inputs, targets: targets)
        }
        let sum = zip(try untied.gradient("token_embd.weight"), try untied.gradient("output.weight")).map { $0 + $1 }
        let t = Array(try tied.gradient("token_embd.weight"))
        for i in 0..<t.count { XCTAssertEqual(t[i], sum[i], accuracy: 1e-6 + 1e-4 * abs(sum[i])) }
        XCTAssertGreaterThan(try untied.gradient("output.weight").map(abs).max()!, 1e-3)
    }

    /// The loss without gradients (validation, zeroth-order steps) is the training forward's, bit for bit;
    /// ignored targets are left out of it, and of the gradient: a row whose target is ignored gets none.
    func testLossIsTheTrainingLossAndIgnoredTargetsCountForNothing() throws {
        let m = try randomModel(microConfig(tied: true), seed: 6)
        var g = ModelTestRNG(8)
        let inputs = g.tokens(2 * 9, vocab: 29), all = g.tokens(2 * 9, vocab: 29)
        let trainer = try LlamaTrainer(model: m, batch: 2, seqLen: 9)
        var masked = all
        for i in [0, 1, 2, 5, 11, 17] { masked[i] = LlamaTrainer.ignoredTarget }
        for targets in [all, masked] {
            m.zeroGradients()
            let trained = try trainer.forwardBackward(inputs: inputs, targets: targets)
            XCTAssertEqual(try trainer.loss(inputs: inputs, targets: targets).bitPattern, trained.bitPattern)
        }
        // The masked mean is the mean of the per-target losses that count: changing an ignored target changes nothing.
        var other = masked
        other[0] = LlamaTrainer.ignoredTarget; other[5] = LlamaTrainer.ignoredTarget
        XCTAssertEqual(try trainer.loss(inputs: inputs, targets: other).bitPattern,
                       try trainer.loss(inputs: inputs, targets: masked).bitPattern)
        XCTAssertNotEqual(try trainer.loss(inputs: inputs, targets: masked), try trainer.loss(inputs: inputs, targets: all))
        XCTAssertThrowsError(try trainer.loss(inputs: inputs, targets: [Int](repeating: LlamaTrainer.ignoredTarget, count: 18))) {
            XCTAssertTrue("\($0)".contains("every target of the batch is ignored"), "\($0)")
        }
    }

    func testRecomputeGivesBitIdenticalGradients() throws {
        let m = try randomModel(microConfig(tied: true), seed: 6)
        var g = ModelTestRNG(7)
        let inputs = g.tokens(3 * 7, vocab: 29), targets = g.tokens(3 * 7, vocab: 29)
        var results: [([Float], Float)] = []
        for policy in ActivationPolicy.allCases {
            m.zeroGradients()
            let loss = try LlamaTrainer(model: m, batch: 3, seqLen: 7, policy: policy)
                .forwardBackward(inputs: inputs, targets: targets)
            results.append((Array(m.gradients.buffer), loss))
        }
        XCTAssertEqual(results[0].1.bitPattern, results[1].1.bitPattern)
        XCTAssertTrue(results[0].0.elementsEqual(results[1].0) { $0.bitPattern == $1.bitPattern },
                      "keep-all and recompute-all gradients differ")
        XCTAssertGreaterThan(results[0].0.map(abs).max()!, 0)
    }

    func testGradientsAreBitIdenticalForAThreadCount() throws {
        // Large enough that the sgemm calls and the row loops really split work across threads.
        let c = LlamaConfig(name: "mid", vocabSize: 300, dim: 128, ffnDim: 256, layers: 2, heads: 4, kvHeads: 2,
                            contextLength: 64, tiedEmbeddings: true)
        let m = try randomModel(c, seed: 11)
        var g = ModelTestRNG(12)
        let inputs = g.tokens(2 * 48, vocab: 300), targets = g.tokens(2 * 48, vocab: 300)
        var results: [[Float]] = []
        for threads in [2, 2, 1] {
            TrainingThreads.set(threads)
            m.zeroGradients()
            try LlamaTrainer(model: m, batch: 2, seqLen: 48).forwardBackward(inputs: inputs, targets: targets)
            results.append(Array(m.gradients.buffer))
        }
        TrainingThreads.set(2)
        XCTAssertTrue(results[0].elementsEqual(results[1]) { $0.bitPattern == $1.bitPattern }, "two runs on 2 threads differ")
        // Another thread count splits OpenBLAS calls differently: the same values up to rounding.
        let scale = results[0].map(abs).max()!
        for i in 0..<results[0].count { XCTAssertEqual(results[0][i], results[2][i], accuracy: 1e-5 * scale) }
    }

    func testTrainingForwardMatchesInferenceLogits() throws {
        let m = try randomModel(microConfig(tied: false), seed: 8)
        var g = ModelTestRNG(9)
        let tokens = g.tokens(12, vocab: 29)
        let trained = try LlamaTrainer(model: m, batch: 1, seqLen: 12).logits(inputs: tokens)
        let inference = try LlamaModel(source: TrainableWeights(m), threads: 2)
        let expected = try inference.forward(tokens, cache: inference.makeCache(), allLogits: true)
        XCTAssertEqual(trained.count, expected.count)
        for i in 0..<trained.count { XCTAssertEqual(trained[i], expected[i], accuracy: 1e-4 + 1e-4 * abs(expected[i])) }
    }

    func testOutOfVocabularyTokenIsRefused() throws {
        let m = try randomModel(microConfig(tied: true), seed: 10)
        let t = try LlamaTrainer(model: m, batch: 1, seqLen: 4)
        XCTAssertThrowsError(try t.forwardBackward(inputs: [1, 2, 29, 3], targets: [1, 2, 3, 4])) {
            XCTAssertTrue("\($0)".contains("token id 29"), "\($0)")
        }
    }
}

/// The feed-forward in row tiles (long sequences): only its input, norm and 1/rms are saved, the
/// tiles' gate, up and silu·up are recomputed in the backward, and the weight gradients are summed
/// tile by tile — the same model as the whole feed-forward up to that summation order.
final class FFNTileTests: XCTestCase {
    override func setUp() { TrainingThreads.set(2) }

    func testTiledFeedForwardMatchesTheWholeOneAndSavesItsIntermediates() throws {
        let c = microConfig(tied: false)
        // 4,800 rows: past the untiled limit, four whole tiles of 1,024 and a partial one.
        let B = 300, T = 16, n = B * T
        XCTAssertGreaterThan(n, BlockActivations.ffnUntiledRows)
        let tile = try XCTUnwrap(BlockActivations.ffnTileRows(config: c, rows: n))
        XCTAssertNotEqual(n % tile, 0, "the last tile is partial")
        XCTAssertNil(BlockActivations.ffnTileRows(config: c, rows: BlockActivations.ffnUntiledRows))
        var g = ModelTestRNG(11)
        let inputs = g.tokens(n, vocab: c.vocabSize), targets = g.tokens(n, vocab: c.vocabSize)
        func run(tiling: Bool, policy: ActivationPolicy) throws -> (loss: Float, model: TrainableLlama, bytes: Int) {
            let m = try randomModel(c, seed: 12)
            let t = try LlamaTrainer(model: m, batch: B, seqLen: T, policy: policy, ffnTiling: tiling)
            XCTAssertEqual(t.ffnTile, tiling ? tile : nil)
            m.zeroGradients()
            return (try t.forwardBackward(inputs: inputs, targets: targets), m, t.activationBytes)
        }
        let whole = try run(tiling: false, policy: .keepAll), tiled = try run(tiling: true, policy: .keepAll)
        XCTAssertEqual(tiled.loss, whole.loss, accuracy: 1e-6 * abs(whole.loss))
        for e in whole.model.layout.entries {
            let a = try whole.model.gradient(e.name), b = try tiled.model.gradient(e.name)
            let norm = a.reduce(0) { $0 + Double($1) * Double($1) }.squareRoot()
            let diff = zip(a, b).reduce(0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }.squareRoot()
            XCTAssertGreaterThan(norm, 0, e.name)
            XCTAssertLessThan(diff, 1e-5 * norm, "\(e.name): tiled gradient differs by \(diff) of \(norm)")
        }
        // Saved per block: no gate, up, silu·up (3 × n × ffnDim floats); scratch: four tiles, not three whole.
        let saved = 3 * n * c.ffnDim * 4 * c.layers
        XCTAssertLessThanOrEqual(tiled.bytes, whole.bytes - saved + 4 * tile * c.ffnDim * 4,
                                 "tiled \(tiled.bytes) vs whole \(whole.bytes) bytes")
        XCTAssertEqual(BlockActivations.table(config: c, batch: B, seqLen: T).map(\.name).filter { $0.hasPrefix("ffn_") },
                       ["ffn_in", "ffn_norm", "ffn_rstd"])
        // Recompute-all at the tiled shape: the same bits as keep-all.
        let recomputed = try run(tiling: true, policy: .recomputeAll)
        XCTAssertEqual(recomputed.loss.bitPattern, tiled.loss.bitPattern)
        for e in tiled.model.layout.entries {
            XCTAssertEqual(try recomputed.model.gradient(e.name).map(\.bitPattern), try tiled.model.gradient(e.name).map(\.bitPattern),
                           e.name)
        }
    }
}
