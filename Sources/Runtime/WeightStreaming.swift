// Weight streaming under a compute budget: setting up the streamed model for
// Planning's StreamingPlan (which stages stay resident, the ring of stage buffers,
// KV heads on disk), and the figures a streamed run reports. The model runs the
// same kernels as without a budget.
internal import CKernels
internal import CPlatform
import Foundation
import Formats
import Kernels
import Memory
import Models
import Planning
import Tensors

@inline(__always) func alignDown(_ x: Int) -> Int { AlignedBuffer.alignDown(x) }
@inline(__always) func alignUp(_ x: Int) -> Int { AlignedBuffer.alignUp(x) }

// MARK: - Setup and report

/// A model that streams its weights from `weights`' file under `budget` bytes
/// of compute memory, planned for a prompt of `promptTokens` and a context of
/// `contextCapacity` positions.
///
/// KV heads the plan puts on disk go to a file in `kvFolder`. `prefillChunk`: prompt rows
/// per prefill pass (nil: the plan's choice by `hardware`'s cost model).
public func makeStreamingModel(weights: GGUFWeights, budget: Int, threads: Int, promptTokens: Int,
                               contextCapacity: Int, sequences: Int = 1, kvFolder: String = NSTemporaryDirectory(),
                               prefillChunk: Int? = nil, hardware: HardwareProfile = .defaultCPU,
                               trace: TraceRecorder? = nil) throws -> (LlamaModel, WeightStreamer) {
    let c = weights.config
    let plan: StreamingPlan
    do {
        plan = try StreamingPlan(budget: budget, stages: try weightStages(of: weights.file, config: c), config: c,
                                 promptTokens: promptTokens, contextCapacity: contextCapacity, sequences: sequences,
                                 prefillChunk: prefillChunk, hardware: hardware)
    } catch { throw OffloadError("[stream] \(error)") }
    return try makeStreamingModel(weights: weights, plan: plan, threads: threads, kvFolder: kvFolder, trace: trace)
}

/// A model that streams its weights as `plan` places them.
public func makeStreamingModel(weights: GGUFWeights, plan: StreamingPlan, threads: Int,
                               kvFolder: String = NSTemporaryDirectory(),
                               trace: TraceRecorder? = nil) throws -> (LlamaModel, WeightStreamer) {
    let c = weights.config
    let streamer = try WeightStreamer(plan: plan, file: weights.file, config: c, trace: trace)
    let model = try LlamaModel(source: weights, threads: threads, supplier: streamer, memory: streamer)
    model.prefillChunk = plan.prefillChunk
    streamer.computePool = model.pool
    if plan.kvDiskHeads > 0 {
        let store = try DiskKVStore(folder: kvFolder, config: c, capacity: plan.contextCapacity,
                                    residentHeads: plan.kvResidentHeads, spanPositions: plan.kvSpanPositions,
                                    slots: plan.kvSlots, readers: plan.kvReaders, memory: streamer, trace: trace)
        model.kvResidentHeads = plan.kvResidentHeads
        model.kvStore = store
        streamer.kvStore = store
    }
    return (model, streamer)
}

/// The figures a streamed generation reports, and the physical limit it is held to.
public struct StreamingReport: Sendable {
    public var budget: Int
    public var residentStages: Int
    public var streamedStages: Int
    public var ringSlots: Int
    public var peakComputeBytes: Int
    /// Bytes read from the model file per decoded token.
    public var bytesPerToken: Double
    /// Direct-read bandwidth measured at start, bytes per second.
    public var readBandwidth: Double
    /// Decode seconds per token not spent waiting for reads.
    public var computeSecondsPerToken: Double
    public var decodeTokensPerSecond: Double
    /// 1 / max(compute time, bytes ÷ bandwidth) per token.
    public var limitTokensPerSecond: Double
    public var ratioToLimit: Double { limitTokensPerSecond > 0 ? decodeTokensPerSecond / limitTokensPerSecond : 0 }
    public var bytesDiscarded: Int
    public var kvDiskHeads: Int
    /// Positions per KV span read (a head's keys and values in one request) and reads in flight.
    public var kvSpanPositions: Int
    public var kvReaders: Int
    /// KV-cache bytes read from and written to disk per decoded token.
    public var kvBytesReadPerToken: Double
    public var kvBytesWrittenPerToken: Double

