// The training loop end to end on a small random model: accumulation, resume
// bit-identical, non-finite loss, refused checkpoints.
import Foundation
import Models
import Runtime
import XCTest

func smallConfig(_ name: String = "micro") -> LlamaConfig {
    LlamaConfig(name: name, vocabSize: 64, dim: 32, ffnDim: 48, layers: 2, heads: 4, kvHeads: 2,
                contextLength: 64, tiedEmbeddings: true)
}

func corpus(_ n: Int, vocab: Int = 64) -> [Int] {
    var g = RTRNG(9)
    // A learnable pattern with noise: next = (3·prev + 1) mod vocab most of the time.
    var t = [0]
    while t.count < n { t.append(Int(g.next() % 5) == 0 ? Int(g.next() % UInt64(vocab)) : (3 * t.last! + 1) % vocab) }
    return t
}

func tempDir(_ name: String) -> String {
    let d = NSTemporaryDirectory() + "offload-test-\(getpid())-\(name)"
    try? FileManager.default.removeItem(atPath: d)
    return d
}

final class TrainingTests: XCTestCase {
    override func setUp() { setTrainingThreads(2) }

    func options() -> TrainingOptions {
        var o = TrainingOptions()
        o.batch = 2; o.seqLen = 8; o.steps = 4; o.lr = 3e-3; o.weightDecay = 0.01
        o.schedule = "cosine"; o.warmup = 1; o.gradClip = 1; o.shuffleSeed = 5
        return o
    }

    func testLossDecreases() throws {
        let m = try TrainableLlama.random(config: smallConfig(), seed: 1)
        var o = options(); o.steps = 30; o.lr = 1e-2
        let s = try TrainingSession(model: m, data: TokenWindows(tokens: corpus(400), seqLen: 8, vocabSize: 64,
                                                                 shuffleSeed: 5), options: o)
        let losses = try (0..<30).map { _ in try s.trainStep().loss }
        XCTAssertEqual(losses[0], log(64), accuracy: 0.1, "random init starts near ln(vocab)")
        XCTAssertLessThan(losses.suffix(5).reduce(0, +) / 5, losses[0] - 0.5)
    }

    func testAccumulationMatchesOneLargerBatch() throws {
        var grads: [[Float]] = [], losses: [Float] = []
        for (batch, acc) in [(2, 1), (1, 2)] {
            let m = try TrainableLlama.random(config: smallConfig(), seed: 2)
            var o = options(); o.batch = batch; o.accumulate = acc; o.shuffleSeed = nil; o.gradClip = 0
            let s = try TrainingSession(model: m, data: TokenWindows(tokens: corpus(200), seqLen: 8, vocabSize: 64), options: o)
            losses.append(try s.trainStep().loss)
            grads.append(Array(m.gradients.buffer))
        }
        XCTAssertEqual(losses[0], losses[1], accuracy: 1e-5)
        let scale = grads[0].map(abs).max()!
        XCTAssertGreaterThan(scale, 0)
        for i in 0..<grads[0].count { XCTAssertEqual(grads[0][i], grads[1][i], accuracy: 1e-5 * scale) }
    }

    func testResumeIsBitIdentical() throws {
        let data = corpus(300)
        func session(_ m: TrainableLlama) throws -> TrainingSession {
            try TrainingSession(model: m, data: TokenWindows(tokens: data, seqLen: 8, vocabSize: 64, shuffleSeed: 5),
                                options: options())
        }
        let straight = try session(TrainableLlama.random(config: smallConfig(), seed: 3))
        let a = try (0..<4).map { _ in try straight.trainStep().loss }

        let first = try session(TrainableLlama.random(config: smallConfig(), seed: 3))
        var b = try (0..<2).map { _ in try first.trainStep().loss }
        let dir = tempDir("resume")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Checkpoint.save(first, to: dir)
        try Checkpoint.save(first, to: dir)   // overwriting an existing checkpoint goes through the swap
        let info = try Checkpoint.readInfo(dir)
        XCTAssertEqual(info.step, 2); XCTAssertEqual(info.nextBatch, 2)
        let resumed = try session(Checkpoint.loadModel(dir, info: info))
        try Checkpoint.restoreOptimizer(dir, info: info, into: resumed)
        b += try (0..<2).map { _ in try resumed.trainStep().loss }
        XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "losses \(a) vs \(b)")
        XCTAssertTrue(straight.model.weights.buffer.elementsEqual(resumed.model.weights.buffer) { $0.bitPattern == $1.bitPattern })
        XCTAssertNotEqual(a[0], a[3])
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: NSTemporaryDirectory()).filter { $0.contains(".tmp-") && $0.contains("resume") }
        XCTAssertEqual(leftovers, [])
    }

    func testNonFiniteLossStopsNamingTheStepAndKeepsCheckpoint() throws {
        let m = try TrainableLlama.random(config: smallConfig(), seed: 4)
        let s = try TrainingSession(model: m, data: TokenWindows(tokens: corpus(300), seqLen: 8, vocabSize: 64), options: options())
        _ = try s.trainStep(); _ = try s.trainStep()
        let dir = tempDir("nan")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Checkpoint.save(s, to: dir)
        try m.weight("output_norm.weight")[3] = .nan
        XCTAssertThrowsError(try s.trainStep()) { XCTAssertTrue("\($0)".contains("step 3: the loss is nan"), "\($0)") }
        XCTAssertEqual(try Checkpoint.readInfo(dir).step, 2)
        XCTAssertNoThrow(try Checkpoint.loadModel(dir, info: Checkpoint.readInfo(dir)))
    }

    func testCorruptedOrForeignCheckpointIsRefused() throws {
        let m = try TrainableLlama.random(config: smallConfig(), seed: 5)
        let s = try TrainingSession(model: m, data: TokenWindows(tokens: corpus(300), seqLen: 8, vocabSize: 64), options: options())
        let dir = tempDir("corrupt")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Checkpoint.save(s, to: dir)
        let info = try Checkpoint.readInfo(dir)
        XCTAssertThrowsError(try Checkpoint.checkSameModel(info, smallConfig("other"), dir: dir)) {
            XCTAssertTrue("\($0)".contains("holds model 'micro'"), "\($0)")
        }
        var other = smallConfig(); other.dim = 48
        XCTAssertThrowsError(try Checkpoint.checkSameModel(info, other, dir: dir))
        // Flip one byte of the weights.
        let path = dir + "/model.safetensors"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count - 5] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try Checkpoint.loadModel(dir, info: info)) { XCTAssertTrue("\($0)".contains("corrupted"), "\($0)") }
        try bytes.prefix(100).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try Checkpoint.loadModel(dir, info: info)) { XCTAssertTrue("\($0)".contains("truncated"), "\($0)") }
        try "{".write(toFile: dir + "/trainer.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Checkpoint.readInfo(dir)) { XCTAssertTrue("\($0)".contains("corrupted"), "\($0)") }
        XCTAssertThrowsError(try Checkpoint.readInfo(dir + "-missing")) { XCTAssertTrue("\($0)".contains("no such checkpoint"), "\($0)") }
    }
}
