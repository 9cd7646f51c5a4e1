// Continuous batching for a server: requests arrive at any time; each is prefilled
// alone as it is admitted, then joins the running sequences, and every decode step
// runs all of them in one forward (`LlamaModel.forwardDecode`) that reads the
// weights once. Each sequence's tokens are exactly those `Generator` makes for it
// alone: batching changes throughput, never tokens. Admission is bounded: at most
// `maxConcurrent` sequences run, at most `maxQueue` wait, and a sequence whose KV
// cache does not fit the budget waits until one finishes.

import Foundation
import Models
import Tensors

public enum FinishReason: String, Sendable {
    /// A stop token (end of generation), or the client's stop sequence (`cancel(_:reason:)`).
    case stop
    /// `maxTokens` reached, or the context is full.
    case length
    /// The client went away.
    case cancelled
}

public struct ServeRequest: Sendable {
    public var prompt: [Int]
    public var maxTokens: Int
    public var sampling: SamplingOptions
    public var seed: UInt64
    /// Token ids that end the sequence (not reported as tokens).
    public var stop: Set<Int>
    public init(prompt: [Int], maxTokens: Int, sampling: SamplingOptions, seed: UInt64, stop: Set<Int>) {
        self.prompt = prompt; self.maxTokens = maxTokens; self.sampling = sampling; self.seed = seed; self.stop = stop
    }
}

public enum ServeEvent: Sendable {
    case token(Int)
    /// The last event of a request that ran.
    case finished(FinishReason, promptTokens: Int, completionTokens: Int)
    /// The last event of a request that could not run (the message says why).
    case failed(String)
}

public enum AdmissionError: Error, CustomStringConvertible {
    case queueFull(waiting: Int)
    case shuttingDown
    public var description: String {
        switch self {
        case .queueFull(let n): "the server is busy: \(n) requests are already waiting"
        case .shuttingDown: "the server is shutting down"
        }
    }
}

/// Counters for `/metrics`, read under the engine's lock.
public struct ServingStats: Sendable {
    public var requests = 0, finished = 0, cancelled = 0, failed = 0, rejected = 0
    public var promptTokens = 0, generatedTokens = 0
    /// Of the prompt tokens, those loaded from the prompt cache instead of prefilled.
    public var cachedPromptTokens = 0
    public var running = 0, waiting = 0
    public var kvBytes = 0
    public var decodeSteps = 0, decodeSeconds = 0.0, prefillSeconds = 0.0
    /// Seconds from arrival to first token: a histogram (counts per bucket, not cumulative).
    public static let firstTokenBuckets: [Double] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
    public var firstTokenCounts = [Int](repeating: 0, count: firstTokenBuckets.count)
    public var firstTokenCount = 0
    public var firstTokenSeconds = 0.0
    mutating func recordFirstToken(_ seconds: Double) {
        if let i = Self.firstTokenBuckets.firstIndex(where: { seconds <= $0 }) { firstTokenCounts[i] += 1 }
        firstTokenCount += 1
        firstTokenSeconds += seconds
    }
}

public final class ServingEngine: @unchecked Sendable {
    public let model: LlamaModel
    public let maxConcurrent: Int
    public let maxQueue: Int

    private struct Pending {
        var id: Int, request: ServeRequest, onEvent: @Sendable (ServeEvent) -> Void, arrival: Double
    }
    private final class Running {
        let id: Int, request: ServeRequest, onEvent: @Sendable (ServeEvent) -> Void, arrival: Double
        let cache: KVCache
        var sampler: Sampler
        var generated = 0
        var next = 0
        init(_ p: Pending, cache: KVCache) {
            id = p.id; request = p.request; onEvent = p.onEvent; arrival = p.arrival; self.cache = cache
            sampler = Sampler(options: p.request.sampling, seed: p.request.seed)
        }
    }

    private let cond = NSCondition()
    private var waiting: [Pending] = []
    private var running: [Running] = []
    /// Sequences admitted and not yet ended (running, or being prefilled): what `maxConcurrent` bounds.
    private var occupied = 0
    private var cancelled: [Int: FinishReason] = [:]
    private var nextID = 0
    private var stopping = false
    private var thread: Thread?
    private var _stats = ServingStats()

    /// Prompts' stored KV blocks: loaded instead of prefilled, new ones stored (used on the engine's thread only).
    let promptCache: PromptCache?

    public init(model: LlamaModel, maxConcurrent: Int, maxQueue: Int, promptCache: PromptCache? = nil) {
        precondition(maxConcurrent >= 1 && maxQueue >= 0)
        self.model = model; self.maxConcurrent = maxConcurrent; self.maxQueue = maxQueue
        self.promptCache = promptCache
    }

