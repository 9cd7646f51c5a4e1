// Hugging Face checkpoints: the Q/K row permutation against llama.cpp's, export
// of the real SmolLM2 GGUF and loading it back, exact round trips GGUF → HF →
// GGUF, sharded folders, and broken folders giving errors that name the file,
// the field or tensor, and the problem.

import Foundation
import Formats
import Kernels
import Models
import Tensors
import XCTest

private func errorMessage(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> String {
    do {
        try body()
        XCTFail("expected an error", file: file, line: line)
        return ""
    } catch let e as OffloadError {
        XCTAssertFalse(e.message.contains("\n"), "error is not one line: \(e.message)", file: file, line: line)
        return e.message
    } catch {
        XCTFail("expected OffloadError, got \(error)", file: file, line: line)
        return ""
    }
}

private func assertContains(_ s: String, _ parts: String..., file: StaticString = #filePath, line: UInt = #line) {
    for p in parts { XCTAssertTrue(s.contains(p), "\"\(s)\" does not contain \"\(p)\"", file: file, line: line) }
}

private func floats(_ t: StoredTensor) -> [Float] { Dequantize.toF32(t.dtype, t.bytes, count: t.elements) }

/// A small model's weights: seeded random values per tensor, written as files by
/// hand here (not by the exporters under test).
private struct TinyModel {
    let config: LlamaConfig
    let values: [String: [Float]]

    init(_ config: LlamaConfig, seed: UInt64) {
        self.config = config
        var s = seed
        var v: [String: [Float]] = [:]
        for spec in config.parameterTable {
            v[spec.name] = (0..<spec.elements).map { _ in
                s = s &* 6364136223846793005 &+ 1442695040888963407
                return Float(Int32(truncatingIfNeeded: s >> 32)) / Float(Int32.max)
            }
        }
        values = v
    }

    func bytes(_ name: String) -> Data { values[name]!.withUnsafeBytes { Data($0) } }

    /// As llama.cpp would write it: llama.* metadata, rows as stored (callers pick the order).
    func writeGGUF(_ path: String, skipping: String? = nil) throws {
        var w = GGUFWriter()
        let c = config
        func u32(_ v: Int) -> GGUFValue { .uint(UInt64(v), .uint32) }
        w.set("general.architecture", .string("llama"))
        w.set("general.name", .string(c.name))
        w.set("llama.vocab_size", u32(c.vocabSize))
        w.set("llama.context_length", u32(c.contextLength))
        w.set("llama.embedding_length", u32(c.dim))
        w.set("llama.block_count", u32(c.layers))
        w.set("llama.feed_forward_length", u32(c.ffnDim))
        w.set("llama.rope.dimension_count", u32(c.headDim))
        w.set("llama.attention.head_count", u32(c.heads))
        w.set("llama.attention.head_count_kv", u32(c.kvHeads))
        w.set("llama.rope.freq_base", .float(Double(c.ropeTheta), .float32))
        w.set("llama.attention.layer_norm_rms_epsilon", .float(Double(c.rmsEps), .float32))
        for spec in c.parameterTable where spec.name != skipping {
            w.tensors.append(.init(name: spec.name, dtype: .f32, shape: spec.shape, data: bytes(spec.name)))
        }
        try w.write(to: path)
    }

    /// config.json as transformers writes it for LlamaForCausalLM.
    var configJSON: [String: Any] {
        let c = config
        return ["architectures": ["LlamaForCausalLM"], "model_type": "llama", "_name_or_path": c.name,
                "hidden_size": c.dim, "intermediate_size": c.ffnDim, "num_hidden_layers": c.layers,
                "num_attention_heads": c.heads, "num_key_value_heads": c.kvHeads, "head_dim": c.headDim,
                "hidden_act": "silu", "rms_norm_eps": Double(c.rmsEps), "rope_theta": Double(c.ropeTheta),
                "rope_scaling": NSNull(), "vocab_size": c.vocabSize, "max_position_embeddings": c.contextLength,
                "tie_word_embeddings": c.tiedEmbeddings, "torch_dtype": "float32", "bos_token_id": 1]
    }

    /// A Hugging Face folder with one model.safetensors (rows as stored).
    func writeHF(_ folder: String, skipping: String? = nil, config json: [String: Any]? = nil) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: json ?? configJSON).write(to: URL(fileURLWithPath: folder + "/config.json"))
        var w = SafetensorsWriter()
        w.metadata = ["format": "pt"]
        for spec in config.parameterTable where spec.name != skipping {
            w.tensors.append(.init(name: HFNames.hf(spec.name)!, dtype: .f32, shape: spec.shape, data: bytes(spec.name)))
        }
        try w.write(to: folder + "/model.safetensors")
    }
}

