// Byte-level BPE (`tokenizer.ggml.model` = "gpt2"): GPT-2's byte↔character mapping,
// the merge table built from GGUF metadata, and the merge loop over one pre-tokenized
// word. Works on raw bytes; vocabulary strings are mapped back to bytes once, at load time.

import Foundation
import Tensors

/// GPT-2's reversible mapping of the 256 byte values onto printable characters:
/// printable Latin-1 bytes map to themselves, the other 68 to U+0100 onwards.
enum ByteLevel {
    /// Character (code point) that byte `b` is written as in vocabulary strings.
    static let byteToScalar: [UInt32] = {
        var map = [UInt32](repeating: 0, count: 256)
        var assigned = [Bool](repeating: false, count: 256)
        for b in 0x21...0x7E { map[b] = UInt32(b); assigned[b] = true }
        for b in 0xA1...0xAC { map[b] = UInt32(b); assigned[b] = true }
        for b in 0xAE...0xFF { map[b] = UInt32(b); assigned[b] = true }
        var next: UInt32 = 256
        for b in 0..<256 where !assigned[b] { map[b] = next; next += 1 }
        return map
    }()

    /// Inverse of `byteToScalar`, indexed by code point (0..<324); -1 where unmapped.
    static let scalarToByte: [Int16] = {
        var inv = [Int16](repeating: -1, count: 324)
        for (b, s) in byteToScalar.enumerated() { inv[Int(s)] = Int16(b) }
        return inv
    }()

    /// Raw bytes a vocabulary string stands for, or nil if it has a character outside the mapping.
    static func decode(_ s: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count)
        for u in s.unicodeScalars {
            let v = Int(u.value)
            guard v < scalarToByte.count, scalarToByte[v] >= 0 else { return nil }
            out.append(UInt8(scalarToByte[v]))
        }
        return out
    }

    /// Raw bytes for display: mapped characters become their byte, any other character stays as its UTF-8.
    static func decodeLenient(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        for u in s.unicodeScalars {
            let v = Int(u.value)
            if v < scalarToByte.count, scalarToByte[v] >= 0 { out.append(UInt8(scalarToByte[v])) } else { out.append(contentsOf: String(u).utf8) }
        }
        return out
    }
}

/// Merge ranks over "pieces": every byte string that is a vocabulary token or the
/// result of a merge gets a piece id (vocabulary tokens keep their token id).
struct BPEMerges: Sendable {
    /// (left piece << 32 | right piece) → (rank, merged piece)
    let table: [UInt64: (rank: Int32, merged: Int32)]
    /// Piece id of each single byte.
    let bytePiece: [Int32]
    /// Bytes of each piece id that is not a vocabulary token (id - vocabCount).
    let extraPieces: [[UInt8]]

    /// Applies merges lowest rank first (ties: leftmost) to the bytes of one word.
    /// Returns the pieces left when no adjacent pair has a merge.
    func merge(_ word: UnsafeBufferPointer<UInt8>) -> [Int32] {
        let n = word.count
        if n == 0 { return [] }
        if n == 1 { return [bytePiece[Int(word[0])]] }
        var piece = [Int32](repeating: 0, count: n)
        var prev = [Int32](repeating: -1, count: n)
        var next = [Int32](repeating: -1, count: n)
        for i in 0..<n {
            piece[i] = bytePiece[Int(word[i])]
            prev[i] = Int32(i - 1)
            next[i] = i + 1 < n ? Int32(i + 1) : -1
        }
        var heap = PriorityHeap<MergeCandidate>()
        func push(_ l: Int32, _ r: Int32) {
            guard l >= 0, r >= 0 else { return }
            let lp = piece[Int(l)], rp = piece[Int(r)]
            if let m = table[UInt64(UInt32(bitPattern: lp)) << 32 | UInt64(UInt32(bitPattern: rp))] {
                heap.push(.init(rank: m.rank, left: l, leftPiece: lp, rightPiece: rp, merged: m.merged))
            }
        }
        for i in 0..<(n - 1) { push(Int32(i), Int32(i + 1)) }
        while let c = heap.pop() {
            let l = Int(c.left)
            // Skip candidates made stale by an earlier merge on either side.
            guard piece[l] == c.leftPiece, next[l] >= 0 else { continue }
            let r = Int(next[l])
            guard piece[r] == c.rightPiece else { continue }
            piece[l] = c.merged
            piece[r] = -1
            next[l] = next[r]
            if next[r] >= 0 { prev[Int(next[r])] = Int32(l) }
            push(prev[l], Int32(l))
            push(Int32(l), next[l])
        }
        var out: [Int32] = []
        var i: Int32 = 0
        while i >= 0 { out.append(piece[Int(i)]); i = next[Int(i)] }
        return out
    }
}

