// A Llama model as a chain of stages (embedding, blocks, head) with the sizes
// and times a planner needs. Cost model only: no kernels run here.
import Foundation
import Kernels
import Models
import Memory
import Tensors

public enum RunMode: String, Codable, Sendable, CaseIterable {
    case train, generate
}

/// One stage of the chain: what its forward keeps, what it costs.
public struct ChainStage: Codable, Sendable, Equatable {
    /// `embd`, the block index, or `head`.
    public var name: String
    /// The boundary activation this stage reads (`act.7.attn_in`).
    public var input: LogicalTensor
    /// Activations its forward keeps for the backward besides the input.
    public var saved: [LogicalTensor]
    public var forwardTempBytes: Int
    public var backwardTempBytes: Int
    public var forwardFLOPs: Double
    public var backwardFLOPs: Double
    public var forwardSeconds: Double
    public var backwardSeconds: Double
    /// This stage's own parameters (`w.7.ffn_up`).
    public var parameters: [LogicalTensor]
    /// Parameters of other stages this stage also reads (the tied embedding in the head).
    public var borrowed: [String]
    /// Generation only: the KV cache this stage reads and extends (`kv.7`).
    public var kvCache: LogicalTensor?

    public init(name: String, input: LogicalTensor, saved: [LogicalTensor], forwardTempBytes: Int,
                backwardTempBytes: Int, forwardFLOPs: Double = 0, backwardFLOPs: Double = 0,
                forwardSeconds: Double, backwardSeconds: Double, parameters: [LogicalTensor] = [],
                borrowed: [String] = [], kvCache: LogicalTensor? = nil) {
        self.name = name; self.input = input; self.saved = saved; self.forwardTempBytes = forwardTempBytes
        self.backwardTempBytes = backwardTempBytes; self.forwardFLOPs = forwardFLOPs; self.backwardFLOPs = backwardFLOPs
        self.forwardSeconds = forwardSeconds; self.backwardSeconds = backwardSeconds; self.parameters = parameters
        self.borrowed = borrowed; self.kvCache = kvCache
    }

    public var savedBytes: Int { saved.reduce(0) { $0 + $1.bytes } }
    public var parameterBytes: Int { parameters.reduce(0) { $0 + $1.bytes } }
}

/// The whole model as the planner sees it.
public struct ModelChain: Codable, Sendable, Equatable {
    public var model: String
    public var mode: RunMode
    public var batch: Int
    public var seqLen: Int
    public var stages: [ChainStage]
    /// What the last stage hands the backward (the loss gradient seed).
    public var output: LogicalTensor
    /// Seconds of the optimizer step per parameter byte (AdamW streams w, g, m, v).
    public var optimizerSecondsPerParameterByte: Double
    /// What the optimizer keeps per parameter tensor (its two state tensors `adamNames` split it).
    public var optimizerState = OptimizerStateSize.adamw

    public init(model: String, mode: RunMode, batch: Int, seqLen: Int, stages: [ChainStage], output: LogicalTensor,
                optimizerSecondsPerParameterByte: Double) {
        self.model = model; self.mode = mode; self.batch = batch; self.seqLen = seqLen; self.stages = stages
        self.output = output; self.optimizerSecondsPerParameterByte = optimizerSecondsPerParameterByte
    }

    public var count: Int { stages.count }
    public var parameterBytes: Int { stages.reduce(0) { $0 + $1.parameterBytes } }
    /// Input bytes of stage k, with k == count giving the output.
    public func boundaryBytes(_ k: Int) -> Int { k == count ? output.bytes : stages[k].input.bytes }
    public func boundaryName(_ k: Int) -> String { k == count ? output.name : stages[k].input.name }
    /// Gradient of boundary k (same size as the boundary).
    public func boundaryGradName(_ k: Int) -> String { k == count ? "dact.loss" : "d" + stages[k].input.name }

