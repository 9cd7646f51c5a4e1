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
///
/// At long sequences the feed-forward runs in row tiles (ALST's tiled MLP): its intermediates
/// (gate, up, silu·up: 3 × rows × ffnDim floats, the largest tensors of a block) are then not saved
/// but recomputed tile by tile in the backward pass, so a block's memory grows with the rows by its
/// inputs alone. The tile is a function of the step's shape (`ffnTileRows`), never of the budget:
/// weight gradients are summed tile by tile, so every strategy at that shape must tile alike to
/// give the same bits.
public struct BlockActivations {
    /// Rows per feed-forward tile for a step of `rows` rows, or nil when the feed-forward runs whole
    /// and saves its intermediates (up to `ffnUntiledRows` rows: every short-sequence run). A tile is
    /// a multiple of 256 rows, at most 1,024, with about 1 Mi floats per intermediate.
    public static func ffnTileRows(config c: LlamaConfig, rows: Int) -> Int? {
        guard rows > ffnUntiledRows else { return nil }
        return min(1024, max(256, (1 << 20) / max(c.ffnDim, 1) / 256 * 256))
    }
    /// Most rows (batch × sequence) whose feed-forward runs whole.
    public static let ffnUntiledRows = 4096

    /// (name, floats) of every saved tensor at batch × seqLen, in allocation order; the names are the
    /// schedule's (`act.L.<name>`). The feed-forward's intermediates are absent when it runs in tiles.
    /// `ffnTiling` false: the feed-forward runs whole at any length (a LoRA trainer: its adapters keep
    /// per-row state of the whole step).
    public static func table(config c: LlamaConfig, batch: Int, seqLen: Int,
                             ffnTiling: Bool = true) -> [(name: String, floats: Int)] {
        let n = batch * seqLen
        let tiled = ffnTiling && ffnTileRows(config: c, rows: n) != nil
        return [
            ("attn_in", n * c.dim),          // block input (the residual stream)
            ("attn_norm", n * c.dim),        // RMSNorm output feeding q, k, v
            ("attn_rstd", n),                // 1/rms per row of attn_in
            ("q", n * c.qDim),               // after RoPE
            ("k", n * c.kvDim),              // after RoPE
            ("v", n * c.kvDim),
            ("attn_lse", n * c.heads),       // per row and head: log Σ exp(score)
            ("attn_out", n * c.qDim),        // attention output, before attn_output
            ("ffn_in", n * c.dim),           // residual after attention
            ("ffn_norm", n * c.dim),
            ("ffn_rstd", n),
        ] + (tiled ? [] : [
            ("ffn_gate", n * c.ffnDim),
            ("ffn_up", n * c.ffnDim),
            ("ffn_act", n * c.ffnDim),       // silu(gate) · up, feeding ffn_down
        ])
    }

    public static func floats(config: LlamaConfig, batch: Int, seqLen: Int, ffnTiling: Bool = true) -> Int {
        BlockHalf.allCases.reduce(0) { $0 + floats(config: config, batch: batch, seqLen: seqLen, half: $1, ffnTiling: ffnTiling) }
    }

    /// Whether table entry `name` belongs to the attention half (attn_in … attn_out) or the feed-forward's.
    static func half(of name: String) -> BlockHalf { name.hasPrefix("ffn_") ? .ffn : .attention }

    /// Floats of the entries of `half`, each padded as `init(carving:)` lays them out.
    public static func floats(config: LlamaConfig, batch: Int, seqLen: Int, half: BlockHalf, ffnTiling: Bool = true) -> Int {
        table(config: config, batch: batch, seqLen: seqLen, ffnTiling: ffnTiling)
            .filter { Self.half(of: $0.name) == half }.reduce(0) { $0 + ($1.floats + 15) / 16 * 16 }
    }

    public var attnIn, attnNorm, attnRstd, q, k, v, attLse, attOut: UnsafeMutablePointer<Float>
    /// gate, up and swiglu point at ffnIn (never used) when the feed-forward runs in tiles.
    public var ffnIn, ffnNorm, ffnRstd, gate, up, swiglu: UnsafeMutablePointer<Float>

    /// Views into `base`, which must hold `floats(config:batch:seqLen:ffnTiling:)` floats.
    public init(carving base: UnsafeMutablePointer<Float>, config: LlamaConfig, batch: Int, seqLen: Int,
                ffnTiling: Bool = true) {
        self.init(attention: base, ffn: base + Self.floats(config: config, batch: batch, seqLen: seqLen, half: .attention,
                                                           ffnTiling: ffnTiling),
                  config: config, batch: batch, seqLen: seqLen, ffnTiling: ffnTiling)
    }

    /// Views of the attention half's entries into `attention` and the feed-forward half's into `ffn`,
    /// each holding `floats(config:batch:seqLen:half:ffnTiling:)` floats. A half's calls
    /// (`LlamaTrainer.blockAttentionForward` …) read and write only that half's views, so one half
    /// may be carved alone: pass its buffer for both (the other half's views are then never used).
    public init(attention: UnsafeMutablePointer<Float>, ffn: UnsafeMutablePointer<Float>, config: LlamaConfig,
                batch: Int, seqLen: Int, ffnTiling: Bool = true) {
        var p: [String: UnsafeMutablePointer<Float>] = [:], offset: [BlockHalf: Int] = [:]
        for (name, floats) in Self.table(config: config, batch: batch, seqLen: seqLen, ffnTiling: ffnTiling) {
            let h = Self.half(of: name)
            p[name] = (h == .attention ? attention : ffn) + offset[h, default: 0]
            offset[h, default: 0] += (floats + 15) / 16 * 16
        }
        self.init(named: p)
    }

    /// Views at the pointers `named` gives for the table's names (a missing ffn_gate, ffn_up, ffn_act:
    /// the feed-forward runs in tiles).
    public init(named p: [String: UnsafeMutablePointer<Float>]) {
        (attnIn, attnNorm, attnRstd, q, k, v, attLse) = (p["attn_in"]!, p["attn_norm"]!, p["attn_rstd"]!, p["q"]!, p["k"]!,
                                                        p["v"]!, p["attn_lse"]!)
        (attOut, ffnIn, ffnNorm, ffnRstd) = (p["attn_out"]!, p["ffn_in"]!, p["ffn_norm"]!, p["ffn_rstd"]!)
        (gate, up, swiglu) = (p["ffn_gate"] ?? ffnIn, p["ffn_up"] ?? ffnIn, p["ffn_act"] ?? ffnIn)
    }
}

