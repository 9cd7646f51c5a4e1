// The executor of a StreamingPlan: the model's BlockWeightSupplier and
// ComputeMemory. Resident stages are read once at start; the others go through
// a ring of stage buffers filled by reader threads in forward order, running
// ahead of the compute by as many stages as there are free buffers (across the
// end of one forward into the next decode step). Every byte the model reads,
// weights, KV cache and scratch, is in one budgeted compute tier.
internal import CKernels
import Foundation
import Formats
import Kernels
import Memory
import Models
import Planning
import Tensors

/// Measured figures of a streamed run.
public struct StreamingStats: Sendable {
    /// Bytes read from the model file by stage reads the model consumed (and embedding rows).
    public var bytesRead = 0
    /// Of those, in forward calls of one row (decode).
    public var decodeBytesRead = 0
    public var decodeForwards = 0
    /// Bytes read ahead for a forward that then needed another layout or never came.
    public var bytesDiscarded = 0
    /// Seconds the compute waited for a stage read.
    public var waitSeconds = 0.0
    public var decodeWaitSeconds = 0.0
    /// Seconds the reader threads spent in reads (summed over threads).
    public var readSeconds = 0.0
    /// KV cache on disk, during decode forwards: bytes read, written, and seconds the compute spent on them.
    public var decodeKVBytesRead = 0
    public var decodeKVBytesWritten = 0
    public var decodeKVSeconds = 0.0
}

private final class StreamItem {
    let stage: Int
    let split: Bool
    var slot = -1
    var state = 0 // 0 queued, 1 reading, 2 ready, 3 failed
    var error: Error?
    init(stage: Int, split: Bool) { self.stage = stage; self.split = split }
}

/// Supplies a model's stages under a `StreamingPlan` and counts its memory.
///
/// - Warning: call `stop()` when the model is done: the reader threads hold the
///   streamer (and so its buffers) until then.
public final class WeightStreamer: BlockWeightSupplier, ComputeMemory, @unchecked Sendable {
    public let plan: StreamingPlan
    public let tier: MemoryTier
    public let reader: DirectFileReader
    public let trace: TraceRecorder?
    let config: LlamaConfig
    let embeddingDType: DType
    let embeddingOffset: Int
    let embeddingRowBytes: Int
    /// Direct-read bandwidth measured at start (bytes per second), the way the readers read.
    public private(set) var readBandwidth = 0.0

    private var named: [String: TierBuffer] = [:]
    private var resident: [Int: TierBuffer] = [:]
    private var slots: [TierBuffer] = []
    /// Where the compute thread rewrites a taken stage's Q4_1 matrices for the decode kernel.
    private var splitStaging: TierBuffer?
    /// The model's compute threads, which split stages for decode (on the calling thread when nil).
    public var computePool: ComputePool?
    private var embeddingBuffer: TierBuffer?

    private let cond = NSCondition()
    private var items: [StreamItem] = []
    private var head = 0                 // next item the compute consumes
    private var slotBusy: [Bool] = []
    private var stopping = false
    private var threads: [Thread] = []
    private var exited = DispatchGroup()
    private var _stats = StreamingStats()
    private var rows = 1
    private var current: [Int: StreamItem] = [:]   // stage -> item being computed
    private var computeStart: [Int: Double] = [:]
    private var started = false
    /// The KV heads on disk, when the plan puts some there (for the decode figures).
    public var kvStore: DiskKVStore?
    private var kvAtBegin = (0, 0, 0.0)
    /// Forwards announced to come (a chunked prefill's passes), the current one first once it begins,
    /// and how many of them are already queued in `items` for reading ahead.
    private var announced: [(rows: Int, logits: Bool)] = []
    private var announcedQueued = 0

