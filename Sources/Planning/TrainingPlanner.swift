// What `offload train --budget` runs, and what `offload plan --mode train` shows: one
// decision for both. Parameters stay in memory (ExecutorPlanning: the activation
// strategies) when weights, gradients and AdamW state fit; otherwise, with a disk
// folder, they are streamed (StreamedTrainingPlan). `plan` accepts a budget exactly
// when `train` runs under it, and names the same smallest budget.
import Foundation
import Memory
import Models
import Tensors

/// The placement of a training step under a budget.
public enum TrainingPlacement: Sendable {
    /// Parameters, gradients and AdamW state in memory; activations as the schedule says.
    case inMemory(ExecutorPlan)
    /// Parameters, gradients and AdamW state on disk, read in per unit.
    case streamed(StreamedTrainingPlan)
}

public struct TrainingPlanRequest: Sendable {
    public var config: LlamaConfig
    public var batch: Int
    public var seqLen: Int
    public var budget: Int
    /// auto, stream, or an activation strategy's name (keep, recompute, sqrt, rotor, offload, pofo).
    public var strategy: String
    /// Whether a disk folder was given (streaming and offloading need one).
    public var useDisk: Bool
    public var hardware: HardwareProfile
    /// The optimizer's state per parameter (streaming parameters from disk updates them with AdamW only).
    public var optimizerState: OptimizerStateSize

    public init(config: LlamaConfig, batch: Int, seqLen: Int, budget: Int, strategy: String = "auto", useDisk: Bool,
                hardware: HardwareProfile = .defaultCPU, optimizerState: OptimizerStateSize = .adamw) {
        self.config = config; self.batch = batch; self.seqLen = seqLen; self.budget = budget
        self.strategy = strategy; self.useDisk = useDisk; self.hardware = hardware; self.optimizerState = optimizerState
    }

    /// Strategy names `train --strategy` and `plan --strategy` take for a training step.
    public static let strategies = ["auto", "stream"] + ActivationStrategy.allCases.map(\.rawValue)
        + StreamedActivations.allCases.map { $0.rawValue + "+stream" }
}

public enum TrainingPlanner {
    /// Weights, gradients and the optimizer's state: below this the parameters cannot stay in memory.
    public static func stateBytes(_ r: TrainingPlanRequest) -> Int {
        2 * ParameterLayout(config: r.config).totalFloats * 4 + r.optimizerState.bytes(config: r.config)
    }

    /// The in-memory strategies `r.strategy` allows (none for `stream`).
    static func inMemoryStrategies(_ r: TrainingPlanRequest) -> [ActivationStrategy] {
        r.strategy == "stream" || r.strategy.hasSuffix("+stream") ? []
            : ActivationStrategy(rawValue: r.strategy).map { [$0] } ?? ActivationStrategy.allCases
    }

    /// The streamed step's activation choice `r.strategy` allows; nil when it allows no streamed step
    /// (keep, sqrt, rotor, pofo run with parameters in memory only).
    static func streamedActivations(_ r: TrainingPlanRequest) -> StreamedActivations?? {
        switch r.strategy {
        case "auto", "stream": return .some(nil)
        default:
            let name = r.strategy.hasSuffix("+stream") ? String(r.strategy.dropLast(7)) : r.strategy
            return StreamedActivations(rawValue: name).map { .some($0) }
        }
    }

    /// The fastest in-memory plan under `budget`, or nil.
    static func inMemory(_ r: TrainingPlanRequest, budget: Int) throws -> ExecutorPlan? {
        let strategies = inMemoryStrategies(r)
        // Weights, gradients and optimizer state alone exceed the budget: no in-memory plan (and no solver run).
        guard !strategies.isEmpty, budget > stateBytes(r) else { return nil }
        let rows = try ExecutorPlanning.compare(strategies: strategies, budget: budget, config: r.config, batch: r.batch,
                                                seqLen: r.seqLen, optimizerState: r.optimizerState, useDisk: r.useDisk,
                                                hardware: r.hardware)
        return rows.compactMap(\.plan).min { $0.predictedSeconds < $1.predictedSeconds }
    }

    /// The plan `train` runs: the fastest with parameters in memory when one fits, else (with a disk)
    /// the streamed step; or an error saying what did not fit and the smallest budget that runs.
    public static func choose(_ r: TrainingPlanRequest) throws -> TrainingPlacement {
        if let best = try inMemory(r, budget: r.budget) { return .inMemory(best) }
        var why = inMemoryStrategies(r).isEmpty ? "" : "weights, gradients and optimizer state (\(formatBytes(stateBytes(r)))) "
            + "with the activations of \(r.strategy == "auto" ? "any strategy" : r.strategy) do not fit"
        if case .some(let activations) = streamedActivations(r) {
            if r.optimizerState != .adamw {
                why += (why.isEmpty ? "" : "; ") + "parameters streamed from disk are updated with AdamW only"
            } else if r.useDisk {
                do {
                    return .streamed(try StreamedTrainingPlan(config: r.config, batch: r.batch, seqLen: r.seqLen,
                                                              budget: r.budget, activations: activations))
                } catch {
                    why += (why.isEmpty ? "" : ", and streamed from disk ") + "\(error)"
                }
            } else {
                why += "; streaming them from disk needs a folder on a local SSD: give --disk DIR"
            }
        }
        var msg = "nothing runs in a RAM budget of \(formatBytes(r.budget)): \(why)"
        if let least = smallestBudget(r) {
            msg += "; the smallest budget that runs is \(formatBytes(least.bytes)) (\(least.bytes) bytes, \(least.name))"
        }
        throw OffloadError(msg)
    }

