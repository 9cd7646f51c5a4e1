// Tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata, matching llama.cpp's
// tokenize/detokenize token for token, for byte-level BPE (`tokenizer.ggml.model` = "gpt2",
// Tokenizer+BPE.swift) and SentencePiece (`llama`, Tokenizer+SPM.swift) vocabularies, or from a
// Hugging Face tokenizer.json mapped onto the same two algorithms (Tokenizer+HFJSON.swift). This
// file holds what all share: special tokens cut out of the text first, BOS, end-of-generation
// tokens, decoding. WordPiece, Unigram and other models are refused at load with a clear error.

import Foundation
import Tensors

/// Encodes text to token ids and back, for byte-level BPE and SentencePiece vocabularies.
///
/// Immutable after `init`, so one instance can be shared between threads.
/// - Note: Encoding follows llama.cpp's `llama_tokenize`: special tokens are cut out of
///   the text first (longest first), then each remaining fragment is encoded by the
///   vocabulary's algorithm: byte-level BPE pre-tokenizes it into words by the
///   `tokenizer.ggml.pre` rules and merges each word by rank; SentencePiece writes spaces as
///   "▁" (and one in front of a fragment at the start or after a special token, when
///   `add_space_prefix`), merges highest score first, and falls back to `<0xXX>` byte tokens.
///   A tokenizer.json follows Hugging Face instead (`init(huggingFaceJSON:)`): added tokens are
///   found leftmost-longest, SentencePiece-style merges go by rank, and "▁" goes where its
///   normalizer or Metaspace pre-tokenizer puts it.
public final class Tokenizer: Sendable {
    /// llama.cpp's token attributes, from `tokenizer.ggml.token_type`.
    public enum TokenType: Int, Sendable {
        case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    public let vocabSize: Int
    /// `tokenizer.ggml.bos_token_id`, nil when the file names none (SentencePiece: 1 by default, as in llama.cpp).
    /// For a tokenizer.json: the token its post-processor puts before the text, else tokenizer_config.json's `bos_token`.
    public let bosID: Int?
    /// `tokenizer.ggml.eos_token_id`, nil when the file names none (SentencePiece: 2 by default, as in llama.cpp).
    /// For a tokenizer.json: tokenizer_config.json's `eos_token`.
    public let eosID: Int?
    /// Tokens that end generation: EOS plus end-of-turn tokens found by their text (`<|im_end|>`, `<|eot_id|>`…).
    public let endOfGenerationIDs: Set<Int>
    /// Whether `encode` adds BOS when not told: `tokenizer.ggml.add_bos_token`, else llama.cpp's
    /// default (true for SentencePiece; for byte-level BPE, the `pre` type's). For a tokenizer.json:
    /// whether its post-processor puts a token before the text.
    public let addsBOSByDefault: Bool
    /// The `tokenizer.ggml.pre` value in use ("default" when the file has none). For a tokenizer.json,
    /// its rules in the same terms: the steps joined by "+" ("llama3", "digits+gpt-2"), or how a
    /// SentencePiece-style one writes "▁" ("metaspace-first", "prepend-normalizer").
    public let preName: String
    public let types: [TokenType]

    private let tokens: [String]
    private let pieces: [[UInt8]]            // bytes each token decodes to (llama.cpp's token_to_piece)
    private let encoder: FragmentEncoder
    private let specials: [SpecialToken]     // control, user-defined, unknown; longest first
    private let removesLeadingSpace: Bool    // llama.cpp's add_space_prefix, undone by decode
    private let spacePrefix: SpacePrefixRule
    private let specialMatching: SpecialMatching
    private let normalizesNFC: Bool

    /// How text between special tokens becomes tokens.
    enum FragmentEncoder: Sendable {
        case byteLevelBPE(ByteLevelBPE)
        case sentencePiece(SentencePiece)
    }

    /// A token cut out of the text before encoding.
    struct SpecialToken: Sendable {
        let bytes: [UInt8]
        let id: Int
        /// Whitespace after it is dropped (llama.cpp's RSTRIP attribute, Hugging Face's `rstrip`).
        let rstrip: Bool
        /// Whitespace before it is dropped (Hugging Face's `lstrip`; only `SpecialMatching.leftmostLongest`
        /// reads it, as GGUF vocabularies have no such attribute).
        var lstrip = false
    }

