// The training loop's one step: micro-batches forward/backward (gradients
// accumulated), global-norm clipping, learning-rate schedule, optimizer update.
// Every step is a pure function of (weights, optimizer state, step number, data),
// which is what makes a resumed run bit-identical to an uninterrupted one.
// Not here: files (Checkpoint), progress display and argument parsing (CLI).

import Foundation
import Kernels
import Models
import Tensors

/// Everything that decides what a run computes; recorded in checkpoints.
public struct TrainingOptions: Codable, Equatable, Sendable {
    public var batch = 4
    public var seqLen = 256
    /// Total optimizer steps of the run (the cosine schedule ends here).
    public var steps = 100
    public var lr: Float = 1e-4
    public var optimizer = "adamw"
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var eps: Float = 1e-8
    public var weightDecay: Float = 0
    public var momentum: Float = 0.9
    /// Maximum global gradient norm; 0 turns clipping off.
    public var gradClip: Float = 0
    /// Micro-batches per optimizer step.
    public var accumulate = 1
    /// "constant" or "cosine" (linear warm-up, then cosine to minLR).
    public var schedule = "constant"
    public var warmup = 0
    public var minLR: Float = 0
    public var shuffleSeed: UInt64?
    public var activationPolicy = ActivationPolicy.keepAll.rawValue
    /// zo-sgd: the perturbation ε (nil: 1e-3, MeZO's) and the seed z is drawn from (nil: 0).
    public var zoEps: Float?
    public var zoSeed: UInt64?
    /// LoRA: adapters trained on a frozen base (nil: every weight trained), and the seed of its dropout masks.
    public var lora: LoRASettings?
    public var loraSeed: UInt64?
    /// Data-parallel ranks (nil: one process): a step reads ranks × batch windows, each rank `batch` of them.
    public var ranks: Int?

    public init() {}

    public func validate() throws {
        func need(_ ok: Bool, _ what: String) throws { if !ok { throw OffloadError("[train] \(what)") } }
        try need(batch > 0, "--batch must be positive, got \(batch)")
        try need(seqLen > 0, "--seq-len must be positive, got \(seqLen)")
        try need(steps > 0, "--steps must be positive, got \(steps)")
        try need(accumulate > 0, "--accumulate must be positive, got \(accumulate)")
        try need(lr.isFinite && lr >= 0, "--lr must be a non-negative number, got \(lr)")
        try need(["adamw", "adamw8bit", "sgd", "zo-sgd"].contains(optimizer),
                 "--optimizer must be adamw, adamw8bit, sgd or zo-sgd, got '\(optimizer)'")
        if optimizer == "zo-sgd" {
            try need(accumulate == 1 && gradClip == 0, "--optimizer zo-sgd takes one batch per step and no --grad-clip")
            try need((zoEps ?? 1e-3) > 0, "--zo-eps must be positive")
        } else {
            try need(zoEps == nil && zoSeed == nil, "--zo-eps and --zo-seed apply to --optimizer zo-sgd only")
        }
        if let lora {
            try lora.validate()
            try need(optimizer != "zo-sgd", "--optimizer zo-sgd trains every weight; it does not combine with LoRA (--lora-rank)")
        }
        try need(["constant", "cosine"].contains(schedule), "--schedule must be constant or cosine, got '\(schedule)'")
        try need(warmup >= 0, "--warmup must not be negative")
        try need((0..<1).contains(beta1) && (0..<1).contains(beta2), "--beta1 and --beta2 must be in [0, 1)")
        try need(eps > 0, "--eps must be positive")
        try need(gradClip >= 0, "--grad-clip must not be negative (0 turns it off)")
        try need((ranks ?? 1) > 0, "the number of ranks must be positive")
        try need(ActivationPolicy(rawValue: activationPolicy) != nil,
                 "activation policy must be one of " + ActivationPolicy.allCases.map(\.rawValue).joined(separator: ", "))
    }

    /// zo-sgd updates as SGD without momentum does, with its gradient estimate g·z.
    public func makeOptimizer() -> any Optimizer {
        switch optimizer {
        case "sgd": return SGD(momentum: momentum, weightDecay: weightDecay)
        case "zo-sgd": return SGD(momentum: 0, weightDecay: weightDecay)
        case "adamw8bit": return AdamW8bit(beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay)
        default: return AdamW(beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay)
        }
    }

