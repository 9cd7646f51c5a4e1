// Optimizers against Double transcriptions of torch.optim's update rules,
// clipping against torch's clip_grad_norm_, and the learning-rate schedules.
import Foundation
import Models
import Runtime
import Tensors
import XCTest

struct RTRNG: RandomNumberGenerator {
    var s: UInt64
    init(_ seed: UInt64) { s = seed &+ 77 }
    mutating func next() -> UInt64 { var g = SeededGenerator(seed: s); defer { s = g.state }; return g.next() }
    mutating func floats(_ n: Int, _ scale: Float = 1) -> [Float] { (0..<n).map { _ in Float.random(in: -scale...scale, using: &self) } }
}

final class OptimizerTests: XCTestCase {
    func run(_ opt: any Optimizer, p0: [Float], grads: [[Float]], lrs: [Float]) -> [Float] {
        let n = p0.count
        let p = UnsafeMutablePointer<Float>.allocate(capacity: n), g = UnsafeMutablePointer<Float>.allocate(capacity: n)
        p.initialize(from: p0, count: n)
        let state = opt.stateBuffers(count: n).map { b in
            let s = UnsafeMutableRawPointer.allocate(byteCount: b.bytes, alignment: 64)
            s.initializeMemory(as: UInt8.self, repeating: 0, count: b.bytes)
            return s
        }
        defer { p.deallocate(); g.deallocate(); state.forEach { $0.deallocate() } }
        for (i, gr) in grads.enumerated() {
            g.update(from: gr, count: n)
            opt.update(p, gradient: g, state: state, count: n, range: 0..<n, lr: lrs[i], step: i + 1)
        }
        return Array(UnsafeBufferPointer(start: p, count: n))
    }

    func testAdamWMatchesTorchRule() {
        var g = RTRNG(1)
        let n = 50, p0 = g.floats(n), grads = (0..<4).map { _ in g.floats(n, 0.1) }
        let lrs: [Float] = [1e-3, 2e-3, 2e-3, 5e-4]
        let (b1, b2, eps, wd) = (0.9, 0.95, 1e-8, 0.1)
        let p = run(AdamW(beta1: Float(b1), beta2: Float(b2), eps: Float(eps), weightDecay: Float(wd)),
                    p0: p0, grads: grads, lrs: lrs)
        // torch.optim.AdamW (single tensor), in Double.
        var rp = p0.map(Double.init), m = [Double](repeating: 0, count: n), v = m
        for (t, gr) in grads.enumerated() {
            let lr = Double(lrs[t]), step = Double(t + 1)
            for i in 0..<n {
                let gi = Double(gr[i])
                rp[i] *= 1 - lr * wd
                m[i] = b1 * m[i] + (1 - b1) * gi
                v[i] = b2 * v[i] + (1 - b2) * gi * gi
                let denom = v[i].squareRoot() / (1 - pow(b2, step)).squareRoot() + eps
                rp[i] -= lr / (1 - pow(b1, step)) * m[i] / denom
            }
        }
        for i in 0..<n { XCTAssertEqual(Double(p[i]), rp[i], accuracy: 1e-6) }
        // Not vacuous: the weights moved by about lr per step.
        XCTAssertGreaterThan(abs(Double(p[0]) - Double(p0[0])), 1e-3)
    }

    func testAdamWVectorAndScalarPathsAgreeBitForBit() {
        // Every element goes through the 8-lane path at one offset and the scalar tail at another.
        var g = RTRNG(3)
        let n = 29, p0 = g.floats(n), grads = (0..<3).map { _ in g.floats(n, 0.1) }
        let opt = AdamW(weightDecay: 0.1)
        let whole = run(opt, p0: p0, grads: grads, lrs: [1e-3, 1e-3, 1e-3])
        var tails: [Float] = []
        for i in 0..<n {
            tails += run(opt, p0: [p0[i]], grads: grads.map { [$0[i]] }, lrs: [1e-3, 1e-3, 1e-3])
        }
        XCTAssertEqual(whole.map(\.bitPattern), tails.map(\.bitPattern))
    }

    func testSGDMomentumMatchesTorchRule() {
        var g = RTRNG(2)
        let n = 20, p0 = g.floats(n), grads = (0..<3).map { _ in g.floats(n) }
        let lrs: [Float] = [0.1, 0.1, 0.05]
        let p = run(SGD(momentum: 0.9, weightDecay: 0.01), p0: p0, grads: grads, lrs: lrs)
        var rp = p0.map(Double.init), buf = [Double](repeating: 0, count: n)
        for (t, gr) in grads.enumerated() {
            for i in 0..<n {
                let gi = Double(gr[i]) + 0.01 * rp[i]
                buf[i] = t == 0 ? gi : 0.9 * buf[i] + gi
                rp[i] -= Double(lrs[t]) * buf[i]
            }
        }
        for i in 0..<n { XCTAssertEqual(Double(p[i]), rp[i], accuracy: 1e-5) }
    }

    func testClipToGlobalNorm() throws {
        let m = try TrainableLlama(config: LlamaConfig(name: "c", vocabSize: 4, dim: 4, ffnDim: 4, layers: 1, heads: 1,
                                                       kvHeads: 1, tiedEmbeddings: true))
        m.zeroGradients()
        try m.gradient("token_embd.weight")[0] = 3
        try m.gradient("blk.0.ffn_down.weight")[5] = 4
        XCTAssertEqual(m.globalGradientNorm(), 5, accuracy: 1e-12)
        XCTAssertEqual(m.clipGradients(maxNorm: 1), 5, accuracy: 1e-12)
        XCTAssertEqual(m.globalGradientNorm(), 5 / (5 + 1e-6), accuracy: 1e-6)
        XCTAssertEqual(try m.gradient("token_embd.weight")[0], 0.6, accuracy: 1e-6)
        // Below the limit: untouched.
        XCTAssertEqual(m.clipGradients(maxNorm: 10), 1, accuracy: 1e-5)
        XCTAssertEqual(try m.gradient("token_embd.weight")[0], 0.6, accuracy: 1e-6)
    }

    func testSchedules() {
        XCTAssertEqual(LearningRateSchedule.constant.lr(step: 7, base: 0.5), 0.5)
        let s = LearningRateSchedule.warmupCosine(warmup: 2, total: 6, minLR: 0.1)
        let lrs = (0..<7).map { s.lr(step: $0, base: 1) }
        let expected: [Float] = [0.5, 1, 1, Float(0.1 + 0.9 * 0.5 * (1 + cos(Double.pi / 4))), 0.55,
                                 Float(0.1 + 0.9 * 0.5 * (1 + cos(3 * Double.pi / 4))), 0.1]
        for (a, b) in zip(lrs, expected) { XCTAssertEqual(a, b, accuracy: 1e-6) }
    }
}
