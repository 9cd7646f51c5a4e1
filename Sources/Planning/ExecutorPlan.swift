// Planning a step for the CPU executor with parameters in memory: the chain with the
// temporaries the executor really allocates, and the budget the planner may give the
// schedule once what the executor holds for the whole step is set aside. Parameters
// that do not fit are StreamedTrainingPlan's; `TrainingPlanner` chooses between them.

import Foundation
import Memory
import Models
import Tensors

/// A plan the executor can run, with the figures to print before the first step.
public struct ExecutorPlan: Sendable {
    public var result: PlanResult
    public var schedule: Schedule
    public var simulation: Simulation
    /// Bytes the executor holds outside the schedule's accounting (see `executorOverhead`).
    public var overhead: Int
    /// The compute budget handed to the planner: the user's budget minus `overhead`.
    public var planningBudget: Int
    /// Predicted peak compute bytes of the executed step: the schedule's peak plus `overhead`. The
    /// executor keeps every gradient in one allocation for the whole step (in `overhead`), so the
    /// schedule's per-stage gradients take no bytes (`BuildOptions.gradientsOutsideSchedule`).
    public var predictedPeak: Int { (simulation.peak[.compute] ?? 0) + overhead }
    public var predictedSeconds: Double { simulation.stepSeconds }
    public var predictedDiskPeak: Int { simulation.peak[.disk] ?? 0 }
}

public enum ExecutorPlanning {
    static func pages(_ bytes: Int) -> Int { (bytes + 4095) / 4096 * 4096 }

    /// The cost model's chain with this executor's temporaries: a block forward that does not
    /// save (`input`/`none`) still computes every activation, into temporaries as large as the
    /// saved set; the backward's scratch is the trainer's (counted in the overhead, not per op).
    public static func chain(config: LlamaConfig, batch: Int, seqLen: Int, hardware: HardwareProfile,
                             optimizerState: OptimizerStateSize = .adamw) -> ModelChain {
        var chain = ModelChain.llama(config, mode: .train, batch: batch, seqLen: seqLen, hardware: hardware)
        chain.optimizerState = optimizerState
        for k in chain.stages.indices {
            let saved = chain.stages[k].saved.reduce(0) { $0 + pages($1.bytes) }
            // The simulator charges a forward's temporaries whatever it saves. Every strategy runs
            // the head saving all (its backward follows at once), so its (B, T, V) probabilities
            // are never temporaries; counting them twice would cost 200 MiB at SmolLM2 B=4 T=256.
            // (Were a plan to run the head without saving, the executor still checks the budget.)
            chain.stages[k].forwardTempBytes = k == chain.stages.count - 1 ? 0 : saved
            chain.stages[k].backwardTempBytes = 0
        }
        return chain
    }

    /// Bytes the executor holds that the schedule does not count: the whole gradient (the
    /// schedule frees each stage's after its optimizer step; the executor runs the step after
    /// the whole backward, as the in-memory path does), allocation padding of weights and
    /// optimizer state, the trainer's scratch and per-row losses, and page rounding of every
    /// activation.
    public static func executorOverhead(config: LlamaConfig, trainerBytes: Int, optimizerStateBytes: Int,
                                        chain: ModelChain) -> Int {
        let p = chain.parameterBytes, parameters = ParameterLayout(config: config).totalFloats * 4
        let activationTensors = chain.stages.reduce(0) { $0 + 2 + $1.saved.count }
        return parameters + (parameters - p) + max(0, optimizerStateBytes - chain.optimizerStateBytes)
            + trainerBytes + 4096 * activationTensors
    }

    /// The fastest `keep`-parameter plan that fits `budget` (`strategy` nil: any), or an error
    /// naming why none does.
    public static func plan(strategy: ActivationStrategy?, budget: Int, model: TrainableLlama, batch: Int,
                            seqLen: Int, trainerBytes: Int, optimizerStateBytes: Int, useDisk: Bool,
                            hardware: HardwareProfile = .defaultCPU) throws -> (chosen: ExecutorPlan, all: [PlanResult]) {
        try plan(strategy: strategy, budget: budget, config: model.config, batch: batch, seqLen: seqLen,
                 trainerBytes: trainerBytes, optimizerStateBytes: optimizerStateBytes, useDisk: useDisk, hardware: hardware)
    }

