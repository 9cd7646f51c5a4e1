// Weight streaming under a compute budget: which stages (blocks, chunks of the
// head) stay resident, and an executor that reads the others from the GGUF file
// itself with direct I/O into a ring of stage buffers, one or more stages ahead
// of the compute. Not a general planner: one forward order (blocks, then head),
// stages read whole. The model runs the same kernels as without a budget.
internal import CKernels
internal import CSystem
import Foundation
import Formats
import Kernels
import Memory
import Models
import Tensors

// MARK: - Direct reads of an existing file

/// Reads 4 KiB-aligned ranges of a file with O_DIRECT, so every byte comes from
/// the device and none from the page cache. Thread-safe (pread).
public final class DirectFileReader: @unchecked Sendable {
    public let path: String
    public let size: Int
    let fd: Int32

    public init(path: String) throws {
        self.path = path
        let r = cs_open(path, O_RDONLY, 0, 1)
        guard r >= 0 else {
            throw OffloadError("[stream] cannot open \(path) for direct reads: \(String(cString: strerror(-r)))"
                               + (r == -EINVAL ? " (the file system refuses O_DIRECT)" : ""))
        }
        fd = r
        var st = stat()
        guard fstat(fd, &st) == 0 else { close(fd); throw OffloadError("[stream] cannot stat \(path)") }
        size = Int(st.st_size)
    }

    deinit { close(fd) }

    /// Reads `length` bytes at `offset` (both multiples of 4096) into `buffer`
    /// (aligned to 4096). Bytes past the end of the file are left as they were;
    /// fewer than `needed` bytes is an error.
    public func read(into buffer: UnsafeMutableRawPointer, offset: Int, length: Int, needed: Int, what: String) throws {
        let a = AlignedBuffer.alignment
        precondition(offset % a == 0 && length % a == 0 && Int(bitPattern: buffer) % a == 0)
        let r = cs_pread_full(fd, buffer, Int64(length), Int64(offset))
        if r < 0 {
            throw OffloadError("[stream] read \(what) from \(path) at offset \(offset): \(String(cString: strerror(Int32(-r))))")
        }
        if Int(r) < needed {
            throw OffloadError("[stream] read \(what) from \(path) at offset \(offset): got \(r) of \(needed) bytes (file truncated?)")
        }
    }
}

@inline(__always) func alignDown(_ x: Int) -> Int { x / AlignedBuffer.alignment * AlignedBuffer.alignment }
@inline(__always) func alignUp(_ x: Int) -> Int { alignDown(x + AlignedBuffer.alignment - 1) }

// MARK: - Stages

/// One matrix of a stage: where it is in the file and in the stage's buffer.
public struct StageMatrix: Sendable {
    public var name: String
    public var dtype: DType
    public var rows: Int
    public var cols: Int
    /// Head chunks: the first vocabulary row of the chunk.
    public var firstRow: Int
    public var fileOffset: Int
    public var byteCount: Int
    /// Offset of the matrix's first byte inside the stage buffer.
    public var bufferOffset: Int
}

/// A unit of streaming: a block's seven matrices, or a chunk of the head's rows.
public struct WeightStage: Sendable {
    public var index: Int
    public var name: String
    public var matrices: [StageMatrix]
    /// Aligned file ranges read into the buffer: (file offset, length, buffer offset).
    public var runs: [(fileOffset: Int, length: Int, bufferOffset: Int)]
    /// Bytes of the stage buffer (sum of the runs).
    public var bufferBytes: Int
    /// Bytes of the matrices themselves.
    public var weightBytes: Int { matrices.reduce(0) { $0 + $1.byteCount } }
    /// Whether decode reads this stage's Q4_1 matrices in the split layout (as the resident path does).
    public var splitsForDecode: Bool

    init(index: Int, name: String, matrices: [StageMatrix], splits: Bool) {
        self.index = index; self.name = name; splitsForDecode = splits
        var ms = matrices.sorted { $0.fileOffset < $1.fileOffset }
        var runs: [(Int, Int, Int)] = []
        var bufferEnd = 0
        // Neighbouring matrices (and the small norms between them) are read in one request.
        let gapLimit = 64 << 10
        for i in ms.indices {
            let a = alignDown(ms[i].fileOffset), e = alignUp(ms[i].fileOffset + ms[i].byteCount)
            if let last = runs.last, a <= last.0 + last.1 + gapLimit {
                let newEnd = max(last.0 + last.1, e)
                bufferEnd += newEnd - (last.0 + last.1)
                runs[runs.count - 1].1 = newEnd - last.0
            } else {
                runs.append((a, e - a, bufferEnd))
                bufferEnd += e - a
            }
            let run = runs[runs.count - 1]
            ms[i].bufferOffset = run.2 + ms[i].fileOffset - run.0
        }
        // Back to the caller's order (the block's q, k, v, o, gate, up, down).
        let order = Dictionary(uniqueKeysWithValues: matrices.enumerated().map { ($0.element.name, $0.offset) })
        self.matrices = ms.sorted { order[$0.name]! < order[$1.name]! }
        self.runs = runs.map { (fileOffset: $0.0, length: $0.1, bufferOffset: $0.2) }
        bufferBytes = bufferEnd
    }
}

