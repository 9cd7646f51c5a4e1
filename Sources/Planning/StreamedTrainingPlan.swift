// The streamed training step's placement (parameters, gradients and AdamW state on
// disk): its units, the parts their optimizer state is updated in, what each phase's
// compute ops hold at once, the smallest budget, whether activations are offloaded
// or recomputed, which block inputs and head logits stay in memory, and the order of
// every read. Decided here and only here: `offload plan` and `offload train` read the
// same plan, and Runtime's StreamedTrainer executes it (how, not when or where).
import Foundation
import Memory
import Models
import Tensors

/// A piece of the parameters moved as one: `floats` floats at `offset` of the layout.
public struct ParameterUnit: Sendable {
    public var name: String
    public var offset: Int
    public var floats: Int
    /// Pieces [start, end) (relative to `offset`) whose m and v are read and updated at a time.
    public var parts: [Range<Int>]
    public var bytes: Int { floats * 4 }
}

/// What a streamed step does with a block's activations between its forward and its backward.
public enum StreamedActivations: String, Sendable, CaseIterable {
    /// Both halves' go to disk and come back for the backward.
    case offload
    /// Only the block's input is kept (in memory or on disk); the backward recomputes the rest.
    case recompute
}

/// One read of the step, in the order the step consumes them.
public struct PlannedRead: Sendable, Equatable {
    public var name: String
    public var bytes: Int
}

public struct StreamedTrainingPlan: Sendable {
    public let config: LlamaConfig
    public let batch: Int
    public let seqLen: Int
    public let budget: Int
    /// The trainer's own buffers (backward scratch, head state, per-row losses), outside the tier.
    public let scratchBytes: Int
    public let headChunkRows: Int
    public let headChunkCount: Int
    public let activations: StreamedActivations
    public var offloadsActivations: Bool { activations == .offload }
    /// Whether block inputs stay in memory between forward and backward (else they go to disk);
    /// recomputing only.
    public let keepsInputs: Bool
    /// Bytes the compute ops of each phase may hold at once: the forward, the head, the blocks'
    /// backward, the embedding's backward.
    public let reserves: [Int]
    /// The smallest budget this step runs in, with the activations chosen.
    public let minimumBudget: Int
    /// The smallest budget of each activation choice.
    public let offloadMinimum: Int
    public let recomputeMinimum: Int
    /// Head chunks whose pass-1 logits stay in memory for pass 2: as many as the budget holds above
    /// its minimum beside the first reads of the backward. The others' logits go to disk behind the
    /// compute and come back for pass 2: on this machine that costs less than computing them again.
    public let keptLogitChunks: Int

    public let embeddingUnits: [ParameterUnit]
    /// Two per block: its attention half, then its feed-forward half (`blockUnit(_:_:)`).
    public let blockUnits: [ParameterUnit]
    public let normUnit: ParameterUnit
    /// Chunks of output.weight (empty when tied to the embedding).
    public let outputUnits: [ParameterUnit]
    public var units: [ParameterUnit] { embeddingUnits + blockUnits + [normUnit] + outputUnits }
    public func blockUnit(_ l: Int, _ h: BlockHalf) -> ParameterUnit { blockUnits[2 * l + h.rawValue] }

    public var rows: Int { batch * seqLen }
    public var inputBytes: Int { rows * config.dim * 4 }
    public var logitsBytes: Int { rows * headChunkRows * 4 }
    public func actsBytes(_ h: BlockHalf) -> Int {
        BlockActivations.floats(config: config, batch: batch, seqLen: seqLen, half: h) * 4
    }
    public func spills(_ k: Int) -> Bool { k >= keptLogitChunks }
    /// The vocabulary rows of head chunk `k`.
    public func headChunk(_ k: Int) -> Range<Int> {
        k * headChunkRows ..< min(config.vocabSize, (k + 1) * headChunkRows)
    }
    /// Weights, gradients and AdamW m and v in fp32: what a step would hold with nothing streamed.
    public static func stateBytes(_ c: LlamaConfig) -> Int { 4 * ParameterLayout(config: c).totalFloats * 4 }

