// `offload generate`: stream a continuation of a prompt.
import ArgumentParser
import Foundation
import Formats
import Memory
import Models
import Runtime
import Tensors

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate text from a prompt, streaming it as it is produced.",
        discussion: """
        Prefills the prompt in one pass, then decodes token by token. --temperature 0 is greedy.
        Example: offload generate --model SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The tide" --max-tokens 40
        """)

    @Option(help: "A GGUF file or a Hugging Face model folder.") var model: String
    @Option(help: "Refuse the model file unless its SHA-256 digest is this (64 hex digits).") var sha256: String?
    @Option(help: "The prompt text.") var prompt: String?
    @Option(name: .customLong("prompt-tokens"),
            help: "Use a synthetic prompt of N random token ids instead of --prompt (benchmarking).")
    var promptTokens: Int?
    @Option(name: .customLong("max-tokens"), help: "Tokens to generate at most.") var maxTokens = 128
    @Option(help: "Sampling temperature; 0 picks the most likely token (greedy).") var temperature: Float = 0.8
    @Option(name: .customLong("top-k"), help: "Sample among the K most likely tokens (0: all).") var topK = 40
    @Option(name: .customLong("top-p"), help: "Sample within the smallest set of tokens with this total probability.")
    var topP: Float = 0.95
    @Option(help: "Random seed (default: a random one, printed with --json).") var seed: UInt64?
    @Option(help: "Compute threads (default: all cores).") var threads: Int?
    @Flag(name: .customLong("ignore-eos"), help: "Keep generating past the end-of-sequence token.") var ignoreEOS = false
    @Flag(help: "Print one JSON object at the end instead of streaming text.") var json = false
    @Option(help: ArgumentHelp("Compute memory budget (\"256MB\", \"1GiB\", bytes): weights that do not fit "
                               + "are streamed from the GGUF file with direct I/O.", valueName: "bytes"))
    var budget: String?
    @Option(help: ArgumentHelp("With --budget: write a Chrome trace (compute, read and memory events) here.",
                               valueName: "file"))
    var trace: String?
    @Option(name: .customLong("kv-dir"), help: ArgumentHelp(
        "With --budget: folder for the KV-cache layers that do not fit (default: the temporary folder).",
        valueName: "folder"))
    var kvDir: String?

    func validate() throws {
        guard (prompt == nil) != (promptTokens == nil) else {
            throw ValidationError("give exactly one of --prompt TEXT or --prompt-tokens N")
        }
        if let n = promptTokens, n <= 0 { throw ValidationError("--prompt-tokens must be positive, got \(n)") }
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be 0 or more, got \(maxTokens)") }
        guard temperature >= 0, temperature.isFinite else {
            throw ValidationError("--temperature must be a number ≥ 0, got \(temperature)")
        }
        guard topK >= 0 else { throw ValidationError("--top-k must be 0 or more, got \(topK)") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1], got \(topP)") }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1, got \(t)") }
        if let b = budget, parseBytes(b) == nil || parseBytes(b)! <= 0 {
            throw ValidationError("--budget must be a size such as 512MB, 2GiB or a byte count, got '\(b)'")
        }
        if trace != nil && budget == nil { throw ValidationError("--trace needs --budget (it traces the streamed run)") }
    }

    func run() throws {
        let source = try loadWeights(model, sha256: sha256)
        let tokenizer = try loadTokenizer(for: source, modelPath: model)
        let seed = seed ?? UInt64.random(in: 0...UInt64(UInt32.max))
        var ids: [Int]
        if let text = prompt {
            ids = tokenizer.encode(text)
            if ids.isEmpty, let bos = tokenizer.bosID { ids = [bos] }
        } else {
            var rng = SeededGenerator(seed: seed)
            ids = (0..<promptTokens!).map { _ in Int.random(in: 0..<source.config.vocabSize, using: &rng) }
        }
        let llama: LlamaModel
        var streamer: WeightStreamer?
        let recorder = trace.map { _ in TraceRecorder() }
        if let budget = budget.flatMap(parseBytes) {
            guard let gguf = source as? GGUFWeights else {
                throw OffloadError("[generate] --budget streams weights from a GGUF file; \(model) is a folder")
            }
            let capacity = min(ids.count + maxTokens, min(source.config.contextLength, gguf.config.contextLength))
            let (m, s) = try makeStreamingModel(weights: gguf, budget: budget, threads: threads ?? defaultThreads(),
                                                promptTokens: ids.count, contextCapacity: capacity,
                                                kvFolder: kvDir ?? NSTemporaryDirectory(), trace: recorder)
            llama = m
            streamer = s
        } else {
            llama = try LlamaModel(source: source, threads: threads ?? defaultThreads())
        }
        defer { streamer?.stop() }
        var sampler = Sampler(options: SamplingOptions(temperature: temperature, topK: topK, topP: topP), seed: seed)
        var stream = StreamingDecoder(tokenizer: tokenizer)
        let stop: Set<Int> = ignoreEOS ? [] : tokenizer.endOfGenerationIDs
        let start = now()
        var firstToken: Double?
        let result = try Generator(model: llama).generate(prompt: ids, maxTokens: maxTokens, sampler: &sampler,
                                                          stop: stop) { id in
            if firstToken == nil { firstToken = now() - start }
            guard !json else { return }
            if stop.contains(id) { return }
            FileHandle.standardOutput.write(Data(stream.append(id).utf8))
        }
        let generated = result.stoppedAtEOS ? Array(result.tokens.dropLast()) : result.tokens
        streamer?.stop()
        let report = streamer.map { StreamingReport(streamer: $0, result: result) }
        if let recorder, let path = trace { try recorder.write(to: path) }
        if json {
            var out: [String: Any] = [
                "prompt_tokens": ids.count, "tokens": result.tokens, "text": tokenizer.decode(generated),
                "prefill_tokens_per_second": result.prefillTokensPerSecond,
                "decode_tokens_per_second": result.decodeTokensPerSecond,
                "prefill_seconds": result.prefillSeconds, "decode_seconds": result.decodeSeconds,
                "time_to_first_token_seconds": firstToken ?? 0,
                "stopped_at_eos": result.stoppedAtEOS, "seed": seed, "threads": llama.pool.threads,
                "peak_resident_bytes": peakResidentBytes(),
            ]
            if let report { out["streaming"] = report.json }
            print(try jsonString(out))
        } else {
            FileHandle.standardOutput.write(Data((stream.flush() + "\n").utf8))
            FileHandle.standardError.write(Data(String(
                format: "[generate] prompt %d tokens, %.1f tok/s; generated %d tokens, %.1f tok/s\n",
                ids.count, result.prefillTokensPerSecond, result.tokens.count, result.decodeTokensPerSecond).utf8))
            FileHandle.standardError.write(Data(String(format: "[generate] time to first token %.3f s\n",
                                                       firstToken ?? 0).utf8))
            if let report { FileHandle.standardError.write(Data((report.summary + "\n").utf8)) }
        }
    }
}

/// The tokenizer of a GGUF model (HF folders: the GGUF tokenizer is not there, so
/// the folder must hold a `tokenizer.gguf` — a vocabulary-only GGUF — for text I/O).
func loadTokenizer(for source: WeightSource, modelPath: String) throws -> Tokenizer {
    if let g = source as? GGUFWeights { return try Tokenizer(gguf: g.file) }
    let path = (modelPath as NSString).appendingPathComponent("tokenizer.gguf")
    guard FileManager.default.fileExists(atPath: path) else {
        throw OffloadError("[tokenizer] \(modelPath): Hugging Face folders need a tokenizer.gguf beside config.json "
                           + "(tokenizer.json is not read yet)")
    }
    return try Tokenizer(gguf: GGUFFile(path: path))
}