/// The two halves of a block, each with its own parameters and activations: attention (attn_norm,
/// q, k, v, o) and the feed-forward network (ffn_norm, gate, up, down).
public enum BlockHalf: Int, CaseIterable, Sendable {
    case attention, ffn
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
    /// LoRA: the frozen base and its adapters, which are then the only trained parameters (nil: every
    /// weight of `model` is trained in fp32).
    public let lora: LoRABinding?
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
    let dres, dxn, dq, dk, dv, datt, attScratch, recomputeOut: UnsafeMutablePointer<Float>
    /// The feed-forward's scratch: whole, ∂gate, ∂up, ∂(silu·up) of every row; in tiles, a tile's gate,
    /// up, silu·up and its ∂(silu·up) (∂gate and ∂up overwrite gate and up).
    let ffnScratch: [UnsafeMutablePointer<Float>]
    /// Rows per feed-forward tile (nil: the feed-forward runs whole and saves its intermediates).
    public let ffnTile: Int?
    /// Attention backward scratch: enough for 16 threads (more are not used for attention).
    let attScratchCount: Int
    var positions: [Int32]
    /// Vocabulary rows per head chunk (see `headChunkRows(config:rows:)`).
    public let headChunkRows: Int
    /// Per-row softmax state of the chunked head: each chunk's max (N × chunks), the row's max,
    /// sum of exponentials (Double) and target logit.
    let headState: FloatBuffer
    let chunkMax, rowMax, targetLogit: UnsafeMutablePointer<Float>
    let rowSum: UnsafeMutablePointer<Double>
    var tokenBuffer: [Int32]
    var targetBuffer: [Int32]
    /// Targets of the loaded batch that count (not `LlamaTrainer.ignoredTarget`): the mean loss's denominator.
    var targetCount = 0

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
    public var activationBytes: Int { activationBuffer.bytes + scratchBuffer.bytes + headState.bytes + (lora?.bytes ?? 0) }

    /// `activationBytes` of a trainer built with these arguments, without building it (what a planner
    /// sets aside for the trainer's own buffers).
    public static func activationBytes(config: LlamaConfig, batch: Int, seqLen: Int, policy: ActivationPolicy = .keepAll,
                                       ownsActivations: Bool = true, headChunk: Int? = nil) -> Int {
        let s = bufferFloats(config: config, batch: batch, seqLen: seqLen, policy: policy,
                             ownsActivations: ownsActivations, headChunk: headChunk, ffnTiling: true)
        return 4 * (s.activations + s.scratch + s.headState)
    }

    /// Floats of the trainer's three allocations (activations, backward scratch, head state), the
    /// scratch's parts in carving order, and the head's chunk rows.
    static func bufferFloats(config c: LlamaConfig, batch: Int, seqLen: Int, policy: ActivationPolicy,
                             ownsActivations: Bool, headChunk: Int?, ffnTiling: Bool)
        -> (activations: Int, scratch: Int, headState: Int, headChunkRows: Int,
            scratchParts: (shared: [Int], attention: [Int], ffn: [Int])) {
        let n = batch * seqLen
        func pad(_ x: Int) -> Int { (x + 15) / 16 * 16 }
        let perBlock = BlockActivations.floats(config: c, batch: batch, seqLen: seqLen, ffnTiling: ffnTiling)
        let blockFloats = !ownsActivations ? 0
            : policy == .keepAll ? c.layers * perBlock : perBlock + c.layers * pad(n * c.dim)
        let headFloats = ownsActivations ? 2 * pad(n * c.dim) + 2 * pad(n) + pad(n * c.vocabSize) : pad(n)
        // The attention half's backward scratch and the feed-forward half's share one region: the
        // halves run one after the other and each writes its scratch before reading it. ∂L/∂x (dres) and
        // the recomputed output are the whole-model path's (an executor brings its own).
        let shared = [ownsActivations ? n * c.dim : 0, n * c.dim, policy == .recomputeAll && ownsActivations ? n * c.dim : 0]
        let attention = [n * c.qDim, n * c.kvDim, n * c.kvDim, n * c.qDim, attentionTrainingScratch(threads: 16, seqLen: seqLen,
                                                                   shape: AttentionShape(heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim))]
        let tile = ffnTiling ? BlockActivations.ffnTileRows(config: c, rows: n) : nil
        let ffn = tile.map { Array(repeating: $0 * c.ffnDim, count: 4) } ?? Array(repeating: n * c.ffnDim, count: 3)
        func total(_ sizes: [Int]) -> Int { sizes.reduce(0) { $0 + pad($1) } }
        let rows = headChunk ?? headChunkRows(config: c, rows: n)
        let chunks = (c.vocabSize + rows - 1) / rows
        let sumOffset = (n * chunks + 2 * n + 1) / 2 * 2  // 8-byte aligned for the Doubles
        return (blockFloats + headFloats, total(shared) + max(total(attention), total(ffn)), sumOffset + 2 * n, rows,
                (shared, attention, ffn))
    }

