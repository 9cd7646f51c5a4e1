// The commands as a user runs them, checked against the Hugging Face fixtures
// (Fixtures/smollm2/reference.json, made by scripts/fixtures/make_inference_fixtures.py).
import Foundation
import XCTest

final class EndToEndTests: XCTestCase {
    struct Reference: Decodable {
        struct Prompt: Decodable { var text: String; var ids: [Int]; var greedy: [Int] }
        struct Eval: Decodable { var file: String; var seq_len: Int; var tokens: Int; var tokens_scored: Int; var mean_nll: Double }
        var prompts: [Prompt]
        var eval: Eval
    }

    func reference() throws -> Reference {
        try JSONDecoder().decode(Reference.self, from: Data(contentsOf: CLI.fixtures.appendingPathComponent("smollm2/reference.json")))
    }

    func json(_ r: CommandResult, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        return try XCTUnwrap(obj, "not a JSON object: \(r.stdout)", file: file, line: line)
    }

    func testTokenizeMatchesHuggingFaceIds() throws {
        for p in try reference().prompts {
            let out = try json(CLI.run(["tokenize", "--model", CLI.smolLM2, "--text", p.text, "--json"]))
            XCTAssertEqual(out["ids"] as? [Int], p.ids, "tokenize \(p.text.debugDescription)")
        }
    }

    /// llama.cpp's vocabulary-only files have no weights: tokenize reads just the vocabulary.
    /// The ids are llama.cpp's (Fixtures/spm/llama_cpp_cases.json), BOS included as it adds one.
    func testTokenizeReadsASentencePieceVocabularyOnlyFile() throws {
        let llama = CLI.cache + "/vocab/ggml-vocab-llama-spm.gguf"
        let out = try json(CLI.run(["tokenize", "--model", llama, "--text", "Hello world", "--json"]))
        XCTAssertEqual(out["ids"] as? [Int], [1, 15043, 3186])
        XCTAssertEqual(out["pieces"] as? [String], ["<s>", " Hello", " world"])
        let phi3 = try CLI.run(["tokenize", "--model", CLI.cache + "/vocab/ggml-vocab-phi-3.gguf",
                                "--text", "<|user|>\nHi<|end|>\n<|assistant|>"])
        XCTAssertEqual(phi3.status, 0, phi3.stderr)
        XCTAssertEqual(phi3.stdout, "1 32010 6324 32007 32001\n")
        let wrong = try CLI.run(["tokenize", "--model", llama, "--text", "x", "--sha256", String(repeating: "0", count: 64)])
        XCTAssertNotEqual(wrong.status, 0)
        XCTAssertTrue(wrong.stderr.contains("sha256 mismatch"), wrong.stderr)
        let bert = try CLI.run(["tokenize", "--model", CLI.cache + "/vocab/ggml-vocab-bert-bge.gguf", "--text", "x"])
        XCTAssertNotEqual(bert.status, 0)
        XCTAssertTrue(bert.stderr.contains("ggml-vocab-bert-bge.gguf: tokenizer model 'bert' (WordPiece) is not supported"),
                      bert.stderr)
    }

    func testGreedyGenerateJSONMatchesReference() throws {
        let p = try reference().prompts[0]
        let out = try json(CLI.run(["generate", "--model", CLI.smolLM2, "--prompt", p.text, "--temperature", "0",
                                    "--max-tokens", "\(p.greedy.count)", "--ignore-eos", "--json"]))
        XCTAssertEqual(out["tokens"] as? [Int], p.greedy)
        XCTAssertEqual(out["prompt_tokens"] as? Int, p.ids.count)
        XCTAssertGreaterThan(out["prefill_tokens_per_second"] as? Double ?? 0, 0)
        XCTAssertGreaterThan(out["decode_tokens_per_second"] as? Double ?? 0, 0)
        XCTAssertFalse((out["text"] as? String ?? "").isEmpty)
    }

    func testStreamingTextEqualsJSONText() throws {
        let args = ["generate", "--model", CLI.smolLM2, "--prompt", "Once upon a time", "--temperature", "0.7",
                    "--seed", "7", "--max-tokens", "24", "--ignore-eos"]
        let streamed = try CLI.run(args)
        XCTAssertEqual(streamed.status, 0, streamed.stderr)
        let out = try json(CLI.run(args + ["--json"]))
        // Same seed, same tokens: the streamed text is the JSON text plus the final newline.
        XCTAssertEqual(streamed.stdout, (out["text"] as? String ?? "") + "\n")
        XCTAssertEqual((out["tokens"] as? [Int])?.count, 24)
    }

    func testEvalPerplexityMatchesReference() throws {
        let e = try reference().eval
        let data = CLI.fixtures.appendingPathComponent("smollm2/" + e.file).path
        let out = try json(CLI.run(["eval", "--model", CLI.smolLM2, "--data", data, "--seq-len", "\(e.seq_len)", "--json"]))
        XCTAssertEqual(out["tokens"] as? Int, e.tokens)
        XCTAssertEqual(out["tokens_scored"] as? Int, e.tokens_scored)
        // Logits agree to ~1e-3 (see SmolLM2ParityTests); the mean NLL over 1882 tokens to far better.
        XCTAssertEqual(out["mean_nll"] as? Double ?? 0, e.mean_nll, accuracy: 1e-4)
    }

    func testInspectReportsTheModel() throws {
        let out = try json(CLI.run(["inspect", CLI.smolLM2, "--json", "--batch", "4", "--seq-len", "256"]))
        XCTAssertEqual(out["parameters"] as? Int, 134_515_008)
        let tensors = try XCTUnwrap(out["tensors"] as? [[String: Any]])
        XCTAssertEqual(tensors.count, 272)
        let embd = try XCTUnwrap(tensors.first { $0["name"] as? String == "token_embd.weight" })
        XCTAssertEqual(embd["type"] as? String, "Q8_0")
        XCTAssertEqual(embd["shape"] as? [Int], [49152, 576])
        XCTAssertEqual(embd["bytes"] as? Int, 49152 * 576 / 32 * 34)
        let mem = try XCTUnwrap(out["memory"] as? [String: Any])
        // fp32 weights + grads + two Adam moments.
        XCTAssertEqual(mem["training_state_bytes"] as? Int, 16 * 134_515_008)
        XCTAssertEqual(mem["kv_cache_bytes"] as? Int, 2 * 30 * 4 * 256 * 192 * 4)
    }

    func testHelpExplainsEveryCommand() throws {
        for cmd in ["generate", "tokenize", "eval", "inspect"] {
            let r = try CLI.run([cmd, "--help"])
            XCTAssertEqual(r.status, 0)
            XCTAssertTrue(r.stdout.contains("Example:"), "\(cmd) --help has no example")
        }
    }
}
