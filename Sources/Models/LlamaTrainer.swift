// Forward and backward of a TrainableLlama over one batch of B sequences × T
// positions: per-block `forward(saving:)` / `backward`, the head with the
// cross-entropy loss, gradients accumulated into the model's gradient buffer.
// What each block keeps for its backward pass is a named, sized table
// (BlockActivations) so a planner can keep, offload or recompute it; here two
// policies exist: keep everything, or keep only each block's input and
// recompute the rest during the backward pass. Both give bit-identical gradients.
// Not here: the optimizer step, clipping, data (Runtime).

import Foundation
import Kernels
import Tensors

/// What one block saves for its backward pass, carved from one allocation.
public struct BlockActivations {
    /// (name, floats) of every saved tensor at batch × seqLen, in allocation order.
    public static func table(config c: LlamaConfig, batch: Int, seqLen: Int) -> [(name: String, floats: Int)] {
        let n = batch * seqLen
        return [
            ("attn_in", n * c.dim),          // block input (the residual stream)
            ("attn_norm", n * c.dim),        // RMSNorm output feeding q, k, v
            ("attn_rstd", n),                // 1/rms per row of attn_in
            ("q", n * c.qDim),               // after RoPE
            ("k", n * c.kvDim),              // after RoPE
            ("v", n * c.kvDim),
            ("att_probs", batch * c.heads * seqLen * seqLen),
            ("att_out", n * c.qDim),         // attention output, before attn_output
            ("ffn_in", n * c.dim),           // residual after attention
            ("ffn_norm", n * c.dim),
            ("ffn_rstd", n),
            ("gate", n * c.ffnDim),
            ("up", n * c.ffnDim),
            ("swiglu", n * c.ffnDim),        // silu(gate) · up, feeding ffn_down
        ]
    }

    public static func floats(config: LlamaConfig, batch: Int, seqLen: Int) -> Int {
        table(config: config, batch: batch, seqLen: seqLen).reduce(0) { $0 + ($1.floats + 15) / 16 * 16 }
    }

    public var attnIn, attnNorm, attnRstd, q, k, v, attProbs, attOut: UnsafeMutablePointer<Float>
    public var ffnIn, ffnNorm, ffnRstd, gate, up, swiglu: UnsafeMutablePointer<Float>

    /// Views into `base`, which must hold `floats(config:batch:seqLen:)` floats.
    public init(carving base: UnsafeMutablePointer<Float>, config: LlamaConfig, batch: Int, seqLen: Int) {
        var p: [UnsafeMutablePointer<Float>] = [], offset = 0
        for (_, floats) in Self.table(config: config, batch: batch, seqLen: seqLen) {
            p.append(base + offset)
            offset += (floats + 15) / 16 * 16
        }
        (attnIn, attnNorm, attnRstd, q, k, v, attProbs) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6])
        (attOut, ffnIn, ffnNorm, ffnRstd, gate, up, swiglu) = (p[7], p[8], p[9], p[10], p[11], p[12], p[13])
    }
}

public enum ActivationPolicy: String, Sendable, CaseIterable {
    /// Every block keeps all its activations from forward to backward.
    case keepAll = "keep-all"
    /// Every block keeps only its input; the backward pass recomputes the rest.
    case recomputeAll = "recompute-all"
}

public final class LlamaTrainer {
    public let model: TrainableLlama
    public let batch: Int
    public let seqLen: Int
    public let policy: ActivationPolicy
    /// False when an executor owns the activations (`init(..., ownsActivations: false)`):
    /// the whole-model calls (`forwardBackward`, `loss`, `logits`) then throw.
    public let ownsActivations: Bool
    let rope: RopeTable
    let halfSplit: Bool
    let shape: AttentionShape

    // Activations: one allocation; per block (keep-all) or one shared set plus block inputs (recompute).
    let activationBuffer: FloatBuffer
    var blockActs: [BlockActivations]
    var blockInputs: [UnsafeMutablePointer<Float>]
    let final: UnsafeMutablePointer<Float>          // (N, dim) last block's output
    let finalNorm: UnsafeMutablePointer<Float>      // (N, dim)
    let finalRstd: UnsafeMutablePointer<Float>      // (N)
    let logits: UnsafeMutablePointer<Float>         // (N, vocab): logits → probs → dlogits in place
    let losses: UnsafeMutablePointer<Float>         // (N)

