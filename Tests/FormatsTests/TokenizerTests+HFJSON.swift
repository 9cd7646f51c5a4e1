// Hugging Face tokenizer.json files (`Tokenizer(huggingFaceJSON:)`) against transformers' own ids,
// from Fixtures/tokenizer-json (made by scripts/fixtures/make_tokenizer_json_fixtures.py):
// SmolLM2's byte-level BPE and Llama 2's SentencePiece-style BPE as committed files, variants of
// them (pre-tokenizer, normalizer, post-processor, added tokens), and files assembled from
// llama.cpp's vocabularies (Llama 3, Qwen2, Qwen3.5, GPT-2, StarCoder), which must also pass
// llama.cpp's test vectors. Malformed files must give one-line errors naming the file and field.

import Foundation
import XCTest
import Formats
import Tensors

extension TokenizerTests {
    struct HFJSONFixture: Decodable {
        struct Variant: Decodable {
            var base: String
            var header_json: String
            var config_json: String?
            /// The model's options (everything but vocab and merges) for a base assembled from a GGUF.
            var model_options_json: String?
            var bos_token_id: Int?
            var eos_token_id: Int?
            var ids: [[Int]]
        }
        struct Corpus: Decodable {
            var tokens: Int
            var first_ids: [Int]
            var last_ids: [Int]
            var ids_sha256: String
        }
        struct Shakespeare: Decodable {
            var bytes: Int
            var smollm2: Corpus
            var llamaSPM: Corpus
            enum CodingKeys: String, CodingKey { case bytes, smollm2, llamaSPM = "llama-spm" }
        }
        var texts: [String]
        var variants: [String: Variant]
        var shakespeare: Shakespeare
    }

    static var hfJSONDir: URL { fixtures.appendingPathComponent("tokenizer-json") }

    func hfJSONFixture() throws -> HFJSONFixture {
        try JSONDecoder().decode(HFJSONFixture.self, from: Data(contentsOf: Self.hfJSONDir.appendingPathComponent("cases.json")))
    }

    func hfJSONTokenizer(_ base: String) throws -> Tokenizer {
        try Tokenizer(huggingFaceJSON: Self.hfJSONDir.appendingPathComponent("\(base)/tokenizer.json").path)
    }

