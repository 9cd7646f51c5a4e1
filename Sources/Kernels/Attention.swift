// Grouped-query causal attention over a KV cache, one block of keys at a time with
// a running (online) softmax. Query row i sits at position start + i and attends to
// keys [lo, start + i]. Keys are taken in blocks of 256 positions counted from position
// 0, wherever they are kept: a whole layer in memory, or a KV head read from disk a span
// of blocks at a time (`AttentionRows.accumulate`). A row's result depends only on its
// keys' blocks and its band, so every placement of the cache gives the same bits.
// Several query rows: per (head, band of 64 rows) sgemms for scores and values; a few
// rows (decode): direct loops.

import CKernels
import Foundation

/// Query rows per band of the many-row path: a band attends to the keys up to its last row, and
/// a row's result depends only on its band (bands start every 64 rows from the call's first row).
public let attentionBandRows = 64
/// Keys per block of the running softmax (blocks start every 256 positions from position 0).
public let attentionKeyBlock = 256
/// Per-thread scratch slots of attention: at most this many threads run it at once.
public let attentionScratchSlots = 16

public struct AttentionShape {
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public init(heads: Int, kvHeads: Int, headDim: Int) {
        self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
    }
    var group: Int { heads / kvHeads }
}

/// Floats of scratch `AttentionRows` needs for `rows` query rows over at most `keys` keys: every
/// row's running maximum and sum per head, and a slot per thread (a band's scores and its values
/// product; decode: a block's scores).
public func attentionScratchFloats(rows: Int, keys: Int, shape: AttentionShape) -> Int {
    let (many, block) = (rows >= 4, min(attentionKeyBlock, max(keys, 1)))
    let units = many ? (rows + attentionBandRows - 1) / attentionBandRows : rows
    let slot = many ? min(rows, attentionBandRows) * (block + shape.headDim + 1) : block
    return 2 * rows * shape.heads + min(attentionScratchSlots, shape.heads * units) * slot
}

/// The query rows of one attention call and their running state: `begin`, then `accumulate`
/// every span of keys (each KV head's keys [lo, start + rows) exactly once, spans in position
/// order, each starting and ending on a key block's bounds unless at lo or at the end), then `finish`.
public struct AttentionRows {
    /// (rows, heads·headDim): the result, and meanwhile the unnormalized sums.
    public var out: UnsafeMutablePointer<Float>
    public var q: UnsafePointer<Float>
    public var rows: Int
    /// The position of row 0.
    public var start: Int
    /// The first key every row sees (a sliding window's first position); 0: all before it.
    public var lo: Int
    public var shape: AttentionShape
    /// `attentionScratchFloats(rows:keys:shape:)` floats, keys ≥ start + rows.
    public var scratch: UnsafeMutablePointer<Float>

    public init(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, rows: Int, start: Int, lo: Int = 0,
                shape: AttentionShape, scratch: UnsafeMutablePointer<Float>) {
        self.out = out; self.q = q; self.rows = rows; self.start = start; self.lo = lo
        self.shape = shape; self.scratch = scratch
    }

    private var states: Int { rows * shape.heads }

    public func begin() {
        out.update(repeating: 0, count: rows * shape.heads * shape.headDim)
        scratch.update(repeating: -.infinity, count: states)
        (scratch + states).update(repeating: 0, count: states)
    }

    /// Adds keys [first, first + count) of KV heads `kvHeads`: head kh's key at position p is
    /// `headDim` floats at k + (p − first)·ld + (kh − kvHeads.lowerBound)·headDim (values alike).
    public func accumulate(_ pool: ComputePool, kvHeads: Range<Int>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                           ld: Int, first: Int, count: Int) {
        let d = shape.headDim, qs = shape.heads * d, heads = shape.heads, group = shape.group
        let scale = 1 / Float(d).squareRoot()
        let many = rows >= 4, band = attentionBandRows, block = attentionKeyBlock
        let units = many ? (rows + band - 1) / band : rows
        let qHeads = kvHeads.lowerBound * group..<kvHeads.upperBound * group
        let tasks = qHeads.count * units
        // Scores are `kb` keys wide: a block, or all keys when fewer (the scratch is sized so).
        let kb = min(block, max(start + rows, 1)), bandRows = min(rows, band)
        let slotFloats = many ? bandRows * (kb + d + 1) : kb
        let m = scratch, l = scratch + states, slots = scratch + 2 * states
        let (out, q, start, lo, rows, end) = (out, q, start, lo, rows, first + count)
        let run = { (task: Int, slot: Int) in
            let h = qHeads.lowerBound + task / units, unit = task % units
            let koff = (h / group - kvHeads.lowerBound) * d
            let r0 = many ? unit * band : unit, mb = many ? min(band, rows - r0) : 1
            let hi = min(start + r0 + mb, end)   // keys past the unit's last row are never seen
            var kb0 = max(lo, first)
            guard kb0 < hi else { return }
            let sc = slots + slot * slotFloats
            let o = out + r0 * qs + h * d, qp = q + r0 * qs + h * d
            if many {
                attendBand(o, qp, ld: qs, k + koff, v + koff, ldk: ld, first: first, position: start + r0, rows: mb,
                           keys: kb0..<hi, m: m + r0 * heads + h, l: l + r0 * heads + h, mls: heads, scratch: sc,
                           ldScores: kb, headDim: d)
                return
            }
            while kb0 < hi {
                let kb1 = min((kb0 / block + 1) * block, hi), nb = kb1 - kb0
                let kp = k + (kb0 - first) * ld + koff, vp = v + (kb0 - first) * ld + koff
                ck_attend_row_block(o, qp, kp, vp, Int32(ld), Int32(nb), Int32(d), scale,
                                    m + r0 * heads + h, l + r0 * heads + h, sc)
                kb0 = kb1
            }
        }
        // Every (head, unit) is a task of its own, its sgemms on one thread (OpenBLAS on several
        // threads gives other bits, and a row must not depend on how many rows share its call).
        let slotCount = min(attentionScratchSlots, heads * units)
        if pool.threads > 1, pool.threads <= slotCount, tasks > 1 {
            pool.forEach(items: tasks) { begin, end, thread in
                for task in begin..<end { run(task, thread) }
            }
        } else {
            withSingleThreadedBLAS { for task in 0..<tasks { run(task, 0) } }
        }
    }