    public init(streamer: WeightStreamer, result: GenerationResult) {
        let s = streamer.stats
        budget = streamer.plan.budget
        residentStages = streamer.plan.resident.count
        streamedStages = streamer.plan.stages.count - residentStages
        ringSlots = streamer.plan.ringSlots
        peakComputeBytes = streamer.tier.stats.peak
        let steps = max(s.decodeForwards, 1)
        kvDiskHeads = streamer.plan.kvDiskHeads
        kvSpanPositions = kvDiskHeads > 0 ? streamer.plan.kvSpanPositions : 0
        kvReaders = kvDiskHeads > 0 ? streamer.plan.kvReaders : 0
        kvBytesReadPerToken = Double(s.decodeKVBytesRead) / Double(steps)
        kvBytesWrittenPerToken = Double(s.decodeKVBytesWritten) / Double(steps)
        // Weights and KV cache both come through the disk each step.
        bytesPerToken = Double(s.decodeBytesRead) / Double(steps) + kvBytesReadPerToken + kvBytesWrittenPerToken
        readBandwidth = streamer.readBandwidth
        computeSecondsPerToken = s.decodeForwards > 0
            ? max(0, result.decodeSeconds - s.decodeWaitSeconds - s.decodeKVSeconds) / Double(steps) : 0
        decodeTokensPerSecond = result.decodeTokensPerSecond
        let limitSeconds = max(computeSecondsPerToken, readBandwidth > 0 ? bytesPerToken / readBandwidth : 0)
        limitTokensPerSecond = limitSeconds > 0 ? 1 / limitSeconds : 0
        bytesDiscarded = s.bytesDiscarded
    }

    public var json: [String: Any] {
        ["budget_bytes": budget, "resident_stages": residentStages, "streamed_stages": streamedStages,
         "stream_buffers": ringSlots, "peak_compute_bytes": peakComputeBytes, "bytes_read_per_token": bytesPerToken,
         "disk_read_bytes_per_second": readBandwidth, "compute_seconds_per_token": computeSecondsPerToken,
         "limit_decode_tokens_per_second": limitTokensPerSecond, "ratio_to_limit": ratioToLimit,
         "bytes_read_ahead_discarded": bytesDiscarded, "kv_disk_heads": kvDiskHeads,
         "kv_span_positions": kvSpanPositions, "kv_readers": kvReaders,
         "kv_bytes_read_per_token": kvBytesReadPerToken, "kv_bytes_written_per_token": kvBytesWrittenPerToken]
    }

    public var summary: String {
        String(format: "[stream] budget %@: %d stages resident, %d streamed through %d buffers, %d KV heads on disk; peak compute %@; "
               + "%@ read per token at %@/s (direct); limit %.1f tok/s (compute %.1f ms, disk %.1f ms per token); "
               + "decode at %.2f× the limit",
               formatBytes(budget), residentStages, streamedStages, ringSlots, kvDiskHeads, formatBytes(peakComputeBytes),
               formatBytes(Int(bytesPerToken)), formatBytes(Int(readBandwidth)), limitTokensPerSecond,
               computeSecondsPerToken * 1e3, readBandwidth > 0 ? bytesPerToken / readBandwidth * 1e3 : 0, ratioToLimit)
    }
}

/// Peak resident set of this process (VmHWM), in bytes; 0 where /proc is not there.
public func processPeakResidentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kb = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
        return kb * 1024
    }
    return 0
}