    /// - Parameters:
    ///   - ownsActivations: false gives a trainer that holds no block or head
    ///     activations, only the backward scratch and per-row losses: an executor
    ///     allocates them under its budget and calls the per-stage hooks below.
    ///   - headChunk: vocabulary rows per head chunk (default `headChunkRows(config:rows:)`); runs
    ///     compared bit for bit must use the same.
    ///   - lora: trains these adapters on this frozen base instead of `model`'s weights (`model` then
    ///     holds none: `TrainableLlama(config:ropeStyle:resident: false)`).
    ///   - ffnTiling: false runs the feed-forward whole at any length (always so with `lora`): not
    ///     the bits of a tiled run, which every planned strategy makes.
    public init(model: TrainableLlama, batch: Int, seqLen: Int, policy: ActivationPolicy = .keepAll,
                ownsActivations: Bool = true, headChunk: Int? = nil,
                lora: (base: FrozenLlama, adapters: LoRAAdapters)? = nil, ffnTiling: Bool = true) throws {
        let c = model.config
        if let lora {
            guard lora.base.config == c, lora.adapters.config == c, !model.isResident, ownsActivations else {
                throw OffloadError("[train] LoRA: the base, the adapters and the model must describe one model, "
                                   + "the model holding no weights, and the trainer its own activations")
            }
        }
        guard batch > 0, seqLen > 0 else { throw OffloadError("[train] batch and sequence length must be positive") }
        guard seqLen <= c.contextLength else {
            throw OffloadError("[train] sequence length \(seqLen) exceeds the model's context (\(c.contextLength))")
        }
        self.model = model; self.batch = batch; self.seqLen = seqLen; self.policy = policy
        self.ownsActivations = ownsActivations
        rope = c.ropeTable(maxPositions: seqLen)
        halfSplit = model.ropeStyle == .halfSplit
        shape = AttentionShape(heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)
        let n = batch * seqLen
        func pad(_ x: Int) -> Int { (x + 15) / 16 * 16 }
        let tiling = ffnTiling && lora == nil
        ffnTile = tiling ? BlockActivations.ffnTileRows(config: c, rows: n) : nil
        let perBlock = BlockActivations.floats(config: c, batch: batch, seqLen: seqLen, ffnTiling: tiling)
        let sizes = Self.bufferFloats(config: c, batch: batch, seqLen: seqLen, policy: policy,
                                      ownsActivations: ownsActivations, headChunk: headChunk, ffnTiling: tiling)
        activationBuffer = FloatBuffer(count: sizes.activations)
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
                BlockActivations(carving: take(perBlock, from: a), config: c, batch: batch, seqLen: seqLen, ffnTiling: tiling)
            }
            blockInputs = blockActs.map(\.attnIn)
        case .recomputeAll:
            let shared = BlockActivations(carving: take(perBlock, from: a), config: c, batch: batch, seqLen: seqLen,
                                          ffnTiling: tiling)
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

