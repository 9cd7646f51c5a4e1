// Parameter streaming against the in-memory step: weights, m and v on disk, read in
// per unit and updated as each gradient completes, at several budgets down to the
// smallest the step runs in, must give the same losses, gradient norms, weights and
// optimizer state bit for bit, and never hold more than the budget.
import Foundation
import Memory
import Models
import Planning
import Runtime
import Tensors
import XCTest

final class StreamedTrainingTests: XCTestCase {
    let steps = 3, lr: Float = 1e-3

    /// `masked`: the first row's targets ignored up to its middle and every third target after, as
    /// fine-tuning on completions ignores prompts.
    func batches(_ c: LlamaConfig, batch: Int, seqLen: Int, masked: Bool = false) -> [([Int], [Int])] {
        var x: UInt64 = 999
        func next() -> Int { x = x &* 6364136223846793005 &+ 1442695040888963407; return Int(x >> 33) % c.vocabSize }
        return (0..<steps).map { _ in
            let t = (0..<(batch * seqLen + 1)).map { _ in next() }
            var targets = Array(t[1...])
            if masked {
                for i in targets.indices where i < seqLen / 2 || i % 3 == 0 { targets[i] = LlamaTrainer.ignoredTarget }
            }
            return (Array(t[0..<(batch * seqLen)]), targets)
        }
    }

    /// A streamed trainer at `budget`, or at the smallest budget it runs in (nil).
    func streamed(_ c: LlamaConfig, batch: Int, seqLen: Int, headChunk: Int?, budget: Int?,
                  activations: StreamedActivations?, folder: String) throws -> StreamedTrainer {
        let model = try TrainableLlama(config: c, resident: false)
        let trainer = try LlamaTrainer(model: model, batch: batch, seqLen: seqLen, ownsActivations: false, headChunk: headChunk)
        let disk = try DiskStore(roots: [folder])
        let opt = AdamW(weightDecay: 0.1)
        let minimum = try StreamedTrainer(trainer: trainer, optimizer: opt, budget: 1 << 40, disk: disk,
                                          activations: activations ?? .offload).minimumBudget
        return try StreamedTrainer(trainer: trainer, optimizer: opt, budget: budget ?? minimum, disk: disk, activations: activations)
    }

