// `offload train`: train a Llama-family model on a text file, from a GGUF model
// or a built-in shape with random weights, with periodic atomic checkpoints and
// exact resume. The engine is Runtime.TrainingSession; this file is flags,
// data loading, progress display and the --log file.

import ArgumentParser
import Foundation
import Formats
import Memory
import Models
import Planning
import Runtime
import Tensors

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train or fine-tune a model on a text file or JSONL examples (fp32 weights or LoRA adapters; AdamW, SGD or zeroth-order).",
        discussion: """
        Windows of --seq-len + 1 tokens are cut from the tokenized text at stride --seq-len; step k, row b
        reads window (k·batch + b) mod windows (--shuffle SEED: a fresh permutation per epoch).
        A .jsonl --data file holds one example per line, {"prompt": ..., "completion": ...} or
        {"messages": [{"role": ..., "content": ...}, ...]} (rendered with the model's chat template); the
        examples follow one another and only completion (with EOS) and assistant tokens are trained on:
        the loss is the mean over those targets.
        Example: offload train --config tiny --data notes.txt --steps 200 --save run1
                 offload train --resume run1 --steps 400 --data notes.txt
                 offload train --model SmolLM2.gguf --data chats.jsonl --eval-data held-out.jsonl --eval-every 50
                 offload train --model SmolLM2.gguf --data chats.jsonl --lora-rank 8 --lora-alpha 16 --save adapter
        Several processes (data parallel on Open MPI): N ranks with --batch B read the windows one process
        with --batch N·B reads and give its results (within float rounding; bit for bit from run to run):
                 mpirun -np 2 offload train --model SmolLM2.gguf --data notes.txt --batch 2 --zero 1
                 offload train --ranks 2 --model SmolLM2.gguf --data notes.txt --batch 2   (mpirun on this machine)
        """)

    @Option(help: "A GGUF model to start from (weights are trained in fp32).") var model: String?
    @Option(help: "A built-in shape with random weights: \(LlamaConfig.builtIn.map(\.name).joined(separator: ", ")).")
    var config: String?
    @Option(help: "Seed of the random initialisation (--config weights; LoRA's A matrices).") var seed: UInt64 = 0
    @Option(help: "Training data: plain text (tokenized once without BOS), or a .jsonl file of fine-tuning examples, {\"prompt\", \"completion\"} or {\"messages\": [...]} rows (conversations rendered with the model's chat template), trained on the completions or assistant turns only.")
    var data: String?
    @Option(name: .customLong("eval-data"), help: "Validation data, in the same forms as --data: its mean loss is measured after the last step, and every --eval-every steps.")
    var evalData: String?
    @Option(name: .customLong("eval-every"), help: "Steps between validation losses (with --eval-data; default: only after the last step).")
    var evalEvery: Int?
    @Option(help: "Token ids to train on instead of --data: a file of integers separated by spaces, commas or newlines.")
    var tokens: String?
    @Option(help: "Sequences per micro-batch (default 4).") var batch: Int?
    @Option(name: .customLong("seq-len"), help: "Tokens per sequence (default 256).") var seqLen: Int?
    @Option(help: "Total optimizer steps (default 100).") var steps: Int?
    @Option(help: "Peak learning rate (default 1e-4).") var lr: Float?
    @Option(help: "adamw; adamw8bit (torchao's AdamW8bit: m and v as a byte per weight with a scale per 256, a quarter of adamw's state); sgd; or zo-sgd (MeZO: two forward passes per step with every weight moved by ±ε·z, no backward, no optimizer state; z regenerated from --zo-seed). Default adamw.")
    var optimizer: String?
    @Option(name: .customLong("zo-eps"), help: "zo-sgd: the perturbation ε (default 1e-3).") var zoEps: Float?
    @Option(name: .customLong("zo-seed"), help: "zo-sgd: the seed z is drawn from (default 0).") var zoSeed: UInt64?
    @Option(name: .customLong("lora-rank"), help: "Train LoRA adapters of this rank on the --model's frozen weights, which stay in the file's own types (Q4_0, Q4_1, Q8_0, K-quants, F16 ...); checkpoints are peft adapter folders.")
    var loraRank: Int?
    @Option(name: .customLong("lora-alpha"), help: "LoRA alpha: the adapters' output is scaled by alpha/rank (default 8, as peft).")
    var loraAlpha: Float?
    @Option(name: .customLong("lora-targets"), help: "The projections LoRA adapts, from q,k,v,o,gate,up,down (default q,v, as peft for Llama).")
    var loraTargets: String?
    @Option(name: .customLong("lora-dropout"), help: "Dropout on the adapters' input while training (default 0); its masks are drawn from --seed.")
    var loraDropout: Float?
    @Option(name: .customLong("lora-init"), help: "Start LoRA from this peft adapter folder (adapter_config.json, adapter_model.safetensors): its rank, alpha and targets.")
    var loraInit: String?
    @Option(help: "AdamW β₁ (default 0.9).") var beta1: Float?
    @Option(help: "AdamW β₂ (default 0.999).") var beta2: Float?
    @Option(help: "AdamW ε, added outside the square root (default 1e-8).") var eps: Float?
    @Option(name: .customLong("weight-decay"), help: "Decoupled (AdamW) or L2 (SGD) weight decay (default 0).")
    var weightDecay: Float?
    @Option(help: "SGD momentum (default 0.9).") var momentum: Float?
    @Option(name: .customLong("grad-clip"), help: "Clip the global gradient norm to this (default 0: off).")
    var gradClip: Float?
    @Option(help: "Micro-batches per optimizer step (default 1).") var accumulate: Int?
    @Option(help: "constant, or cosine (linear warm-up, then cosine decay to --min-lr).") var schedule: String?
    @Option(help: "Warm-up steps of the cosine schedule (default 0).") var warmup: Int?
    @Option(name: .customLong("min-lr"), help: "Final learning rate of the cosine schedule (default 0).") var minLR: Float?
    @Option(help: "Shuffle windows with this seed (a new permutation each epoch).") var shuffle: UInt64?
    @Option(help: "Activations: keep-all, or recompute-all (keep block inputs, recompute in backward).")
    var activations: String?
    @Option(help: "Compute threads (default: all cores).") var threads: Int?
    @Option(help: "Write one JSON line per step to this file.") var log: String?
    @Option(help: "Checkpoint folder, written atomically at the end and every --save-every steps.") var save: String?
    @Option(name: .customLong("save-every"), help: "Steps between checkpoints (default: only at the end).")
    var saveEvery: Int?
    @Option(help: "Continue the run saved in this checkpoint folder, bit for bit (and save there unless --save says otherwise).")
    var resume: String?
    @Option(name: .customLong("stop-after"),
            help: "Stop (and save) after this step; the schedule still runs to --steps. Continue with --resume.")
    var stopAfter: Int?

    @Option(help: "Compute (RAM) budget, e.g. 256MB or 4GiB: the step follows a planned schedule that keeps, recomputes or offloads activations so that it fits. Absent: everything in memory (the fastest path when it fits).")
    var budget: String?
    @Option(help: "With --budget: auto (the fastest plan with parameters in memory that fits, else parameters, gradients and AdamW state streamed from --disk), keep, recompute, sqrt, rotor, offload, pofo (activations; recompute and offload stream the parameters too when no in-memory plan fits), stream, offload+stream or recompute+stream (parameters streamed in half-blocks, activations to disk and back or recomputed). `offload plan` with the same flags shows the plan this runs.")
    var strategy: String?
    @Option(help: "With --budget: a folder for offloaded activations (offload, pofo) and streamed parameters (stream).") var disk: String?
    @Option(name: .customLong("disk-limit"),
            help: "With --disk: the most bytes the spill folder may hold, e.g. 2GB; a run that needs more stops with an error.")
    var diskLimit: String?
    @Option(help: "With --budget: write the measured Chrome trace of the run to this file.") var trace: String?
    @Option(help: "With --budget: hardware profile JSON (from `offload profile`) for the predictions.") var hardware: String?
    @Option(help: "Data-parallel processes: starts Open MPI's mpirun with N ranks on this machine (under mpirun, the job's size must be N). Several machines: run `mpirun -np N --hostfile FILE offload train ...` instead.")
    var ranks: Int?
    @Option(help: "With several ranks, the ZeRO stage: 0 (every rank holds the whole AdamW state) or 1 (each rank holds and updates 1/N of it, then the weights are all-gathered). Same results either way (default 0).")
    var zero: Int?

    func validate() throws {
        if let b = budget, parseBytes(b) == nil { throw ValidationError("--budget '\(b)' is not a size (try 256MB or 4GiB)") }
        if budget == nil && (strategy != nil || disk != nil || trace != nil || hardware != nil) {
            throw ValidationError("--strategy, --disk, --trace and --hardware apply to a budgeted run: give --budget too")
        }
        if let l = diskLimit {
            guard parseBytes(l) != nil else { throw ValidationError("--disk-limit '\(l)' is not a size (try 512MB or 2GiB)") }
            if disk == nil { throw ValidationError("--disk-limit limits the --disk spill folder: give --disk too") }
        }
        if let s = strategy, !TrainingPlanRequest.strategies.contains(s) {
            throw ValidationError("--strategy must be one of " + TrainingPlanRequest.strategies.joined(separator: ", ") + ", not '\(s)'")
        }
        if resume == nil && (model == nil) == (config == nil) {
            throw ValidationError("give either --model FILE or --config NAME (or --resume DIR)")
        }
        if model != nil && config != nil { throw ValidationError("give --model or --config, not both") }
        if (data == nil) == (tokens == nil) { throw ValidationError("give the training text with --data FILE (or ids with --tokens FILE)") }
        if let n = saveEvery, n <= 0 { throw ValidationError("--save-every must be positive") }
        if saveEvery != nil && save == nil && resume == nil { throw ValidationError("--save-every needs --save DIR") }
        if let t = threads, t <= 0 { throw ValidationError("--threads must be positive") }
        if let n = stopAfter, n <= 0 { throw ValidationError("--stop-after must be positive") }
        if let n = evalEvery, n <= 0 { throw ValidationError("--eval-every must be positive") }
        if let n = ranks, n <= 0 { throw ValidationError("--ranks must be positive") }
        if let z = zero, !(0...3).contains(z) { throw ValidationError("--zero must be 0, 1, 2 or 3, got \(z)") }
        if optimizer?.lowercased() == "zo-sgd" {
            let other = [("--momentum", momentum != nil), ("--beta1", beta1 != nil), ("--beta2", beta2 != nil),
                         ("--eps", eps != nil), ("--grad-clip", gradClip != nil)].filter(\.1).map(\.0)
            if !other.isEmpty {
                throw ValidationError("\(other.joined(separator: ", ")) do not apply to --optimizer zo-sgd (SGD without momentum on its estimate; --zo-eps is its ε)")
            }
        }
        if optimizer?.lowercased() == "zo-sgd" && budget != nil {
            throw ValidationError("--optimizer zo-sgd is not supported with --budget yet (its two forward passes run with every weight in memory)")
        }
        if evalEvery != nil && evalData == nil { throw ValidationError("--eval-every needs --eval-data FILE") }
        let loraShape = [("--lora-rank", loraRank != nil), ("--lora-alpha", loraAlpha != nil),
                         ("--lora-targets", loraTargets != nil), ("--lora-dropout", loraDropout != nil)].filter(\.1).map(\.0)
        if loraInit != nil && !loraShape.isEmpty {
            throw ValidationError("--lora-init takes the adapter's rank, alpha, targets and dropout from its adapter_config.json; "
                                  + "drop \(loraShape.joined(separator: ", "))")
        }
        if loraRank == nil && loraInit == nil && !loraShape.isEmpty {
            throw ValidationError("\(loraShape.joined(separator: ", ")) configure LoRA: give --lora-rank R (or --lora-init DIR) too")
        }
        if loraRank != nil || loraInit != nil {
            if resume != nil { throw ValidationError("--resume continues the checkpoint's LoRA run as it was; drop the --lora options") }
            if config != nil { throw ValidationError("LoRA adapts a model file's frozen weights: give --model FILE, not --config") }
            if budget != nil { throw ValidationError("LoRA is not supported with --budget yet (the frozen base is read from the mapped model file)") }
            if optimizer?.lowercased() == "zo-sgd" { throw ValidationError("--optimizer zo-sgd trains every weight; it does not combine with LoRA") }
        }
    }

    func run() throws {
        var comm: Communicator?
        do {
            if let ranks, !Communicator.launchedByMPI, ranks > 1 { try launchRanks(ranks) }
            comm = try Communicator.fromEnvironment()
            if let comm {
                if let ranks, ranks != comm.size {
                    throw OffloadError("[train] --ranks \(ranks), but mpirun started \(comm.size) ranks")
                }
                printsProgress = comm.rank == 0
            }
            try train(comm)
            comm?.finalize()
        } catch let e as OffloadError {
            let who = comm.map { $0.size > 1 ? "rank \($0.rank): " : "" } ?? ""
            FileHandle.standardError.write(Data("error: \(who)\(e.message)\n".utf8))
            // The other ranks may be waiting in a collective: end the whole job.
            if let comm, comm.size > 1 { comm.abort() }
            comm?.finalize()
            throw ExitCode.failure
        }
    }

    private func train(_ comm: Communicator?) throws {
        let save = self.save ?? resume
        // The model and, when resuming, the checkpoint's options.
        var info: CheckpointInfo?
        var sourceModel = model.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        var expected: LlamaConfig?
        let source = try model.map { try loadWeights($0) }
        if let source { expected = source.config }
        if let config { expected = try LlamaConfig.named(config) }
        var options = TrainingOptions()
        if let resume {
            let i = try Checkpoint.readInfo(resume)
            if let expected { try Checkpoint.checkSameModel(i, expected, dir: resume) }
            options = i.options
            sourceModel = sourceModel ?? i.sourceModel
            info = i
        }
        let modelConfig = info?.config ?? expected!
        let ropeStyle = info?.ropeStyle ?? source?.ropeStyle ?? .adjacentPairs
        // A resumed run keeps its thread count unless told otherwise (OpenBLAS sums depend on it); on
        // another number of ranks it cannot repeat the bits anyway. Ranks on one machine share its cores.
        let rankCount = comm?.size ?? 1
        let sameRanks = (info?.options.ranks ?? 1) == rankCount
        let threadCount = threads ?? (sameRanks ? info?.threads : nil)
            ?? max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, comm?.localSize ?? 1))
        setTrainingThreads(threadCount)
        if batch == nil, info != nil, (options.ranks ?? 1) != rankCount {
            // Resumed on another number of ranks: the same global batch, cut into rankCount parts.
            let global = options.batch * (options.ranks ?? 1)
            guard global % rankCount == 0 else {
                throw OffloadError("[train] the checkpoint's global batch of \(global) windows does not divide among "
                                   + "\(rankCount) ranks; give --batch (windows per rank) to change it")
            }
            options.batch = global / rankCount
        }
        options.ranks = rankCount > 1 ? rankCount : nil
        if let zero, rankCount == 1 {
            note("note: --zero \(zero) shards state across ranks; one process holds all of it (run under mpirun, or --ranks N)")
        }
        if let batch { options.batch = batch }
        if let seqLen { options.seqLen = seqLen }
        if let steps { options.steps = steps }
        if let lr { options.lr = lr }
        if let optimizer { options.optimizer = optimizer.lowercased() }
        if let beta1 { options.beta1 = beta1 }
        if let beta2 { options.beta2 = beta2 }
        if let eps { options.eps = eps }
        if let weightDecay { options.weightDecay = weightDecay }
        if let momentum { options.momentum = momentum }
        if let gradClip { options.gradClip = gradClip }
        if let accumulate { options.accumulate = accumulate }
        if let schedule { options.schedule = schedule.lowercased() }
        if let warmup { options.warmup = warmup }
        if let minLR { options.minLR = minLR }
        if let zoEps { options.zoEps = zoEps }
        if let loraInit {
            options.lora = try LoRAAdapters.readSettings(folder: loraInit)
        } else if let loraRank {
            options.lora = LoRASettings(rank: loraRank, alpha: loraAlpha ?? LoRASettings.defaultAlpha,
                                        targets: try loraTargets.map(LoRATarget.parse) ?? LoRASettings.defaultTargets,
                                        dropout: loraDropout ?? 0)
        }
        if options.lora != nil && resume == nil { options.loraSeed = seed }
        if let zoSeed { options.zoSeed = zoSeed }
        if let shuffle { options.shuffleSeed = shuffle }
        if let activations {
            options.activationPolicy = activations
        } else if resume == nil && options.optimizer == "zo-sgd" {
            // Forward passes only: nothing is kept for a backward, so only block inputs are held (the same bits).
            options.activationPolicy = ActivationPolicy.recomputeAll.rawValue
        }
        try options.validate()

        let ids: [Int]
        var mask: [Bool]?
        let dataName: String
        let reader = TrainingDataReader(modelPath: sourceModel, config: modelConfig)
        if let tokens {
            ids = try readTokenIDs(tokens); dataName = tokens
        } else {
            (ids, mask) = try reader.read(data!)
            dataName = data!
        }
        let windows = try TokenWindows(tokens: ids, mask: mask, seqLen: options.seqLen, vocabSize: modelConfig.vocabSize,
                                       shuffleSeed: options.shuffleSeed, source: dataName)
        let evalWindows = try evalData.map { path in
            let (ids, mask) = try reader.read(path)
            return try TokenWindows(tokens: ids, mask: mask, seqLen: options.seqLen, vocabSize: modelConfig.vocabSize,
                                    source: path)
        }
        let budgetBytes = budget.flatMap(parseBytes)
        // Planning decides what runs under the budget (the same decision `offload plan` shows): parameters
        // in memory with the fastest activation strategy that fits, else streamed from --disk.
        let hw = try hardware.map { try HardwareProfile.load(path: $0) } ?? .defaultCPU
        let placement = try budgetBytes.map { bytes in
            do {
                return try TrainingPlanner.choose(TrainingPlanRequest(config: modelConfig, batch: options.batch,
                                                                      seqLen: options.seqLen, budget: bytes,
                                                                      strategy: strategy ?? "auto", useDisk: disk != nil,
                                                                      hardware: hw,
                                                                      optimizerState: OptimizerStateSize(optimizer: options.optimizer,
                                                                                                         momentum: options.momentum)))
            } catch { throw OffloadError("[train] \(TrainingPlanner.plain("\(error)"))") }
        }
        if let placement { printPlanRow(TrainingPlanner.row(for: placement, hardware: hw), budget: budgetBytes!, hardware: hw) }
        // Several ranks: the job over the trained parameters' layout (the model's, or the adapters').
        func parallel(_ layout: ParameterLayout) throws -> DataParallel? {
            guard let comm, comm.size > 1 else { return nil }
            return try DataParallel(comm: comm, layout: layout, zero: zero ?? 0)
        }
        let run: TrainingRun
        if let settings = options.lora {
            guard let path = sourceModel else { throw OffloadError("[train] LoRA needs the model file (--model)") }
            let base = try FrozenLlama(source: source ?? loadWeights(path))
            let adapters: LoRAAdapters
            if let resume, let info {
                adapters = try Checkpoint.loadAdapters(resume, info: info)
            } else if let loraInit {
                adapters = try LoRAAdapters.load(folder: loraInit, config: modelConfig, ropeStyle: base.ropeStyle)
            } else {
                adapters = try LoRAAdapters.initial(config: modelConfig, ropeStyle: base.ropeStyle, settings: settings, seed: seed)
            }
            let session = try TrainingSession(base: base, adapters: adapters, data: windows, options: options,
                                              parallel: parallel(adapters.layout))
            if let info, let resume { try Checkpoint.restoreOptimizer(resume, info: info, into: session) }
            run = InMemoryRun(session: session, budgeted: nil)
        } else if case .streamed(let plan)? = placement {
            if rankCount > 1 {
                throw OffloadError("[train] streaming the parameters from --disk does not run on several ranks yet; give "
                                   + "a --budget that keeps them in memory (`offload plan` lists the budgets)")
            }
            if evalData != nil {
                throw OffloadError("[train] --eval-data is not supported when the parameters are streamed from --disk "
                                   + "(the plan for --budget \(budget ?? "")) yet; give a budget that keeps them in memory (`offload plan` lists them)")
            }
            run = try StreamedRun(self, config: modelConfig, ropeStyle: ropeStyle, data: windows, options: options,
                                  plan: plan, hardware: hw, source: source, seed: seed,
                                  resume: resume.flatMap { r in info.map { (r, $0) } })
        } else {
            let trainable: TrainableLlama
            let gradients = options.optimizer != "zo-sgd"   // zero-order steps hold the weights only
            if let resume, let info {
                trainable = try Checkpoint.loadModel(resume, info: info, gradients: gradients)
            } else if let source {
                trainable = try TrainableLlama(source: source, gradients: gradients)
            } else {
                trainable = try TrainableLlama.random(config: modelConfig, seed: seed, gradients: gradients)
            }
            let session = try TrainingSession(model: trainable, data: windows, options: options, ownsActivations: budget == nil,
                                              parallel: parallel(trainable.layout))
            var budgeted: (ExecutorPlan, TraceRecorder?)?
            if case .inMemory(let plan)? = placement { budgeted = try attachExecutor(session, plan: plan, hardware: hw) }
            if let info, let resume { try Checkpoint.restoreOptimizer(resume, info: info, into: session) }
            run = InMemoryRun(session: session, budgeted: budgeted)
        }
        // The data as checkpoints checksum it: a token not trained on counts as -id - 2 (distinct from every id and from -1).
        let dataChecksum = Checkpoint.dataChecksum(mask.map { m in zip(ids, m).map { $1 ? $0 : -$0 - 2 } } ?? ids)
        if let comm, comm.size > 1, let session = (run as? InMemoryRun)?.session {
            try Train.checkSameEverywhere(comm, options: options, weights: session.trained.weights, dataChecksum: dataChecksum)
        }
        if let info {
            if let t = info.threads, t != threadCount, sameRanks {
                note("warning: the checkpoint was trained with \(t) threads and this run uses \(threadCount); OpenBLAS "
                     + "sums differ with the thread count, so the continuation will not be bit-identical (use --threads \(t))")
            }
            if info.dataChecksum != dataChecksum {
                note("warning: the data differs from the data this checkpoint was trained on; the run continues on the new data")
            }
        }
        let lastStep = min(options.steps, stopAfter ?? options.steps)
        guard run.step < lastStep else {
            throw OffloadError("[train] the checkpoint is already at step \(run.step); ask for more with --steps")
        }

        let c = modelConfig
        let trainedWhat = options.lora.map { l in
            "LoRA rank \(l.rank) alpha \(l.alpha) on \(l.targets.map(\.rawValue).joined(separator: ",")) (\(c.layers * l.targets.reduce(0) { $0 + l.rank * ($1.shape(c).in + $1.shape(c).out) }) "
                + "trained parameters, the base frozen), "
        } ?? ""
        note("train: \(c.name): \(c.parameterCount) parameters, \(trainedWhat)\(windows.windowCount) windows of \(options.seqLen) "
             + "tokens, batch \(options.batch)×\(options.accumulate), \(options.optimizer) lr \(options.lr), "
             + "\(threadCount) threads" + (rankCount > 1 ? " on each of \(rankCount) ranks (ZeRO \(zero ?? 0))" : "")
             + ", \(formatBytes(run.stateBytes)) of training state" + (rankCount > 1 ? " per rank" : "")
             + (mask.map { m in ", \(m.filter { $0 }.count) of \(m.count) tokens trained on" } ?? "")
             + (info.map { ", resuming at step \($0.step)" } ?? ""))

        var logHandle: FileHandle?
        if let log, printsProgress {
            let appending = info != nil && FileManager.default.fileExists(atPath: log)
            if !appending { _ = FileManager.default.createFile(atPath: log, contents: nil) }
            guard let h = FileHandle(forWritingAtPath: log) else { throw OffloadError("[train] --log \(log): cannot open for writing") }
            h.seekToEndOfFile()
            logHandle = h
        }
        defer { try? logHandle?.close() }

        // mpirun hands its ranks a pseudo-terminal even when its own output is a file: lines, not a redrawn one.
        let tty = isatty(STDOUT_FILENO) != 0 && comm == nil
        let startStep = run.step
        let t0 = now()
        var lastSaved: Int? = info?.step
        var lastLoss: Float?
        var evalSeconds = 0.0
        while run.step < lastStep {
            var r: StepResult
            do {
                r = try run.trainStep()
                if let evalWindows, let session = (run as? InMemoryRun)?.session,
                   run.step == lastStep || evalEvery.map({ run.step % $0 == 0 }) == true {
                    let te = now()
                    r.evalLoss = try session.evaluate(evalWindows)
                    evalSeconds += now() - te
                }
            } catch {
                // A step that fails (non-finite loss, full disk, I/O error) names the checkpoint left.
                if tty { print("") }
                var message = (error as? OffloadError)?.message ?? "\(error)"
                if let save {
                    message += lastSaved.map { "; the last checkpoint (step \($0)) in \(save) is kept" }
                        ?? "; no checkpoint was written"
                }
                throw OffloadError(message)
            }
            lastLoss = r.loss
            if let comm, comm.size > 1 { r.rankPeakBytes = comm.allGather([peakResidentBytes()]).map { $0[0] } }
            guard printsProgress else {
                if let save, let every = saveEvery, run.step % every == 0, run.step < lastStep {
                    try run.save(to: save, sourceModel: sourceModel, lastLoss: lastLoss)
                }
                continue
            }
            logHandle?.write(Data((r.jsonLine + "\n").utf8))
            // Validation passes are not steps: the ETA counts steps only.
            let done = run.step - startStep, elapsed = now() - t0 - evalSeconds
            let eta = elapsed / Double(done) * Double(lastStep - run.step)
            let line = String(format: "step %d/%d  loss %.4f  grad %.3f  lr %.3g  %.1f tok/s  ETA %@  mem %@",
                              r.step, options.steps, r.loss, r.gradNorm, r.lr, r.tokensPerSecond,
                              formatDuration(eta), formatBytes(residentBytes()))
                + (r.rankPeakBytes.map { "  peak/rank " + formatBytes($0.max() ?? 0) } ?? "") + run.measured(r)
                + (r.evalLoss.map { String(format: "  eval %.4f", $0) } ?? "")
            if tty {
                print("\r" + line + "\u{1B}[K", terminator: "")
                fflush(nil)
            } else {
                print(line)
            }
            if let save, let every = saveEvery, run.step % every == 0, run.step < lastStep {
                try run.save(to: save, sourceModel: sourceModel, lastLoss: lastLoss)
                lastSaved = run.step
            }
        }
        if tty { print("") }
        try run.finish(trace: trace)
        if let save {
            try run.save(to: save, sourceModel: sourceModel, lastLoss: lastLoss)
            note("saved step \(run.step) to \(save)")
        }
        let seconds = now() - t0 - evalSeconds
        let tokens = (run.step - startStep) * options.tokensPerStep
        note(String(format: "trained %d steps, %d tokens in %.1f s: %.1f tok/s", run.step - startStep, tokens,
                    seconds, Double(tokens) / seconds)
             + (evalSeconds > 0 ? String(format: " (and %.1f s of validation)", evalSeconds) : ""))
    }
}

