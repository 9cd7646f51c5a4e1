// SmolLM2-135M: loss and every parameter's gradient for one batch against the
// reference computed by Hugging Face transformers + torch in fp32 from the same
// dequantized GGUF (Fixtures/smollm2/training.json). Skipped when the model or
// the fixture is absent.
import Foundation
import Tensors
import Formats
import Kernels
import Models
import XCTest

/// The fixture folder: the package's Fixtures/, or $OFFLOAD_FIXTURES.
func fixturePath(_ relative: String) -> String? {
    var candidates: [String] = []
    if let env = ProcessInfo.processInfo.environment["OFFLOAD_FIXTURES"] { candidates.append(env + "/" + relative) }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    candidates.append(root.appendingPathComponent("Fixtures/" + relative).path)
    return candidates.first { FileManager.default.fileExists(atPath: $0) }
}

func smolLM2Path() -> String {
    let cache = AssetCache.directory
    return cache + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
}

final class TrainingGradientParityTests: XCTestCase {
    func testSmolLM2LossAndGradientNormsMatchTorch() throws {
        guard let fixture = fixturePath("smollm2/training.json") else { XCTFail("Fixtures/smollm2/training.json not found"); return }
        guard FileManager.default.fileExists(atPath: smolLM2Path()) else { XCTFail("\(smolLM2Path()) not found: run scripts/fetch-assets.sh"); return }
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixture))) as! [String: Any]
        let step0 = json["step0"] as! [String: Any]
        let inputs = (step0["inputs"] as! [[Int]]).flatMap { $0 }, targets = (step0["targets"] as! [[Int]]).flatMap { $0 }
        let data = json["data"] as! [String: Any]
        let B = data["batch"] as! Int, T = data["seq_len"] as! Int

        TrainingThreads.set(2)
        let model = try TrainableLlama(source: GGUFWeights(path: smolLM2Path()))
        XCTAssertTrue(model.config.tiedEmbeddings)
        let trainer = try LlamaTrainer(model: model, batch: B, seqLen: T)
        model.zeroGradients()
        let loss = try trainer.forwardBackward(inputs: inputs, targets: targets)

        // Loss: fp32 in both, summed in different orders; 1e-5 relative is ~100 ulps of the mean.
        let refLoss = step0["loss"] as! Double
        print("parity: loss \(loss) vs torch \(refLoss) (relative \(abs(Double(loss) - refLoss) / refLoss))")
        XCTAssertEqual(Double(loss), refLoss, accuracy: 1e-5 * refLoss)

        // Global norm (token_embd counted once, with both its uses summed).
        let refNorm = step0["grad_norm"] as! Double
        let norm = model.globalGradientNorm()
        print("parity: grad norm \(norm) vs torch \(refNorm) (relative \(abs(norm - refNorm) / refNorm))")
        XCTAssertEqual(norm, refNorm, accuracy: 1e-4 * refNorm)

        // Every tensor's norm: reordering fp32 sums over 128 rows × thousands of terms gives ~1e-6
        // relative noise per element; norms agree far tighter than a wrong gradient would (≥ 1e-2).
        let refNorms = step0["grad_norms"] as! [String: Double]
        XCTAssertEqual(refNorms.count, model.layout.entries.count)
        var worst = (name: "", rel: 0.0)
        for (name, n) in model.gradientNorms() {
            guard let r = refNorms[name] else { XCTFail("fixture has no norm for \(name)"); continue }
            let rel = abs(n - r) / r
            if rel > worst.rel { worst = (name, rel) }
            XCTAssertEqual(n, r, accuracy: 1e-3 * r, name)
        }
        print("parity: worst per-tensor grad norm relative error \(worst.rel) (\(worst.name))")

        // Individual elements, in GGUF element order (our layout is the file's: Q/K rows permuted alike).
        var worstSample = 0.0
        for (name, samples) in step0["grad_samples"] as! [String: [[Double]]] {
            let g = try model.gradient(name)
            let scale = refNorms[name]! / Double(g.count).squareRoot()   // RMS of the tensor's gradient
            for s in samples {
                let err = abs(Double(g[Int(s[0])]) - s[1])
                worstSample = max(worstSample, err / scale)
                XCTAssertEqual(Double(g[Int(s[0])]), s[1], accuracy: 1e-2 * scale + 1e-3 * abs(s[1]), "\(name)[\(Int(s[0]))]")
            }
        }
        print("parity: worst sampled gradient error \(worstSample) × the tensor's RMS gradient")
        // Whole norm-weight gradients: each element sums 128 rows of products that cancel heavily in the
        // few "massive activation" channels, so a handful of elements differ by up to ~1e-3 of their value;
        // measured against the tensor's RMS gradient the worst error is ~1e-3, a wrong kernel gives ~1.
        var worstFull = 0.0
        for (name, full) in step0["grad_full"] as! [String: [Double]] {
            let g = try model.gradient(name)
            let scale = refNorms[name]! / Double(g.count).squareRoot()
            for i in 0..<full.count {
                worstFull = max(worstFull, abs(Double(g[i]) - full[i]) / scale)
                XCTAssertEqual(Double(g[i]), full[i], accuracy: 1e-2 * scale, "\(name)[\(i)]")
            }
        }
        print("parity: worst full-tensor gradient error \(worstFull) × the tensor's RMS gradient")
    }
}