    func check(_ name: String, batch: Int, seqLen: Int, headChunk: Int?, masked: Bool = false) throws {
        let c = try LlamaConfig.named(name)
        let data = batches(c, batch: batch, seqLen: seqLen, masked: masked)
        // The in-memory reference.
        let model = try TrainableLlama.random(config: c, seed: 7)
        let trainer = try LlamaTrainer(model: model, batch: batch, seqLen: seqLen, headChunk: headChunk)
        XCTAssertGreaterThan(trainer.headChunkCount, 1, "the test should cut the head into chunks")
        let opt = AdamW(weightDecay: 0.1)
        let state = OptimizerState(for: opt, layout: model.layout)
        var losses: [Float] = [], norms: [Double] = []
        for (inputs, targets) in data {
            model.zeroGradients()
            losses.append(try trainer.forwardBackward(inputs: inputs, targets: targets))
            norms.append(model.globalGradientNorm())
            opt.step(model, state: state, lr: lr)
        }

        let folder = NSTemporaryDirectory() + "streamed-\(name)-\(getpid())"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        // Chosen at the smallest budget, a little above it and far above it; recomputing at its own
        // smallest budget (inputs on disk) and far above it (inputs kept).
        for (activations, extra) in [(nil, 0), (nil, 3 << 20), (nil, 1 << 30), (.recompute, 0), (.recompute, 1 << 30)] as [(StreamedActivations?, Int)] {
            let atMinimum = try streamed(c, batch: batch, seqLen: seqLen, headChunk: headChunk, budget: nil,
                                         activations: activations, folder: folder)
            let budget = atMinimum.minimumBudget + extra
            let s = extra == 0 ? atMinimum : try streamed(c, batch: batch, seqLen: seqLen, headChunk: headChunk, budget: budget,
                                                          activations: activations, folder: folder)
            try s.initializeRandom(seed: 7)
            var read = 0
            for (i, (inputs, targets)) in data.enumerated() {
                let r = try s.step(inputs: inputs, targets: targets, lr: lr)
                // The executor ran the schedule the simulator ran: never above its peak, and within 2% of
                // it (equal unless the disk lagged the profile's timing, which lets the compute go on).
                let predicted = (s.simulation.peak[.compute] ?? 0) + s.plan.scratchBytes
                XCTAssertLessThanOrEqual(r.peakComputeBytes, predicted, "\(name) budget \(budget): above the schedule's peak")
                XCTAssertEqual(Double(r.peakComputeBytes), Double(predicted), accuracy: 0.02 * Double(predicted),
                               "\(name) budget \(budget): measured peak against the schedule's at step \(i + 1)")
                XCTAssertEqual(r.loss.bitPattern, losses[i].bitPattern, "\(name) budget \(budget): loss at step \(i + 1)")
                XCTAssertEqual(r.gradNorm.bitPattern, norms[i].bitPattern, "\(name) budget \(budget): grad norm at step \(i + 1)")
                XCTAssertLessThanOrEqual(r.peakComputeBytes, budget, "\(name): over the budget at step \(i + 1)")
                read += r.bytesRead
            }
            // Every parameter is read at least twice per step (forward and backward).
            XCTAssertGreaterThanOrEqual(read, steps * 2 * model.parameterCount * 4)
            let weights = Array(UnsafeBufferPointer(start: model.weights.base, count: model.weights.count))
            for (role, buffer) in [("w", weights), ("m", state.gathered("m")!), ("v", state.gathered("v")!)] {
                var differ = 0
                try s.forEachUnit(role) { u, p in
                    for i in 0..<u.floats where p[i].bitPattern != buffer[u.offset + i].bitPattern { differ += 1 }
                }
                XCTAssertEqual(differ, 0, "\(name) budget \(budget): \(role) differs in \(differ) values")
            }
            if extra == 0 {
                XCTAssertEqual(s.activations, activations ?? .offload, "at the smallest budget, activations go to disk")
                XCTAssertFalse(s.keepsInputs, "at the smallest budget, nothing stays in memory between the passes")
                XCTAssertEqual(s.keptLogitChunks, 0, "at the minimum, every head chunk's logits go to disk and back")
            }
            if extra == 1 << 30 {
                XCTAssertEqual(s.activations, activations ?? .offload)
                XCTAssertEqual(s.keepsInputs, activations == .recompute, "a large budget keeps block inputs when recomputing")
                XCTAssertEqual(s.keptLogitChunks, s.trainer.headChunkCount, "a large budget keeps every chunk's logits")
            }
        }
    }

    func testTinyTiedStreamedIsBitIdentical() throws { try check("tiny", batch: 2, seqLen: 32, headChunk: 64) }
    /// Ignored targets (fine-tuning on completions): the streamed head's chunks mask them exactly as the
    /// in-memory head does.
    func testIgnoredTargetsStreamedAreBitIdentical() throws { try check("tiny", batch: 2, seqLen: 32, headChunk: 64, masked: true) }
    func testSmallUntiedStreamedIsBitIdentical() throws { try check("small", batch: 2, seqLen: 64, headChunk: 256) }

    func testTooSmallABudgetNamesTheMinimum() throws {
        let c = try LlamaConfig.named("tiny")
        let model = try TrainableLlama(config: c, resident: false)
        let trainer = try LlamaTrainer(model: model, batch: 2, seqLen: 32, ownsActivations: false)
        let folder = NSTemporaryDirectory() + "streamed-min-\(getpid())"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        XCTAssertThrowsError(try StreamedTrainer(trainer: trainer, optimizer: AdamW(), budget: 100_000,
                                                 disk: try DiskStore(roots: [folder]))) { e in
            XCTAssertTrue("\(e)".contains("a streamed step needs"), "\(e)")
        }
    }
}
