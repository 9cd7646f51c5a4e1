// The mix rules (ExportType.dtype) against the types llama-quantize chose: for SmolLM2-135M
// in the published-style mixes (requantized from the Q4_1 asset) and for two fp32 sources
// in every mix (Fixtures/quantize/llama-quantize.json, scripts/fixtures/make_quantize_fixtures.py).
import Foundation
import Models
import Tensors
import XCTest

struct QuantizeFixture: Decodable {
    struct Tensor: Decodable { let type: String; let rmse: Double; let sha256: String }
    let sources: [String: [String: [String: Tensor]]]
    let published_mixes: [String: [String: String]]

    static func load() throws -> QuantizeFixture {
        try JSONDecoder().decode(QuantizeFixture.self, from: Data(contentsOf:
            TestAssets.fixtures.appendingPathComponent("quantize/llama-quantize.json")))
    }
}

final class QuantizationMixTests: XCTestCase {
    func mix(_ type: ExportType, _ c: LlamaConfig) -> [String: String] {
        let tied = !c.parameterTable.contains { $0.name == "output.weight" }
        var out: [String: String] = [:]
        for spec in c.parameterTable {
            out[spec.name] = type.dtype(tensor: spec.name, shape: spec.shape, layers: c.layers, tiedEmbeddings: tied).rawValue
        }
        return out
    }

    func testMixesMatchLlamaQuantizeOnSmolLM2() throws {
        let f = try QuantizeFixture.load()
        let c = try LlamaConfig.named("smollm2-135m")
        XCTAssertEqual(Set(f.published_mixes.keys), ["q4_k_m", "q5_k_m", "q6_k"])
        for (name, want) in f.published_mixes {
            let type = try XCTUnwrap(ExportType(rawValue: name))
            XCTAssertEqual(mix(type, c), want, "\(name)")
        }
        // The rules the fixture exercises: Q6_K attn_v falls back to Q8_0 (576-value rows), ffn_down
        // (1536) keeps Q6_K in use_more_bits layers, the tied token_embd takes the output's Q8_0.
        let q4 = mix(.q4_k_m, c)
        XCTAssertEqual(q4["blk.0.attn_v.weight"], "q8_0")
        XCTAssertEqual(q4["blk.3.attn_v.weight"], "q5_0")
        XCTAssertEqual(q4["blk.5.ffn_down.weight"], "q6_k")
        XCTAssertEqual(q4["blk.6.ffn_down.weight"], "q4_k")
        XCTAssertEqual(q4["token_embd.weight"], "q8_0")
        XCTAssertEqual(q4["blk.7.ffn_norm.weight"], "f32")
    }

    func testMixesMatchLlamaQuantizeOnBothSources() throws {
        let f = try QuantizeFixture.load()
        let configs = ["small": try LlamaConfig.named("small"), "smollm2": try LlamaConfig.named("smollm2-135m")]
        for (source, mixes) in f.sources {
            let c = try XCTUnwrap(configs[source])
            XCTAssertEqual(Set(mixes.keys), ["q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16"])
            for (name, tensors) in mixes {
                let type = try XCTUnwrap(ExportType(rawValue: name))
                XCTAssertEqual(mix(type, c), tensors.mapValues(\.type), "\(source) \(name)")
            }
        }
        // small (untied, rows of 256 and 688): output.weight is Q6_K; 688 is no multiple of 32, so
        // ffn_down falls past Q5_0 to f16.
        let small = mix(.q4_k_m, configs["small"]!)
        XCTAssertEqual(small["output.weight"], "q6_k")
        XCTAssertEqual(small["token_embd.weight"], "q4_k")
        XCTAssertEqual(small["blk.0.ffn_down.weight"], "f16")
        XCTAssertEqual(small["blk.2.attn_v.weight"], "q6_k")
        XCTAssertEqual(small["blk.1.attn_v.weight"], "q4_k")
    }

    func testUseMoreBitsAndFallbacks() {
        // llama.cpp's use_more_bits for 32 layers: 0–3, 28–31 and every third from 6.
        XCTAssertEqual((0..<32).filter { ExportType.useMoreBits($0, 32) },
                       [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31])
        let t = ExportType.q5_k_m
        XCTAssertEqual(t.dtype(tensor: "blk.3.attn_q.weight", shape: [960, 960], layers: 32, tiedEmbeddings: true), .q5_1)
        XCTAssertEqual(t.dtype(tensor: "blk.3.attn_q.weight", shape: [1024, 1024], layers: 32, tiedEmbeddings: true), .q5_k)
        XCTAssertEqual(t.dtype(tensor: "blk.3.attn_q.weight", shape: [100, 100], layers: 32, tiedEmbeddings: true), .f16)
        XCTAssertEqual(ExportType.q8_0.dtype(tensor: "output.weight", shape: [100, 1024], layers: 2, tiedEmbeddings: false), .q8_0)
        XCTAssertEqual(ExportType.q6_k.dtype(tensor: "output.weight", shape: [100, 1024], layers: 2, tiedEmbeddings: false), .q6_k)
        XCTAssertEqual(ExportType.q4_k_m.dtype(tensor: "blk.0.attn_q.bias", shape: [1024], layers: 2, tiedEmbeddings: false), .f32)
        XCTAssertEqual(ExportType.f16.dtype(tensor: "blk.0.attn_q.weight", shape: [100, 100], layers: 2, tiedEmbeddings: false), .f16)
        XCTAssertEqual(ExportType.q4_k_m.fileType, 15)
        XCTAssertEqual(ExportType.q5_k_m.fileType, 17)
        XCTAssertEqual(ExportType.q6_k.fileType, 18)
    }
}
