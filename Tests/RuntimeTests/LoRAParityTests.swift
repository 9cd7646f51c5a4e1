// LoRA on SmolLM2-135M's frozen Q4_1 base against Fixtures/lora (scripts/fixtures/make_lora_fixtures.py):
// peft 0.21 on the float32 model transformers dequantizes from the same GGUF, starting from the same
// adapter (Fixtures/lora/init's peft config with values both sides draw from one generator, written as an
// F16 peft folder and loaded as `--lora-init` loads it), 5 AdamW steps on the Hamlet windows. Losses and the adapters' gradient norms per step, and the adapters after the 5 steps.
import Formats
import Foundation
import Kernels
import Models
import Runtime
import Tensors
import XCTest

final class LoRAParityTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/lora").path
    static let modelPath = AssetCache.directory + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"

    /// The fixture's initial adapter as a peft folder: Fixtures/lora/init/adapter_config.json beside an F16
    /// adapter_model.safetensors of the values make_lora_fixtures.py's `initial_values` draws (one splitmix64
    /// stream from seed 0 over layer, target, lora_A then lora_B, elements row-major in peft's layout;
    /// k = (value >> 53) − 1024, A = k·2⁻¹⁵, B = k·2⁻¹⁴, exact in float16). Written once per test process.
    static func initialAdapter(_ c: LlamaConfig) throws -> String {
        let dir = NSTemporaryDirectory() + "offload-lora-init-\(getpid())"
        let fm = FileManager.default
        if fm.fileExists(atPath: dir + "/adapter_model.safetensors") { return dir }
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try? fm.removeItem(atPath: dir + "/adapter_config.json")
        try fm.copyItem(atPath: root + "/init/adapter_config.json", toPath: dir + "/adapter_config.json")
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/adapter_config.json"))) as! [String: Any]
        let rank = config["r"] as! Int
        var g = SeededGenerator(seed: 0), writer = SafetensorsWriter()
        writer.metadata = ["format": "pt"]
        for l in 0..<c.layers {
            for t in LoRATarget.allCases {
                let shape = t.shape(c)
                for (part, rows, cols, scale) in [("lora_A", rank, shape.in, Float(0x1p-15)), ("lora_B", shape.out, rank, Float(0x1p-14))] {
                    var bytes = Data(capacity: rows * cols * 2)
                    for _ in 0..<rows * cols {
                        let k = Int(g.next() >> 53) - 1024
                        withUnsafeBytes(of: Float16(Float(k) * scale).bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
                    }
                    writer.tensors.append(.init(name: "base_model.model.model.layers.\(l).\(t.hfModule).\(part).weight",
                                                dtype: .f16, shape: [rows, cols], data: bytes))
                }
            }
        }
        try writer.write(to: dir + "/adapter_model.safetensors")
        return dir
    }

    func testFiveAdamWStepsFollowPeft() throws {
        let refPath = Self.root + "/reference.json"
        guard FileManager.default.fileExists(atPath: refPath) else { XCTFail("\(refPath) not found"); return }
        guard FileManager.default.fileExists(atPath: Self.modelPath) else { XCTFail("\(Self.modelPath) not found: run scripts/fetch-assets.sh"); return }
        let ref = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: refPath))) as! [String: Any]
        let run = ref["run"] as! [String: Any]
        setTrainingThreads(2)
        let base = try FrozenLlama(source: GGUFWeights(path: Self.modelPath))
        // The base stays in the file's Q4_1 blocks: no fp32 copy of a matrix.
        XCTAssertEqual(base.blocks[0][.q]!.dtype, .q4_1)
        XCTAssertLessThan(base.storedBytes, 110_000_000)
        let adapters = try LoRAAdapters.load(folder: Self.initialAdapter(base.config), config: base.config, ropeStyle: base.ropeStyle)
        XCTAssertEqual(adapters.settings.rank, run["rank"] as! Int)
        XCTAssertEqual(adapters.settings.alpha, Float(run["alpha"] as! Int))
        XCTAssertEqual(adapters.settings.targets, LoRATarget.allCases)
        var o = TrainingOptions()
        o.batch = run["batch"] as! Int; o.seqLen = run["seq_len"] as! Int; o.steps = run["steps"] as! Int
        o.lr = Float(run["lr"] as! Double); o.lora = adapters.settings
        let windows = try TokenWindows(tokens: hamletIDs, seqLen: o.seqLen, vocabSize: base.config.vocabSize)
        let steps = ref["steps"] as! [[String: Double]]

        // The initial adapter matters: the base model alone (B = 0) gives a first loss 6e-4 away (60× the tolerance).
        let plain = try LoRAAdapters(config: base.config, ropeStyle: base.ropeStyle, settings: adapters.settings)
        let (x, y) = windows.batch(0, size: o.batch)
        let baseLoss = try LlamaTrainer(base: base, adapters: plain, batch: o.batch, seqLen: o.seqLen).loss(inputs: x, targets: y)
        XCTAssertGreaterThan(abs(Double(baseLoss) - steps[0]["loss"]!), 1e-4 * steps[0]["loss"]!)

        let session = try TrainingSession(base: base, adapters: adapters, data: windows, options: o)
        for (k, step) in steps.enumerated() {
            let r = try session.trainStep()
            print("lora parity: step \(k + 1) loss \(r.loss) vs \(step["loss"]!), grad norm \(r.gradNorm) vs \(step["grad_norm"]!)")
            XCTAssertEqual(Double(r.loss), step["loss"]!, accuracy: 1e-5 * step["loss"]!, "step \(k + 1) loss")
            XCTAssertEqual(r.gradNorm, step["grad_norm"]!, accuracy: 1e-4 * step["grad_norm"]!, "step \(k + 1) gradient norm")
        }
        let after = ref["after"] as! [String: [String: Any]]
        XCTAssertEqual(after.count, adapters.layout.entries.count)
        for e in adapters.layout.entries {
            let name = LoRAAdapters.peftName(e.name)!
            guard let t = after[name] else { XCTFail("\(name) not in the reference"); continue }
            let v = try adapters.peftValues(e)
            XCTAssertEqual(t["shape"] as! [Int], e.spec.shape, name)
            let norm = v.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
            XCTAssertEqual(norm, t["norm"] as! Double, accuracy: 1e-4 * (t["norm"] as! Double), "\(name) norm")
            // Adapter values are ~1e-2 and 5 steps of lr 1e-4 move them by up to 5e-4 (Adam's first steps move
            // every element by about lr, whatever its gradient's size, so an element whose gradient is near
            // zero may move either way when sums run in another order: 2e-5, 4% of the largest move).
            for s in t["samples"] as! [[Double]] {
                XCTAssertEqual(Double(v[Int(s[0])]), s[1], accuracy: 2e-5, "\(name)[\(Int(s[0]))]")
            }
        }
    }
}

