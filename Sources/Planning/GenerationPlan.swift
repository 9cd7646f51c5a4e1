// Generation under a compute budget, planned: the model's stages (blocks, chunks of
// the head) as the GGUF lays them out, which stay resident and which are streamed
// through a ring of stage buffers, how many readers, which KV-cache layers go to
// disk, and for many prompts the block size of FlexGen's block schedule. Decided
// here and only here: `offload plan --mode generate` and `offload generate --budget`
// read the same plan; Runtime's WeightStreamer executes it.
import Foundation
import Formats
import Kernels
import Memory
import Models
import Tensors

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
            let a = AlignedBuffer.alignDown(ms[i].fileOffset), e = AlignedBuffer.alignUp(ms[i].fileOffset + ms[i].byteCount)
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
/// `splitQ4_1`: the decode kernel reads Q4_1 in the split layout (AVX-512 machines).
public func weightStages(of file: GGUFFile, config c: LlamaConfig,
                         splitQ4_1: Bool = Matmul.bestSIMDLevel == 2) throws -> [WeightStage] {
    func matrix(_ name: String, rows: Int? = nil, firstRow: Int = 0) throws -> StageMatrix {
        guard let info = file.info(name), let dtype = info.dtype, info.shape.count == 2,
              let offset = file.fileOffset(of: name) else {
            throw OffloadError("\(file.fileName): tensor \(name) is missing or not a supported matrix")
        }
        let cols = info.shape[1]
        guard let rowBytes = dtype.byteCount(elements: cols) else {
            throw OffloadError("\(file.fileName): \(name) rows are not whole \(dtype) blocks")
        }
        let n = rows ?? info.shape[0]
        return StageMatrix(name: name, dtype: dtype, rows: n, cols: cols, firstRow: firstRow,
                           fileOffset: offset + firstRow * rowBytes, byteCount: n * rowBytes, bufferOffset: 0)
    }
    let splitLevel = splitQ4_1
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

private func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }

/// What a budget buys: which stages stay resident, how many stream buffers,
/// and every fixed need, in bytes as the compute tier counts them.
public struct StreamingPlan: Sendable {
    public var budget: Int
    public var stages: [WeightStage]
    /// Sequences run together (the block schedule): each has its own KV cache, kept in memory.
    public var sequences: Int
    public var promptTokens: Int
    public var contextCapacity: Int
    /// Prompt rows per prefill pass (`LlamaModel.prefillChunk`; a multiple of `Matmul.rowBlock`),
    /// nil: the prompt in one pass. Activations are sized for the largest pass.
    public var prefillChunk: Int?
    public var resident: Set<Int>
    public var ringSlots: Int
    public var slotBytes: Int
    public var readerThreads: Int
    /// KV cache in the compute tier: the heads held there, plus the disk heads' read spans, tails
    /// and write pages when some are on disk.
    public var kvCacheBytes: Int
    /// KV heads each layer keeps in memory (its first ones); the others live on disk, read through
    /// attention a span at a time each step (HeadInfer).
    public var kvResidentHeads: [Int]
    /// Disk heads: positions per span read, span buffers in the ring, reader threads.
    public var kvSpanPositions: Int
    public var kvSlots: Int
    public var kvReaders: Int
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

    /// KV heads on disk, over all layers.
    public var kvDiskHeads: Int { kvResidentHeads.reduce(0) { $0 + kvHeads - $1 } }
    private var kvHeads: Int

    /// Positions per KV page of one head on disk: the fewest whose bytes are whole 4 KiB blocks.
    public static func kvPagePositions(headDim: Int) -> Int {
        AlignedBuffer.alignment / gcd(AlignedBuffer.alignment, headDim * 4)
    }

    /// Positions per read span of a disk head: whole pages and whole key blocks of attention, at least
    /// `atLeast`; or the whole context in one span when it is shorter.
    public static func kvSpanPositions(headDim: Int, atLeast: Int, capacity: Int) -> Int {
        let page = kvPagePositions(headDim: headDim), unit = page / gcd(page, attentionKeyBlock) * attentionKeyBlock
        return min((max(atLeast, 1) + unit - 1) / unit * unit, (max(capacity, 1) + page - 1) / page * page)
    }

