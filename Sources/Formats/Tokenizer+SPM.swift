// SentencePiece vocabularies (`tokenizer.ggml.model` = "llama": Llama 1/2, Mistral v1, Phi-3,
// Baichuan) encoded as llama.cpp's `llm_tokenizer_spm` does: spaces become "▁", then the
// adjacent pair whose merged text is the highest-scoring token merges first, and what stays
// out of the vocabulary falls back to `<0xXX>` byte tokens. The same loop runs the Hugging Face
// form of these vocabularies (a tokenizer.json BPE with byte_fallback), where the pair with the
// lowest merge rank goes first instead. No Unicode normalization (llama.cpp does none); not
// SentencePiece's Unigram model (`t5`).

import Foundation
import Tensors

/// What SentencePiece encoding needs beyond the shared vocabulary: every token's text
/// (control and byte tokens included, as in llama.cpp's `token_to_id`), its score, and the
/// token of each byte. Immutable; `Tokenizer` calls it for each text fragment between
/// special tokens.
struct SentencePiece: Sendable {
    let table: TokenTable
    let scores: [Float]
    /// Hugging Face's rule, when set: (left token << 32 | right token) → (merge rank, merged token).
    /// Only listed pairs merge, lowest rank first; `scores` is then unused.
    let mergeRanks: [UInt64: (rank: Int32, merged: Int32)]?
    /// llama.cpp's `byte_to_token`: `<0xXX>`, else the one-byte token, else `unknownID` (-1: the byte is dropped).
    let byteTokens: [Int32]
    /// `tokenizer.ggml.add_space_prefix` (default true): a fragment at the start of the text or
    /// after a special token is encoded with a space in front; decoding drops it again.
    let addSpacePrefix: Bool
    /// Bit `a << 8 | b` is set when bytes a, b follow each other in some token's text. Where two
    /// characters meet in bytes that never do, no merge can join them: the text splits there.
    let joinedBytes: [UInt64]

    /// "▁" (U+2581), how SentencePiece vocabularies write a space.
    static let spaceMark: [UInt8] = [0xE2, 0x96, 0x81]

    /// Reads the scores and `add_space_prefix`; returns the bytes each token decodes to as well.
    /// - Throws: the error `fail` makes when `tokenizer.ggml.scores` is missing, not numbers, or short.
    static func load(gguf: GGUFFile, tokens: [String], types: [Tokenizer.TokenType], unknownID: Int?,
                     fail: (String) -> OffloadError) throws -> (spm: SentencePiece, pieces: [[UInt8]]) {
        let n = tokens.count
        let key = "tokenizer.ggml.scores"
        guard gguf.metadata[key] != nil else {
            throw fail("\(key) is missing; SentencePiece merges need a score per token")
        }
        guard let raw = gguf.doubles(key) else { throw fail("\(key) is not an array of numbers") }
        guard raw.count >= n else { throw fail("\(key) has \(raw.count) entries for the \(n) tokens") }
        // llama.cpp renames empty tokens so that each text names one token; later duplicates win.
        let texts = tokens.enumerated().map { i, t in Array((t.isEmpty ? "[EMPTY_\(i)]" : t).utf8) }
        return build(texts: texts, pieceTexts: texts, tokens: tokens, types: types, scores: raw.prefix(n).map { Float($0) },
                     mergeRanks: nil, unknownID: Int32(unknownID ?? 0),
                     addSpacePrefix: gguf.bool("tokenizer.ggml.add_space_prefix") ?? true)
    }

