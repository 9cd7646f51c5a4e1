// Mixtures of experts (Mixtral, Qwen2-MoE, OLMoE, Qwen3-MoE) against transformers on tiny random models, from
// the Hugging Face folder and from GGUF in all three expert layouts: logits at every position, each
// layer's expert choices, and a greedy continuation. The models are made into the cache by
// scripts/make-tiny-models.py (standard library; the GGUFs hold the tensors and keys llama.cpp's
// convert_hf_to_gguf.py writes, checked when the references were made); the references, in
// Fixtures/moe, by scripts/fixtures/make_moe_fixtures.py.
import Foundation
import Formats
import Models
import Tensors
import XCTest

struct MoEReference: Decodable {
    struct Model: Decodable {
        let folder: String; let logits: String; let shape: [Int]
        let safetensors_sha256: String; let gguf: String; let gguf_sha256: String
        /// Per layer, per position: the chosen experts, ascending.
        let experts: [[[Int]]]
        let greedy_prompt: Int; let greedy: [Int]; let greedy_margin: [Float]
        let gguf_layouts: [String: String]?
    }
    let ids: [Int]
    let models: [String: Model]

    static let root = TestAssets.fixtures.appendingPathComponent("moe")
    static func load() -> MoEReference {
        try! JSONDecoder().decode(MoEReference.self, from: Data(contentsOf: root.appendingPathComponent("reference.json")))
    }
}

final class MoEParityTests: XCTestCase {
    lazy var reference = MoEReference.load()
    let names = ["mixtral", "qwen2moe", "olmoe", "qwen3moe"]

    /// A file of the cache, checked to be the one the reference was computed from.
    func cached(_ rel: String, sha256: String) throws -> String {
        let path = try TestAssets.require(TestAssets.tiny + "/" + rel, hint: TestAssets.tinyHint)
        XCTAssertEqual(try sha256Hex(ofFile: path), sha256, "\(path) is not the file Fixtures/moe/reference.json was computed from")
        return path
    }

    func sources(_ name: String) throws -> [(String, WeightSource)] {
        let m = reference.models[name]!
        _ = try cached(m.folder + "/model.safetensors", sha256: m.safetensors_sha256)
        var out: [(String, WeightSource)] = [("\(name) HF folder", try HFCheckpoint(folder: TestAssets.tiny + "/" + m.folder)),
                                             ("\(name) GGUF", try GGUFWeights(path: try cached(m.gguf, sha256: m.gguf_sha256)))]
        for (file, sha) in (m.gguf_layouts ?? [:]).sorted(by: { $0.key < $1.key }) {
            out.append(("\(name) \(file)", try GGUFWeights(path: try cached(file, sha256: sha))))
        }
        return out
    }

    func expected(_ name: String) throws -> [Float] {
        let data = try Data(contentsOf: MoEReference.root.appendingPathComponent(reference.models[name]!.logits))
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { abs($0 - $1) }.max() ?? .infinity
    }

    func testLogitsAndExpertChoicesMatchTransformers() throws {
        for name in names {
            let want = try expected(name), ref = reference.models[name]!, vocab = ref.shape[1]
            for (what, source) in try sources(name) {
                XCTAssertNotNil(source.config.moe, what)
                let model = try LlamaModel(source: source, threads: 2)
                var choices = [[[Int]]](repeating: [], count: source.config.layers)
                model.onRouting = { layer, experts in choices[layer] += experts }
                let all = try model.forward(reference.ids, cache: model.makeCache(capacity: reference.ids.count), allLogits: true)
                XCTAssertEqual(all.count, want.count, what)
                XCTAssertLessThan(maxDifference(all, want), 1e-4, "\(what): logits at every position")
                XCTAssertEqual(choices, ref.experts, "\(what): each layer's expert choices")

                // The last position again by a decode step (one row: the direct kernels).
                model.onRouting = nil
                let cache = model.makeCache(capacity: reference.ids.count)
                _ = try model.forward(Array(reference.ids.dropLast()), cache: cache)
                let decoded = try model.forward([reference.ids.last!], cache: cache)
                XCTAssertLessThan(maxDifference(decoded, Array(want.suffix(vocab))), 1e-4, "\(what): decode step")
            }
        }
    }

    func testGreedyContinuationMatchesTransformers() throws {
        for name in names {
            let ref = reference.models[name]!
            for (what, source) in try sources(name) {
                let model = try LlamaModel(source: source, threads: 2)
                let cache = model.makeCache(capacity: ref.greedy_prompt + ref.greedy.count)
                var logits = try model.forward(Array(reference.ids.prefix(ref.greedy_prompt)), cache: cache)
                var got: [Int] = []
                for _ in ref.greedy {
                    let next = logits.indices.max { logits[$0] < logits[$1] || (logits[$0] == logits[$1] && $0 > $1) }!
                    got.append(next)
                    logits = try model.forward([next], cache: cache)
                }
                XCTAssertEqual(got, ref.greedy, "\(what): greedy tokens (least margin \(ref.greedy_margin.min()!))")
            }
        }
    }