    // Backward scratch, shared by all blocks: one allocation.
    let scratchBuffer: FloatBuffer
    let dres, dxn, dq, dk, dv, datt, dgate, dup, dswiglu, dscores, recomputeOut: UnsafeMutablePointer<Float>
    /// Attention backward scratch: enough for 16 threads (more are not used for attention).
    let dscoresCount: Int
    var positions: [Int32]
    var tokenBuffer: [Int32]
    var targetBuffer: [Int32]

    /// When true, seconds spent per kernel kind accumulate in `profile` (a cost model's measurements).
    public var profiling = false
    public private(set) var profile: [String: Double] = [:]
    public func resetProfile() { profile = [:] }

    @inline(__always) func timed(_ name: String, _ body: () -> Void) {
        guard profiling else { body(); return }
        let t0 = monotonicSeconds()
        body()
        profile[name, default: 0] += monotonicSeconds() - t0
    }

    /// Bytes of activations and scratch this trainer holds (parameters not included).
    public var activationBytes: Int { activationBuffer.bytes + scratchBuffer.bytes }

    /// - Parameter ownsActivations: false gives a trainer that holds no block or head
    ///   activations, only the backward scratch and per-row losses: an executor
    ///   allocates them under its budget and calls the per-stage hooks below.
    public init(model: TrainableLlama, batch: Int, seqLen: Int, policy: ActivationPolicy = .keepAll,
                ownsActivations: Bool = true) throws {
        let c = model.config
        guard batch > 0, seqLen > 0 else { throw OffloadError("[train] batch and sequence length must be positive") }
        guard seqLen <= c.contextLength else {
            throw OffloadError("[train] sequence length \(seqLen) exceeds the model's context (\(c.contextLength))")
        }
        self.model = model; self.batch = batch; self.seqLen = seqLen; self.policy = policy
        self.ownsActivations = ownsActivations
        rope = RopeTable(headDim: c.headDim, maxPositions: seqLen, theta: c.ropeTheta)
        halfSplit = model.ropeStyle == .halfSplit
        shape = AttentionShape(heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)
        let n = batch * seqLen
        func pad(_ x: Int) -> Int { (x + 15) / 16 * 16 }
        let perBlock = BlockActivations.floats(config: c, batch: batch, seqLen: seqLen)
        let blockFloats = !ownsActivations ? 0
            : policy == .keepAll ? c.layers * perBlock : perBlock + c.layers * pad(n * c.dim)
        let headFloats = ownsActivations ? 2 * pad(n * c.dim) + 2 * pad(n) + pad(n * c.vocabSize) : pad(n)
        activationBuffer = FloatBuffer(count: blockFloats + headFloats)
        var offset = 0
        func take(_ floats: Int, from base: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
            defer { offset += pad(floats) }
            return base + offset
        }
        let a = activationBuffer.base
        switch policy {
        case _ where !ownsActivations:
            blockActs = []; blockInputs = []
        case .keepAll:
            blockActs = (0..<c.layers).map { _ in
                BlockActivations(carving: take(perBlock, from: a), config: c, batch: batch, seqLen: seqLen)
            }
            blockInputs = blockActs.map(\.attnIn)
        case .recomputeAll:
            let shared = BlockActivations(carving: take(perBlock, from: a), config: c, batch: batch, seqLen: seqLen)
            blockInputs = (0..<c.layers).map { _ in take(n * c.dim, from: a) }
            blockActs = blockInputs.map { var s = shared; s.attnIn = $0; return s }
        }
        if ownsActivations {
            final = take(n * c.dim, from: a); finalNorm = take(n * c.dim, from: a)
            finalRstd = take(n, from: a); losses = take(n, from: a)
            logits = take(n * c.vocabSize, from: a)
        } else {
            losses = take(n, from: a)
            (final, finalNorm, finalRstd, logits) = (losses, losses, losses, losses)  // never used
        }

        dscoresCount = attentionBackwardScratch(seqLen: seqLen, threads: 16)
        let sizes = [n * c.dim, n * c.dim, n * c.qDim, n * c.kvDim, n * c.kvDim, n * c.qDim,
                     n * c.ffnDim, n * c.ffnDim, n * c.ffnDim, dscoresCount,
                     policy == .recomputeAll ? n * c.dim : 0]
        let scratch = FloatBuffer(count: sizes.reduce(0) { $0 + pad($1) })
        scratchBuffer = scratch
        offset = 0
        let s = sizes.map { take($0, from: scratch.base) }
        (dres, dxn, dq, dk, dv, datt) = (s[0], s[1], s[2], s[3], s[4], s[5])
        (dgate, dup, dswiglu, dscores, recomputeOut) = (s[6], s[7], s[8], s[9], s[10])
        positions = (0..<n).map { Int32($0 % seqLen) }  // every row of the batch starts at position 0
        tokenBuffer = [Int32](repeating: 0, count: n)
        targetBuffer = [Int32](repeating: 0, count: n)
    }