    /// Which text fragments a SentencePiece vocabulary encodes with a space ("▁") in front.
    enum SpacePrefixRule: Sendable, Equatable {
        /// None (`add_space_prefix` false, Metaspace `prepend_scheme: never`).
        case never
        /// The fragment at the start of the text and each one after a special token: llama.cpp,
        /// and Hugging Face's normalizer `Prepend("▁")`, which runs on each fragment.
        case everyFragment
        /// Hugging Face's Metaspace pre-tokenizer: every fragment (`always`) or only the one at
        /// the start of the text (`first`), and never one that already begins with a space or "▁".
        case metaspace(firstOnly: Bool)
    }

    /// How special tokens written in the text are found.
    enum SpecialMatching: Sendable {
        /// llama.cpp's `tokenizer_st_partition`: each special token in turn, longest first,
        /// cuts every occurrence out of what is left.
        case longestFirst
        /// Hugging Face's added-token matcher: one pass from the left, the longest token
        /// starting at each position.
        case leftmostLongest
    }

    /// Everything a tokenizer is made of, as a file's reader assembles it.
    struct Parts {
        var bosID: Int?
        var eosID: Int?
        var endOfGenerationIDs: Set<Int>
        var addsBOSByDefault: Bool
        var preName: String
        var types: [TokenType]
        var tokens: [String]
        var pieces: [[UInt8]]
        var encoder: FragmentEncoder
        var specials: [SpecialToken]
        var removesLeadingSpace: Bool
        var spacePrefix: SpacePrefixRule
        var specialMatching: SpecialMatching
        var normalizesNFC = false
    }

    init(parts p: Parts) {
        self.vocabSize = p.tokens.count
        self.bosID = p.bosID
        self.eosID = p.eosID
        self.endOfGenerationIDs = p.endOfGenerationIDs
        self.addsBOSByDefault = p.addsBOSByDefault
        self.preName = p.preName
        self.types = p.types
        self.tokens = p.tokens
        self.pieces = p.pieces
        self.encoder = p.encoder
        self.specials = p.specials.sorted {
            $0.bytes.count != $1.bytes.count ? $0.bytes.count > $1.bytes.count : $0.id < $1.id
        }
        self.removesLeadingSpace = p.removesLeadingSpace
        self.spacePrefix = p.spacePrefix
        self.specialMatching = p.specialMatching
        self.normalizesNFC = p.normalizesNFC
    }