    /// The three GGUF layouts hold the same bytes per expert: the same logits, bit for bit.
    func testExpertLayoutsGiveTheSameBits() throws {
        let all = try sources("mixtral").filter { $0.0.contains("gguf") || $0.0.hasSuffix("GGUF") }
        XCTAssertEqual(all.count, 3)
        let outs = try all.map { (_, s) -> [Float] in
            let m = try LlamaModel(source: s, threads: 2)
            return try m.forward(reference.ids, cache: m.makeCache(capacity: reference.ids.count), allLogits: true)
        }
        for (i, o) in outs.enumerated().dropFirst() { XCTAssertEqual(o, outs[0], "\(all[i].0) against \(all[0].0)") }
    }

    /// Several sequences decoded in one step (a server's batch) give each one's own logits bit for bit,
    /// although their tokens share experts' products.
    func testBatchedDecodeIsBitIdenticalToEachAlone() throws {
        for name in names {
            let ref = reference.models[name]!
            let source = try GGUFWeights(path: try cached(ref.gguf, sha256: ref.gguf_sha256))
            let model = try LlamaModel(source: source, threads: 2)
            let prompts = [Array(reference.ids[0..<5]), Array(reference.ids[5..<12]), Array(reference.ids[12..<15])]
            let next = [7, 31, 50]
            var alone: [[Float]] = []
            for (p, t) in zip(prompts, next) {
                let c = model.makeCache(capacity: 16)
                _ = try model.forward(p, cache: c)
                alone.append(try model.forward([t], cache: c))
            }
            let caches = prompts.map { _ in model.makeCache(capacity: 16) }
            for (p, c) in zip(prompts, caches) { _ = try model.forward(p, cache: c) }
            let batched = try model.forwardDecode(zip(next, caches).map { ($0, $1) })
            XCTAssertEqual(batched, alone, name)
        }
    }

    // MARK: bad files

    /// The tiny Mixtral GGUF rewritten with `metadata` changes (nil: removed) and without `drop`.
    func rewritten(_ metadata: [String: GGUFValue?], drop: Set<String> = [], name: String) throws -> String {
        let ref = reference.models["mixtral"]!
        let f = try GGUFFile(path: try cached(ref.gguf, sha256: ref.gguf_sha256))
        var w = GGUFWriter()
        for key in f.metadataKeys where metadata[key] == nil { w.set(key, f.metadata[key]!) }
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) { if let value { w.set(key, value) } }
        for t in f.tensors where !drop.contains(t.name) {
            let (_, dtype, bytes) = try f.data(t.name)
            w.tensors.append(.init(name: t.name, dtype: dtype, shape: t.shape, data: Data(bytes)))
        }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("moe-\(UUID().uuidString)-\(name)").path
        try w.encode().write(to: URL(fileURLWithPath: path))
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func assertRefused(_ path: String, mentions: [String], line: UInt = #line) {
        XCTAssertThrowsError(try GGUFWeights(path: path), line: line) { e in
            let text = "\(e)"
            for m in mentions { XCTAssertTrue(text.contains(m), "\(text) does not mention \(m)", line: line) }
        }
    }

    func testBadMixtureOfExpertsFilesAreRefusedByName() throws {
        let u32 = { (v: UInt64) -> GGUFValue? in .uint(v, .uint32) }
        assertRefused(try rewritten(["llama.expert_used_count": u32(9)], name: "used.gguf"),
                      mentions: ["used.gguf", "llama.expert_used_count (9)", "llama.expert_count (8)"])
        assertRefused(try rewritten(["llama.expert_used_count": nil], name: "noused.gguf"),
                      mentions: ["noused.gguf", "llama.expert_used_count"])
        assertRefused(try rewritten(["llama.expert_gating_func": u32(2)], name: "sigmoid.gguf"),
                      mentions: ["sigmoid.gguf", "llama.expert_gating_func"])
        assertRefused(try rewritten(["llama.leading_dense_block_count": u32(1)], name: "dense.gguf"),
                      mentions: ["dense.gguf", "llama.leading_dense_block_count"])
        assertRefused(try rewritten(["llama.expert_weights_norm": .bool(false)], name: "norm.gguf"),
                      mentions: ["norm.gguf", "llama.expert_weights_norm"])
        assertRefused(try rewritten([:], drop: ["blk.1.ffn_up_exps.weight"], name: "noup.gguf"),
                      mentions: ["noup.gguf", "blk.1.ffn_up_exps.weight"])
        assertRefused(try rewritten([:], drop: ["blk.0.ffn_gate_inp.weight"], name: "norouter.gguf"),
                      mentions: ["norouter.gguf", "blk.0.ffn_gate_inp.weight"])
        // More experts than the tensors hold: the shape is named.
        assertRefused(try rewritten(["llama.expert_count": u32(16)], name: "count.gguf"),
                      mentions: ["count.gguf", "blk.0.ffn_gate_inp.weight", "[16, 32]"])
    }

    /// Paths that run only dense blocks today refuse a mixture of experts by name, not with a crash.
    func testDensePathsRefuseAMixtureOfExperts() throws {
        let ref = reference.models["mixtral"]!
        let source = try GGUFWeights(path: try cached(ref.gguf, sha256: ref.gguf_sha256))
        XCTAssertThrowsError(try TrainableLlama(config: source.config)) { XCTAssertTrue("\($0)".contains("mixture-of-experts")) }
        XCTAssertThrowsError(try FrozenLlama(source: source)) { XCTAssertTrue("\($0)".contains("mixture-of-experts")) }
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("moe-\(UUID().uuidString).gguf").path
        XCTAssertThrowsError(try exportGGUF(from: source, to: out)) { XCTAssertTrue("\($0)".contains("mixture-of-experts")) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    }
}