    /// Pages a disk-head store assembles a write in (or reads for a copy).
    public static let kvBufferPages = 16

    /// Memory a store of `diskHeads` disk heads takes: `slots` read spans of `spanPositions`, each
    /// head's last partial page, and the write pages (keys and values of each).
    public static func kvStoreBytes(config c: LlamaConfig, diskHeads: Int, spanPositions: Int, slots: Int) -> Int {
        let page = kvPagePositions(headDim: c.headDim) * c.headDim * 4
        return 2 * (slots * accountedBytes(spanPositions * c.headDim * 4) + diskHeads * accountedBytes(page)
                    + accountedBytes(kvBufferPages * page))
    }

    /// Memory of a cache keeping `heads` KV heads of each layer in memory, `capacity` positions.
    public static func kvResidentBytes(config c: LlamaConfig, heads: [Int], capacity: Int) -> Int {
        heads.reduce(0) { $0 + ($1 > 0 ? 2 * accountedBytes(capacity * $1 * c.headDim * 4) : 0) }
    }

    /// - Parameters:
    ///   - promptTokens: the longest prompt (its prefill's activations), `contextCapacity` the positions.
    ///   - sequences: sequences run together (the block schedule): each has its own KV cache
    ///     (kept in memory) and its hidden state.
    ///   - prefillChunk: prompt rows per prefill pass (a multiple of `Matmul.rowBlock`); nil: for one
    ///     sequence, the one of one pass or `chunkChoices` that `hardware`'s cost model predicts
    ///     fastest for prefill and the decode of the rest of the context (ties: fewer passes).
    ///     A block of several sequences prefills in one pass.
    /// - Throws: when `budget` is below the smallest that runs, naming it and what it is made of.
    public init(budget: Int, stages: [WeightStage], config c: LlamaConfig, promptTokens: Int, contextCapacity: Int,
                sequences: Int = 1, maxSlots: Int = 3, prefillChunk: Int? = nil,
                hardware: HardwareProfile = .defaultCPU) throws {
        if let chunk = prefillChunk, chunk <= 0 || chunk % Matmul.rowBlock != 0 {
            throw OffloadError("a prefill chunk is a positive multiple of \(Matmul.rowBlock) tokens, got \(chunk)")
        }
        let candidates: [Int?] = sequences > 1 ? [nil]
            : prefillChunk.map { [$0] } ?? ([nil] + Self.chunkChoices(promptTokens: promptTokens).reversed())
        var best: (plan: StreamingPlan, seconds: Double)?
        var smallest: (plan: StreamingPlan?, error: Error?) = (nil, nil)   // the fewest rows per pass
        for chunk in candidates {
            do {
                let plan = try StreamingPlan(placing: budget, stages: stages, config: c, promptTokens: promptTokens,
                                             contextCapacity: contextCapacity, sequences: sequences,
                                             maxSlots: maxSlots, prefillChunk: chunk, hardware: hardware)
                let seconds = plan.predictedSeconds(hardware: hardware, config: c)
                if best == nil || seconds < best!.seconds * (1 - 1e-9) { best = (plan, seconds) }
                smallest = (plan, nil)
            } catch {
                smallest = (nil, error)
            }
        }
        guard var chosen = best?.plan else { throw smallest.error ?? OffloadError("no prefill chunk fits the budget") }
        // The least that runs at all: with the fewest rows per pass.
        if let least = smallest.plan { chosen.minimumBudget = least.minimumBudget }
        self = chosen
    }

    /// Rows per prefill pass worth trying for a prompt of `promptTokens`: powers of two from one
    /// attention band up, each shorter than the prompt by more than a tail that would join it.
    public static func chunkChoices(promptTokens: Int) -> [Int] {
        var out: [Int] = []
        var chunk = Matmul.rowBlock
        while chunk + Matmul.directRowLimit < promptTokens { out.append(chunk); chunk *= 2 }
        return out
    }

