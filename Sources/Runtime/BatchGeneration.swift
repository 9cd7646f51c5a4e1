// Generation for many prompts under a budget with FlexGen's block schedule:
// prompts run in blocks of B sequences; in every forward of a block each stage,
// once read, serves all B sequences before the next stage is read, so the disk
// traffic per token falls by B. Micro-batches are single sequences: each runs the
// kernels it would run alone, so every output is token-identical to its
// single-prompt run (batched matrix products would change the bits).
import Foundation
import Formats
import Memory
import Models
import Planning
import Tensors

public struct BatchOutput: Sendable {
    public var index: Int
    public var promptTokens: Int
    public var tokens: [Int]
    public var stoppedAtEOS: Bool
    public init(index: Int, promptTokens: Int, tokens: [Int], stoppedAtEOS: Bool) {
        self.index = index; self.promptTokens = promptTokens; self.tokens = tokens; self.stoppedAtEOS = stoppedAtEOS
    }
}

public struct BatchResult: Sendable {
    public var outputs: [BatchOutput]
    public var blockSize: Int
    public var prefillSeconds = 0.0
    public var decodeSeconds = 0.0
    public var promptTokens = 0
    /// Tokens made by decode forwards (each sequence's first token comes from its prefill).
    public var decodeTokens = 0
    public var generatedTokens: Int { outputs.reduce(0) { $0 + $1.tokens.count } }
    public var timeToFirstToken = 0.0
    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
    public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(decodeTokens) / decodeSeconds : 0 }
    public init(outputs: [BatchOutput], blockSize: Int) { self.outputs = outputs; self.blockSize = blockSize }
}

/// The block size Planning's cost model picks (`BlockSchedulePlan`), for prompts of these lengths.
public struct BlockSchedule: Sendable {
    public var blockSize: Int { planned.blockSize }
    public var plan: StreamingPlan { planned.plan }
    /// Decode seconds per token (over all prompts) the cost model predicts for `blockSize`.
    public var predictedSecondsPerToken: Double { planned.predictedSecondsPerToken }
    public let planned: BlockSchedulePlan

    public init(weights: GGUFWeights, budget: Int, prompts: [[Int]], maxTokens: Int, blockSize forced: Int? = nil,
                hardware: HardwareProfile = .defaultCPU) throws {
        do {
            planned = try BlockSchedulePlan(stages: try weightStages(of: weights.file, config: weights.config),
                                            config: weights.config, budget: budget, promptLengths: prompts.map(\.count),
                                            maxTokens: maxTokens, blockSize: forced, hardware: hardware)
        } catch { throw OffloadError("[generate] \(error)") }
    }
}

/// Runs `prompts` in blocks of `schedule.blockSize` with the block schedule.
/// Sequence i samples with `seed + i`; outputs are in input order. KV heads the plan puts on disk
/// (blocks of one sequence, at the smallest budgets) go to a file in `kvFolder`.
public func generateBlocks(weights: GGUFWeights, schedule: BlockSchedule, threads: Int, prompts: [[Int]],
                           maxTokens: Int, sampling: SamplingOptions, seed: UInt64, stop: Set<Int>,
                           kvFolder: String = NSTemporaryDirectory(),
                           trace: TraceRecorder? = nil) throws -> (BatchResult, WeightStreamer) {
    let (model, streamer) = try makeStreamingModel(weights: weights, plan: schedule.plan, threads: threads,
                                                   kvFolder: kvFolder, trace: trace)
    // A block of one sequence is the plain forward (the same arithmetic), which also serves KV heads on disk.
    func forward(_ seqs: [(tokens: [Int], cache: KVCache)]) throws -> [[Float]] {
        seqs.count == 1 ? [try model.forward(seqs[0].tokens, cache: seqs[0].cache)] : try model.forwardBlock(seqs)
    }
    var result = BatchResult(outputs: [], blockSize: schedule.blockSize)
    let t0 = now()
    for blockStart in stride(from: 0, to: prompts.count, by: schedule.blockSize) {
        let idx = Array(blockStart..<min(prompts.count, blockStart + schedule.blockSize))
        for i in idx where prompts[i].isEmpty { throw OffloadError("[generate] prompt \(i) has no tokens") }
        let caches = try idx.enumerated().map { slot, i in
            try model.newCache(capacity: min(prompts[i].count + maxTokens, model.maxPositions), name: "kv.s\(slot)")
        }
        var samplers = idx.map { Sampler(options: sampling, seed: seed &+ UInt64($0)) }
        var outs = idx.map { BatchOutput(index: $0, promptTokens: prompts[$0].count, tokens: [], stoppedAtEOS: false) }
        var logits = [[Float]](repeating: [], count: idx.count)
        let tp = now()
        // Prompts of one token run in the decode layout, longer ones in the prefill layout: two blocks.
        for group in [idx.indices.filter { prompts[idx[$0]].count > 1 }, idx.indices.filter { prompts[idx[$0]].count == 1 }]
            where !group.isEmpty {
            let l = try forward(group.map { (prompts[idx[$0]], caches[$0]) })
            for (k, j) in group.enumerated() { logits[j] = l[k] }
        }
        result.prefillSeconds += now() - tp
        result.promptTokens += idx.reduce(0) { $0 + prompts[$1].count }
        let td = now()
        var active: [Int] = []
        func take(_ j: Int) {
            let next = samplers[j].sample(logits[j])
            outs[j].tokens.append(next)
            if stop.contains(next) { outs[j].stoppedAtEOS = true; return }
            if outs[j].tokens.count < maxTokens && caches[j].length < caches[j].capacity { active.append(j) }
        }
        if maxTokens > 0 { for j in idx.indices { take(j) } }
        if blockStart == 0 { result.timeToFirstToken = now() - t0 }
        while !active.isEmpty {
            let step = active
            active = []
            let l = try forward(step.map { ([outs[$0].tokens.last!], caches[$0]) })
            result.decodeTokens += step.count
            for (k, j) in step.enumerated() { logits[j] = l[k]; take(j) }
        }
        result.decodeSeconds += now() - td
        result.outputs += outs
    }
    streamer.stop()
    return (result, streamer)
}