/// A merge candidate of byte-level BPE: the pieces at `leftPiece` and `rightPiece` (starting at
/// position `left`) merge into token `merged` of priority `rank`.
struct MergeCandidate: HeapOrdered {
    var rank: Int32; var left: Int32; var leftPiece: Int32; var rightPiece: Int32; var merged: Int32
    /// Lowest rank first, ties to the leftmost.
    @inline(__always) static func before(_ a: MergeCandidate, _ b: MergeCandidate) -> Bool {
        a.rank < b.rank || (a.rank == b.rank && a.left < b.left)
    }
}

/// Elements a `PriorityHeap` orders: `before(a, b)` when a comes out first.
protocol HeapOrdered { static func before(_ a: Self, _ b: Self) -> Bool }

/// A binary heap popping the element that comes `before` all others first; the merge queue of
/// both tokenizers (BPE by rank, SentencePiece by score).
struct PriorityHeap<Element: HeapOrdered> {
    private var items: [Element] = []

    mutating func removeAll() { items.removeAll(keepingCapacity: true) }

    mutating func push(_ e: Element) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if Element.before(items[i], items[p]) { items.swapAt(i, p); i = p } else { break }
        }
    }

    mutating func pop() -> Element? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            let n = items.count
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < n && Element.before(items[l], items[m]) { m = l }
                if r < n && Element.before(items[r], items[m]) { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}

/// What byte-level BPE needs beyond the shared vocabulary: the pre-tokenizer, the merge
/// table and the token of each byte string. Immutable; `Tokenizer` calls it for each
/// text fragment between special tokens.
struct ByteLevelBPE: Sendable {
    let vocabSize: Int
    let tokenOfBytes: [[UInt8]: Int32]  // llama.cpp's token_to_id, keyed by the bytes a token stands for
    let merges: BPEMerges
    let pre: PreTokenizer
    let ignoreMerges: Bool

    /// Reads the merges and the `pre` type; returns the bytes each token decodes to as well.
    /// - Throws: the error `fail` makes, naming what is missing or unsupported.
    static func load(gguf: GGUFFile, tokens: [String], types: [Tokenizer.TokenType],
                     fail: (String) -> OffloadError)
        throws -> (bpe: ByteLevelBPE, pieces: [[UInt8]], preName: String, addsBOS: Bool) {
        let preName = gguf.string("tokenizer.ggml.pre") ?? "default"
        guard let (pre, ignoreMerges, preAddsBOS) = PreTokenizer.named(preName) else {
            throw fail("pre-tokenizer '\(preName)' is not supported; supported: \(PreTokenizer.supportedNames.joined(separator: ", "))")
        }
        guard let mergeStrings = gguf.strings("tokenizer.ggml.merges") else {
            throw fail("tokenizer.ggml.merges is missing or not an array of strings; byte-level BPE needs merges")
        }
        // llama.cpp splits each merge at the first space after the first character.
        let merges: [(String, String)] = mergeStrings.compactMap { m in
            let u = Array(m.utf8)
            guard u.count > 1, let sp = u[1...].firstIndex(of: 0x20) else { return nil }
            return (String(decoding: u[..<sp], as: UTF8.self), String(decoding: u[(sp + 1)...], as: UTF8.self))
        }
        let (bpe, pieces) = build(tokens: tokens, types: types, merges: merges, pre: pre, ignoreMerges: ignoreMerges)
        return (bpe, pieces, preName, preAddsBOS)
    }

    /// The vocabulary from its parts, whatever file they came from: tokens in GPT-2's byte
    /// characters, merges (left, right) in rank order. Tokens in `outsideModel` (Hugging Face's
    /// added tokens that are not in the BPE vocabulary) are never the result of merging.
    static func build(tokens: [String], types: [Tokenizer.TokenType], merges: [(String, String)],
                      pre: PreTokenizer, ignoreMerges: Bool,
                      outsideModel: Set<Int> = []) -> (bpe: ByteLevelBPE, pieces: [[UInt8]]) {
        let n = tokens.count

        // Bytes each token stands for; byte-level text for normal tokens, raw text otherwise.
        var pieces = [[UInt8]](repeating: [], count: n)
        var tokenOfBytes = [[UInt8]: Int32](minimumCapacity: n)
        for i in 0..<n {
            let t = tokens[i]
            let mapped = ByteLevel.decode(t)
            if let mapped, !outsideModel.contains(i) { tokenOfBytes[mapped] = Int32(i) }  // later duplicates win, as in llama.cpp
            switch types[i] {
            case .normal: pieces[i] = mapped ?? ByteLevel.decodeLenient(t)
            case .control, .userDefined, .unknown: pieces[i] = Array(t.utf8)
            case .byte: pieces[i] = Tokenizer.byteTokenValue(t).map { [$0] } ?? Array(t.utf8)
            case .unused, .undefined: pieces[i] = []
            }
        }

        // Merge table over piece ids. Pieces that are not tokens get ids from n upwards.
        var extra: [[UInt8]] = []
        var extraIndex: [[UInt8]: Int32] = [:]
        func pieceID(_ bytes: [UInt8]) -> Int32 {
            if let t = tokenOfBytes[bytes] { return t }
            if let e = extraIndex[bytes] { return e }
            let id = Int32(n + extra.count)
            extra.append(bytes)
            extraIndex[bytes] = id
            return id
        }
        var table = [UInt64: (rank: Int32, merged: Int32)](minimumCapacity: merges.count)
        for (rank, (left, right)) in merges.enumerated() {
            guard let a = ByteLevel.decode(left), let b = ByteLevel.decode(right),
                  !a.isEmpty, !b.isEmpty else { continue }  // can never match a byte-level word
            let key = UInt64(UInt32(bitPattern: pieceID(a))) << 32 | UInt64(UInt32(bitPattern: pieceID(b)))
            if table[key] == nil { table[key] = (Int32(rank), pieceID(a + b)) }
        }
        let bytePiece = (0..<256).map { pieceID([UInt8($0)]) }
        let bpe = ByteLevelBPE(vocabSize: n, tokenOfBytes: tokenOfBytes,
                               merges: BPEMerges(table: table, bytePiece: bytePiece, extraPieces: extra),
                               pre: pre, ignoreMerges: ignoreMerges)
        return (bpe, pieces)
    }