/// The stages of a GGUF model in forward order: blocks, then head chunks of
/// about one block's bytes each.
public func weightStages(of file: GGUFFile, config c: LlamaConfig) throws -> [WeightStage] {
    func matrix(_ name: String, rows: Int? = nil, firstRow: Int = 0) throws -> StageMatrix {
        guard let info = file.info(name), let dtype = info.dtype, info.shape.count == 2,
              let offset = file.fileOffset(of: name) else {
            throw OffloadError("[stream] \(file.fileName): tensor \(name) is missing or not a supported matrix")
        }
        let cols = info.shape[1]
        guard let rowBytes = dtype.byteCount(elements: cols) else {
            throw OffloadError("[stream] \(file.fileName): \(name) rows are not whole \(dtype) blocks")
        }
        let n = rows ?? info.shape[0]
        return StageMatrix(name: name, dtype: dtype, rows: n, cols: cols, firstRow: firstRow,
                           fileOffset: offset + firstRow * rowBytes, byteCount: n * rowBytes, bufferOffset: 0)
    }
    let splitLevel = Matmul.bestSIMDLevel == 2
    var stages: [WeightStage] = []
    for l in 0..<c.layers {
        let ms = try BlockMatrices.names.map { try matrix("blk.\(l).\($0).weight") }
        stages.append(WeightStage(index: l, name: "blk.\(l)", matrices: ms,
                                  splits: splitLevel && ms.contains { $0.dtype == .q4_1 }))
    }
    let headName = c.tiedEmbeddings ? "token_embd.weight" : "output.weight"
    let head = try matrix(headName)
    let rowBytes = head.byteCount / head.rows
    let target = stages.map(\.weightBytes).max() ?? head.byteCount
    let chunkRows = max(1, min(head.rows, target / rowBytes))
    for (i, r0) in stride(from: 0, to: head.rows, by: chunkRows).enumerated() {
        let m = try matrix(headName, rows: min(chunkRows, head.rows - r0), firstRow: r0)
        stages.append(WeightStage(index: c.layers + i, name: "head.\(i)", matrices: [m], splits: false))
    }
    return stages
}

// MARK: - Plan

/// What a budget buys: which stages stay resident, how many stream buffers,
/// and every fixed need, in bytes as the compute tier counts them.
public struct StreamingPlan: Sendable {
    public var budget: Int
    public var stages: [WeightStage]
    public var resident: Set<Int>
    public var ringSlots: Int
    public var slotBytes: Int
    public var readerThreads: Int
    /// KV cache in the compute tier: the layers held there, plus the staging pair when some are on disk.
    public var kvCacheBytes: Int
    /// Layers whose KV cache lives on disk (the last ones), read and written each step.
    public var kvDiskLayers: Set<Int>
    public var scratchBytes: Int
    /// The buffer the compute thread rewrites a stage's Q4_1 matrices in for the decode kernel
    /// (the largest such matrix; 0 when no stage needs it).
    public var splitStagingBytes: Int
    /// Split staging and the embedding-row buffer.
    public var stagingBytes: Int
    public var residentBytes: Int
    /// The smallest budget that runs this prompt and context at all.
    public var minimumBudget: Int

    public var streamed: [Int] { stages.indices.filter { !resident.contains($0) } }
    public var plannedBytes: Int { kvCacheBytes + scratchBytes + stagingBytes + ringSlots * slotBytes + residentBytes }

