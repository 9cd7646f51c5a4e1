// `offload tokenize` and `offload generate` on a Hugging Face folder as exportHFCheckpoint writes it
// (config.json + model.safetensors of SmolLM2) with the tokenizer.json transformers wrote beside it
// (Fixtures/tokenizer-json/smollm2): transformers' ids, the GGUF's generation, and a tokenizer.gguf
// in the folder taking precedence over the tokenizer.json.
import Foundation
import Formats
import Models
import XCTest

final class TokenizerJSONCLITests: XCTestCase {
    struct Cases: Decodable {
        struct Variant: Decodable { var ids: [[Int]] }
        var texts: [String]
        var variants: [String: Variant]
    }

    func testHuggingFaceFolderReadsItsTokenizerJSON() throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let folder = dir.appendingPathComponent("smollm2-hf").path
        try exportHFCheckpoint(from: GGUFWeights(path: CLI.smolLM2), to: folder)

        let none = try CLI.run(["tokenize", "--model", folder, "--text", "Hello"])
        XCTAssertNotEqual(none.status, 0)
        XCTAssertEqual(none.stderr.trimmingCharacters(in: .newlines),
                       "Error: [tokenizer] \(folder): no tokenizer.json or tokenizer.gguf in the folder; text input needs one")

        let source = CLI.fixtures.appendingPathComponent("tokenizer-json")
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(atPath: source.appendingPathComponent("smollm2/\(name)").path,
                                             toPath: folder + "/" + name)
        }
        let cases = try JSONDecoder().decode(Cases.self, from: Data(contentsOf: source.appendingPathComponent("cases.json")))
        let ids = try XCTUnwrap(cases.variants["smollm2"]).ids
        XCTAssertGreaterThan(cases.texts.count, 15)
        for (text, want) in zip(cases.texts, ids) where !text.contains("<ab>") {
            let r = try CLI.run(["tokenize", "--model", folder, "--text", text, "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let out = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
            XCTAssertEqual(out?["ids"] as? [Int], want, "tokenize \(String(reflecting: text))")
        }
        // The tokenizer.json file itself works too.
        let direct = try CLI.run(["tokenize", "--model", folder + "/tokenizer.json", "--text", "In 2024, the price rose 12345 units."])
        XCTAssertEqual(direct.stdout, "788 216 34 32 34 36 28 260 4319 8739 216 33 34 35 36 37 4784 30\n", direct.stderr)

        // Generation from the folder reads the prompt and writes the text as from the GGUF.
        let code = try XCTUnwrap(cases.texts.firstIndex { $0.hasPrefix("def fib") })
        let args = ["generate", "--prompt", cases.texts[code], "--max-tokens", "12", "--temperature", "0", "--json"]
        let fromGGUF = try CLI.run(args + ["--model", CLI.smolLM2]), fromFolder = try CLI.run(args + ["--model", folder])
        XCTAssertEqual(fromFolder.status, 0, fromFolder.stderr)
        let a = try JSONSerialization.jsonObject(with: Data(fromGGUF.stdout.utf8)) as? [String: Any]
        let b = try JSONSerialization.jsonObject(with: Data(fromFolder.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(b?["prompt_tokens"] as? Int, ids[code].count)
        XCTAssertEqual(b?["prompt_tokens"] as? Int, a?["prompt_tokens"] as? Int)
        XCTAssertEqual(b?["tokens"] as? [Int], a?["tokens"] as? [Int])
        XCTAssertEqual(b?["text"] as? String, a?["text"] as? String)
        XCTAssertGreaterThan((b?["text"] as? String)?.count ?? 0, 10)

        // A tokenizer.gguf beside it wins (here Llama 2's vocabulary, so the ids show which was read).
        try FileManager.default.copyItem(atPath: CLI.cache + "/vocab/ggml-vocab-llama-spm.gguf", toPath: folder + "/tokenizer.gguf")
        let gguf = try CLI.run(["tokenize", "--model", folder, "--text", "Hello world"])
        XCTAssertEqual(gguf.stdout, "1 15043 3186\n", gguf.stderr)
    }

    func testMalformedTokenizerJSONInAFolderIsAOneLineError() throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data(#"{"model": {"type": "WordPiece", "vocab": {}}}"#.utf8).write(to: dir.appendingPathComponent("tokenizer.json"))
        let r = try CLI.run(["tokenize", "--model", dir.path, "--text", "x"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertEqual(r.stderr, "Error: [tokenizer] \(dir.path)/tokenizer.json: model.type 'WordPiece' (BERT-style) is not "
                       + "supported; supported: BPE (byte-level, or SentencePiece-style with byte_fallback)\n")
    }
}