    /// A scratch folder removed when the test ends.
    func scratchFolder(_ name: String) throws -> String {
        let dir = NSTemporaryDirectory() + "offload-tokjson-\(name)-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    /// JSON string literal of `s`, byte for byte (no Foundation round trip: it would merge
    /// canonically equivalent vocabulary keys).
    static func jsonLiteral(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }

    /// The `"model":{...}` text of a variant's base: a committed file's (which writes "model" last),
    /// or a BPE model made of a llama.cpp vocabulary's tokens by index and its merge strings.
    func baseModelJSON(_ base: String, options: String) throws -> String {
        if base.hasPrefix("gguf:") {
            let gguf = try GGUFFile(path: asset("vocab/ggml-vocab-\(base.dropFirst(5)).gguf"))
            let tokens = try XCTUnwrap(gguf.strings("tokenizer.ggml.tokens"))
            let merges = try XCTUnwrap(gguf.strings("tokenizer.ggml.merges"))
            let vocab = tokens.enumerated().map { "\(Self.jsonLiteral($1)):\($0)" }.joined(separator: ",")
            return "\"model\":{\(options.dropFirst().dropLast()),\"vocab\":{\(vocab)},\"merges\":[\(merges.map(Self.jsonLiteral).joined(separator: ","))]}"
        }
        let text = try String(contentsOf: Self.hfJSONDir.appendingPathComponent("\(base)/tokenizer.json"), encoding: .utf8)
        let start = try XCTUnwrap(text.range(of: "\"model\":{\"type\""), "\(base): \"model\" is not where the fixture script puts it")
        return String(text[start.lowerBound...].dropLast())
    }

    /// Writes a variant's tokenizer.json and tokenizer_config.json into a scratch folder; returns the tokenizer.json path.
    func writeVariant(_ name: String, _ v: HFJSONFixture.Variant) throws -> String {
        let dir = try scratchFolder(name)
        let body = "\(v.header_json.dropLast()),\(try baseModelJSON(v.base, options: v.model_options_json ?? ""))}"
        try Data(body.utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        if let c = v.config_json { try Data(c.utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer_config.json")) }
        return dir + "/tokenizer.json"
    }

    // MARK: transformers' ids

    func testTokenizerJSONVariantsMatchTransformers() throws {
        let fixture = try hfJSONFixture()
        XCTAssertEqual(fixture.variants.count, 18)
        XCTAssertGreaterThan(fixture.texts.count, 15)
        for (name, v) in fixture.variants.sorted(by: { $0.key < $1.key }) {
            let path = try writeVariant(name, v)
            let tok = try Tokenizer(huggingFaceJSON: path)
            XCTAssertEqual(tok.bosID, v.bos_token_id, "\(name): BOS")
            XCTAssertEqual(tok.eosID, v.eos_token_id, "\(name): EOS")
            XCTAssertEqual(v.ids.count, fixture.texts.count)
            var failed = 0
            for (text, ids) in zip(fixture.texts, v.ids) {
                let got = tok.encode(text)
                if got != ids {
                    failed += 1
                    XCTFail("\(name): \(String(reflecting: text))\n  transformers \(ids)\n  offload      \(got)")
                }
            }
            print("[tokenizer] tokenizer.json \(name) (\(tok.preName)): \(fixture.texts.count - failed)/\(fixture.texts.count) texts give transformers' ids")
        }
    }

    /// The files assembled from llama.cpp's vocabularies also give llama.cpp's test vectors (made with
    /// each model's own tokenizer.json), decoded back to the text.
    func testTokenizerJSONPassesLlamaCppVectors() throws {
        let fixture = try hfJSONFixture()
        let assembled = fixture.variants.filter { $0.value.base == "gguf:" + $0.key }  // as the model's own file has it
        XCTAssertEqual(Set(assembled.keys), ["llama-bpe", "qwen2", "qwen35", "gpt-2", "starcoder"])
        for (name, v) in assembled.sorted(by: { $0.key < $1.key }) {
            let tok = try Tokenizer(huggingFaceJSON: writeVariant(name, v))
            let cases = try readVectors(name)
            XCTAssertGreaterThan(cases.count, 40, name)
            var failed = 0
            for c in cases {
                let text = try XCTUnwrap(String(validating: c.text, as: UTF8.self))
                let got = tok.encode(text, addBOS: false, parseSpecial: false)
                if got != c.ids {
                    failed += 1
                    XCTFail("\(name): \(String(reflecting: text))\n  expected \(c.ids)\n  got      \(got)")
                }
                if name != "qwen2" {  // NFC changes the text of decomposed input
                    XCTAssertEqual(tok.decode(got), text, "\(name): decode(encode(x)) != x")
                }
            }
            print("[tokenizer] tokenizer.json \(name): \(cases.count - failed)/\(cases.count) llama.cpp cases pass")
        }
    }

    // MARK: the committed files

    /// SmolLM2's tokenizer.json and its GGUF vocabulary are the same tokenizer: same ids on the fixture
    /// texts and the earlier SmolLM2 cases, same BOS/EOS, the same bytes for every token.
    func testSmolLM2TokenizerJSONEqualsItsGGUF() throws {
        let json = try hfJSONTokenizer("smollm2"), gguf = try smolLM()
        XCTAssertEqual(json.vocabSize, 49152)
        XCTAssertEqual(json.preName, "digits+gpt-2")
        XCTAssertEqual(json.bosID, 1)
        XCTAssertEqual(json.eosID, 2)
        XCTAssertFalse(json.addsBOSByDefault)
        XCTAssertEqual(json.endOfGenerationIDs, gguf.endOfGenerationIDs)
        var texts = try hfJSONFixture().texts.filter { !$0.contains("<ab>") }  // an added token only the variant has
        texts += Self.smolCases.map(\.0) + Self.smolDigitCases.map(\.0)
        for t in texts {
            XCTAssertEqual(json.encode(t), gguf.encode(t), String(reflecting: t))
            XCTAssertEqual(json.encode(t, addBOS: true, parseSpecial: false), gguf.encode(t, addBOS: true, parseSpecial: false))
        }
        for (text, ids) in Self.smolCases + Self.smolDigitCases { XCTAssertEqual(json.encode(text), ids, text) }
        var differ = 0
        for id in 0..<49152 where json.piece(for: id) != gguf.piece(for: id) || json.types[id] != gguf.types[id] { differ += 1 }
        XCTAssertEqual(differ, 0, "tokens whose bytes or type differ between tokenizer.json and GGUF")
        XCTAssertEqual(json.decode([1, 4093, 2], skipSpecial: true), "user")
    }

    /// The whole Shakespeare corpus (5 MB) as transformers encodes it, for both committed files.
    func testTokenizerJSONEncodesShakespeareAsTransformers() throws {
        let ref = try hfJSONFixture().shakespeare
        let dir = try asset("shakespeare")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".txt") }.sorted()
        var text = ""
        for f in files { text += try String(contentsOfFile: "\(dir)/\(f)", encoding: .utf8) }
        XCTAssertEqual(text.utf8.count, ref.bytes, "the corpus is not the one the fixture was made from")
        for (base, want) in [("smollm2", ref.smollm2), ("llama-spm", ref.llamaSPM)] {
            let tok = try hfJSONTokenizer(base)
            let t0 = Date()
            let ids = tok.encode(text, addBOS: false)
            print(String(format: "[tokenizer] tokenizer.json %@: shakespeare -> %d tokens in %.2f s", base, ids.count,
                         Date().timeIntervalSince(t0)))
            XCTAssertEqual(ids.count, want.tokens, base)
            XCTAssertEqual(Array(ids.prefix(16)), want.first_ids, base)
            XCTAssertEqual(Array(ids.suffix(16)), want.last_ids, base)
            var digest = SHA256()
            digest.update(Data(ids.map(String.init).joined(separator: " ").utf8))
            XCTAssertEqual(digest.finalizeHex(), want.ids_sha256, "\(base): some of the \(ids.count) ids differ from transformers'")
            XCTAssertEqual(tok.decode(ids), text, base)
        }
    }

    /// Llama 2's vocabulary as a tokenizer.json: the Metaspace rules (no "▁" after a special token, none
    /// added before text that starts with a space) where llama.cpp's SentencePiece differs.
    func testLlamaTokenizerJSONFollowsMetaspaceNotLlamaCpp() throws {
        let json = try hfJSONTokenizer("llama-spm"), gguf = try spmTokenizer("llama-spm")
        XCTAssertEqual(json.vocabSize, 32000)
        XCTAssertEqual(json.preName, "metaspace-first")
        XCTAssertTrue(json.addsBOSByDefault)
        XCTAssertEqual(json.bosID, 1)
        XCTAssertEqual(json.eosID, 2)
        XCTAssertEqual(json.encode("Hello world"), gguf.encode("Hello world"))
        XCTAssertEqual(json.encode("Hello world"), [1, 15043, 3186])
        // After <s> in the text: transformers writes "world" with no ▁ in front, llama.cpp with one.
        XCTAssertEqual(json.encode("<s>world", addBOS: false), [1, 11526])
        XCTAssertEqual(gguf.encode("<s>world", addBOS: false, parseSpecial: true), [1, 3186])
        // Text that starts with a space: Metaspace adds no second one.
        XCTAssertEqual(json.encode(" Hi", addBOS: false).map { json.tokenText($0)! }, ["▁Hi"])
        XCTAssertEqual(gguf.encode(" Hi", addBOS: false).map { gguf.tokenText($0)! }, ["▁", "▁Hi"])
        // Byte fallback and decoding as for the GGUF.
        let rare = json.encode("𠜎", addBOS: false)
        XCTAssertEqual(rare.dropFirst().map { json.tokenText($0) }, ["<0xF0>", "<0xA0>", "<0x9C>", "<0x8E>"])
        XCTAssertEqual(json.decode(rare), "𠜎")
        XCTAssertEqual(json.encode("Hello <s> world"), [1, 15043, 29871, 1, 3186])
        XCTAssertEqual(json.decode(json.encode("Hello <s> world")), "<s> Hello <s> world")
    }

    // MARK: small files written on the spot

    /// A byte-level tokenizer.json over a few tokens, in the given merge form.
    func tinyTokenizerJSON(merges: String, pre: String? = nil, post: String = "null", normalizer: String = "null",
                           name: String = "tiny") throws -> String {
        let dir = try scratchFolder(name)
        let vocab = #"{"a":0,"b":1,"c":2,"Ġ":3,"ab":4,"abc":5,"Ġa":6,"<x>":7}"#
        let preTokenizer = pre ?? #"{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}"#
        let body = #"{"version":"1.0","added_tokens":[{"id":7,"content":"<x>","special":true}],"normalizer":"# + normalizer
            + #","pre_tokenizer":"# + preTokenizer + #","post_processor":"# + post
            + #","model":{"type":"BPE","vocab":"# + vocab + #","merges":"# + merges + "}}"
        try Data(body.utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        return dir + "/tokenizer.json"
    }

    func testMergesReadInBothForms() throws {
        let strings = try Tokenizer(huggingFaceJSON: tinyTokenizerJSON(merges: #"["a b","ab c","Ġ a"]"#))
        let pairs = try Tokenizer(huggingFaceJSON: tinyTokenizerJSON(merges: #"[["a","b"],["ab","c"],["Ġ","a"]]"#))
        for t in ["abc", "ab", " a", "cab a<x>b"] {
            XCTAssertEqual(strings.encode(t), pairs.encode(t), t)
        }
        XCTAssertEqual(strings.encode("abc"), [5])
        XCTAssertEqual(strings.encode("cab a<x>b"), [2, 4, 6, 7, 1])
        XCTAssertEqual(strings.encode("<x>", parseSpecial: false), [])  // '<', 'x', '>' are no tokens: dropped
        // Rank order: without "a b" first, "abc" cannot form.
        let reordered = try Tokenizer(huggingFaceJSON: tinyTokenizerJSON(merges: #"[["ab","c"],["Ġ","a"]]"#))
        XCTAssertEqual(reordered.encode("abc"), [0, 1, 2])
    }

    // MARK: refusals

    func errorMessage(_ body: () throws -> Tokenizer) -> String {
        do { _ = try body(); return "no error" } catch { return "\(error)" }
    }

    func assertOneLineError(_ message: String, path: String, contains: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(message.hasPrefix("[tokenizer] \(path): "), message, file: file, line: line)
        XCTAssertFalse(message.contains("\n"), "not one line: \(message)", file: file, line: line)
        for c in contains { XCTAssertTrue(message.contains(c), "\(message)\n  does not say: \(c)", file: file, line: line) }
    }

    func testMalformedTokenizerJSONIsAOneLineError() throws {
        func write(_ text: String, _ name: String) throws -> String {
            let path = try scratchFolder(name) + "/tokenizer.json"
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            return path
        }
        var p = try write("{\"model\": {\"type\": \"BPE\",\n \"vocab\": {\"a\" 0}}}", "badjson")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p,
                           contains: ["not valid JSON: line 2, column 16: expected ':' after member name \"a\""])
        p = try write("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": [", "truncated")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p, contains: ["not valid JSON", "end of the document"])
        p = try write(#"{"model": {"type": "WordPiece", "vocab": {"a": 0}}}"#, "wordpiece")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p,
                           contains: ["model.type 'WordPiece' (BERT-style) is not supported; supported: BPE"])
        p = try write(#"{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}"#, "unigram")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p, contains: ["model.type 'Unigram'"])
        p = try write(#"[1, 2]"#, "array")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p, contains: ["expected a JSON object at the top, found an array"])
        let missing = NSTemporaryDirectory() + "offload-no-such-\(UUID().uuidString)/tokenizer.json"
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: missing) }, path: missing, contains: ["cannot read"])

        // An unknown Split pattern (GPT-4o's) is named in full.
        let gpt4o = #"[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|\\p{N}{1,3}"#
        let split = #"{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":""# + gpt4o
            + #""},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]}"#
        p = try tinyTokenizerJSON(merges: "[]", pre: split, name: "gpt4o")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p, contains: [
            #"pre_tokenizer.pretokenizers[0].pattern.Regex "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}"#, "is not a pattern Offload knows",
            "known: gpt-2, llama3, qwen2, qwen35, digits, digit-runs"])
        let merged = #"{"type":"Split","pattern":{"Regex":"\\p{N}"},"behavior":"MergedWithPrevious","invert":false}"#
        p = try tinyTokenizerJSON(merges: "[]", pre: #"{"type":"Sequence","pretokenizers":["# + merged + #",{"type":"ByteLevel"}]}"#, name: "behavior")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p,
                           contains: ["pre_tokenizer.pretokenizers[0].behavior 'MergedWithPrevious' is not supported"])
        p = try tinyTokenizerJSON(merges: "[]", pre: #"{"type":"Whitespace"}"#, name: "whitespace")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p,
                           contains: ["pre_tokenizer Whitespace does not end in ByteLevel and is not Metaspace"])
        p = try tinyTokenizerJSON(merges: "[]", pre: #"{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":false}"#, name: "nofallback")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p, contains: ["model.byte_fallback is false"])

        // Merges and added tokens.
        p = try tinyTokenizerJSON(merges: #"["a b","abc"]"#, name: "merge")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p,
                           contains: [#"model.merges[1] "abc" is not two tokens separated by one space"#])
        p = try tinyTokenizerJSON(merges: #"[["a","z"]]"#, name: "merge-oov")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p, contains: [#"model.merges[0]: "z" is not in model.vocab"#])
        p = try tinyTokenizerJSON(merges: #"[["b","a"]]"#, name: "merge-result")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p,
                           contains: [#"model.merges[0]: "ba" (the merge's result) is not in model.vocab"#])
        p = try tinyTokenizerJSON(merges: #"[7]"#, name: "merge-kind")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p, contains: ["model.merges[0] is an integer"])
        p = try tinyTokenizerJSON(merges: "[]", post: #"{"type":"RobertaProcessing"}"#, name: "post")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p,
                           contains: ["post_processor.type 'RobertaProcessing' is not supported"])
        p = try tinyTokenizerJSON(merges: "[]", normalizer: #"{"type":"Lowercase"}"#, name: "lower")
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p,
                           contains: ["normalizer.type 'Lowercase' is not supported; supported: NFC or none"])
    }

    /// A Metaspace vocabulary that is not SentencePiece-shaped, and tokenizer_config.json problems.
    func testRefusedSentencePieceOptionsAndConfig() throws {
        let dir = try scratchFolder("spm-options")
        func spm(_ pre: String, byteFallback: Bool = true, added: String = "[]", normalizer: String = "null") throws -> String {
            let body = #"{"added_tokens":"# + added + #","normalizer":"# + normalizer + #","pre_tokenizer":"# + pre
                + #","post_processor":null,"model":{"type":"BPE","byte_fallback":"# + (byteFallback ? "true" : "false")
                + #","vocab":{"<unk>":0,"▁":1,"a":2,"▁a":3},"merges":["▁ a"]}}"#
            try Data(body.utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
            return dir + "/tokenizer.json"
        }
        let metaspace = #"{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":false}"#
        var p = try spm(metaspace)
        let ok = try Tokenizer(huggingFaceJSON: p)
        XCTAssertEqual(ok.encode("a a"), [3, 3])
        XCTAssertFalse(ok.addsBOSByDefault)
        p = try spm(metaspace.replacingOccurrences(of: "\"split\":false", with: "\"split\":true"))
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p, contains: ["pre_tokenizer.split is true"])
        p = try spm(metaspace, byteFallback: false)
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p, contains: ["model.byte_fallback is false"])
        let legacy = #"{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"}]}"#
        p = try spm("null", added: #"[{"id":4,"content":"<t>","special":false,"normalized":true}]"#, normalizer: legacy)
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p, contains: [#""<t>" has normalized: true"#])
        p = try spm("null", added: #"[{"id":4,"content":"<t>","special":true,"single_word":true}]"#, normalizer: legacy)
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: p, contains: [#"added_tokens[0] "<t>": single_word: true"#])
        p = try spm("null", normalizer: legacy)
        XCTAssertEqual(try Tokenizer(huggingFaceJSON: p).encode("a a"), [3, 3])

        // tokenizer_config.json beside it: errors name that file.
        let config = dir + "/tokenizer_config.json"
        try Data(#"{"bos_token": "<s>"}"#.utf8).write(to: URL(fileURLWithPath: config))
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: config,
                           contains: [#"bos_token "<s>" is not a token of the tokenizer.json"#])
        try Data(#"{"bos_token": {"content": "<unk>"}, "eos_token": "a""#.utf8).write(to: URL(fileURLWithPath: config))
        assertOneLineError(errorMessage { try Tokenizer(huggingFaceJSON: p) }, path: config, contains: ["not valid JSON"])
        try Data(#"{"bos_token": {"content": "<unk>"}, "eos_token": "a"}"#.utf8).write(to: URL(fileURLWithPath: config))
        let named = try Tokenizer(huggingFaceJSON: p)
        XCTAssertEqual(named.bosID, 0)
        XCTAssertEqual(named.eosID, 2)
        XCTAssertFalse(named.addsBOSByDefault, "no post-processor: no BOS, as in transformers 5")
    }
}
