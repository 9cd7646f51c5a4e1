// Configurations beyond plain Llama — RoPE scaling (Llama 3.1's `llama3`, `linear`) and Qwen2
// (q/k/v biases, NEOX RoPE in GGUF) — against transformers on tiny random models, through every
// way such a model reaches Offload: the Hugging Face folder, llama.cpp's GGUF conversion, and
// Offload's exports both ways. The sequence runs to position 95, three times the RoPE-scaled
// models' original context of 32. The models are made into the cache by
// scripts/make-tiny-models.py (standard library; folders as save_pretrained writes them, GGUFs as
// llama.cpp's convert_hf_to_gguf.py writes them, both checked byte for byte when the references
// were made); the references, in Fixtures/tiny, by scripts/fixtures/make_tiny_model_fixtures.py.
import Foundation
import Formats
import Kernels
import Models
import XCTest

final class TinyModelParityTests: XCTestCase {
    static let root = TinyReference.root
    lazy var reference = TinyReference.load()
    var dir: String!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("offload-rope-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    /// The model's Hugging Face folder in the cache, checked to hold the weights the reference was computed from.
    func folder(_ name: String) throws -> String {
        let path = TestAssets.tiny + "/" + reference.models[name]!.folder
        let weights = try TestAssets.require(path + "/model.safetensors", hint: TestAssets.tinyHint)
        XCTAssertEqual(try sha256Hex(ofFile: weights), reference.models[name]!.safetensors_sha256,
                       "\(weights) is not the file Fixtures/tiny/reference.json was computed from")
        return path
    }

    /// The model's GGUF in the cache, checked likewise.
    func ggufPath(_ name: String) throws -> String {
        let m = reference.models[name]!
        let path = try TestAssets.require(TestAssets.tiny + "/" + m.gguf!, hint: TestAssets.tinyHint)
        XCTAssertEqual(try sha256Hex(ofFile: path), m.gguf_sha256, "\(path) is not the file Fixtures/tiny/reference.json was computed from")
        return path
    }

    func expected(_ name: String) throws -> [Float] {
        let data = try Data(contentsOf: Self.root.appendingPathComponent(reference.models[name]!.logits))
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    /// Prefill logits of the reference ids, and the last one again by a decode step (for Gemma 3, through
    /// the sliding window's row-at-a-time branch).
    func logits(_ source: WeightSource) throws -> (all: [Float], decoded: [Float]) {
        try prefillAndDecodeLogits(source, reference.ids)
    }

    func assertMatches(_ got: [Float], _ want: [Float], _ what: String, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, what, line: line)
        let scale = want.map(abs).max()!
        var worst: Float = 0
        for i in 0..<min(got.count, want.count) { worst = max(worst, abs(got[i] - want[i])) }
        XCTAssertLessThan(worst / scale, 1e-4, "\(what): max |Δlogit| \(worst) against max |logit| \(scale)", line: line)
    }

    func testHuggingFaceFoldersMatchTransformers() throws {
        for (name, scaling) in [("llama3", RopeScaling.llama3(factor: 8, lowFrequencyFactor: 1, highFrequencyFactor: 4,
                                                               originalContext: 32)),
                                ("linear", .linear(factor: 4))] {
            let hf = try HFCheckpoint(folder: try folder(name))
            XCTAssertEqual(hf.config.ropeScaling, scaling, name)
            let want = try expected(name), vocab = reference.models[name]!.shape[1]
            let (all, decoded) = try logits(hf)
            assertMatches(all, want, "\(name) all positions")
            assertMatches(decoded, Array(want.suffix(vocab)), "\(name) decode step at position 95")

            // The test can tell: without the scaling, the far positions are far off.
            var unscaled = hf.config
            unscaled.ropeScaling = nil
            let table = unscaled.ropeTable(maxPositions: 96), scaled = hf.config.ropeTable(maxPositions: 96)
            XCTAssertGreaterThan(zip(table.cos, scaled.cos).map { abs($0 - $1) }.max()!, 0.5, name)
        }
    }

    func testLlamaCppConversionMatchesTransformers() throws {
        // convert_hf_to_gguf.py writes Llama 3.1's scaling as rope_freqs.weight, one divisor per frequency
        // (the file is the converter's bytes; pinned here by value). With head 16, theta 1e4 and an original
        // context of 32, the wavelengths are 2π·10⁴^(i/8): band 0 (6.3) is below 32/4 and keeps its frequency,
        // band 1 (19.87) is smoothed, 1/((1−s)/8 + s) with s = (32/19.87 − 1)/3, and the rest are above 32: ÷8.
        let gguf = try GGUFWeights(path: try ggufPath("llama3"))
        guard case .divisors(let d)? = gguf.config.ropeScaling else {
            return XCTFail("expected per-frequency divisors, got \(String(describing: gguf.config.ropeScaling))")
        }
        XCTAssertEqual(d.count, 8)
        XCTAssertEqual(d.first, 1)
        if d.count == 8 { XCTAssertEqual(d[1], 3.299539, accuracy: 1e-5) }
        XCTAssertEqual(Array(d.dropFirst(2)), Array(repeating: 8, count: 6))
        XCTAssertEqual(gguf.file.tensors.first?.name, "rope_freqs.weight")
        let (all, _) = try logits(gguf)
        assertMatches(all, try expected("llama3"), "llama.cpp's GGUF")
    }

    func testExportsKeepTheScaling() throws {
        let hf = try HFCheckpoint(folder: try folder("llama3"))
        // HF → GGUF: the divisors llama.cpp's converter writes, and the same logits.
        try exportGGUF(from: hf, to: dir + "/m.gguf")
        let g = try GGUFWeights(path: dir + "/m.gguf")
        let theirs = try GGUFWeights(path: try ggufPath("llama3"))
        guard case .divisors(let ours)? = g.config.ropeScaling, case .divisors(let ref)? = theirs.config.ropeScaling else {
            return XCTFail("the exported GGUF has no rope_freqs.weight")
        }
        for (a, b) in zip(ours, ref) { XCTAssertEqual(a, b, accuracy: 1e-6 * b) }
        assertMatches(try logits(g).all, try expected("llama3"), "Offload's GGUF export")
        // HF → HF keeps rope_scaling as it was.
        try exportHFCheckpoint(from: hf, to: dir + "/hf")
        XCTAssertEqual(try HFCheckpoint(folder: dir + "/hf").config.ropeScaling, hf.config.ropeScaling)
        // Linear scaling in GGUF is llama.rope.scaling.type/factor, read back as such.
        let linear = try HFCheckpoint(folder: try folder("linear"))
        try exportGGUF(from: linear, to: dir + "/linear.gguf")
        let lg = try GGUFWeights(path: dir + "/linear.gguf")
        XCTAssertEqual(lg.config.ropeScaling, .linear(factor: 4))
        XCTAssertEqual(lg.file.string("llama.rope.scaling.type"), "linear")
        assertMatches(try logits(lg).all, try expected("linear"), "linear GGUF export")
        // Per-frequency divisors have no config.json form: a clear refusal, not a silently wrong model.
        XCTAssertThrowsError(try exportHFCheckpoint(from: theirs, to: dir + "/nope")) { e in
            XCTAssertTrue("\(e)".contains("rope_freqs.weight"), "\(e)")
        }
    }

    func testQwen2MatchesTransformersFromEveryFormat() throws {
        let want = try expected("qwen2")
        let hf = try HFCheckpoint(folder: try folder("qwen2"))
        XCTAssertEqual(hf.config.architecture, .qwen2)
        XCTAssertTrue(hf.config.tiedEmbeddings)
        XCTAssertEqual(hf.config.ropeTheta, 1_000_000)
        let (all, decoded) = try logits(hf)
        assertMatches(all, want, "qwen2 folder, all positions")
        assertMatches(decoded, Array(want.suffix(64)), "qwen2 folder, decode step")
        // llama.cpp's conversion: arch qwen2, biases as blk.N.attn_{q,k,v}.bias, Q/K rows in halves (NEOX).
        let gguf = try GGUFWeights(path: try ggufPath("qwen2"))
        XCTAssertEqual(gguf.config.architecture, .qwen2)
        XCTAssertEqual(gguf.ropeStyle, .halfSplit)
        let (gall, gdecoded) = try logits(gguf)
        assertMatches(gall, want, "qwen2 GGUF, all positions")
        assertMatches(gdecoded, Array(want.suffix(64)), "qwen2 GGUF, decode step")
        // The biases are large (std 0.3, like the weights): a forward that skipped them could not match.
        XCTAssertGreaterThan(try gguf.vector("blk.0.attn_k.bias").map(abs).max()!, 0.3)
        // Offload's exports keep the architecture, and the GGUF keeps llama.cpp's row order.
        try exportGGUF(from: hf, to: dir + "/q.gguf")
        let exported = try GGUFWeights(path: dir + "/q.gguf")
        XCTAssertEqual(exported.file.string("general.architecture"), "qwen2")
        XCTAssertEqual(Data(try exported.tensor("blk.1.attn_q.weight").bytes), Data(try gguf.tensor("blk.1.attn_q.weight").bytes))
        assertMatches(try logits(exported).all, want, "Offload's GGUF export")
        try exportHFCheckpoint(from: gguf, to: dir + "/hf")
        let back = try HFCheckpoint(folder: dir + "/hf")
        XCTAssertEqual(back.config.architecture, .qwen2)
        assertMatches(try logits(back).all, want, "Offload's Hugging Face export")
        // Training refuses it by name rather than dropping the biases.
        XCTAssertThrowsError(try TrainableLlama(source: gguf)) { e in
            XCTAssertTrue("\(e)".contains("training qwen2 models"), "\(e)")
        }
    }
}