    public static func gradName(_ w: String) -> String { "grad." + w.dropFirst(2) }
    public static func adamNames(_ w: String) -> [String] { ["adam.m." + w.dropFirst(2), "adam.v." + w.dropFirst(2)] }
    /// The bytes of the two state tensors of fp32 weight tensor `w` (`adamNames` order).
    public func optimizerStateBytes(_ w: LogicalTensor) -> [Int] {
        let total = optimizerState.bytes(count: w.bytes / 4)
        return [total - total / 2, total / 2]
    }
    /// Optimizer state of every parameter.
    public var optimizerStateBytes: Int { stages.reduce(0) { $0 + $1.parameters.reduce(0) { $0 + optimizerStateBytes($1).reduce(0, +) } } }
}

extension ModelChain {
    /// Builds the chain for a config: fp32 weights, activations and optimizer state
    /// (the CPU backend trains in fp32), AdamW.
    ///
    /// Saved activations follow the trainer's kernels: per block the normalized inputs
    /// and rstd, q/k/v, each row's attention log-sum-exp (B, T, H), attention output,
    /// the residual after attention, gate, up and silu(gate)·up; the head keeps its
    /// normalized input and the (B, T, V) probabilities.
    /// - Note: generation (`mode == .generate`) describes one decode step: one new
    ///   token for each of `batch` sequences with `seqLen` tokens of context.
    /// The work of one training step as the cost model counts it, per block and for the head: what
    /// `offload profile` divides by the trainer's measured times to get `TrainingKernelRates`.
    public struct TrainingWork: Sendable {
        /// Forward matrix products of one block (the backward does twice as many), FLOPs.
        public var blockMatmulFLOPs: Double
        /// Causal attention of one block as its kernels compute it (`causalAttentionFLOPs`; counted
        /// twice that backward), FLOPs.
        public var blockAttentionFLOPs: Double
        /// Norms, RoPE and SwiGLU of one block: forward bytes (the backward moves twice as many plus the
        /// saved activations).
        public var blockElementwiseBytes: Double
        public var blockSavedBytes: Double
        /// The backward's recompute of the feed-forward's gate and up products when it runs in tiles
        /// (`BlockActivations.ffnTileRows`), FLOPs at the forward's rate; 0 when it runs whole.
        public var blockRecomputeFLOPs: Double
        /// The head's product (forward), FLOPs, and its logits (one cross-entropy pass each way).
        public var headFLOPs: Double
        public var logits: Double

        public init(config c: LlamaConfig, batch B: Int, seqLen T: Int) {
            let bt = Double(B * T), d = c.dim, ff = c.ffnDim
            let perRow: Int = d * c.qDim + 2 * d * c.kvDim + c.qDim * d + 3 * d * ff
            blockMatmulFLOPs = 2 * bt * Double(perRow)
            blockAttentionFLOPs = ModelChain.causalAttentionFLOPs(batch: B, heads: c.heads, seqLen: T, headDim: c.headDim)
            blockElementwiseBytes = bt * Double(6 * d + 4 * ff) * 4
            blockSavedBytes = Double(ModelChain.savedActivations("", config: c, batch: B, seqLen: T).reduce(0) { $0 + $1.bytes })
            blockRecomputeFLOPs = BlockActivations.ffnTileRows(config: c, rows: B * T) == nil ? 0 : 2 * bt * Double(2 * d * ff)
            headFLOPs = 2 * bt * Double(d * c.vocabSize)
            logits = bt * Double(c.vocabSize)
        }
    }

    /// FLOPs of one causal attention forward as the kernels compute it: each band of
    /// `attentionBandRows` query rows against every key up to its last row (QKᵀ and P·V), so
    /// 4·B·H·hd·Σ rows·keys, about 2·B·H·hd·(T² + 64·T). Counting the band's diagonal block whole
    /// matters at short T (25% more than T²/2 pairs at T = 256), where `offload profile` measures the rate.
    public static func causalAttentionFLOPs(batch: Int, heads: Int, seqLen T: Int, headDim: Int) -> Double {
        var pairs = 0
        for r0 in stride(from: 0, to: T, by: attentionBandRows) {
            let rows = min(attentionBandRows, T - r0)
            pairs += rows * (r0 + rows)
        }
        return 4 * Double(batch * heads * headDim) * Double(pairs)
    }

