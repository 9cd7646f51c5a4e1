// `offload serve`: the OpenAI HTTP API over a `ServingEngine` (continuous batching).
//   POST /v1/chat/completions, POST /v1/completions (JSON or server-sent events),
//   GET /v1/models, GET /health, GET /metrics (Prometheus text).
// Every error is OpenAI's shape with the right status; the engine bounds what runs
// and what waits, so overload is a 429 with Retry-After, never a crash.
import Foundation
import Formats
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Runtime
import Tensors

public struct ServerOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    /// Requests to /v1/ must carry `Authorization: Bearer <apiKey>` when set.
    public var apiKey: String?
    /// Larger request bodies get 413.
    public var maxBodyBytes = 1 << 20
    /// The id `/v1/models` lists and requests name.
    public var modelID: String
    /// Positions a sequence may use (prompt and completion).
    public var contextLength: Int
    public init(modelID: String, contextLength: Int) { self.modelID = modelID; self.contextLength = contextLength }
}

/// Renders chat messages into the prompt text (the model's chat template, with the generation prompt).
public typealias ChatRenderer = @Sendable ([ChatMessage]) throws -> String

public final class OpenAIServer: @unchecked Sendable {
    let engine: ServingEngine
    let tokenizer: Tokenizer
    let render: ChatRenderer?
    let options: ServerOptions
    /// Bytes read from the model file so far (streamed weights), for /metrics.
    let diskBytesRead: @Sendable () -> Int
    private let lock = NSLock()
    private var responses: [Int: Int] = [:]   // by status
    private var started = Date()

    public init(engine: ServingEngine, tokenizer: Tokenizer, chat: ChatRenderer?, options: ServerOptions,
                diskBytesRead: @escaping @Sendable () -> Int = { 0 }) {
        self.engine = engine; self.tokenizer = tokenizer; self.render = chat; self.options = options
        self.diskBytesRead = diskBytesRead
    }

    /// Serves until SIGINT or SIGTERM. `onListening` gets the bound port (useful with port 0).
    public func run(onListening: @escaping @Sendable (Int) -> Void) async throws {
        let router = Router()
        router.middlewares.add(ErrorMiddleware(server: self))
        router.get("/health") { _, _ in try self.json(200, ["status": "ok"]) }
        router.get("/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: .init(byteBuffer: ByteBuffer(string: self.metrics())))
        }
        router.get("/v1/models") { _, _ in
            try self.json(200, ["object": "list", "data": [["id": self.options.modelID, "object": "model",
                                                            "created": Int(self.started.timeIntervalSince1970),
                                                            "owned_by": "offload"]]])
        }
        router.post("/v1/chat/completions") { request, _ in try await self.complete(request, chat: true) }
        router.post("/v1/completions") { request, _ in try await self.complete(request, chat: false) }
        // The command prints its own line when listening; the framework's log only for warnings and errors.
        var logger = Logger(label: "offload.serve")
        logger.logLevel = .warning
        let app = Application(router: router,
                              configuration: .init(address: .hostname(options.host, port: options.port), serverName: "offload"),
                              onServerRunning: { channel in onListening(channel.localAddress?.port ?? 0) }, logger: logger)
        try await app.runService()
    }

    func count(_ status: Int) { lock.lock(); responses[status, default: 0] += 1; lock.unlock() }