    public var learningRateSchedule: LearningRateSchedule {
        schedule == "cosine" ? .warmupCosine(warmup: warmup, total: steps, minLR: minLR) : .constant
    }

    /// Tokens of one step over every rank.
    public var tokensPerStep: Int { batch * (ranks ?? 1) * seqLen * accumulate }
}

/// What one step did, as `--log` writes it.
public struct StepResult: Codable, Equatable, Sendable {
    public var step: Int
    public var loss: Float
    public var gradNorm: Double
    public var lr: Float
    public var tokens: Int
    public var seconds: Double
    /// The validation loss after this step, when one was measured (`--eval-data`).
    public var evalLoss: Float?
    /// Several ranks: each rank's peak resident bytes so far, in rank order.
    public var rankPeakBytes: [Int]?
    /// Several ranks: bytes rank 0 handed to the others in this step (gradients, weights, losses).
    public var communicatedBytes: Int?
    public var tokensPerSecond: Double { seconds > 0 ? Double(tokens) / seconds : 0 }

    /// One JSON line: step, loss, grad_norm, lr, tokens, seconds, tokens_per_second, and eval_loss when measured.
    public var jsonLine: String {
        func num(_ x: Double) -> String { x.isFinite ? "\(x)" : "null" }
        return "{\"step\":\(step),\"loss\":\(num(Double(loss))),\"grad_norm\":\(num(gradNorm)),\"lr\":\(lr),"
            + "\"tokens\":\(tokens),\"seconds\":\(String(format: "%.4f", seconds)),"
            + "\"tokens_per_second\":\(String(format: "%.2f", tokensPerSecond))"
            + (evalLoss.map { ",\"eval_loss\":\(num(Double($0)))" } ?? "")
            + (rankPeakBytes.map { ",\"rank_peak_bytes\":[\($0.map(String.init).joined(separator: ","))]" } ?? "")
            + (communicatedBytes.map { ",\"communicated_bytes\":\($0)" } ?? "") + "}"
    }
}

public final class TrainingSession {
    /// The model whose weights are trained; with LoRA it holds none (the adapters are trained).
    public let model: TrainableLlama
    /// What the optimizer updates: `model`, or the LoRA adapters.
    public let trained: any TrainableParameters
    public let options: TrainingOptions
    public let trainer: LlamaTrainer
    public let optimizer: any Optimizer
    public let optimizerState: OptimizerState
    public let data: TokenWindows

    /// Optimizer steps completed.
    public var step: Int { optimizerState.step }
    /// Micro-batches consumed: the data position.
    public var nextBatch: Int { step * options.accumulate }

    /// When set, every micro-batch runs through this executor's schedule instead of
    /// `trainer.forwardBackward` (the trainer must then not own its activations).
    public var executor: TrainingExecutor?
    /// What the executor measured on the last micro-batch of the last step.
    public private(set) var lastExecuted: ExecutedStep?
    /// zo-sgd: the last step's projected gradient g = (L₊ − L₋) / 2ε.
    public private(set) var lastProjectedGradient: Float?
    /// The MPI job this session is one rank of (nil: one process). Its shard of the optimizer state is
    /// `optimizerState` under ZeRO 1.
    public let parallel: DataParallel?

    /// - Parameter ownsActivations: false for a session whose steps an executor runs
    ///   (`executor` must be set before the first step).
    public convenience init(model: TrainableLlama, data: TokenWindows, options: TrainingOptions, ownsActivations: Bool = true,
                            parallel: DataParallel? = nil) throws {
        try options.validate()
        guard data.seqLen == options.seqLen else {
            throw OffloadError("[train] data windows are \(data.seqLen) tokens, but --seq-len is \(options.seqLen)")
        }
        guard model.hasGradients || options.optimizer == "zo-sgd" else {
            throw OffloadError("[train] the model holds no gradients: only --optimizer zo-sgd trains it")
        }
        guard options.lora == nil else { throw OffloadError("[train] LoRA options need a LoRA session (init(base:adapters:...))") }
        try self.init(trainer: LlamaTrainer(model: model, batch: options.batch, seqLen: options.seqLen,
                                            policy: ActivationPolicy(rawValue: options.activationPolicy) ?? .keepAll,
                                            ownsActivations: ownsActivations),
                      trained: model, data: data, options: options, parallel: parallel)
    }

