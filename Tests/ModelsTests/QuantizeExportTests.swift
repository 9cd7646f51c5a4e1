// Offload's quantized export against llama-quantize on the same fp32 source: per tensor, the
// same type, an RMSE against the fp32 values within 5% of llama-quantize's, and (since both
// follow ggml's reference quantizers) mostly the very same bytes. Sources and figures:
// Fixtures/quantize/llama-quantize.json (scripts/fixtures/make_quantize_fixtures.py). Then the
// files load in Offload and give logits close to the unquantized model's.
import Foundation
import Formats
import Kernels
import Models
import Runtime
import Tensors
import XCTest

final class QuantizeExportTests: XCTestCase {
    struct Comparison { var worstRatio = 0.0, worstTensor = "", identical = 0, tensors = 0 }

    /// Writes `source` in `mix`, checks every tensor against the fixture's llama-quantize figures.
    func compare(_ source: WeightSource, _ mix: ExportType, _ want: [String: QuantizeFixture.Tensor],
                 dir: String, pool: ComputePool) throws -> Comparison {
        let out = dir + "/\(mix.rawValue).gguf"
        try exportGGUF(from: source, to: out, type: mix, pool: pool)
        let file = try GGUFFile(path: out)
        XCTAssertEqual(Set(file.tensors.map(\.name)), Set(want.keys), "\(mix): tensors")
        var c = Comparison()
        for name in file.tensors.map(\.name) {
            let (info, dtype, bytes) = try file.data(name)
            let w = try XCTUnwrap(want[name])
            XCTAssertEqual(dtype.rawValue, w.type, "\(mix) \(name): type")
            let s = try source.tensor(name)
            let x = Dequantize.toF32(s.dtype, s.bytes, count: s.elements)
            let y = Dequantize.toF32(dtype, bytes, count: info.shape.reduce(1, *))
            var sum = 0.0
            for i in x.indices { let d = Double(y[i]) - Double(x[i]); sum += d * d }
            let rmse = (sum / Double(x.count)).squareRoot()
            let ratio = w.rmse > 0 ? rmse / w.rmse : (rmse == 0 ? 1 : .infinity)
            XCTAssertLessThanOrEqual(ratio, 1.05, "\(mix) \(name): RMSE \(rmse) against llama-quantize's \(w.rmse)")
            if ratio > c.worstRatio { c.worstRatio = ratio; c.worstTensor = name }
            var h = SHA256(); h.update(bytes)
            if h.finalizeHex() == w.sha256 { c.identical += 1 }
            c.tensors += 1
        }
        print("[quantize] \(source.sourceName) \(mix.rawValue): worst RMSE ratio \(String(format: "%.5f", c.worstRatio)) "
              + "(\(c.worstTensor)), \(c.identical)/\(c.tensors) tensors bit-identical to llama-quantize")
        // Both implement ggml's reference quantizers: a difference is a rare last-bit tie.
        XCTAssertGreaterThanOrEqual(Double(c.identical), 0.9 * Double(c.tensors), "\(mix): bit-identical tensors")
        return c
    }

    func testRandomModelMatchesLlamaQuantize() throws {
        let f = try QuantizeFixture.load()
        let dir = NSTemporaryDirectory() + "offload-quant-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The fixture's source: `offload init --config small --type f32 --seed 7`.
        try RandomModel.writeGGUF(config: try LlamaConfig.named("small"), to: dir + "/f32.gguf", type: .f32, seed: 7)
        let source = try GGUFWeights(path: dir + "/f32.gguf")
        let pool = ComputePool(threads: 2)
        for mix: ExportType in [.q4_k_m, .q5_k_m, .q6_k, .q8_0, .f16] {
            _ = try compare(source, mix, try XCTUnwrap(f.sources["small"]?[mix.rawValue]), dir: dir, pool: pool)
        }
    }