    var n: Int { batch * seqLen }

    /// Where block `l` keeps its activations (and reads its input, `attnIn`) in this trainer.
    public func activations(ofBlock l: Int) -> BlockActivations { blockActs[l] }

    // MARK: one block

    /// Block `l`'s forward from `acts.attnIn`, writing `output` (N, dim) and every activation in `acts`.
    /// Calling it again on the same input recomputes the same activations bit for bit.
    public func blockForward(_ l: Int, output: UnsafeMutablePointer<Float>, saving acts: BlockActivations) {
        let c = model.config, n = self.n, w = model.block(l, in: model.weights.base)
        timed("rmsnorm") {
            rmsnormForward(acts.attnNorm, rstd: acts.attnRstd, acts.attnIn, w.attnNorm, rows: n, dim: c.dim, eps: c.rmsEps)
        }
        timed("matmul fwd") { matmulForward(acts.q, acts.attnNorm, w.q, n: n, inDim: c.dim, outDim: c.qDim) }
        timed("matmul fwd") { matmulForward(acts.k, acts.attnNorm, w.k, n: n, inDim: c.dim, outDim: c.kvDim) }
        timed("matmul fwd") { matmulForward(acts.v, acts.attnNorm, w.v, n: n, inDim: c.dim, outDim: c.kvDim) }
        timed("rope") { positions.withUnsafeBufferPointer { pos in
            ropeForward(acts.q, positions: pos.baseAddress!, rows: n, heads: c.heads, table: rope, halfSplit: halfSplit)
            ropeForward(acts.k, positions: pos.baseAddress!, rows: n, heads: c.kvHeads, table: rope, halfSplit: halfSplit)
        } }
        timed("attention fwd") {
            attentionForward(acts.attOut, probs: acts.attProbs, acts.q, acts.k, acts.v, batch: batch, seqLen: seqLen, shape: shape)
        }
        acts.ffnIn.update(from: acts.attnIn, count: n * c.dim)
        timed("matmul fwd") {
            matmulForward(acts.ffnIn, acts.attOut, w.o, n: n, inDim: c.qDim, outDim: c.dim, accumulate: true)
        }
        timed("rmsnorm") {
            rmsnormForward(acts.ffnNorm, rstd: acts.ffnRstd, acts.ffnIn, w.ffnNorm, rows: n, dim: c.dim, eps: c.rmsEps)
        }
        timed("matmul fwd") { matmulForward(acts.gate, acts.ffnNorm, w.gate, n: n, inDim: c.dim, outDim: c.ffnDim) }
        timed("matmul fwd") { matmulForward(acts.up, acts.ffnNorm, w.up, n: n, inDim: c.dim, outDim: c.ffnDim) }
        timed("swiglu") { swigluForwardParallel(acts.swiglu, acts.gate, acts.up, count: n * c.ffnDim) }
        output.update(from: acts.ffnIn, count: n * c.dim)
        timed("matmul fwd") {
            matmulForward(output, acts.swiglu, w.down, n: n, inDim: c.ffnDim, outDim: c.dim, accumulate: true)
        }
    }

