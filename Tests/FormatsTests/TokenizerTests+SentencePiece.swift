// SentencePiece vocabularies (`tokenizer.ggml.model` = "llama") against llama.cpp: its test
// vectors run in testLlamaCppVectors; here, what they do not cover, from
// Fixtures/spm/llama_cpp_cases.json (made by scripts/fixtures/make_spm_fixtures.py with llama.cpp):
// BOS, special tokens in text, Phi-3's whitespace stripping, byte fallback, decoding, and the
// ids of the whole Shakespeare corpus.

import Foundation
import XCTest
import Formats
import Tensors

extension TokenizerTests {
    struct SPMFixture: Decodable {
        struct Vocab: Decodable {
            var bos: Int
            var eos: Int
            var add_bos: Bool
            var eog: [Int]
            var cases: [Case]
        }
        struct Case: Decodable {
            var text: String
            var add_special: Bool
            var parse_special: Bool
            var ids: [Int]
            var decode: String
            var decode_skip_special: String
            var pieces_hex: [String]
        }
        struct Corpus: Decodable {
            var bytes: Int
            var tokens: Int
            var first_ids: [Int]
            var last_ids: [Int]
            var ids_sha256: String
        }
        var vocabs: [String: Vocab]
        var shakespeare: Corpus
    }

    func spmFixture() throws -> SPMFixture {
        let url = Self.fixtures.appendingPathComponent("spm/llama_cpp_cases.json")
        return try JSONDecoder().decode(SPMFixture.self, from: Data(contentsOf: url))
    }