    /// Builds the buffers of `plan` in a compute tier of `plan.budget` bytes and
    /// reads the resident stages.
    public init(plan: StreamingPlan, file: GGUFFile, config: LlamaConfig, trace: TraceRecorder? = nil) throws {
        self.plan = plan
        self.config = config
        self.trace = trace
        tier = MemoryTier(.compute, limit: plan.budget, trace: trace, reuse: 0)
        reader = try DirectFileReader(path: file.path)
        guard let ei = file.info("token_embd.weight"), let dt = ei.dtype, ei.shape.count == 2,
              let eo = file.fileOffset(of: "token_embd.weight"), let rb = dt.byteCount(elements: ei.shape[1]) else {
            throw OffloadError("[stream] \(file.fileName): token_embd.weight is missing or not a matrix")
        }
        embeddingDType = dt; embeddingOffset = eo; embeddingRowBytes = rb
        if plan.splitStagingBytes > 0 { splitStaging = try tier.allocate("stream.split", bytes: plan.splitStagingBytes) }
        embeddingBuffer = try tier.allocate("stream.embedding", bytes: alignUp(rb) + 2 * AlignedBuffer.alignment)
        for i in 0..<plan.ringSlots { slots.append(try tier.allocate("stream.slot.\(i)", bytes: plan.slotBytes)) }
        slotBusy = Array(repeating: false, count: plan.ringSlots)
        for s in plan.stages where plan.resident.contains(s.index) {
            let b = try tier.allocate("resident.\(s.name)", bytes: s.bufferBytes)
            try readRuns(s, into: b.baseAddress)
            if s.splitsForDecode { splitForDecode(s, at: b.baseAddress) }
            resident[s.index] = b
        }
        readBandwidth = try measureReadBandwidth()
        for i in 0..<plan.readerThreads {
            exited.enter()
            let t = Thread { [self] in readerLoop() }
            t.name = "offload-stream-\(i)"
            t.start()
            threads.append(t)
        }
    }

    deinit { stop() }

    /// Stops the readers (reads in flight finish) and frees nothing else.
    public func stop() {
        cond.lock()
        let was = stopping
        stopping = true
        cond.broadcast()
        cond.unlock()
        if !was && !threads.isEmpty { exited.wait() }
    }

    public var stats: StreamingStats { cond.lock(); defer { cond.unlock() }; return _stats }

    /// The most bytes the compute tier has held at once.
    public var peakComputeBytes: Int { tier.stats.peak }

    /// Direct-read bandwidth of this file as the streamer reads it: the streamed
    /// stages (all stages when none is streamed), up to `limit` bytes, read once
    /// with the readers' thread count, in bytes per second. Runs before the readers start.
    private func measureReadBandwidth(limit: Int = 256 << 20) throws -> Double {
        let order = plan.streamed.isEmpty ? Array(plan.stages.indices) : plan.streamed
        var list: [WeightStage] = []
        var total = 0
        for i in order where total < limit { list.append(plan.stages[i]); total += plan.stages[i].bufferBytes }
        let n = min(plan.readerThreads, slots.count)
        let errors = FirstError()
        let stages = list
        let t0 = now()
        DispatchQueue.concurrentPerform(iterations: n) { k in
            var j = k
            while j < stages.count {
                do { try readRuns(stages[j], into: slots[k].baseAddress) } catch { errors.set(error) }
                j += n
            }
        }
        let dt = now() - t0
        if let e = errors.error { throw e }
        return Double(total) / max(dt, 1e-9)
    }

    // MARK: ComputeMemory

    public func allocate(_ name: String, bytes: Int) throws -> UnsafeMutableRawPointer {
        let b = try tier.allocate(name, bytes: bytes)
        cond.lock(); named[name] = b; cond.unlock()
        return b.baseAddress
    }

    public func free(_ name: String) {
        cond.lock(); let b = named.removeValue(forKey: name); cond.unlock()
        b?.free()
    }

    // MARK: BlockWeightSupplier

    /// Stages read for a forward of `rows` rows: the non-resident ones, and the
    /// resident ones kept in the split layout when the forward needs the plain one;
    /// the head's only when the forward runs it.
    func streamOrder(rows: Int, logits: Bool = true) -> [(Int, Bool)] {
        plan.stages.compactMap { s in
            if !logits && s.index >= config.layers { return nil }
            let split = rows == 1 && s.splitsForDecode
            if resident[s.index] != nil && split == s.splitsForDecode { return nil }
            return (s.index, split)
        }
    }

    public func expectForwards(_ forwards: [(rows: Int, logits: Bool)]) {
        cond.lock()
        announced = forwards
        announcedQueued = 0
        cond.unlock()
    }