    func json(_ status: Int, _ object: Any, headers: HTTPFields = [:]) throws -> Response {
        count(status)
        var h = headers
        h[.contentType] = "application/json"
        let data = try JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])
        return Response(status: .init(code: status), headers: h, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    func errorResponse(_ e: APIError) -> Response {
        var headers: HTTPFields = [:]
        if let r = e.retryAfter { headers[HTTPField.Name("Retry-After")!] = String(r) }
        return (try? json(e.status, e.json, headers: headers)) ?? Response(status: .internalServerError)
    }

    // MARK: - Completions

    private func complete(_ request: Request, chat: Bool) async throws -> Response {
        try authorize(request)
        var request = request
        let body: ByteBuffer
        do { body = try await request.collectBody(upTo: options.maxBodyBytes) } catch is NIOTooManyBytesError {
            throw APIError(413, "The request body is larger than \(options.maxBodyBytes) bytes", code: "request_too_large")
        }
        let object = try parseJSONObject(Data(buffer: body))
        let params = try GenerationParameters(object, knownModels: [options.modelID, options.modelID + ".gguf"])
        let prompt: [Int]
        if chat {
            guard let render else {
                throw APIError(400, "The model has no chat template; use /v1/completions with a prompt", param: "messages",
                               code: "no_chat_template")
            }
            let text: String
            do { text = try render(try ChatContent.messages(object)) } catch let e as APIError { throw e } catch {
                throw APIError(400, "The chat template cannot render these messages: \(error)", param: "messages")
            }
            prompt = chatPromptTokens(text, tokenizer: tokenizer)
        } else {
            let text: String
            switch object["prompt"] {
            case let s as String: text = s
            case let a as [Any] where a.count == 1 && a[0] is String: text = a[0] as! String
            case is [Any]: throw APIError.invalid("prompt", "'prompt' must be one string: this server makes one choice per request")
            case nil: throw APIError.invalid("prompt", "'prompt' is required")
            default: throw APIError.invalid("prompt", "'prompt' must be a string")
            }
            prompt = completionPromptTokens(text, tokenizer: tokenizer)
        }
        guard !prompt.isEmpty else { throw APIError.invalid(chat ? "messages" : "prompt", "The prompt has no tokens") }
        let context = options.contextLength
        guard prompt.count < context else {
            throw APIError(400, "This model's maximum context length is \(context) tokens; the prompt has \(prompt.count)",
                           param: chat ? "messages" : "prompt", code: "context_length_exceeded")
        }
        // Completions default to 16 tokens (as OpenAI's do); chat to the rest of the context.
        let maxTokens = min(params.maxTokens ?? (chat ? context : 16), context - prompt.count)
        let seed = params.seed ?? UInt64.random(in: 0...UInt64(UInt32.max))
        let (events, sink) = AsyncStream<ServeEvent>.makeStream()
        let id: Int
        do {
            id = try engine.submit(ServeRequest(prompt: prompt, maxTokens: maxTokens, sampling: params.sampling, seed: seed,
                                                stop: tokenizer.endOfGenerationIDs)) { e in
                sink.yield(e)
                switch e { case .token: break; case .finished, .failed: sink.finish() }
            }
        } catch let e as AdmissionError {
            switch e {
            case .queueFull: throw APIError(429, "\(e); retry later", type: "rate_limit_error", code: "server_busy", retryAfter: 1)
            case .shuttingDown: throw APIError(503, "\(e)", type: "server_error", code: "unavailable", retryAfter: 5)
            }
        }
        let reply = Reply(chat: chat, id: (chat ? "chatcmpl-" : "cmpl-") + String(UInt64.random(in: 0...UInt64.max), radix: 36),
                          model: params.model, created: Int(Date().timeIntervalSince1970))
        if !params.stream {
            var text = TextStream(tokenizer: tokenizer, stops: params.stop)
            var output = "", finish = "stop", usage = (prompt.count, 0)
            for await e in events {
                switch e {
                case .token(let t):
                    guard !text.stopped else { continue }
                    output += text.push(t)
                    if text.stopped { engine.cancel(id, reason: .stop) }
                case .finished(let why, let p, let c):
                    output += text.flush()
                    finish = text.stopped ? "stop" : why == .length ? "length" : "stop"
                    usage = (p, c)
                case .failed(let m):
                    throw APIError(500, "Generation failed: \(m)", type: "server_error")
                }
            }
            return try json(200, reply.whole(output, finish: finish, usage: usage))
        }
        count(200)
        let includeUsage = params.includeUsage, stops = params.stop
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                        body: ResponseBody { writer in
            var text = TextStream(tokenizer: self.tokenizer, stops: stops)
            func send(_ object: Any) async throws {
                let data = try JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])
                var b = ByteBuffer(string: "data: ")
                b.writeBytes(data)
                b.writeString("\n\n")
                try await writer.write(b)
            }
            do {
                if chat { try await send(reply.chunk(role: true, text: "", finish: nil)) }
                for await e in events {
                    switch e {
                    case .token(let t):
                        guard !text.stopped else { continue }
                        let piece = text.push(t)
                        if text.stopped { self.engine.cancel(id, reason: .stop) }
                        if !piece.isEmpty { try await send(reply.chunk(role: false, text: piece, finish: nil)) }
                    case .finished(let why, let p, let c):
                        let rest = text.flush()
                        if !rest.isEmpty { try await send(reply.chunk(role: false, text: rest, finish: nil)) }
                        let finish = text.stopped ? "stop" : why == .length ? "length" : "stop"
                        try await send(reply.chunk(role: false, text: nil, finish: finish))
                        if includeUsage { try await send(reply.usageChunk(p, c)) }
                    case .failed(let m):
                        try await send(APIError(500, "Generation failed: \(m)", type: "server_error").json)
                    }
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            } catch {
                // The client went away (or the connection broke): free its sequence now.
                self.engine.cancel(id)
                throw error
            }
        })
    }

    private func authorize(_ request: Request) throws {
        guard let key = options.apiKey else { return }
        guard let auth = request.headers[.authorization] else {
            throw APIError(401, "Missing API key: send the header 'Authorization: Bearer <key>'", code: "invalid_api_key")
        }
        let given = Array(auth.utf8), want = Array(("Bearer " + key).utf8)
        // Compared in time that depends only on the lengths.
        var diff = given.count ^ want.count
        for i in 0..<min(given.count, want.count) { diff |= Int(given[i] ^ want[i]) }
        guard diff == 0 else { throw APIError(401, "Incorrect API key provided", code: "invalid_api_key") }
    }

    // MARK: - Metrics

    func metrics() -> String {
        let s = engine.stats
        lock.lock(); let byStatus = responses; lock.unlock()
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, Double)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, v) in samples { out += "\(name)\(labels) \(v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : String(v))\n" }
        }
        metric("offload_requests_total", "counter", "Generation requests accepted.", [("", Double(s.requests))])
        metric("offload_requests_finished_total", "counter", "Requests by how they ended.",
               [("{reason=\"finished\"}", Double(s.finished)), ("{reason=\"cancelled\"}", Double(s.cancelled)),
                ("{reason=\"failed\"}", Double(s.failed)), ("{reason=\"rejected\"}", Double(s.rejected))])
        metric("offload_http_responses_total", "counter", "HTTP responses by status code.",
               byStatus.keys.sorted().map { ("{code=\"\($0)\"}", Double(byStatus[$0]!)) })
        metric("offload_prompt_tokens_total", "counter", "Prompt tokens prefilled or loaded from the prompt cache.", [("", Double(s.promptTokens))])
        metric("offload_prompt_cache_tokens_total", "counter", "Prompt tokens loaded from --prompt-cache instead of prefilled.",
               [("", Double(s.cachedPromptTokens))])
        metric("offload_generated_tokens_total", "counter", "Tokens generated.", [("", Double(s.generatedTokens))])
        metric("offload_queue_length", "gauge", "Requests waiting for a slot.", [("", Double(s.waiting))])
        metric("offload_running_sequences", "gauge", "Sequences being decoded.", [("", Double(s.running))])
        metric("offload_kv_cache_bytes", "gauge", "Bytes of KV cache held by running sequences.", [("", Double(s.kvBytes))])
        metric("offload_disk_read_bytes_total", "counter", "Bytes of weights read from the model file (streaming).",
               [("", Double(diskBytesRead()))])
        metric("offload_decode_steps_total", "counter", "Batched decode steps.", [("", Double(s.decodeSteps))])
        metric("offload_decode_tokens_per_second", "gauge", "Tokens per second over all decode steps so far.",
               [("", s.decodeSeconds > 0 ? Double(s.generatedTokens) / (s.decodeSeconds + s.prefillSeconds) : 0)])
        var cumulative = 0
        var buckets: [(String, Double)] = []
        for (i, le) in ServingStats.firstTokenBuckets.enumerated() {
            cumulative += s.firstTokenCounts[i]
            buckets.append(("_bucket{le=\"\(le)\"}", Double(cumulative)))
        }
        buckets.append(("_bucket{le=\"+Inf\"}", Double(s.firstTokenCount)))
        buckets.append(("_sum", s.firstTokenSeconds))
        buckets.append(("_count", Double(s.firstTokenCount)))
        metric("offload_time_to_first_token_seconds", "histogram", "Seconds from arrival to first token.", buckets)
        return out
    }
}