    /// The vocabulary from its parts, whatever file they came from.
    /// - Parameters:
    ///   - texts: what each token matches in merging and lookup (llama.cpp's `token_to_id`); give a
    ///     token that must never be formed a text no valid UTF-8 contains.
    ///   - pieceTexts: the text each token decodes to before "▁" becomes a space.
    ///   - tokens: each token's text as the file writes it (for byte tokens' values).
    ///   - unknownID: the token a byte without a `<0xXX>` or one-byte token becomes; -1 drops it.
    static func build(texts: [[UInt8]], pieceTexts: [[UInt8]], tokens: [String], types: [Tokenizer.TokenType], scores: [Float],
                      mergeRanks: [UInt64: (rank: Int32, merged: Int32)]?, unknownID: Int32,
                      addSpacePrefix: Bool) -> (spm: SentencePiece, pieces: [[UInt8]]) {
        let n = tokens.count
        let table = TokenTable(texts)
        let hex = Array("0123456789ABCDEF".utf8)
        let byteTokens: [Int32] = (0..<256).map { b in
            let name: [UInt8] = [0x3C, 0x30, 0x78, hex[b >> 4], hex[b & 15], 0x3E]  // <0xXX>
            if let t = table.id(name) { return t }
            // llama.cpp aborts when neither exists; Offload writes the unknown token instead.
            return table.id([UInt8(b)]) ?? unknownID
        }

        // llama.cpp's token_to_piece: normal tokens with ▁ read as a space, byte tokens as
        // their byte, control/user-defined/unknown tokens as their text, others as nothing.
        var pieces = [[UInt8]](repeating: [], count: n)
        for i in 0..<n {
            switch types[i] {
            case .normal: pieces[i] = unescapeSpaces(pieceTexts[i])
            case .control, .userDefined, .unknown: pieces[i] = pieceTexts[i]
            case .byte: pieces[i] = Tokenizer.byteTokenValue(tokens[i]).map { [$0] } ?? pieceTexts[i]
            case .unused, .undefined: pieces[i] = []
            }
        }
        var joined = [UInt64](repeating: 0, count: 65536 / 64)
        for t in texts where t.count > 1 {
            for k in 1..<t.count {
                let pair = Int(t[k - 1]) << 8 | Int(t[k])
                joined[pair >> 6] |= 1 << UInt64(pair & 63)
            }
        }
        let spm = SentencePiece(table: table, scores: scores, mergeRanks: mergeRanks, byteTokens: byteTokens,
                                addSpacePrefix: addSpacePrefix, joinedBytes: joined)
        return (spm, pieces)
    }

    /// `text` with every "▁" replaced by a space.
    static func unescapeSpaces(_ text: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var i = 0
        while i < text.count {
            if i + 2 < text.count && text[i] == 0xE2 && text[i + 1] == 0x96 && text[i + 2] == 0x81 {
                out.append(0x20)
                i += 3
            } else {
                out.append(text[i])
                i += 1
            }
        }
        return out
    }

    /// Appends the tokens of `text[r]`, one fragment between special tokens.
    /// - Parameter spacePrefix: write a space before the fragment (`add_space_prefix` at the
    ///   start of the text or after a special token).
    func encodeFragment(_ text: UnsafeBufferPointer<UInt8>, _ r: Range<Int>, spacePrefix: Bool, _ out: inout [Int]) {
        var escaped: [UInt8] = []
        escaped.reserveCapacity(r.count + r.count / 2 + 3)
        if spacePrefix { escaped.append(contentsOf: Self.spaceMark) }
        for i in r {
            if text[i] == 0x20 { escaped.append(contentsOf: Self.spaceMark) } else { escaped.append(text[i]) }
        }
        escaped.withUnsafeBufferPointer { encodeEscaped($0, &out) }
    }

    /// One symbol of the text being merged: a run of bytes, linked to its neighbours.
    private struct Symbol {
        var start: Int32
        var count: Int32  // 0 once merged into the symbol on its left
        var prev: Int32
        var next: Int32
        var id: Int32     // the token this text is, -1 for a character that is none
    }

