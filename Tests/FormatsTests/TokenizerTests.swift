// The tokenizer against llama.cpp's test vectors (ggml-vocab-*.gguf.inp/.out: byte-level BPE and
// SentencePiece vocabularies) and against Hugging Face's tokenizer for the SmolLM2 model Offload
// runs. SentencePiece specifics: TokenizerTests+SentencePiece.swift.

import Foundation
import XCTest
import Formats
import Tensors

final class TokenizerTests: XCTestCase {
    static var cache: String {
        AssetCache.directory
    }

    /// Vocabularies whose llama.cpp test vectors must pass exactly.
    static let supportedVocabs = ["command-r", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "llama-bpe",
                                  "mpt", "qwen2", "qwen35", "refact", "starcoder", "llama-spm", "phi-3"]
    /// Vocabularies that must be refused at load, with the word the error must contain.
    static let refusedVocabs = ["bert-bge": "'bert' (WordPiece)", "nomic-bert-moe": "'t5' (Unigram)", "gemma-4": "'gemma4'"]

    func asset(_ rel: String) throws -> String {
        let path = "\(Self.cache)/\(rel)"
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("missing \(path): run scripts/fetch-assets.sh")
            throw OffloadError("missing asset \(path)")
        }
        return path
    }

    /// Splits .inp/.out as llama.cpp's test-tokenizer-0 does: inputs separated by
    /// "\n__ggml_vocab_test__\n" (bytes, no trailing empty case), one line of ids per input.
    func readVectors(_ vocab: String) throws -> [(text: [UInt8], ids: [Int])] {
        let inp = try [UInt8](Data(contentsOf: URL(fileURLWithPath: asset("vocab/ggml-vocab-\(vocab).gguf.inp"))))
        let out = try String(contentsOfFile: asset("vocab/ggml-vocab-\(vocab).gguf.out"), encoding: .utf8)
        let sep = Array("\n__ggml_vocab_test__\n".utf8)
        var inputs: [[UInt8]] = []
        var pos = 0
        while pos < inp.count {
            var next = pos
            while next + sep.count <= inp.count && !inp[next..<next + sep.count].elementsEqual(sep) { next += 1 }
            if next + sep.count > inp.count { inputs.append(Array(inp[pos...])); break }
            inputs.append(Array(inp[pos..<next]))
            pos = next + sep.count
        }
        var lines = out.components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        XCTAssertEqual(inputs.count, lines.count, "\(vocab): .inp and .out have different numbers of cases")
        return zip(inputs, lines).map { inp, line in
            (inp, line.split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) })
        }
    }

    func testLlamaCppVectors() throws {
        for vocab in Self.supportedVocabs {
            let tok = try Tokenizer(gguf: GGUFFile(path: asset("vocab/ggml-vocab-\(vocab).gguf")))
            let cases = try readVectors(vocab)
            XCTAssertGreaterThan(cases.count, 40, vocab)
            var failed = 0
            for c in cases {
                guard let text = String(validating: c.text, as: UTF8.self) else {
                    XCTFail("\(vocab): case is not valid UTF-8: \(c.text)"); continue
                }
                // test-tokenizer-0: common_tokenize(ctx, text, add_special = false, parse_special = false)
                let got = tok.encode(text, addBOS: false, parseSpecial: false)
                if got != c.ids {
                    failed += 1
                    XCTFail("\(vocab): \(String(reflecting: text))\n  expected \(c.ids)\n  got      \(got)")
                }
                XCTAssertEqual(tok.decode(got), text, "\(vocab): decode(encode(x)) != x")
            }
            print("[tokenizer] \(vocab): \(cases.count - failed)/\(cases.count) llama.cpp cases pass")
        }
    }

    func testRefusesOtherVocabularies() throws {
        for (vocab, word) in Self.refusedVocabs {
            let file = try GGUFFile(path: asset("vocab/ggml-vocab-\(vocab).gguf"))
            XCTAssertThrowsError(try Tokenizer(gguf: file), vocab) { error in
                let msg = "\(error)"
                XCTAssertTrue(msg.hasPrefix("[tokenizer] ggml-vocab-\(vocab).gguf: tokenizer model "), msg)
                XCTAssertTrue(msg.contains(word), msg)
                XCTAssertTrue(msg.contains("supported: gpt2 (byte-level BPE), llama (SentencePiece)"), msg)
            }
        }
    }

    /// Files without `tokenizer.ggml.pre` use llama.cpp's "default" pre-tokenizer; no vectors exist, so check
    /// what must hold for any byte-level BPE: lossless round trip and three-digit grouping.
    func testDefaultPreTokenizer() throws {
        let tok = try Tokenizer(gguf: GGUFFile(path: asset("vocab/ggml-vocab-gpt-neox.gguf")))
        XCTAssertEqual(tok.preName, "default")
        let s = "Hello, world! 12345 naïve 🦙\n\n  x"
        XCTAssertEqual(tok.decode(tok.encode(s)), s)
        // "12345" → "123" "45" (\p{N}+ then [0-9]{3} isolated), never one "12345" token.
        let digits = tok.encode("12345").map { tok.decode([$0]) }
        XCTAssertEqual(digits.joined(), "12345")
        XCTAssertEqual(digits.first.map { $0.count <= 3 }, true, "\(digits)")
    }

    // Expected ids produced with Hugging Face transformers from the same GGUF file:
    //   python3 -c 'from transformers import AutoTokenizer; import os
    //   t = AutoTokenizer.from_pretrained(os.path.expanduser("~/.cache/offload/models"),
    //                                     gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    //   print(t.encode(TEXT, add_special_tokens=False))'
    static let smolCases: [(String, [Int])] = [
        ("Hello world", [19556, 905]),
        ("In 2024, the price rose 12345 units.", [788, 216, 34, 32, 34, 36, 28, 260, 4319, 8739, 216, 33, 34, 35, 36, 37, 4784, 30]),
        ("  two  spaces   three\n\nnewlines\n  indented\tTab", [216, 827, 216, 5600, 256, 1296, 198, 198, 2241, 5110, 3805, 641, 6574, 197, 30064]),
        ("I'm sure they'll say it's John's, we've I'd", [57, 5248, 2090, 502, 3060, 1643, 357, 506, 2322, 506, 28, 392, 3543, 339, 6737]),
        ("naïve café — Ελληνικά 日本語 Привет", [3546, 46494, 37366, 1841, 5664, 239, 17162, 17162, 25723, 11517, 12001, 21118, 26112, 17097, 241, 115, 40993, 179, 120, 248, 5470, 249, 46879, 16464, 32547]),
        ("emoji 🦙🚀 ok 👍🏽", [391, 33777, 15107, 116, 243, 10813, 244, 218, 10907, 15107, 235, 231, 10813, 233, 138]),
        ("<|im_start|>user\nHi!<|im_end|>\n", [1, 4093, 198, 26843, 17, 2, 198]),
    ]

    // Whitespace before a digit is where transformers' GGUF loader and SmolLM2 disagree: the loader
    // builds a plain ByteLevel pre-tokenizer, while SmolLM2's tokenizer.json (and llama.cpp's "smollm")
    // isolates each digit first. These ids come from the loaded tokenizer with SmolLM2's own
    // pre-tokenizer put back:
    //   t.backend_tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
    //       Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)])
    // With it, all 1,564,609 tokens of the Shakespeare corpus agree with this tokenizer.
    static let smolDigitCases: [(String, [Int])] = [
        ("\n\n     1. What", [28577, 33, 30, 1812]),  // plain ByteLevel gives [8866, 216, 33, 30, 1812]
        ("ZZ\n\n4", [46276, 1116, 36]),               // plain ByteLevel gives [46276, 198, 198, 36]
        ("x  2", [104, 256, 34]),
    ]

    func smolLM() throws -> Tokenizer {
        try Tokenizer(gguf: GGUFFile(path: asset("models/SmolLM2-135M-Instruct.Q4_1.gguf")))
    }

    func testSmolLM2MatchesHuggingFace() throws {
        let tok = try smolLM()
        XCTAssertEqual(tok.preName, "smollm")
        XCTAssertEqual(tok.vocabSize, 49152)
        XCTAssertEqual(tok.bosID, 1)
        XCTAssertEqual(tok.eosID, 2)
        XCTAssertFalse(tok.addsBOSByDefault)
        XCTAssertTrue(tok.endOfGenerationIDs.contains(2))
        for (text, ids) in Self.smolCases {
            XCTAssertEqual(tok.encode(text), ids, String(reflecting: text))
            XCTAssertEqual(tok.decode(ids), text)
        }
        for (text, ids) in Self.smolDigitCases {
            XCTAssertEqual(tok.encode(text), ids, String(reflecting: text))
        }
        XCTAssertEqual(tok.encode("Hi", addBOS: true), [1] + tok.encode("Hi"))
        // Without parseSpecial the control-token text is ordinary text.
        XCTAssertFalse(tok.encode("<|im_end|>", parseSpecial: false).contains(2))
        XCTAssertEqual(tok.decode(tok.encode("<|im_end|>", parseSpecial: false)), "<|im_end|>")
        XCTAssertEqual(tok.decode([1, 4093, 2], skipSpecial: true), "user")
    }

    func testStreamingDecoderHoldsSplitCharacters() throws {
        let tok = try smolLM()
        // "🦙" is 4 UTF-8 bytes and comes out as two byte-level tokens here; "日本語" splits inside characters too.
        let text = "emoji 🦙🚀 ok 日本語 Привет"
        let ids = tok.encode(text)
        var splitInside = 0
        var stream = StreamingDecoder(tokenizer: tok)
        var pieces: [String] = []
        for id in ids {
            if String(validating: tok.piece(for: id), as: UTF8.self) == nil { splitInside += 1 }
            let s = stream.append(id)
            XCTAssertFalse(s.contains("\u{FFFD}"), "emitted a broken character after token \(id)")
            pieces.append(s)
        }
        pieces.append(stream.flush())
        XCTAssertGreaterThan(splitInside, 2, "test text no longer splits characters across tokens")
        XCTAssertEqual(pieces.joined(), text)
        // A sequence cut off for good is flushed as U+FFFD rather than lost silently.
        var s2 = StreamingDecoder(tokenizer: tok)
        let partial = ids.first { String(validating: tok.piece(for: $0), as: UTF8.self) == nil }!
        _ = s2.append(partial)
        XCTAssertEqual(s2.flush().unicodeScalars.last, "\u{FFFD}")
    }

    /// A tiny vocabulary written on the spot, to pin merge order and byte fallback.
    func tinyVocab(tokens: [String], merges: [String], pre: String = "gpt-2") throws -> Tokenizer {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("tokenizer.ggml.model", .string("gpt2"))
        w.set("tokenizer.ggml.pre", .string(pre))
        w.set("tokenizer.ggml.tokens", .array(tokens.map { .string($0) }, .string))
        w.set("tokenizer.ggml.merges", .array(merges.map { .string($0) }, .string))
        let path = NSTemporaryDirectory() + "tokenizer-tiny-\(getpid())-\(UUID().uuidString).gguf"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try w.write(to: path)
        return try Tokenizer(gguf: GGUFFile(path: path))
    }

    func testMergesApplyByRankAndFallBackToBytes() throws {
        // Lowest rank first: "b c" (rank 0) wins over "a b" (rank 1) in "abc".
        let t1 = try tinyVocab(tokens: ["a", "b", "c", "bc", "ab"], merges: ["b c", "a b"])
        XCTAssertEqual(t1.encode("abc"), [0, 3])
        XCTAssertEqual(t1.encode("ab"), [4])
        // Equal candidates: the leftmost merges first ("a a" in "aaa" gives "aa" + "a").
        let t2 = try tinyVocab(tokens: ["a", "aa"], merges: ["a a"])
        XCTAssertEqual(t2.encode("aaa"), [1, 0])
        // A merge result that is not a token ("ab") still merges on ("ab c" → "abc");
        // where it stays alone it falls back to one token per byte.
        let t3 = try tinyVocab(tokens: ["a", "b", "c", "abc"], merges: ["a b", "ab c"])
        XCTAssertEqual(t3.encode("abc"), [3])
        XCTAssertEqual(t3.encode("ab"), [0, 1])
        // "Ġ" is how byte-level vocabularies write a space.
        let t4 = try tinyVocab(tokens: ["a", "Ġ", "Ġa"], merges: ["Ġ a"])
        XCTAssertEqual(t4.encode(" a a"), [2, 2])
        XCTAssertEqual(t4.decode([2, 0]), " aa")
    }

    func testUnsupportedPreIsAClearError() throws {
        // A tiny vocabulary that names an unknown pre-tokenizer.
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("tokenizer.ggml.model", .string("gpt2"))
        w.set("tokenizer.ggml.pre", .string("no-such-pre"))
        w.set("tokenizer.ggml.tokens", .array([.string("a"), .string("b")], .string))
        w.set("tokenizer.ggml.merges", .array([.string("a b")], .string))
        let path = NSTemporaryDirectory() + "tokenizer-bad-pre-\(getpid()).gguf"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try w.write(to: path)
        XCTAssertThrowsError(try Tokenizer(gguf: GGUFFile(path: path))) { error in
            let msg = "\(error)"
            XCTAssertTrue(msg.hasPrefix("[tokenizer] tokenizer-bad-pre-"), msg)
            XCTAssertTrue(msg.contains("pre-tokenizer 'no-such-pre' is not supported; supported: gpt-2"), msg)
            XCTAssertTrue(msg.contains("smollm"), msg)
        }
    }

    func testEncodeSpeedOnShakespeare() throws {
        let tok = try smolLM()
        let dir = try asset("shakespeare")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".txt") }.sorted()
        XCTAssertFalse(files.isEmpty, "no shakespeare/*.txt: run scripts/fetch-assets.sh")
        var text = ""
        for f in files { text += try String(contentsOfFile: "\(dir)/\(f)", encoding: .utf8) }
        let t0 = Date()
        let ids = tok.encode(text)
        let dt = Date().timeIntervalSince(t0)
        print(String(format: "[tokenizer] shakespeare: %d bytes -> %d tokens in %.2f s (%.1f MB/s)",
                     text.utf8.count, ids.count, dt, Double(text.utf8.count) / dt / 1e6))
        XCTAssertLessThan(dt, 20, "encoding 5 MB must take seconds, not minutes")
        XCTAssertGreaterThan(ids.count, text.utf8.count / 6)
        XCTAssertEqual(tok.decode(ids), text)
    }
}
