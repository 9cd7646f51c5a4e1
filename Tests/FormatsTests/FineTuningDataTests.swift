// JSONL fine-tuning examples: which tokens are trained on, and one-line errors naming the file and
// line. (The ids and mask against transformers' tokenizer and chat template: FineTuningParityTests.)
import Foundation
import Formats
import Tensors
import XCTest

final class FineTuningDataTests: XCTestCase {
    func smolLM2() throws -> (Tokenizer, ChatTemplate) {
        let path = "\(AssetCache.directory)/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("missing \(path): run scripts/fetch-assets.sh")
            throw OffloadError("missing asset \(path)")
        }
        let file = try GGUFFile(path: path)
        return (try Tokenizer(gguf: file), try ChatTemplate.fromGGUF(file))
    }

    func testPromptCompletionTrainsOnTheCompletionAndEOS() throws {
        let (tok, template) = try smolLM2()
        let d = try FineTuningData.parse(#"{"prompt": "Q: sky?\nA:", "completion": " Blue."}"#, source: "x.jsonl",
                                         tokenizer: tok, template: template)
        let prompt = tok.encode("Q: sky?\nA:"), completion = tok.encode(" Blue.", addBOS: false)
        XCTAssertEqual(d.tokens, prompt + completion + [tok.eosID!])
        XCTAssertEqual(d.mask, [Bool](repeating: false, count: prompt.count) + [Bool](repeating: true, count: completion.count + 1))
    }

    func testConversationTrainsOnAssistantTurnsOnly() throws {
        let (tok, template) = try smolLM2()
        let row = #"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, "#
            + #"{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]}"#
        let d = try FineTuningData.parse(row + "\n\n" + row, source: "x.jsonl", tokenizer: tok, template: template)
        XCTAssertEqual(d.examples, 2, "a blank line is skipped")
        // The whole rendering, and only the assistants' words (with their end-of-turn) trained on.
        let full = try template.render([ChatMessage(role: "user", content: "Hi"), ChatMessage(role: "assistant", content: "Hello!"),
                                        ChatMessage(role: "user", content: "Bye"), ChatMessage(role: "assistant", content: "Goodbye.")],
                                       addGenerationPrompt: false)
        XCTAssertEqual(tok.decode(d.tokens), full + full)
        let trained = zip(d.tokens, d.mask).filter { $0.1 }.map { $0.0 }
        XCTAssertEqual(tok.decode(trained), String(repeating: "Hello!<|im_end|>\nGoodbye.<|im_end|>\n", count: 2))
    }

    func testBadRowsNameTheFileAndLine() throws {
        let (tok, template) = try smolLM2()
        let good = #"{"prompt": "a", "completion": "b"}"#
        let cases: [(String, String)] = [
            (good + "\n{not json", "data.jsonl:2: not JSON"),
            (good + "\n[1, 2]", "data.jsonl:2: expected a JSON object, found an array"),
            (#"{"text": "a"}"#, #"data.jsonl:1: expected {"prompt", "completion"} or {"messages": [...]}"#),
            (#"{"prompt": 1, "completion": "b"}"#, #"data.jsonl:1: "prompt" and "completion" must be strings"#),
            (#"{"prompt": "a", "completion": ""}"#, "data.jsonl:1: \"completion\" is empty"),
            (#"{"messages": [{"role": "user", "content": "Hi"}]}"#, "data.jsonl:1: the conversation has no assistant message"),
            (#"{"messages": [{"role": "user"}]}"#, #"data.jsonl:1: message 0 needs "role" and "content" strings"#),
            (#"{"messages": []}"#, #"data.jsonl:1: "messages" must be a non-empty array"#),
            ("\n\n", "data.jsonl: no examples"),
            // A role that is not a string.
            (#"{"messages": [{"role": "assistant", "content": "Hi"}, {"role": 7, "content": "x"}]}"#,
             #"data.jsonl:1: message 1 needs "role" and "content" strings"#),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try FineTuningData.parse(text, source: "data.jsonl", tokenizer: tok, template: template)) {
                XCTAssertTrue("\($0)".contains(expected), "\($0) should say \(expected)")
            }
        }
        // A template's own refusal names the row.
        let strict = try ChatTemplate(source: "{% if messages[0]['role'] != 'user' %}{{ raise_exception('start with the user') }}"
                                      + "{% endif %}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
                                      bosToken: nil, eosToken: nil)
        XCTAssertThrowsError(try FineTuningData.parse(good + "\n" + #"{"messages": [{"role": "assistant", "content": "Hi"}]}"#,
                                                      source: "data.jsonl", tokenizer: tok, template: strict)) {
            XCTAssertTrue("\($0)".contains("data.jsonl:2:") && "\($0)".contains("start with the user"), "\($0)")
        }
        XCTAssertThrowsError(try FineTuningData.parse(#"{"messages": [{"role": "assistant", "content": "Hi"}]}"#,
                                                      source: "data.jsonl", tokenizer: tok, template: nil)) {
            XCTAssertTrue("\($0)".contains("data.jsonl:1: a conversation needs the model's chat template"), "\($0)")
        }
    }
}
