// The generation loop: prefill the prompt in one forward call, then decode one
// token at a time, reporting each token as it is produced and the timings.

import Foundation
import Models

public struct GenerationResult: Sendable {
    public var promptTokens: Int
    /// Of those, the tokens whose KV cache came from the prompt cache instead of the prefill.
    public var cachedPromptTokens = 0
    public var tokens: [Int]
    public var prefillSeconds: Double
    public var decodeSeconds: Double
    public var stoppedAtEOS: Bool
    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
    /// Decode rate over the tokens after the first (the first comes from the prefill's logits).
    public var decodeTokensPerSecond: Double {
        tokens.count > 1 && decodeSeconds > 0 ? Double(tokens.count - 1) / decodeSeconds : 0
    }
}

public func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

public struct Generator {
    public let model: LlamaModel
    public init(model: LlamaModel) { self.model = model }

    /// Generates up to `maxTokens` tokens after `prompt`. Stops early at any id in
    /// `stop` (which is included in the result). `onToken` sees each id as it comes.
    /// `promptCache`: the prompt's stored blocks are loaded instead of prefilled, and its new
    /// whole blocks stored (the same tokens and logits either way).
    public func generate(prompt: [Int], maxTokens: Int, sampler: inout Sampler, stop: Set<Int> = [],
                         promptCache: PromptCache? = nil,
                         onToken: (Int) -> Void = { _ in }) throws -> GenerationResult {
        guard !prompt.isEmpty else { throw OffloadError("[generate] the prompt has no tokens") }
        let capacity = min(prompt.count + maxTokens, model.maxPositions)
        guard prompt.count < capacity || maxTokens == 0 else {
            throw OffloadError("[generate] the prompt (\(prompt.count) tokens) fills the context (\(model.maxPositions))")
        }
        let cache = try model.newCache(capacity: capacity)
        var result = GenerationResult(promptTokens: prompt.count, tokens: [], prefillSeconds: 0,
                                      decodeSeconds: 0, stoppedAtEOS: false)
        let t0 = now()
        let restored = try promptCache?.restore(prompt: prompt, into: cache) ?? 0
        var logits = try model.forward(Array(prompt[restored...]), cache: cache)
        result.prefillSeconds = now() - t0
        result.cachedPromptTokens = restored
        let t1 = now()
        while result.tokens.count < maxTokens {
            let next = sampler.sample(logits)
            result.tokens.append(next)
            onToken(next)
            if stop.contains(next) { result.stoppedAtEOS = true; break }
            if result.tokens.count == maxTokens || cache.length >= cache.capacity { break }
            logits = try model.forward([next], cache: cache)
        }
        result.decodeSeconds = now() - t1
        // The prompt's new blocks, after the answer (decode writes only positions past the prompt).
        if let promptCache, let problem = promptCache.save(prompt: prompt, from: cache, restored: restored) {
            FileHandle.standardError.write(Data((problem + "\n").utf8))
        }
        return result
    }
}

import Tensors
