// `offload serve`: an OpenAI-compatible HTTP server with continuous batching.
import ArgumentParser
import Foundation
import Formats
import Models
import Planning
import Runtime
import Server
import Tensors

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the model over the OpenAI HTTP API, decoding concurrent requests together.",
        discussion: """
        Endpoints: POST /v1/chat/completions and /v1/completions (JSON, or server-sent events with \
        "stream": true), GET /v1/models, /health and /metrics (Prometheus). Requests that arrive \
        together share every decode step (one pass over the weights for all of them); each one's \
        tokens are exactly those `offload generate` makes for it alone. At most --max-concurrent \
        sequences run; up to --max-queue more wait; beyond that a request gets 429 with Retry-After.
        With --budget the weights that do not fit are streamed from the GGUF file, read once per \
        step for the whole batch.
        Binds to 127.0.0.1 unless --host says otherwise. Point an OpenAI client at it with \
        base_url="http://127.0.0.1:8080/v1" (any api_key, or the one given with --api-key).
        Example: offload serve --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8080
        """)

    @Option(help: "A GGUF file or a Hugging Face model folder.") var model: String
    @Option(help: "Apply this LoRA adapter (a peft adapter folder, or an `offload train --lora-rank` checkpoint) without merging it.")
    var lora: String?
    @Option(help: "Refuse the model file unless its SHA-256 digest is this (64 hex digits).") var sha256: String?
    @Option(help: "Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
    var host = "127.0.0.1"
    @Option(help: "Port to listen on (0: any free port, printed at start).") var port = 8080
    @Option(help: ArgumentHelp("Compute memory budget (\"256MB\", \"1GiB\", bytes): weights that do not fit are "
                               + "streamed from the GGUF file; the KV caches of --max-concurrent sequences of "
                               + "--context positions must fit beside them.", valueName: "bytes"))
    var budget: String?
    @Option(name: .customLong("max-concurrent"), help: ArgumentHelp(
        "Sequences decoded together at most (default 16; with --budget: as many as fit, up to 16).", valueName: "n"))
    var maxConcurrent: Int?
    @Option(name: .customLong("max-queue"), help: "Requests that may wait for a free sequence; more get 429.")
    var maxQueue = 64
    @Option(help: ArgumentHelp("Positions per sequence, prompt and completion (default: the model's, at most 4096).",
                               valueName: "n"))
    var context: Int?
    @Option(name: .customLong("api-key"), help: ArgumentHelp(
        "Require 'Authorization: Bearer KEY' on /v1/ requests (default: $OFFLOAD_API_KEY when set, else none).",
        valueName: "key"))
    var apiKey: String?
    @Option(name: .customLong("max-body"), help: ArgumentHelp("Largest request body accepted (larger: 413).",
                                                              valueName: "bytes"))
    var maxBody = "1MB"
    @Option(help: "Compute threads (default: all cores).") var threads: Int?
    @OptionGroup var promptCache: PromptCacheFlags

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535, got \(port)") }
        if let n = maxConcurrent, n < 1 { throw ValidationError("--max-concurrent must be at least 1, got \(n)") }
        guard maxQueue >= 0 else { throw ValidationError("--max-queue must be 0 or more, got \(maxQueue)") }
        if let n = context, n < 2 { throw ValidationError("--context must be at least 2, got \(n)") }
        try validateBudget(budget)
        guard let b = parseBytes(maxBody), b > 0 else {
            throw ValidationError("--max-body must be a size such as 1MB or a byte count, got '\(maxBody)'")
        }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1, got \(t)") }
        if host.isEmpty { throw ValidationError("--host must not be empty") }
        if promptCache.folder != nil && lora != nil {
            throw ValidationError("--prompt-cache is not supported with --lora yet (the adapter changes the cache)")
        }
    }

    func run() throws {
        let source = try loadWeights(model, sha256: sha256)
        if budget != nil { try source.config.requireDense(for: "--budget here") }
        let tokenizer = try loadTokenizer(for: source, modelPath: model)
        let template = try chatTemplate(for: source, modelPath: model)
        var render: ChatRenderer?
        if let template {
            render = { @Sendable (messages: [ChatMessage]) throws -> String in
                try template.render(messages, addGenerationPrompt: true)
            }
        }
        let nthreads = threads ?? defaultThreads()
        let ctx = min(context ?? min(source.config.contextLength, 4096), source.config.contextLength)
        let llama: LlamaModel
        var streamer: WeightStreamer?
        var slots = maxConcurrent ?? 16
        if let budget = budget.flatMap(parseBytes) {
            guard let gguf = source as? GGUFWeights else {
                throw OffloadError("[serve] --budget streams weights from a GGUF file; \(model) is a folder")
            }
            // As many sequences as fit (or exactly --max-concurrent), each with a KV cache of `ctx` positions:
            // the plan `offload plan --mode serve` reports for the same flags.
            let serving: ServingPlan
            do {
                serving = try ServingPlan(stages: try weightStages(of: gguf.file, config: gguf.config), config: gguf.config,
                                          budget: budget, context: ctx, sequences: maxConcurrent, upTo: slots)
            } catch {
                throw OffloadError("[serve] \(error) (lower --context or --max-concurrent, or raise --budget)")
            }
            slots = serving.sequences
            let made = try makeStreamingModel(weights: gguf, plan: serving.plan, threads: nthreads)
            (llama, streamer) = made
            note("[serve] budget \(formatBytes(budget)): \(serving.plan.summary)")
        } else {
            llama = try LlamaModel(source: source, threads: nthreads, maxPositions: ctx)
        }
        if let lora { try llama.setAdapters(loadAdapter(lora, for: source)) }
        let engine = ServingEngine(model: llama, maxConcurrent: slots, maxQueue: maxQueue,
                                   promptCache: try promptCache.make(for: source))
        engine.start()
        var options = ServerOptions(modelID: modelID(model), contextLength: ctx)
        options.host = host
        options.port = port
        options.apiKey = apiKey ?? ProcessInfo.processInfo.environment["OFFLOAD_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        options.maxBodyBytes = parseBytes(maxBody)!
        let stream = streamer
        let server = OpenAIServer(engine: engine, tokenizer: tokenizer, chat: render, options: options,
                                  diskBytesRead: { stream?.stats.bytesRead ?? 0 })
        let (id, hostName, sequences) = (options.modelID, host, slots)
        let chatNote = render == nil ? "; no chat template: /v1/chat/completions answers 400" : ""
        let failure = ErrorBox()
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            do {
                try await server.run { port in
                    note("[serve] \(id): listening on http://\(hostName):\(port)/v1 (\(sequences) sequence\(sequences == 1 ? "" : "s") of \(ctx) positions, "
                         + "\(nthreads) threads\(chatNote))")
                }
            } catch { failure.error = error }
            done.signal()
        }
        done.wait()
        engine.shutdown()
        streamer?.stop()
        if let e = failure.error {
            let text = "\(e)"
            if text.contains("Address already in use") {
                throw OffloadError("[serve] cannot listen on \(host):\(port): the address is already in use "
                                   + "(another server? pick another --port, or 0 for any free one)")
            }
            throw OffloadError("[serve] cannot serve on \(host):\(port): \(text)")
        }
    }
}

private final class ErrorBox: @unchecked Sendable { var error: Error? }

/// The id a server gives its model: the file or folder name without a .gguf extension.
func modelID(_ path: String) -> String {
    var name = URL(fileURLWithPath: path).standardizedFileURL.lastPathComponent
    if name.hasSuffix(".gguf") { name.removeLast(5) }
    return name
}

/// The model's chat template; nil when the model declares none (a malformed one is an error).
func chatTemplate(for source: WeightSource, modelPath: String) throws -> ChatTemplate? {
    if let g = source as? GGUFWeights { return try ChatTemplate.ifDeclared(gguf: g.file) }
    return try ChatTemplate.ifDeclared(folder: modelPath)
}