        attScratchCount = sizes.scratchParts.attention[4]
        let scratch = FloatBuffer(count: sizes.scratch)
        scratchBuffer = scratch
        offset = 0
        let s = sizes.scratchParts.shared.map { take($0, from: scratch.base) }
        let region = offset
        let at = sizes.scratchParts.attention.map { take($0, from: scratch.base) }
        offset = region
        ffnScratch = sizes.scratchParts.ffn.map { take($0, from: scratch.base) }
        (dres, dxn, recomputeOut) = (s[0], s[1], s[2])
        (dq, dk, dv, datt, attScratch) = (at[0], at[1], at[2], at[3], at[4])
        headChunkRows = sizes.headChunkRows
        let chunks = (c.vocabSize + headChunkRows - 1) / headChunkRows
        let sumOffset = (n * chunks + 2 * n + 1) / 2 * 2  // 8-byte aligned for the Doubles
        headState = FloatBuffer(count: sizes.headState)
        (chunkMax, rowMax, targetLogit) = (headState.base, headState.base + n * chunks, headState.base + n * chunks + n)
        rowSum = UnsafeMutableRawPointer(headState.base + sumOffset).bindMemory(to: Double.self, capacity: n)
        positions = (0..<n).map { Int32($0 % seqLen) }  // every row of the batch starts at position 0
        tokenBuffer = [Int32](repeating: 0, count: n)
        targetBuffer = [Int32](repeating: 0, count: n)
        self.lora = lora.map { LoRABinding(base: $0.base, adapters: $0.adapters, rows: n, headChunkRows: sizes.headChunkRows) }
    }

    /// A trainer of LoRA `adapters` on the frozen `base`.
    public convenience init(base: FrozenLlama, adapters: LoRAAdapters, batch: Int, seqLen: Int,
                            policy: ActivationPolicy = .keepAll, headChunk: Int? = nil) throws {
        try self.init(model: TrainableLlama(config: base.config, ropeStyle: base.ropeStyle, resident: false), batch: batch,
                      seqLen: seqLen, policy: policy, headChunk: headChunk, lora: (base, adapters))
    }

    var n: Int { batch * seqLen }

    /// Where block `l` keeps its activations (and reads its input, `attnIn`) in this trainer.
    public func activations(ofBlock l: Int) -> BlockActivations { blockActs[l] }

    // MARK: one block

    /// Block `l`'s forward from `acts.attnIn`, writing `output` (N, dim) and every activation in `acts`.
    /// Calling it again on the same input recomputes the same activations bit for bit.
    public func blockForward(_ l: Int, output: UnsafeMutablePointer<Float>, saving acts: BlockActivations,
                             parameters: ParameterBases? = nil) {
        blockAttentionForward(l, saving: acts, parameters: parameters)
        blockFFNForward(l, output: output, saving: acts, parameters: parameters)
    }

    /// The attention half of block `l`'s forward: from `acts.attnIn`, writes the attention half's
    /// activations and `acts.ffnIn` (the residual after attention), which the feed-forward half reads.
    public func blockAttentionForward(_ l: Int, saving acts: BlockActivations, parameters: ParameterBases? = nil) {
        let c = model.config, n = self.n, w = weights(ofBlock: l, parameters)
        timed("rmsnorm") {
            rmsnormForward(acts.attnNorm, rstd: acts.attnRstd, acts.attnIn, w.attnNorm, rows: n, dim: c.dim, eps: c.rmsEps)
        }
        linearForward(w.q, acts.q, acts.attnNorm, inDim: c.dim, outDim: c.qDim)
        linearForward(w.k, acts.k, acts.attnNorm, inDim: c.dim, outDim: c.kvDim)
        linearForward(w.v, acts.v, acts.attnNorm, inDim: c.dim, outDim: c.kvDim)
        timed("rope") { positions.withUnsafeBufferPointer { pos in
            ropeForward(acts.q, positions: pos.baseAddress!, rows: n, heads: c.heads, table: rope, halfSplit: halfSplit)
            ropeForward(acts.k, positions: pos.baseAddress!, rows: n, heads: c.kvHeads, table: rope, halfSplit: halfSplit)
        } }
        timed("attention fwd") {
            attentionForward(acts.attOut, lse: acts.attLse, acts.q, acts.k, acts.v, scratch: attScratch,
                             scratchCount: attScratchCount, batch: batch, seqLen: seqLen, shape: shape)
        }
        acts.ffnIn.update(from: acts.attnIn, count: n * c.dim)
        linearForward(w.o, acts.ffnIn, acts.attOut, inDim: c.qDim, outDim: c.dim, accumulate: true)
    }

    /// The feed-forward half of block `l`'s forward: from `acts.ffnIn`, writes its activations and `output`
    /// (in tiles of `ffnTile` rows when set, keeping only its input, norm and 1/rms).
    public func blockFFNForward(_ l: Int, output: UnsafeMutablePointer<Float>, saving acts: BlockActivations,
                                parameters: ParameterBases? = nil) {
        let c = model.config, n = self.n, w = weights(ofBlock: l, parameters)
        timed("rmsnorm") {
            rmsnormForward(acts.ffnNorm, rstd: acts.ffnRstd, acts.ffnIn, w.ffnNorm, rows: n, dim: c.dim, eps: c.rmsEps)
        }
        output.update(from: acts.ffnIn, count: n * c.dim)
        forEachFFNTile(acts) { r0, rows, t in
            ffnTileForward(w, t, acts.ffnNorm + r0 * c.dim, rows: rows)
            linearForward(w.down, output + r0 * c.dim, t.act, inDim: c.ffnDim, outDim: c.dim, rows: rows, accumulate: true)
        }
    }

    /// A feed-forward tile's intermediates: where its gate, up and silu·up are (saved, or the tile scratch).
    struct FFNTile { let gate, up, act: UnsafeMutablePointer<Float> }

    /// Runs `body(firstRow, rows, tile)` over the feed-forward's tiles in order: one tile of every row at
    /// the saved intermediates of `acts`, or `ffnTile`-row tiles at the scratch.
    func forEachFFNTile(_ acts: BlockActivations, _ body: (Int, Int, FFNTile) -> Void) {
        guard let tile = ffnTile else {
            body(0, n, FFNTile(gate: acts.gate, up: acts.up, act: acts.swiglu))
            return
        }
        for r0 in stride(from: 0, to: n, by: tile) {
            body(r0, min(tile, n - r0), FFNTile(gate: ffnScratch[0], up: ffnScratch[1], act: ffnScratch[2]))
        }
    }

    /// gate, up and silu(gate)·up of `rows` normed rows `xn` into `t`.
    func ffnTileForward(_ w: BlockWeights, _ t: FFNTile, _ xn: UnsafeMutablePointer<Float>, rows: Int) {
        let c = model.config
        linearForward(w.gate, t.gate, xn, inDim: c.dim, outDim: c.ffnDim, rows: rows)
        linearForward(w.up, t.up, xn, inDim: c.dim, outDim: c.ffnDim, rows: rows)
        timed("swiglu") { swigluForwardParallel(t.act, t.gate, t.up, count: rows * c.ffnDim) }
    }

    /// Block `l`'s backward. `dresidual` (N, dim) holds ∂L/∂output on entry and ∂L/∂input on exit;
    /// the block's parameter gradients are added to the model's gradient buffer.
    public func blockBackward(_ l: Int, dresidual: UnsafeMutablePointer<Float>, acts: BlockActivations,
                              parameters: ParameterBases? = nil) {
        blockFFNBackward(l, dresidual: dresidual, acts: acts, parameters: parameters)
        blockAttentionBackward(l, dresidual: dresidual, acts: acts, parameters: parameters)
    }

    /// The feed-forward half of block `l`'s backward: `dresidual` from ∂L/∂output to ∂L/∂ffn_in (in tiles,
    /// each tile's gate, up and silu·up recomputed from the saved norm first).
    public func blockFFNBackward(_ l: Int, dresidual: UnsafeMutablePointer<Float>, acts: BlockActivations,
                                 parameters: ParameterBases? = nil) {
        let c = model.config, n = self.n, w = weights(ofBlock: l, parameters), d = c.dim, ff = c.ffnDim
        forEachFFNTile(acts) { r0, rows, t in
            let xn = acts.ffnNorm + r0 * d, dy = dresidual + r0 * d, dx = dxn + r0 * d
            // Whole: ∂gate, ∂up, ∂act in their own scratch; in tiles ∂gate and ∂up overwrite gate and up.
            let (dgate, dup, dact) = ffnTile == nil ? (ffnScratch[0], ffnScratch[1], ffnScratch[2])
                                                    : (t.gate, t.up, ffnScratch[3])
            if ffnTile != nil { ffnTileForward(w, t, xn, rows: rows) }
            // out = ffn_in + act · downᵀ
            linearBackward(w.down, dact, dy, t.act, inDim: ff, outDim: d, rows: rows)
            timed("swiglu") { swigluBackward(dgate, dup, dact, t.gate, t.up, count: rows * ff) }
            linearBackward(w.gate, dx, dgate, xn, inDim: d, outDim: ff, rows: rows)
            linearBackward(w.up, dx, dup, xn, inDim: d, outDim: ff, rows: rows, accumulateInput: true)
        }
        timed("rmsnorm") {
            rmsnormBackward(dresidual, w.ffnNormGradient, dxn, acts.ffnIn, w.ffnNorm, rstd: acts.ffnRstd, rows: n, dim: d)
        }
    }

    /// The attention half of block `l`'s backward: `dresidual` from ∂L/∂ffn_in to ∂L/∂input.
    public func blockAttentionBackward(_ l: Int, dresidual: UnsafeMutablePointer<Float>, acts: BlockActivations,
                                       parameters: ParameterBases? = nil) {
        let c = model.config, n = self.n, w = weights(ofBlock: l, parameters)
        // ffn_in = attn_in + att_out · oᵀ
        linearBackward(w.o, datt, dresidual, acts.attOut, inDim: c.qDim, outDim: c.dim)
        timed("attention bwd") {
            attentionBackward(dq, dk, dv, datt, out: acts.attOut, lse: acts.attLse, acts.q, acts.k, acts.v,
                              scratch: attScratch, scratchCount: attScratchCount, batch: batch, seqLen: seqLen, shape: shape)
        }
        timed("rope") { positions.withUnsafeBufferPointer { pos in
            ropeBackward(dq, positions: pos.baseAddress!, rows: n, heads: c.heads, table: rope, halfSplit: halfSplit)
            ropeBackward(dk, positions: pos.baseAddress!, rows: n, heads: c.kvHeads, table: rope, halfSplit: halfSplit)
        } }
        linearBackward(w.q, dxn, dq, acts.attnNorm, inDim: c.dim, outDim: c.qDim)
        linearBackward(w.k, dxn, dk, acts.attnNorm, inDim: c.dim, outDim: c.kvDim, accumulateInput: true)
        linearBackward(w.v, dxn, dv, acts.attnNorm, inDim: c.dim, outDim: c.kvDim, accumulateInput: true)
        timed("rmsnorm") {
            rmsnormBackward(dresidual, w.attnNormGradient, dxn, acts.attnIn, w.attnNorm, rstd: acts.attnRstd, rows: n, dim: c.dim)
        }
    }

    // MARK: one projection

    /// Block `l`'s weights as its functions use them: fp32 weights and gradients at `parameters` (default
    /// the model's own), or, with LoRA, the frozen base's matrices with their adapters (norms frozen too:
    /// their gradients go to a scratch row never read).
    func weights(ofBlock l: Int, _ parameters: ParameterBases?) -> BlockWeights {
        if let lora {
            let base = lora.base, sink = lora.normGradientSink
            func linear(_ t: LoRATarget) -> Linear {
                .frozen(base.blocks[l][t]!, lora.adapters.pair(l, t), saved: lora.saved[l][t], dropout: lora.dropoutMask(l, t))
            }
            return BlockWeights(attnNorm: base.attnNorm(l), ffnNorm: base.ffnNorm(l), attnNormGradient: sink,
                                ffnNormGradient: sink, q: linear(.q), k: linear(.k), v: linear(.v), o: linear(.o),
                                gate: linear(.gate), up: linear(.up), down: linear(.down))
        }
        let p = parameters ?? model.resident
        let w = model.block(l, in: p.weights), g = model.block(l, in: p.gradients)
        return BlockWeights(attnNorm: w.attnNorm, ffnNorm: w.ffnNorm, attnNormGradient: g.attnNorm, ffnNormGradient: g.ffnNorm,
                            q: .trained(w.q, g.q), k: .trained(w.k, g.k), v: .trained(w.v, g.v), o: .trained(w.o, g.o),
                            gate: .trained(w.gate, g.gate), up: .trained(w.up, g.up), down: .trained(w.down, g.down))
    }

    /// out (N, outDim) = x (N, inDim) · Wᵀ (plus out's old value when `accumulate`), W as `w` holds it.
    func linearForward(_ w: Linear, _ out: UnsafeMutablePointer<Float>, _ x: UnsafeMutablePointer<Float>, inDim: Int,
                       outDim: Int, rows: Int? = nil, accumulate: Bool = false) {
        let n = rows ?? self.n
        precondition(n == self.n || !w.isFrozen, "LoRA's adapters run on every row of the step")
        timed("matmul fwd") {
            switch w {
            case .trained(let weight, _):
                matmulForward(out, x, weight, n: n, inDim: inDim, outDim: outDim, accumulate: accumulate)
            case .frozen(let m, let adapter, let saved, let dropout):
                frozenMatmulForward(out, x, m, n: n, accumulate: accumulate, scratch: lora!.tile)
                if let a = adapter, let saved {
                    var input = x
                    if let dropout {
                        dropout.apply(x, into: lora!.dropped, n: n, cols: inDim)
                        input = lora!.dropped
                    }
                    loraForward(out, saved: saved, input, a: a.a, b: a.b, n: n, inDim: inDim, outDim: outDim, rank: a.rank, scale: a.scale)
                }
            }
        }
    }

    /// The backward of `linearForward` for ∂L/∂out `dy`: dx (N, inDim) = dy · W (plus dx's old value when
    /// `accumulateInput`); the weight's gradient (trained) or its adapter's (frozen) is added.
    func linearBackward(_ w: Linear, _ dx: UnsafeMutablePointer<Float>, _ dy: UnsafeMutablePointer<Float>,
                        _ x: UnsafeMutablePointer<Float>, inDim: Int, outDim: Int, rows: Int? = nil,
                        accumulateInput: Bool = false) {
        let n = rows ?? self.n
        precondition(n == self.n || !w.isFrozen, "LoRA's adapters run on every row of the step")
        timed("matmul bwd") {
            switch w {
            case .trained(let weight, let gradient):
                matmulBackward(dx, gradient, dy, x, weight, n: n, inDim: inDim, outDim: outDim, accumulateInput: accumulateInput)
            case .frozen(let m, let adapter, let saved, let dropout):
                frozenMatmulInputGradient(dx, dy, m, n: n, accumulate: accumulateInput, scratch: lora!.tile)
                guard let a = adapter, let saved else { break }
                if let dropout, let lora {
                    // Through the mask: the adapter saw x after it, and its input gradient passes it again.
                    dropout.apply(x, into: lora.dropped, n: n, cols: inDim)
                    lora.droppedGradient.update(repeating: 0, count: n * inDim)
                    loraBackward(lora.droppedGradient, gradA: a.gradA, gradB: a.gradB, dsaved: lora.dsaved, dy, lora.dropped,
                                 saved: saved, a: a.a, b: a.b, n: n, inDim: inDim, outDim: outDim, rank: a.rank, scale: a.scale)
                    dropout.addBackward(lora.droppedGradient, into: dx, n: n, cols: inDim)
                } else {
                    loraBackward(dx, gradA: a.gradA, gradB: a.gradB, dsaved: lora!.dsaved, dy, x, saved: saved, a: a.a, b: a.b,
                                 n: n, inDim: inDim, outDim: outDim, rank: a.rank, scale: a.scale)
                }
            }
        }
    }

    // MARK: whole model

    private func load(_ tokens: [Int], into buffer: inout [Int32], what: String) throws {
        let c = model.config
        guard tokens.count == n else {
            throw OffloadError("[train] \(what): \(tokens.count) token ids for a batch of \(batch) × \(seqLen) = \(n)")
        }
        for (i, t) in tokens.enumerated() {
            guard t >= 0 && t < c.vocabSize || (what == "targets" && t == Self.ignoredTarget) else {
                throw OffloadError("[train] \(what): token id \(t) at \(i) is outside the vocabulary (0..<\(c.vocabSize))")
            }
            buffer[i] = Int32(t)
        }
    }

    /// A target that is not trained on (a prompt's tokens when fine-tuning on completions): it adds
    /// nothing to the loss, the mean is over the other targets, and its logits get no gradient.
    public static let ignoredTarget = -1

    private func loadTargets(_ targets: [Int]) throws {
        try load(targets, into: &targetBuffer, what: "targets")
        targetCount = targets.reduce(0) { $0 + ($1 == Self.ignoredTarget ? 0 : 1) }
        guard targetCount > 0 else { throw OffloadError("[train] targets: every target of the batch is ignored") }
    }

    private var headWeight: UnsafeMutablePointer<Float> {
        model.pointer(model.config.tiedEmbeddings ? "token_embd.weight" : "output.weight", in: model.weights.base)
    }

    /// Embedding, every block, final norm and head: logits (N, vocab) in `logits`.
    private func forwardToLogits() {
        let c = model.config, n = self.n
        TrainingThreads.claimBLAS()
        embeddingForward(output: blockInputs[0])
        for l in 0..<c.layers {
            blockForward(l, output: l + 1 < c.layers ? blockInputs[l + 1] : final, saving: blockActs[l])
        }
        timed("rmsnorm") {
            rmsnormForward(finalNorm, rstd: finalRstd, final, outputNorm(nil).weights, rows: n, dim: c.dim, eps: c.rmsEps)
        }
        timed("matmul fwd") {
            if let lora {
                frozenMatmulForward(logits, finalNorm, lora.base.head, n: n, scratch: lora.tile)
            } else {
                matmulForward(logits, finalNorm, headWeight, n: n, inDim: c.dim, outDim: c.vocabSize)
            }
        }
    }

    /// Mean of the per-row losses of the targets that count, summed in row order.
    private func meanLoss() -> Float {
        var sum = 0.0
        for i in 0..<n where targetBuffer[i] >= 0 { sum += Double(losses[i]) }
        return Float(sum / Double(targetCount))
    }

    /// Mean cross-entropy of predicting `targets` from `inputs` (both B·T ids, row-major; `ignoredTarget`
    /// targets left out), no gradients: the forward of `forwardBackward`, so the same loss bit for bit.
    public func loss(inputs: [Int], targets: [Int]) throws -> Float {
        let c = model.config
        try needOwnActivations()
        try load(inputs, into: &tokenBuffer, what: "inputs")
        try loadTargets(targets)
        TrainingThreads.claimBLAS()
        embeddingForward(output: blockInputs[0])
        for l in 0..<c.layers {
            blockForward(l, output: l + 1 < c.layers ? blockInputs[l + 1] : final, saving: blockActs[l])
        }
        return try headForward(input: final, norm: finalNorm, rstd: finalRstd, logits: logits, keepsLogits: false)
    }

    /// Logits (B·T, vocab) for `inputs`.
    public func logits(inputs: [Int]) throws -> [Float] {
        try needOwnActivations()
        try load(inputs, into: &tokenBuffer, what: "inputs")
        forwardToLogits()
        return Array(UnsafeBufferPointer(start: logits, count: n * model.config.vocabSize))
    }

    /// Forward and backward for one batch: returns the mean loss over its B·T targets (but `ignoredTarget`s) and ADDS
    /// `gradientScale` × ∂(mean loss)/∂θ to the model's gradients (scale 1/k when accumulating k micro-batches).
    /// With LoRA dropout, `draw` (the micro-batch's index in the run) picks the masks.
    @discardableResult
    public func forwardBackward(inputs: [Int], targets: [Int], gradientScale: Float = 1, draw: UInt64 = 0) throws -> Float {
        let c = model.config
        try needOwnActivations()
        lora?.dropoutDraw = draw
        defer { lora?.dropoutDraw = nil }
        try load(inputs, into: &tokenBuffer, what: "inputs")
        try loadTargets(targets)
        TrainingThreads.claimBLAS()
        embeddingForward(output: blockInputs[0])
        for l in 0..<c.layers {
            blockForward(l, output: l + 1 < c.layers ? blockInputs[l + 1] : final, saving: blockActs[l])
        }
        let loss = try headForward(input: final, norm: finalNorm, rstd: finalRstd, logits: logits, keepsLogits: true)
        try headBackward(dresidual: dres, input: final, norm: finalNorm, rstd: finalRstd, logits: logits, keepsLogits: true,
                     gradientScale: gradientScale)
        for l in stride(from: c.layers - 1, through: 0, by: -1) {
            if policy == .recomputeAll { blockForward(l, output: recomputeOut, saving: blockActs[l]) }
            blockBackward(l, dresidual: dres, acts: blockActs[l])
        }
        embeddingBackward(dresidual: dres)
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
        try loadTargets(targets)
    }

    /// Embedding lookup of the loaded inputs into `output` (N, dim): block 0's input. With `vocabulary`,
    /// only the rows of tokens in that range, from `table` holding just those rows of token_embd
    /// (a streamed chunk); calls over ranges covering the vocabulary fill every row.
    public func embeddingForward(output: UnsafeMutablePointer<Float>, vocabulary: Range<Int>? = nil,
                                 table: UnsafePointer<Float>? = nil) {
        TrainingThreads.claimBLAS()
        let dim = model.config.dim, range = vocabulary ?? 0..<model.config.vocabSize
        if let lora, table == nil {
            let e = lora.base.embedding
            TrainingThreads.forEachRange(n, minPerThread: 16) { part in
                for i in part { e.dequantize(row: Int(tokenBuffer[i]), into: output + i * dim) }
            }
            return
        }
        let rows = table ?? UnsafePointer(model.pointer("token_embd.weight", in: model.weights.base))
        for i in 0..<n where range.contains(Int(tokenBuffer[i])) {
            (output + i * dim).update(from: rows + (Int(tokenBuffer[i]) - range.lowerBound) * dim, count: dim)
        }
    }

    /// Adds the embedding's gradient from `dresidual` (N, dim), ∂L/∂(block 0's input): row i to row
    /// tokens[i], in order i = 0, 1, ... With `vocabulary`, only tokens in that range, into `gradients`
    /// holding just those rows; chunks covering the vocabulary give the same sums as one call.
    public func embeddingBackward(dresidual: UnsafeMutablePointer<Float>, vocabulary: Range<Int>? = nil,
                                  gradients: UnsafeMutablePointer<Float>? = nil) {
        guard lora == nil else { return }   // frozen
        let dim = model.config.dim, range = vocabulary ?? 0..<model.config.vocabSize
        let rows = gradients ?? model.pointer("token_embd.weight", in: model.gradients.base)
        for i in 0..<n where range.contains(Int(tokenBuffer[i])) {
            let d = rows + (Int(tokenBuffer[i]) - range.lowerBound) * dim, g = dresidual + i * dim
            for j in 0..<dim { d[j] += g[j] }
        }
    }
}