    /// Pre-tokenizes one text fragment and appends the BPE tokens of each word.
    func encodeFragment(_ text: UnsafeBufferPointer<UInt8>, _ r: Range<Int>,
                        _ cache: inout [WordKey: [Int32]], _ out: inout [Int]) {
        // Code points, their flags and where each starts in the UTF-8 (the text is valid UTF-8).
        var cps: [UInt32] = [], flags: [CodepointFlags] = [], starts: [Int] = []
        cps.reserveCapacity(r.count); flags.reserveCapacity(r.count); starts.reserveCapacity(r.count + 1)
        let table = CodepointFlags.table
        var i = r.lowerBound
        while i < r.upperBound {
            let b0 = UInt32(text[i])
            var cp: UInt32, len: Int
            if b0 < 0x80 { cp = b0; len = 1 }
            else if b0 < 0xE0 { cp = (b0 & 0x1F) << 6 | UInt32(text[i + 1] & 0x3F); len = 2 }
            else if b0 < 0xF0 { cp = (b0 & 0x0F) << 12 | UInt32(text[i + 1] & 0x3F) << 6 | UInt32(text[i + 2] & 0x3F); len = 3 }
            else { cp = (b0 & 0x07) << 18 | UInt32(text[i + 1] & 0x3F) << 12 | UInt32(text[i + 2] & 0x3F) << 6 | UInt32(text[i + 3] & 0x3F); len = 4 }
            cps.append(cp)
            flags.append(CodepointFlags(rawValue: table[Int(cp)]))
            starts.append(i)
            i += len
        }
        starts.append(r.upperBound)

        var c = 0
        for len in pre.split(cps, flags) {
            let lo = starts[c], hi = starts[c + len]
            c += len
            let key = WordKey(base: text.baseAddress!, start: lo, count: hi - lo)
            if let ids = cache[key] {
                for id in ids { out.append(Int(id)) }
                continue
            }
            let ids = encodeWord(UnsafeBufferPointer(rebasing: text[lo..<hi]))
            cache[key] = ids
            for id in ids { out.append(Int(id)) }
        }
    }

    /// BPE of one pre-tokenized word; pieces that are not tokens fall back to one token per byte.
    private func encodeWord(_ word: UnsafeBufferPointer<UInt8>) -> [Int32] {
        if ignoreMerges, let t = tokenOfBytes[Array(word)] { return [t] }
        var ids: [Int32] = []
        for p in merges.merge(word) {
            if Int(p) < vocabSize { ids.append(p); continue }
            // llama.cpp looks up each UTF-8 byte of the byte-level string on its own, so only
            // bytes written as one ASCII character (0x21...0x7E) can fall back; others are dropped.
            for b in merges.extraPieces[Int(p) - vocabSize] where b >= 0x21 && b <= 0x7E {
                if let t = tokenOfBytes[[b]] { ids.append(t) }
            }
        }
        return ids
    }
}

/// A word of the text being encoded, hashed and compared by its bytes without copying them.
/// Valid only while that text's buffer is.
struct WordKey: Hashable {
    let base: UnsafePointer<UInt8>
    let start: Int
    let count: Int

    func hash(into h: inout Hasher) {
        h.combine(bytes: UnsafeRawBufferPointer(start: base + start, count: count))
    }

    static func == (a: WordKey, b: WordKey) -> Bool {
        a.count == b.count && memcmp(a.base + a.start, b.base + b.start, a.count) == 0
    }
}
