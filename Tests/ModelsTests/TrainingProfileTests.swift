// Not a test: a benchmark of one SmolLM2-135M-shaped training pass (random weights,
// B=4, T=256) with a per-kernel time breakdown. Runs only with OFFLOAD_PROFILE=1.
import Foundation
import Kernels
import Models
import XCTest

final class TrainingProfileTests: XCTestCase {
    func testProfileSmolLM2Shape() throws {
        guard ProcessInfo.processInfo.environment["OFFLOAD_PROFILE"] != nil else { throw XCTSkip("set OFFLOAD_PROFILE=1") }
        let threads = Int(ProcessInfo.processInfo.environment["OFFLOAD_THREADS"] ?? "") ?? 2
        let blas = Int(ProcessInfo.processInfo.environment["OFFLOAD_BLAS_THREADS"] ?? "") ?? 1
        TrainingThreads.set(threads, blas: blas)
        let c = try LlamaConfig.named("smollm2-135m")
        let m = try TrainableLlama.random(config: c, seed: 1)
        let t = try LlamaTrainer(model: m, batch: 4, seqLen: 256)
        var g = ModelTestRNG(1)
        let x = g.tokens(1024, vocab: c.vocabSize), y = g.tokens(1024, vocab: c.vocabSize)
        try t.forwardBackward(inputs: x, targets: y)   // warm-up: first touch of every buffer
        t.profiling = true
        let steps = 3
        for _ in 0..<steps {
            let t0 = Date()
            try t.forwardBackward(inputs: x, targets: y)
            let s = Date().timeIntervalSince(t0)
            print(String(format: "forward+backward: %.2f s, %.1f tok/s (%d threads, OpenBLAS %d)", s, 1024 / s, threads, blas))
        }
        let total = t.profile.values.reduce(0, +)
        for (k, v) in t.profile.sorted(by: { $0.value > $1.value }) {
            print(String(format: "%@ %7.3f s  %5.1f%%", k.padding(toLength: 16, withPad: " ", startingAt: 0),
                         v / Double(steps), 100 * v / total))
        }
    }
}