    /// Block `l`'s backward. `dresidual` (N, dim) holds ∂L/∂output on entry and ∂L/∂input on exit;
    /// the block's parameter gradients are added to the model's gradient buffer.
    public func blockBackward(_ l: Int, dresidual: UnsafeMutablePointer<Float>, acts: BlockActivations) {
        let c = model.config, n = self.n
        let w = model.block(l, in: model.weights.base), g = model.block(l, in: model.gradients.base)
        // MLP: out = ffn_in + swiglu · downᵀ
        timed("matmul bwd") {
            matmulBackward(dswiglu, g.down, dresidual, acts.swiglu, w.down, n: n, inDim: c.ffnDim, outDim: c.dim)
        }
        timed("swiglu") { swigluBackward(dgate, dup, dswiglu, acts.gate, acts.up, count: n * c.ffnDim) }
        timed("matmul bwd") {
            matmulBackward(dxn, g.gate, dgate, acts.ffnNorm, w.gate, n: n, inDim: c.dim, outDim: c.ffnDim)
        }
        timed("matmul bwd") {
            matmulBackward(dxn, g.up, dup, acts.ffnNorm, w.up, n: n, inDim: c.dim, outDim: c.ffnDim, accumulateInput: true)
        }
        timed("rmsnorm") {
            rmsnormBackward(dresidual, g.ffnNorm, dxn, acts.ffnIn, w.ffnNorm, rstd: acts.ffnRstd, rows: n, dim: c.dim)
        }
        // Attention: ffn_in = attn_in + att_out · oᵀ
        timed("matmul bwd") { matmulBackward(datt, g.o, dresidual, acts.attOut, w.o, n: n, inDim: c.qDim, outDim: c.dim) }
        timed("attention bwd") {
            attentionBackward(dq, dk, dv, dscores: dscores, scratchCount: dscoresCount, datt, probs: acts.attProbs, acts.q, acts.k, acts.v,
                              batch: batch, seqLen: seqLen, shape: shape)
        }
        timed("rope") { positions.withUnsafeBufferPointer { pos in
            ropeBackward(dq, positions: pos.baseAddress!, rows: n, heads: c.heads, table: rope, halfSplit: halfSplit)
            ropeBackward(dk, positions: pos.baseAddress!, rows: n, heads: c.kvHeads, table: rope, halfSplit: halfSplit)
        } }
        timed("matmul bwd") { matmulBackward(dxn, g.q, dq, acts.attnNorm, w.q, n: n, inDim: c.dim, outDim: c.qDim) }
        timed("matmul bwd") {
            matmulBackward(dxn, g.k, dk, acts.attnNorm, w.k, n: n, inDim: c.dim, outDim: c.kvDim, accumulateInput: true)
        }
        timed("matmul bwd") {
            matmulBackward(dxn, g.v, dv, acts.attnNorm, w.v, n: n, inDim: c.dim, outDim: c.kvDim, accumulateInput: true)
        }
        timed("rmsnorm") {
            rmsnormBackward(dresidual, g.attnNorm, dxn, acts.attnIn, w.attnNorm, rstd: acts.attnRstd, rows: n, dim: c.dim)
        }
    }

    // MARK: whole model

    private func load(_ tokens: [Int], into buffer: inout [Int32], what: String) throws {
        let c = model.config
        guard tokens.count == n else {
            throw OffloadError("[train] \(what): \(tokens.count) token ids for a batch of \(batch) × \(seqLen) = \(n)")
        }
        for (i, t) in tokens.enumerated() {
            guard t >= 0, t < c.vocabSize else {
                throw OffloadError("[train] \(what): token id \(t) at \(i) is outside the vocabulary (0..<\(c.vocabSize))")
            }
            buffer[i] = Int32(t)
        }
    }

    private var headWeight: UnsafeMutablePointer<Float> {
        model.pointer(model.config.tiedEmbeddings ? "token_embd.weight" : "output.weight", in: model.weights.base)
    }
    private var headGradient: UnsafeMutablePointer<Float> {
        model.pointer(model.config.tiedEmbeddings ? "token_embd.weight" : "output.weight", in: model.gradients.base)
    }