    /// llama.cpp's `llm_tokenizer_spm_session::tokenize` over text whose spaces are already "▁".
    /// The text is cut where two characters meet in bytes no token holds side by side (at every
    /// newline, for Llama's vocabulary): no merge crosses such a cut, and within each piece the
    /// merges happen in the same order as in one queue over the whole text, so the tokens are
    /// the same, with a small queue instead of one over millions of symbols.
    private func encodeEscaped(_ s: UnsafeBufferPointer<UInt8>, _ out: inout [Int]) {
        var symbols: [Symbol] = []
        var heap = PriorityHeap<Bigram>()
        var start = 0, offset = 0
        while offset < s.count {
            let len = min(Self.utf8Length[Int(s[offset] >> 4)], s.count - offset)
            if offset > start {
                let pair = Int(s[offset - 1]) << 8 | Int(s[offset])
                if joinedBytes[pair >> 6] & (1 << UInt64(pair & 63)) == 0 {
                    merge(UnsafeBufferPointer(rebasing: s[start..<offset]), &symbols, &heap, &out)
                    start = offset
                }
            }
            offset += len
        }
        if start < s.count { merge(UnsafeBufferPointer(rebasing: s[start...]), &symbols, &heap, &out) }
    }

    /// Merges one piece of text and appends its tokens. `symbols` and `heap` are scratch space.
    /// - Note: llama.cpp re-splits a final symbol that is not a token through its `rev_merge`
    ///   map. That branch never runs on valid UTF-8: a merge happens only when the merged text
    ///   is a token, so a final symbol that is not a token is one unmerged character, and no
    ///   pair of symbols (two characters at least) has that text. Such a character falls back
    ///   to byte tokens, as there.
    /// - Note: With `mergeRanks` (Hugging Face's BPE) a character that is no token never merges:
    ///   Hugging Face turns it into byte tokens before merging.
    private func merge(_ s: UnsafeBufferPointer<UInt8>, _ symbols: inout [Symbol], _ heap: inout PriorityHeap<Bigram>,
                       _ out: inout [Int]) {
        guard let base = s.baseAddress, s.count > 0 else { return }
        // Split into UTF-8 characters (llama.cpp's unicode_len_utf8: by the lead byte's top bits).
        symbols.removeAll(keepingCapacity: true)
        var offset = 0
        while offset < s.count {
            let len = min(Self.utf8Length[Int(s[offset] >> 4)], s.count - offset)
            let index = Int32(symbols.count)
            offset += len
            symbols.append(Symbol(start: Int32(offset - len), count: Int32(len), prev: index - 1,
                                  next: offset == s.count ? -1 : index + 1,
                                  id: table.id(base + offset - len, len) ?? -1))
        }

        heap.removeAll()
        let maxLength = table.maxLength
        let ranks = mergeRanks
        symbols.withUnsafeMutableBufferPointer { sym in
            // A bigram is a candidate when its merged text is a token; its priority is that token's
            // score (llama.cpp), or minus the pair's merge rank (Hugging Face: listed pairs only).
            func tryAdd(_ left: Int32, _ right: Int32) {
                guard left >= 0, right >= 0 else { return }
                let l = sym[Int(left)], r = sym[Int(right)]
                let size = Int(l.count + r.count)
                if let ranks {
                    guard l.id >= 0, r.id >= 0,
                          let m = ranks[UInt64(UInt32(bitPattern: l.id)) << 32 | UInt64(UInt32(bitPattern: r.id))] else { return }
                    heap.push(Bigram(score: -Float(m.rank), left: left, right: right, size: Int32(size), merged: m.merged))
                } else {
                    guard size <= maxLength, let id = table.id(base + Int(l.start), size) else { return }
                    heap.push(Bigram(score: scores[Int(id)], left: left, right: right, size: Int32(size), merged: id))
                }
            }
            for i in 1..<sym.count { tryAdd(Int32(i - 1), Int32(i)) }
            while let b = heap.pop() {
                let l = Int(b.left), r = Int(b.right)
                // Skip candidates made stale by an earlier merge on either side.
                if sym[l].count == 0 || sym[r].count == 0 || sym[l].count + sym[r].count != b.size { continue }
                sym[l].count += sym[r].count
                sym[l].id = b.merged
                sym[r].count = 0
                sym[l].next = sym[r].next
                if sym[r].next >= 0 { sym[Int(sym[r].next)].prev = b.left }
                tryAdd(sym[l].prev, b.left)
                tryAdd(b.left, sym[l].next)
            }
            var i: Int32 = 0
            while i >= 0 {
                let symbol = sym[Int(i)]
                if symbol.id >= 0 {
                    out.append(Int(symbol.id))
                } else {
                    let start = Int(symbol.start)
                    for j in start..<(start + Int(symbol.count)) where byteTokens[Int(base[j])] >= 0 {
                        out.append(Int(byteTokens[Int(base[j])]))
                    }
                }
                i = symbol.next
            }
        }
    }