// MARK: the head, over vocabulary chunks
// logits = norm(x) · Wᵀ, softmax cross-entropy and its backward, computed over
// chunks of the vocabulary so that neither W (vocab × dim) nor the logits (N × vocab)
// need be whole in memory: pass 1 (headForward) computes each chunk's logits and a
// running max and sum of exponentials per row (online softmax, in Double); pass 2
// (headBackward) forms ∂L/∂logits chunk by chunk, adds the chunk's weight gradient
// and accumulates ∂L/∂norm. Every path (in memory, executor, streamed) runs these same
// calls with the same chunk size, so they agree bit for bit; a path that keeps the
// logits of pass 1 (keepsLogits) skips pass 2's recomputation of them, which gives
// the same values.
extension LlamaTrainer {
    /// Vocabulary rows per head chunk for `n` = batch × seqLen rows: about 1 Mi floats of logits per
    /// chunk, rounded to rows that fill whole 4096-float blocks (so per-chunk gradient sums of squares
    /// add up exactly as one sum over the tensor).
    public static func headChunkRows(config c: LlamaConfig, rows n: Int) -> Int {
        var a = c.dim, b = 4096
        while b != 0 { (a, b) = (b, a % b) }
        let unit = 4096 / a
        let target = max(unit, (1 << 20) / max(n, 1) / unit * unit)
        return min(target, (c.vocabSize + unit - 1) / unit * unit)
    }