extension LoRAParityTests {
    /// Inference (`generate --lora`, `eval --lora`) applies an adapter as training computes it: the same
    /// logits as the trainer's forward, which the test above ties to peft.
    func testInferenceAppliesTheAdapterAsTrainingDoes() throws {
        guard FileManager.default.fileExists(atPath: Self.modelPath) else { XCTFail("\(Self.modelPath) not found"); return }
        setTrainingThreads(2)
        let source = try GGUFWeights(path: Self.modelPath)
        let base = try FrozenLlama(source: source)
        let adapters = try LoRAAdapters.load(folder: Self.initialAdapter(base.config), config: base.config, ropeStyle: base.ropeStyle)
        let tokens = Array(hamletIDs[0..<32])
        let trained = try LlamaTrainer(base: base, adapters: adapters, batch: 1, seqLen: tokens.count).logits(inputs: tokens)
        let llama = try LlamaModel(source: source, threads: 2)
        let plain = try llama.forward(tokens, cache: llama.makeCache(capacity: 64), allLogits: true)
        try llama.setAdapters(adapters)
        let adapted = try llama.forward(tokens, cache: llama.makeCache(capacity: 64), allLogits: true)
        XCTAssertEqual(adapted.count, trained.count)
        var worst: Float = 0, moved: Float = 0
        for i in trained.indices {
            worst = max(worst, abs(adapted[i] - trained[i]))
            moved = max(moved, abs(plain[i] - trained[i]))
        }
        print("lora inference: max |logit difference| \(worst) with the adapter, \(moved) without")
        XCTAssertLessThan(worst, 2e-4)   // 7e-5 measured
        XCTAssertGreaterThan(moved, 100 * worst, "the adapter changes the logits")
        // A different model's adapter is refused.
        let other = try LoRAAdapters(config: try LlamaConfig.named("tiny"), ropeStyle: .adjacentPairs, settings: adapters.settings)
        XCTAssertThrowsError(try llama.setAdapters(other))
    }
}

extension LoRAParityTests {
    /// A merged export (W + scale·B·A written as f32) gives the logits of the base with the adapter applied.
    func testMergedExportEqualsTheAdapterApplied() throws {
        guard FileManager.default.fileExists(atPath: Self.modelPath) else { XCTFail("\(Self.modelPath) not found"); return }
        setTrainingThreads(2)
        let source = try GGUFWeights(path: Self.modelPath)
        let adapters = try LoRAAdapters.load(folder: Self.initialAdapter(source.config), config: source.config, ropeStyle: source.ropeStyle)
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("merged-\(UUID().uuidString).gguf").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        try exportGGUF(from: LoRAMergedWeights(base: source, adapters: adapters), to: out, type: .f32,
                       tokenizerFrom: source.file)
        let tokens = Array(hamletIDs[0..<32])
        let llama = try LlamaModel(source: source, threads: 2)
        try llama.setAdapters(adapters)
        let applied = try llama.forward(tokens, cache: llama.makeCache(capacity: 64), allLogits: true)
        let merged = try LlamaModel(source: GGUFWeights(path: out), threads: 2)
        let logits = try merged.forward(tokens, cache: merged.makeCache(capacity: 64), allLogits: true)
        let worst = zip(applied, logits).map { abs($0 - $1) }.max() ?? .infinity
        print("lora merge: max |logit difference| \(worst)")
        XCTAssertLessThan(worst, 2e-4)
    }
}