    public func beginForward(rows: Int, logits: Bool) throws {
        let want = streamOrder(rows: rows, logits: logits)
        if let kv = kvStore { kvAtBegin = (kv.bytesRead, kv.bytesWritten, kv.seconds) }
        cond.lock()
        self.rows = rows
        started = true
        // This forward is the first announced one (its reads may be queued already), or the
        // announcement no longer holds.
        if let first = announced.first, first.rows == rows, first.logits == logits {
            announced.removeFirst()
            announcedQueued = max(0, announcedQueued - 1)
        } else {
            announced = []; announcedQueued = 0
        }
        let ahead = Array(items[head...])
        let matches = ahead.count >= want.count && zip(ahead, want).allSatisfy { $0.stage == $1.0 && $0.split == $1.1 }
        if !matches {
            // Read-ahead for another layout (a decode guess before a longer forward):
            // let reads in flight land, then drop them.
            while ahead.contains(where: { $0.state == 1 }) { cond.wait() }
            for it in ahead where it.state >= 2 {
                slotBusy[it.slot] = false
                _stats.bytesDiscarded += plan.stages[it.stage].bufferBytes
            }
            items.removeSubrange(head...)
            items += want.map { StreamItem(stage: $0.0, split: $0.1) }
            announcedQueued = 0
            cond.broadcast()
        }
        cond.unlock()
    }

    public func embeddingRow(token: Int, into dst: UnsafeMutablePointer<Float>) throws {
        let off = embeddingOffset + token * embeddingRowBytes
        let a = alignDown(off), e = alignUp(off + embeddingRowBytes)
        let buf = embeddingBuffer!.baseAddress
        let t0 = trace?.now() ?? 0
        try reader.read(into: buf, offset: a, length: e - a, needed: off + embeddingRowBytes - a, what: "token_embd row \(token)")
        trace?.span("read token_embd row", stream: "read", since: t0, args: ["bytes": Double(e - a)])
        Dequantize.toF32(embeddingDType, UnsafeRawPointer(buf + (off - a)), dst, count: config.dim)
        cond.lock()
        _stats.bytesRead += e - a
        if rows == 1 { _stats.decodeBytesRead += e - a }
        cond.unlock()
    }

    /// Waits for stage `s` and returns its buffer and layout.
    private func acquire(_ s: Int) throws -> (UnsafeRawPointer, Bool) {
        let split = rows == 1 && plan.stages[s].splitsForDecode
        if let b = resident[s], split == plan.stages[s].splitsForDecode {
            computeStart[s] = trace?.now()
            return (UnsafeRawPointer(b.baseAddress), split)
        }
        cond.lock()
        guard head < items.count, items[head].stage == s else {
            let next = head < items.count ? plan.stages[items[head].stage].name : "nothing"
            cond.unlock()
            throw OffloadError("[stream] stage \(plan.stages[s].name) asked for out of order (next read is \(next))")
        }
        let it = items[head]
        let t0 = now()
        let tw = trace?.now()
        while it.state < 2 { cond.wait() }
        head += 1   // only now: readers look for work from `head` on
        let waited = now() - t0
        _stats.waitSeconds += waited
        if rows == 1 { _stats.decodeWaitSeconds += waited; _stats.decodeBytesRead += plan.stages[s].bufferBytes }
        _stats.bytesRead += plan.stages[s].bufferBytes
        current[s] = it
        cond.unlock()
        if let trace, let tw, waited > 20e-6 { trace.span("wait \(plan.stages[s].name)", stream: "compute", since: tw) }
        if let e = it.error { throw e }
        if it.split { splitForDecode(plan.stages[s], at: slots[it.slot].baseAddress) }
        computeStart[s] = trace?.now()
        return (UnsafeRawPointer(slots[it.slot].baseAddress), it.split)
    }

    private func matrices(_ s: Int, base: UnsafeRawPointer, split: Bool) -> [WeightMatrix] {
        plan.stages[s].matrices.map { m in
            var w = WeightMatrix(data: base + m.bufferOffset, dtype: m.dtype, rows: m.rows, cols: m.cols)
            if split && m.dtype == .q4_1 { w.split = base + m.bufferOffset }
            return w
        }
    }

    public func block(_ layer: Int) throws -> BlockMatrices {
        let (base, split) = try acquire(layer)
        return BlockMatrices(matrices(layer, base: base, split: split))
    }

    public var headChunkCount: Int { plan.stages.count - config.layers }

