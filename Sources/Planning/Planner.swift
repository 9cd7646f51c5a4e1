// Planning a step: run every strategy × parameter placement, simulate each, and
// pick the fastest one that fits (`auto`). Infeasible requests say the smallest
// budget that would fit.
import Foundation
import Memory
import Tensors

/// What the user asks for.
public struct PlanRequest: Sendable {
    public var chain: ModelChain
    public var hardware: HardwareProfile
    /// Compute tier budget in bytes (nil: unlimited). On a CPU-only profile this is the
    /// one RAM budget: host memory is compute memory, and every plan keeps all it holds there.
    public var computeBudget: Int?
    /// Host tier budget in bytes (nil: unlimited). Only with an accelerator profile;
    /// `validate()` rejects it on a CPU-only one.
    public var hostBudget: Int?
    /// Offloaded activations and streamed parameters go to disk when true, to the host otherwise.
    public var useDisk: Bool
    /// Memory slots of the rotor and pofo dynamic programs.
    public var rotorSlots: Int
    public var pofoSlots: Int
    /// The executor computes a saving forward into its saved tensors (see `BuildOptions`).
    public var savingForwardsNeedNoTemporaries = false
    /// The executor holds the gradients outside the schedule (see `BuildOptions`).
    public var gradientsOutsideSchedule = false

    public init(chain: ModelChain, hardware: HardwareProfile = .defaultCPU, computeBudget: Int? = nil,
                hostBudget: Int? = nil, useDisk: Bool = false, rotorSlots: Int = 500, pofoSlots: Int = 40) {
        self.chain = chain; self.hardware = hardware; self.computeBudget = computeBudget; self.hostBudget = hostBudget
        self.useDisk = useDisk; self.rotorSlots = rotorSlots; self.pofoSlots = pofoSlots
    }

    public var budgets: TierBudgets {
        var b: TierBudgets = [:]
        if let c = computeBudget { b[.compute] = c }
        if let h = hostBudget { b[.host] = h }
        return b
    }
    public var offloadTier: Tier { useDisk ? .disk : .host }

    /// Rejects a host budget where host memory is compute memory: one budget can't be two.
    public func validate() throws {
        if hostBudget != nil && hardware.hostIsCompute {
            throw OffloadError("[plan] --host-budget does not apply to \(hardware.name): it has no accelerator, so host memory and compute memory are the same RAM and --budget covers both; drop --host-budget (or use a profile with \"accelerator\": true)")
        }
    }
}

/// One strategy's plan and its predicted cost, or why it does not fit.
public struct PlanResult: Sendable {
    public var name: String
    public var activations: ActivationStrategy
    public var parameters: ParameterPlacement
    public var kvOffload: Bool
    public var schedule: Schedule?
    public var simulation: Simulation?
    /// What the dynamic program itself predicted (rotor, pofo), for comparison.
    public var modelSeconds: Double?
    public var planningSeconds: Double
    public var failure: String?
    /// The combination is not a plan of its own on this hardware (`failure` says why),
    /// e.g. zero-offload on a CPU-only machine, where it is keep.
    public var skipped = false
    /// Peak bytes against the budget as the run measures them, where that is not the schedule's own
    /// peak: with what the executor holds outside the schedule, or the streamed step's tier.
    public var budgetedPeak: Int?
    public var fits: Bool { simulation != nil && failure == nil }
}

public enum Planner {
    /// Bytes the parameter placement keeps in compute memory at its worst, so the
    /// activation planners know what they may use.
    public static func parameterReserve(_ chain: ModelChain, _ p: ParameterPlacement, hostIsCompute: Bool = false) -> Int {
        let stages = chain.stages
        let maxStage = stages.map(\.parameterBytes).max() ?? 0
        let tied = stages.last?.borrowed.isEmpty == false ? stages[0].parameterBytes : 0
        let training = chain.mode == .train
        switch p {
        case .keep: return chain.parameterBytes + (training ? chain.optimizerStateBytes + maxStage + tied : 0)
        case .zeroOffload: return chain.parameterBytes + (training ? maxStage + tied : 0)
        case .stream where hostIsCompute && training:
            // CPU-only: stage k's step runs in RAM right after its backward, so w, g, m, v of k,
            // the next stage's weights and (once the head has run) the tied weight and its gradient.
            var worst = 2 * maxStage + tied
            for k in stages.indices {
                var b = 4 * stages[k].parameterBytes
                if k > 0 { b += 2 * tied + (k - 1 > 0 || tied == 0 ? stages[k - 1].parameterBytes : 0) }
                worst = max(worst, b)
            }
            return worst
        case .stream: return 2 * maxStage + tied + (training ? maxStage + tied : 0)
        }
    }