/// The prompt tokens of rendered chat text: special tokens in the text are parsed, and BOS is
/// added as the tokenizer does by default unless the template already wrote it.
public func chatPromptTokens(_ text: String, tokenizer: Tokenizer) -> [Int] {
    var addBOS = tokenizer.addsBOSByDefault
    if addBOS, let bos = tokenizer.bosID, let b = tokenizer.tokenText(bos), text.hasPrefix(b) { addBOS = false }
    return tokenizer.encode(text, addBOS: addBOS)
}

/// The prompt tokens of a completion's text, as `offload generate --prompt` makes them.
public func completionPromptTokens(_ text: String, tokenizer: Tokenizer) -> [Int] {
    let ids = tokenizer.encode(text)
    return ids.isEmpty ? tokenizer.bosID.map { [$0] } ?? [] : ids
}

/// Token ids to text as they stream, with the request's stop strings cut out.
struct TextStream {
    private var decoder: StreamingDecoder
    private var matcher: StopMatcher
    private(set) var stopped = false
    init(tokenizer: Tokenizer, stops: [String]) {
        decoder = StreamingDecoder(tokenizer: tokenizer)
        matcher = StopMatcher(stops)
    }
    mutating func push(_ id: Int) -> String {
        let (text, stop) = matcher.push(decoder.append(id))
        stopped = stop
        return text
    }
    mutating func flush() -> String {
        if stopped { return "" }
        let (text, stop) = matcher.push(decoder.flush())
        stopped = stop
        return stop ? text : text + matcher.flush()
    }
}