    /// A session training LoRA `adapters` (their settings must be `options.lora`) on the frozen `base`.
    public convenience init(base: FrozenLlama, adapters: LoRAAdapters, data: TokenWindows, options: TrainingOptions,
                            parallel: DataParallel? = nil) throws {
        try options.validate()
        guard data.seqLen == options.seqLen else {
            throw OffloadError("[train] data windows are \(data.seqLen) tokens, but --seq-len is \(options.seqLen)")
        }
        guard options.lora == adapters.settings else {
            throw OffloadError("[train] the adapters are rank \(adapters.settings.rank) on \(adapters.settings.targets), "
                               + "not what the options ask for")
        }
        try self.init(trainer: LlamaTrainer(base: base, adapters: adapters, batch: options.batch, seqLen: options.seqLen,
                                            policy: ActivationPolicy(rawValue: options.activationPolicy) ?? .keepAll),
                      trained: adapters, data: data, options: options, parallel: parallel)
    }

    private init(trainer: LlamaTrainer, trained: any TrainableParameters, data: TokenWindows, options: TrainingOptions,
                 parallel: DataParallel?) throws {
        if let parallel {
            guard (options.ranks ?? 1) == parallel.size else {
                throw OffloadError("[train] the options are for \(options.ranks ?? 1) ranks, but the job has \(parallel.size)")
            }
        }
        self.trainer = trainer; self.model = trainer.model; self.trained = trained
        trainer.lora?.dropoutSeed = options.loraSeed ?? 0
        self.data = data; self.options = options; self.parallel = parallel
        optimizer = options.makeOptimizer()
        optimizerState = OptimizerState(for: optimizer, layout: (parallel?.updated(trained) ?? trained).layout)
    }

    /// The whole optimizer state, for a checkpoint: gathered from every rank's shard under ZeRO 1 (every rank
    /// must call this together; nil on ranks other than 0).
    public func checkpointState() -> OptimizerState? {
        guard let parallel else { return optimizerState }
        let state = parallel.zero == 1
            ? parallel.gatherState(optimizerState, optimizer: optimizer, layout: trained.layout) : optimizerState
        return parallel.rank == 0 ? state : nil
    }

    /// Bytes of weights (LoRA: the frozen base as its file holds them, and the adapters), gradients,
    /// optimizer state and activations.
    public var memoryBytes: Int {
        let frozen = trainer.lora?.base.storedBytes ?? 0
        return frozen + trained.weights.bytes + trained.gradients.bytes + optimizerState.bytes + trainer.activationBytes
    }

    /// One optimizer step. A non-finite loss or gradient norm throws before anything is updated.
    public func trainStep() throws -> StepResult {
        var r = try runStep()
        if let parallel {
            r.communicatedBytes = parallel.bytesSent - sentBefore
            sentBefore = parallel.bytesSent
        }
        return r
    }
    private var sentBefore = 0

    /// Micro-batch `k`'s rows this process trains on; with several ranks, also every rank's count of targets.
    private func microBatch(_ k: Int) -> (inputs: [Int], targets: [Int], counts: [Int]?) {
        guard let parallel else {
            let (inputs, targets) = data.batch(k, size: options.batch)
            return (inputs, targets, nil)
        }
        let b = parallel.batch(data, k, rows: options.batch)
        return (b.inputs, b.targets, b.counts)
    }