    /// - Parameters:
    ///   - scratch: the model's scratch floats by buffer name for the prompt and for decode at full context.
    ///   - sequences: sequences run together (the block schedule): each has its own KV cache
    ///     (kept in memory) and `perSequenceScratch` bytes of hidden state.
    public init(budget: Int, stages: [WeightStage], config c: LlamaConfig, contextCapacity: Int,
                scratch: [[String: Int]], sequences: Int = 1, perSequenceScratch: Int = 0, maxSlots: Int = 3) throws {
        self.budget = budget; self.stages = stages
        let layerKV = 2 * accountedBytes(contextCapacity * c.kvDim * 4)
        let page = DiskKVStore.pagePositions(kvDim: c.kvDim)
        let kvStaging = 2 * accountedBytes((contextCapacity + page - 1) / page * page * c.kvDim * 4)
        var most: [String: Int] = [:]
        for s in scratch { for (k, v) in s { most[k] = max(most[k] ?? 0, v) } }
        scratchBytes = most.values.reduce(0) { $0 + accountedBytes(max($1, 1) * 4) } + sequences * perSequenceScratch
        slotBytes = stages.map(\.bufferBytes).max() ?? 0
        splitStagingBytes = stages.filter(\.splitsForDecode).flatMap(\.matrices).map(\.byteCount).max() ?? 0
        let headRow = stages.last?.matrices.first.map { $0.byteCount / $0.rows } ?? 0
        let embeddingStaging = accountedBytes(alignUp(headRow) + 2 * AlignedBuffer.alignment)
        // The compute thread rewrites a stage for the decode kernel as it takes it (the readers
        // only read): one split staging buffer, however many readers.
        let staging = accountedBytes(splitStagingBytes) + embeddingStaging
        // The least that runs: one stage buffer, activations, and the KV cache of one layer staged from disk
        // (a block of several sequences keeps every cache in memory).
        let bare = scratchBytes + staging + slotBytes
        minimumBudget = bare + (sequences > 1 ? sequences * c.layers * layerKV : min(kvStaging, c.layers * layerKV))
        guard budget >= minimumBudget else {
            throw OffloadError("[stream] budget \(formatBytes(budget)) (\(budget) bytes) is below the minimum "
                + "\(formatBytes(minimumBudget)) (\(minimumBudget) bytes) for this prompt and context: one stage buffer "
                + "\(formatBytes(slotBytes)) + KV cache \(sequences > 1 ? "of \(sequences) sequences \(formatBytes(minimumBudget - bare))" : "staging of one layer \(formatBytes(minimumBudget - bare))") "
                + "+ activations \(formatBytes(scratchBytes)) + read staging \(formatBytes(staging))")
        }
        // KV cache in memory for as many layers as fit (all, when they do); the rest on disk.
        if budget >= bare + sequences * c.layers * layerKV {
            kvDiskLayers = []
            kvCacheBytes = sequences * c.layers * layerKV
        } else {
            let inMemory = max(0, min(c.layers - 1, (budget - bare - kvStaging) / max(layerKV, 1)))
            kvDiskLayers = Set(inMemory..<c.layers)
            kvCacheBytes = inMemory * layerKV + kvStaging
        }
        let fixed = kvCacheBytes + scratchBytes
        var slots = budget >= fixed + staging + 2 * slotBytes ? 2 : 1
        stagingBytes = staging
        var left = budget - fixed - stagingBytes - slots * slotBytes
        // Keep as many stages resident as fit; each saves its bytes on every token.
        var resident = Set<Int>()
        var residentBytes = 0
        for s in stages where accountedBytes(s.bufferBytes) <= left {
            resident.insert(s.index)
            residentBytes += accountedBytes(s.bufferBytes)
            left -= accountedBytes(s.bufferBytes)
        }
        // Room left: one more buffer, so two reads can be in flight while a stage computes.
        while slots < maxSlots, left >= slotBytes, resident.count < stages.count { slots += 1; left -= slotBytes }
        // Readers: one fewer than the buffers, as one is always being computed. With two buffers,
        // two readers filled both at once, both finished together, and the disk idled while the
        // compute consumed them; one reader reads the next stage while one computes.
        readerThreads = max(1, slots - 1)
        self.resident = resident; self.residentBytes = residentBytes; ringSlots = slots
    }
}

// MARK: - Setup and report

/// A model that streams its weights from `weights`' file under `budget` bytes
/// of compute memory, planned for a prompt of `promptTokens` and a context of
/// `contextCapacity` positions.
///
/// KV-cache layers the plan puts on disk go to a file in `kvFolder`.
public func makeStreamingModel(weights: GGUFWeights, budget: Int, threads: Int, promptTokens: Int,
                               contextCapacity: Int, kvFolder: String = NSTemporaryDirectory(),
                               trace: TraceRecorder? = nil) throws -> (LlamaModel, WeightStreamer) {
    let c = weights.config
    let stages = try weightStages(of: weights.file, config: c)
    let scratch = [LlamaModel.scratchFloats(config: c, rows: max(promptTokens, 1), start: 0),
                   LlamaModel.scratchFloats(config: c, rows: 1, start: max(contextCapacity - 1, 0))]
    let plan = try StreamingPlan(budget: budget, stages: stages, config: c, contextCapacity: contextCapacity,
                                 scratch: scratch)
    let streamer = try WeightStreamer(plan: plan, file: weights.file, config: c, trace: trace)
    let model = try LlamaModel(source: weights, threads: threads, supplier: streamer, memory: streamer)
    if !plan.kvDiskLayers.isEmpty {
        let store = try DiskKVStore(folder: kvFolder, config: c, capacity: contextCapacity, trace: trace)
        model.kvDiskLayers = plan.kvDiskLayers
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
    public var kvDiskLayers: Int
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
        kvDiskLayers = streamer.plan.kvDiskLayers.count
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
         "bytes_read_ahead_discarded": bytesDiscarded, "kv_disk_layers": kvDiskLayers,
         "kv_bytes_read_per_token": kvBytesReadPerToken, "kv_bytes_written_per_token": kvBytesWrittenPerToken]
    }

    public var summary: String {
        String(format: "[stream] budget %@: %d stages resident, %d streamed through %d buffers, KV cache of %d layers on disk; peak compute %@; "
               + "%@ read per token at %@/s (direct); limit %.1f tok/s (compute %.1f ms, disk %.1f ms per token); "
               + "decode at %.2f× the limit",
               formatBytes(budget), residentStages, streamedStages, ringSlots, kvDiskLayers, formatBytes(peakComputeBytes),
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