/// What the command's loop needs of a run, in memory or streamed.
protocol TrainingRun: AnyObject {
    var step: Int { get }
    var stateBytes: Int { get }
    func trainStep() throws -> StepResult
    /// What the step line adds: measured against predicted, when a budget is set.
    func measured(_ r: StepResult) -> String
    func save(to dir: String, sourceModel: String?, lastLoss: Float?) throws
    /// After the last step: budget summary and trace.
    func finish(trace: String?) throws
}

final class InMemoryRun: TrainingRun {
    let session: TrainingSession
    let budgeted: (ExecutorPlan, TraceRecorder?)?
    init(session: TrainingSession, budgeted: (ExecutorPlan, TraceRecorder?)?) { self.session = session; self.budgeted = budgeted }
    var step: Int { session.step }
    var stateBytes: Int { session.memoryBytes }
    func trainStep() throws -> StepResult { try session.trainStep() }
    func measured(_ r: StepResult) -> String {
        guard let (plan, _) = budgeted, let x = session.lastExecuted else { return "" }
        return String(format: "  peak %@ (pred %@)  step %.2f s (pred %.2f s, %.2f×)  disk r/w %@/%@",
                      formatBytes(x.peakComputeBytes), formatBytes(plan.predictedPeak), r.seconds,
                      plan.predictedSeconds, r.seconds / plan.predictedSeconds,
                      formatBytes(x.bytesRead), formatBytes(x.bytesWritten))
    }
    func save(to dir: String, sourceModel: String?, lastLoss: Float?) throws {
        try Checkpoint.save(session, to: dir, sourceModel: sourceModel, lastLoss: lastLoss)
    }
    func finish(trace: String?) throws {
        guard let (plan, recorder) = budgeted else { return }
        try reportBudget(plan.planningBudget + plan.overhead, peak: session.lastExecuted?.peakComputeBytes,
                         recorder: recorder, trace: trace)
    }
}

