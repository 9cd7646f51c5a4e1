// SmolLM2-135M (and a tiny model with K-quants on every matrix) quantized by llama.cpp's own llama-quantize into every K-quant mix, the 5-bit
// legacy types and IQ4 (scripts/make-quant-models.sh), against Hugging Face transformers in fp32
// on the same files dequantized by the gguf package (scripts/fixtures/make_quant_fixtures.py):
// the tensor-type mix, the top 20 logits at every prompt position, and greedy continuations.
// The reference is the dequantized fp32 model, not llama.cpp's arithmetic (which quantizes
// activations to 8 bits and moves logits by up to ~2 on these files).
import Foundation
import Formats
import Models
import Runtime
import XCTest

final class QuantizedSmolLM2Tests: XCTestCase {
    struct Fixture: Decodable {
        struct Prompt: Decodable {
            var text: String
            var ids: [Int]
            var greedy: [Int]
            var greedy_margin: [Double]
            var topk: [[[Double]]]
        }
        var model: String
        var model_sha256: String
        var model_size: Int
        var quant_type: String
        var tensor_types: [String: Int]
        var vocab_size: Int
        var prompts: [Prompt]
    }

    func fixtures() throws -> [Fixture] {
        let dir = TestAssets.fixtures.appendingPathComponent("quants")
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path)
            .filter { $0.hasPrefix("smollm2_") && $0.hasSuffix(".json") }.sorted()
        return try names.map { try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: dir.appendingPathComponent($0))) }
    }

    func testEveryMixMatchesTransformers() throws {
        let all = try fixtures()
        // Every K-quant type, the 5-bit legacy ones and IQ4 appear in some file.
        let types = Set(all.flatMap { $0.tensor_types.keys })
        for t in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"] {
            XCTAssertTrue(types.contains(t), "no fixture model holds a \(t) tensor")
        }
        var worst: (Double, String) = (0, "")
        for f in all {
            let path = try TestAssets.require(TestAssets.cache + "/models/quant/" + f.model,
                                              hint: "run scripts/make-quant-models.sh")
            // The fixture describes these bytes: another llama-quantize may round differently.
            XCTAssertEqual(try sha256Hex(ofFile: path), f.model_sha256,
                           "\(f.model) is not the file the fixture was computed from (scripts/make-quant-models.sh)")
            let w = try GGUFWeights(path: path)
            var mix: [String: Int] = [:]
            for t in w.file.tensors { mix[GGMLType.name(t.typeID), default: 0] += 1 }
            XCTAssertEqual(mix, f.tensor_types, "\(f.quant_type): tensor types")
            let m = try LlamaModel(source: w, threads: 2)
            for (i, p) in f.prompts.enumerated() {
                let logits = try m.forward(p.ids, cache: m.makeCache(capacity: p.ids.count), allLogits: true)
                for (pos, top) in p.topk.enumerated() {
                    let scale = max(abs(top[0][1]), 1)
                    for pair in top {
                        let err = abs(Double(logits[pos * f.vocab_size + Int(pair[0])]) - pair[1]) / scale
                        if err > worst.0 { worst = (err, "\(f.quant_type) prompt \(i) position \(pos)") }
                    }
                }
                var sampler = Sampler(options: SamplingOptions(temperature: 0), seed: 0)
                let r = try Generator(model: m).generate(prompt: p.ids, maxTokens: p.greedy.count, sampler: &sampler)
                // Steps whose top two logits are closer than our error could flip; compare up to the first.
                let n = p.greedy_margin.firstIndex { $0 < 1e-2 } ?? p.greedy.count
                XCTAssertEqual(Array(r.tokens.prefix(n)), Array(p.greedy.prefix(n)), "\(f.quant_type) prompt \(i): greedy")
            }
        }
        print("[quant] worst top-20 logit error relative to the top logit: \(worst.0) (\(worst.1))")
        XCTAssertLessThan(worst.0, 1e-4, "at \(worst.1)")
    }

    /// SmolLM2's rows of 576 put most tensors in 32-value fallback types; a tiny random model with
    /// rows of 256 and 512 (kquant.f16.gguf, made into the cache by scripts/make-tiny-models.py and
    /// quantized by llama-quantize in scripts/make-quant-models.sh) has a K-quant or IQ4_XS block on
    /// every matrix.
    func testKQuantsOnEveryMatrixMatchTransformers() throws {
        struct Refs: Decodable {
            struct File: Decodable { var file: String; var sha256: String; var tensor_types: [String: Int]; var topk: [[[Double]]] }
            var ids: [Int]
            var files: [String: File]
        }
        let refs = try JSONDecoder().decode(Refs.self, from: Data(contentsOf: TestAssets.fixtures.appendingPathComponent("tiny/kquant_refs.json")))
        XCTAssertEqual(Set(refs.files.keys), ["Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K", "IQ4_XS"])
        var worst: (Double, String) = (0, "")
        for (type, f) in refs.files.sorted(by: { $0.key < $1.key }) {
            let path = try TestAssets.require(TestAssets.tiny + "/" + f.file,
                                              hint: "run scripts/test.sh, or scripts/make-quant-models.sh (it makes the tiny models, then quantizes them)")
            XCTAssertEqual(try sha256Hex(ofFile: path), f.sha256, "\(f.file) is not the file the fixture was computed from")
            let w = try GGUFWeights(path: path)
            var mix: [String: Int] = [:]
            for t in w.file.tensors { mix[GGMLType.name(t.typeID), default: 0] += 1 }
            XCTAssertEqual(mix, f.tensor_types, type)
            for t in w.file.tensors where t.shape.count == 2 {
                XCTAssertEqual(t.dtype?.blockElements, 256, "\(type): \(t.name) is \(GGMLType.name(t.typeID)), not a 256-value type")
            }
            let m = try LlamaModel(source: w, threads: 2)
            let logits = try m.forward(refs.ids, cache: m.makeCache(capacity: refs.ids.count), allLogits: true)
            for (pos, top) in f.topk.enumerated() {
                let scale = max(abs(top[0][1]), 1)
                for pair in top {
                    let err = abs(Double(logits[pos * w.config.vocabSize + Int(pair[0])]) - pair[1]) / scale
                    if err > worst.0 { worst = (err, "\(type) position \(pos)") }
                }
            }
        }
        print("[quant] tiny model, worst top-16 logit error relative to the top logit: \(worst.0) (\(worst.1))")
        XCTAssertLessThan(worst.0, 1e-4, "at \(worst.1)")
    }
}