    /// The same, from the shape alone: the trainer's buffers and the optimizer's state as `offload train` allocates them.
    public static func plan(strategy: ActivationStrategy?, budget: Int, config: LlamaConfig, batch: Int, seqLen: Int,
                            trainerBytes: Int? = nil, optimizerState: OptimizerStateSize = .adamw,
                            optimizerStateBytes: Int? = nil, useDisk: Bool,
                            hardware: HardwareProfile = .defaultCPU) throws -> (chosen: ExecutorPlan, all: [PlanResult]) {
        let all = try compare(strategies: strategy.map { [$0] } ?? ActivationStrategy.allCases, budget: budget, config: config,
                              batch: batch, seqLen: seqLen, trainerBytes: trainerBytes, optimizerState: optimizerState,
                              optimizerStateBytes: optimizerStateBytes, useDisk: useDisk, hardware: hardware)
        let fitting = all.filter { $0.result.fits }.sorted { $0.result.simulation!.stepSeconds < $1.result.simulation!.stepSeconds }
        guard let best = fitting.first, let plan = best.plan else {
            let why = all.map { "\($0.result.name): \($0.result.failure ?? "?")" }.joined(separator: "; ")
            throw OffloadError("[plan] nothing fits \(formatBytes(budget)): \(why)")
        }
        return (plan, all.map(\.result))
    }

    /// Every activation strategy with parameters in memory under `budget`, each with its plan when it fits.
    public static func compare(strategies: [ActivationStrategy] = ActivationStrategy.allCases, budget: Int?,
                               config: LlamaConfig, batch: Int, seqLen: Int, trainerBytes: Int? = nil,
                               optimizerState: OptimizerStateSize = .adamw, optimizerStateBytes: Int? = nil, useDisk: Bool,
                               hardware: HardwareProfile = .defaultCPU) throws -> [(result: PlanResult, plan: ExecutorPlan?)] {
        let trainerBytes = trainerBytes
            ?? LlamaTrainer.activationBytes(config: config, batch: batch, seqLen: seqLen, ownsActivations: false)
        let optimizerStateBytes = optimizerStateBytes ?? optimizerState.bytes(config: config)
        let chain = chain(config: config, batch: batch, seqLen: seqLen, hardware: hardware, optimizerState: optimizerState)
        let overhead = executorOverhead(config: config, trainerBytes: trainerBytes, optimizerStateBytes: optimizerStateBytes,
                                        chain: chain)
        let planningBudget = budget.map { $0 - overhead }
        let resident = chain.parameterBytes + chain.optimizerStateBytes
        if let planningBudget, planningBudget <= resident {
            let why = "weights, gradients, optimizer state and the trainer's scratch need "
                + "\(formatBytes(overhead + resident)) in memory"
            return strategies.map { a in
                (PlanResult(name: a.rawValue, activations: a, parameters: .keep, kvOffload: false, schedule: nil,
                            simulation: nil, modelSeconds: nil, planningSeconds: 0, failure: why), nil)
            }
        }
        var request = PlanRequest(chain: chain, hardware: hardware, computeBudget: planningBudget, useDisk: useDisk)
        request.savingForwardsNeedNoTemporaries = true
        request.gradientsOutsideSchedule = true
        return strategies.map { a in
            var r = Planner.plan(a, .keep, request)
            guard r.fits, let s = r.schedule, let sim = r.simulation else {
                r.failure = r.failure.map { "\($0) (after \(formatBytes(overhead)) the executor holds outside the schedule)" }
                return (r, nil)
            }
            return (r, ExecutorPlan(result: r, schedule: s, simulation: sim, overhead: overhead,
                                    planningBudget: planningBudget ?? Int.max))
        }
    }
}
