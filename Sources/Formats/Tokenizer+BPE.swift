// Byte-level BPE core: GPT-2's byte↔character mapping and the merge loop over
// one pre-tokenized word. Works on raw bytes; vocabulary strings are mapped back
// to bytes once, at load time.

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
        var heap = MergeHeap()
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

/// Binary min-heap of merge candidates ordered by (rank, left position).
struct MergeHeap {
    struct Candidate { var rank: Int32; var left: Int32; var leftPiece: Int32; var rightPiece: Int32; var merged: Int32 }
    private var items: [Candidate] = []

    @inline(__always) private static func less(_ a: Candidate, _ b: Candidate) -> Bool {
        a.rank < b.rank || (a.rank == b.rank && a.left < b.left)
    }

    mutating func push(_ c: Candidate) {
        items.append(c)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if Self.less(items[i], items[p]) { items.swapAt(i, p); i = p } else { break }
        }
    }

    mutating func pop() -> Candidate? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            let n = items.count
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < n && Self.less(items[l], items[m]) { m = l }
                if r < n && Self.less(items[r], items[m]) { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}