/// The response objects of one request.
struct Reply {
    var chat: Bool, id: String, model: String, created: Int

    func whole(_ text: String, finish: String, usage: (Int, Int)) -> [String: Any] {
        let choice: [String: Any] = chat
            ? ["index": 0, "message": ["role": "assistant", "content": text], "finish_reason": finish, "logprobs": NSNull()]
            : ["index": 0, "text": text, "finish_reason": finish, "logprobs": NSNull()]
        return ["id": id, "object": chat ? "chat.completion" : "text_completion", "created": created, "model": model,
                "choices": [choice], "usage": usageObject(usage.0, usage.1)]
    }

    func chunk(role: Bool, text: String?, finish: String?) -> [String: Any] {
        var choice: [String: Any] = ["index": 0, "finish_reason": finish as Any? ?? NSNull(), "logprobs": NSNull()]
        if chat {
            var delta: [String: Any] = [:]
            if role { delta["role"] = "assistant" }
            if let text { delta["content"] = text }
            choice["delta"] = delta
        } else {
            choice["text"] = text ?? ""
        }
        return ["id": id, "object": chat ? "chat.completion.chunk" : "text_completion", "created": created,
                "model": model, "choices": [choice]]
    }

    func usageChunk(_ prompt: Int, _ completion: Int) -> [String: Any] {
        ["id": id, "object": chat ? "chat.completion.chunk" : "text_completion", "created": created, "model": model,
         "choices": [Any](), "usage": usageObject(prompt, completion)]
    }

    private func usageObject(_ p: Int, _ c: Int) -> [String: Any] {
        ["prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c]
    }
}

/// Errors as OpenAI-shaped JSON: ours, the router's (404, 405), an oversized body (413), anything else (500).
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let server: OpenAIServer
    func handle(_ request: Request, context: Context,
                next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as APIError {
            return server.errorResponse(e)
        } catch let e as HTTPError {
            let path = request.uri.path
            let message = e.status == .notFound ? "Unknown route \(request.method) \(path)"
                : e.status == .methodNotAllowed ? "\(request.method) is not allowed on \(path)"
                : e.body ?? e.status.reasonPhrase
            return server.errorResponse(APIError(e.status.code, message, code: e.status == .notFound ? "not_found" : nil))
        } catch is NIOTooManyBytesError {
            return server.errorResponse(APIError(413, "The request body is too large", code: "request_too_large"))
        } catch {
            return server.errorResponse(APIError(500, "Internal error: \(error)", type: "server_error"))
        }
    }
}
