// LoRA dropout: the gradients of a step with dropout are those of the loss with the same masks (finite
// differences), the masks change with the micro-batch and take out about p of the inputs, and the loss
// without gradients (evaluation) applies none.
import Foundation
import Kernels
import Models
import Tensors
import XCTest

final class LoRADropoutTests: XCTestCase {
    func testGradientsFollowTheLossWithTheSameMasks() throws {
        TrainingThreads.set(2)
        let config = try LlamaConfig.named("tiny")
        let base = try FrozenLlama(source: TrainableWeights(TrainableLlama.random(config: config, seed: 3)))
        let settings = LoRASettings(rank: 4, alpha: 32, targets: [.q, .v, .o, .down], dropout: 0.3)
        let adapters = try LoRAAdapters.initial(config: config, ropeStyle: base.ropeStyle, settings: settings, seed: 4)
        // B non-zero, so every adapter's input matters.
        var rng = SeededGenerator(seed: 5)
        for e in adapters.layout.entries where e.name.hasSuffix("lora_b") {
            for i in 0..<e.elements { adapters.weights.base[e.offset + i] = rng.normal() * 0.2 }
        }
        let trainer = try LlamaTrainer(base: base, adapters: adapters, batch: 2, seqLen: 16)
        trainer.lora!.dropoutSeed = 9
        let ids = (0...32).map { ($0 * 37 + 11) % config.vocabSize }
        let x = Array(ids[0..<32]), y = Array(ids[1...])
        func loss(draw: UInt64) throws -> Float {
            adapters.zeroGradients()
            return try trainer.forwardBackward(inputs: x, targets: y, draw: draw)
        }
        let l0 = try loss(draw: 7)
        let gradient = Array(adapters.gradients.buffer)
        XCTAssertEqual(try loss(draw: 7), l0, "the same draw gives the same masks")
        XCTAssertNotEqual(try loss(draw: 8), l0, "another micro-batch, other masks")
        let evaluation = try trainer.loss(inputs: x, targets: y)
        XCTAssertNotEqual(evaluation, l0, "evaluation applies no dropout")
        // Central differences at the largest gradient of each adapter tensor, masks held (draw 7).
        var checked = 0
        for e in adapters.layout.entries {
            let g = gradient[e.offset ..< e.offset + e.elements]
            guard let k = g.indices.max(by: { abs(g[$0]) < abs(g[$1]) }), abs(g[k]) > 1e-3 else { continue }
            let w = adapters.weights.base + k, saved = w.pointee, h: Float = 1e-2
            w.pointee = saved + h; let up = try loss(draw: 7)
            w.pointee = saved - h; let down = try loss(draw: 7)
            w.pointee = saved
            let estimate = (up - down) / (2 * h)
            XCTAssertEqual(estimate, gradient[k], accuracy: 0.03 * abs(gradient[k]) + 2e-4, "\(e.name)")
            checked += 1
        }
        XCTAssertGreaterThan(checked, 8)
    }
}