    /// UTF-8 sequence length by the lead byte's top four bits (continuation bytes count as 1).
    private static let utf8Length = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4]
}

/// A merge candidate: symbols `left` and `right`, whose merged text (`size` bytes) is token `merged`
/// of priority `score`.
struct Bigram {
    var score: Float
    var left: Int32
    var right: Int32
    var size: Int32
    var merged: Int32
}

extension Bigram: HeapOrdered {
    /// Highest score first, ties to the leftmost (llama.cpp's `llm_bigram_spm::comparator`). Valid
    /// candidates never tie on both score and left symbol, so this order is the one
    /// `std::priority_queue` gives, whatever its internal layout.
    @inline(__always) static func before(_ a: Bigram, _ b: Bigram) -> Bool {
        a.score > b.score || (a.score == b.score && a.left < b.left)
    }
}

/// Token ids by the bytes of their text, looked up in place (no key is built per lookup).
/// Open addressing over one buffer holding every token's text; a text given twice maps to
/// the later id, as llama.cpp's `token_to_id` does.
struct TokenTable: Sendable {
    private let bytes: [UInt8]     // every token's text, back to back
    private let offsets: [Int]     // token i is bytes[offsets[i] ..< offsets[i + 1]]
    private let slots: [Int32]     // token id or -1; power-of-two count
    /// Length in bytes of the longest token text: no longer text can be a token.
    let maxLength: Int

    init(_ texts: [[UInt8]]) {
        var bytes: [UInt8] = []
        var offsets = [0]
        offsets.reserveCapacity(texts.count + 1)
        for t in texts { bytes.append(contentsOf: t); offsets.append(bytes.count) }
        bytes.append(0)  // never empty, so its buffer always has an address
        var capacity = 16
        while capacity < texts.count * 2 { capacity *= 2 }
        var slots = [Int32](repeating: -1, count: capacity)
        bytes.withUnsafeBufferPointer { b in
            for (i, t) in texts.enumerated() {
                var s = Int(truncatingIfNeeded: Self.hash(b.baseAddress! + offsets[i], t.count)) & (capacity - 1)
                while slots[s] >= 0 {
                    let o = Int(slots[s])
                    if offsets[o + 1] - offsets[o] == t.count
                        && memcmp(b.baseAddress! + offsets[o], b.baseAddress! + offsets[i], t.count) == 0 { break }
                    s = (s + 1) & (capacity - 1)
                }
                slots[s] = Int32(i)
            }
        }
        self.bytes = bytes
        self.offsets = offsets
        self.slots = slots
        self.maxLength = texts.map(\.count).max() ?? 0
    }

    /// FNV-1a over `count` bytes.
    @inline(__always) private static func hash(_ p: UnsafePointer<UInt8>, _ count: Int) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<count { h = (h ^ UInt64(p[i])) &* 0x0000_0100_0000_01b3 }
        return h
    }

    /// The id of the token whose text is the `count` bytes at `p`.
    func id(_ p: UnsafePointer<UInt8>, _ count: Int) -> Int32? {
        let mask = slots.count - 1
        var s = Int(truncatingIfNeeded: Self.hash(p, count)) & mask
        return bytes.withUnsafeBufferPointer { b in
            while true {
                let t = slots[s]
                if t < 0 { return nil }
                let o = offsets[Int(t)]
                if offsets[Int(t) + 1] - o == count && memcmp(b.baseAddress! + o, p, count) == 0 { return t }
                s = (s + 1) & mask
            }
        }
    }

    func id(_ text: [UInt8]) -> Int32? {
        text.withUnsafeBufferPointer { $0.baseAddress.flatMap { id($0, text.count) } }
    }
}