/// After a budgeted run: the budget against the measured peaks, and the trace file.
func reportBudget(_ budget: Int, peak: Int?, recorder: TraceRecorder?, trace: String?) throws {
    if let peak {
        let hwm = peakResidentBytes()
        note("budget \(formatBytes(budget)): measured compute peak \(formatBytes(peak)) (\(peak) bytes), "
             + "process peak resident (VmHWM) \(formatBytes(hwm)) = compute peak + \(formatBytes(hwm - peak)) "
             + "outside the budget (runtime, code, mapped model file, data)")
    }
    if let path = trace, let recorder {
        try recorder.write(to: path, processName: "offload train")
        note("trace written to \(path)")
    }
}

extension Train {
    /// The spill folder's options: `--disk-limit` caps it.
    var diskStoreOptions: DiskStoreOptions {
        var o = DiskStoreOptions()
        if let limit = diskLimit.flatMap(parseBytes) { o.capacity = limit }
        return o
    }

    /// Hands the session an executor of `plan` (Planning's choice for the budget).
    func attachExecutor(_ session: TrainingSession, plan: ExecutorPlan, hardware hw: HardwareProfile) throws
        -> (ExecutorPlan, TraceRecorder?) {
        let recorder = trace != nil ? TraceRecorder() : nil
        let store = try disk.map { try DiskStore(roots: [$0], options: diskStoreOptions, trace: recorder) }
        session.executor = try TrainingExecutor(trainer: session.trainer, schedule: plan.schedule,
                                                computeBudget: plan.planningBudget + plan.overhead,
                                                optimizerStateBytes: session.optimizerState.bytes, disk: store,
                                                trace: recorder)
        note("plan: \(plan.result.name), predicted step " + String(format: "%.3f s", plan.predictedSeconds)
             + " (simulator, hardware \(hw.name)), schedule peak \(formatBytes(plan.simulation.peak[.compute] ?? 0)) + "
             + "\(formatBytes(plan.overhead)) held outside it (weights, gradients, optimizer state, the trainer's scratch)")
        return (plan, recorder)
    }
}