    /// Builds and simulates one combination.
    public static func plan(_ a: ActivationStrategy, _ p: ParameterPlacement, kvOffload: Bool = false,
                            _ r: PlanRequest) -> PlanResult {
        let clock = Date()
        var result = planUntimed(a, p, kvOffload: kvOffload, r)
        result.planningSeconds = Date().timeIntervalSince(clock)
        return result
    }

    static func planUntimed(_ a: ActivationStrategy, _ p: ParameterPlacement, kvOffload: Bool, _ r: PlanRequest) -> PlanResult {
        let chain = r.chain
        let n = chain.count
        var name = chain.mode == .train ? a.rawValue : (kvOffload ? "kv-offload" : "keep")
        if p != .keep { name += "+" + p.rawValue }
        var result = PlanResult(name: name, activations: a, parameters: p, kvOffload: kvOffload, schedule: nil,
                                simulation: nil, modelSeconds: nil, planningSeconds: 0, failure: nil)
        var options = BuildOptions(parameters: p, parameterTier: r.offloadTier, offloadTier: r.offloadTier,
                                   kvOffload: kvOffload, savingForwardsNeedNoTemporaries: r.savingForwardsNeedNoTemporaries)
        options.gradientsOutsideSchedule = r.gradientsOutsideSchedule
        if p == .zeroOffload && r.useDisk == false && chain.mode == .generate {
            result.failure = "zero-offload applies to training"; return result
        }
        if r.hardware.hostIsCompute {
            // Host memory is compute memory: what would only move bytes there is no plan of its own.
            var same: String?
            if p == .zeroOffload { same = "zero-offload is keep here (the optimizer step runs in the same RAM, on the same cores)" }
            else if p == .stream && !r.useDisk { same = "streaming weights from host memory is keep here; give --disk to stream from disk" }
            else if chain.mode == .train && (a == .offload || a == .pofo) && !r.useDisk {
                same = "offloading activations to host memory frees nothing here; give --disk"
            } else if chain.mode == .generate && kvOffload && !r.useDisk {
                same = "offloading the KV cache to host memory frees nothing here; give --disk"
            }
            if let same {
                result.failure = "n/a on a CPU-only machine: " + same; result.skipped = true; return result
            }
        }
        func attempt(_ actions: [ChainAction]) -> Bool {
            let s = chain.schedule(actions, strategy: name, options: options, hardware: r.hardware)
            do {
                let sim = try s.simulate(budgets: r.budgets)
                if !sim.leaks.isEmpty { result.failure = "schedule leaks " + sim.leaks.prefix(3).joined(separator: ", "); return true }
                if r.hardware.hostIsCompute && (sim.peak[.host] ?? 0) > 0 {
                    result.failure = "internal error: the schedule uses a host tier on a CPU-only machine"; return true
                }
                result.schedule = s; result.simulation = sim; result.failure = nil
                return true
            } catch {
                result.failure = "\(error)"; result.schedule = s
                return false
            }
        }
        if chain.mode == .generate {
            _ = attempt(ChainStrategies.decode(n)); return result
        }
        switch a {
        case .keep: _ = attempt(ChainStrategies.keep(n))
        case .recompute: _ = attempt(ChainStrategies.recompute(n))
        case .sqrt: _ = attempt(ChainStrategies.sqrt(n))
        case .offload: _ = attempt(ChainStrategies.offload(n))
        case .rotor, .pofo:
            let remat = RematChain(chain)
            let reserve = parameterReserve(chain, p, hostIsCompute: r.hardware.hostIsCompute)
            let total = r.computeBudget ?? (remat.input.reduce(0, +) + remat.saved.reduce(0, +)
                                            + (remat.forwardTemp.max() ?? 0) + (remat.backwardTemp.max() ?? 0)
                                            + reserve)
            var activationBudget = Double(total - reserve)
            // Rounding, temporaries the DP does not see and transfer timing can make a
            // plan overflow in the exact simulation: shrink and retry.
            if activationBudget <= 0 {
                result.failure = "parameters, gradients and optimizer state alone need \(formatBytes(reserve))"
                return result
            }
            for _ in 0..<6 {
                guard activationBudget > 0 else { break }
                let slots = a == .rotor ? r.rotorSlots : r.pofoSlots
                let slot = activationBudget / Double(slots)
                let disc = remat.discretized(slot: slot)
                let table = RotorTable(chain: disc, slots: slots)
                var actions: [ChainAction]
                if a == .rotor {
                    let t = table.time(0, n - 1, slots)
                    if t == .infinity { result.failure = "no recomputation schedule fits in \(formatBytes(Int(activationBudget))) for activations"; return result }
                    result.modelSeconds = t
                    actions = table.actions(0, n - 1, slots)
                } else {
                    // Offloads and prefetches run at once on one disk: each at its share of the duplex rate.
                    let shared = r.useDisk ? r.hardware.duplexFactor : 1
                    let problem = PofoProblem(chain: disc, slots: slots,
                                              writeRate: r.hardware.bandwidth(from: .compute, to: r.offloadTier) * shared / slot,
                                              readRate: r.hardware.bandwidth(from: r.offloadTier, to: .compute) * shared / slot)
                    var solver = PofoSolver(problem, rotor: table)
                    guard let (t, choices) = solver.solve() else {
                        result.failure = "no schedule fits in \(formatBytes(Int(activationBudget))) for activations"; return result
                    }
                    result.modelSeconds = t
                    actions = solver.actions(choices)
                }
                if attempt(actions) { return result }
                activationBudget *= 0.85
            }
        }
        return result
    }