    public var headChunkCount: Int { (model.config.vocabSize + headChunkRows - 1) / headChunkRows }
    /// The vocabulary rows of head chunk `k`.
    public func headChunk(_ k: Int) -> Range<Int> {
        k * headChunkRows ..< min(model.config.vocabSize, (k + 1) * headChunkRows)
    }
    /// Where chunk `k`'s logits go in a buffer of (N, vocab) floats when they are kept.
    func logitsOffset(_ k: Int, keeps: Bool) -> Int { keeps ? k * n * headChunkRows : 0 }

    /// The head's weight rows [range) (tied: token_embd's) in the model's own allocation.
    func residentHeadRows(_ range: Range<Int>, in base: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
        model.pointer(model.config.tiedEmbeddings ? "token_embd.weight" : "output.weight", in: base) + range.lowerBound * model.config.dim
    }

    /// Chunk `k`'s logits in `out` (N, count) become exp(logit − chunk max) in place; returns nothing,
    /// records the chunk max per row in `chunkMax` and, on pass 1, folds the chunk into the row's max
    /// and sum and picks the target's logit.
    private func exponentiate(_ out: UnsafeMutablePointer<Float>, chunk k: Int, firstPass: Bool) {
        let range = headChunk(k), count = range.count, chunks = headChunkCount
        TrainingThreads.forEachRange(n, minPerThread: 8) { rows in
            for i in rows {
                let l = out + i * count
                let m = Kernels.rowMax(l, count: count)
                let t = Int(targetBuffer[i])
                if firstPass && range.contains(t) { targetLogit[i] = l[t - range.lowerBound] }
                let sum = exponentiateRow(l, count: count, subtracting: m)
                guard firstPass else { continue }
                chunkMax[i * chunks + k] = m
                if k == 0 {
                    rowMax[i] = m; rowSum[i] = sum
                } else if m > rowMax[i] {
                    rowSum[i] = rowSum[i] * Foundation.exp(Double(rowMax[i]) - Double(m)) + sum; rowMax[i] = m
                } else {
                    rowSum[i] += sum * Foundation.exp(Double(m) - Double(rowMax[i]))
                }
            }
        }
    }

