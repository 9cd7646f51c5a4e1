// `offload plan`: compare every strategy for a model, budget and machine before
// running anything; print the table, or JSON, and draw the chosen plan.
import ArgumentParser
import Foundation
import Models
import Memory
import Planning
import Tensors

/// Where `--model FILE` becomes a config. Wired to the GGUF / HF loaders when they land.
func loadConfig(modelPath: String) throws -> LlamaConfig {
    try loadWeights(modelPath).config
}

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Predict step time and peak memory of every strategy, and pick the fastest that fits.",
        discussion: """
        Strategies: keep, recompute, sqrt, rotor, offload, pofo (activations) × keep, \
        zero-offload, stream (parameters, gradients, optimizer state). Generation compares \
        keeping or streaming the weights and keeping or offloading the KV cache.
        """)

    @Option(help: "Model file (GGUF or Hugging Face directory).") var model: String?
    @Option(help: "Built-in model shape: \(LlamaConfig.builtIn.map(\.name).joined(separator: ", ")).") var config: String?
    @Option(help: "train or generate.") var mode: String = "train"
    @Option(help: "Sequences per step.") var batch: Int = 1
    @Option(name: .customLong("seq-len"), help: "Tokens per sequence (generate: context length).") var seqLen: Int = 256
    @Option(help: "Compute memory budget, e.g. 256MB, 24GiB. Without an accelerator (a CPU-only profile) the one RAM budget: compute and host memory together.") var budget: String?
    @Option(name: .customLong("host-budget"), help: "Host memory budget; only for a profile with an accelerator (on a CPU-only one host memory is compute memory).") var hostBudget: String?
    @Option(help: "Directory for the disk tier; offloaded tensors go to disk when given.") var disk: String?
    @Option(help: "Hardware profile JSON (from `offload profile`).") var hardware: String?
    @Option(help: "Strategy to choose: auto, a name from the table (rotor, pofo+stream, ...).") var strategy: String = "auto"
    @Flag(help: "Print JSON instead of a table.") var json = false
    @Option(help: "Write an SVG of the chosen plan's memory and streams.") var svg: String?
    @Option(help: "Write the chosen schedule as JSON.") var schedule: String?
    @Option(help: "Write the chosen plan's Chrome trace JSON.") var trace: String?

    @Flag(name: .customLong("benchmark-solvers"), help: "Time the rotor and pofo solvers on Llama-3-70B's 80 blocks and exit.")
    var benchmarkSolvers = false

    func validate() throws {
        if benchmarkSolvers { return }
        if (model == nil) == (config == nil) { throw ValidationError("give exactly one of --model FILE or --config NAME") }
        if RunMode(rawValue: mode) == nil { throw ValidationError("--mode must be train or generate, not '\(mode)'") }
        if batch < 1 || seqLen < 1 { throw ValidationError("--batch and --seq-len must be at least 1") }
        if let b = budget, parseBytes(b) == nil { throw ValidationError("--budget '\(b)' is not a size (try 256MB or 24GiB)") }
        if let b = hostBudget, parseBytes(b) == nil { throw ValidationError("--host-budget '\(b)' is not a size (try 8GiB)") }
    }

    func run() throws {
        if benchmarkSolvers { return try runSolverBenchmark() }
        let cfg = try model.map { try loadConfig(modelPath: $0) } ?? LlamaConfig.named(config ?? "")
        try cfg.validate()
        let hw = try hardware.map { try HardwareProfile.load(path: $0) } ?? .defaultCPU
        let runMode = RunMode(rawValue: mode)!
        let chain = ModelChain.llama(cfg, mode: runMode, batch: batch, seqLen: seqLen, hardware: hw)
        let request = PlanRequest(chain: chain, hardware: hw, computeBudget: budget.flatMap(parseBytes),
                                  hostBudget: hostBudget.flatMap(parseBytes), useDisk: disk != nil)
        try request.validate()
        let all = Planner.compareAll(request)
        let chosen: PlanResult
        if strategy == "auto" {
            guard let b = Planner.best(all) else { throw OffloadError(Planner.infeasibleMessage(request)) }
            chosen = b
        } else {
            guard let c = all.first(where: { $0.name == strategy }) else {
                throw ValidationError("unknown strategy '\(strategy)'; expected auto or one of: " + all.map(\.name).joined(separator: ", "))
            }
            guard c.fits else { throw OffloadError("[plan] \(strategy) does not fit: \(c.failure ?? "?")") }
            chosen = c
        }
        if json {
            print(try jsonReport(request, all, chosen))
        } else {
            print(table(request, all, chosen))
        }
        if let path = svg, let sim = chosen.simulation, let s = chosen.schedule {
            let title = "\(cfg.name) \(mode) batch \(batch) seq \(seqLen): \(chosen.name), step \(String(format: "%.3f", sim.stepSeconds)) s"
            try write(sim.svg(s, budgets: request.budgets, title: title, hostIsCompute: hw.hostIsCompute), to: path)
        }
        if let path = schedule, let s = chosen.schedule {
            try write(String(decoding: try s.jsonData(), as: UTF8.self), to: path)
        }
        if let path = trace, let sim = chosen.simulation, let s = chosen.schedule {
            try write(sim.chromeTrace(s), to: path)
        }
    }

    func write(_ text: String, to path: String) throws {
        do { try text.write(toFile: path, atomically: true, encoding: .utf8) } catch {
            throw OffloadError("[plan] cannot write \(path): \(error.localizedDescription)")
        }
    }

    func table(_ r: PlanRequest, _ all: [PlanResult], _ chosen: PlanResult) -> String {
        var lines: [String] = []
        let c = r.chain
        lines.append("\(c.model) \(c.mode.rawValue), batch \(c.batch), seq \(c.seqLen): \(formatBytes(c.parameterBytes)) of fp32 parameters, \(c.count) stages")
        // CPU-only: host memory is compute memory, so one RAM budget and one RAM peak column.
        let ram = r.hardware.hostIsCompute
        if ram {
            lines.append("budgets: RAM \(r.computeBudget.map(formatBytes) ?? "unlimited") (no accelerator: compute and host memory are the same RAM, this budget covers both), offload to \(r.offloadTier.rawValue); hardware \(r.hardware.name)")
        } else {
            lines.append("budgets: compute \(r.computeBudget.map(formatBytes) ?? "unlimited"), host \(r.hostBudget.map(formatBytes) ?? "unlimited"), offload to \(r.offloadTier.rawValue); hardware \(r.hardware.name)")
        }
        func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s : s + String(repeating: " ", count: w - s.count) }
        func lpad(_ s: String, _ w: Int) -> String { s.count >= w ? s : String(repeating: " ", count: w - s.count) + s }
        lines.append("  " + pad("strategy", 24) + lpad("step", 11) + (ram ? lpad("RAM peak", 14) : lpad("compute peak", 14) + lpad("host peak", 12))
                     + lpad("disk peak", 12) + lpad("moved", 12) + lpad("recompute", 11) + lpad("idle", 10) + lpad("plan", 9))
        for p in all {
            let mark = p.name == chosen.name ? "* " : "  "
            guard let s = p.simulation, p.fits else {
                let why = p.skipped ? "  " + String((p.failure ?? "").prefix(110)) : "  does not fit: " + String((p.failure ?? "").prefix(90))
                lines.append(mark + pad(p.name, 24) + why)
                continue
            }
            let memory = ram ? lpad(formatBytes(s.combinedPeak([.compute, .host])), 14)
                : lpad(formatBytes(s.peak[.compute] ?? 0), 14) + lpad(formatBytes(s.peak[.host] ?? 0), 12)
            lines.append(mark + pad(p.name, 24) + lpad(String(format: "%.3f s", s.stepSeconds), 11)
                         + memory
                         + lpad(formatBytes(s.peak[.disk] ?? 0), 12) + lpad(formatBytes(s.totalBytesMoved), 12)
                         + lpad(String(format: "%.1f%%", 100 * s.recomputeSeconds / max(1e-12, s.computeSeconds - s.recomputeSeconds)), 11)
                         + lpad(String(format: "%.3f s", s.computeIdleSeconds), 10)
                         + lpad(String(format: "%.2f s", p.planningSeconds), 9))
        }
        lines.append("* chosen: \(chosen.name)")
        return lines.joined(separator: "\n")
    }

    func jsonReport(_ r: PlanRequest, _ all: [PlanResult], _ chosen: PlanResult) throws -> String {
        func entry(_ p: PlanResult) -> [String: Any] {
            var e: [String: Any] = ["name": p.name, "activations": p.activations.rawValue, "parameters": p.parameters.rawValue,
                                    "fits": p.fits, "planningSeconds": p.planningSeconds]
            if let s = p.simulation, p.fits {
                e["stepSeconds"] = s.stepSeconds
                e["peakBytes"] = Dictionary(uniqueKeysWithValues: s.peak.map { ($0.key.rawValue, $0.value) })
                // What counts against --budget: compute alone, or all of RAM on a CPU-only machine.
                e["budgetedPeakBytes"] = r.hardware.hostIsCompute ? s.combinedPeak([.compute, .host]) : (s.peak[.compute] ?? 0)
                e["bytesMoved"] = s.bytesMoved
                e["recomputeSeconds"] = s.recomputeSeconds
                e["computeSeconds"] = s.computeSeconds
                e["computeIdleSeconds"] = s.computeIdleSeconds
                if let m = p.modelSeconds { e["modelSeconds"] = m }
            } else {
                e["failure"] = p.failure ?? ""
                if p.skipped { e["skipped"] = true }
            }
            return e
        }
        var top: [String: Any] = ["model": r.chain.model, "mode": r.chain.mode.rawValue, "batch": r.chain.batch,
                                  "seqLen": r.chain.seqLen, "chosen": chosen.name, "strategies": all.map(entry),
                                  "parameterBytes": r.chain.parameterBytes, "offloadTier": r.offloadTier.rawValue,
                                  "hostIsCompute": r.hardware.hostIsCompute]
        if let b = r.computeBudget { top["computeBudget"] = b }
        if let b = r.hostBudget { top["hostBudget"] = b }
        let data = try JSONSerialization.data(withJSONObject: top, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}

extension Plan {
    /// Planner speed: rotor with 500 slots and pofo with 10…50 slots on the 80 blocks
    /// of Llama-3-70B (batch 1, seq 4096), with the step time each plan predicts.
    func runSolverBenchmark() throws {
        let hw = try hardware.map { try HardwareProfile.load(path: $0) } ?? .defaultCPU
        let cfg = try LlamaConfig.named("llama-3-70b")
        let full = ModelChain.llama(cfg, mode: .train, batch: 1, seqLen: 4096, hardware: hw)
        var chain = full
        chain.stages = Array(full.stages[1...80])
        chain.output = LogicalTensor(name: "act.80.out", bytes: full.stages[81].input.bytes)
        let remat = RematChain(chain)
        let keepAll = remat.input.reduce(0, +) + remat.saved.reduce(0, +)
        for fraction in [0.25, 0.05] {
        let budget = Double(keepAll) * fraction
        print("80-stage chain (Llama-3-70B blocks, batch 1, seq 4096); activation budget \(formatBytes(Int(budget))) = \(Int(fraction * 100))% of keep-all")
        print("solver  slots  solve time  predicted step (s)  recompute (s)")
        let noRecompute = remat.forward.reduce(0, +) + remat.backward.reduce(0, +)
        for slots in [100, 250, 500] {
            let clock = Date()
            let table = RotorTable(chain: remat.discretized(slot: budget / Double(slots)), slots: slots)
            let t = table.time(0, 79, slots)
            let dt = Date().timeIntervalSince(clock)
            print(String(format: "rotor   %5d  %8.3f s  %18.2f  %13.2f", slots, dt, t, t - noRecompute))
        }
        for slots in [10, 20, 30, 40, 50] {
            let clock = Date()
            let slot = budget / Double(slots)
            let disc = remat.discretized(slot: slot)
            let problem = PofoProblem(chain: disc, slots: slots,
                                      writeRate: hw.bandwidth(from: .compute, to: .disk) / slot,
                                      readRate: hw.bandwidth(from: .disk, to: .compute) / slot)
            var solver = PofoSolver(problem)
            let r = solver.solve()
            let dt = Date().timeIntervalSince(clock)
            if let r {
                let offloaded = r.choices.filter { if case .saveAll(true) = $0 { return true }; if case .checkpoint(_, true) = $0 { return true }; return false }.count
                print(String(format: "pofo    %5d  %8.3f s  %18.2f  %13s  (%d of %d units offloaded)", slots, dt, r.seconds, "-", offloaded, r.choices.count))
            } else {
                print(String(format: "pofo    %5d  %8.3f s  %18@", slots, dt, "infeasible"))
            }
        }
        }
    }
}