    /// Every strategy × parameter placement for the request.
    public static func compareAll(_ r: PlanRequest) -> [PlanResult] {
        var out: [PlanResult] = []
        if r.chain.mode == .generate {
            for p in [ParameterPlacement.keep, .stream] { for kv in [false, true] { out.append(plan(.keep, p, kvOffload: kv, r)) } }
            return out
        }
        for p in ParameterPlacement.allCases {
            for a in ActivationStrategy.allCases { out.append(plan(a, p, r)) }
        }
        return out
    }

    /// The fastest plan that fits every budget, among `results`.
    public static func best(_ results: [PlanResult]) -> PlanResult? {
        results.filter(\.fits).min { $0.simulation!.stepSeconds < $1.simulation!.stepSeconds }
    }

    /// `auto`: the fastest fitting plan; if none fits, an error naming the smallest
    /// compute budget that would.
    public static func auto(_ r: PlanRequest) throws -> (chosen: PlanResult, all: [PlanResult]) {
        try r.validate()
        let all = compareAll(r)
        if let b = best(all) { return (b, all) }
        throw OffloadError(infeasibleMessage(r))
    }

    /// The smallest compute budget (bytes) some plan fits in, with that plan's name:
    /// a binary search on the budget over everything `auto` would try.
    public static func smallestComputeBudget(_ r: PlanRequest) -> (bytes: Int, name: String)? {
        var q = r
        q.computeBudget = nil
        let unlimited = compareAll(q)
        guard let free = best(unlimited) else { return nil }
        let fitting = unlimited.filter(\.fits).compactMap { $0.simulation?.peak[.compute] }
        var lo = r.computeBudget ?? 0, hi = fitting.min() ?? free.simulation!.peak[.compute]!
        var name = free.name
        if hi <= lo { return (hi, name) }
        while hi - lo > max(1, hi / 500) {
            let mid = lo + (hi - lo) / 2
            q.computeBudget = mid
            if let b = best(compareAll(q)) { hi = mid; name = b.name } else { lo = mid }
        }
        q.computeBudget = hi
        if let b = best(compareAll(q)) { name = b.name }
        return (hi, name)
    }

    public static func infeasibleMessage(_ r: PlanRequest) -> String {
        let budget = r.computeBudget.map(formatBytes) ?? "unlimited"
        // CPU-only: one budget for everything in RAM (compute and host are the same memory).
        let kind = r.hardware.hostIsCompute ? "RAM" : "compute"
        var msg = "[plan] no strategy fits \(r.chain.model) (\(r.chain.mode.rawValue), batch \(r.chain.batch), seq \(r.chain.seqLen)) in a \(kind) budget of \(budget)"
        if r.hardware.hostIsCompute { msg += " (no accelerator: host and compute memory are the same RAM, all of it in this budget)" }
        if let h = r.hostBudget { msg += " and a host budget of \(formatBytes(h))" }
        if let s = smallestComputeBudget(r) {
            msg += "; the smallest \(kind) budget that fits is \(formatBytes(s.bytes)) (\(s.bytes) bytes, \(s.name))"
        } else if r.hostBudget != nil {
            msg += "; nothing fits even with unlimited compute memory: raise --host-budget or use --disk"
        } else if !r.useDisk {
            msg += "; nothing fits even with unlimited memory: use --disk"
        }
        return msg
    }
}