    /// Embedding, every block, final norm and head: logits (N, vocab) in `logits`.
    private func forwardToLogits() {
        let c = model.config, n = self.n
        TrainingThreads.claimBLAS()
        tokenBuffer.withUnsafeBufferPointer { t in
            Kernels.embeddingForward(blockInputs[0], model.pointer("token_embd.weight", in: model.weights.base),
                             t.baseAddress!, n: n, dim: c.dim)
        }
        for l in 0..<c.layers {
            blockForward(l, output: l + 1 < c.layers ? blockInputs[l + 1] : final, saving: blockActs[l])
        }
        timed("rmsnorm") {
            rmsnormForward(finalNorm, rstd: finalRstd, final, model.pointer("output_norm.weight", in: model.weights.base),
                           rows: n, dim: c.dim, eps: c.rmsEps)
        }
        timed("matmul fwd") { matmulForward(logits, finalNorm, headWeight, n: n, inDim: c.dim, outDim: c.vocabSize) }
    }

    /// Mean of the per-row losses, summed in row order.
    private func meanLoss() -> Float {
        var sum = 0.0
        for i in 0..<n { sum += Double(losses[i]) }
        return Float(sum / Double(n))
    }

    /// Mean cross-entropy of predicting `targets` from `inputs` (both B·T ids, row-major), no gradients.
    public func loss(inputs: [Int], targets: [Int]) throws -> Float {
        try needOwnActivations()
        try load(inputs, into: &tokenBuffer, what: "inputs")
        try load(targets, into: &targetBuffer, what: "targets")
        forwardToLogits()
        targetBuffer.withUnsafeBufferPointer { t in
            crossEntropyForward(losses, probs: logits, logits, targets: t.baseAddress!, n: n, vocab: model.config.vocabSize)
        }
        return meanLoss()
    }

    /// Logits (B·T, vocab) for `inputs`.
    public func logits(inputs: [Int]) throws -> [Float] {
        try needOwnActivations()
        try load(inputs, into: &tokenBuffer, what: "inputs")
        forwardToLogits()
        return Array(UnsafeBufferPointer(start: logits, count: n * model.config.vocabSize))
    }

    /// Forward and backward for one batch: returns the mean loss over its B·T targets and ADDS
    /// `gradientScale` × ∂(mean loss)/∂θ to the model's gradients (scale 1/k when accumulating k micro-batches).
    @discardableResult
    public func forwardBackward(inputs: [Int], targets: [Int], gradientScale: Float = 1) throws -> Float {
        let c = model.config, n = self.n
        try needOwnActivations()
        try load(inputs, into: &tokenBuffer, what: "inputs")
        try load(targets, into: &targetBuffer, what: "targets")
        forwardToLogits()
        timed("cross-entropy") {
            targetBuffer.withUnsafeBufferPointer { t in
                crossEntropyForward(losses, probs: logits, logits, targets: t.baseAddress!, n: n, vocab: c.vocabSize)
                crossEntropyBackward(logits, logits, targets: t.baseAddress!, dloss: gradientScale / Float(n),
                                     n: n, vocab: c.vocabSize)
            }
        }
        let loss = meanLoss()
        // Head: logits = final_norm · headᵀ (the embedding when tied: it gets this gradient and the lookup's).
        timed("matmul bwd") {
            matmulBackward(dxn, headGradient, logits, finalNorm, headWeight, n: n, inDim: c.dim, outDim: c.vocabSize)
        }
        dres.update(repeating: 0, count: n * c.dim)
        timed("rmsnorm") {
            rmsnormBackward(dres, model.pointer("output_norm.weight", in: model.gradients.base), dxn, final,
                            model.pointer("output_norm.weight", in: model.weights.base), rstd: finalRstd,
                            rows: n, dim: c.dim)
        }
        for l in stride(from: c.layers - 1, through: 0, by: -1) {
            if policy == .recomputeAll { blockForward(l, output: recomputeOut, saving: blockActs[l]) }
            blockBackward(l, dresidual: dres, acts: blockActs[l])
        }
        tokenBuffer.withUnsafeBufferPointer { t in
            Kernels.embeddingBackward(model.pointer("token_embd.weight", in: model.gradients.base), dres, t.baseAddress!,
                              n: n, dim: c.dim)
        }
        return loss
    }
}

