// Byte-level BPE tokenizer (`tokenizer.ggml.model` = "gpt2") built from GGUF metadata,
// matching llama.cpp's tokenize/detokenize token for token. Not SentencePiece,
// WordPiece or Unigram: those vocabularies are refused at load with a clear error.

import Foundation
import Tensors

/// Encodes text to token ids and back, for byte-level BPE vocabularies.
///
/// Immutable after `init`, so one instance can be shared between threads.
/// - Note: Encoding follows llama.cpp's `llama_tokenize`: special tokens are cut out of
///   the text first (longest first), then each remaining fragment is pre-tokenized into
///   words by the vocabulary's `tokenizer.ggml.pre` rules, and each word is merged by rank.
public final class Tokenizer: Sendable {
    /// llama.cpp's token attributes, from `tokenizer.ggml.token_type`.
    public enum TokenType: Int, Sendable {
        case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    public let vocabSize: Int
    /// `tokenizer.ggml.bos_token_id`, nil when the file names none.
    public let bosID: Int?
    /// `tokenizer.ggml.eos_token_id`, nil when the file names none.
    public let eosID: Int?
    /// Tokens that end generation: EOS plus end-of-turn tokens found by their text (`<|im_end|>`, `<|eot_id|>`…).
    public let endOfGenerationIDs: Set<Int>
    /// Whether `encode` adds BOS when not told: `tokenizer.ggml.add_bos_token`, else llama.cpp's default for the `pre` type.
    public let addsBOSByDefault: Bool
    /// The `tokenizer.ggml.pre` value in use ("default" when the file has none).
    public let preName: String
    public let types: [TokenType]

    private let tokens: [String]
    private let pieces: [[UInt8]]               // bytes each token decodes to
    private let bpe: ByteLevelBPE               // merges and pre-tokenizer of the text between special tokens
    private let specials: [(bytes: [UInt8], id: Int)]  // control, user-defined, unknown; longest first

    /// Builds the tokenizer of a GGUF file's `tokenizer.ggml.*` metadata.
    /// - Throws: `OffloadError` naming the file when the vocabulary is not byte-level BPE,
    ///   its `pre` type is unknown to Offload, or the metadata is missing or malformed.
    public init(gguf: GGUFFile) throws {
        let file = gguf.fileName
        func fail(_ msg: String) -> OffloadError { OffloadError("[tokenizer] \(file): \(msg)") }

        guard let model = gguf.string("tokenizer.ggml.model") else {
            throw fail("no tokenizer.ggml.model in metadata; the file carries no vocabulary")
        }
        guard model == "gpt2" else {
            let kinds = ["llama": "SentencePiece", "bert": "WordPiece", "t5": "Unigram", "rwkv": "RWKV",
                         "gemma4": "SentencePiece-style BPE", "no_vocab": "no vocabulary", "none": "no vocabulary"]
            let kind = kinds[model].map { " (\($0))" } ?? ""
            throw fail("tokenizer model '\(model)'\(kind) is not supported; supported: gpt2 (byte-level BPE)")
        }
        guard let tokens = gguf.strings("tokenizer.ggml.tokens"), !tokens.isEmpty else {
            throw fail("tokenizer.ggml.tokens is missing or not an array of strings")
        }
        let n = tokens.count
        var types = [TokenType](repeating: .normal, count: n)
        if gguf.metadata["tokenizer.ggml.token_type"] != nil {
            guard let raw = gguf.ints("tokenizer.ggml.token_type"), raw.count >= n else {
                throw fail("tokenizer.ggml.token_type has fewer entries than the \(n) tokens")
            }
            for i in 0..<n { types[i] = TokenType(rawValue: raw[i]) ?? .undefined }
        }
        func specialID(_ key: String) throws -> Int? {
            guard let v = gguf.metadata[key] else { return nil }
            guard let id = v.int, id >= 0, id < n else { throw fail("\(key) = \(v) is not a token id below \(n)") }
            return id
        }
        let bos = try specialID("tokenizer.ggml.bos_token_id")
        let eos = try specialID("tokenizer.ggml.eos_token_id")

        // End-of-turn tokens llama.cpp recognises by text; it makes them control tokens if they are not.
        let endTexts: Set<String> = ["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                     "<|end_of_text|>", "<EOT>", "_<EOT>", "<|eom_id|>", "<end_of_utterance>",
                                     "<｜end▁of▁sentence｜>"]
        var eog = Set<Int>()
        if let eos { eog.insert(eos) }
        for (i, t) in tokens.enumerated() where endTexts.contains(t) {
            eog.insert(i)
            if types[i] != .control { types[i] = .control }
        }

        let loaded = try ByteLevelBPE.load(gguf: gguf, tokens: tokens, types: types, fail: fail)

        // Special tokens cut out of text before pre-tokenizing, longest first (ties: lower id).
        var specials: [(bytes: [UInt8], id: Int)] = []
        for i in 0..<n where [.control, .userDefined, .unknown].contains(types[i]) && !tokens[i].isEmpty {
            specials.append((Array(tokens[i].utf8), i))
        }
        specials.sort { $0.bytes.count != $1.bytes.count ? $0.bytes.count > $1.bytes.count : $0.id < $1.id }

        self.vocabSize = n
        self.bosID = bos
        self.eosID = eos
        self.endOfGenerationIDs = eog
        self.addsBOSByDefault = gguf.bool("tokenizer.ggml.add_bos_token") ?? loaded.addsBOS
        self.preName = loaded.preName
        self.types = types
        self.tokens = tokens
        self.pieces = loaded.pieces
        self.bpe = loaded.bpe
        self.specials = specials
    }