    /// llama-quantize run now (scripts/test.sh builds it) on a model whose rows exercise every type
    /// the mixes write: 320 values (Q5_0, Q5_1, Q8_0 fallbacks) and 512 (Q4_K, Q5_K, Q6_K); tied
    /// embeddings, so token_embd takes the output's rule.
    func testAgainstLlamaQuantizeRunNow() throws {
        let tool = try TestAssets.require(TestAssets.cache + "/llama.cpp-build/bin/llama-quantize",
                                          hint: "run scripts/build-llama-cpp.sh llama-quantize")
        let dir = NSTemporaryDirectory() + "offload-quant-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = LlamaConfig(name: "quant-check", vocabSize: 512, dim: 320, ffnDim: 512, layers: 8, heads: 5, kvHeads: 1,
                            contextLength: 256, tiedEmbeddings: true)
        let src = dir + "/f32.gguf"
        try RandomModel.writeGGUF(config: c, to: src, type: .f32, seed: 3)
        let source = try GGUFWeights(path: src)
        let pool = ComputePool(threads: 2)
        var seen = Set<DType>()
        for mix: ExportType in [.q4_k_m, .q5_k_m, .q6_k, .q8_0, .q4_0, .q4_1] {
            let file = try llamaQuantize(tool, src, mix, dir: dir)
            var want: [String: QuantizeFixture.Tensor] = [:]
            for info in file.tensors {
                let (_, dtype, bytes) = try file.data(info.name)
                let s = try source.tensor(info.name)
                let x = Dequantize.toF32(s.dtype, s.bytes, count: s.elements)
                let y = Dequantize.toF32(dtype, bytes, count: info.elements)
                var sum = 0.0
                for i in x.indices { let d = Double(y[i]) - Double(x[i]); sum += d * d }
                var h = SHA256(); h.update(bytes)
                want[info.name] = .init(type: dtype.rawValue, rmse: (sum / Double(x.count)).squareRoot(), sha256: h.finalizeHex())
                seen.insert(dtype)
            }
            _ = try compare(source, mix, want, dir: dir, pool: pool)
        }
        XCTAssertEqual(seen, [.f32, .q4_k, .q5_k, .q6_k, .q5_0, .q5_1, .q8_0, .q4_0, .q4_1],
                       "every type the mixes write was checked")
    }

    /// Runs llama-quantize on `src` into `mix`, returns the file it wrote.
    func llamaQuantize(_ tool: String, _ src: String, _ mix: ExportType, dir: String) throws -> GGUFFile {
        let theirs = dir + "/llama.\(mix.rawValue).gguf"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = [src, theirs, mix.rawValue.uppercased(), "2"]
        p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
        try p.run(); p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "llama-quantize \(mix.rawValue)")
        return try GGUFFile(path: theirs)
    }

    /// `offload init` of a mixture of experts in a quantized type writes what llama-quantize makes of
    /// the same random values in f32: its mix for 8 experts (routers f32, attn_k and attn_v Q8_0,
    /// attn_output Q5_K in q4_k_m, ffn_down_exps as ffn_down) and its bytes.
    func testMixtureOfExpertsInitMatchesLlamaQuantizeRunNow() throws {
        let tool = try TestAssets.require(TestAssets.cache + "/llama.cpp-build/bin/llama-quantize",
                                          hint: "run scripts/build-llama-cpp.sh llama-quantize")
        let dir = NSTemporaryDirectory() + "offload-quant-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = try LlamaConfig.named("small-moe")
        try RandomModel.writeGGUF(config: c, to: dir + "/f32.gguf", type: .f32, seed: 3)
        for mix: ExportType in [.q4_0, .q4_1, .q4_k_m, .q8_0] {
            let theirs = try llamaQuantize(tool, dir + "/f32.gguf", mix, dir: dir)
            try RandomModel.writeGGUF(config: c, to: dir + "/ours.gguf", type: mix, seed: 3)
            let ours = try GGUFFile(path: dir + "/ours.gguf")
            XCTAssertEqual(ours.tensors.map(\.name).sorted(), theirs.tensors.map(\.name).sorted())
            var identical = 0
            for t in theirs.tensors {
                let a = try ours.data(t.name), b = try theirs.data(t.name)
                XCTAssertEqual(a.dtype, b.dtype, "\(mix.rawValue) \(t.name): type")
                if a.bytes.elementsEqual(b.bytes) { identical += 1 }
            }
            XCTAssertEqual(theirs.info("blk.1.ffn_up_exps.weight")?.dtype, mix.baseType)
            // ggml's reference quantizers on both sides: the legacy types agree bit for bit, the
            // K-quants but for rare last-bit ties.
            let want = mix == .q4_k_m ? theirs.tensors.count * 9 / 10 : theirs.tensors.count
            XCTAssertGreaterThanOrEqual(identical, want, "\(mix.rawValue): tensors bit-identical to llama-quantize")
            XCTAssertEqual(theirs.info("blk.1.ffn_gate_inp.weight")?.dtype, .f32)
            XCTAssertEqual(theirs.info("blk.1.attn_k.weight")?.dtype, .q8_0)
        }
    }

    /// A Hugging Face folder (half-split Q/K rows) quantizes to the same tensors as the GGUF it came
    /// from: rows are put back in GGUF order before quantizing.
    func testHuggingFaceFolderQuantizesAsItsGGUF() throws {
        let dir = NSTemporaryDirectory() + "offload-quant-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try RandomModel.writeGGUF(config: try LlamaConfig.named("small"), to: dir + "/f32.gguf", type: .f32, seed: 9)
        let gguf = try GGUFWeights(path: dir + "/f32.gguf")
        try exportHFCheckpoint(from: gguf, to: dir + "/hf")
        let hf = try HFCheckpoint(folder: dir + "/hf")
        XCTAssertNotEqual(hf.ropeStyle, gguf.ropeStyle, "the folder's Q/K rows are in the other order")
        try exportGGUF(from: gguf, to: dir + "/a.gguf", type: .q4_k_m)
        try exportGGUF(from: hf, to: dir + "/b.gguf", type: .q4_k_m)
        let a = try GGUFFile(path: dir + "/a.gguf"), b = try GGUFFile(path: dir + "/b.gguf")
        XCTAssertEqual(a.tensors.map(\.name), b.tensors.map(\.name))
        for t in a.tensors {
            let x = try a.data(t.name), y = try b.data(t.name)
            XCTAssertEqual(x.dtype, y.dtype, t.name)
            XCTAssertTrue(x.bytes.elementsEqual(y.bytes), "\(t.name): bytes differ")
        }
        XCTAssertEqual(a.info("blk.0.attn_q.weight")?.dtype, .q4_k)
    }

    func testSmolLM2MatchesLlamaQuantizeAndKeepsItsLogits() throws {
        let f = try QuantizeFixture.load()
        let dir = NSTemporaryDirectory() + "offload-quant-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The fixture's source is this file's values as f32 (exactly its dequantized Q4_1 values).
        let source = try GGUFWeights(path: try TestAssets.require(TestAssets.smolLM2))
        let pool = ComputePool(threads: 2)
        // Prompt 5 of Fixtures/smollm2 (a 106-token paragraph): logits at every position.
        struct Reference: Decodable { struct Prompt: Decodable { let ids: [Int] }; let prompts: [Prompt] }
        let prompt = try JSONDecoder().decode(Reference.self, from: Data(contentsOf:
            TestAssets.fixtures.appendingPathComponent("smollm2/reference.json"))).prompts[5].ids
        let vocab = source.config.vocabSize
        let reference = try LlamaModel(source: source, threads: 2)
        let want = try reference.forward(prompt, cache: reference.makeCache(), allLogits: true)
        func argmaxes(_ l: [Float]) -> [Int] {
            (0..<prompt.count).map { p in (p * vocab ..< (p + 1) * vocab).max { l[$0] < l[$1] }! - p * vocab }
        }
        let wantTop = argmaxes(want)
        // Relative RMS difference of all logits from the unquantized model's, and the share of
        // positions whose greedy token is unchanged. Measured: 0.113 and 93/106 (q4_k_m), 0.044 and
        // 101/106 (q6_k), 0.023 and 105/106 (q8_0); bounds ~1.5× the difference.
        for (mix, bound, agree): (ExportType, Double, Double) in [(.q4_k_m, 0.17, 0.8), (.q6_k, 0.065, 0.9),
                                                                    (.q8_0, 0.035, 0.95)] {
            _ = try compare(source, mix, try XCTUnwrap(f.sources["smollm2"]?[mix.rawValue]), dir: dir, pool: pool)
            let m = try LlamaModel(source: try GGUFWeights(path: dir + "/\(mix.rawValue).gguf"), threads: 2)
            let got = try m.forward(prompt, cache: m.makeCache(), allLogits: true)
            var d = 0.0, n = 0.0
            for i in want.indices { d += Double(got[i] - want[i]) * Double(got[i] - want[i]); n += Double(want[i] * want[i]) }
            let rel = (d / n).squareRoot()
            let same = Double(zip(wantTop, argmaxes(got)).filter { $0 == $1 }.count) / Double(prompt.count)
            print("[quantize] SmolLM2 \(mix.rawValue): logits' relative RMS difference \(rel), greedy token kept at \(same)")
            XCTAssertLessThan(rel, bound, "\(mix) logits")
            XCTAssertGreaterThanOrEqual(same, agree, "\(mix) greedy tokens")
        }
    }
}