    public func headChunk(_ i: Int) throws -> (firstRow: Int, matrix: WeightMatrix) {
        let s = config.layers + i
        let (base, split) = try acquire(s)
        return (plan.stages[s].matrices[0].firstRow, matrices(s, base: base, split: split)[0])
    }

    public func release(stage s: Int) {
        if let trace, let t = computeStart.removeValue(forKey: s) {
            trace.span("compute \(plan.stages[s].name)", stream: "compute", since: t)
        }
        cond.lock()
        if let it = current.removeValue(forKey: s) {
            slotBusy[it.slot] = false
            cond.broadcast()
        }
        cond.unlock()
    }

    public func endForward() {
        let kv = kvStore.map { ($0.bytesRead, $0.bytesWritten, $0.seconds) }
        cond.lock()
        if rows == 1 { _stats.decodeForwards += 1 }
        if rows == 1, let kv {
            _stats.decodeKVBytesRead += kv.0 - kvAtBegin.0
            _stats.decodeKVBytesWritten += kv.1 - kvAtBegin.1
            _stats.decodeKVSeconds += kv.2 - kvAtBegin.2
        }
        // Drop consumed items so the list stays short over long generations.
        if head > 256 { items.removeFirst(head); head = 0 }
        cond.unlock()
    }

    // MARK: Readers

    private func readerLoop() {
        defer { exited.leave() }
        while true {
            cond.lock()
            var picked: StreamItem?
            while picked == nil {
                if stopping { cond.unlock(); return }
                if let i = items[head...].firstIndex(where: { $0.state == 0 }) ?? extendWithNext(),
                   let k = slotBusy.firstIndex(of: false) {
                    let it = items[i]
                    it.state = 1; it.slot = k; slotBusy[k] = true
                    picked = it
                } else {
                    cond.wait()
                }
            }
            cond.unlock()
            let it = picked!
            let t0 = now()
            var err: Error?
            do {
                try readRuns(plan.stages[it.stage], into: slots[it.slot].baseAddress)
            } catch { err = error }
            let dt = now() - t0
            cond.lock()
            it.error = err
            it.state = err == nil ? 2 : 3
            _stats.readSeconds += dt
            cond.broadcast()
            cond.unlock()
        }
    }

    /// With every queued read issued, reads ahead the next forward's stages: the next announced
    /// one (a prefill pass), else a decode step's. Called with the lock held; returns the first
    /// new item's index.
    private func extendWithNext() -> Int? {
        guard started, items[head...].allSatisfy({ $0.state != 0 }) else { return nil }
        // Announced forwards after the current one that are not queued yet.
        let pending = announcedQueued < announced.count ? announced[announcedQueued] : nil
        let next = pending.map { streamOrder(rows: $0.rows, logits: $0.logits) } ?? streamOrder(rows: 1)
        guard !next.isEmpty else { return nil }
        // At most one forward ahead of what the compute has not consumed.
        guard items.count - head < next.count + plan.ringSlots else { return nil }
        let first = items.count
        items += next.map { StreamItem(stage: $0.0, split: $0.1) }
        if pending != nil { announcedQueued += 1 }
        return first
    }

    private func readRuns(_ s: WeightStage, into base: UnsafeMutableRawPointer) throws {
        let t0 = trace?.now() ?? 0
        for r in s.runs {
            let needed = min(r.length, reader.size - r.fileOffset)
            try reader.read(into: base + r.bufferOffset, offset: r.fileOffset, length: r.length, needed: needed, what: s.name)
        }
        trace?.span("read \(s.name)", stream: "read", since: t0, args: ["bytes": Double(s.bufferBytes)])
    }

    /// Rewrites stage `s`'s Q4_1 matrices at `base` in place into the decode kernel's split
    /// layout (same bytes as `Matmul.splitForDecode` makes for a resident model). On the compute
    /// thread, which waits for reads most of the time: on a reader, it held the disk idle.
    private func splitForDecode(_ s: WeightStage, at base: UnsafeMutableRawPointer) {
        guard let staging = splitStaging else { return }
        let t0 = trace?.now() ?? 0
        for m in s.matrices where m.dtype == .q4_1 {
            Matmul.splitInPlace(computePool, base + m.bufferOffset, staging: staging.baseAddress, rows: m.rows, cols: m.cols)
        }
        trace?.span("split \(s.name)", stream: "compute", since: t0)
    }
}
