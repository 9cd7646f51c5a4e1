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
         plan: StreamedTrainingPlan, hardware hw: HardwareProfile, source: WeightSource?, seed: UInt64,
         resume: (String, CheckpointInfo)?) throws {
        guard let folder = command.disk else { throw OffloadError("[train] a streamed step needs --disk DIR") }
        recorder = command.trace != nil ? TraceRecorder() : nil
        let disk = try DiskStore(roots: [folder], options: command.diskStoreOptions, trace: recorder)
        session = try StreamedTrainingSession(config: config, ropeStyle: ropeStyle, data: data, options: options,
                                              plan: plan, disk: disk, hardware: hw, trace: recorder)
        budget = plan.budget
        predictedSeconds = session.streamer.simulation.stepSeconds
        // Before the store fills the budget: the heap that tokenizing and parsing the model file
        // left free goes back to the system.
        MemoryTier.releaseFreeHeap()
        let setup = now()
        let s = session.streamer
        if let (dir, info) = resume {
            try session.restore(from: dir, info: info)
        } else if let source {
            try s.initialize(from: source)
        } else {
            try s.initializeRandom(seed: seed)
        }
        let stored = disk.stats.current
        note("plan: \(plan.activations.rawValue)+stream: parameters, gradients and AdamW state on \(folder); \(plan.summary); "
             + "at least \(formatBytes(plan.minimumBudget)) at this batch; predicted step "
             + String(format: "%.3f s", predictedSeconds) + " (simulator, hardware \(hw.name)); "
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
