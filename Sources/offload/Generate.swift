// `offload generate`: stream a continuation of a prompt.
import ArgumentParser
import Foundation
import Formats
import Memory
import Models
import Planning
import Runtime
import Server
import Tensors

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate text from a prompt, streaming it as it is produced.",
        discussion: """
        Prefills the prompt (in passes of --prefill-chunk tokens, or the plan's under --budget), then decodes token by token. --temperature 0 is greedy.
        Example: offload generate --model SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The tide" --max-tokens 40
        """)

    @Option(help: "A GGUF file or a Hugging Face model folder.") var model: String
    @Option(help: "Refuse the model file unless its SHA-256 digest is this (64 hex digits).") var sha256: String?
    @Option(help: "Apply this LoRA adapter (a peft adapter folder, or an `offload train --lora-rank` checkpoint) without merging it.")
    var lora: String?
    @Option(help: "The prompt text.") var prompt: String?
    @Option(help: ArgumentHelp("Many prompts, one per line (plain text, or JSON objects with a \"prompt\" field); "
                               + "writes one JSON line per prompt, in input order. With --budget they run in blocks "
                               + "that share every weight read.", valueName: "file"))
    var prompts: String?
    @Option(name: .customLong("block-size"), help: ArgumentHelp(
        "With --prompts and --budget: sequences per block (default: the cost model's choice).", valueName: "n"))
    var blockSize: Int?
    @Option(name: .customLong("prompt-tokens"),
            help: "Use a synthetic prompt of N random token ids instead of --prompt (benchmarking).")
    var promptTokens: Int?
    @Flag(help: ArgumentHelp("Treat --prompt as a user message: render it with the model's chat template (after "
                             + "--system) and generate the assistant's answer, as `offload serve` and `offload chat` do."))
    var chat = false
    @Option(help: "With --chat: a system message before the user's.") var system: String?
    @Option(name: .customLong("max-tokens"), help: "Tokens to generate at most.") var maxTokens = 128
    @OptionGroup var sampling: SamplingFlags
    @Option(help: "Compute threads (default: all cores).") var threads: Int?
    @Flag(name: .customLong("ignore-eos"), help: "Keep generating past the end-of-sequence token.") var ignoreEOS = false
    @Flag(help: "Print one JSON object at the end instead of streaming text.") var json = false
    @Option(help: ArgumentHelp("Compute memory budget (\"256MB\", \"1GiB\", bytes): weights that do not fit "
                               + "are streamed from the GGUF file with direct I/O.", valueName: "bytes"))
    var budget: String?
    @Option(help: ArgumentHelp("With --budget: write a Chrome trace (compute, read and memory events) here.",
                               valueName: "file"))
    var trace: String?
    @Option(name: [.customLong("disk"), .customLong("kv-dir")], help: ArgumentHelp(
        "With --budget: folder on a local disk for the KV-cache heads that do not fit (default: the temporary "
            + "folder); the same flag as train's and plan's spill folder (--kv-dir is its old name).",
        valueName: "folder"))
    var disk: String?
    @Option(help: ArgumentHelp("With --budget: hardware profile JSON (from `offload profile`) for the predicted time per token.",
                               valueName: "file"))
    var hardware: String?
    @Option(name: .customLong("prefill-chunk"), help: ArgumentHelp(
        "Prompt tokens per prefill pass, a multiple of 256 (default: one pass; with --budget, the plan's choice). "
            + "Activations are bounded by the pass, not the prompt; the output is the same bit for bit.",
        valueName: "tokens"))
    var prefillChunk: Int?
    @OptionGroup var promptCache: PromptCacheFlags
    @Option(name: .customLong("expert-policy"), help: ArgumentHelp(
        "With --budget and a mixture-of-experts model: which resident expert a miss evicts: lru (least recently "
            + "used), lfu (least frequently used so far, ties by recency) or farthest (the expert of the block "
            + "farthest ahead in the forward: the block just computed first; ties by recency); default lfu.", valueName: "policy"))
    var expertPolicy: String?
    @Option(name: .customLong("expert-prefetch"), help: ArgumentHelp(
        "With --budget and a mixture-of-experts model: experts per token to read ahead for the next block, "
            + "predicted by its router on the current hidden state (default: the experts a token uses; 0: none).",
        valueName: "n"))
    var expertPrefetch: Int?
    @Option(name: .customLong("routing-trace"), help: ArgumentHelp(
        "With a mixture-of-experts model: write the experts every block chose for every row here (one JSON line "
            + "per block and forward), for `offload plan --routing-trace` to predict a budget's hit rate.",
        valueName: "file"))
    var routingTrace: String?

    func validate() throws {
        guard [prompt != nil, promptTokens != nil, prompts != nil].filter({ $0 }).count == 1 else {
            throw ValidationError("give exactly one of --prompt TEXT, --prompt-tokens N or --prompts FILE")
        }
        if let b = blockSize, b < 1 { throw ValidationError("--block-size must be at least 1, got \(b)") }
        if blockSize != nil && (prompts == nil || budget == nil) {
            throw ValidationError("--block-size needs --prompts and --budget")
        }
        if chat && prompt == nil { throw ValidationError("--chat needs --prompt (the user's message)") }
        if system != nil && !chat { throw ValidationError("--system needs --chat") }
        if let n = promptTokens, n <= 0 { throw ValidationError("--prompt-tokens must be positive, got \(n)") }
        try validatePrefillChunk(prefillChunk)
        if promptCache.folder != nil && prompts != nil {
            throw ValidationError("--prompt-cache is not supported with --prompts yet; give one --prompt")
        }
        if promptCache.folder != nil && lora != nil {
            throw ValidationError("--prompt-cache is not supported with --lora yet (the adapter changes the cache)")
        }
        if prefillChunk != nil && prompts != nil && budget != nil {
            throw ValidationError("--prefill-chunk is not supported with --prompts and --budget (blocks prefill in one pass)")
        }
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be 0 or more, got \(maxTokens)") }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1, got \(t)") }
        if routingTrace != nil && prompts != nil {
            throw ValidationError("--routing-trace is not supported with --prompts yet; give one --prompt")
        }
        if lora != nil && prompts != nil && budget != nil {
            throw ValidationError("--lora is not supported with --prompts and --budget yet (block batching); drop --budget")
        }
        try validateBudget(budget)
        _ = try parseExpertPolicy(expertPolicy)
        if let n = expertPrefetch, n < 0 { throw ValidationError("--expert-prefetch must be 0 or more, got \(n)") }
        if (expertPrefetch != nil || expertPolicy != nil) && budget == nil {
            throw ValidationError("--expert-policy and --expert-prefetch apply to a budgeted run: give --budget too")
        }
        if trace != nil && budget == nil { throw ValidationError("--trace needs --budget (it traces the streamed run)") }
        if (disk != nil || hardware != nil) && budget == nil {
            throw ValidationError("--disk and --hardware apply to a budgeted run: give --budget too")
        }
    }

    func run() throws {
        let source = try loadWeights(model, sha256: sha256)
        if budget != nil && prompts != nil { try source.config.requireDense(for: "--prompts with --budget") }
        let tokenizer = try loadTokenizer(for: source, modelPath: model)
        if let file = prompts { return try runPrompts(file: file, source: source, tokenizer: tokenizer) }
        let seed = sampling.seedOrRandom
        var ids: [Int]
        if let text = prompt, chat {
            guard let template = try chatTemplate(for: source, modelPath: model) else {
                throw OffloadError("[generate] --chat: \(model) has no chat template")
            }
            let messages = (system.map { [ChatMessage(role: "system", content: $0)] } ?? [])
                + [ChatMessage(role: "user", content: text)]
            ids = chatPromptTokens(try template.render(messages, addGenerationPrompt: true), tokenizer: tokenizer)
        } else if let text = prompt {
            ids = completionPromptTokens(text, tokenizer: tokenizer)
        } else {
            var rng = SeededGenerator(seed: seed)
            ids = (0..<promptTokens!).map { _ in Int.random(in: 0..<source.config.vocabSize, using: &rng) }
        }
        let llama: LlamaModel
        var streamer: WeightStreamer?
        var predicted: Double?
        let recorder = trace.map { _ in TraceRecorder() }
        var experts: ExpertCache?
        if let budget = budget.flatMap(parseBytes), let moe = source.config.moe {
            guard let gguf = source as? GGUFWeights else {
                throw OffloadError("[generate] --budget reads a mixture of experts' experts from a GGUF file; \(model) is a folder")
            }
            guard trace == nil else { throw OffloadError("[generate] --trace is not supported with expert offloading yet") }
            let capacity = min(ids.count + maxTokens, source.config.contextLength)
            let plan = try ExpertOffloadPlan(source: gguf, budget: budget, promptTokens: ids.count, contextCapacity: capacity)
            llama = try LlamaModel(source: gguf, threads: threads ?? defaultThreads(), maxPositions: capacity)
            let policy = try parseExpertPolicy(expertPolicy)
            let cache = try ExpertCache(source: gguf, slots: plan.slots, policy: policy,
                                        prefetchWidth: expertPrefetch ?? moe.used)
            llama.expertSupplier = cache
            experts = cache
            note("[generate] experts: \(plan.slots) of \(plan.totalExperts) in memory (slots of \(formatBytes(plan.slotBytes))), "
                 + "\(policy.rawValue), read-ahead \(cache.prefetchWidth) per token; everything else "
                 + "\(formatBytes(plan.residentBytes)) (the least budget: \(formatBytes(plan.minimumBudget)))")
        } else if let budget = budget.flatMap(parseBytes) {
            guard let gguf = source as? GGUFWeights else {
                throw OffloadError("[generate] --budget streams weights from a GGUF file; \(model) is a folder")
            }
            let capacity = min(ids.count + maxTokens, min(source.config.contextLength, gguf.config.contextLength))
            let hw = try hardware.map { try HardwareProfile.load(path: $0) } ?? .defaultCPU
            let (m, s) = try makeStreamingModel(weights: gguf, budget: budget, threads: threads ?? defaultThreads(),
                                                promptTokens: ids.count, contextCapacity: capacity,
                                                kvFolder: disk ?? NSTemporaryDirectory(), prefillChunk: prefillChunk,
                                                hardware: hw, trace: recorder)
            llama = m
            streamer = s
            let row = generationRow(s.plan, config: gguf.config, hardware: hw)
            predicted = row.seconds
            printPlanRow(row, budget: budget, hardware: hw, stepLabel: "per token")
            note("  \(s.plan.summary)")
        } else {
            llama = try LlamaModel(source: source, threads: threads ?? defaultThreads())
            llama.prefillChunk = prefillChunk
        }
        if let lora { try llama.setAdapters(loadAdapter(lora, for: source)) }
        var routing: [RoutingStep] = []
        if routingTrace != nil {
            guard source.config.moe != nil else {
                throw OffloadError("[generate] --routing-trace: \(model) is not a mixture-of-experts model")
            }
            llama.onRouting = { routing.append(RoutingStep(layer: $0, rows: $1)) }
        }
        defer { streamer?.stop() }
        var sampler = Sampler(options: sampling.options, seed: seed)
        var stream = StreamingDecoder(tokenizer: tokenizer)
        let stop: Set<Int> = ignoreEOS ? [] : tokenizer.endOfGenerationIDs
        let start = now()
        var firstToken: Double?
        var prefillExperts: ExpertCache.LayerStats?
        let cache = try promptCache.make(for: source)
        let result = try Generator(model: llama).generate(prompt: ids, maxTokens: maxTokens, sampler: &sampler,
                                                          stop: stop, promptCache: cache) { id in
            if firstToken == nil { firstToken = now() - start; prefillExperts = experts?.totals }
            guard !json else { return }
            if stop.contains(id) { return }
            FileHandle.standardOutput.write(Data(stream.append(id).utf8))
        }
        let generated = result.stoppedAtEOS ? Array(result.tokens.dropLast()) : result.tokens
        streamer?.stop()
        experts?.stop()
        if let path = routingTrace {
            do {   // atomic: a temporary file renamed into place
                try Data(routing.map { RoutingTrace.line($0) + "\n" }.joined().utf8)
                    .write(to: URL(fileURLWithPath: path), options: .atomic)
            } catch {
                throw OffloadError("[generate] --routing-trace: cannot write \(path): \(error.localizedDescription)")
            }
        }
        let report = streamer.map { StreamingReport(streamer: $0, result: result) }
        if let recorder, let path = trace { try recorder.write(to: path) }
        if json {
            var out: [String: Any] = [
                "prompt_tokens": ids.count, "cached_prompt_tokens": result.cachedPromptTokens, "tokens": result.tokens, "text": tokenizer.decode(generated, continuing: true),
                "prefill_tokens_per_second": result.prefillTokensPerSecond,
                "decode_tokens_per_second": result.decodeTokensPerSecond,
                "prefill_seconds": result.prefillSeconds, "decode_seconds": result.decodeSeconds,
                "time_to_first_token_seconds": firstToken ?? 0,
                "stopped_at_eos": result.stoppedAtEOS, "seed": seed, "threads": llama.pool.threads,
                "peak_resident_bytes": processPeakResidentBytes(),
            ]
            if let report {
                var r = report.json
                r["predicted_seconds_per_token"] = predicted
                out["streaming"] = r
            }
            if let experts { out["experts"] = experts.report(since: prefillExperts) }
            print(try jsonString(out))
        } else {
            FileHandle.standardOutput.write(Data((stream.flush() + "\n").utf8))
            FileHandle.standardError.write(Data(String(
                format: "[generate] prompt %d tokens, %.1f tok/s; generated %d tokens, %.1f tok/s\n",
                ids.count, result.prefillTokensPerSecond, result.tokens.count, result.decodeTokensPerSecond).utf8))
            FileHandle.standardError.write(Data(String(format: "[generate] time to first token %.3f s\n",
                                                       firstToken ?? 0).utf8))
            if let cache {
                note("[prompt-cache] \(result.cachedPromptTokens) of \(ids.count) prompt tokens loaded from \(cache.folder); "
                     + "\(cache.storedBlocks) block\(cache.storedBlocks == 1 ? "" : "s") stored"
                     + (cache.rejectedEntries > 0 ? "; \(cache.rejectedEntries) unusable entr\(cache.rejectedEntries == 1 ? "y" : "ies") removed" : ""))
            }
            if let report { FileHandle.standardError.write(Data((report.summary + "\n").utf8)) }
            if let r = experts?.report() {
                note(String(format: "[generate] experts: hit rate %.1f%%, read-ahead precision %.1f%% recall %.1f%%, ",
                            100 * (r["hit_rate"] as! Double), 100 * (r["prefetch_precision"] as! Double),
                            100 * (r["prefetch_recall"] as! Double))
                     + "\(formatBytes(r["bytes_read"] as! Int)) read, "
                     + String(format: "%.2f s waiting for experts", r["stall_seconds"] as! Double))
            }
        }
    }
}