    /// Builds the tokenizer of a GGUF file's `tokenizer.ggml.*` metadata.
    /// - Throws: `OffloadError` naming the file when the vocabulary is neither byte-level BPE
    ///   nor SentencePiece, its `pre` type is unknown to Offload, or the metadata is missing or
    ///   malformed (naming the key).
    public convenience init(gguf: GGUFFile) throws {
        let file = gguf.fileName
        func fail(_ msg: String) -> OffloadError { OffloadError("[tokenizer] \(file): \(msg)") }

        guard let model = gguf.string("tokenizer.ggml.model") else {
            throw fail("no tokenizer.ggml.model in metadata; the file carries no vocabulary")
        }
        guard model == "gpt2" || model == "llama" else {
            let kinds = ["bert": "WordPiece", "t5": "Unigram", "rwkv": "RWKV",
                         "gemma4": "SentencePiece-style BPE", "no_vocab": "no vocabulary", "none": "no vocabulary"]
            let kind = kinds[model].map { " (\($0))" } ?? ""
            throw fail("tokenizer model '\(model)'\(kind) is not supported; supported: gpt2 (byte-level BPE), llama (SentencePiece)")
        }
        let isSentencePiece = model == "llama"
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
        /// The id under `key`; when absent, llama.cpp's default for the model if it is a token.
        func specialID(_ key: String, default fallback: Int?) throws -> Int? {
            guard let v = gguf.metadata[key] else { return fallback.flatMap { $0 < n ? $0 : nil } }
            guard let id = v.int, id >= 0, id < n else { throw fail("\(key) = \(v) is not a token id below \(n)") }
            return id
        }
        let bos = try specialID("tokenizer.ggml.bos_token_id", default: isSentencePiece ? 1 : nil)
        let eos = try specialID("tokenizer.ggml.eos_token_id", default: isSentencePiece ? 2 : nil)

        // End-of-generation tokens llama.cpp recognises by text; it makes them control tokens if they
        // are not (so Phi-3's user-defined </s> is no longer cut out of text unless parseSpecial).
        let eog = Self.endOfGeneration(tokens: tokens, eos: eos) { i, type in types[i] = type }

        let encoder: FragmentEncoder, pieces: [[UInt8]], preName: String, addsBOS: Bool, removesLeadingSpace: Bool
        if isSentencePiece {
            let unknown = try specialID("tokenizer.ggml.unknown_token_id", default: 0)
            let loaded = try SentencePiece.load(gguf: gguf, tokens: tokens, types: types, unknownID: unknown, fail: fail)
            (encoder, pieces) = (.sentencePiece(loaded.spm), loaded.pieces)
            preName = gguf.string("tokenizer.ggml.pre") ?? "default"  // llama.cpp ignores it for SentencePiece
            addsBOS = true
            removesLeadingSpace = loaded.spm.addSpacePrefix
        } else {
            let loaded = try ByteLevelBPE.load(gguf: gguf, tokens: tokens, types: types, fail: fail)
            (encoder, pieces) = (.byteLevelBPE(loaded.bpe), loaded.pieces)
            (preName, addsBOS) = (loaded.preName, loaded.addsBOS)
            removesLeadingSpace = false
        }

        // Special tokens cut out of text before encoding. llama.cpp drops whitespace after Phi-3's
        // special tokens (by general.name), but not after <unk>, <s> and <|endoftext|>.
        let name = (gguf.string("general.name") ?? "").lowercased()
        let phi3 = name.contains("phi-3") || name.contains("phi3")
        var specials: [SpecialToken] = []
        for i in 0..<n where [.control, .userDefined, .unknown].contains(types[i]) && !tokens[i].isEmpty {
            let rstrip = phi3 && !["<unk>", "<s>", "<|endoftext|>"].contains(tokens[i])
            specials.append(SpecialToken(bytes: Array(tokens[i].utf8), id: i, rstrip: rstrip))
        }

        self.init(parts: Parts(
            bosID: bos, eosID: eos, endOfGenerationIDs: eog,
            addsBOSByDefault: gguf.bool("tokenizer.ggml.add_bos_token") ?? addsBOS,
            preName: preName, types: types, tokens: tokens, pieces: pieces, encoder: encoder, specials: specials,
            removesLeadingSpace: removesLeadingSpace, spacePrefix: removesLeadingSpace ? .everyFragment : .never,
            specialMatching: .longestFirst))
    }

    /// Tokens that end generation: `eos` and those llama.cpp recognises by their text. `retype` is
    /// called for each that llama.cpp makes a control token or turns back into ordinary text.
    static func endOfGeneration(tokens: [String], eos: Int?, retype: (Int, TokenType) -> Void) -> Set<Int> {
        let endTexts: Set<String> = ["<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
                                     "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
                                     "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
                                     "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~["]
        var eog = Set<Int>()
        if let eos { eog.insert(eos) }
        for (i, t) in tokens.enumerated() where endTexts.contains(t) {
            eog.insert(i)
            retype(i, .control)
        }
        // llama.cpp's exceptions: <|end|> only ends a turn where <|return|>/<|call|> (or <|calls|>/<|flush|>)
        // do not, and </s> is ordinary text where <|tool_response> is the end token.
        let eogTexts = Set(eog.map { tokens[$0] })
        func demote(_ text: String, to type: TokenType) {
            for i in eog where tokens[i] == text { eog.remove(i); retype(i, type) }
        }
        if eogTexts.contains("<|end|>") && !eogTexts.isDisjoint(with: ["<|call|>", "<|calls|>"])
            && !eogTexts.isDisjoint(with: ["<|return|>", "<|flush|>"]) {
            demote("<|end|>", to: .userDefined)
        }
        if eogTexts.contains("</s>") && !eogTexts.isDisjoint(with: ["<|tool_response>", "<|plamo:eos|>"]) {
            demote("</s>", to: .normal)
        }
        return eog
    }

