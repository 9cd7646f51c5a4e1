// Grouped-query causal attention for training: B sequences of T positions each,
// every position attending to positions [0, t] of its own sequence. The forward
// keeps the softmax probabilities for the backward pass. Heads run one after
// another (sgemm on the OpenBLAS threads, softmax rows on the training threads),
// so key/value gradients shared by a query group always sum in the same order.

import Foundation

/// Rows per causal chunk: chunk c of query rows needs keys [0, (c+1)·chunk) only.
let attentionChunk = 64

/// out: (B, T, heads·d); probs: (B, heads, T, T), kept for the backward pass (entries above the
/// diagonal are 0); q: (B, T, heads·d) after RoPE; k, v: (B, T, kvHeads·d) (k after RoPE).
public func attentionForward(_ out: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>,
                             _ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
                             batch: Int, seqLen: Int, shape: AttentionShape) {
    let d = shape.headDim, T = seqLen, H = shape.heads, G = shape.kvHeads
    let qs = H * d, kvs = G * d, group = H / G
    let scale = 1 / Float(d).squareRoot()
    // One work item per (sequence, kv head): its query heads, all rows. Items share nothing.
    forEachItem(batch * G, scratchParts: Int.max) { item, _ in
        let b = item / G, kh = (item % G) * d
        let kb = k + b * T * kvs + kh, vb = v + b * T * kvs + kh
        for h in (item % G) * group ..< (item % G + 1) * group {
            let p = probs + (b * H + h) * T * T
            let qb = q + b * T * qs + h * d, ob = out + b * T * qs + h * d
            for r0 in stride(from: 0, to: T, by: attentionChunk) {
                let r1 = min(r0 + attentionChunk, T), rows = r1 - r0
                Matmul.sgemmNT(m: rows, n: r1, k: d, alpha: scale, a: qb + r0 * qs, lda: qs, b: kb, ldb: kvs,
                               c: p + r0 * T, ldc: T)
                for i in r0..<r1 {
                    let row = p + i * T, n = i + 1
                    var m = -Float.infinity
                    for j in 0..<n { m = max(m, row[j]) }
                    var sum: Float = 0
                    for j in 0..<n { let e = expf(row[j] - m); row[j] = e; sum += e }
                    let inv = 1 / sum
                    for j in 0..<n { row[j] *= inv }
                    for j in n..<T { row[j] = 0 }
                }
                Matmul.sgemmNN(m: rows, n: d, k: r1, a: p + r0 * T, lda: T, b: vb, ldb: kvs, c: ob + r0 * qs, ldc: qs)
            }
        }
    }
}

/// Floats of scratch `attentionBackward` needs for `threads` threads.
public func attentionBackwardScratch(seqLen: Int, threads: Int) -> Int { max(1, threads) * attentionChunk * seqLen }

/// dq: (B, T, heads·d), written; dk, dv: (B, T, kvHeads·d), written;
/// dscores: scratch of `attentionBackwardScratch` floats (`scratchCount`); dout: (B, T, heads·d);
/// probs, q, k, v: as the forward saw and kept them.
///   dP = dO·Vᵀ, dV = Σ_group Pᵀ·dO, dS = P ⊙ (dP − rowsum(P ⊙ dP)), dQ = s·dS·K, dK = Σ_group s·dSᵀ·Q
public func attentionBackward(_ dq: UnsafeMutablePointer<Float>, _ dk: UnsafeMutablePointer<Float>,
                              _ dv: UnsafeMutablePointer<Float>, dscores: UnsafeMutablePointer<Float>, scratchCount: Int,
                              _ dout: UnsafePointer<Float>, probs: UnsafePointer<Float>,
                              _ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
                              batch: Int, seqLen: Int, shape: AttentionShape) {
    let d = shape.headDim, T = seqLen, H = shape.heads, G = shape.kvHeads
    let qs = H * d, kvs = G * d, group = H / G
    let scale = 1 / Float(d).squareRoot()
    let perPart = attentionChunk * T
    precondition(scratchCount >= perPart, "attentionBackward: scratch holds \(scratchCount) floats, needs \(perPart)")
    forEachItem(batch * G, scratchParts: scratchCount / perPart) { item, part in
        let b = item / G, kh = (item % G) * d
        let kb = k + b * T * kvs + kh, vb = v + b * T * kvs + kh
        let dkb = dk + b * T * kvs + kh, dvb = dv + b * T * kvs + kh
        let ds = dscores + part * perPart
        for t in 0..<T {
            (dkb + t * kvs).update(repeating: 0, count: d)
            (dvb + t * kvs).update(repeating: 0, count: d)
        }
        // Heads of the group, then chunks, in a fixed order: dK and dV always sum the same way.
        for h in (item % G) * group ..< (item % G + 1) * group {
            let p = probs + (b * H + h) * T * T
            let qb = q + b * T * qs + h * d, gb = dout + b * T * qs + h * d, dqb = dq + b * T * qs + h * d
            for r0 in stride(from: 0, to: T, by: attentionChunk) {
                let r1 = min(r0 + attentionChunk, T), rows = r1 - r0
                let pc = p + r0 * T
                Matmul.sgemmNT(m: rows, n: r1, k: d, a: gb + r0 * qs, lda: qs, b: vb, ldb: kvs, c: ds, ldc: T)
                sgemmTN(m: r1, n: d, k: rows, a: pc, lda: T, b: gb + r0 * qs, ldb: qs, beta: 1, c: dvb, ldc: kvs)
                for i in 0..<rows {
                    let pr = pc + i * T, dr = ds + i * T, n = r0 + i + 1
                    var dot: Float = 0
                    for j in 0..<n { dot += pr[j] * dr[j] }
                    for j in 0..<n { dr[j] = pr[j] * (dr[j] - dot) }
                    for j in n..<r1 { dr[j] = 0 }
                }
                Matmul.sgemmNN(m: rows, n: d, k: r1, alpha: scale, a: ds, lda: T, b: kb, ldb: kvs,
                               c: dqb + r0 * qs, ldc: qs)
                sgemmTN(m: r1, n: d, k: rows, alpha: scale, a: ds, lda: T, b: qb + r0 * qs, ldb: qs, beta: 1,
                        c: dkb, ldc: kvs)
            }
        }
    }
}