extension Generate {
    /// Reads one prompt per line: plain text, or a JSON object with "prompt" (or "text").
    static func readPrompts(_ path: String) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw OffloadError("[generate] \(path): cannot read the prompts file")
        }
        var out: [String] = []
        for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty { continue }
            if t.hasPrefix("{") {
                guard let obj = try? JSONSerialization.jsonObject(with: Data(t.utf8)) as? [String: Any],
                      let text = (obj["prompt"] ?? obj["text"]) as? String else {
                    throw OffloadError("[generate] \(path) line \(n + 1): a JSON line needs a string \"prompt\" field")
                }
                out.append(text)
            } else {
                out.append(String(line))
            }
        }
        guard !out.isEmpty else { throw OffloadError("[generate] \(path): no prompts") }
        return out
    }

    func runPrompts(file: String, source: WeightSource, tokenizer: Tokenizer) throws {
        let texts = try Generate.readPrompts(file)
        let ids = texts.map { t -> [Int] in
            let e = tokenizer.encode(t)
            return e.isEmpty ? tokenizer.bosID.map { [$0] } ?? [] : e
        }
        let seed = sampling.seedOrRandom
        let options = sampling.options
        let stop: Set<Int> = ignoreEOS ? [] : tokenizer.endOfGenerationIDs
        let nthreads = threads ?? defaultThreads()
        let result: BatchResult
        var streamer: WeightStreamer?
        var schedule: BlockSchedule?
        let recorder = trace.map { _ in TraceRecorder() }
        if let budget = budget.flatMap(parseBytes) {
            guard let gguf = source as? GGUFWeights else {
                throw OffloadError("[generate] --budget streams weights from a GGUF file; \(model) is a folder")
            }
            let hw = try hardware.map { try HardwareProfile.load(path: $0) } ?? .defaultCPU
            let s = try BlockSchedule(weights: gguf, budget: budget, prompts: ids, maxTokens: maxTokens, blockSize: blockSize,
                                      hardware: hw)
            if !json {   // with --json, standard error carries the JSON summary alone
                printPlanRow(generationRow(s.plan, config: gguf.config, hardware: hw), budget: budget, hardware: hw,
                             stepLabel: "per token")
                note("  \(s.plan.summary)")
            }
            (result, streamer) = try generateBlocks(weights: gguf, schedule: s, threads: nthreads, prompts: ids,
                                                    maxTokens: maxTokens, sampling: options, seed: seed, stop: stop,
                                                    kvFolder: disk ?? NSTemporaryDirectory(), trace: recorder)
            schedule = s
        } else {
            // No budget: one prompt after another on the resident model (the reference the blocks match).
            let llama = try LlamaModel(source: source, threads: nthreads)
            if let lora { try llama.setAdapters(loadAdapter(lora, for: source)) }
            var r = BatchResult(outputs: [], blockSize: 1)
            let t0 = now()
            for (i, p) in ids.enumerated() {
                var sampler = Sampler(options: options, seed: seed &+ UInt64(i))
                let g = try Generator(model: llama).generate(prompt: p, maxTokens: maxTokens, sampler: &sampler, stop: stop)
                if i == 0 { r.timeToFirstToken = now() - t0 }
                r.outputs.append(BatchOutput(index: i, promptTokens: p.count, tokens: g.tokens, stoppedAtEOS: g.stoppedAtEOS))
                r.prefillSeconds += g.prefillSeconds; r.decodeSeconds += g.decodeSeconds
                r.promptTokens += p.count; r.decodeTokens += max(0, g.tokens.count - 1)
            }
            result = r
        }
        if let recorder, let path = trace { try recorder.write(to: path) }
        for o in result.outputs {
            let generated = o.stoppedAtEOS ? Array(o.tokens.dropLast()) : o.tokens
            print(try jsonString(["index": o.index, "prompt_tokens": o.promptTokens, "tokens": o.tokens,
                                  "text": tokenizer.decode(generated, continuing: true), "stopped_at_eos": o.stoppedAtEOS] as [String: Any]))
        }
        var summary: [String: Any] = [
            "prompts": ids.count, "block_size": result.blockSize, "prompt_tokens": result.promptTokens,
            "generated_tokens": result.generatedTokens, "prefill_tokens_per_second": result.prefillTokensPerSecond,
            "decode_tokens_per_second": result.decodeTokensPerSecond, "prefill_seconds": result.prefillSeconds,
            "decode_seconds": result.decodeSeconds, "time_to_first_token_seconds": result.timeToFirstToken,
            "seed": seed, "threads": nthreads, "peak_resident_bytes": processPeakResidentBytes(),
        ]
        if let streamer, let schedule {
            let st = streamer.stats
            let steps = max(st.decodeForwards, 1)
            let perToken = Double(st.decodeBytesRead) / Double(max(result.decodeTokens, 1))
            let compute = max(0, result.decodeSeconds - st.decodeWaitSeconds) / Double(max(result.decodeTokens, 1))
            let limit = 1 / max(compute, perToken / max(streamer.readBandwidth, 1))
            summary["streaming"] = [
                "budget_bytes": schedule.plan.budget, "resident_stages": schedule.plan.resident.count,
                "streamed_stages": schedule.plan.streamed.count, "stream_buffers": schedule.plan.ringSlots,
                "peak_compute_bytes": streamer.peakComputeBytes, "bytes_read_per_token": perToken,
                "block_steps": steps, "disk_read_bytes_per_second": streamer.readBandwidth,
                "compute_seconds_per_token": compute, "limit_decode_tokens_per_second": limit,
                "ratio_to_limit": result.decodeTokensPerSecond / limit,
                "predicted_seconds_per_token": schedule.predictedSecondsPerToken,
                "block_size_search": "exhaustive over 1...prompts",
            ] as [String: Any]
        }
        FileHandle.standardError.write(Data(((json ? try jsonString(summary) : String(
            format: "[generate] %d prompts in blocks of %d: prompts %d tokens at %.1f tok/s; generated %d tokens, decode %.1f tok/s; first token after %.3f s",
            ids.count, result.blockSize, result.promptTokens, result.prefillTokensPerSecond, result.generatedTokens,
            result.decodeTokensPerSecond, result.timeToFirstToken)) + "\n").utf8))
    }
}

/// The tokenizer of a model: a GGUF file's own vocabulary, or a Hugging Face folder's (see `folderTokenizer`).
func loadTokenizer(for source: WeightSource, modelPath: String) throws -> Tokenizer {
    if let g = source as? GGUFWeights { return try Tokenizer(gguf: g.file) }
    return try folderTokenizer(modelPath)
}

/// The tokenizer of a Hugging Face folder: its `tokenizer.gguf` (a vocabulary-only GGUF, read
/// as llama.cpp reads it) when there is one, else its `tokenizer.json` (read as transformers
/// reads it, with `tokenizer_config.json` beside it).
func folderTokenizer(_ folder: String) throws -> Tokenizer {
    let gguf = (folder as NSString).appendingPathComponent("tokenizer.gguf")
    if FileManager.default.fileExists(atPath: gguf) { return try Tokenizer(gguf: GGUFFile(path: gguf)) }
    let json = (folder as NSString).appendingPathComponent("tokenizer.json")
    if FileManager.default.fileExists(atPath: json) { return try Tokenizer(huggingFaceJSON: json) }
    throw OffloadError("[tokenizer] \(folder): no tokenizer.json or tokenizer.gguf in the folder; text input needs one")
}
