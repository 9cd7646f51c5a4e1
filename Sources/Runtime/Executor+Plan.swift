// Planning a step for the CPU executor: the chain with the temporaries this
// executor really allocates, and the budget the planner may give the schedule
// once what the executor holds for the whole step is set aside. What is not
// here: choosing among parameter placements (only `keep` runs today).

import Foundation
import Memory
import Models
import Planning
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
    /// Predicted peak compute bytes of the executed step: the simulated peak plus `overhead`.
    public var predictedPeak: Int { (simulation.peak[.compute] ?? 0) + overhead }
    public var predictedSeconds: Double { simulation.stepSeconds }
    public var predictedDiskPeak: Int { simulation.peak[.disk] ?? 0 }
}

public enum ExecutorPlanning {
    static func pages(_ bytes: Int) -> Int { (bytes + 4095) / 4096 * 4096 }

    /// The cost model's chain with this executor's temporaries: a block forward that does not
    /// save (`input`/`none`) still computes every activation, into temporaries as large as the
    /// saved set; the backward's scratch is the trainer's (counted in the overhead, not per op).
    public static func chain(config: LlamaConfig, batch: Int, seqLen: Int, hardware: HardwareProfile) -> ModelChain {
        var chain = ModelChain.llama(config, mode: .train, batch: batch, seqLen: seqLen, hardware: hardware)
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
    public static func executorOverhead(model: TrainableLlama, trainerBytes: Int, optimizerStateBytes: Int,
                                        chain: ModelChain) -> Int {
        let p = chain.parameterBytes
        let activationTensors = chain.stages.reduce(0) { $0 + 2 + $1.saved.count }
        return model.gradients.bytes + (model.weights.bytes - p) + max(0, optimizerStateBytes - 2 * p)
            + trainerBytes + 4096 * activationTensors
    }

    /// The fastest `keep`-parameter plan that fits `budget` (`strategy` nil: any), or an error
    /// naming why none does.
    public static func plan(strategy: ActivationStrategy?, budget: Int, model: TrainableLlama, batch: Int,
                            seqLen: Int, trainerBytes: Int, optimizerStateBytes: Int, useDisk: Bool,
                            hardware: HardwareProfile = .defaultCPU) throws -> (chosen: ExecutorPlan, all: [PlanResult]) {
        let chain = chain(config: model.config, batch: batch, seqLen: seqLen, hardware: hardware)
        let overhead = executorOverhead(model: model, trainerBytes: trainerBytes, optimizerStateBytes: optimizerStateBytes,
                                        chain: chain)
        let planningBudget = budget - overhead
        guard planningBudget > 3 * chain.parameterBytes else {
            throw OffloadError("[plan] a budget of \(formatBytes(budget)) does not hold weights, gradients, optimizer state "
                               + "and scratch (\(formatBytes(overhead + 3 * chain.parameterBytes))); parameter streaming "
                               + "is not executed yet")
        }
        let request = PlanRequest(chain: chain, hardware: hardware, computeBudget: planningBudget, useDisk: useDisk)
        let candidates = strategy.map { [$0] } ?? ActivationStrategy.allCases
        let all = candidates.map { Planner.plan($0, .keep, request) }
        let fitting = all.filter(\.fits).sorted { $0.simulation!.stepSeconds < $1.simulation!.stepSeconds }
        guard let best = fitting.first, let s = best.schedule, let sim = best.simulation else {
            let why = all.map { "\($0.name): \($0.failure ?? "?")" }.joined(separator: "; ")
            throw OffloadError("[plan] nothing fits \(formatBytes(budget)) (\(formatBytes(planningBudget)) after "
                               + "\(formatBytes(overhead)) the executor holds): \(why)")
        }
        return (ExecutorPlan(result: best, schedule: s, simulation: sim, overhead: overhead, planningBudget: planningBudget), all)
    }
}