func note(_ s: String) {
    guard printsProgress else { return }
    FileHandle.standardError.write(Data((s + "\n").utf8))
}

/// A model file as a weight source. Merge point: the body becomes `try loadWeights(path)` (offload/Common.swift,
/// GGUF or Hugging Face folder; HF Q/K rows are half-split: training keeps that and export permutes them for GGUF).

/// Training and validation data as token ids, with the model's tokenizer (built once for every file read):
/// plain text without BOS (every token trained on; models without a tokenizer — random `--config` shapes
/// of at least 256 ids — train on UTF-8 bytes), or a .jsonl file of fine-tuning examples (ids and the
/// mask of those trained on; needs the model's tokenizer and, for conversations, its chat template).
final class TrainingDataReader {
    let modelPath: String?
    let config: LlamaConfig
    private var model: (tokenizer: Tokenizer, template: ChatTemplate?)?

    init(modelPath: String?, config: LlamaConfig) { self.modelPath = modelPath; self.config = config }

    private func tokenizer(_ modelPath: String) throws -> (tokenizer: Tokenizer, template: ChatTemplate?) {
        if let model { return model }
        let source = try loadWeights(modelPath)
        let loaded = (try loadTokenizer(for: source, modelPath: modelPath), try chatTemplate(for: source, modelPath: modelPath))
        model = loaded
        return loaded
    }

