// `offload plan`: compare every strategy for a model, budget and machine before
// running anything; print the table, or JSON, and draw the chosen plan.
import ArgumentParser
import Foundation
import Formats
import Models
import Memory
import Planning
import Runtime
import Tensors

/// Where `--model FILE` becomes a config. Wired to the GGUF / HF loaders when they land.
func loadConfig(modelPath: String) throws -> LlamaConfig {
    let c = try loadWeights(modelPath).config
    try c.requireDense(for: "`plan` other than --mode generate with a GGUF file")
    return c
}

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Predict step time and peak memory of every plan a run can use under a budget, and mark the one it runs.",
        discussion: """
        Training (--mode train) lists what `offload train --budget` can run: the activation strategies \
        keep, recompute, sqrt, rotor, offload and pofo with parameters in memory, then (with --disk) \
        offload+stream and recompute+stream, parameters, gradients and AdamW state streamed from disk, \
        and how the least budget and the predicted step grow with the sequence length. \
        The marked plan is the one `train` runs with the same flags; a budget nothing fits in is \
        refused with the smallest one that runs. Generation (--mode generate) gives what \
        `generate --budget` runs: resident and streamed stages, KV heads on disk, the block size \
        for --prompts N, the time per token, and how the least budget and the predicted times grow \
        with the context.
        Examples:
          offload plan --model SmolLM2-135M-Instruct.Q4_1.gguf --batch 4 --seq-len 256 --budget 128MB --disk /tmp
          offload plan --model SmolLM2-135M-Instruct.Q4_1.gguf --mode generate --seq-len 512 --budget 10MB --svg plan.svg
        """)

    @Option(help: "Model file (GGUF or Hugging Face directory).") var model: String?
    @Option(help: "Built-in model shape: \(LlamaConfig.builtIn.map(\.name).joined(separator: ", ")).") var config: String?
    @Option(help: "train, generate or serve.") var mode: String = "train"
    @Option(name: .customLong("max-concurrent"), help: ArgumentHelp(
        "Serve: sequences decoded together, as `serve --max-concurrent` (default: as many as fit, up to 16).",
        valueName: "n"))
    var maxConcurrent: Int?
    @Option(help: "Sequences per step.") var batch: Int = 1
    @Option(name: .customLong("seq-len"), help: "Tokens per sequence (generate: context length).") var seqLen: Int = 256
    @Option(help: "Compute memory budget, e.g. 256MB, 24GiB (absent: unlimited). Without an accelerator (a CPU-only profile) the one RAM budget: compute and host memory together.") var budget: String?
    @Option(name: .customLong("host-budget"), help: "Host memory budget; only for a profile with an accelerator (on a CPU-only one host memory is compute memory).") var hostBudget: String?
    @Option(help: "Directory for the disk tier; offloaded tensors go to disk when given.") var disk: String?
    @Option(help: "Hardware profile JSON (from `offload profile`).") var hardware: String?
    @Option(help: "Train: the optimizer whose state the plan holds, as `train --optimizer` (adamw, adamw8bit, sgd; default adamw). Parameters streamed from disk are updated with AdamW only.")
    var optimizer: String = "adamw"
    @Option(help: "Train: what `train --strategy` takes (auto, stream, keep, recompute, sqrt, rotor, offload, pofo, offload+stream, recompute+stream): the plan marked is the one `train` runs with it. With an accelerator profile: a row's name.") var strategy: String = "auto"
    @Option(name: .customLong("prompt-tokens"), help: "Generate: tokens of the prompt (--seq-len is the whole context; default 32 or --seq-len when smaller).")
    var promptTokensOption: Int?
    /// The prompt length planned for generation.
    var promptTokens: Int { promptTokensOption ?? min(32, seqLen) }
    @Option(help: ArgumentHelp("Generate: prompts run together with FlexGen's block schedule (the block size is planned), as `generate --prompts` with that many lines.", valueName: "count"))
    var prompts: Int = 1
    @Option(name: .customLong("prefill-chunk"), help: ArgumentHelp(
        "Generate: prompt tokens per prefill pass, a multiple of 256, as `generate --prefill-chunk` (default: the plan's choice).",
        valueName: "tokens"))
    var prefillChunk: Int?
    @Option(help: "Train: data-parallel ranks, as `mpirun -np N offload train` (--batch is each rank's): adds what each rank holds and communicates per step, and the step with the profile's collectives.")
    var ranks: Int = 1
    @Option(help: "Train with --ranks: the ZeRO stage, as `train --zero` (0: whole optimizer state on every rank; 1: each rank's shard).")
    var zero: Int = 0
    @Option(name: .customLong("ranks-per-machine"), help: "Train with --ranks: ranks sharing one machine's cores (the profile's compute rates are divided among them; default 1).")
    var ranksPerMachine: Int = 1
    @Flag(help: "Print JSON instead of a table.") var json = false
    @Option(help: "Write an SVG of the chosen plan's memory and streams.") var svg: String?
    @Option(help: "Write the chosen schedule as JSON.") var schedule: String?
    @Option(help: "Write the chosen plan's Chrome trace JSON.") var trace: String?

    @Option(name: .customLong("routing-trace"), help: ArgumentHelp(
        "Generate, mixture of experts: a routing trace from `generate --routing-trace`, replayed through the "
            + "planned expert pool for its hit rate (default: routing assumed uniform, hit rate = pool / experts).",
        valueName: "file"))
    var routingTrace: String?
    @Option(name: .customLong("expert-policy"), help: "Generate, mixture of experts: lru, lfu or farthest, as `generate --expert-policy` (default lfu).")
    var expertPolicy: String?

    @Flag(name: .customLong("benchmark-solvers"), help: "Time the rotor and pofo solvers on Llama-3-70B's 80 blocks and exit.")
    var benchmarkSolvers = false

    func validate() throws {
        if benchmarkSolvers { return }
        if (model == nil) == (config == nil) { throw ValidationError("give exactly one of --model FILE or --config NAME") }
        if RunMode(rawValue: mode) == nil && mode != "serve" {
            throw ValidationError("--mode must be train, generate or serve, not '\(mode)'")
        }
        if let n = maxConcurrent, n < 1 { throw ValidationError("--max-concurrent must be at least 1, got \(n)") }
        if maxConcurrent != nil && mode != "serve" { throw ValidationError("--max-concurrent applies to --mode serve") }
        if batch < 1 || seqLen < 1 { throw ValidationError("--batch and --seq-len must be at least 1") }
        if let p = promptTokensOption, p < 1 || p > seqLen {
            throw ValidationError("--prompt-tokens must be from 1 to --seq-len (\(seqLen)), got \(p)")
        }
        if prompts < 1 { throw ValidationError("--prompts must be at least 1, got \(prompts)") }
        if ranks < 1 { throw ValidationError("--ranks must be at least 1, got \(ranks)") }
        if ![0, 1].contains(zero) { throw ValidationError("--zero must be 0 or 1 (stages 2 and 3 are not built yet), got \(zero)") }
        if ranksPerMachine < 1 || ranksPerMachine > ranks { throw ValidationError("--ranks-per-machine must be from 1 to --ranks") }
        if (ranks > 1 || zero != 0 || ranksPerMachine != 1) && mode != "train" {
            throw ValidationError("--ranks, --zero and --ranks-per-machine apply to --mode train")
        }
        try validatePrefillChunk(prefillChunk)
        if prefillChunk != nil && (mode != "generate" || prompts > 1) {
            throw ValidationError("--prefill-chunk applies to --mode generate with one prompt")
        }
        if !["adamw", "adamw8bit", "sgd"].contains(optimizer) {
            throw ValidationError("--optimizer must be adamw, adamw8bit or sgd, got '\(optimizer)'")
        }
        if optimizer != "adamw" && mode != "train" { throw ValidationError("--optimizer applies to --mode train") }
        if let b = budget, parseBytes(b) == nil { throw ValidationError("--budget '\(b)' is not a size (try 256MB or 24GiB)") }
        if let b = hostBudget, parseBytes(b) == nil { throw ValidationError("--host-budget '\(b)' is not a size (try 8GiB)") }
    }

    func run() throws {
        if benchmarkSolvers { return try runSolverBenchmark() }
        if let path = model, mode == "generate", let gguf = try loadWeights(path) as? GGUFWeights, gguf.config.moe != nil {
            return try planExperts(gguf)
        }
        if routingTrace != nil || expertPolicy != nil {
            throw ValidationError("--routing-trace and --expert-policy apply to --mode generate with a mixture-of-experts GGUF")
        }
        let cfg = try model.map { try loadConfig(modelPath: $0) } ?? LlamaConfig.named(config ?? "")
        try cfg.validate()
        let hw = try hardware.map { try HardwareProfile.load(path: $0) } ?? .defaultCPU
        if mode == "serve" { return try planServing(cfg, hardware: hw) }
        let runMode = RunMode(rawValue: mode)!
        if runMode == .generate && hw.hostIsCompute { return try planGeneration(cfg, hardware: hw) }
        let chain = ModelChain.llama(cfg, mode: runMode, batch: batch, seqLen: seqLen, hardware: hw)
        let request = PlanRequest(chain: chain, hardware: hw, computeBudget: budget.flatMap(parseBytes),
                                  hostBudget: hostBudget.flatMap(parseBytes), useDisk: disk != nil)
        try request.validate()
        var all: [PlanResult]
        var chosen: PlanResult
        var trainGrowth: [TrainGrowthRow] = []
        var trainExtra: [String: Any] = [:]
        var ranksReport: RanksReport?
        if runMode == .train && hw.hostIsCompute {
            // What `offload train --budget` runs: the same planner, the same decision.
            guard TrainingPlanRequest.strategies.contains(strategy) else {
                throw ValidationError("unknown strategy '\(strategy)'; expected one of: " + TrainingPlanRequest.strategies.joined(separator: ", "))
            }
            let r = TrainingPlanRequest(config: cfg, batch: batch, seqLen: seqLen,
                                        budget: budget.flatMap(parseBytes) ?? Int.max / 4,
                                        strategy: strategy, useDisk: disk != nil, hardware: hw,
                                        optimizerState: OptimizerStateSize(optimizer: optimizer))
            all = try TrainingPlanner.compare(r)
            do {
                chosen = TrainingPlanner.row(for: try TrainingPlanner.choose(r), hardware: hw)
            } catch {
                throw OffloadError("[plan] \(cfg.name) (train, batch \(batch), seq \(seqLen)): \(TrainingPlanner.plain("\(error)"))")
            }
            let least = TrainingPlanner.smallestBudget(r)
            if let least { trainExtra = ["minimumBudget": least.bytes, "minimumBudgetPlan": least.name] }
            trainExtra["stateBytes"] = TrainingPlanner.stateBytes(r)
            if ranks > 1 {
                ranksReport = RanksReport(config: cfg, ranks: ranks, zero: zero, optimizer: r.optimizerState, chosen: chosen,
                                          hardware: hw, threadsScale: Double(ranksPerMachine),
                                          optimizerSecondsPerByte: chain.optimizerSecondsPerParameterByte)
            }
            trainGrowth = trainGrowthRows(r, asked: TrainGrowthRow(seqLen: seqLen, minimumBudget: least?.bytes, minimumPlan: least?.name,
                                                                    plan: chosen.name, stepSeconds: chosen.simulation?.stepSeconds))
        } else {
            all = Planner.compareAll(request)
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
        }
        if json {
            var extra = trainExtra
            if !trainGrowth.isEmpty { extra["growth"] = trainGrowth.map(\.json) }
            if let ranksReport { extra["ranks"] = ranksReport.json }
            print(try jsonReport(request, all, chosen, extra: extra))
        } else {
            print(table(request, all, chosen))
            if !trainGrowth.isEmpty { print(trainGrowthTable(trainGrowth, asked: seqLen, budget: budget.flatMap(parseBytes)), terminator: "") }
            if let ranksReport { print(ranksReport.text(batch: batch)) }
        }
        if let path = svg, let sim = chosen.simulation, let s = chosen.schedule {
            // The schedule's tier is the budget less what the executor holds outside it (weights and optimizer
            // state in memory, or the streamed trainer's scratch): drawn against that part of the budget.
            let outside = max(0, (chosen.budgetedPeak ?? 0) - (sim.peak[.compute] ?? 0))
            var budgets = request.budgets
            if let b = budgets[.compute] { budgets[.compute] = b - outside }
            let title = "\(cfg.name) \(mode) batch \(batch) seq \(seqLen): \(chosen.name), step \(String(format: "%.3f", sim.stepSeconds)) s"
                + (outside > 0 ? " (\(formatBytes(outside)) held outside the schedule)" : "")
            try write(appendingGrowthChart(sim.svg(s, budgets: budgets, title: title, hostIsCompute: hw.hostIsCompute),
                                           trainGrowth.map(\.point), axis: "sequence length", timed: "predicted step"),
                      to: path)
        }
        if let path = schedule, let s = chosen.schedule {
            try write(String(decoding: try s.jsonData(), as: UTF8.self), to: path)
        }
        if let path = trace, let sim = chosen.simulation, let s = chosen.schedule {
            try write(sim.chromeTrace(s), to: path)
        }
    }

    func write(_ text: String, to path: String) throws {
        // Our own atomic write: Foundation's leaves an empty TemporaryDirectory.* in /tmp per call on Linux.
        try writeAtomically(Data(text.utf8), to: path, context: "[plan]")
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
        lines.append(PlanTable.header(ram: ram))
        // Combinations that are no plan of their own on this machine: one line, not one row each.
        let skipped = all.filter(\.skipped)
        // Plans that fail for the same reason share one line.
        var shown = all.filter { !$0.skipped }
        while let p = shown.first {
            let same = p.fits ? [p] : Array(shown.prefix { !$0.fits && $0.failure == p.failure })
            var row = PlanTable.figures(p, ram: ram)
            row.name = same.map(\.name).joined(separator: ", ")
            lines.append(PlanTable.row(row, chosen: p.name == chosen.name, ram: ram))
            shown.removeFirst(same.count)
        }
        if !skipped.isEmpty {
            let reasons = Set(skipped.compactMap { $0.failure.map(TrainingPlanner.plain) })
            lines.append("  (\(skipped.count) combinations not listed: " + reasons.sorted().joined(separator: "; ") + ")")
        }
        if ram && c.mode == .train {
            lines.append("  (zero-offload needs an accelerator: on a CPU-only machine it is keep, the optimizer step in the same RAM)")
        }
        lines.append("* chosen: \(chosen.name)")
        return lines.joined(separator: "\n")
    }

    func jsonReport(_ r: PlanRequest, _ all: [PlanResult], _ chosen: PlanResult, extra: [String: Any] = [:]) throws -> String {
        func entry(_ p: PlanResult) -> [String: Any] {
            var e: [String: Any] = ["name": p.name, "activations": p.activations.rawValue, "parameters": p.parameters.rawValue,
                                    "fits": p.fits, "planningSeconds": p.planningSeconds]
            if let s = p.simulation, p.fits {
                e["stepSeconds"] = s.stepSeconds
                e["peakBytes"] = Dictionary(uniqueKeysWithValues: s.peak.map { ($0.key.rawValue, $0.value) })
                // What counts against --budget: compute alone, or all of RAM on a CPU-only machine.
                e["budgetedPeakBytes"] = p.budgetedPeak ?? (r.hardware.hostIsCompute ? s.combinedPeak([.compute, .host]) : (s.peak[.compute] ?? 0))
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
        top.merge(extra) { $1 }
        if let b = r.hostBudget { top["hostBudget"] = b }
        let data = try JSONSerialization.data(withJSONObject: top, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}

extension Plan {
    /// `--mode generate` on a CPU-only machine: the plan `generate --budget` runs (Planning's
    /// StreamingPlan over the GGUF's stages, or `offload init`'s f16 layout for --config).
    func planGeneration(_ cfg: LlamaConfig, hardware hw: HardwareProfile) throws {
        let clock = Date()
        let stages: [WeightStage]
        if let path = model {
            guard let gguf = try loadWeights(path) as? GGUFWeights else {
                throw OffloadError("[plan] generate --budget streams weights from a GGUF file; \(path) is a folder")
            }
            stages = try weightStages(of: gguf.file, config: cfg)
        } else {
            stages = try weightStages(config: cfg)
        }
        let budgetBytes = budget.flatMap(parseBytes) ?? Int.max / 4
        let context = plannedContext(cfg)
        let row: PlanTable.Row
        var plan: StreamingPlan?
        do {
            let p = try BlockSchedulePlan(stages: stages, config: cfg, budget: budgetBytes,
                                          promptLengths: Array(repeating: promptTokens, count: prompts),
                                          maxTokens: context - promptTokens, prefillChunk: prefillChunk, hardware: hw)
            plan = p.plan
            row = generationRow(p.plan, config: cfg, hardware: hw, planning: Date().timeIntervalSince(clock))
        } catch {
            row = PlanTable.Row(name: "stream", failure: "\(error)")
        }
        let growth = prompts == 1
            ? growthRows(stages: stages, config: cfg, asked: context, promptTokens: min(promptTokens, context),
                         budget: budgetBytes, prefillChunk: prefillChunk, hardware: hw) : []
        if json {
            var out: [String: Any] = ["model": cfg.name, "mode": "generate", "seqLen": context, "promptTokens": promptTokens,
                                      "prompts": prompts, "fits": row.failure == nil, "hostIsCompute": true]
            if budget != nil { out["computeBudget"] = budgetBytes }
            if let least = try? BlockSchedulePlan(stages: stages, config: cfg, budget: Int.max / 4,
                                                  promptLengths: Array(repeating: promptTokens, count: prompts),
                                                  maxTokens: context - promptTokens, blockSize: 1,
                                                  prefillChunk: prefillChunk, hardware: hw) {
                out["minimumBudget"] = least.plan.minimumBudget
            }
            if let plan, row.failure == nil {
                out["secondsPerToken"] = row.seconds; out["budgetedPeakBytes"] = row.peak; out["diskPeakBytes"] = row.diskPeak
                out["bytesReadPerToken"] = row.moved; out["blockSize"] = plan.sequences
                out["residentStages"] = plan.resident.count; out["streamedStages"] = plan.streamed.count
                out["streamBuffers"] = plan.ringSlots; out["kvDiskHeads"] = plan.kvDiskHeads; out["kvResidentHeads"] = plan.kvResidentHeads
                out["prefillPassTokens"] = LlamaModel.largestPrefillPiece(count: promptTokens, chunk: plan.prefillChunk)
                out["prefillSeconds"] = plan.predictedPrefillSeconds(hardware: hw, config: cfg)
            } else { out["failure"] = TrainingPlanner.plain(row.failure ?? "") }
            if !growth.isEmpty { out["growth"] = growth.map(\.json) }
            let data = try JSONSerialization.data(withJSONObject: out, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("\(cfg.name) generate, prompt \(promptTokens) tokens, context \(context)"
                  + (prompts > 1 ? ", \(prompts) prompts" : "") + ": \(formatBytes(stages.reduce(0) { $0 + $1.weightBytes })) of weights in \(stages.count) stages")
            print("budget: RAM \(budget == nil ? "unlimited" : formatBytes(budgetBytes)), KV heads that do not fit on disk; hardware \(hw.name)")
            print(PlanTable.header(ram: true, stepLabel: "per token"))
            print(PlanTable.row(row, chosen: row.failure == nil, ram: true))
            if let plan { print("  \(plan.summary); at least \(formatBytes(plan.minimumBudget)) (\(plan.minimumBudget) bytes)") }
            if !growth.isEmpty { print(growthTable(growth), terminator: "") }
        }
        if let failure = row.failure { throw OffloadError("[plan] \(TrainingPlanner.plain(failure))") }
        if let plan, svg != nil || schedule != nil || trace != nil {
            let s = plan.schedule(hardware: hw, config: cfg)
            let sim = try s.simulate(budgets: budget == nil ? [:] : [.compute: budgetBytes])
            if let path = svg {
                let title = "\(cfg.name) generate, one decode step, context \(context): \(s.strategy), "
                    + String(format: "%.1f ms per token", sim.stepSeconds / Double(plan.sequences) * 1e3)
                let drawing = sim.svg(s, budgets: budget == nil ? [:] : [.compute: budgetBytes], title: title,
                                      hostIsCompute: true)
                try write(appendingGrowthChart(drawing, growth.map(\.point), axis: "context", timed: "predicted prefill"),
                          to: path)
            }
            if let path = schedule { try write(String(decoding: try s.jsonData(), as: UTF8.self), to: path) }
            if let path = trace { try write(sim.chromeTrace(s), to: path) }
        }
    }

    /// `--mode serve`: the plan `serve --budget B --context SEQ_LEN [--max-concurrent N]` runs: how many
    /// sequences' KV caches fit beside the streamed weights, and the predicted time per token with all running.
    func planServing(_ cfg: LlamaConfig, hardware hw: HardwareProfile) throws {
        guard let path = model, let gguf = try loadWeights(path) as? GGUFWeights else {
            throw OffloadError("[plan] --mode serve plans `offload serve --budget`, which streams a GGUF file: give --model FILE.gguf")
        }
        guard let budgetBytes = budget.flatMap(parseBytes) else {
            throw OffloadError("[plan] --mode serve needs --budget (without one, serve keeps every weight in memory)")
        }
        let context = plannedContext(cfg)
        let stages = try weightStages(of: gguf.file, config: cfg)
        let serving: ServingPlan
        do {
            serving = try ServingPlan(stages: stages, config: cfg, budget: budgetBytes, context: context,
                                      sequences: maxConcurrent)
        } catch { throw OffloadError("[plan] \(TrainingPlanner.plain("\(error)"))") }
        let perToken = serving.predictedSecondsPerToken(hardware: hw, config: cfg)
        let p = serving.plan
        if json {
            let out: [String: Any] = [
                "model": cfg.name, "mode": "serve", "seqLen": context, "computeBudget": budgetBytes,
                "sequences": serving.sequences, "secondsPerToken": perToken, "budgetedPeakBytes": p.plannedBytes,
                "residentStages": p.resident.count, "streamedStages": p.streamed.count, "streamBuffers": p.ringSlots,
                "minimumBudget": p.minimumBudget,
            ]
            let data = try JSONSerialization.data(withJSONObject: out, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("\(cfg.name) serve, \(serving.sequences) sequence\(serving.sequences == 1 ? "" : "s") of \(context) positions under \(formatBytes(budgetBytes)); hardware \(hw.name)")
            print("  \(p.summary)")
            print(String(format: "  predicted %.1f ms per token with every sequence running (%.1f tok/s); planned peak %@",
                         perToken * 1e3, 1 / perToken, formatBytes(p.plannedBytes)))
        }
    }

    /// Planner speed: rotor with 500 slots and pofo with 10…50 slots on the 80 blocks
    /// of Llama-3-70B (batch 1, seq 4096), with the step time each plan predicts.
    /// `--mode generate` for a mixture of experts: the pool `generate --budget` makes, its hit rate (a
    /// routing trace replayed, or uniform routing), the bytes of experts read per decoded token, and the
    /// rate the disk allows for them.
    func planExperts(_ gguf: GGUFWeights) throws {
        let c = gguf.config, m = c.moe!
        guard let budget = budget.flatMap(parseBytes) else {
            throw ValidationError("--mode generate with a mixture of experts plans expert offloading: give --budget")
        }
        let policy = try parseExpertPolicy(expertPolicy)
        let hw = try hardware.map { try HardwareProfile.load(path: $0) } ?? .defaultCPU
        let context = min(seqLen, c.contextLength)
        let plan = try ExpertOffloadPlan(source: gguf, budget: budget, promptTokens: promptTokens, contextCapacity: context)
        let expertBytes = plan.expertBytes
        var decodeHitRate = Double(plan.slots) / Double(plan.totalExperts), hitRate = decodeHitRate
        var source = "uniform routing (no --routing-trace)"
        if let path = routingTrace {
            let trace = try RoutingTrace.read(path: path, layers: c.layers, experts: m.experts)
            let sim = ExpertPoolSimulation(trace: trace, slots: plan.slots, policy: policy, layers: c.layers)
            hitRate = sim.hitRate
            let decodeDemands = sim.decodeSteps * c.layers * m.used
            decodeHitRate = decodeDemands > 0 ? 1 - Double(sim.decodeMisses) / Double(decodeDemands) : hitRate
            source = "\(path) replayed (\(trace.count) block steps, \(sim.decodeSteps) decode steps)"
        }
        let bytesPerToken = (1 - decodeHitRate) * Double(c.layers * m.used * expertBytes)
        let bandwidth = hw.diskReadBandwidth(requestBytes: expertBytes / 3, queueDepth: 1)
        let limit: Double = bytesPerToken > 0 ? bandwidth / bytesPerToken : .infinity
        // A decoded token reads every resident weight and its k experts per block from memory; without
        // read-ahead its expert reads wait in line with that, with read-ahead at best they overlap it.
        let compute = Double(plan.weightBytes + c.layers * m.used * expertBytes) / hw.decodeBytesPerSecond
        let reads = bytesPerToken / bandwidth
        if json {
            print(try jsonString([
                "model": c.name, "mode": "generate", "seqLen": context, "budget": budget, "policy": policy.rawValue,
                "experts": ["slots": plan.slots, "total": plan.totalExperts, "slot_bytes": plan.slotBytes,
                            "expert_bytes": expertBytes, "resident_bytes": plan.residentBytes,
                            "minimum_budget": plan.minimumBudget, "hit_rate": hitRate, "decode_hit_rate": decodeHitRate,
                            "hit_rate_source": source, "bytes_per_token": bytesPerToken,
                            "disk_read_bandwidth": bandwidth,
                            "disk_limit_tokens_per_second": limit.isFinite ? limit : 0,
                            "compute_seconds_per_token": compute, "read_seconds_per_token": reads,
                            "predicted_tokens_per_second": 1 / (compute + reads),
                            "overlapped_tokens_per_second": 1 / max(compute, reads)] as [String: Any]]))
            return
        }
        print("""
        \(c.name) generate, context \(context), budget \(formatBytes(budget)): expert offloading (\(policy.rawValue))
          resident       \(formatBytes(plan.residentBytes)) (everything but the experts; the least budget is \(formatBytes(plan.minimumBudget)))
          expert pool    \(plan.slots) of \(plan.totalExperts) experts, slots of \(formatBytes(plan.slotBytes))
          hit rate       \(String(format: "%.1f%%", 100 * hitRate)) overall, \(String(format: "%.1f%%", 100 * decodeHitRate)) in decode, from \(source)
          per token      \(formatBytes(Int(bytesPerToken))) of experts read; the disk (\(formatBytes(Int(bandwidth)))/s) allows \(limit.isFinite ? String(format: "%.1f", limit) : "any number of") tokens/s
          decode         \(String(format: "%.2f", 1 / (compute + reads))) tokens/s without read-ahead (\(String(format: "%.2f", compute)) s computing + \(String(format: "%.2f", reads)) s reading per token); read-ahead overlapping them: at most \(String(format: "%.2f", 1 / max(compute, reads))) tokens/s
        """)
    }

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

extension Plan {
    /// The context `generate` and `serve` run at: --seq-len, or the model's own context where it asks
    /// for more (they stop there), said on stderr so a plan for a longer context is not taken as one.
    func plannedContext(_ cfg: LlamaConfig) -> Int {
        if seqLen > cfg.contextLength {
            FileHandle.standardError.write(Data(("[plan] --seq-len \(seqLen) is past \(cfg.name)'s context of "
                + "\(cfg.contextLength) positions; planned at \(cfg.contextLength), where \(mode) stops\n").utf8))
        }
        return min(seqLen, cfg.contextLength)
    }
}