    public var stats: ServingStats { cond.lock(); defer { cond.unlock() }; return _stats }

    /// Queues `request`; `onEvent` is called on the engine's thread with each token, then one
    /// `.finished` or `.failed`. Returns the request's id (for `cancel`).
    @discardableResult
    public func submit(_ request: ServeRequest, onEvent: @escaping @Sendable (ServeEvent) -> Void) throws -> Int {
        cond.lock(); defer { cond.unlock() }
        guard !stopping else { throw AdmissionError.shuttingDown }
        guard waiting.count < maxQueue + max(0, maxConcurrent - occupied) else {
            _stats.rejected += 1
            throw AdmissionError.queueFull(waiting: waiting.count)
        }
        let id = nextID
        nextID += 1
        waiting.append(Pending(id: id, request: request, onEvent: onEvent, arrival: now()))
        _stats.requests += 1
        _stats.waiting = waiting.count
        cond.signal()
        return id
    }

    /// Ends request `id` before its next step (a client that went away, or a stop sequence
    /// found in its text); its KV cache is freed then. It still gets its `.finished` event.
    public func cancel(_ id: Int, reason: FinishReason = .cancelled) {
        cond.lock(); defer { cond.unlock() }
        cancelled[id] = reason
        cond.signal()
    }

    public func start() {
        let t = Thread { [self] in loop() }
        t.name = "offload-serving"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Stops after the current step; waiting and running requests are failed.
    public func shutdown() {
        cond.lock()
        stopping = true
        cond.signal()
        cond.unlock()
        while thread?.isFinished == false { usleep(1000) }
    }

    private func loop() {
        while true {
            cond.lock()
            while !stopping && waiting.isEmpty && running.isEmpty && cancelled.isEmpty { cond.wait() }
            if stopping {
                let all = waiting.map(\.onEvent) + running.map(\.onEvent)
                waiting.removeAll(); running.removeAll()
                cond.unlock()
                all.forEach { $0(.failed("the server is shutting down")) }
                return
            }
            // Cancelled requests leave first, so their slots and memory go to the queue.
            var ended: [(Running, FinishReason)] = []
            running.removeAll { r in
                guard let why = cancelled[r.id] else { return false }
                ended.append((r, why)); return true
            }
            var dropped: [Pending] = []
            waiting.removeAll { p in
                guard cancelled[p.id] != nil else { return false }
                dropped.append(p); return true
            }
            cancelled.removeAll()
            var admitted: [Pending] = []
            while occupied < maxConcurrent, !waiting.isEmpty {
                admitted.append(waiting.removeFirst())
                occupied += 1
            }
            cond.unlock()
            for (r, why) in ended { finish(r, why) }
            ended.removeAll()   // their caches go back to memory before the queue asks for it
            for p in dropped {
                p.onEvent(.finished(.cancelled, promptTokens: p.request.prompt.count, completionTokens: 0))
                update { $0.cancelled += 1 }
            }
            let requeue = prefill(admitted)
            if !requeue.isEmpty {
                cond.lock(); waiting.insert(contentsOf: requeue, at: 0); occupied -= requeue.count; cond.unlock()
            }
            decodeStep()
            update { s in
                s.running = running.count
                s.kvBytes = running.reduce(0) { $0 + $1.cache.bytes }
            }
            cond.lock(); _stats.waiting = waiting.count; cond.unlock()
        }
    }

    private func update(_ body: (inout ServingStats) -> Void) {
        cond.lock(); body(&_stats); cond.unlock()
    }

    /// Gives each admitted request its KV cache, in arrival order, until one does not fit (it and
    /// those after it are returned, to wait), then prefills them and takes their first tokens:
    /// alone on a resident model (as `Generator` does); with streamed weights, together in one
    /// pass over them (`forwardBlock`: each sequence runs its own kernels on each loaded stage,
    /// so its logits are its prefill's alone, and the weights are read once for all of them).
    private func prefill(_ admitted: [Pending]) -> [Pending] {
        var group: [Running] = [], requeue: [Pending] = []
        for p in admitted {
            if !requeue.isEmpty { requeue.append(p); continue }   // keep arrival order
            let r = p.request
            let capacity = min(r.prompt.count + r.maxTokens, model.maxPositions)
            guard !r.prompt.isEmpty, r.prompt.count < capacity || r.maxTokens == 0 else {
                fail(p, r.prompt.isEmpty ? "the prompt has no tokens"
                        : "the prompt (\(r.prompt.count) tokens) fills the context (\(model.maxPositions))")
                continue
            }
            do {
                group.append(Running(p, cache: try model.newCache(capacity: capacity, name: "kv.r\(p.id)")))
            } catch {
                if running.isEmpty && group.isEmpty {   // nothing will free memory: it can never fit
                    fail(p, "its KV cache (\(r.prompt.count) + \(r.maxTokens) tokens) does not fit the memory budget: \(error)")
                } else {
                    requeue.append(p)
                }
            }
        }
        guard !group.isEmpty else { return requeue }
        let t0 = now()
        var logits = [[Float]?](repeating: nil, count: group.count)
        // Stored blocks first; each sequence prefills the rest of its prompt (the same logits either way).
        var restored = [Int](repeating: 0, count: group.count)
        if let promptCache {
            for (i, seq) in group.enumerated() {
                // A failed load is a miss: the cache's length stays 0 and the prefill writes every row.
                do { restored[i] = try promptCache.restore(prompt: seq.request.prompt, into: seq.cache) } catch {
                    FileHandle.standardError.write(Data("[prompt-cache] not loaded: \(error)\n".utf8))
                }
            }
        }
        let rest = { (i: Int) in Array(group[i].request.prompt[restored[i]...]) }
        if model.supplier != nil && group.count > 1 {
            // Prompts of one token run in the decode layout, longer ones in the prefill layout: two passes.
            for part in [group.indices.filter { group[$0].request.prompt.count > 1 },
                         group.indices.filter { group[$0].request.prompt.count == 1 }] where !part.isEmpty {
                do {
                    let l = try model.forwardBlock(part.map { (rest($0), group[$0].cache) })
                    for (i, x) in zip(part, l) { logits[i] = x }
                } catch {
                    for i in part { failRunning(group[i], "\(error)") }
                }
            }
        } else {
            for (i, seq) in group.enumerated() {
                do { logits[i] = try model.forward(rest(i), cache: seq.cache) } catch {
                    failRunning(seq, "\(error)")
                }
            }
        }
        let t1 = now()
        if let promptCache {
            for (i, seq) in group.enumerated() where logits[i] != nil {
                if let problem = promptCache.save(prompt: seq.request.prompt, from: seq.cache, restored: restored[i]) {
                    FileHandle.standardError.write(Data((problem + "\n").utf8))
                }
            }
        }
        update { s in
            for (i, (seq, l)) in zip(group, logits).enumerated() where l != nil {
                s.cachedPromptTokens += restored[i]
                s.promptTokens += seq.request.prompt.count
                s.recordFirstToken(t1 - seq.arrival)
            }
            s.prefillSeconds += t1 - t0
        }
        for (seq, l) in zip(group, logits) {
            guard let l else { continue }
            if seq.request.maxTokens == 0 { finish(seq, .length); continue }
            running.append(seq)
            if !take(seq, l) { running.removeLast() }
        }
        return requeue
    }

    /// Samples `seq`'s next token; false when the sequence has ended (its event is sent).
    private func take(_ seq: Running, _ logits: [Float]) -> Bool {
        let t = seq.sampler.sample(logits)
        if seq.request.stop.contains(t) { finish(seq, .stop); return false }
        seq.generated += 1
        seq.next = t
        update { $0.generatedTokens += 1 }
        seq.onEvent(.token(t))
        if seq.generated >= seq.request.maxTokens || seq.cache.length >= seq.cache.capacity {
            finish(seq, .length); return false
        }
        return true
    }

    private func decodeStep() {
        guard !running.isEmpty else { return }
        let t0 = now()
        let batch = running
        do {
            let logits = try model.forwardDecode(batch.map { ($0.next, $0.cache) })
            var keep: [Running] = []
            for (seq, l) in zip(batch, logits) where take(seq, l) { keep.append(seq) }
            running = keep
        } catch {
            for seq in batch { seq.onEvent(.failed("\(error)")) }
            update { $0.failed += batch.count }
            cond.lock(); occupied -= batch.count; cond.unlock()
            running = []
        }
        let dt = now() - t0
        update { $0.decodeSteps += 1; $0.decodeSeconds += dt }
    }

    private func finish(_ seq: Running, _ why: FinishReason) {
        seq.onEvent(.finished(why, promptTokens: seq.request.prompt.count, completionTokens: seq.generated))
        cond.lock()
        occupied -= 1
        if why == .cancelled { _stats.cancelled += 1 } else { _stats.finished += 1 }
        cond.unlock()
    }

    /// An admitted request whose prefill failed.
    private func failRunning(_ seq: Running, _ message: String) {
        seq.onEvent(.failed(message))
        cond.lock(); occupied -= 1; _stats.failed += 1; cond.unlock()
    }

    /// An admitted request that could not run.
    private func fail(_ p: Pending, _ message: String) {
        p.onEvent(.failed(message))
        cond.lock(); occupied -= 1; _stats.failed += 1; cond.unlock()
    }
}
