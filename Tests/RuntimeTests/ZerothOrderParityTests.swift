// Zeroth-order SGD (MeZO) on SmolLM2-135M against Fixtures/zo/reference.json: transformers + torch in
// fp32 with z drawn by an independent NumPy implementation of the documented generator
// (scripts/fixtures/make_zo_fixtures.py). z must agree bit for bit; each step's loss at w + εz and its
// projected gradient g, and the weights after 10 steps, within what fp32 sums in another order allow.
import Foundation
import Kernels
import Models
import Runtime
import Tensors
import XCTest

final class ZerothOrderParityTests: XCTestCase {
    func fixture() -> String? {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let path = root.appendingPathComponent("Fixtures/zo/reference.json").path
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }

    func testZDrawnAsDocumented() throws {
        guard let f = fixture() else { XCTFail("Fixtures/zo/reference.json not found"); return }
        let ref = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: f))) as! [String: Any]
        let seed = UInt64((ref["run"] as! [String: Any])["seed"] as! Int)
        let samples = ref["z_samples"] as! [[Any]]
        XCTAssertEqual(samples.count, 36)
        var values: [Float] = []
        for s in samples {
            let step = s[0] as! Int, name = s[1] as! String, j = s[2] as! Int, expected = Float(s[3] as! Double)
            let got = ZerothOrder.z(seed: seed, step: step, tensor: name, range: j..<(j + 1))[0]
            XCTAssertEqual(got.bitPattern, expected.bitPattern, "z of \(name)[\(j)] at step \(step): \(got) vs \(expected)")
            values.append(got)
        }
        XCTAssertGreaterThan(Set(values).count, 30, "z varies with step, tensor and element")
        // Training draws z with the SIMD kernel: at every level the same bits as the scalar path (level 0).
        let best = Matmul.bestSIMDLevel
        defer { Matmul.simdLevel = best }
        Matmul.simdLevel = 0
        let plain = ZerothOrder.z(seed: seed, step: 3, tensor: "blk.7.attn_v.weight", range: 1000..<21_017)
        for level in 0...best {
            Matmul.simdLevel = level
            let fast = ZerothOrder.z(seed: seed, step: 3, tensor: "blk.7.attn_v.weight", range: 1000..<21_017)
            XCTAssertEqual(fast.map(\.bitPattern), plain.map(\.bitPattern), "SIMD level \(level)")
        }
        // Mean 0 and variance 1 over many draws (Irwin–Hall of four uniforms, scaled).
        let many = ZerothOrder.z(seed: 1, step: 1, tensor: "blk.0.ffn_up.weight", range: 0..<200_000)
        let mean = many.reduce(0.0) { $0 + Double($1) } / Double(many.count)
        let variance = many.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(many.count) - mean * mean
        XCTAssertEqual(mean, 0, accuracy: 0.01)
        XCTAssertEqual(variance, 1, accuracy: 0.01)
    }

    func testTenZOStepsFollowTheReference() throws {
        guard let f = fixture() else { XCTFail("Fixtures/zo/reference.json not found"); return }
        let modelPath = AssetCache.directory + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: modelPath) else { XCTFail("\(modelPath) not found: run scripts/fetch-assets.sh"); return }
        let ref = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: f))) as! [String: Any]
        let run = ref["run"] as! [String: Any]
        setTrainingThreads(2)
        var o = TrainingOptions()
        o.optimizer = "zo-sgd"
        o.batch = run["batch"] as! Int; o.seqLen = run["seq_len"] as! Int; o.steps = run["steps"] as! Int
        o.lr = Float(run["lr"] as! Double); o.zoEps = Float(run["eps"] as! Double); o.zoSeed = UInt64(run["seed"] as! Int)
        // Weights only: a zero-order step needs no gradient buffer.
        let model = try TrainableLlama(source: GGUFWeights(path: modelPath), gradients: false)
        XCTAssertFalse(model.hasGradients)
        XCTAssertEqual(model.gradients.count, 0)
        let session = try TrainingSession(model: model, data: TokenWindows(tokens: hamletIDs, seqLen: o.seqLen,
                                                                            vocabSize: model.config.vocabSize), options: o)
        for (k, step) in (ref["steps"] as! [[String: Double]]).enumerated() {
            let r = try session.trainStep()
            let g = session.lastProjectedGradient!
            print("zo parity: step \(k + 1) loss+ \(r.loss) vs \(step["loss"]!), g \(g) vs \(step["g"]!)")
            // The loss at w + εz: fp32 sums in another order (~1e-6 relative), as in the other parity tests.
            XCTAssertEqual(Double(r.loss), step["loss"]!, accuracy: 1e-5 * step["loss"]!, "step \(k + 1) loss")
            // g divides a difference of two such losses by 2ε = 2e-3: their ~4e-6 each become ~4e-3 in g; a z
            // drawn differently, or a wrong sign or scale, moves g by its own size (2–15 here).
            XCTAssertEqual(Double(g), step["g"]!, accuracy: 1e-2, "step \(k + 1) projected gradient")
        }
        // Weights after 10 steps: each moved by lr·Σ g·z ≈ 1e-4; differences in g move them by ~1e-8.
        for (name, samples) in ref["after"] as! [String: [[Double]]] {
            let w = try model.weight(name)
            for s in samples {
                XCTAssertEqual(Double(w[Int(s[0])]), s[1], accuracy: 1e-6 + 1e-5 * abs(s[1]), "\(name)[\(Int(s[0]))]")
            }
        }
    }
}
