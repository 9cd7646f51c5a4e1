// Grouped-query causal attention for training: B sequences of T positions each,
// every position attending to positions [0, t] of its own sequence, in memory linear
// in T (FlashAttention-2's arithmetic on the CPU). The forward runs the inference
// attention's bands (64 query rows) over blocks of 256 keys with a running softmax
// (`attendBand`) and keeps, per row and head, only the log-sum-exp of its scores; the
// backward recomputes each band × block of probabilities from it. One work item per
// (sequence, KV head), its heads, bands and blocks in a fixed order on one thread, so
// key and value gradients shared by a query group always sum the same way, whatever
// the thread count.

import CKernels
import Foundation

/// Floats of per-thread scratch the training attention (forward and backward) needs for `threads`
/// threads: one band's scores and probability gradients, its values product and row state.
public func attentionTrainingScratch(threads: Int, seqLen: Int, shape: AttentionShape) -> Int {
    max(1, threads) * attentionTrainingSlot(seqLen: seqLen, shape)
}

func attentionTrainingSlot(seqLen: Int, _ shape: AttentionShape) -> Int {
    attentionBandRows * (2 * min(attentionKeyBlock, seqLen) + shape.headDim + 4)
}

/// out: (B, T, heads·d); lse: (B, T, heads), each row's log Σ exp(score), kept for the backward;
/// q: (B, T, heads·d) after RoPE; k, v: (B, T, kvHeads·d) (k after RoPE); scratch:
/// `attentionTrainingScratch` floats (`scratchCount`).
public func attentionForward(_ out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                             _ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
                             scratch: UnsafeMutablePointer<Float>, scratchCount: Int,
                             batch: Int, seqLen: Int, shape: AttentionShape) {
    let d = shape.headDim, T = seqLen, H = shape.heads, G = shape.kvHeads
    let qs = H * d, kvs = G * d, group = H / G, band = attentionBandRows
    let slot = attentionTrainingSlot(seqLen: T, shape), kb = min(attentionKeyBlock, T)
    precondition(scratchCount >= slot, "attentionForward: scratch holds \(scratchCount) floats, needs \(slot)")
    forEachItem(batch * G, scratchParts: scratchCount / slot) { item, part in
        let b = item / G, kh = (item % G) * d
        let kbase = k + b * T * kvs + kh, vbase = v + b * T * kvs + kh
        let m = scratch + part * slot, l = m + band, sc = l + band
        for h in (item % G) * group ..< (item % G + 1) * group {
            for r0 in stride(from: 0, to: T, by: band) {
                let rows = min(band, T - r0), row = b * T + r0
                let o = out + row * qs + h * d
                m.update(repeating: -.infinity, count: rows)
                l.update(repeating: 0, count: rows)
                for i in 0..<rows { (o + i * qs).update(repeating: 0, count: d) }
                attendBand(o, q + row * qs + h * d, ld: qs, kbase, vbase, ldk: kvs, first: 0, position: r0, rows: rows,
                           keys: 0..<r0 + rows, m: m, l: l, mls: 1, scratch: sc, ldScores: kb, headDim: d)
                for i in 0..<rows {
                    let inv = 1 / l[i], oi = o + i * qs
                    for t in 0..<d { oi[t] *= inv }
                    lse[(row + i) * H + h] = m[i] + logf(l[i])
                }
            }
        }
    }
}

/// dq: (B, T, heads·d), written; dk, dv: (B, T, kvHeads·d), written; dout: (B, T, heads·d);
/// out, lse, q, k, v: as the forward left and saw them; scratch: `attentionTrainingScratch` floats.
/// Per band × key block: P = exp(S − lse), dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dO ⊙ O)),
/// dV += Pᵀ·dO, dQ += s·dS·K, dK += s·dSᵀ·Q.
public func attentionBackward(_ dq: UnsafeMutablePointer<Float>, _ dk: UnsafeMutablePointer<Float>,
                              _ dv: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>,
                              out: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                              _ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
                              scratch: UnsafeMutablePointer<Float>, scratchCount: Int,
                              batch: Int, seqLen: Int, shape: AttentionShape) {
    let d = shape.headDim, T = seqLen, H = shape.heads, G = shape.kvHeads
    let qs = H * d, kvs = G * d, group = H / G, band = attentionBandRows, block = attentionKeyBlock
    let scale = 1 / Float(d).squareRoot()
    let slot = attentionTrainingSlot(seqLen: T, shape), kb = min(block, T)
    precondition(scratchCount >= slot, "attentionBackward: scratch holds \(scratchCount) floats, needs \(slot)")
    forEachItem(batch * G, scratchParts: scratchCount / slot) { item, part in
        let b = item / G, kh = (item % G) * d
        let kbase = k + b * T * kvs + kh, vbase = v + b * T * kvs + kh
        let dkb = dk + b * T * kvs + kh, dvb = dv + b * T * kvs + kh
        let delta = scratch + part * slot, sc = delta + band, dp = sc + band * kb
        for t in 0..<T {
            (dkb + t * kvs).update(repeating: 0, count: d)
            (dvb + t * kvs).update(repeating: 0, count: d)
        }
        // Heads of the group, then bands, then key blocks, in a fixed order: dK and dV always sum the same way.
        for h in (item % G) * group ..< (item % G + 1) * group {
            for r0 in stride(from: 0, to: T, by: band) {
                let rows = min(band, T - r0), row = b * T + r0
                let qb = q + row * qs + h * d, gb = dout + row * qs + h * d, dqb = dq + row * qs + h * d
                let ob = out + row * qs + h * d
                for i in 0..<rows {
                    var dot: Float = 0
                    for t in 0..<d { dot += gb[i * qs + t] * ob[i * qs + t] }
                    delta[i] = dot
                    (dqb + i * qs).update(repeating: 0, count: d)
                }
                var kb0 = 0
                while kb0 < r0 + rows {
                    let kb1 = min(kb0 + block, r0 + rows), nb = kb1 - kb0
                    let kp = kbase + kb0 * kvs, vp = vbase + kb0 * kvs
                    Matmul.sgemmNT(m: rows, n: nb, k: d, alpha: scale, a: qb, lda: qs, b: kp, ldb: kvs, c: sc, ldc: kb)
                    Matmul.sgemmNT(m: rows, n: nb, k: d, a: gb, lda: qs, b: vp, ldb: kvs, c: dp, ldc: kb)
                    ck_attention_backward_rows(sc, dp, Int32(rows), Int32(nb), Int32(kb), Int32(r0 - kb0),
                                               lse + row * H + h, Int32(H), delta)
                    sgemmTN(m: nb, n: d, k: rows, a: sc, lda: kb, b: gb, ldb: qs, beta: 1, c: dvb + kb0 * kvs, ldc: kvs)
                    Matmul.sgemmNN(m: rows, n: d, k: nb, alpha: scale, a: dp, lda: kb, b: kp, ldb: kvs, beta: 1,
                                   c: dqb, ldc: qs)
                    sgemmTN(m: nb, n: d, k: rows, alpha: scale, a: dp, lda: kb, b: qb, ldb: qs, beta: 1,
                            c: dkb + kb0 * kvs, ldc: kvs)
                    kb0 = kb1
                }
            }
        }
    }
}