    /// One row per placement `train` can run, for `offload plan`'s table: the in-memory
    /// activation strategies, then (with a disk) the streamed step offloading or recomputing
    /// activations. A row fits exactly when `train` runs it under `budget`.
    public static func compare(_ r: TrainingPlanRequest) throws -> [PlanResult] {
        var out = try ExecutorPlanning.compare(budget: r.budget, config: r.config, batch: r.batch, seqLen: r.seqLen,
                                               optimizerState: r.optimizerState, useDisk: r.useDisk,
                                               hardware: r.hardware).map { row -> PlanResult in
            var p = row.result
            // What --budget limits: the schedule's peak and what the executor holds outside it.
            p.budgetedPeak = row.plan?.predictedPeak
            p.failure = p.failure.map(plain)
            return p
        }
        for a in StreamedActivations.allCases {
            let clock = Date()
            var row: PlanResult
            do {
                guard r.optimizerState == .adamw else { throw OffloadError("parameters streamed from disk are updated with AdamW only") }
                guard r.useDisk else { throw OffloadError("streaming parameters needs a disk folder: give --disk") }
                let plan = try StreamedTrainingPlan(config: r.config, batch: r.batch, seqLen: r.seqLen, budget: r.budget,
                                                    activations: a)
                row = streamedRow(plan, hardware: r.hardware)
            } catch {
                row = PlanResult(name: a.rawValue + "+stream", activations: a == .offload ? .offload : .recompute,
                                 parameters: .stream, kvOffload: false, schedule: nil, simulation: nil, modelSeconds: nil,
                                 planningSeconds: 0, failure: "\(error)")
            }
            row.planningSeconds = Date().timeIntervalSince(clock)
            out.append(row)
        }
        return out
    }

    /// The streamed plan as a table row: the simulator's step time for its order of work, and the
    /// memory, disk and traffic of the plan itself.
    public static func streamedRow(_ plan: StreamedTrainingPlan, hardware: HardwareProfile) -> PlanResult {
        let clock = Date()
        var row = PlanResult(name: plan.activations.rawValue + "+stream",
                             activations: plan.offloadsActivations ? .offload : .recompute, parameters: .stream,
                             kvOffload: false, schedule: nil, simulation: nil, modelSeconds: nil, planningSeconds: 0,
                             failure: nil)
        do {
            let (schedule, simulation) = try plan.simulation(hardware: hardware)
            row.schedule = schedule
            row.simulation = simulation
            // What --budget limits: the tier the schedule fills and the trainer's own buffers.
            row.budgetedPeak = (simulation.peak[.compute] ?? 0) + plan.scratchBytes
            if !simulation.leaks.isEmpty { row.failure = "internal: the streamed schedule leaks \(simulation.leaks.prefix(3))" }
        } catch {
            row.failure = "internal: the streamed step's schedule does not simulate: \(error)"
        }
        row.planningSeconds = Date().timeIntervalSince(clock)
        return row
    }

    /// The row `train` runs under `r` (what it prints before the first step).
    public static func row(for placement: TrainingPlacement, hardware: HardwareProfile) -> PlanResult {
        switch placement {
        case .inMemory(let p):
            var row = p.result
            row.budgetedPeak = p.predictedPeak
            return row
        case .streamed(let p):
            return streamedRow(p, hardware: hardware)
        }
    }

    /// The smallest budget `train` runs `r`'s shape in (whatever `r.budget`), and the plan it runs there.
    public static func smallestBudget(_ r: TrainingPlanRequest) -> (bytes: Int, name: String)? {
        var candidates: [(bytes: Int, name: String)] = []
        if r.useDisk, r.optimizerState == .adamw, case .some(let activations) = streamedActivations(r),
           let m = try? StreamedTrainingPlan.minimumBudget(config: r.config, batch: r.batch, seqLen: r.seqLen,
                                                           activations: activations),
           let plan = try? StreamedTrainingPlan(config: r.config, batch: r.batch, seqLen: r.seqLen, budget: m,
                                                activations: activations) {
            candidates.append((m, plan.activations.rawValue + "+stream"))
        }
        // In memory: a binary search from the state's bytes up to the keep-all peak (64 KiB resolution);
        // never below the state's bytes, so not searched when the streamed step runs in that.
        if candidates.allSatisfy({ $0.bytes > stateBytes(r) }), let free = try? inMemory(r, budget: Int.max / 4) {
            var lo = stateBytes(r), hi = free.predictedPeak, name = free.result.name
            if let p = try? inMemory(r, budget: hi) { name = p.result.name } else { hi = Int.max / 4 }
            while hi - lo > 1 << 16 {
                let mid = lo + (hi - lo) / 2
                if let p = try? inMemory(r, budget: mid) { hi = mid; name = p.result.name } else { lo = mid }
            }
            candidates.append((hi, name))
        }
        return candidates.min { $0.bytes < $1.bytes }
    }

    /// A failure as a person reads it: without the internal `[component]` prefixes.
    public static func plain(_ message: String) -> String {
        var m = message
        while m.hasPrefix("["), let close = m.firstIndex(of: "]") {
            m = String(m[m.index(after: close)...]).trimmingCharacters(in: .whitespaces)
        }
        return m
    }
}