    /// What a training block's forward saves for its backward, named `prefix` + field.
    /// The trainer's own table (`BlockActivations`) less the block's input: without the feed-forward's
    /// intermediates when it runs in tiles.
    static func savedActivations(_ p: String, config c: LlamaConfig, batch B: Int, seqLen T: Int) -> [LogicalTensor] {
        BlockActivations.table(config: c, batch: B, seqLen: T).dropFirst()
            .map { LogicalTensor(name: p + $0.name, bytes: $0.floats * 4) }
    }

    public static func llama(_ c: LlamaConfig, mode: RunMode, batch: Int, seqLen: Int,
                             hardware: HardwareProfile) -> ModelChain {
        let f4 = 4
        let B = batch, T = mode == .train ? seqLen : 1, ctx = seqLen
        let bt = B * T
        let d = c.dim, ff = c.ffnDim, qd = c.qDim, kvd = c.kvDim, H = c.heads, V = c.vocabSize, hd = c.headDim
        func t(_ n: String, _ elements: Int) -> LogicalTensor { LogicalTensor(name: n, bytes: elements * f4) }
        func params(_ stage: ParameterStage, prefix: String) -> [LogicalTensor] {
            c.parameters(of: stage).map { spec in
                var n = spec.name
                if n.hasSuffix(".weight") { n.removeLast(".weight".count) }
                if let r = n.range(of: "blk.\(prefix).") { n = String(n[r.upperBound...]) }
                return LogicalTensor(name: "w.\(prefix).\(n)", bytes: spec.elements * f4)
            }
        }
        func seconds(flops: Double, bytes: Double) -> Double {
            flops / hardware.gemmFlops + bytes / hardware.memoryBandwidth
        }
        // The trainer's measured kernel rates, when the profile has them (training only).
        let training = mode == .train ? hardware.training : nil
        let work = TrainingWork(config: c, batch: batch, seqLen: seqLen)
        var stages: [ChainStage] = []
        // The training attention's per-thread scratch (its memory is linear in T: no T × T scores).
        let attentionScratch = attentionTrainingScratch(threads: 16, seqLen: T,
                                                        shape: AttentionShape(heads: H, kvHeads: c.kvHeads, headDim: hd))
        // Embedding: gather rows. Backward scatters into the gradient.
        let embParams = params(.embedding, prefix: "embd")
        stages.append(ChainStage(
            name: "embd", input: LogicalTensor(name: "act.embd.tokens", bytes: bt * 4), saved: [],
            forwardTempBytes: 0, backwardTempBytes: 0, forwardFLOPs: 0, backwardFLOPs: 0,
            forwardSeconds: seconds(flops: 0, bytes: Double(bt * d * f4 * 2)),
            backwardSeconds: seconds(flops: 0, bytes: Double(bt * d * f4 * 3)),
            parameters: embParams, borrowed: [], kvCache: nil))
        for i in 0..<c.layers {
            let p = "act.\(i)."
            let attnFlops: Double, kvBytes: Int
            let matFlops = 2.0 * Double(bt) * Double(d * qd + 2 * d * kvd + qd * d + 3 * d * ff)
            var saved: [LogicalTensor] = []
            var kv: LogicalTensor? = nil
            if mode == .train {
                // Causal QKᵀ and AV; the backward recomputes QKᵀ and adds dP, dV, dQ, dK: 2.5× this.
                attnFlops = causalAttentionFLOPs(batch: B, heads: H, seqLen: T, headDim: hd)
                saved = savedActivations(p, config: c, batch: B, seqLen: T)
                kvBytes = 0
            } else {
                attnFlops = 4.0 * Double(B * H) * Double(ctx) * Double(hd)
                kvBytes = 2 * B * ctx * kvd * f4
                kv = LogicalTensor(name: "kv.\(i)", bytes: kvBytes)
            }
            let savedBytes = saved.reduce(0) { $0 + $1.bytes }
            let wp = params(.block(i), prefix: "\(i)")
            let wBytes = wp.reduce(0) { $0 + $1.bytes }
            let elementwise = Double(bt * (6 * d + 4 * ff) * f4)
            var fwdSeconds = mode == .train
                ? seconds(flops: matFlops + attnFlops, bytes: elementwise)
                : max(matFlops / hardware.gemmFlops, Double(wBytes + kvBytes) / hardware.memoryBandwidth)
                    + attnFlops / hardware.gemmFlops
            let recompute = mode == .train ? work.blockRecomputeFLOPs : 0
            var bwdSeconds = mode == .train
                ? seconds(flops: 2 * matFlops + 2.5 * attnFlops + recompute, bytes: 2 * elementwise + Double(savedBytes)) : 0
            if let k = training {
                let w = work
                fwdSeconds = w.blockMatmulFLOPs / k.matmulFlops + w.blockAttentionFLOPs / k.attentionFlops
                    + w.blockElementwiseBytes / k.elementwiseBytesPerSecond
                bwdSeconds = 2 * w.blockMatmulFLOPs / k.matmulBackwardFlops + 2 * w.blockAttentionFLOPs / k.attentionBackwardFlops
                    + w.blockRecomputeFLOPs / k.matmulFlops
                    + (2 * w.blockElementwiseBytes + w.blockSavedBytes) / k.elementwiseBytesPerSecond
            }
            // In tiles the feed-forward's backward holds four tiles (`LlamaTrainer`), not whole intermediates.
            let ffnTemp = BlockActivations.ffnTileRows(config: c, rows: bt).map { 4 * $0 * ff } ?? 2 * bt * ff
            stages.append(ChainStage(
                name: "\(i)", input: t(p + "attn_in", bt * d), saved: saved,
                forwardTempBytes: (bt * max(d, ff) + (mode == .train ? attentionScratch : B * H * ctx)) * f4,
                backwardTempBytes: (ffnTemp + 2 * bt * d + attentionScratch) * f4,
                forwardFLOPs: matFlops + attnFlops, backwardFLOPs: 2 * matFlops + 2.5 * attnFlops + recompute,
                forwardSeconds: fwdSeconds, backwardSeconds: bwdSeconds,
                parameters: wp, borrowed: [], kvCache: kv))
        }
        // Head: final norm, output projection, softmax cross-entropy.
        var headParams = params(.head, prefix: "head")
        var borrowed: [String] = []
        if c.tiedEmbeddings { borrowed = embParams.map(\.name) }
        headParams = headParams.map { $0 }
        let headFlops = 2.0 * Double(bt) * Double(d) * Double(V), logits = Double(bt * V)
        let headSaved = mode == .train ? [t("act.head.norm", bt * d), t("act.head.rstd", bt), t("act.head.probs", bt * V)] : []
        stages.append(ChainStage(
            name: "head", input: t("act.head.in", bt * d), saved: headSaved,
            forwardTempBytes: bt * V * f4, backwardTempBytes: (bt * V + bt * d) * f4,
            forwardFLOPs: headFlops, backwardFLOPs: 2 * headFlops,
            forwardSeconds: training.map { headFlops / $0.matmulFlops + logits / $0.crossEntropyLogitsPerSecond }
                ?? seconds(flops: headFlops, bytes: Double(bt * V * f4 * 3)),
            backwardSeconds: mode != .train ? 0
                : training.map { 2 * headFlops / $0.matmulBackwardFlops + logits / $0.crossEntropyLogitsPerSecond }
                    ?? seconds(flops: 2 * headFlops, bytes: Double(bt * V * f4 * 2)),
            parameters: headParams, borrowed: borrowed, kvCache: nil))
        return ModelChain(model: c.name, mode: mode, batch: batch, seqLen: seqLen, stages: stages,
                          output: LogicalTensor(name: "act.loss", bytes: f4),
                          optimizerSecondsPerParameterByte: training.map { 1 / (4 * $0.adamwParametersPerSecond) }
                              ?? 7.0 / hardware.memoryBandwidth)
    }
}