// MARK: per-stage hooks for an executor
// The same kernels, in the same order, as `forwardBackward`: an executor calling
// embeddingForward, blockForward for every block, headForward, headBackward,
// blockBackward for every block in reverse and embeddingBackward gets the same
// loss and gradients bit for bit, whichever buffers it hands in.
extension LlamaTrainer {
    private func needOwnActivations() throws {
        guard ownsActivations else {
            throw OffloadError("[train] this trainer's activations belong to an executor; run the step through it")
        }
    }

    /// Loads one batch's token ids (B·T each) for the per-stage hooks.
    public func setBatch(inputs: [Int], targets: [Int]) throws {
        try load(inputs, into: &tokenBuffer, what: "inputs")
        try load(targets, into: &targetBuffer, what: "targets")
    }

    /// Embedding lookup of the loaded inputs into `output` (N, dim): block 0's input.
    public func embeddingForward(output: UnsafeMutablePointer<Float>) {
        TrainingThreads.claimBLAS()
        tokenBuffer.withUnsafeBufferPointer { t in
            Kernels.embeddingForward(output, model.pointer("token_embd.weight", in: model.weights.base),
                             t.baseAddress!, n: n, dim: model.config.dim)
        }
    }

    /// Final norm, head projection and softmax: `norm` (N, dim), `rstd` (N) and `probs` (N, vocab)
    /// kept for `headBackward`; returns the mean loss against the loaded targets.
    public func headForward(input: UnsafeMutablePointer<Float>, norm: UnsafeMutablePointer<Float>,
                            rstd: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>) -> Float {
        let c = model.config, n = self.n
        timed("rmsnorm") {
            rmsnormForward(norm, rstd: rstd, input, model.pointer("output_norm.weight", in: model.weights.base),
                           rows: n, dim: c.dim, eps: c.rmsEps)
        }
        timed("matmul fwd") { matmulForward(probs, norm, headWeight, n: n, inDim: c.dim, outDim: c.vocabSize) }
        timed("cross-entropy") {
            targetBuffer.withUnsafeBufferPointer { t in
                crossEntropyForward(losses, probs: probs, probs, targets: t.baseAddress!, n: n, vocab: c.vocabSize)
            }
        }
        return meanLoss()
    }

    /// The head's backward from what `headForward` kept: `probs` becomes ∂L/∂logits (in place),
    /// the head's gradients are added, and `dresidual` (N, dim) receives ∂L/∂input.
    public func headBackward(dresidual: UnsafeMutablePointer<Float>, input: UnsafeMutablePointer<Float>,
                             norm: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
                             probs: UnsafeMutablePointer<Float>, gradientScale: Float = 1) {
        let c = model.config, n = self.n
        timed("cross-entropy") {
            targetBuffer.withUnsafeBufferPointer { t in
                crossEntropyBackward(probs, probs, targets: t.baseAddress!, dloss: gradientScale / Float(n),
                                     n: n, vocab: c.vocabSize)
            }
        }
        timed("matmul bwd") {
            matmulBackward(dxn, headGradient, probs, norm, headWeight, n: n, inDim: c.dim, outDim: c.vocabSize)
        }
        dresidual.update(repeating: 0, count: n * c.dim)
        timed("rmsnorm") {
            rmsnormBackward(dresidual, model.pointer("output_norm.weight", in: model.gradients.base), dxn, input,
                            model.pointer("output_norm.weight", in: model.weights.base), rstd: rstd,
                            rows: n, dim: c.dim)
        }
    }

    /// Adds the embedding's gradient from `dresidual` (N, dim), ∂L/∂(block 0's input).
    public func embeddingBackward(dresidual: UnsafeMutablePointer<Float>) {
        tokenBuffer.withUnsafeBufferPointer { t in
            Kernels.embeddingBackward(model.pointer("token_embd.weight", in: model.gradients.base), dresidual, t.baseAddress!,
                              n: n, dim: model.config.dim)
        }
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
