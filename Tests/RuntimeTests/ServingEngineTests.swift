// Continuous batching: requests that arrive together or apart, decoded in shared
// steps, each token-identical to its prompt run alone by `Generator` — on the
// resident model and with streamed weights under a budget.
import Foundation
import Formats
import Models
import Runtime
import Tensors
import XCTest

final class ServingEngineTests: XCTestCase {
    let prompts: [[Int]] = [[1, 504, 905, 436, 253], [42], [1, 7270, 30, 198, 198, 504, 5575, 436, 253], [9, 8],
                            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [504, 905], [77, 78, 79], [1000]]

    func weights() throws -> GGUFWeights {
        let path = AssetCache.directory + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("missing asset \(path): run scripts/fetch-assets.sh")
            throw CocoaError(.fileNoSuchFile)
        }
        return try GGUFWeights(path: path)
    }

    /// Tokens and finish reasons of `requests` submitted at once, in input order.
    func serve(_ engine: ServingEngine, _ requests: [ServeRequest]) throws -> [(tokens: [Int], reason: FinishReason?)] {
        final class Box: @unchecked Sendable {
            let lock = NSLock(); var tokens: [[Int]]; var reasons: [FinishReason?]; var failures: [String] = []
            init(_ n: Int) { tokens = Array(repeating: [], count: n); reasons = Array(repeating: nil, count: n) }
        }
        let box = Box(requests.count), done = DispatchGroup()
        for (i, r) in requests.enumerated() {
            done.enter()
            try engine.submit(r) { e in
                box.lock.lock(); defer { box.lock.unlock() }
                switch e {
                case .token(let t): box.tokens[i].append(t)
                case .finished(let why, _, _): box.reasons[i] = why; done.leave()
                case .failed(let m): box.failures.append(m); done.leave()
                }
            }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 300), .success, "requests did not finish")
        XCTAssertEqual(box.failures, [])
        return zip(box.tokens, box.reasons).map { ($0, $1) }
    }

    func alone(_ model: LlamaModel, _ maxTokens: Int, sampling: SamplingOptions, stop: Set<Int> = []) throws -> [[Int]] {
        try prompts.enumerated().map { i, p in
            var s = Sampler(options: sampling, seed: UInt64(100 + i))
            return try Generator(model: model).generate(prompt: p, maxTokens: maxTokens, sampler: &s, stop: stop).tokens
        }
    }

    func requests(_ maxTokens: Int, sampling: SamplingOptions, stop: Set<Int> = []) -> [ServeRequest] {
        prompts.enumerated().map { i, p in
            ServeRequest(prompt: p, maxTokens: maxTokens, sampling: sampling, seed: UInt64(100 + i), stop: stop)
        }
    }

    func testConcurrentRequestsAreTokenIdenticalToRunsAlone() throws {
        let w = try weights()
        let model = try LlamaModel(source: w, threads: 2)
        for sampling in [SamplingOptions(temperature: 0), SamplingOptions(temperature: 0.9, topK: 40, topP: 0.95)] {
            let want = try alone(model, 12, sampling: sampling)
            // Fewer slots than requests: later ones wait, then join running sequences mid-decode.
            let engine = ServingEngine(model: model, maxConcurrent: 5, maxQueue: 16)
            engine.start()
            defer { engine.shutdown() }
            let got = try serve(engine, requests(12, sampling: sampling))
            XCTAssertEqual(got.map(\.tokens), want, "temperature \(sampling.temperature)")
            XCTAssertEqual(got.map(\.reason), Array(repeating: .length, count: prompts.count))
            let st = engine.stats
            XCTAssertEqual(st.generatedTokens, prompts.count * 12)
            XCTAssertEqual(st.promptTokens, prompts.reduce(0) { $0 + $1.count })
            // Shared steps: far fewer than one per generated token.
            XCTAssertLessThan(st.decodeSteps, prompts.count * 11 / 2, "decode steps \(st.decodeSteps)")
        }
    }

    func testStopTokensAndCancellationEndSequencesAndFreeTheirSlots() throws {
        let w = try weights()
        let model = try LlamaModel(source: w, threads: 2)
        let greedy = SamplingOptions(temperature: 0)
        let free = try alone(model, 6, sampling: greedy)
        // Stop at the third token each prompt makes alone: the sequence ends there, without it.
        let engine = ServingEngine(model: model, maxConcurrent: 2, maxQueue: 16)
        engine.start()
        defer { engine.shutdown() }
        let stopped = try prompts.indices.map { i in
            try serve(engine, [ServeRequest(prompt: prompts[i], maxTokens: 6, sampling: greedy, seed: 0, stop: [free[i][2]])])[0]
        }
        for (i, s) in stopped.enumerated() {
            let cut = free[i].firstIndex(of: free[i][2])!
            XCTAssertEqual(s.tokens, Array(free[i][..<cut]))
            XCTAssertEqual(s.reason, .stop)
        }
        // A request cancelled while queued behind full slots never runs; the rest still do.
        let queue = ServingEngine(model: model, maxConcurrent: 1, maxQueue: 2)
        let reject = ServeRequest(prompt: [1], maxTokens: 1, sampling: greedy, seed: 0, stop: [])
        _ = try queue.submit(reject) { _ in }
        _ = try queue.submit(reject) { _ in }
        _ = try queue.submit(reject) { _ in }
        XCTAssertThrowsError(try queue.submit(reject) { _ in }) { e in
            XCTAssertTrue("\(e)".contains("busy"), "\(e)")
        }
        XCTAssertEqual(queue.stats.rejected, 1)
    }

    func testStreamedWeightsUnderABudgetServeTheSameTokens() throws {
        let w = try weights()
        let greedy = SamplingOptions(temperature: 0)
        let want = try alone(try LlamaModel(source: w, threads: 2), 8, sampling: greedy)
        let (model, streamer) = try makeStreamingModel(weights: w, budget: 32_000_000, threads: 2, promptTokens: 16,
                                                       contextCapacity: 64, sequences: 8)
        defer { streamer.stop() }
        let engine = ServingEngine(model: model, maxConcurrent: 8, maxQueue: 8)
        engine.start()
        defer { engine.shutdown() }
        let got = try serve(engine, requests(8, sampling: greedy))
        XCTAssertEqual(got.map(\.tokens), want)
        XCTAssertLessThanOrEqual(streamer.peakComputeBytes, 32_000_000)
        // Each step read the streamed weights once for all running sequences.
        let st = engine.stats
        XCTAssertLessThan(Double(streamer.stats.decodeBytesRead) / Double(st.generatedTokens - prompts.count),
                          Double(streamer.stats.decodeBytesRead) / Double(st.decodeSteps) / 2.5)
        // The six prompts of several tokens, admitted together, were prefilled in one pass over the
        // weights (alone they would take six).
        let allStages = streamer.plan.stages.reduce(0) { $0 + $1.bufferBytes }
        XCTAssertLessThan(streamer.stats.bytesRead - streamer.stats.decodeBytesRead, 2 * allStages)
    }

    /// Prompts that share 600 tokens, served twice with a prompt cache (resident, then streamed in
    /// blocks under a budget): the second time their first two blocks are loaded, and every answer
    /// is the one `Generator` gives alone without a cache.
    func testPromptCacheServesTheSameTokensWarm() throws {
        let w = try weights()
        var g = SeededGenerator(seed: 21)
        let shared = (0..<600).map { _ in Int.random(in: 0..<w.config.vocabSize, using: &g) }
        let prompts = [shared + [17, 18, 19], shared + [504, 905], shared + Array(1...40)]
        let greedy = SamplingOptions(temperature: 0)
        let requests = prompts.map { ServeRequest(prompt: $0, maxTokens: 4, sampling: greedy, seed: 1, stop: []) }
        let resident = try LlamaModel(source: w, threads: 2)
        let want = try prompts.map { p -> [Int] in
            var s = Sampler(options: greedy, seed: 1)
            return try Generator(model: resident).generate(prompt: p, maxTokens: 4, sampler: &s).tokens
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pc-serve-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let cold = ServingEngine(model: resident, maxConcurrent: 3, maxQueue: 8,
                                 promptCache: try PromptCache(folder: dir.path, limitBytes: 1 << 30, model: w))
        cold.start()
        XCTAssertEqual(try serve(cold, requests).map(\.tokens), want)
        cold.shutdown()
        let (model, streamer) = try makeStreamingModel(weights: w, budget: 160_000_000, threads: 2, promptTokens: 640,
                                                       contextCapacity: 650, sequences: 3)
        defer { streamer.stop() }
        let warm = ServingEngine(model: model, maxConcurrent: 3, maxQueue: 8,
                                 promptCache: try PromptCache(folder: dir.path, limitBytes: 1 << 30, model: w))
        warm.start()
        defer { warm.shutdown() }
        XCTAssertEqual(try serve(warm, requests).map(\.tokens), want)
        XCTAssertEqual(warm.stats.cachedPromptTokens, 3 * 512)
    }
}