    /// Convenience: open a GGUF file and build its tokenizer.
    public convenience init(path: String) throws {
        try self.init(gguf: GGUFFile(path: path))
    }

    /// The vocabulary string of a token as stored in the file (GPT-2 byte characters, or "▁" for spaces in SentencePiece).
    public func tokenText(_ id: Int) -> String? { id >= 0 && id < vocabSize ? tokens[id] : nil }

    // MARK: encode

    /// Token ids of `text`.
    /// - Parameters:
    ///   - addBOS: prepend `bosID`; nil uses `addsBOSByDefault`. Nothing is added when the file has no BOS.
    ///   - parseSpecial: match control tokens (`<|im_start|>`, `<s>`…) written in the text as single tokens.
    ///     User-defined tokens are always matched, as in llama.cpp and Hugging Face.
    ///     llama.cpp's tokenizer tests use `false`; chat prompts need `true`.
    public func encode(_ text: String, addBOS: Bool? = nil, parseSpecial: Bool = true) -> [Int] {
        var out: [Int] = []
        if addBOS ?? addsBOSByDefault, let bosID { out.append(bosID) }
        let bytes = Array((normalizesNFC ? text.precomposedStringWithCanonicalMapping : text).utf8)
        if bytes.isEmpty { return out }
        out.reserveCapacity(bytes.count / 3)
        bytes.withUnsafeBufferPointer { buf in
            let fragments = specialMatching == .longestFirst
                ? partition(buf, parseSpecial: parseSpecial) : partitionLeftmostLongest(buf, parseSpecial: parseSpecial)
            switch encoder {
            case .byteLevelBPE(let bpe):
                var cache: [WordKey: [Int32]] = [:]
                for fragment in fragments {
                    switch fragment {
                    case .token(let id): out.append(id)
                    case .text(let r): bpe.encodeFragment(buf, r, &cache, &out)
                    }
                }
            case .sentencePiece(let spm):
                var afterSpecial = true
                for fragment in fragments {
                    switch fragment {
                    case .token(let id):
                        out.append(id)
                        afterSpecial = true
                    case .text(let r):
                        spm.encodeFragment(buf, r, spacePrefix: spacePrefix(buf, r, afterSpecial: afterSpecial), &out)
                        afterSpecial = false
                    }
                }
            }
        }
        return out
    }

