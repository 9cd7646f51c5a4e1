// `offload train --budget` when parameters, gradients and AdamW state are streamed
// from the spill folder (Runtime.StreamedTrainingSession): setting up the store
// (from the model file, random weights or a checkpoint, unit by unit), the plan
// line, and what each step line reports.

import Foundation
import Memory
import Models
import Planning
import Runtime
import Tensors

final class StreamedRun: TrainingRun {
    let session: StreamedTrainingSession
    let recorder: TraceRecorder?
    let predictedSeconds: Double
    let budget: Int

    init(_ command: Train, config: LlamaConfig, ropeStyle: RopeStyle, data: TokenWindows, options: TrainingOptions,
         budget: Int, source: WeightSource?, seed: UInt64, resume: (String, CheckpointInfo)?) throws {
        guard let folder = command.disk else {
            throw OffloadError("[train] a budget of \(formatBytes(budget)) does not hold the weights, gradients and AdamW state "
                               + "(\(formatBytes(4 * ParameterLayout(config: config).totalFloats * 4))): they are streamed "
                               + "from disk, so give a folder on a local SSD with --disk DIR")
        }
        let hw = try command.hardware.map { try HardwareProfile.load(path: $0) } ?? .defaultCPU
        recorder = command.trace != nil ? TraceRecorder() : nil
        let disk = try DiskStore(roots: [folder], options: command.diskStoreOptions, trace: recorder)
        session = try StreamedTrainingSession(config: config, ropeStyle: ropeStyle, data: data, options: options,
                                              budget: budget, disk: disk, trace: recorder,
                                              activations: command.strategy.flatMap(StreamedActivations.init(rawValue:)))
        self.budget = budget
        let s = session.streamer
        // The simulator's figure for the same order of work: every block's activations offloaded (or
        // every block recomputed), parameters streamed, the head as the trainer runs it.
        let chain = s.predictionChain(hardware: hw)
        let sim = Planner.plan(s.offloadsActivations ? .offload : .recompute, .stream,
                               PlanRequest(chain: chain, hardware: hw, useDisk: true)).simulation
        predictedSeconds = sim?.stepSeconds ?? .nan
        // Before the store fills the budget: the heap that tokenizing and parsing the model file
        // left free goes back to the system.
        MemoryTier.releaseFreeHeap()
        let setup = now()
        if let (dir, info) = resume {
            try session.restore(from: dir, info: info)
        } else if let source {
            try s.initialize(from: source)
        } else {
            try s.initializeRandom(seed: seed)
        }
        let stored = disk.stats.current
        let activations = (s.offloadsActivations ? "every half-block's activations to disk and back"
            : "every block recomputed, its input " + (s.keepsInputs ? "kept in memory" : "on disk"))
            + "; head logits of \(s.keptLogitChunks) of \(s.trainer.headChunkCount) vocabulary chunks kept, the others "
            + "to disk and back"
        note("plan: stream (parameters, gradients and AdamW state on \(folder); \(activations)) under a RAM budget of \(formatBytes(budget)) "
             + "(at least \(formatBytes(s.minimumBudget)) at this batch); predicted step "
             + String(format: "%.2f s", predictedSeconds) + " (simulator, hardware \(hw.name)); peak RAM at most "
             + "the budget, peak disk \(formatBytes(stored + s.stepDiskBytes)); "
             + "\(formatBytes(stored)) (\(stored) bytes) written to the store in " + String(format: "%.1f s", now() - setup))
    }

    var step: Int { session.step }
    var stateBytes: Int { 4 * session.model.layout.totalFloats * 4 }
    func trainStep() throws -> StepResult { try session.trainStep() }

    func measured(_ r: StepResult) -> String {
        guard let x = session.lastStep else { return "" }
        return String(format: "  peak %@ (budget %@)  step %.2f s (pred %.2f s, %.2f×)  disk r/w %@/%@",
                      formatBytes(x.peakComputeBytes), formatBytes(budget), r.seconds, predictedSeconds,
                      r.seconds / predictedSeconds, formatBytes(x.bytesRead), formatBytes(x.bytesWritten))
            + (x.arenaMisses > 0 ? "  arena misses \(x.arenaMisses)" : "")
    }

    func save(to dir: String, sourceModel: String?, lastLoss: Float?) throws {
        try session.save(to: dir, sourceModel: sourceModel, lastLoss: lastLoss)
    }

    func finish(trace: String?) throws {
        try reportBudget(budget, peak: session.lastStep?.peakComputeBytes, recorder: recorder, trace: trace)
    }
}
