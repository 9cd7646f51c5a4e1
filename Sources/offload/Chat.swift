// `offload chat`: a terminal conversation that keeps its KV cache between turns.
import ArgumentParser
import Foundation
import Formats
import Models
import Runtime
import Server
import Tensors

/// Set by SIGINT while an answer is being generated (the answer stops, the program goes on).
nonisolated(unsafe) private var interrupted: sig_atomic_t = 0
nonisolated(unsafe) private var answering: sig_atomic_t = 0

struct Chat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chat with the model in the terminal, keeping the conversation's KV cache between turns.",
        discussion: """
        Each turn renders the whole conversation with the model's chat template and prefills only \
        the tokens the cache does not already hold, then streams the answer. With --prompt-cache, a \
        conversation's opening (system message and first turn) is loaded from and stored in a folder \
        of prompt KV blocks, as `generate` and `serve` do. Type /reset to start \
        over, /exit (or Ctrl-D) to leave; Ctrl-C stops the current answer.
        Example: offload chat --model SmolLM2-135M-Instruct.Q4_1.gguf --system "You are terse."
        """)

    @Option(help: "A GGUF file or a Hugging Face model folder.") var model: String
    @Option(help: "Apply this LoRA adapter (a peft adapter folder, or an `offload train --lora-rank` checkpoint) without merging it.")
    var lora: String?
    @Option(help: "Refuse the model file unless its SHA-256 digest is this (64 hex digits).") var sha256: String?
    @Option(help: "A system message that opens the conversation.") var system: String?
    @Option(name: .customLong("max-tokens"), help: "Tokens per answer at most.") var maxTokens = 512
    @OptionGroup var sampling: SamplingFlags
    @Option(help: ArgumentHelp("Positions the conversation may use (default: the model's, at most 4096).",
                               valueName: "n"))
    var context: Int?
    @Option(help: ArgumentHelp("Compute memory budget (\"256MB\", \"1GiB\", bytes): weights that do not fit are "
                               + "streamed from the GGUF file.", valueName: "bytes"))
    var budget: String?
    @Option(help: "Compute threads (default: all cores).") var threads: Int?
    @OptionGroup var promptCache: PromptCacheFlags

    func validate() throws {
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1, got \(maxTokens)") }
        if let n = context, n < 2 { throw ValidationError("--context must be at least 2, got \(n)") }
        try validateBudget(budget)
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1, got \(t)") }
        if promptCache.folder != nil && lora != nil {
            throw ValidationError("--prompt-cache is not supported with --lora yet (the adapter changes the cache)")
        }
    }

    func run() throws {
        let source = try loadWeights(model, sha256: sha256)
        if budget != nil { try source.config.requireDense(for: "--budget here") }
        let tokenizer = try loadTokenizer(for: source, modelPath: model)
        guard let template = try chatTemplate(for: source, modelPath: model) else {
            throw OffloadError("[chat] \(model) has no chat template; use `offload generate --prompt` for plain text")
        }
        let nthreads = threads ?? defaultThreads()
        let ctx = min(context ?? min(source.config.contextLength, 4096), source.config.contextLength)
        let llama: LlamaModel
        var streamer: WeightStreamer?
        if let budget = budget.flatMap(parseBytes) {
            guard let gguf = source as? GGUFWeights else {
                throw OffloadError("[chat] --budget streams weights from a GGUF file; \(model) is a folder")
            }
            let (m, s) = try makeStreamingModel(weights: gguf, budget: budget, threads: nthreads, promptTokens: ctx,
                                                contextCapacity: ctx)
            (llama, streamer) = (m, s)
            note("[chat] budget \(formatBytes(budget)): \(s.plan.summary)")
        } else {
            llama = try LlamaModel(source: source, threads: nthreads, maxPositions: ctx)
        }
        if let lora { try llama.setAdapters(loadAdapter(lora, for: source)) }
        defer { streamer?.stop() }
        signal(SIGINT) { _ in
            if answering != 0 { interrupted = 1; return }
            _exit(130)
        }
        let cache = try llama.newCache(capacity: ctx)
        let store = try promptCache.make(for: source)
        var cached: [Int] = []   // the tokens whose keys and values the cache holds, in order
        var messages: [ChatMessage] = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
        var sampler = Sampler(options: sampling.options, seed: sampling.seedOrRandom)
        let stop = tokenizer.endOfGenerationIDs
        let interactive = isatty(0) != 0
        note("[chat] \(modelID(model)), \(ctx) positions; /reset starts over, /exit leaves, Ctrl-C stops an answer")
        while true {
            if interactive { FileHandle.standardOutput.write(Data("> ".utf8)) }
            guard let line = readLine(strippingNewline: true) else { break }
            let input = line.trimmingCharacters(in: .whitespaces)
            if input.isEmpty { continue }
            if input == "/exit" || input == "/quit" { break }
            if input == "/reset" {
                messages = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
                note("[chat] conversation reset")
                continue
            }
            messages.append(ChatMessage(role: "user", content: line))
            let prompt = chatPromptTokens(try template.render(messages, addGenerationPrompt: true), tokenizer: tokenizer)
            guard prompt.count < ctx else {
                messages.removeLast()
                note("[chat] the conversation (\(prompt.count) tokens) fills the context of \(ctx): /reset to start over")
                continue
            }
            // Keep what the cache holds of this prompt; prefill only the rest.
            var keep = 0
            while keep < min(cached.count, prompt.count - 1) && cached[keep] == prompt[keep] { keep += 1 }
            try cache.truncate(to: keep)
            cached.removeSubrange(keep...)
            let t0 = now()
            // A prompt prefilled from position 0 (the first turn, or after the conversation diverged
            // there) loads its stored blocks and stores its new ones; a later turn's rows start where
            // the cache ends, not on a block, so they are never stored.
            let restored = keep == 0 ? try store?.restore(prompt: prompt, into: cache) ?? 0 : keep
            var logits = try llama.forward(Array(prompt[restored...]), cache: cache)
            cached += prompt[keep...]
            let prefill = now() - t0
            var decoder = StreamingDecoder(tokenizer: tokenizer)
            var answer = "", generated = 0
            interrupted = 0; answering = 1
            let t1 = now()
            while generated < maxTokens && interrupted == 0 {
                let next = sampler.sample(logits)
                if stop.contains(next) { break }
                generated += 1
                let piece = decoder.append(next)
                answer += piece
                FileHandle.standardOutput.write(Data(piece.utf8))
                guard cache.length < cache.capacity else { break }
                logits = try llama.forward([next], cache: cache)
                cached.append(next)
            }
            answering = 0
            if keep == 0, let store, let failure = store.save(prompt: prompt, from: cache, restored: restored) {
                note("[prompt-cache] not stored: \(failure)")
            }
            let rest = decoder.flush()
            answer += rest
            FileHandle.standardOutput.write(Data((rest + "\n").utf8))
            if interrupted != 0 { note("[chat] stopped") }
            messages.append(ChatMessage(role: "assistant", content: answer))
            note(String(format: "[chat] prefilled %d new tokens (%d reused from the cache) in %.2f s; %d tokens at %.1f tok/s",
                        prompt.count - restored, restored, prefill, generated,
                        generated > 0 ? Double(generated) / max(now() - t1, 1e-9) : 0))
        }
    }
}