    static var fixtures: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fixtures")
    }

    func spmTokenizer(_ vocab: String) throws -> Tokenizer {
        try Tokenizer(gguf: GGUFFile(path: asset("vocab/ggml-vocab-\(vocab).gguf")))
    }

    static func hexBytes(_ s: String) -> [UInt8] {
        let u = Array(s.utf8)
        return stride(from: 0, to: u.count - 1, by: 2).compactMap { UInt8(String(decoding: u[$0...$0 + 1], as: UTF8.self), radix: 16) }
    }

    func testSentencePieceMatchesLlamaCppOnSpecialTokensAndDecoding() throws {
        let fixture = try spmFixture()
        XCTAssertEqual(Set(fixture.vocabs.keys), ["llama-spm", "phi-3", "baichuan"])
        for (vocab, ref) in fixture.vocabs.sorted(by: { $0.key < $1.key }) {
            let tok = try spmTokenizer(vocab)
            XCTAssertEqual(tok.bosID, ref.bos, vocab)
            XCTAssertEqual(tok.eosID, ref.eos, vocab)
            XCTAssertEqual(tok.addsBOSByDefault, ref.add_bos, vocab)
            XCTAssertEqual(tok.endOfGenerationIDs, Set(ref.eog), vocab)
            XCTAssertGreaterThan(ref.cases.count, 2)
            for c in ref.cases {
                let label = "\(vocab) \(String(reflecting: c.text)) add_special=\(c.add_special) parse_special=\(c.parse_special)"
                XCTAssertEqual(tok.encode(c.text, addBOS: c.add_special, parseSpecial: c.parse_special), c.ids, label)
                XCTAssertEqual(tok.decode(c.ids), c.decode, "decode of " + label)
                XCTAssertEqual(tok.decode(c.ids, skipSpecial: true), c.decode_skip_special, "decode skipping special of " + label)
                XCTAssertEqual(c.ids.map { tok.piece(for: $0) }, c.pieces_hex.map(Self.hexBytes), "pieces of " + label)
            }
            print("[tokenizer] \(vocab): \(ref.cases.count) llama.cpp special-token and decode cases checked")
        }
    }

    func testSentencePieceDefaults() throws {
        let tok = try spmTokenizer("llama-spm")
        XCTAssertEqual(tok.vocabSize, 32000)
        XCTAssertTrue(tok.addsBOSByDefault)
        XCTAssertEqual(tok.encode("Hello world"), [1, 15043, 3186])
        XCTAssertEqual(tok.encode("Hello world", addBOS: false), [15043, 3186])
        XCTAssertEqual(tok.encode(""), [1])
        // Characters outside the vocabulary fall back to <0xXX> tokens, one per UTF-8 byte.
        let ids = tok.encode("𠜎", addBOS: false)
        XCTAssertEqual(ids.dropFirst().map { tok.tokenText($0) }, ["<0xF0>", "<0xA0>", "<0x9C>", "<0x8E>"])
        XCTAssertEqual(tok.tokenText(ids[0]), "▁")
        XCTAssertEqual(tok.decode(ids), "𠜎")
        // The leading space encoding added is dropped by decode, kept for a continuation.
        XCTAssertEqual(tok.decode([15043, 3186]), "Hello world")
        XCTAssertEqual(tok.decode([15043, 3186], continuing: true), " Hello world")
        var stream = StreamingDecoder(tokenizer: tok)
        XCTAssertEqual(ids.map { stream.append($0) }.joined() + stream.flush(), " 𠜎")
        let phi3 = try spmTokenizer("phi-3")
        XCTAssertEqual(phi3.encode("<|user|>\nHi<|end|>\n<|assistant|>"), [1, 32010, 6324, 32007, 32001])
        XCTAssertTrue(phi3.endOfGenerationIDs.isSuperset(of: [32000, 32007]))
    }

    func testSentencePieceRoundTripsVariedUnicode() throws {
        let texts = [
            "Hello, world! The quick brown fox.", "  two  leading, three trailing   ", "\t\ttabs\nand\r\nnewlines\n\n",
            "naïve café résumé Ångström ß", "Ελληνικά Привет мир", "日本語のテキスト、中文文本。한국어 텍스트",
            "עברית ערבית: العربية", "हिन्दी देवनागरी", "ภาษาไทย", "e\u{301} combining, \u{200D} zero-width joiner",
            "emoji 🦙🚀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈", "rare 𠜎𠜱𡃁 and private use \u{E000}\u{F8FF} \u{10FFFD}",
            "math ∑∫√∞≠ ½ ¾ ℝ", "NUL \u{0} BEL \u{7} DEL \u{7F} BOM \u{FEFF}", "<s> </s> <unk> <0x41> written as text",
            "x", "",
        ]
        for vocab in ["llama-spm", "phi-3"] {
            let tok = try spmTokenizer(vocab)
            for s in texts {
                let ids = tok.encode(s, addBOS: false, parseSpecial: false)
                XCTAssertEqual(tok.decode(ids), s, "\(vocab): \(String(reflecting: s)) -> \(ids)")
                if !s.isEmpty { XCTAssertEqual(tok.decode(ids, continuing: true), " " + s, vocab) }
                var stream = StreamingDecoder(tokenizer: tok)
                let streamed = ids.map { stream.append($0) }.joined() + stream.flush()
                XCTAssertEqual(streamed, s.isEmpty ? "" : " " + s, "\(vocab): streamed \(String(reflecting: s))")
            }
        }
    }

    /// A SentencePiece vocabulary written on the spot, to pin merge order and metadata handling.
    func tinySPM(_ tokens: [(String, Float)], extra: [String: GGUFValue] = [:], drop: Set<String> = [],
                 name: String = "tokenizer-spm") throws -> (path: String, cleanup: () -> Void) {
        var all: [(String, Float, Int)] = [("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3)]
        all += (0..<256).map { (String(format: "<0x%02X>", $0), 0, 6) }
        all += tokens.map { ($0.0, $0.1, 1) }
        var meta: [String: GGUFValue] = [
            "general.architecture": .string("llama"),
            "tokenizer.ggml.model": .string("llama"),
            "tokenizer.ggml.tokens": .array(all.map { .string($0.0) }, .string),
            "tokenizer.ggml.scores": .array(all.map { .float(Double($0.1), .float32) }, .float32),
            "tokenizer.ggml.token_type": .array(all.map { .int(Int64($0.2), .int32) }, .int32),
        ]
        for (k, v) in extra { meta[k] = v }
        var w = GGUFWriter()
        for (k, v) in meta.sorted(by: { $0.key < $1.key }) where !drop.contains(k) { w.set(k, v) }
        let path = NSTemporaryDirectory() + "\(name)-\(getpid())-\(UUID().uuidString).gguf"
        try w.write(to: path)
        return (path, { try? FileManager.default.removeItem(atPath: path) })
    }

    func testSentencePieceMergesHighestScoreFirst() throws {
        // Token ids: 0-2 special, 3-258 bytes (<0x64> "d" is 3 + 0x64), then the list below from 259.
        let v = try tinySPM([("▁", -1), ("a", -1), ("b", -1), ("c", -1), ("ab", -3), ("bc", -2), ("aa", -5), ("▁a", -6)])
        defer { v.cleanup() }
        let tok = try Tokenizer(path: v.path)
        func texts(_ s: String) -> [String] { tok.encode(s, addBOS: false).map { tok.tokenText($0) ?? "?" } }
        // "bc" (score -2) merges before "ab" (-3), though "ab" comes first in the text.
        XCTAssertEqual(texts("abc"), ["▁a", "bc"])
        // Equal scores: the leftmost pair merges first ("aa" + "a", not "a" + "aa").
        XCTAssertEqual(texts("aaa"), ["▁", "aa", "a"])
        // "d" is no token: it falls back to its byte token.
        XCTAssertEqual(texts("d"), ["▁", "<0x64>"])
        XCTAssertEqual(tok.decode(tok.encode("abc d")), "<s> abc d")
    }

    func testSentencePieceWithoutSpacePrefix() throws {
        let v = try tinySPM([("▁", -1), ("a", -1), ("b", -1), ("ab", -2)],
                            extra: ["tokenizer.ggml.add_space_prefix": .bool(false), "tokenizer.ggml.add_bos_token": .bool(false)])
        defer { v.cleanup() }
        let tok = try Tokenizer(path: v.path)
        XCTAssertFalse(tok.addsBOSByDefault)
        XCTAssertEqual(tok.encode("ab").map { tok.tokenText($0)! }, ["ab"])
        XCTAssertEqual(tok.encode(" ab").map { tok.tokenText($0)! }, ["▁", "ab"])
        XCTAssertEqual(tok.decode(tok.encode(" ab")), " ab", "no prefix was added, so none is removed")
    }

    func testMalformedSentencePieceMetadataIsAClearError() throws {
        func error(_ v: (path: String, cleanup: () -> Void)) -> String {
            defer { v.cleanup() }
            do { _ = try Tokenizer(path: v.path); return "no error" } catch { return "\(error)" }
        }
        let tokens: [(String, Float)] = [("▁", -1), ("a", -1)]
        let missing = error(try tinySPM(tokens, drop: ["tokenizer.ggml.scores"], name: "spm-no-scores"))
        XCTAssertTrue(missing.hasPrefix("[tokenizer] spm-no-scores-"), missing)
        XCTAssertTrue(missing.contains("tokenizer.ggml.scores is missing"), missing)
        let short = error(try tinySPM(tokens, extra: ["tokenizer.ggml.scores": .array([.float(0, .float32)], .float32)]))
        XCTAssertTrue(short.contains("tokenizer.ggml.scores has 1 entries for the 261 tokens"), short)
        let strings = error(try tinySPM(tokens, extra: ["tokenizer.ggml.scores": .array([.string("x")], .string)]))
        XCTAssertTrue(strings.contains("tokenizer.ggml.scores is not an array of numbers"), strings)
        let bos = error(try tinySPM(tokens, extra: ["tokenizer.ggml.bos_token_id": .uint(9999, .uint32)]))
        XCTAssertTrue(bos.contains("tokenizer.ggml.bos_token_id = "), bos)
        XCTAssertTrue(bos.contains("is not a token id below 261"), bos)
        let noTokens = error(try tinySPM(tokens, drop: ["tokenizer.ggml.tokens"]))
        XCTAssertTrue(noTokens.contains("tokenizer.ggml.tokens is missing"), noTokens)
    }

    /// The whole Shakespeare corpus (5 MB) as llama.cpp encodes it, and how fast.
    func testSentencePieceEncodesShakespeareAsLlamaCppQuickly() throws {
        let tok = try spmTokenizer("llama-spm")
        let dir = try asset("shakespeare")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".txt") }.sorted()
        XCTAssertFalse(files.isEmpty, "no shakespeare/*.txt: run scripts/fetch-assets.sh")
        var text = ""
        for f in files { text += try String(contentsOfFile: "\(dir)/\(f)", encoding: .utf8) }
        // 100 KB (cut at a character boundary): one fragment, one priority queue over ~100k symbols.
        let small = String(text.unicodeScalars.prefix(100_000))
        var t0 = Date()
        let smallIDs = tok.encode(small, addBOS: false)
        let dtSmall = Date().timeIntervalSince(t0)
        t0 = Date()
        let ids = tok.encode(text, addBOS: false)
        let dt = Date().timeIntervalSince(t0)
        print(String(format: "[tokenizer] llama-spm: %d bytes -> %d tokens in %.3f s; shakespeare %d bytes -> %d tokens in %.2f s (%.1f MB/s)",
                     small.utf8.count, smallIDs.count, dtSmall, text.utf8.count, ids.count, dt,
                     Double(text.utf8.count) / dt / 1e6))
        XCTAssertLessThan(dtSmall, 1, "encoding 100 KB must take well under a second")
        XCTAssertLessThan(dt, 30, "encoding 5 MB must take seconds, not minutes")
        let ref = try spmFixture().shakespeare
        XCTAssertEqual(text.utf8.count, ref.bytes, "the corpus is not the one the fixture was made from")
        XCTAssertEqual(ids.count, ref.tokens)
        XCTAssertEqual(Array(ids.prefix(16)), ref.first_ids)
        XCTAssertEqual(Array(ids.suffix(16)), ref.last_ids)
        var digest = SHA256()
        digest.update(Data(ids.map(String.init).joined(separator: " ").utf8))
        XCTAssertEqual(digest.finalizeHex(), ref.ids_sha256, "some of the \(ids.count) ids differ from llama.cpp's")
        XCTAssertEqual(tok.decode(smallIDs), small)
        XCTAssertEqual(tok.decode(ids), text)
    }
}