    /// - Parameters:
    ///   - activations: nil chooses: offload when the budget leaves room to read a half's activations
    ///     ahead of its backward, or when it is too small to recompute; else recompute.
    ///   - partBytes: most bytes of m (and of v) read at once for an update.
    ///   - headChunk: vocabulary rows per head chunk (default `LlamaTrainer.headChunkRows`), as the trainer's.
    /// - Throws: when `budget` is below the smallest budget of the activations chosen, naming it.
    public init(config c: LlamaConfig, batch: Int, seqLen: Int, budget: Int, activations: StreamedActivations? = nil,
                partBytes: Int = 4 << 20, headChunk: Int? = nil) throws {
        guard batch > 0, seqLen > 0 else { throw OffloadError("batch and sequence length must be positive") }
        let layout = ParameterLayout(config: c)
        let n = batch * seqLen
        let chunkRows = headChunk ?? LlamaTrainer.headChunkRows(config: c, rows: n)
        let chunkCount = (c.vocabSize + chunkRows - 1) / chunkRows
        self.config = c; self.batch = batch; self.seqLen = seqLen; self.budget = budget
        headChunkRows = chunkRows; headChunkCount = chunkCount
        scratchBytes = LlamaTrainer.activationBytes(config: c, batch: batch, seqLen: seqLen, ownsActivations: false,
                                                    headChunk: chunkRows)
        guard chunkRows * c.dim % 4096 == 0 || chunkCount == 1 else {
            throw OffloadError("head chunks of \(chunkRows) rows are not whole 4096-float blocks")
        }
        func parts(_ floats: Int) -> [Range<Int>] {
            let per = max(1024, partBytes / 4 / 1024 * 1024)
            return stride(from: 0, to: floats, by: per).map { $0 ..< min(floats, $0 + per) }
        }
        func unit(_ name: String, _ offset: Int, _ floats: Int) -> ParameterUnit {
            ParameterUnit(name: name, offset: offset, floats: floats, parts: parts(floats))
        }
        func chunks(_ tensor: String, _ prefix: String) -> [ParameterUnit] {
            let e = layout.entry(tensor)!
            return (0..<chunkCount).map { k in
                let r = k * chunkRows ..< min(c.vocabSize, (k + 1) * chunkRows)
                return unit("\(prefix).\(k)", e.offset + r.lowerBound * c.dim, r.count * c.dim)
            }
        }
        embeddingUnits = chunks("token_embd.weight", "embd")
        let halves = (0..<c.layers).flatMap { l in
            let r = layout.range(of: .block(l)), ffn = layout.entry("blk.\(l).ffn_norm.weight")!.offset
            return [unit("blk.\(l).attn", r.lowerBound, ffn - r.lowerBound), unit("blk.\(l).ffn", ffn, r.upperBound - ffn)]
        }
        blockUnits = halves
        let norm = layout.entry("output_norm.weight")!
        normUnit = unit("norm", norm.offset, norm.elements)
        outputUnits = c.tiedEmbeddings ? [] : chunks("output.weight", "out")

        let input = accountedBytes(n * c.dim * 4)
        let halfActs = BlockHalf.allCases.map {
            accountedBytes(BlockActivations.floats(config: c, batch: batch, seqLen: seqLen, half: $0) * 4)
        }
        let acts = halfActs.reduce(0, +), maxHalfActs = halfActs.max()!
        let chunkUnit = accountedBytes(chunkRows * c.dim * 4)
        let halfW = halves.map { accountedBytes($0.bytes) }.max() ?? 0
        let blockW = stride(from: 0, to: halves.count, by: 2).map {
            accountedBytes(halves[$0].bytes) + accountedBytes(halves[$0 + 1].bytes)
        }.max() ?? 0
        let maxPart = accountedBytes(min(partBytes, max(halfW, chunkUnit)))
        let logits = accountedBytes(n * chunkRows * 4), normW = accountedBytes(normUnit.bytes)
        // What each phase's compute ops allocate at once (its reserve), and beside it what one op
        // reads in at once. Forward: input, output and both halves' activations; one half's weights.
        // Head: its input, norm, rstd, a chunk's logits and gradient, the norm's gradient, ∂L/∂x; the
        // norm's weights, a chunk's weights, its logits read back or a part of m and v. Backward,
        // offloading: ∂L/∂x and a half's gradient; the half's activations and weights, then its weights
        // and a part of m and v. Backward, recomputing: ∂L/∂x, both halves' activations, the
        // recomputed output and a half's gradient; the input, the block's weights and a part of m and v.
        let forwardReserve = 2 * input + acts
        let headReserve = 3 * input + accountedBytes(n * 4) + logits + chunkUnit + normW
        let offloadReserve = input + halfW, recomputeReserve = 2 * input + acts + halfW
        let forward = forwardReserve + halfW
        let head = headReserve + normW + chunkUnit + max(logits, 2 * maxPart)
        let offloading = offloadReserve + halfW + max(maxHalfActs, 2 * maxPart)
        let recomputing = recomputeReserve + input + blockW + 2 * maxPart
        offloadMinimum = scratchBytes + max(forward, head, offloading)
        recomputeMinimum = scratchBytes + max(forward, head, recomputing)
        // Offload when the budget leaves room to read a half's activations and weights ahead of its
        // backward: on a disk as fast as the cores, writing and reading them back costs less time than
        // recomputing them, because the transfers overlap compute. Below that, recompute when it fits.
        let lookahead = maxHalfActs + halfW
        self.activations = activations
            ?? (budget >= offloadMinimum + lookahead || budget < recomputeMinimum ? .offload : .recompute)
        let offloads = self.activations == .offload
        minimumBudget = offloads ? offloadMinimum : recomputeMinimum
        guard budget >= minimumBudget else {
            throw OffloadError("a budget of \(formatBytes(budget)) is below the \(formatBytes(minimumBudget)) "
                               + "(\(minimumBudget) bytes) a streamed step needs at batch \(batch) × \(seqLen): the "
                               + "trainer's scratch \(formatBytes(scratchBytes)) + the largest phase, of forward "
                               + "\(formatBytes(forward)), head \(formatBytes(head)) and backward "
                               + "\(formatBytes(offloads ? offloading : recomputing)) "
                               + (offloads ? "offloading" : "recomputing") + " activations")
        }
        reserves = [forwardReserve, headReserve, offloads ? offloadReserve : recomputeReserve, input + chunkUnit]
        let checkpoints = c.layers * input
        keepsInputs = !offloads && budget - minimumBudget - checkpoints >= 2 * blockW
        let ahead = (offloads ? lookahead : input + blockW) + 2 * maxPart
        let spare = budget - minimumBudget - ahead - (keepsInputs ? checkpoints : 0)
        keptLogitChunks = min(chunkCount, max(0, spare / logits))
    }