    /// Pass 1: final norm of `input` into `norm`/`rstd`, then every chunk's logits (into `logits`: all
    /// of them, (N, vocab) chunk after chunk, when `keepsLogits`; else one chunk's (N, chunk rows)
    /// at a time, except chunks `keep(k)` gives a buffer of their own, which pass 2 then reuses).
    /// `weights(k)` gives chunk k's rows of the head weight; `computed(k)` is called once chunk k's
    /// (exponentiated) logits are complete; `parameters` holds output_norm. Returns the mean loss
    /// against the loaded targets.
    public func headForward(input: UnsafeMutablePointer<Float>, norm: UnsafeMutablePointer<Float>,
                            rstd: UnsafeMutablePointer<Float>, logits: UnsafeMutablePointer<Float>, keepsLogits: Bool,
                            parameters: ParameterBases? = nil, keep: ((Int) throws -> UnsafeMutablePointer<Float>?)? = nil,
                            weights: ((Int) throws -> UnsafePointer<Float>)? = nil,
                            computed: ((Int) throws -> Void)? = nil) throws -> Float {
        headNormForward(input: input, norm: norm, rstd: rstd, weights: outputNorm(parameters).weights)
        for k in 0..<headChunkCount {
            let out = try keep?(k) ?? logits + logitsOffset(k, keeps: keepsLogits)
            let w = try weights?(k) ?? defaultHeadRows(k).weights
            headChunkForward(k, logits: out, norm: norm, weights: w)
            try computed?(k)
        }
        return headLoss()
    }

    /// The head's final norm of `input` (N, dim) into `norm` and `rstd`, with output_norm's `weights`.
    public func headNormForward(input: UnsafeMutablePointer<Float>, norm: UnsafeMutablePointer<Float>,
                                rstd: UnsafeMutablePointer<Float>, weights: UnsafePointer<Float>) {
        let c = model.config
        timed("rmsnorm") { rmsnormForward(norm, rstd: rstd, input, weights, rows: n, dim: c.dim, eps: c.rmsEps) }
    }