    private func runStep() throws -> StepResult {
        let t0 = now()
        let number = step + 1
        var lossSum = 0.0
        let micro = options.accumulate
        if options.optimizer == "zo-sgd" {
            // Two forward passes and the update, no backward, no gradients: the log's grad_norm is |g|.
            let (inputs, targets, counts) = microBatch(nextBatch)
            var combine: ((plus: Float, minus: Float)) -> (plus: Float, minus: Float) = { $0 }
            if let parallel, let counts {
                // The two losses become the global batch's (weighted by targets, in rank order).
                combine = { l in
                    let all = parallel.exchange([Double(l.plus), Double(l.minus)])
                    return (Float(parallel.weightedMean(all.map { $0[0] }, counts: counts)),
                            Float(parallel.weightedMean(all.map { $0[1] }, counts: counts)))
                }
            }
            let lr = options.learningRateSchedule.lr(step: step, base: options.lr)
            let (loss, g) = try ZerothOrder.step(model, trainer: trainer, inputs: inputs, targets: targets,
                                                 seed: options.zoSeed ?? 0, step: number, eps: options.zoEps ?? 1e-3,
                                                 lr: lr, weightDecay: options.weightDecay, combine: combine)
            lastProjectedGradient = g
            optimizerState.step += 1
            return StepResult(step: number, loss: loss, gradNorm: Double(abs(g)), lr: lr, tokens: options.tokensPerStep,
                              seconds: now() - t0)
        }
        trained.zeroGradients()
        var rankLosses: [Double] = [], rankCounts: [[Int]] = []
        for m in 0..<micro {
            let (inputs, targets, counts) = microBatch(nextBatch + m)
            // Several ranks: this rank's gradient scaled by its share of the global batch's targets.
            var scale = 1 / Float(micro)
            if let parallel, let counts {
                scale *= Float(Double(counts[parallel.rank]) / Double(counts.reduce(0, +)))
                rankCounts.append(counts)
            }
            let loss: Float
            if let executor {
                let r = try executor.forwardBackward(inputs: inputs, targets: targets, gradientScale: scale)
                lastExecuted = r
                loss = r.loss
            } else {
                loss = try trainer.forwardBackward(inputs: inputs, targets: targets, gradientScale: scale,
                                                   draw: UInt64(nextBatch + m))
            }
            lossSum += Double(loss)
            rankLosses.append(Double(loss))
        }
        var loss = Float(lossSum / Double(micro))
        var norm: Double
        if let parallel {
            // The global loss: each micro-batch's rank losses weighted by their targets, in rank order.
            let all = parallel.exchange(rankLosses)
            loss = Float((0..<micro).reduce(0.0) { s, m in
                s + parallel.weightedMean(all.map { $0[m] }, counts: rankCounts[m])
            } / Double(micro))
            parallel.reduceGradients(trained.gradients)
            norm = parallel.gradientNorm(trained)
            if options.gradClip > 0 { trained.clipGradients(maxNorm: options.gradClip, norm: norm) }
        } else {
            norm = options.gradClip > 0 ? trained.clipGradients(maxNorm: options.gradClip) : trained.globalGradientNorm()
        }
        guard loss.isFinite, norm.isFinite else {
            throw TrainingStopped(step: number, loss: loss, gradNorm: norm)
        }
        let lr = options.learningRateSchedule.lr(step: step, base: options.lr)
        if let parallel {
            optimizer.step(parallel.updated(trained), state: optimizerState, lr: lr)
            parallel.shareUpdatedWeights(trained.weights)
        } else {
            optimizer.step(trained, state: optimizerState, lr: lr)
        }
        return StepResult(step: number, loss: loss, gradNorm: norm, lr: lr, tokens: options.tokensPerStep,
                          seconds: now() - t0)
    }

    /// The mean loss over every target trained on in `data`'s windows (each window once, in order), with the
    /// current weights and no gradients. A last partial batch is filled with repeated windows whose targets
    /// are ignored, so every window counts once.
    public func evaluate(_ data: TokenWindows) throws -> Float {
        guard data.seqLen == options.seqLen else {
            throw OffloadError("[eval] validation windows are \(data.seqLen) tokens, but --seq-len is \(options.seqLen)")
        }
        let B = options.batch, T = options.seqLen
        var sum = 0.0, count = 0
        for k in 0..<(data.windowCount + B - 1) / B {
            var (inputs, targets) = data.batch(k, size: B)
            let real = min(B, data.windowCount - k * B)
            for i in real * T ..< B * T { targets[i] = LlamaTrainer.ignoredTarget }
            let counted = targets.reduce(0) { $0 + ($1 == LlamaTrainer.ignoredTarget ? 0 : 1) }
            sum += Double(try executor?.loss(inputs: inputs, targets: targets) ?? trainer.loss(inputs: inputs, targets: targets))
                * Double(counted)
            count += counted
        }
        return Float(sum / Double(count))
    }
}

/// Training stopped at `step` because the loss or the gradient norm is not a finite number.
public struct TrainingStopped: Error, CustomStringConvertible {
    public var step: Int
    public var loss: Float
    public var gradNorm: Double
    public var description: String {
        let what = loss.isFinite ? "the gradient norm is \(gradNorm) (loss \(loss))" : "the loss is \(loss)"
        return "[train] step \(step): \(what), not a finite number; stopping before the update "
            + "(weights are those after step \(step - 1))"
    }
}

/// Threads for the training kernels and OpenBLAS.
public func setTrainingThreads(_ threads: Int) { TrainingThreads.set(threads) }
