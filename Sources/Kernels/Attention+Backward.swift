// Grouped-query causal attention for training: B sequences of T positions each,
// every position attending to positions [0, t] of its own sequence. The forward
// keeps the softmax probabilities for the backward pass. Heads run one after
// another (sgemm on the OpenBLAS threads, softmax rows on the training threads),
// so key/value gradients shared by a query group always sum in the same order.

import Foundation

/// out: (B, T, heads·d); probs: (B, heads, T, T), kept for the backward pass (entries above the
/// diagonal are 0); q: (B, T, heads·d) after RoPE; k, v: (B, T, kvHeads·d) (k after RoPE).
public func attentionForward(_ out: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>,
                             _ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
                             batch: Int, seqLen: Int, shape: AttentionShape) {
    let d = shape.headDim, T = seqLen, H = shape.heads
    let qs = H * d, kvs = shape.kvHeads * d, group = H / shape.kvHeads
    let scale = 1 / Float(d).squareRoot()
    for b in 0..<batch {
        let qb = q + b * T * qs, kb = k + b * T * kvs, vb = v + b * T * kvs, ob = out + b * T * qs
        for h in 0..<H {
            let kh = (h / group) * d
            let p = probs + (b * H + h) * T * T
            Matmul.sgemmNT(m: T, n: T, k: d, alpha: scale, a: qb + h * d, lda: qs, b: kb + kh, ldb: kvs,
                           c: p, ldc: T)
            parallelRows(T, minRowsPerThread: 32) { range in
                for i in range {
                    let row = p + i * T, n = i + 1
                    var m = -Float.infinity
                    for j in 0..<n { m = max(m, row[j]) }
                    var sum: Float = 0
                    for j in 0..<n { let e = expf(row[j] - m); row[j] = e; sum += e }
                    let inv = 1 / sum
                    for j in 0..<n { row[j] *= inv }
                    for j in n..<T { row[j] = 0 }
                }
            }
            Matmul.sgemmNN(m: T, n: d, k: T, a: p, lda: T, b: vb + kh, ldb: kvs, c: ob + h * d, ldc: qs)
        }
    }
}

/// dq: (B, T, heads·d), written; dk, dv: (B, T, kvHeads·d), written;
/// dscores: scratch of T·T floats; dout: (B, T, heads·d); probs, q, k, v: as the forward saw and kept them.
///   dP = dO·Vᵀ, dV = Σ_group Pᵀ·dO, dS = P ⊙ (dP − rowsum(P ⊙ dP)), dQ = s·dS·K, dK = Σ_group s·dSᵀ·Q
public func attentionBackward(_ dq: UnsafeMutablePointer<Float>, _ dk: UnsafeMutablePointer<Float>,
                              _ dv: UnsafeMutablePointer<Float>, dscores: UnsafeMutablePointer<Float>,
                              _ dout: UnsafePointer<Float>, probs: UnsafePointer<Float>,
                              _ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
                              batch: Int, seqLen: Int, shape: AttentionShape) {
    let d = shape.headDim, T = seqLen, H = shape.heads
    let qs = H * d, kvs = shape.kvHeads * d, group = H / shape.kvHeads
    let scale = 1 / Float(d).squareRoot()
    dk.update(repeating: 0, count: batch * T * kvs)
    dv.update(repeating: 0, count: batch * T * kvs)
    for b in 0..<batch {
        let qb = q + b * T * qs, kb = k + b * T * kvs, vb = v + b * T * kvs, gb = dout + b * T * qs
        let dqb = dq + b * T * qs, dkb = dk + b * T * kvs, dvb = dv + b * T * kvs
        for h in 0..<H {
            let kh = (h / group) * d
            let p = probs + (b * H + h) * T * T
            Matmul.sgemmNT(m: T, n: T, k: d, a: gb + h * d, lda: qs, b: vb + kh, ldb: kvs, c: dscores, ldc: T)
            sgemmTN(m: T, n: d, k: T, a: p, lda: T, b: gb + h * d, ldb: qs, beta: 1, c: dvb + kh, ldc: kvs)
            parallelRows(T, minRowsPerThread: 32) { range in
                for i in range {
                    let pr = p + i * T, dr = dscores + i * T, n = i + 1
                    var dot: Float = 0
                    for j in 0..<n { dot += pr[j] * dr[j] }
                    for j in 0..<n { dr[j] = pr[j] * (dr[j] - dot) }
                    for j in n..<T { dr[j] = 0 }
                }
            }
            Matmul.sgemmNN(m: T, n: d, k: T, alpha: scale, a: dscores, lda: T, b: kb + kh, ldb: kvs,
                           c: dqb + h * d, ldc: qs)
            sgemmTN(m: T, n: d, k: T, alpha: scale, a: dscores, lda: T, b: qb + h * d, ldb: qs, beta: 1,
                    c: dkb + kh, ldc: kvs)
        }
    }
}