final class HFCheckpointTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "offload-hf-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    static let tiny = LlamaConfig(name: "tiny-untied", vocabSize: 96, dim: 64, ffnDim: 80, layers: 2, heads: 4,
                                  kvHeads: 2, ropeTheta: 50000, rmsEps: 1e-6, contextLength: 128)

    func realModelPath() throws -> String {
        let cache = AssetCache.directory
        let path = cache + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("missing \(path): run scripts/fetch-assets.sh")
            throw OffloadError("missing asset")
        }
        return path
    }

    /// HF row h·d + p·d/2 + i must equal GGUF row h·d + 2i + p (written out here,
    /// independently of RopeRowOrder).
    func assertHalfSplit(_ hf: [Float], ofAdjacentPairs gguf: [Float], rows: Int, cols: Int, headDim: Int,
                         _ name: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(hf.count, rows * cols, name, file: file, line: line)
        var bad = 0
        for h in 0..<rows / headDim {
            for i in 0..<headDim / 2 {
                for p in 0..<2 {
                    let hr = h * headDim + p * headDim / 2 + i, gr = h * headDim + 2 * i + p
                    if hf[hr * cols..<(hr + 1) * cols] != gguf[gr * cols..<(gr + 1) * cols] { bad += 1 }
                }
            }
        }
        XCTAssertEqual(bad, 0, "\(name): \(bad) rows out of place", file: file, line: line)
    }

    // MARK: permutation and names

    func testPermutationMatchesLlamaCppByHand() throws {
        // numpy: LlamaModel.permute(np.arange(8).reshape(8, 1), 2), and so on.
        XCTAssertEqual(try RopeRowOrder.toAdjacentPairs(Array(0..<8), heads: 2, cols: 1), [0, 2, 1, 3, 4, 6, 5, 7])
        XCTAssertEqual(try RopeRowOrder.toAdjacentPairs(Array(0..<12), heads: 1, cols: 2),
                       [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11])
        XCTAssertEqual(try RopeRowOrder.toAdjacentPairs(Array(0..<12), heads: 3, cols: 1),
                       [0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11])
        XCTAssertEqual(try RopeRowOrder.toHalfSplit([0, 2, 1, 3, 4, 6, 5, 7], heads: 2, cols: 1), Array(0..<8))
        XCTAssertEqual(try RopeRowOrder.toHalfSplit([0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11], heads: 1, cols: 2),
                       Array(0..<12))
        XCTAssertEqual((0..<6).map { RopeRowOrder.halfSplitRow(ofAdjacentPairsRow: $0, headDim: 6) }, [0, 3, 1, 4, 2, 5])
        assertContains(errorMessage { _ = try RopeRowOrder.toHalfSplit(Array(0..<12), heads: 4, cols: 1) },
                       "[rope] cannot reorder 12 values")
        assertContains(errorMessage { _ = try RopeRowOrder.toHalfSplit(Array(0..<12), heads: 1, cols: 5) },
                       "[rope] cannot reorder")
    }

    func testPermutationInverseIsIdentity() throws {
        let w = (0..<(3 * 64 * 7)).map { Float($0) * 0.5 - 3 }
        let g = try RopeRowOrder.toAdjacentPairs(w, heads: 3, cols: 7)
        XCTAssertNotEqual(g, w)
        XCTAssertEqual(try RopeRowOrder.toHalfSplit(g, heads: 3, cols: 7), w)
        XCTAssertEqual(try RopeRowOrder.toAdjacentPairs(try RopeRowOrder.toHalfSplit(w, heads: 3, cols: 7),
                                                        heads: 3, cols: 7), w)
        assertHalfSplit(w, ofAdjacentPairs: g, rows: 192, cols: 7, headDim: 64, "3 heads")
    }

    func testNameMapping() {
        let pairs = [
            ("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
            ("blk.12.attn_q.weight", "model.layers.12.self_attn.q_proj.weight"),
            ("blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight"),
            ("blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"),
            ("blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight"),
            ("blk.29.ffn_norm.weight", "model.layers.29.post_attention_layernorm.weight"),
            ("blk.1.ffn_gate.weight", "model.layers.1.mlp.gate_proj.weight"),
            ("blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight"),
            ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
        ]
        for (g, h) in pairs {
            XCTAssertEqual(HFNames.hf(g), h)
            XCTAssertEqual(HFNames.gguf(h), g)
        }
        for spec in LlamaConfig.builtIn[2].parameterTable { XCTAssertEqual(HFNames.hf(spec.name).flatMap(HFNames.gguf), spec.name) }
        for bad in ["blk.x.attn_q.weight", "blk.01.attn_q.weight", "blk.0.attn_qq.weight", "blk.0.attn_q", "rope_freqs.weight"] {
            XCTAssertNil(HFNames.hf(bad), bad)
        }
        for bad in ["model.layers.01.mlp.up_proj.weight", "model.layers.0.mlp.fc.weight", "model.layers.0", "lm_head"] {
            XCTAssertNil(HFNames.gguf(bad), bad)
        }
    }

    // MARK: the real model

    func testExportSmolLM2ToHFAndLoadIt() throws {
        let gguf = try GGUFWeights(path: try realModelPath())
        let folder = dir + "/smollm2-hf"
        try exportHFCheckpoint(from: gguf, to: folder)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder).sorted(),
                       ["config.json", "model.safetensors"])

        let hf = try HFCheckpoint(folder: folder)
        XCTAssertEqual(hf.config, gguf.config)
        XCTAssertEqual(hf.config.layers, 30)
        XCTAssertEqual(hf.config.headDim, 64)
        XCTAssertEqual(hf.config.ropeTheta, 100000)
        XCTAssertTrue(hf.config.tiedEmbeddings)
        XCTAssertEqual(hf.ropeStyle, .halfSplit)
        XCTAssertEqual(hf.sourceName, "smollm2-hf")
        XCTAssertEqual(hf.tensorNames.count, 272)
        XCTAssertFalse(hf.tensorNames.contains("lm_head.weight"))
        XCTAssertEqual(hf.files.first?.metadata, ["format": "pt"])

        var permuted = 0
        for spec in gguf.config.parameterTable {
            let g = try gguf.tensor(spec.name), h = try hf.tensor(spec.name)
            XCTAssertEqual(h.dtype, .f32, spec.name)
            XCTAssertEqual(h.shape, g.shape, spec.name)
            let gf = floats(g), hfv = floats(h)
            if spec.name.hasSuffix("attn_q.weight") || spec.name.hasSuffix("attn_k.weight") {
                XCTAssertNotEqual(hfv, gf, "\(spec.name) rows were not reordered")
                assertHalfSplit(hfv, ofAdjacentPairs: gf, rows: spec.shape[0], cols: spec.shape[1], headDim: 64, spec.name)
                permuted += 1
            } else {
                XCTAssertTrue(hfv == gf, "\(spec.name) differs")
            }
        }
        XCTAssertEqual(permuted, 60)
    }

    // MARK: round trips on a small model

    func testGGUFToHFToGGUFIsExact() throws {
        let tiny = TinyModel(Self.tiny, seed: 7)
        let g1 = dir + "/one.gguf"
        try tiny.writeGGUF(g1)
        let w1 = try GGUFWeights(path: g1)
        XCTAssertEqual(w1.config, Self.tiny)

        try exportHFCheckpoint(from: w1, to: dir + "/hf")
        let hf = try HFCheckpoint(folder: dir + "/hf")
        XCTAssertEqual(hf.config, Self.tiny)
        XCTAssertFalse(hf.config.tiedEmbeddings)
        XCTAssertTrue(hf.tensorNames.contains("lm_head.weight"))
        for spec in Self.tiny.parameterTable {
            let h = floats(try hf.tensor(spec.name)), g = tiny.values[spec.name]!
            if spec.name.hasSuffix("attn_q.weight") || spec.name.hasSuffix("attn_k.weight") {
                assertHalfSplit(h, ofAdjacentPairs: g, rows: spec.shape[0], cols: 64, headDim: 16, spec.name)
            } else {
                XCTAssertEqual(h, g, spec.name)
            }
        }

        let g2 = dir + "/two.gguf"
        try exportGGUF(from: hf, to: g2)
        let w2 = try GGUFWeights(path: g2)
        XCTAssertEqual(w2.config, Self.tiny)
        for spec in Self.tiny.parameterTable {
            XCTAssertEqual(Data(try w2.tensor(spec.name).bytes), tiny.bytes(spec.name), spec.name)
        }
        // exportGGUF of the GGUF source itself gives the same file as going through HF.
        let g3 = dir + "/three.gguf"
        try exportGGUF(from: w1, to: g3)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: g3)), try Data(contentsOf: URL(fileURLWithPath: g2)))
    }

    func testHFToGGUFPermutesForwardAndCopiesTokenizer() throws {
        let tiny = TinyModel(Self.tiny, seed: 9)
        try tiny.writeHF(dir + "/hf")
        let src = try HFCheckpoint(folder: dir + "/hf")
        var tok = GGUFWriter()
        tok.set("general.architecture", .string("none"))
        tok.set("tokenizer.ggml.model", .string("gpt2"))
        tok.set("tokenizer.ggml.tokens", .array([.string("a"), .string("b")], .string))
        try tok.write(to: dir + "/tok.gguf")
        try exportGGUF(from: src, to: dir + "/out.gguf", tokenizerFrom: try GGUFFile(path: dir + "/tok.gguf"))
        let w = try GGUFWeights(path: dir + "/out.gguf")
        XCTAssertEqual(w.config, Self.tiny)
        XCTAssertEqual(w.file.strings("tokenizer.ggml.tokens"), ["a", "b"])
        XCTAssertEqual(w.file.string("tokenizer.ggml.model"), "gpt2")
        XCTAssertEqual(w.file.string("general.architecture"), "llama")
        for spec in Self.tiny.parameterTable {
            let g = floats(try w.tensor(spec.name)), h = tiny.values[spec.name]!
            if spec.name.hasSuffix("attn_q.weight") || spec.name.hasSuffix("attn_k.weight") {
                XCTAssertNotEqual(g, h, spec.name)
                assertHalfSplit(h, ofAdjacentPairs: g, rows: spec.shape[0], cols: 64, headDim: 16, spec.name)
            } else {
                XCTAssertEqual(g, h, spec.name)
            }
        }
    }

    func testHalfPrecisionExports() throws {
        let tiny = TinyModel(Self.tiny, seed: 3)
        try tiny.writeHF(dir + "/f32")
        let src = try HFCheckpoint(folder: dir + "/f32")
        for dt in [DType.bf16, .f16] {
            let folder = dir + "/hf-\(dt)"
            try exportHFCheckpoint(from: src, to: folder, dtype: dt)
            let hf = try HFCheckpoint(folder: folder)
            let json = try String(contentsOfFile: folder + "/config.json", encoding: .utf8)
            assertContains(json, "\"torch_dtype\": \"\(dt == .bf16 ? "bfloat16" : "float16")\"")
            for spec in Self.tiny.parameterTable {
                let t = try hf.tensor(spec.name)
                XCTAssertEqual(t.dtype, dt, spec.name)
                let f = tiny.values[spec.name]!
                let want = dt == .bf16 ? Quantize.toBF16(f) : Quantize.toF16(f)
                XCTAssertEqual(Array(t.bytes.bindMemory(to: UInt16.self)), want, spec.name)
            }
        }
        assertContains(errorMessage { try exportHFCheckpoint(from: src, to: self.dir + "/q", dtype: .q8_0) },
                       "[hf export] q: dtype q8_0 is not a safetensors type")
    }

    // MARK: sharded folders

    /// Writes the tiny model as two shards plus an index, by hand.
    fileprivate func writeSharded(_ folder: String) throws -> TinyModel {
        let tiny = TinyModel(Self.tiny, seed: 11)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: tiny.configJSON).write(to: URL(fileURLWithPath: folder + "/config.json"))
        let shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        var writers = [SafetensorsWriter(), SafetensorsWriter()]
        var map: [String] = []
        for spec in Self.tiny.parameterTable {
            let hfName = HFNames.hf(spec.name)!
            let shard = spec.name.hasPrefix("blk.1.") || spec.name.hasPrefix("output") ? 1 : 0
            writers[shard].tensors.append(.init(name: hfName, dtype: .f32, shape: spec.shape, data: tiny.bytes(spec.name)))
            map.append("\"\(hfName)\": \"\(shards[shard])\"")
        }
        for i in 0..<2 { try writers[i].write(to: folder + "/" + shards[i]) }
        let index = "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {\n" + map.joined(separator: ",\n") + "\n}}"
        try index.write(toFile: folder + "/model.safetensors.index.json", atomically: true, encoding: .utf8)
        return tiny
    }

    func testShardedIndexLoads() throws {
        let folder = dir + "/sharded"
        let tiny = try writeSharded(folder)
        let hf = try HFCheckpoint(folder: folder)
        XCTAssertEqual(hf.files.map(\.fileName), ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
        XCTAssertEqual(hf.config, Self.tiny)
        for spec in Self.tiny.parameterTable {
            XCTAssertEqual(Data(try hf.tensor(spec.name).bytes), tiny.bytes(spec.name), spec.name)
        }
    }

    func testShardedIndexErrors() throws {
        let folder = dir + "/sharded"
        _ = try writeSharded(folder)
        let indexPath = folder + "/model.safetensors.index.json"
        let index = try String(contentsOfFile: indexPath, encoding: .utf8)

        // A tensor mapped to a shard that does not hold it.
        try index.replacingOccurrences(of: "\"model.norm.weight\": \"model-00002-of-00002.safetensors\"",
                                       with: "\"model.norm.weight\": \"model-00001-of-00002.safetensors\"")
            .write(toFile: indexPath, atomically: true, encoding: .utf8)
        assertContains(errorMessage { _ = try HFCheckpoint(folder: folder) },
                       "[hf] model.safetensors.index.json: tensor model.norm.weight is mapped to model-00001-of-00002.safetensors, which does not hold it")
        // A shard name that leaves the folder.
        try index.replacingOccurrences(of: "\"model.norm.weight\": \"model-00002-of-00002.safetensors\"",
                                       with: "\"model.norm.weight\": \"../model-00002-of-00002.safetensors\"")
            .write(toFile: indexPath, atomically: true, encoding: .utf8)
        assertContains(errorMessage { _ = try HFCheckpoint(folder: folder) },
                       "[hf] model.safetensors.index.json: weight_map model.norm.weight names", "not a file in the folder")
        try "{\"weight_map\": [1]}".write(toFile: indexPath, atomically: true, encoding: .utf8)
        assertContains(errorMessage { _ = try HFCheckpoint(folder: folder) },
                       "[hf] model.safetensors.index.json: weight_map is an array, expected an object")
        try "{\"weight_map\": {".write(toFile: indexPath, atomically: true, encoding: .utf8)
        assertContains(errorMessage { _ = try HFCheckpoint(folder: folder) }, "[hf] model.safetensors.index.json: bad JSON")
        // An index that leaves out a tensor the config needs.
        try index.replacingOccurrences(of: "\"model.norm.weight\": \"model-00002-of-00002.safetensors\",", with: "")
            .write(toFile: indexPath, atomically: true, encoding: .utf8)
        assertContains(errorMessage { _ = try HFCheckpoint(folder: folder) },
                       "[hf] sharded: missing tensor model.norm.weight (output_norm.weight)")

        // A missing shard.
        try index.write(toFile: indexPath, atomically: true, encoding: .utf8)
        try FileManager.default.removeItem(atPath: folder + "/model-00002-of-00002.safetensors")
        assertContains(errorMessage { _ = try HFCheckpoint(folder: folder) },
                       "[hf] model.safetensors.index.json: shard model-00002-of-00002.safetensors is missing from sharded")
        // No weights at all.
        try FileManager.default.removeItem(atPath: indexPath)
        assertContains(errorMessage { _ = try HFCheckpoint(folder: folder) },
                       "[hf] sharded: no model.safetensors or model.safetensors.index.json")
    }

    // MARK: broken folders

    func testBrokenConfig() throws {
        let folder = dir + "/cfg"
        let tiny = TinyModel(Self.tiny, seed: 1)
        try tiny.writeHF(folder)
        let path = folder + "/config.json"
        XCTAssertEqual(try HFCheckpoint(folder: folder).config, Self.tiny)

        func check(_ edit: (inout [String: Any]) -> Void, _ want: String..., line: UInt = #line) throws {
            var c = tiny.configJSON
            edit(&c)
            try JSONSerialization.data(withJSONObject: c).write(to: URL(fileURLWithPath: path))
            let m = errorMessage({ _ = try HFCheckpoint(folder: folder) }, line: line)
            for w in want { XCTAssertTrue(m.contains(w), "\"\(m)\" does not contain \"\(w)\"", line: line) }
        }
        try check({ $0["hidden_size"] = nil }, "[hf] config.json: missing field hidden_size")
        try check({ $0["num_hidden_layers"] = nil }, "[hf] config.json: missing field num_hidden_layers")
        try check({ $0["vocab_size"] = nil }, "[hf] config.json: missing field vocab_size")
        try check({ $0["hidden_size"] = "64" }, "[hf] config.json: field hidden_size is \"64\", expected a positive integer")
        try check({ $0["intermediate_size"] = 80.5 }, "[hf] config.json: field intermediate_size is 80.5, expected a positive integer")
        try check({ $0["num_attention_heads"] = 0 }, "[hf] config.json: field num_attention_heads is 0, expected a positive integer")
        try check({ $0["num_key_value_heads"] = true }, "[hf] config.json: field num_key_value_heads is true")
        try check({ $0["rms_norm_eps"] = "1e-6" }, "[hf] config.json: field rms_norm_eps is \"1e-6\", expected a positive number")
        try check({ $0["rope_theta"] = -1 }, "[hf] config.json: field rope_theta is -1, expected a positive number")
        try check({ $0["tie_word_embeddings"] = "yes" }, "[hf] config.json: field tie_word_embeddings is \"yes\", expected true or false")
        try check({ $0["model_type"] = "mistral"; $0["architectures"] = ["MistralForCausalLM"] },
                  "[hf] config.json: model_type is \"mistral\"")
        try check({ $0["rope_scaling"] = ["rope_type": "llama3", "factor": 8.0] },
                  "[hf] config.json: field rope_scaling.low_freq_factor is missing, expected a positive number")
        try check({ $0["rope_scaling"] = ["rope_type": "yarn", "factor": 4.0] },
                  "[hf] config.json: field rope_scaling.rope_type is \"yarn\"; supported: default, linear, llama3")
        try check({ $0["rope_parameters"] = ["rope_type": "linear", "factor": -2] },
                  "[hf] config.json: field rope_parameters.factor is -2, expected a positive number")
        try check({ $0["hidden_act"] = "gelu" }, "[hf] config.json: field hidden_act is \"gelu\", expected \"silu\"")
        try check({ $0["attention_bias"] = true }, "[hf] config.json: field attention_bias is true; biases are not supported")
        try check({ $0["num_key_value_heads"] = 3 }, "[config] tiny-untied: heads (4) must be a positive multiple of kv heads (3)")
        try check({ $0["head_dim"] = 8 }, "[model] cfg: tensor blk.0.attn_q.weight has shape [64, 64], expected [32, 64]")
        try check({ $0["vocab_size"] = 100 }, "[model] cfg: tensor token_embd.weight has shape [96, 64], expected [100, 64]")
        try "[1, 2]".write(toFile: path, atomically: true, encoding: .utf8)
        assertContains(errorMessage { _ = try HFCheckpoint(folder: folder) }, "[hf] config.json: not a JSON object")
        try "{\"hidden_size\": ".write(toFile: path, atomically: true, encoding: .utf8)
        assertContains(errorMessage { _ = try HFCheckpoint(folder: folder) }, "[hf] config.json: bad JSON")
        try FileManager.default.removeItem(atPath: path)
        assertContains(errorMessage { _ = try HFCheckpoint(folder: folder) }, "[hf] cfg: config.json is missing or unreadable")
    }

    func testConfigDefaultsAndTiedDetection() throws {
        let folder = dir + "/defaults"
        let tiny = TinyModel(Self.tiny, seed: 1)
        var c = tiny.configJSON
        for key in ["head_dim", "rope_theta", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
                    "model_type", "_name_or_path", "rope_scaling", "hidden_act"] { c[key] = nil }
        try tiny.writeHF(folder, config: c)
        let hf = try HFCheckpoint(folder: folder)
        XCTAssertEqual(hf.config.name, "defaults")
        XCTAssertEqual(hf.config.headDim, 16)
        XCTAssertEqual(hf.config.ropeTheta, 10000)
        XCTAssertEqual(hf.config.rmsEps, 1e-6)
        XCTAssertEqual(hf.config.contextLength, 2048)
        XCTAssertFalse(hf.config.tiedEmbeddings)
        // num_key_value_heads defaults to the head count.
        let mha = LlamaConfig(name: "mha", vocabSize: 96, dim: 64, ffnDim: 80, layers: 1, heads: 4, kvHeads: 4)
        var m = TinyModel(mha, seed: 2).configJSON
        m["num_key_value_heads"] = nil
        try TinyModel(mha, seed: 2).writeHF(dir + "/mha", config: m)
        XCTAssertEqual(try HFCheckpoint(folder: dir + "/mha").config.kvHeads, 4)

        // tie_word_embeddings says tied: lm_head is ignored.
        c["tie_word_embeddings"] = true
        try JSONSerialization.data(withJSONObject: c).write(to: URL(fileURLWithPath: folder + "/config.json"))
        XCTAssertTrue(try HFCheckpoint(folder: folder).config.tiedEmbeddings)
        // No lm_head.weight: tied, whatever the config says.
        let untiedSaysConfig = TinyModel(Self.tiny, seed: 2)
        try untiedSaysConfig.writeHF(dir + "/tied", skipping: "output.weight")
        let t = try HFCheckpoint(folder: dir + "/tied")
        XCTAssertTrue(t.config.tiedEmbeddings)
        XCTAssertFalse(t.tensorNames.contains("lm_head.weight"))
        XCTAssertEqual(Data(try t.tensor("token_embd.weight").bytes), untiedSaysConfig.bytes("token_embd.weight"))
    }

    func testMissingFilesAndTensors() throws {
        assertContains(errorMessage { _ = try HFCheckpoint(folder: self.dir + "/nothing") }, "[hf] nothing: not a folder")
        let folder = dir + "/gaps"
        try TinyModel(Self.tiny, seed: 5).writeHF(folder, skipping: "blk.1.attn_k.weight")
        assertContains(errorMessage { _ = try HFCheckpoint(folder: folder) },
                       "[hf] gaps: missing tensor model.layers.1.self_attn.k_proj.weight (blk.1.attn_k.weight)")
        // A tensor stored in a dtype Offload cannot read.
        let odd = dir + "/odd"
        try TinyModel(Self.tiny, seed: 5).writeHF(odd)
        let st = try SafetensorsFile(path: odd + "/model.safetensors")
        var raw = try Data(contentsOf: URL(fileURLWithPath: odd + "/model.safetensors"))
        let header = String(decoding: raw[8..<st.dataOffset], as: UTF8.self)
        let norm = "\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[64]"
        XCTAssertTrue(header.contains(norm))
        let patched = header.replacingOccurrences(of: norm, with: "\"model.norm.weight\":{\"dtype\":\"I32\",\"shape\":[64]")
        raw.replaceSubrange(8..<st.dataOffset, with: Array(patched.utf8))
        try raw.write(to: URL(fileURLWithPath: odd + "/model.safetensors"))
        assertContains(errorMessage { _ = try HFCheckpoint(folder: odd) },
                       "[safetensors] model.safetensors: tensor model.norm.weight: unsupported dtype I32")
    }

    func testMissingTensorInGGUF() throws {
        try TinyModel(Self.tiny, seed: 4).writeGGUF(dir + "/gap.gguf", skipping: "blk.1.ffn_up.weight")
        assertContains(errorMessage { _ = try GGUFWeights(path: self.dir + "/gap.gguf") },
                       "[gguf] gap.gguf: missing tensor blk.1.ffn_up.weight")
    }
}