    /// Pass 1 of chunk `k` (in order, from 0): its logits into `logits` (N, chunk rows) from the chunk's
    /// weight rows, exponentiated, folded into each row's running max and sum.
    public func headChunkForward(_ k: Int, logits out: UnsafeMutablePointer<Float>, norm: UnsafeMutablePointer<Float>,
                                 weights w: UnsafePointer<Float>) {
        let c = model.config, range = headChunk(k)
        timed("matmul fwd") { matmulForward(out, norm, w, n: n, inDim: c.dim, outDim: range.count) }
        timed("cross-entropy") { exponentiate(out, chunk: k, firstPass: true) }
    }

    /// After every chunk's pass 1: the mean loss against the loaded targets.
    public func headLoss() -> Float {
        for i in 0..<n {
            losses[i] = targetBuffer[i] < 0 ? 0 : Float(Foundation.log(rowSum[i]) + Double(rowMax[i]) - Double(targetLogit[i]))
        }
        return meanLoss()
    }

    /// Pass 2: ∂L/∂logits chunk by chunk (recomputing the chunk's logits unless kept), the chunk's
    /// weight gradient added into `chunk(k).gradients` (rows of the head weight's gradient), ∂L/∂norm
    /// accumulated, then the final norm's backward: `dresidual` (N, dim) receives ∂L/∂input.
    /// `done(k)` is called when chunk k's weights and gradients are no longer needed.
    public func headBackward(dresidual: UnsafeMutablePointer<Float>, input: UnsafeMutablePointer<Float>,
                             norm: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
                             logits: UnsafeMutablePointer<Float>, keepsLogits: Bool, gradientScale: Float = 1,
                             parameters: ParameterBases? = nil, keep: ((Int) throws -> UnsafeMutablePointer<Float>?)? = nil,
                             chunk: ((Int) throws -> (weights: UnsafePointer<Float>, gradients: UnsafeMutablePointer<Float>?))? = nil,
                             done: ((Int) throws -> Void)? = nil) throws {
        for k in 0..<headChunkCount {
            let kept = try keep?(k), out = kept ?? logits + logitsOffset(k, keeps: keepsLogits)
            let (w, g) = try chunk?(k) ?? defaultHeadRows(k)
            headChunkBackward(k, logits: out, computed: keepsLogits || kept != nil, norm: norm, weights: w, gradients: g,
                              gradientScale: gradientScale)
            try done?(k)
        }
        let norm = outputNorm(parameters)
        headNormBackward(dresidual: dresidual, input: input, rstd: rstd, weights: norm.weights, gradients: norm.gradients)
    }

    /// output_norm's weight and gradient (LoRA: the frozen base's, and a scratch row for the gradient).
    func outputNorm(_ parameters: ParameterBases?) -> (weights: UnsafePointer<Float>, gradients: UnsafeMutablePointer<Float>) {
        if let lora { return (UnsafePointer(lora.base.outputNorm), lora.normGradientSink) }
        let p = parameters ?? model.resident
        return (UnsafePointer(model.pointer("output_norm.weight", in: p.weights)), model.pointer("output_norm.weight", in: p.gradients))
    }

    /// Head chunk `k`'s weight rows and gradient rows in the model's own allocations; LoRA: the frozen
    /// head's rows dequantized into the trainer's buffer, and no gradient.
    func defaultHeadRows(_ k: Int) -> (weights: UnsafePointer<Float>, gradients: UnsafeMutablePointer<Float>?) {
        let range = headChunk(k)
        if let lora {
            lora.base.head.dequantize(rows: range.lowerBound, count: range.count, into: lora.headRows)
            return (UnsafePointer(lora.headRows), nil)
        }
        return (UnsafePointer(residentHeadRows(range, in: model.weights.base)), residentHeadRows(range, in: model.gradients.base))
    }

    /// Pass 2 of chunk `k` (in order, from 0): its logits (pass 1's in `logits` when `computed`, else
    /// computed again there) become ∂L/∂logits; the chunk's weight gradient is added into `gradients`
    /// and ∂L/∂norm accumulated.
    public func headChunkBackward(_ k: Int, logits out: UnsafeMutablePointer<Float>, computed: Bool,
                                  norm: UnsafeMutablePointer<Float>, weights w: UnsafePointer<Float>,
                                  gradients g: UnsafeMutablePointer<Float>?, gradientScale: Float = 1) {
        let c = model.config, n = self.n, range = headChunk(k), chunks = headChunkCount
        let dloss = gradientScale / Float(targetCount)
        if !computed {
            timed("matmul fwd") { matmulForward(out, norm, w, n: n, inDim: c.dim, outDim: range.count) }
            timed("cross-entropy") { exponentiate(out, chunk: k, firstPass: false) }
        }
        timed("cross-entropy") {
            let count = range.count
            TrainingThreads.forEachRange(n, minPerThread: 8) { rows in
                for i in rows {
                    let d = out + i * count
                    // An ignored target's row adds nothing to the loss: its logits get no gradient.
                    guard targetBuffer[i] >= 0 else { d.update(repeating: 0, count: count); continue }
                    let scale = Float(Foundation.exp(Double(chunkMax[i * chunks + k]) - Double(rowMax[i])) / rowSum[i])
                    for j in 0..<count { d[j] = d[j] * scale * dloss }
                    let t = Int(targetBuffer[i])
                    if range.contains(t) { d[t - range.lowerBound] -= dloss }
                }
            }
        }
        timed("matmul bwd") {
            matmulBackward(dxn, g, out, norm, w, n: n, inDim: c.dim, outDim: range.count, accumulateInput: k > 0)
        }
    }

    /// After every chunk's pass 2: the final norm's backward; `dresidual` (N, dim) receives ∂L/∂input and
    /// output_norm's gradient is added into `gradients`.
    public func headNormBackward(dresidual: UnsafeMutablePointer<Float>, input: UnsafeMutablePointer<Float>,
                                 rstd: UnsafeMutablePointer<Float>, weights: UnsafePointer<Float>,
                                 gradients: UnsafeMutablePointer<Float>) {
        let dim = model.config.dim
        dresidual.update(repeating: 0, count: n * dim)
        timed("rmsnorm") {
            rmsnormBackward(dresidual, gradients, dxn, input, weights, rstd: rstd, rows: n, dim: dim)
        }
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