    func read(_ path: String) throws -> (ids: [Int], mask: [Bool]?) {
        if path.lowercased().hasSuffix(".jsonl") {
            guard let modelPath else {
                throw OffloadError("[data] \(path): fine-tuning examples need a model with a tokenizer (--model), not a --config shape")
            }
            let (tokenizer, template) = try tokenizer(modelPath)
            let data = try FineTuningData.load(path: path, tokenizer: tokenizer, template: template)
            return (data.tokens, data.mask)
        }
        guard let bytes = FileManager.default.contents(atPath: path) else { throw OffloadError("[data] \(path): cannot read the file") }
        guard let text = String(data: bytes, encoding: .utf8) else { throw OffloadError("[data] \(path): not UTF-8 text") }
        if text.isEmpty { throw OffloadError("[data] \(path): the file is empty") }
        if let modelPath {
            // Special-token text in training data stays text, as in a corpus.
            return (try tokenizer(modelPath).tokenizer.encode(text, addBOS: false, parseSpecial: false), nil)
        }
        guard config.vocabSize >= 256 else {
            throw OffloadError("[data] \(path): config \(config.name) has \(config.vocabSize) ids, too few for byte tokens")
        }
        return (text.utf8.map { Int($0) }, nil)
    }
}

/// Integers separated by whitespace or commas (a JSON array works too).
func readTokenIDs(_ path: String) throws -> [Int] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw OffloadError("[data] \(path): cannot read the file")
    }
    let separators = CharacterSet(charactersIn: "[], \n\r\t")
    return try text.components(separatedBy: separators).filter { !$0.isEmpty }.enumerated().map { i, s in
        guard let v = Int(s) else { throw OffloadError("[data] \(path): item \(i) ('\(s.prefix(20))') is not a token id") }
        return v
    }
}

func formatDuration(_ s: Double) -> String {
    guard s.isFinite, s >= 0 else { return "?" }
    let t = Int(s.rounded())
    return t >= 3600 ? "\(t / 3600)h\(t % 3600 / 60)m" : t >= 60 ? "\(t / 60)m\(t % 60)s" : "\(t)s"
}

/// Peak resident memory of this process (VmHWM from Linux /proc), 0 when unknown.
func peakResidentBytes() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
          let kb = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
    return kb * 1024
}

/// Resident memory of this process (Linux /proc), 0 when unknown.
func residentBytes() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let parts = s.split(separator: " ")
    return parts.count > 1 ? (Int(parts[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
}