    /// Convenience: open a GGUF file and build its tokenizer.
    public convenience init(path: String) throws {
        try self.init(gguf: GGUFFile(path: path))
    }

    /// The vocabulary string of a token as stored in the file (byte-level characters for normal tokens).
    public func tokenText(_ id: Int) -> String? { id >= 0 && id < vocabSize ? tokens[id] : nil }

    // MARK: encode

    /// Token ids of `text`.
    /// - Parameters:
    ///   - addBOS: prepend `bosID`; nil uses `addsBOSByDefault`. Nothing is added when the file has no BOS.
    ///   - parseSpecial: match control tokens (`<|im_start|>`…) written in the text as single tokens.
    ///     User-defined tokens are always matched, as in llama.cpp and Hugging Face.
    ///     llama.cpp's tokenizer tests use `false`; chat prompts need `true`.
    public func encode(_ text: String, addBOS: Bool? = nil, parseSpecial: Bool = true) -> [Int] {
        var out: [Int] = []
        if addBOS ?? addsBOSByDefault, let bosID { out.append(bosID) }
        let bytes = Array(text.utf8)
        if bytes.isEmpty { return out }
        out.reserveCapacity(bytes.count / 3)
        bytes.withUnsafeBufferPointer { buf in
            var cache: [WordKey: [Int32]] = [:]
            for fragment in partition(buf, parseSpecial: parseSpecial) {
                switch fragment {
                case .token(let id): out.append(id)
                case .text(let r): bpe.encodeFragment(buf, r, &cache, &out)
                }
            }
        }
        return out
    }

    private enum Fragment { case text(Range<Int>), token(Int) }

    /// Cuts special tokens out of the text the way llama.cpp's `tokenizer_st_partition` does:
    /// for each special token, longest first, every occurrence in the remaining text fragments.
    private func partition(_ text: UnsafeBufferPointer<UInt8>, parseSpecial: Bool) -> [Fragment] {
        var fragments: [Fragment] = [.text(0..<text.count)]
        // A special token can only cut text it occurs in; find those in one pass first.
        var firstBytes = [Bool](repeating: false, count: 256)
        var candidates: [Int] = []
        for (k, s) in specials.enumerated() where parseSpecial || types[s.id] == .userDefined {
            firstBytes[Int(s.bytes[0])] = true
            candidates.append(k)
        }
        if candidates.isEmpty { return fragments }
        var byFirst = [[Int]](repeating: [], count: 256)
        for k in candidates { byFirst[Int(specials[k].bytes[0])].append(k) }
        var occurs = [Bool](repeating: false, count: specials.count)
        var remaining = candidates.count
        for i in 0..<text.count where firstBytes[Int(text[i])] {
            for k in byFirst[Int(text[i])] where !occurs[k] && Self.matches(text, at: i, end: text.count, specials[k].bytes) {
                occurs[k] = true
                remaining -= 1
            }
            if remaining == 0 { break }
        }
        for k in candidates where occurs[k] {
            let needle = specials[k].bytes
            var next: [Fragment] = []
            next.reserveCapacity(fragments.count + 2)
            for f in fragments {
                guard case .text(let r) = f else { next.append(f); continue }
                var start = r.lowerBound, i = r.lowerBound
                while i + needle.count <= r.upperBound {
                    if text[i] == needle[0] && Self.matches(text, at: i, end: r.upperBound, needle) {
                        if i > start { next.append(.text(start..<i)) }
                        next.append(.token(specials[k].id))
                        i += needle.count
                        start = i
                    } else {
                        i += 1
                    }
                }
                if r.upperBound > start { next.append(.text(start..<r.upperBound)) }
            }
            fragments = next
        }
        return fragments
    }