    /// The smallest budget a streamed step runs in with `activations` (nil: either).
    public static func minimumBudget(config: LlamaConfig, batch: Int, seqLen: Int,
                                     activations: StreamedActivations? = nil) throws -> Int {
        // A budget of 0 always throws; the plan's minima do not depend on the budget.
        let probe = try StreamedTrainingPlan(config: config, batch: batch, seqLen: seqLen, budget: Int.max / 4,
                                             activations: activations ?? .offload)
        switch activations {
        case .offload: return probe.offloadMinimum
        case .recompute: return probe.recomputeMinimum
        case nil: return min(probe.offloadMinimum, probe.recomputeMinimum)
        }
    }

    /// Tensor name on disk of `role` ("w", "m", "v", "g") of `unit` (part `p` for m and v).
    public static func key(_ role: String, _ unit: ParameterUnit, part p: Int? = nil) -> String {
        p.map { "\(role).\(unit.name).\($0)" } ?? "\(role).\(unit.name)"
    }

    /// The step's reads in the order the step takes them: the read stream of its schedule.
    public var reads: [PlannedRead] {
        let tied = outputUnits.isEmpty, head = tied ? embeddingUnits : outputUnits
        var r: [PlannedRead] = []
        func w(_ u: ParameterUnit) { r.append(PlannedRead(name: Self.key("w", u), bytes: u.bytes)) }
        func state(_ u: ParameterUnit) {
            for (i, p) in u.parts.enumerated() {
                r.append(PlannedRead(name: Self.key("m", u, part: i), bytes: p.count * 4))
                r.append(PlannedRead(name: Self.key("v", u, part: i), bytes: p.count * 4))
            }
        }
        embeddingUnits.forEach(w)
        blockUnits.forEach(w)
        w(normUnit)
        head.forEach(w)
        for (k, u) in head.enumerated() {
            if spills(k) { r.append(PlannedRead(name: "l.\(k)", bytes: logitsBytes)) }
            w(u)
            if !tied { state(u) }
        }
        state(normUnit)
        for l in (0..<config.layers).reversed() {
            let (attention, ffn) = (blockUnit(l, .attention), blockUnit(l, .ffn))
            if offloadsActivations {
                for (h, u) in [(BlockHalf.ffn, ffn), (.attention, attention)] {
                    r.append(PlannedRead(name: "a.\(u.name)", bytes: actsBytes(h))); w(u); state(u)
                }
            } else {
                if !keepsInputs { r.append(PlannedRead(name: "x.\(l)", bytes: inputBytes)) }
                w(attention); w(ffn); state(ffn); state(attention)
            }
        }
        for u in embeddingUnits {
            if tied { r.append(PlannedRead(name: Self.key("g", u), bytes: u.bytes)) }
            w(u); state(u)
        }
        return r
    }

    /// What the plan table says of its placement, in words.
    public var summary: String {
        (offloadsActivations ? "every half-block's activations to disk and back"
            : "every block recomputed, its input " + (keepsInputs ? "kept in memory" : "on disk"))
            + "; head logits of \(keptLogitChunks) of \(headChunkCount) vocabulary chunks kept, the others to disk and back"
    }
}
