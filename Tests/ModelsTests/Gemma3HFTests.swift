// Gemma 3 from a Hugging Face folder (Gemma3ForCausalLM) against transformers and against the
// GGUF llama.cpp's convert_hf_to_gguf.py makes of the same folder, on the tiny random models
// scripts/make-tiny-models.py makes (gemma3: five local layers with a window of 8 and RoPE base
// 1e4, one global with 1e6, head_dim 16 ≠ hidden/heads, GQA 4/2, tied head; gemma3cap: linear
// RoPE ×8 on the global layer and a final logit soft-cap of 10). The references, in Fixtures/tiny,
// are transformers' fp32 eager logits at 96 positions (12 windows) and a greedy continuation.
import Foundation
import Formats
import Kernels
import Models
import Tensors
import XCTest

final class Gemma3HFTests: XCTestCase {
    static let root = TinyReference.root
    lazy var reference = TinyReference.load()
    var dir: String!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("offload-gemma3-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    /// The folder in the cache, checked to hold the files the reference was computed from.
    func folder(_ name: String) throws -> String {
        let m = reference.models[name]!, path = TestAssets.tiny + "/" + m.folder
        let weights = try TestAssets.require(path + "/model.safetensors", hint: TestAssets.tinyHint)
        XCTAssertEqual(try sha256Hex(ofFile: weights), m.safetensors_sha256,
                       "\(weights) is not the file Fixtures/tiny/reference.json was computed from")
        XCTAssertEqual(try sha256Hex(ofFile: path + "/config.json"), m.config_sha256,
                       "\(path)/config.json is not the one Fixtures/tiny/reference.json was computed from")
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

    /// Max |Δ| over max |reference|.
    func relativeError(_ got: [Float], _ want: [Float]) -> Float {
        var worst: Float = 0
        for i in 0..<min(got.count, want.count) { worst = max(worst, abs(got[i] - want[i])) }
        return worst / want.map(abs).max()!
    }

    func assertMatches(_ got: [Float], _ want: [Float], _ what: String, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, what, line: line)
        let e = relativeError(got, want)
        XCTAssertLessThan(e, 1e-4, "\(what): max |Δlogit| / max |logit| = \(e)", line: line)
        print("[gemma3] \(what): max |Δlogit| / max |logit| = \(e)")
    }

    func argmax(_ v: [Float]) -> Int { v.indices.max { v[$0] < v[$1] }! }

    func testFoldersMatchTransformers() throws {
        for name in ["gemma3", "gemma3cap"] {
            let hf = try HFCheckpoint(folder: try folder(name))
            let want = try expected(name), vocab = reference.models[name]!.shape[1]
            let (all, decoded) = try logits(hf)
            assertMatches(all, want, "\(name) all positions")
            assertMatches(decoded, Array(want.suffix(vocab)), "\(name) decode step at position 95")

            // Greedy: prefill the prompt, then decode one token at a time.
            let m = try LlamaModel(source: hf, threads: 2), r = reference.models[name]!
            let cache = m.makeCache(capacity: 64)
            var next = argmax(try m.forward(Array(reference.ids.prefix(r.greedy_prompt!)), cache: cache))
            var tokens = [next]
            while tokens.count < r.greedy!.count {
                next = argmax(try m.forward([next], cache: cache))
                tokens.append(next)
            }
            XCTAssertEqual(tokens, r.greedy, "\(name) greedy continuation")
        }
    }

    func testConfigReadAsTransformersDerivesIt() throws {
        let c = try HFCheckpoint(folder: try folder("gemma3")).config
        XCTAssertEqual(c.architecture, .gemma3)
        XCTAssertEqual([c.vocabSize, c.dim, c.ffnDim, c.layers, c.heads, c.kvHeads, c.headDim, c.contextLength],
                       [64, 32, 64, 6, 4, 2, 16, 256])
        XCTAssertEqual(c.ropeTheta, 1_000_000)
        XCTAssertEqual(c.rmsEps, 1e-6)
        XCTAssertTrue(c.tiedEmbeddings)
        XCTAssertNil(c.ropeScaling)
        XCTAssertNil(c.finalLogitSoftcap)
        XCTAssertEqual(c.slidingWindow?.size, 8)
        XCTAssertEqual(c.slidingWindow?.pattern, 6)
        XCTAssertEqual(c.slidingWindow?.ropeTheta, 10_000)
        XCTAssertEqual((0..<6).map(c.isLocalLayer), [true, true, true, true, true, false])
        let cap = try HFCheckpoint(folder: try folder("gemma3cap")).config
        XCTAssertEqual(cap.ropeScaling, .linear(factor: 8))
        XCTAssertEqual(cap.finalLogitSoftcap, 10)
        // Local layers keep base 1e4 unscaled; only the global layer's table is scaled.
        let local = try XCTUnwrap(cap.localRopeTable(maxPositions: 96))
        XCTAssertEqual(local.cos, RopeTable(headDim: 16, maxPositions: 96, theta: 10_000).cos)
    }

    /// The folder and the GGUF convert_hf_to_gguf.py makes of it (the generator's bytes, checked
    /// against the converter when the references were made): the same config and the same logits, bit for bit.
    func testLlamaCppConversionGivesBitIdenticalLogits() throws {
        let m = reference.models["gemma3"]!
        let path = try TestAssets.require(TestAssets.tiny + "/" + m.gguf!, hint: TestAssets.tinyHint)
        XCTAssertEqual(try sha256Hex(ofFile: path), m.gguf_sha256)
        let gguf = try GGUFWeights(path: path), hf = try HFCheckpoint(folder: try folder("gemma3"))
        var hc = hf.config
        hc.name = gguf.config.name
        XCTAssertEqual(hc, gguf.config)
        XCTAssertEqual(hf.ropeStyle, gguf.ropeStyle)
        // Norm weights + 1 (the converter's shift), q/k norms included.
        for name in ["blk.0.attn_q_norm.weight", "blk.3.attn_k_norm.weight", "blk.5.post_ffw_norm.weight", "output_norm.weight"] {
            XCTAssertEqual(try hf.vector(name), try gguf.vector(name), name)
        }
        let (a, ad) = try logits(hf), (b, bd) = try logits(gguf)
        XCTAssertEqual(a, b, "all positions")
        XCTAssertEqual(ad, bd, "decode step")
        assertMatches(b, try expected("gemma3"), "gemma3 GGUF all positions")
    }

    // MARK: what is refused, and forms of config.json beyond the fixture's

    /// A copy of the gemma3 folder whose config.json is edited by `edit`; the weights are linked.
    func variant(_ tag: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
        let src = try folder("gemma3"), out = dir + "/" + tag
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: out + "/model.safetensors", withDestinationPath: src + "/model.safetensors")
        var o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: src + "/config.json"))) as! [String: Any]
        edit(&o)
        try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: out + "/config.json"))
        return out
    }

    func assertRefused(_ path: String, naming field: String, line: UInt = #line) {
        XCTAssertThrowsError(try HFCheckpoint(folder: path), line: line) { e in
            XCTAssertTrue("\(e)".contains(field), "\(e)", line: line)
        }
    }

    func testUnsupportedFieldsAreRefusedByName() throws {
        assertRefused(try variant("softcap") { $0["attn_logit_softcapping"] = 50.0 }, naming: "attn_logit_softcapping")
        assertRefused(try variant("scalar") { $0["query_pre_attn_scalar"] = 24 }, naming: "query_pre_attn_scalar")
        assertRefused(try variant("act") { $0["hidden_activation"] = "gelu" }, naming: "hidden_activation")
        assertRefused(try variant("bidi") { $0["use_bidirectional_attention"] = true }, naming: "use_bidirectional_attention")
        assertRefused(try variant("localrope") {
            $0["rope_parameters"] = ["full_attention": ["rope_type": "default", "rope_theta": 1e6],
                                     "sliding_attention": ["rope_type": "linear", "factor": 2.0, "rope_theta": 1e4]]
        }, naming: "rope_parameters.sliding_attention.rope_type")
        assertRefused(try variant("yarn") {
            $0["rope_parameters"] = ["full_attention": ["rope_type": "yarn", "factor": 2.0, "rope_theta": 1e6],
                                     "sliding_attention": ["rope_type": "default", "rope_theta": 1e4]]
        }, naming: "rope_parameters.full_attention.rope_type")
        assertRefused(try variant("irregular") {
            $0["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention",
                                 "sliding_attention", "sliding_attention", "full_attention"]
        }, naming: "layer_types")
        assertRefused(try variant("nowindow") { $0["sliding_window"] = NSNull() }, naming: "sliding_window")
    }

    func testOtherConfigForms() throws {
        let base = try HFCheckpoint(folder: try folder("gemma3")).config
        // layer_types with every third layer global; without layer_types, sliding_window_pattern; older
        // configs' rope_theta / rope_local_base_freq / rope_scaling.
        let third = try HFCheckpoint(folder: try variant("third") {
            $0["layer_types"] = (0..<6).map { ($0 + 1) % 3 == 0 ? "full_attention" : "sliding_attention" }
        }).config
        XCTAssertEqual((0..<6).map(third.isLocalLayer), [true, true, false, true, true, false])
        let old = try HFCheckpoint(folder: try variant("old") {
            $0["layer_types"] = nil; $0["rope_parameters"] = nil; $0["sliding_window_pattern"] = 2
            $0["rope_theta"] = 500_000.0; $0["rope_local_base_freq"] = 20_000.0
            $0["rope_scaling"] = ["rope_type": "linear", "factor": 4.0]
        }).config
        XCTAssertEqual((0..<6).map(old.isLocalLayer), [true, false, true, false, true, false])
        XCTAssertEqual(old.ropeTheta, 500_000)
        XCTAssertEqual(old.slidingWindow?.ropeTheta, 20_000)
        XCTAssertEqual(old.ropeScaling, .linear(factor: 4))
        // The multimodal wrapper (model_type gemma3) with the text model under text_config.
        let nested = try HFCheckpoint(folder: try variant("nested") { o in
            var text = o
            text["architectures"] = nil
            o = ["model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "text_config": text]
        })
        var nc = nested.config
        nc.name = base.name
        XCTAssertEqual(nc, base)
        XCTAssertEqual(try logits(nested).all, try logits(HFCheckpoint(folder: try folder("gemma3"))).all)
        // Its vision tower is refused by name.
        let vision = dir + "/vision"
        try FileManager.default.createDirectory(atPath: vision, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: dir + "/nested/config.json", toPath: vision + "/config.json")
        let st = try SafetensorsFile(path: try folder("gemma3") + "/model.safetensors")
        var w = SafetensorsWriter()
        w.metadata = ["format": "pt"]
        for t in st.tensors {
            let (info, dtype, bytes) = try st.data(t.name)
            w.tensors.append(.init(name: t.name.replacingOccurrences(of: "model.", with: "model.language_model."),
                                   dtype: dtype, shape: info.shape, data: Data(bytes)))
        }
        try FileManager.default.copyItem(atPath: vision, toPath: dir + "/mm")   // the text model alone: runs
        try w.write(to: dir + "/mm/model.safetensors")
        XCTAssertEqual(try logits(HFCheckpoint(folder: dir + "/mm")).all, try logits(nested).all,
                       "tensors under model.language_model.")
        w.tensors.append(.init(name: "model.vision_tower.vision_model.post_layernorm.weight", dtype: .f32, shape: [4],
                               data: Data(count: 16)))
        try w.write(to: vision + "/model.safetensors")
        assertRefused(vision, naming: "vision tower")
    }

    func testTrainingAndExportRefusedByName() throws {
        let hf = try HFCheckpoint(folder: try folder("gemma3"))
        XCTAssertThrowsError(try TrainableLlama(source: hf)) { e in
            XCTAssertTrue("\(e)".contains("training gemma3 models"), "\(e)")
        }
        XCTAssertThrowsError(try exportGGUF(from: hf, to: dir + "/g.gguf")) { e in
            XCTAssertTrue("\(e)".contains("writing gemma3 models is not supported"), "\(e)")
        }
        XCTAssertThrowsError(try exportHFCheckpoint(from: hf, to: dir + "/hf")) { e in
            XCTAssertTrue("\(e)".contains("gemma3"), "\(e)")
        }
    }
}
