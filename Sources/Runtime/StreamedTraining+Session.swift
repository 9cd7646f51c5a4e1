// A training run whose parameters and optimizer state are streamed (StreamedTrainer):
// the same options, data order, learning-rate schedule, log lines and checkpoint
// files as TrainingSession, so a streamed run and an in-memory run can be compared
// byte for byte, and either can resume the other's checkpoint. Checkpoints are
// written and read unit by unit; the model is never whole in memory.

import Foundation
import Memory
import Models
import Planning
import Tensors

public final class StreamedTrainingSession {
    public let options: TrainingOptions
    public let data: TokenWindows
    public let streamer: StreamedTrainer
    public var model: TrainableLlama { streamer.trainer.model }
    /// Optimizer steps completed.
    public var step: Int { streamer.steps }
    /// Micro-batches consumed: the data position.
    public var nextBatch: Int { step * options.accumulate }
    /// What the last step measured.
    public private(set) var lastStep: StreamedStep?

    public convenience init(config: LlamaConfig, ropeStyle: RopeStyle, data: TokenWindows, options: TrainingOptions,
                            budget: Int, disk: DiskStore, hardware: HardwareProfile = .defaultCPU, trace: TraceRecorder? = nil,
                            activations: StreamedActivations? = nil) throws {
        let plan: StreamedTrainingPlan
        do {
            plan = try StreamedTrainingPlan(config: config, batch: options.batch, seqLen: options.seqLen, budget: budget,
                                            activations: activations)
        } catch { throw OffloadError("[stream] \(error)") }
        try self.init(config: config, ropeStyle: ropeStyle, data: data, options: options, plan: plan, disk: disk,
                      hardware: hardware, trace: trace)
    }

    /// Executes `plan` (Planning's placement of the streamed step) with these options: its schedule as
    /// timed on `hardware`.
    public init(config: LlamaConfig, ropeStyle: RopeStyle, data: TokenWindows, options: TrainingOptions,
                plan: StreamedTrainingPlan, disk: DiskStore, hardware: HardwareProfile = .defaultCPU,
                trace: TraceRecorder? = nil) throws {
        try options.validate()
        guard options.optimizer == "adamw" else {
            throw OffloadError("[train] streamed parameters are updated with AdamW; --optimizer \(options.optimizer) is not streamed yet")
        }
        guard options.gradClip == 0 else {
            throw OffloadError("[train] --grad-clip needs every gradient before any update, and a streamed step updates each "
                               + "unit as soon as its gradient is complete: leave clipping off, or give a budget that holds "
                               + "the parameters, gradients and optimizer state")
        }
        guard options.accumulate == 1 else {
            throw OffloadError("[train] --accumulate is not streamed yet: a streamed step updates as soon as a gradient is complete")
        }
        guard data.seqLen == options.seqLen else {
            throw OffloadError("[train] data windows are \(data.seqLen) tokens, but --seq-len is \(options.seqLen)")
        }
        self.options = options; self.data = data
        let model = try TrainableLlama(config: config, ropeStyle: ropeStyle, resident: false)
        let trainer = try LlamaTrainer(model: model, batch: options.batch, seqLen: options.seqLen, ownsActivations: false)
        let adam = AdamW(beta1: options.beta1, beta2: options.beta2, eps: options.eps, weightDecay: options.weightDecay)
        streamer = try StreamedTrainer(trainer: trainer, optimizer: adam, plan: plan, disk: disk, hardware: hardware, trace: trace)
    }

    /// One optimizer step on the next batch.
    public func trainStep() throws -> StepResult {
        let (inputs, targets) = data.batch(nextBatch, size: options.batch)
        let lr = options.learningRateSchedule.lr(step: step, base: options.lr)
        let r = try streamer.step(inputs: inputs, targets: targets, lr: lr)
        lastStep = r
        return StepResult(step: step, loss: r.loss, gradNorm: r.gradNorm, lr: lr, tokens: options.tokensPerStep,
                          seconds: r.seconds)
    }

    /// Saves a checkpoint in TrainingSession's format, unit by unit from the disk store.
    public func save(to dir: String, sourceModel: String? = nil, lastLoss: Float? = nil) throws {
        let layout = model.layout, s = streamer
        func put(_ role: String, _ put: (UnsafeRawBufferPointer) throws -> Void) throws {
            try s.forEachUnit(role) { u, p in
                for (_, r, at) in s.pieces(of: u) { try put(UnsafeRawBufferPointer(start: p + at, count: r.count * 4)) }
            }
        }
        try Checkpoint.save(to: dir, model: model, options: options, step: step, nextBatch: nextBatch, data: data,
                            optimizer: "adamw", sourceModel: sourceModel, lastLoss: lastLoss,
                            weights: { path in
                                try writeCheckpointTensors(Checkpoint.weightSpecs(layout), metadata: ["format": "pt"], to: path) {
                                    try put("w", $0)
                                }
                            },
                            optimizerState: { path in
                                try writeCheckpointTensors(Checkpoint.stateSpecs(layout, roles: ["m", "v"]), to: path) { p in
                                    try put("m", p); try put("v", p)
                                }
                            })
    }

    /// Fills the disk store from checkpoint `dir` (weights, m, v and the step count).
    public func restore(from dir: String, info: CheckpointInfo) throws {
        guard info.optimizer == "adamw" else {
            throw OffloadError("[checkpoint] \(dir): optimizer state is for \(info.optimizer), not adamw")
        }
        let wf = info.files[Checkpoint.weightsFile], of = info.files[Checkpoint.optimizerFile]
        let weights = try CheckpointFileReader(path: dir + "/" + Checkpoint.weightsFile, expectBytes: wf?.bytes,
                                               expectChecksum: wf?.checksum)
        let state = try CheckpointFileReader(path: dir + "/" + Checkpoint.optimizerFile, expectBytes: of?.bytes,
                                             expectChecksum: of?.checksum)
        let s = streamer
        try s.initialize(steps: info.step) { role, u, p in
            for (e, r, at) in s.pieces(of: u) {
                if role == "w" {
                    try weights.read(e.name, shape: e.spec.shape, elements: r, into: p + at)
                } else {
                    try state.read("\(e.name).\(role)", shape: e.spec.shape, elements: r, into: p + at)
                }
            }
        }
    }
}
