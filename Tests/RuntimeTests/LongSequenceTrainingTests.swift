// Training at T = 8192 (B = 1) on the tiny 8,192-position model (scripts/make-tiny-models.py):
// one step's loss and gradient norms against transformers' (Fixtures/tiny/long_training.json,
// scripts/fixtures/make_long_training_fixtures.py), and the same step bit for bit whether block
// activations are kept, recomputed, or streamed with the parameters under the smallest budget
// that runs it. Attention's memory is linear in T: the smallest budget at 8192 is about twice
// that at 4096, not four times.
import Foundation
import Formats
import Memory
import Models
import Planning
import Runtime
import Tensors
import XCTest

final class LongSequenceTrainingTests: XCTestCase {
    struct Fixture: Decodable {
        let model_sha256: String
        let seq_len: Int
        let seed: UInt64
        let loss: Double
        let grad_norm: Double
        let grad_norms: [String: Double]
    }

    let lr: Float = 1e-3

    func fixture() throws -> Fixture {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fixtures/tiny/long_training.json")
        return try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
    }

    /// The fixture script's ids: a 64-bit LCG from `seed`, id = (x >> 33) mod vocabulary.
    func ids(_ count: Int, vocab: Int, seed: UInt64) -> [Int] {
        var x = seed
        return (0..<count).map { _ in
            x = x &* 6364136223846793005 &+ 1442695040888963407
            return Int(x >> 33) % vocab
        }
    }

    func testOneStepAt8192MatchesTransformersAndIsBitIdenticalUnderABudget() throws {
        let f = try fixture()
        let folder = AssetCache.directory + "/models/tiny/long"
        guard FileManager.default.fileExists(atPath: folder + "/model.safetensors") else {
            XCTFail("missing \(folder): run scripts/test.sh, or python3 scripts/make-tiny-models.py")
            return
        }
        XCTAssertEqual(try sha256Hex(ofFile: folder + "/model.safetensors"), f.model_sha256, "the fixture's model")
        let source = try HFCheckpoint(folder: folder)
        let c = source.config, T = f.seq_len
        XCTAssertEqual(T, 8192)
        XCTAssertGreaterThanOrEqual(c.contextLength, T)
        let toks = ids(T + 1, vocab: c.vocabSize, seed: f.seed)
        let (inputs, targets) = (Array(toks[0..<T]), Array(toks[1...]))

        // In memory, every activation kept: against transformers.
        let model = try TrainableLlama(source: source)
        let opt = AdamW(weightDecay: 0.1)
        var loss: Float = 0, norm = 0.0
        do {
            let trainer = try LlamaTrainer(model: model, batch: 1, seqLen: T)
            loss = try trainer.forwardBackward(inputs: inputs, targets: targets)
            norm = model.globalGradientNorm()
        }
        XCTAssertEqual(Double(loss), f.loss, accuracy: 1e-4, "loss against transformers")
        XCTAssertEqual(norm, f.grad_norm, accuracy: 1e-4 * f.grad_norm, "gradient norm against transformers")
        for (name, want) in f.grad_norms {
            let g = try model.gradient(name)
            let got = g.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
            XCTAssertEqual(got, want, accuracy: 1e-4 * want + 1e-7, "gradient norm of \(name)")
        }

        // Recomputing every block in the backward: the same bits.
        let again = try TrainableLlama(source: source)
        let recompute = try LlamaTrainer(model: again, batch: 1, seqLen: T, policy: .recomputeAll)
        XCTAssertEqual(try recompute.forwardBackward(inputs: inputs, targets: targets).bitPattern, loss.bitPattern)
        XCTAssertEqual(again.globalGradientNorm().bitPattern, norm.bitPattern)

        opt.step(model, state: OptimizerState(for: opt, layout: model.layout), lr: lr)
        let weights = Array(UnsafeBufferPointer(start: model.weights.base, count: model.weights.count))

        // Parameters, gradients and AdamW state on disk, at the smallest budget: activations to
        // disk and back, or block inputs on disk and every block recomputed.
        let dir = NSTemporaryDirectory() + "long-seq-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var minimum: [StreamedActivations: Int] = [:]
        for activations in [StreamedActivations.offload, .recompute] {
            let s = try streamed(c, ropeStyle: source.ropeStyle, seqLen: T, activations: activations, folder: dir)
            minimum[activations] = s.minimumBudget
            try s.initialize(from: source)
            let r = try s.step(inputs: inputs, targets: targets, lr: lr)
            XCTAssertEqual(r.loss.bitPattern, loss.bitPattern, "\(activations): loss")
            XCTAssertEqual(r.gradNorm.bitPattern, norm.bitPattern, "\(activations): gradient norm")
            XCTAssertLessThanOrEqual(r.peakComputeBytes, s.budget, "\(activations): over the budget")
            var differ = 0
            try s.forEachUnit("w") { u, p in
                for i in 0..<u.floats where p[i].bitPattern != weights[u.offset + i].bitPattern { differ += 1 }
            }
            XCTAssertEqual(differ, 0, "\(activations): updated weights differ in \(differ) values")
        }

        // Memory linear in T: the smallest budget at 8192 against 4096.
        for activations in [StreamedActivations.offload, .recompute] {
            let half = try streamed(c, ropeStyle: source.ropeStyle, seqLen: T / 2, activations: activations, folder: dir)
            let ratio = Double(minimum[activations]!) / Double(half.minimumBudget)
            XCTAssertLessThan(ratio, 2.2, "\(activations): the smallest budget grows \(ratio)× from T 4096 to 8192")
        }
    }

    /// A streamed trainer at the smallest budget it runs in.
    func streamed(_ c: LlamaConfig, ropeStyle: RopeStyle, seqLen: Int, activations: StreamedActivations,
                  folder: String) throws -> StreamedTrainer {
        let model = try TrainableLlama(config: c, ropeStyle: ropeStyle, resident: false)
        let trainer = try LlamaTrainer(model: model, batch: 1, seqLen: seqLen, ownsActivations: false)
        let disk = try DiskStore(roots: [folder])
        let opt = AdamW(weightDecay: 0.1)
        let minimum = try StreamedTrainer(trainer: trainer, optimizer: opt, budget: 1 << 40, disk: disk,
                                          activations: activations).minimumBudget
        return try StreamedTrainer(trainer: trainer, optimizer: opt, budget: minimum, disk: disk, activations: activations)
    }
}