    @inline(__always)
    private static func matches(_ text: UnsafeBufferPointer<UInt8>, at i: Int, end: Int, _ needle: [UInt8]) -> Bool {
        if i + needle.count > end { return false }
        for j in 0..<needle.count where text[i + j] != needle[j] { return false }
        return true
    }

    // MARK: decode

    /// The bytes token `id` stands for; control and unknown tokens give their text unless `skipSpecial`.
    /// - Note: A token can end inside a UTF-8 sequence; use `StreamingDecoder` to print as tokens arrive.
    public func piece(for id: Int, skipSpecial: Bool = false) -> [UInt8] {
        guard id >= 0 && id < vocabSize else { return [] }
        if skipSpecial && (types[id] == .control || types[id] == .unknown) { return [] }
        return pieces[id]
    }

    /// Concatenated bytes of `ids` (see `piece(for:)`).
    public func decodeBytes(_ ids: [Int], skipSpecial: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        for id in ids { out.append(contentsOf: piece(for: id, skipSpecial: skipSpecial)) }
        return out
    }

    /// Text of `ids`. Invalid UTF-8 (a sequence cut off by the end of `ids`) becomes U+FFFD.
    /// - Note: No clean-up of spaces is done: `decode(encode(s, parseSpecial: false)) == s` for any `s`.
    public func decode(_ ids: [Int], skipSpecial: Bool = false) -> String {
        String(decoding: decodeBytes(ids, skipSpecial: skipSpecial), as: UTF8.self)
    }

    /// Byte value of a `<0xXX>` token.
    static func byteTokenValue(_ t: String) -> UInt8? {
        let u = Array(t.utf8)
        guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E else { return nil }
        return UInt8(String(decoding: u[3...4], as: UTF8.self), radix: 16)
    }
}

/// Turns a stream of tokens into text without splitting a UTF-8 character across
/// two outputs: bytes of an unfinished character wait for the next token.
public struct StreamingDecoder {
    private let tokenizer: Tokenizer
    private let skipSpecial: Bool
    private var pending: [UInt8] = []

    public init(tokenizer: Tokenizer, skipSpecial: Bool = false) {
        self.tokenizer = tokenizer
        self.skipSpecial = skipSpecial
    }

    /// Text completed by token `id` (possibly empty).
    public mutating func append(_ id: Int) -> String {
        pending.append(contentsOf: tokenizer.piece(for: id, skipSpecial: skipSpecial))
        let keep = Self.incompleteSuffixLength(pending)
        let ready = pending[..<(pending.count - keep)]
        let text = String(decoding: ready, as: UTF8.self)
        pending.removeFirst(pending.count - keep)
        return text
    }

    /// Whatever is still buffered (an unfinished character becomes U+FFFD).
    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Length of a trailing UTF-8 sequence that is started but not finished (0...3).
    static func incompleteSuffixLength(_ b: [UInt8]) -> Int {
        // Look back at most 3 bytes for the lead byte of the last sequence.
        var k = 1
        while k <= min(3, b.count) {
            let x = b[b.count - k]
            if x & 0xC0 == 0x80 { k += 1; continue }      // continuation byte: keep looking
            let need = x >= 0xF0 ? 4 : x >= 0xE0 ? 3 : x >= 0xC0 ? 2 : 1
            return need > k ? k : 0
        }
        return 0  // only continuation bytes (invalid): emit them as they are
    }
}