    /// Whether the SentencePiece fragment `text[r]` gets a "▁" in front (see `SpacePrefixRule`).
    private func spacePrefix(_ text: UnsafeBufferPointer<UInt8>, _ r: Range<Int>, afterSpecial: Bool) -> Bool {
        switch spacePrefix {
        case .never: return false
        case .everyFragment: return afterSpecial
        case .metaspace(let firstOnly):
            if firstOnly && r.lowerBound != 0 { return false }
            let startsWithSpace = text[r.lowerBound] == 0x20
                || (r.count >= 3 && text[r.lowerBound] == 0xE2 && text[r.lowerBound + 1] == 0x96 && text[r.lowerBound + 2] == 0x81)
            return !startsWithSpace
        }
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
            let special = specials[k]
            let needle = special.bytes
            var next: [Fragment] = []
            next.reserveCapacity(fragments.count + 2)
            for f in fragments {
                guard case .text(let r) = f else { next.append(f); continue }
                var start = r.lowerBound, i = r.lowerBound
                while i + needle.count <= r.upperBound {
                    if text[i] == needle[0] && Self.matches(text, at: i, end: r.upperBound, needle) {
                        if i > start { next.append(.text(start..<i)) }
                        next.append(.token(special.id))
                        i += needle.count
                        if special.rstrip { while i < r.upperBound && Self.isSpace(text[i]) { i += 1 } }
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

    /// Cuts special tokens out of the text the way Hugging Face's added-token matcher does: from
    /// the left, the longest special token that starts at each position; `lstrip`/`rstrip`
    /// tokens take the whitespace before/after them with them.
    private func partitionLeftmostLongest(_ text: UnsafeBufferPointer<UInt8>, parseSpecial: Bool) -> [Fragment] {
        var byFirst = [[Int]](repeating: [], count: 256)   // longest first, as `specials` is sorted
        var any = false
        for (k, s) in specials.enumerated() where parseSpecial || types[s.id] == .userDefined {
            byFirst[Int(s.bytes[0])].append(k)
            any = true
        }
        if !any { return [.text(0..<text.count)] }
        var fragments: [Fragment] = []
        var start = 0, i = 0
        while i < text.count {
            let candidates = byFirst[Int(text[i])]
            guard !candidates.isEmpty,
                  let k = candidates.first(where: { Self.matches(text, at: i, end: text.count, specials[$0].bytes) }) else {
                i += 1
                continue
            }
            let special = specials[k]
            var textEnd = i
            if special.lstrip { while textEnd > start && Self.isSpace(text[textEnd - 1]) { textEnd -= 1 } }
            if textEnd > start { fragments.append(.text(start..<textEnd)) }
            fragments.append(.token(special.id))
            i += special.bytes.count
            if special.rstrip { while i < text.count && Self.isSpace(text[i]) { i += 1 } }
            start = i
        }
        if text.count > start { fragments.append(.text(start..<text.count)) }
        return fragments
    }

    @inline(__always)
    private static func matches(_ text: UnsafeBufferPointer<UInt8>, at i: Int, end: Int, _ needle: [UInt8]) -> Bool {
        if i + needle.count > end { return false }
        for j in 0..<needle.count where text[i + j] != needle[j] { return false }
        return true
    }

    /// C's `isspace` in the C locale: space, \t, \n, \v, \f, \r.
    @inline(__always) private static func isSpace(_ b: UInt8) -> Bool { b == 0x20 || (b >= 0x09 && b <= 0x0D) }

    // MARK: decode

    /// The bytes token `id` stands for (llama.cpp's `token_to_piece`): a SentencePiece "▁" is a
    /// space, a byte token its byte; control and unknown tokens give their text unless `skipSpecial`.
    /// - Note: A token can end inside a UTF-8 sequence; use `StreamingDecoder` to print as tokens arrive.
    public func piece(for id: Int, skipSpecial: Bool = false) -> [UInt8] {
        guard id >= 0 && id < vocabSize else { return [] }
        if skipSpecial && (types[id] == .control || types[id] == .unknown) { return [] }
        return pieces[id]
    }

    /// Bytes of `ids` as llama.cpp's `llama_detokenize` gives them (without removing BOS/EOS):
    /// the pieces one after another; for SentencePiece vocabularies that add a space prefix,
    /// the first token's leading space is dropped, as encoding put it there.
    /// - Parameter continuing: `ids` follow earlier tokens of the same text (a generated
    ///   continuation), so the first token's leading space is text and stays, as `StreamingDecoder` prints it.
    public func decodeBytes(_ ids: [Int], skipSpecial: Bool = false, continuing: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        for (k, id) in ids.enumerated() {
            let p = piece(for: id, skipSpecial: skipSpecial)
            if k == 0 && removesLeadingSpace && !continuing && p.first == 0x20 {
                out.append(contentsOf: p.dropFirst())
            } else {
                out.append(contentsOf: p)
            }
        }
        return out
    }

    /// Text of `ids` (see `decodeBytes`). Invalid UTF-8 (a sequence cut off by the end of `ids`) becomes U+FFFD.
    /// - Note: No other clean-up of spaces is done: `decode(encode(s, addBOS: false, parseSpecial: false)) == s`
    ///   for any `s` with byte-level BPE, and with SentencePiece for text without "▁" (U+2581, read back
    ///   as a space) or user-defined tokens (a space prefix follows them).
    public func decode(_ ids: [Int], skipSpecial: Bool = false, continuing: Bool = false) -> String {
        String(decoding: decodeBytes(ids, skipSpecial: skipSpecial, continuing: continuing), as: UTF8.self)
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
/// - Note: Made for continuations: every piece is printed as it is, a first leading space
///   included (`decode(ids, continuing: true)` gives the same text).
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