    /// The placement for one choice of prefill chunk.
    private init(placing budget: Int, stages: [WeightStage], config c: LlamaConfig, promptTokens: Int,
                 contextCapacity: Int, sequences: Int, maxSlots: Int, prefillChunk: Int?, hardware: HardwareProfile) throws {
        self.prefillChunk = prefillChunk
        // The widest pass is the last one that many rows: it attends to every prompt key.
        let passRows = LlamaModel.largestPrefillPiece(count: max(promptTokens, 1), chunk: prefillChunk)
        let scratch = [LlamaModel.scratchFloats(config: c, rows: passRows, start: max(promptTokens, 1) - passRows),
                       LlamaModel.scratchFloats(config: c, rows: 1, start: max(contextCapacity - 1, 0))]
        // A block of several sequences: each keeps its hidden state for the prompt and a row.
        let perSequenceScratch = sequences > 1 ? accountedBytes(promptTokens * c.dim * 4) + accountedBytes(c.dim * 4) : 0
        self.budget = budget; self.stages = stages; self.sequences = sequences
        self.promptTokens = promptTokens; self.contextCapacity = contextCapacity
        kvHeads = c.kvHeads
        let allHeads = Array(repeating: c.kvHeads, count: c.layers)
        let allKV = Self.kvResidentBytes(config: c, heads: allHeads, capacity: contextCapacity)
        // Sliding-window layers keep their heads in memory (their rows past the window attend alone).
        let mustStay = (0..<c.layers).map { c.slidingWindow != nil && c.isLocalLayer($0) ? c.kvHeads : 0 }
        let smallSpan = Self.kvSpanPositions(headDim: c.headDim, atLeast: attentionKeyBlock, capacity: contextCapacity)
        func storeBytes(_ heads: [Int], span: Int, slots: Int) -> Int {
            Self.kvStoreBytes(config: c, diskHeads: heads.reduce(0) { $0 + c.kvHeads - $1 }, spanPositions: span, slots: slots)
        }
        let leastKV = Self.kvResidentBytes(config: c, heads: mustStay, capacity: contextCapacity)
            + storeBytes(mustStay, span: smallSpan, slots: 2)
        var most: [String: Int] = [:]
        for s in scratch { for (k, v) in s { most[k] = max(most[k] ?? 0, v) } }
        scratchBytes = most.values.reduce(0) { $0 + accountedBytes(max($1, 1) * 4) } + sequences * perSequenceScratch
        slotBytes = stages.map(\.bufferBytes).max() ?? 0
        splitStagingBytes = stages.filter(\.splitsForDecode).flatMap(\.matrices).map(\.byteCount).max() ?? 0
        let headRow = stages.last?.matrices.first.map { $0.byteCount / $0.rows } ?? 0
        let embeddingStaging = accountedBytes(AlignedBuffer.alignUp(headRow) + 2 * AlignedBuffer.alignment)
        // The compute thread rewrites a stage for the decode kernel as it takes it (the readers
        // only read): one split staging buffer, however many readers.
        let staging = accountedBytes(splitStagingBytes) + embeddingStaging
        // The least that runs: one stage buffer, activations, and the KV heads streamed from disk through
        // two spans (a block of several sequences keeps every cache in memory).
        let bare = scratchBytes + staging + slotBytes
        minimumBudget = bare + (sequences > 1 ? sequences * allKV : min(leastKV, allKV))
        guard budget >= minimumBudget else {
            throw OffloadError("budget \(formatBytes(budget)) (\(budget) bytes) is below the minimum "
                + "\(formatBytes(minimumBudget)) (\(minimumBudget) bytes) for this prompt and context: one stage buffer "
                + "\(formatBytes(slotBytes)) + KV cache \(sequences > 1 ? "of \(sequences) sequences" : "read through spans from disk") \(formatBytes(minimumBudget - bare)) "
                + "+ activations \(formatBytes(scratchBytes))"
                + (passRows < promptTokens ? " (prefill in passes of \(passRows) tokens)" : "")
                + " + read staging \(formatBytes(staging))")
        }
        // Every KV head in memory when they fit; else a ring of spans for the heads on disk and as many
        // heads in memory as fit, layer by layer from the first.
        if sequences > 1 || budget >= bare + allKV {
            kvResidentHeads = allHeads
            kvSpanPositions = smallSpan; kvSlots = 0; kvReaders = 0
            kvCacheBytes = sequences * allKV
        } else {
            // The ring: each span read (a head's keys and values of `span` positions) is one request,
            // `slots − 1` in flight. Larger and more requests move more bytes per second on most disks, but
            // take memory that would keep heads resident (each saves its share of the reads). Each ring that
            // takes at most a quarter of what is left is costed with the heads that then fit: the fewest
            // seconds of KV reads per token at the full context on `hardware` wins (ties: less memory).
            let stageBuffer = slotBytes
            func placeHeads(span: Int, slots: Int) -> [Int] {
                var heads = mustStay
                func bytes() -> Int {
                    Self.kvResidentBytes(config: c, heads: heads, capacity: contextCapacity)
                        + storeBytes(heads, span: span, slots: slots)
                }
                // A second stage buffer comes first, so reading the next stage overlaps computing one.
                let ring = budget >= bare + stageBuffer + bytes() ? stageBuffer : 0
                for l in 0..<c.layers where heads[l] < c.kvHeads {
                    while heads[l] < c.kvHeads {
                        heads[l] += 1
                        if bare + ring + bytes() > budget || heads == allHeads { heads[l] -= 1; break }
                    }
                }
                return heads
            }
            var best: (span: Int, slots: Int, heads: [Int], seconds: Double)?
            for atLeast in [attentionKeyBlock, 512, 1024, 2048] {
                let span = Self.kvSpanPositions(headDim: c.headDim, atLeast: atLeast, capacity: contextCapacity)
                // At most 4 readers: 8 were slower on 2 cores (SmolLM2, 6,080 tokens, 32 MB: 2.3–3.2 tokens/s
                // against 2.8–3.6 with 4), their completions taking the compute's cores.
                for slots in [3, 5] where 4 * storeBytes(mustStay, span: span, slots: slots) <= budget - bare {
                    let heads = placeHeads(span: span, slots: slots)
                    let diskBytes = Double(heads.reduce(0) { $0 + c.kvHeads - $1 } * 2 * contextCapacity * c.headDim * 4)
                    let seconds = diskBytes / Self.kvReadBandwidth(hardware: hardware, config: c, span: span, readers: slots - 1)
                    if best == nil || seconds < best!.seconds * (1 - 1e-6) { best = (span, slots, heads, seconds) }
                }
            }
            let span = best?.span ?? smallSpan, slots = best?.slots ?? 2
            kvSpanPositions = span; kvSlots = slots; kvReaders = slots - 1
            let heads = best?.heads ?? placeHeads(span: span, slots: slots)
            kvResidentHeads = heads
            kvCacheBytes = Self.kvResidentBytes(config: c, heads: heads, capacity: contextCapacity)
                + storeBytes(heads, span: span, slots: slots)
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

/// The stages of a model of `config`'s shape as `offload init` writes it (matrices of `dtype`,
/// tensors one after another at GGUF's 32-byte alignment): what `plan --config` plans for.
public func weightStages(config c: LlamaConfig, dtype: DType = .f16) throws -> [WeightStage] {
    guard let rowBytes = dtype.byteCount(elements: c.dim) else {
        throw OffloadError("\(c.name): rows of \(c.dim) are not whole \(dtype) blocks")
    }
    var offset = 0
    func place(_ bytes: Int) -> Int { defer { offset = (offset + bytes + 31) / 32 * 32 }; return offset }
    func matrix(_ name: String, rows: Int, cols: Int, firstRow: Int = 0, at base: Int) -> StageMatrix {
        let rb = dtype.byteCount(elements: cols) ?? cols * 4
        return StageMatrix(name: name, dtype: dtype, rows: rows, cols: cols, firstRow: firstRow,
                           fileOffset: base + firstRow * rb, byteCount: rows * rb, bufferOffset: 0)
    }
    let embd = place(c.vocabSize * rowBytes)
    var stages: [WeightStage] = []
    let shapes = [(c.qDim, c.dim), (c.kvDim, c.dim), (c.kvDim, c.dim), (c.dim, c.qDim),
                  (c.ffnDim, c.dim), (c.ffnDim, c.dim), (c.dim, c.ffnDim)]
    for l in 0..<c.layers {
        _ = place(c.dim * 4)   // attn_norm
        var ms: [StageMatrix] = []
        for (name, (rows, cols)) in zip(BlockMatrices.names, shapes) {
            if name == "ffn_gate" { _ = place(c.dim * 4) }   // ffn_norm
            let at = place(rows * (dtype.byteCount(elements: cols) ?? cols * 4))
            ms.append(matrix("blk.\(l).\(name).weight", rows: rows, cols: cols, at: at))
        }
        stages.append(WeightStage(index: l, name: "blk.\(l)", matrices: ms, splits: false))
    }
    _ = place(c.dim * 4)   // output_norm
    let head = c.tiedEmbeddings ? embd : place(c.vocabSize * rowBytes)
    let target = stages.map(\.weightBytes).max() ?? c.vocabSize * rowBytes
    let chunkRows = max(1, min(c.vocabSize, target / rowBytes))
    for (i, r0) in stride(from: 0, to: c.vocabSize, by: chunkRows).enumerated() {
        let m = matrix(c.tiedEmbeddings ? "token_embd.weight" : "output.weight", rows: min(chunkRows, c.vocabSize - r0),
                       cols: c.dim, firstRow: r0, at: head)
        stages.append(WeightStage(index: c.layers + i, name: "head.\(i)", matrices: [m], splits: false))
    }
    return stages
}

// MARK: - Predicted time and the block schedule

extension StreamingPlan {
    /// Bytes read from disk per decode step of the block: the streamed stages and the KV heads on disk
    /// (read at the context's length and written a page each).
    public func bytesReadPerStep(contextLength: Int? = nil, config c: LlamaConfig) -> Int {
        let weights = streamed.reduce(0) { $0 + stages[$1].bufferBytes }
        let kv = kvDiskHeads * 2 * (contextLength ?? contextCapacity) * c.headDim * 4
        return weights + kv
    }

    /// Predicted seconds per decode step of the block at full context on `hardware`: the simulated
    /// step of its schedule (compute: every weight byte read from memory once per sequence; reads at
    /// the profile's rate for the plan's requests, as far ahead as the ring allows). At another
    /// `contextLength`: the longer of the compute and the disk reads.
    public func predictedDecodeSeconds(hardware hw: HardwareProfile, config c: LlamaConfig, contextLength: Int? = nil) -> Double {
        // The step's schedule: reads into the ring as slots free, each stage computed once read.
        if contextLength == nil, let sim = try? schedule(hardware: hw, config: c).simulate() { return sim.stepSeconds }
        let weights = Double(stages.reduce(0) { $0 + $1.weightBytes })
        let compute = Double(sequences) * weights / hw.decodeBytesPerSecond
        let weightBytes = bytesReadPerStep(contextLength: 0, config: c)
        let kvBytes = bytesReadPerStep(contextLength: contextLength, config: c) - weightBytes
        let disk = Double(weightBytes) / streamReadBandwidth(hardware: hw) + Double(kvBytes) / kvReadBandwidth(hardware: hw, config: c)
        return max(compute, disk)
    }

    /// Predicted seconds to prefill the prompt in the plan's passes: per pass, the longer of its
    /// compute (the blocks' products and attention over the keys before it, and dequantizing the
    /// weights it multiplies) and reading the streamed blocks; the head's last row is negligible.
    public func predictedPrefillSeconds(hardware hw: HardwareProfile, config c: LlamaConfig) -> Double {
        let blocks = stages.filter { $0.index < c.layers }
        let elements = Double(blocks.flatMap(\.matrices).reduce(0) { $0 + $1.rows * $1.cols })
        let streamedBytes = Double(blocks.filter { !resident.contains($0.index) }.reduce(0) { $0 + $1.bufferBytes })
        let attentionRate = hw.training?.attentionFlops ?? hw.gemmFlops / 3
        let bandwidth = streamReadBandwidth(hardware: hw)
        return LlamaModel.prefillPieces(count: max(promptTokens, 1), chunk: prefillChunk).reduce(0) { total, p in
            let rows = Double(p.count), keys = Double(p.lowerBound) + rows / 2
            let compute = 2 * elements * rows / hw.gemmFlops
                + 4 * Double(c.layers * c.qDim) * rows * keys / attentionRate
                + elements * 4 / hw.memoryBandwidth
            let kvBytes = Double(kvDiskHeads * 2 * p.lowerBound * c.headDim * 4)
            return total + max(compute, streamedBytes / bandwidth + kvBytes / kvReadBandwidth(hardware: hw, config: c))
        }
    }

    /// The disk's rate for the KV heads' span reads, `kvReaders` at a time.
    public func kvReadBandwidth(hardware hw: HardwareProfile, config c: LlamaConfig) -> Double {
        Self.kvReadBandwidth(hardware: hw, config: c, span: kvSpanPositions, readers: kvReaders)
    }

    /// The disk's rate for span reads of `span` positions (a head's keys and values: one request), `readers` at a time.
    static func kvReadBandwidth(hardware hw: HardwareProfile, config c: LlamaConfig, span: Int, readers: Int) -> Double {
        hw.diskReadBandwidth(requestBytes: 2 * span * c.headDim * 4, queueDepth: max(readers, 1))
    }

    /// Predicted seconds for the prompt's prefill and the decode of the rest of the context.
    public func predictedSeconds(hardware hw: HardwareProfile, config c: LlamaConfig) -> Double {
        predictedPrefillSeconds(hardware: hw, config: c)
            + Double(max(contextCapacity - promptTokens, 0)) * predictedDecodeSeconds(hardware: hw, config: c)
    }

    /// The disk's rate for this plan's reads: requests of a stage's runs, one per reader at a time.
    public func streamReadBandwidth(hardware hw: HardwareProfile) -> Double {
        let runs = streamed.flatMap { stages[$0].runs.map(\.length) }
        guard !runs.isEmpty else { return hw.diskReadBandwidth }
        return hw.diskReadBandwidth(requestBytes: runs.reduce(0, +) / runs.count, queueDepth: readerThreads)
    }
}

/// FlexGen's block schedule for many prompts: the block size B chosen by exhaustive search over
/// 1…prompts, each costed with its own plan (resident stages shrink as caches grow) as
/// ceil(prompts ÷ B) blocks × max(B × compute per token, streamed bytes ÷ disk bandwidth) per decode
/// step (a short last block costs a whole step's reads).
public struct BlockSchedulePlan: Sendable {
    public var blockSize: Int
    public var plan: StreamingPlan
    /// Decode seconds per token (over all prompts) the cost model predicts for `blockSize`.
    public var predictedSecondsPerToken: Double

    /// `prefillChunk`: rows per prefill pass for a block of one sequence (nil: the plan's choice).
    public init(stages: [WeightStage], config c: LlamaConfig, budget: Int, promptLengths: [Int], maxTokens: Int,
                blockSize forced: Int? = nil, prefillChunk: Int? = nil, hardware hw: HardwareProfile) throws {
        let longest = promptLengths.max() ?? 1
        let capacity = min(longest + maxTokens, c.contextLength)
        var best: (Int, StreamingPlan, Double)?
        var firstError: Error?
        let count = max(1, promptLengths.count)
        for b in forced.map({ [$0] }) ?? Array(1...count) {
            do {
                let plan = try StreamingPlan(budget: budget, stages: stages, config: c, promptTokens: longest,
                                             contextCapacity: capacity, sequences: b, prefillChunk: prefillChunk,
                                             hardware: hw)
                let blocks = Double((count + b - 1) / b)
                let cost = blocks * plan.predictedDecodeSeconds(hardware: hw, config: c) / Double(count)
                if best == nil || cost <= best!.2 * (1 + 1e-9) { best = (b, plan, cost) }   // ties: the larger block
            } catch {
                if firstError == nil { firstError = error }
            }
        }
        guard let best else { throw firstError ?? OffloadError("no block size fits the budget") }
        blockSize = best.0; plan = best.1; predictedSecondsPerToken = best.2
    }
}

/// What `offload serve --budget` runs: the KV caches of `sequences` sequences of `context` positions
/// in memory beside the streamed weights, every decode step one pass over the weights for all of them.
/// `sequences` is the one asked for, else the most (up to `upTo`) that fit; `offload plan --mode serve`
/// reports the same plan.
public struct ServingPlan: Sendable {
    public var sequences: Int { plan.sequences }
    public var plan: StreamingPlan

    public init(stages: [WeightStage], config c: LlamaConfig, budget: Int, context: Int, sequences forced: Int? = nil,
                upTo: Int = 16) throws {
        var smallest: Error?   // the refusal of the fewest sequences tried: its minimum is the one that matters
        for n in forced.map({ [$0] }) ?? Array((1...max(upTo, 1)).reversed()) {
            do {
                // Prefill scratch for a whole context of prompt, or for one decode row of each sequence.
                plan = try StreamingPlan(budget: budget, stages: stages, config: c, promptTokens: max(context, n),
                                         contextCapacity: context, sequences: n)
                return
            } catch {
                smallest = error
            }
        }
        throw smallest ?? OffloadError("no number of sequences fits the budget")
    }

    /// Predicted decode seconds per token when every sequence is running.
    public func predictedSecondsPerToken(hardware hw: HardwareProfile, config c: LlamaConfig) -> Double {
        plan.predictedDecodeSeconds(hardware: hw, config: c) / Double(sequences)
    }
}

extension StreamingPlan {
    /// Bytes the KV heads on disk take there.
    public func kvDiskBytes(config c: LlamaConfig) -> Int {
        let page = Self.kvPagePositions(headDim: c.headDim)
        return kvDiskHeads * 2 * ((contextCapacity + page - 1) / page * page) * c.headDim * 4
    }

    /// What the plan table and `generate` say of the placement, in words.
    public var summary: String {
        "\(resident.count) of \(stages.count) stages resident, \(stages.count - resident.count) streamed through "
            + "\(ringSlots) buffer\(ringSlots == 1 ? "" : "s") (\(readerThreads) reader\(readerThreads == 1 ? "" : "s")), KV cache of "
            + (kvDiskHeads == 0 ? "all in memory" : "\(kvDiskHeads) of \(kvHeads * kvResidentHeads.count) heads on disk "
               + "(read in spans of \(kvSpanPositions) positions, \(kvReaders) at a time)")
            + (sequences > 1 ? ", blocks of \(sequences) sequences" : "")
            + (LlamaModel.prefillPieces(count: max(promptTokens, 1), chunk: prefillChunk).count > 1
               ? ", prefill in passes of \(prefillChunk!) tokens" : "")
    }
}

extension StreamingPlan {
    /// One decode step as a Schedule: resident stages and the KV cache in memory from the start; each
    /// streamed stage read into a ring slot as soon as one is free (the executor's readers), computed,
    /// and its slot freed; a layer's KV heads on disk read before its block and their pages written after. For `--svg`,
    /// `--schedule` and `--trace` of `plan --mode generate`: the simulator's peak is the plan's bytes.
    public func schedule(hardware hw: HardwareProfile, config c: LlamaConfig) -> Schedule {
        var tensors: [LogicalTensor] = [], initial: [Placement] = [], ops: [Operation] = []
        func emit(_ op: Operation) -> Int { var o = op; o.id = ops.count; ops.append(o); return o.id }
        let fixed = plannedBytes - ringSlots * slotBytes - residentBytes
        tensors.append(LogicalTensor(name: "kv cache, activations and staging", bytes: fixed))
        initial.append(Placement(tensor: "kv cache, activations and staging", tier: .compute))
        for s in stages {
            let name = "w.\(s.name)"
            if resident.contains(s.index) {
                tensors.append(LogicalTensor(name: name, bytes: accountedBytes(s.bufferBytes)))
                initial.append(Placement(tensor: name, tier: .compute))
            } else {
                tensors.append(LogicalTensor(name: name, bytes: slotBytes))
                tensors.append(LogicalTensor(name: name + " (file)", bytes: 0))
                initial.append(Placement(tensor: name + " (file)", tier: .disk))
            }
        }
        let page = Self.kvPagePositions(headDim: c.headDim)
        let diskHeads = kvResidentHeads.map { c.kvHeads - $0 }
        for l in 0..<c.layers where diskHeads[l] > 0 {
            tensors.append(LogicalTensor(name: "kv.\(l)", bytes: 0)); initial.append(Placement(tensor: "kv.\(l)", tier: .disk))
        }
        let bandwidth = streamReadBandwidth(hardware: hw)
        var computeOf: [Int] = []          // compute op ids of the streamed stages, in order
        var lastCompute: Int?
        for s in stages {
            let name = "w.\(s.name)"
            var deps = lastCompute.map { [$0] } ?? []
            var reads = [name]
            if !resident.contains(s.index) {
                // A slot frees when the stage `ringSlots` streamed stages back is computed.
                var readDeps: [Int] = []
                if computeOf.count >= ringSlots { readDeps.append(computeOf[computeOf.count - ringSlots]) }
                let r = emit(Operation(id: 0, kind: .prefetch, stream: .read, tier: .compute, from: .disk,
                                       reads: [name + " (file)"], creates: [name],
                                       seconds: Double(s.bufferBytes) / bandwidth, deps: readDeps))
                deps.append(r)
            }
            if s.index < c.layers && diskHeads[s.index] > 0 {
                let kv = "kv.\(s.index)", bytes = diskHeads[s.index] * 2 * contextCapacity * c.headDim * 4
                let r = emit(Operation(id: 0, kind: .prefetch, stream: .read, tier: .compute, from: .disk, reads: [kv],
                                       creates: [], seconds: Double(bytes) / kvReadBandwidth(hardware: hw, config: c),
                                       deps: lastCompute.map { [$0] } ?? []))
                deps.append(r)
                reads = [name]
            }
            let id = emit(Operation(id: 0, kind: .forward, stream: .compute, stage: s.index, save: SaveMode.none,
                                    reads: reads, frees: resident.contains(s.index) ? [] : [name],
                                    seconds: Double(sequences) * Double(s.weightBytes) / hw.decodeBytesPerSecond, deps: deps))
            if s.index < c.layers && diskHeads[s.index] > 0 {
                _ = emit(Operation(id: 0, kind: .offload, stream: .write, tier: .disk, from: .compute, reads: [],
                                   creates: [], seconds: Double(diskHeads[s.index] * page * c.headDim * 8) / Double(page)
                                       / hw.diskWriteBandwidth, deps: [id]))
            }
            if !resident.contains(s.index) { computeOf.append(id) }
            lastCompute = id
        }
        return Schedule(strategy: streamed.isEmpty ? "resident" : "stream", model: c.name, mode: "generate",
                        stageNames: stages.map(\.name), tensors: tensors, initial: initial, operations: ops)
    }
}