    /// Divides each row's sums by its softmax denominator.
    public func finish() {
        let d = shape.headDim, l = scratch + states
        for i in 0..<states {
            let inv = 1 / l[i], o = out + i * d
            for t in 0..<d { o[t] *= inv }
        }
    }
}

/// One head's band of `rows` query rows (row i at `position` + i; o and q a row every `ld`) against
/// keys `keys` in blocks of `attentionKeyBlock` counted from position 0, each block's scores by
/// sgemm, then the running softmax (state m, l, a row's every `mls`) and the values' product. k, v:
/// the head's key and value at position p are at (p − first)·ldk. scratch: rows·(ldScores + headDim
/// + 1) floats, ldScores ≥ the widest block. The training attention runs the same band.
func attendBand(_ o: UnsafeMutablePointer<Float>, _ q: UnsafePointer<Float>, ld: Int, _ k: UnsafePointer<Float>,
                _ v: UnsafePointer<Float>, ldk: Int, first: Int, position: Int, rows: Int, keys: Range<Int>,
                m: UnsafeMutablePointer<Float>, l: UnsafeMutablePointer<Float>, mls: Int,
                scratch: UnsafeMutablePointer<Float>, ldScores kb: Int, headDim d: Int) {
    let scale = 1 / Float(d).squareRoot(), block = attentionKeyBlock
    let sc = scratch, pv = scratch + rows * kb, alpha = pv + rows * d
    var kb0 = keys.lowerBound
    while kb0 < keys.upperBound {
        let kb1 = min((kb0 / block + 1) * block, keys.upperBound), nb = kb1 - kb0
        let kp = k + (kb0 - first) * ldk, vp = v + (kb0 - first) * ldk
        Matmul.sgemmNT(m: rows, n: nb, k: d, alpha: scale, a: q, lda: ld, b: kp, ldb: ldk, c: sc, ldc: kb)
        ck_online_softmax_rows(sc, Int32(rows), Int32(nb), Int32(kb), Int32(position - kb0), m, l, Int32(mls), alpha)
        Matmul.sgemmNN(m: rows, n: d, k: nb, a: sc, lda: kb, b: vp, ldb: ldk, c: pv, ldc: d)
        ck_rescale_add(o, Int32(ld), alpha, pv, Int32(rows), Int32(d))
        kb0 = kb1
    }
}

/// Attention of `rows` query rows over keys and values kept together in memory.
/// out, q: (rows, heads·headDim); k, v: positions [0, start + rows), a row of kvHeads·headDim
/// floats every `ld` (already holding these rows' keys and values); `lo`: the first key seen;
/// scratch: `attentionScratchFloats(rows:keys:shape:)` floats (keys: start + rows).
public func attentionForward(_ pool: ComputePool, _ out: UnsafeMutablePointer<Float>, _ q: UnsafePointer<Float>,
                             _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>, ld: Int? = nil,
                             scratch: UnsafeMutablePointer<Float>, rows: Int, start: Int, lo: Int = 0,
                             shape: AttentionShape) {
    let a = AttentionRows(out: out, q: q, rows: rows, start: start, lo: lo, shape: shape, scratch: scratch)
    a.begin()
    a.accumulate(pool, kvHeads: 0..<shape.kvHeads, k: k, v: v, ld: ld ?? shape.kvHeads * shape.headDim,
                 first: 0, count: start + rows)
    a.finish()
}

/// Plain reference (Double accumulation, no BLAS) for tests.
public func attentionReference(q: [Float], k: [Float], v: [Float], rows: Int, start: Int,
                               shape: AttentionShape) -> [Float] {
    let d = shape.headDim, qs = shape.heads * d, kvs = shape.kvHeads * d
    let group = shape.heads / shape.kvHeads
    var out = [Float](repeating: 0, count: rows * qs)
    for h in 0..<shape.heads {
        let kh = (h / group) * d
        for i in 0..<rows {
            let n = start + i + 1
            var s = [Double](repeating: 0, count: n)
            for j in 0..<n {
                var acc = 0.0
                for t in 0..<d { acc += Double(q[i * qs + h * d + t]) * Double(k[j * kvs + kh + t]) }
                s[j] = acc / Double(d).squareRoot()
            }
            let m = s.max()!
            let e = s.map { Foundation.exp($0 - m) }
            let z = e.reduce(0, +)
            for t in 0..<d {
                var acc = 0.0
                for j in 0..<n { acc += e[j] / z * Double(v[j * kvs + kh + t]) }
                out[i * qs + h * d + t] = Float(acc)
            }
        }
    }
    return out
}
