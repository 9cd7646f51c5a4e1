// Grouped-query causal attention over a KV cache. Query row i sits at position
// start + i and attends to keys [0, start + i]. Several query rows: per-head
// sgemm for scores and values; one row (decode): direct loops.

import CKernels
import Foundation

/// Query rows per band of the many-row path: a band attends to the keys up to its last row, and
/// a row's result depends only on its band (bands start every 64 rows from the call's first row).
public let attentionBandRows = 64

public struct AttentionShape {
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public init(heads: Int, kvHeads: Int, headDim: Int) {
        self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
    }
}

/// out: (rows, heads·headDim); q: (rows, heads·headDim);
/// k, v: (start + rows, kvHeads·headDim) — the cache, already holding these rows' keys and values;
/// scores: scratch of rows × (start + rows) floats.
/// scores must hold rows · heads · (start + rows) floats when rows < 4.
public func attentionForward(_ pool: ComputePool, _ out: UnsafeMutablePointer<Float>, _ q: UnsafePointer<Float>,
                             _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
                             scores: UnsafeMutablePointer<Float>, rows: Int, start: Int, shape: AttentionShape) {
    if rows < 4 {
        ck_attention(pool.pool, out, q, k, v, scores, Int32(rows), Int32(start), Int32(shape.heads),
                     Int32(shape.kvHeads), Int32(shape.headDim))
        return
    }
    let d = shape.headDim, qs = shape.heads * d, kvs = shape.kvHeads * d
    let group = shape.heads / shape.kvHeads
    let keys = start + rows
    let scale = 1 / Float(d).squareRoot()
    // Bands of 64 query rows: a band attends only to keys up to its last row, so
    // the work past the diagonal (half of it for a prompt) is never done. Every
    // (head, band) is a task of its own on the pool, with single-threaded sgemms and
    // its scores in the thread's own band of `scores` (rows × keys floats hold one
    // band of 64 rows per thread once rows ≥ 64 × threads; below, fewer threads run).
    let band = attentionBandRows, bands = (rows + band - 1) / band
    let slots = max(1, rows / band)
    let run = { (task: Int, slot: Int) in
        let h = task / bands, r0 = (task % bands) * band
        let kh = (h / group) * d
        let m = min(band, rows - r0), n = start + r0 + m
        let sb = scores + slot * band * keys
        Matmul.sgemmNT(m: m, n: n, k: d, alpha: scale, a: q + r0 * qs + h * d, lda: qs, b: k + kh, ldb: kvs,
                       c: sb, ldc: keys)
        ck_softmax_causal(nil, sb, Int32(m), Int32(n), Int32(keys), Int32(start + r0))
        Matmul.sgemmNN(m: m, n: d, k: n, a: sb, lda: keys, b: v + kh, ldb: kvs,
                       c: out + r0 * qs + h * d, ldc: qs)
    }
    if slots >= pool.threads {
        pool.forEach(items: shape.heads * bands) { begin, end, thread in
            for task in begin..<end { run(task, thread) }
        }
    } else {
        // One band's scores at a time; sgemm still on one thread, as on the pool: OpenBLAS on
        // several threads gives other bits, and a row must not depend on how many rows share its pass.
        withSingleThreadedBLAS { for task in 0..<shape.heads * bands { run(task, 0) } }
    }
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
