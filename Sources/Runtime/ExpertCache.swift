// Expert offloading for mixture-of-experts generation: everything but the routed experts stays in
// memory; the experts live in the GGUF file and a pool of slots holds the ones in use, each read
// with direct I/O (an expert's gate, up and down matrices are three contiguous ranges). Demand
// reads run on the compute thread at once; predicted experts of the next block are read ahead by
// one I/O thread behind them, and queued reads a block no longer needs are cancelled. The slots
// hold the file's bytes, so the products are those of the all-resident run, bit for bit.
import Foundation
import Kernels
import Memory
import Models
import Planning
import Tensors

public final class ExpertCache: ExpertSupplier, @unchecked Sendable {
    /// Which resident expert a miss evicts (Planning's `ExpertPoolSimulation` replays the same choice).
    public typealias Policy = ExpertPolicy

    struct Key: Hashable { var layer: Int, expert: Int }
    enum State { case empty, queued, loading, ready }
    struct Slot {
        var key: Key?
        var state = State.empty
        var lastUse = 0
        var pins = 0
        /// Read ahead and not yet used.
        var prefetched = false
    }
    /// One matrix of one expert: where it is in the file, and its shape.
    struct MatrixRange { var offset: Int, length: Int, dtype: DType, rows: Int, cols: Int }

    /// Counts per block, for the run's report.
    public struct LayerStats: Sendable {
        public var demands = 0, hits = 0, prefetchHits = 0, prefetchesIssued = 0, prefetchesCancelled = 0
        public var bytesRead = 0
        public var stallSeconds = 0.0
    }

    public let policy: Policy
    public let prefetchWidth: Int
    public let slotCount: Int
    public let slotBytes: Int
    let reader: DirectFileReader
    let ranges: [[[MatrixRange]]]   // [layer][expert][gate, up, down]
    let regionBytes: Int
    let memory: UnsafeMutableRawPointer
    var slots: [Slot]
    var index: [Key: Int] = [:]
    var uses: [Key: Int] = [:]
    var clock = 0
    var queue: [(key: Key, slot: Int)] = []
    /// The experts the block being computed still needs: a read-ahead never evicts them.
    var needed: Set<Key> = []
    let cond = NSCondition()
    var stopping = false
    var worker: Thread?
    var failure: Error?
    public private(set) var stats: [LayerStats]

    /// Bytes of one of a slot's three regions: `source`'s largest expert matrix, with room for the
    /// direct-I/O alignment on both ends.
    static func regionBytes(_ ranges: [[[MatrixRange]]]) throws -> Int {
        let a = AlignedBuffer.alignment
        return (ranges.flatMap { $0.flatMap { $0 } }.map(\.length).max() ?? 0) / a * a + 2 * a
    }

    static func ranges(_ source: GGUFWeights) throws -> [[[MatrixRange]]] {
        let c = source.config
        guard c.moe != nil else { throw OffloadError("[experts] \(source.sourceName) has no experts") }
        // The mapped file's base: any tensor's address less its offset in the file.
        let probe = source.file.tensors[0].name
        let base = try source.file.data(probe).bytes.baseAddress! - source.file.fileOffset(of: probe)!
        return try (0..<c.layers).map { l in
            try MoEBlockWeights(source, layer: l).experts.map { ex in
                [ex.gate, ex.up, ex.down].map { m in
                    MatrixRange(offset: m.data - base, length: m.rows * m.rowBytes, dtype: m.dtype, rows: m.rows, cols: m.cols)
                }
            }
        }
    }

    /// A pool of `slots` experts of `source`, read from its file.
    public init(source: GGUFWeights, slots: Int, policy: Policy, prefetchWidth: Int) throws {
        let c = source.config, m = c.moe!
        guard slots >= m.used else {
            throw OffloadError("[experts] a pool of \(slots) expert slots is below the \(m.used) experts a token uses")
        }
        self.policy = policy
        self.prefetchWidth = prefetchWidth
        ranges = try Self.ranges(source)
        regionBytes = try Self.regionBytes(ranges)
        slotCount = min(slots, c.layers * m.experts)
        slotBytes = 3 * regionBytes
        reader = try DirectFileReader(path: source.file.path)
        memory = UnsafeMutableRawPointer.allocate(byteCount: slotCount * slotBytes, alignment: AlignedBuffer.alignment)
        self.slots = Array(repeating: Slot(), count: slotCount)
        stats = Array(repeating: LayerStats(), count: c.layers)
        if prefetchWidth > 0 {
            let t = Thread { [unowned self] in self.prefetchLoop() }
            t.name = "offload-expert-prefetch"
            worker = t
            t.start()
        }
    }

    deinit {
        stop()
        memory.deallocate()
    }

    /// Ends the prefetch thread (after the read it is doing).
    public func stop() {
        cond.lock()
        stopping = true
        queue.removeAll()
        cond.broadcast()
        cond.unlock()
        while let w = worker, !w.isFinished { usleep(1000) }
        worker = nil
    }

    func base(_ slot: Int) -> UnsafeMutableRawPointer { memory + slot * slotBytes }

    /// Reads `key`'s three matrices into `slot` and returns their views.
    func read(_ key: Key, into slot: Int) throws -> Int {
        let a = AlignedBuffer.alignment
        var bytes = 0
        for (i, r) in ranges[key.layer][key.expert].enumerated() {
            let start = AlignedBuffer.alignDown(r.offset), end = AlignedBuffer.alignUp(r.offset + r.length)
            precondition(end - start <= regionBytes && a > 0)
            try reader.read(into: base(slot) + i * regionBytes, offset: start, length: end - start,
                            needed: r.offset + r.length - start, what: "expert \(key.expert) of block \(key.layer)")
            bytes += end - start
        }
        return bytes
    }

    func views(_ key: Key, _ slot: Int) -> ExpertMatrices {
        let m = ranges[key.layer][key.expert].enumerated().map { i, r in
            WeightMatrix(data: UnsafeRawPointer(base(slot) + i * regionBytes + (r.offset - AlignedBuffer.alignDown(r.offset))),
                         dtype: r.dtype, rows: r.rows, cols: r.cols)
        }
        return ExpertMatrices(gate: m[0], up: m[1], down: m[2])
    }

    /// A slot to (re)use, by the policy, among those neither in use nor being read; nil if none.
    /// `keep`: a layer whose read-ahead experts are not to be evicted (a prefetch for it).
    func victim(keep layer: Int? = nil) -> Int? {
        var best: Int?
        for (i, s) in slots.enumerated() where s.pins == 0 && (s.state == .empty || s.state == .ready) {
            if s.state == .empty { return i }
            if layer != nil, needed.contains(s.key!) { continue }
            if let layer, s.key?.layer == layer, s.prefetched { continue }
            guard let b = best else { best = i; continue }
            let (x, y) = (s, slots[b])
            switch policy {
            case .lru: if x.lastUse < y.lastUse { best = i }
            case .lfu:
                let (ux, uy) = (uses[x.key!] ?? 0, uses[y.key!] ?? 0)
                if ux < uy || (ux == uy && x.lastUse < y.lastUse) { best = i }
            }
        }
        return best
    }

    func assign(_ slot: Int, to key: Key, state: State) {
        if let old = slots[slot].key { index[old] = nil }
        slots[slot].key = key
        slots[slot].state = state
        index[key] = slot
    }

    // MARK: ExpertSupplier

    public func begin(layer: Int, experts: [Int]) {
        cond.lock()
        defer { cond.unlock() }
        // Queued reads for this block it does not need, or for blocks already past, are stale.
        needed = Set(experts.map { Key(layer: layer, expert: $0) })
        queue.removeAll { job in
            let stale = job.key.layer < layer || (job.key.layer == layer && !needed.contains(job.key))
            if stale {
                index[job.key] = nil
                slots[job.slot] = Slot()
                stats[job.key.layer].prefetchesCancelled += 1
            }
            return stale
        }
    }

    public func acquire(layer: Int, expert: Int) throws -> ExpertMatrices {
        let key = Key(layer: layer, expert: expert)
        let t0 = DispatchTime.now().uptimeNanoseconds
        cond.lock()
        defer {
            stats[layer].stallSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            cond.unlock()
        }
        if let f = failure { throw f }
        clock += 1
        uses[key, default: 0] += 1
        stats[layer].demands += 1
        while let s = index[key] {
            switch slots[s].state {
            case .ready:
                stats[layer].hits += 1
                if slots[s].prefetched { stats[layer].prefetchHits += 1; slots[s].prefetched = false }
                slots[s].pins += 1
                slots[s].lastUse = clock
                return views(key, s)
            case .loading:   // the prefetch thread is reading it: wait
                cond.wait()
                if let f = failure { throw f }
                continue
            case .queued:    // not started: read it now, ahead of the queue
                queue.removeAll { $0.key == key }
                stats[layer].prefetchesCancelled += 1
                slots[s] = Slot()
                index[key] = nil
            case .empty:
                index[key] = nil
            }
        }
        // A miss: read it into a free or evicted slot, on this thread, before any read-ahead.
        var slot = victim()
        while slot == nil {
            if let job = queue.popLast() {   // a demand read before a read-ahead: take a queued one's slot
                index[job.key] = nil
                slots[job.slot] = Slot()
                stats[job.key.layer].prefetchesCancelled += 1
                slot = job.slot
                break
            }
            guard slots.contains(where: { $0.state == .loading }) else {
                throw OffloadError("[experts] every one of the \(slotCount) expert slots is in use; the pool is too small")
            }
            cond.wait()
            slot = victim()
        }
        let s = slot!
        assign(s, to: key, state: .loading)
        slots[s].pins = 1
        slots[s].prefetched = false
        cond.unlock()
        let bytes: Int
        do { bytes = try read(key, into: s) } catch {
            cond.lock()
            slots[s] = Slot(); index[key] = nil
            throw error
        }
        cond.lock()
        stats[layer].bytesRead += bytes
        slots[s].state = .ready
        slots[s].lastUse = clock
        cond.broadcast()
        return views(key, s)
    }

    public func release(layer: Int, expert: Int) {
        cond.lock()
        let key = Key(layer: layer, expert: expert)
        needed.remove(key)
        if let s = index[key], slots[s].pins > 0 { slots[s].pins -= 1 }
        cond.broadcast()
        cond.unlock()
    }

    public func prefetch(layer: Int, experts: [Int]) {
        cond.lock()
        defer { cond.unlock() }
        for e in experts {
            let key = Key(layer: layer, expert: e)
            guard index[key] == nil, let s = victim(keep: layer) else { continue }
            assign(s, to: key, state: .queued)
            slots[s].prefetched = true
            slots[s].lastUse = clock
            queue.append((key, s))
            stats[layer].prefetchesIssued += 1
        }
        cond.broadcast()
    }

    func prefetchLoop() {
        cond.lock()
        while true {
            while queue.isEmpty && !stopping { cond.wait() }
            if stopping { break }
            let job = queue.removeFirst()
            slots[job.slot].state = .loading
            cond.unlock()
            let result = Result { try read(job.key, into: job.slot) }
            cond.lock()
            switch result {
            case .success(let bytes):
                stats[job.key.layer].bytesRead += bytes
                slots[job.slot].state = .ready
            case .failure(let e):
                failure = e
                index[job.key] = nil
                slots[job.slot] = Slot()
            }
            cond.broadcast()
        }
        cond.unlock()
    }

    /// Totals over the blocks, and per block, for `generate --json`.
    public var report: [String: Any] {
        let all = stats.reduce(into: LayerStats()) { t, s in
            t.demands += s.demands; t.hits += s.hits; t.prefetchHits += s.prefetchHits
            t.prefetchesIssued += s.prefetchesIssued; t.prefetchesCancelled += s.prefetchesCancelled
            t.bytesRead += s.bytesRead; t.stallSeconds += s.stallSeconds
        }
        func json(_ s: LayerStats) -> [String: Any] {
            ["demands": s.demands, "hits": s.hits, "hit_rate": s.demands > 0 ? Double(s.hits) / Double(s.demands) : 0,
             "prefetch_issued": s.prefetchesIssued, "prefetch_used": s.prefetchHits,
             "prefetch_cancelled": s.prefetchesCancelled,
             "prefetch_precision": s.prefetchesIssued > 0 ? Double(s.prefetchHits) / Double(s.prefetchesIssued) : 0,
             "bytes_read": s.bytesRead, "stall_seconds": s.stallSeconds]
        }
        var out = json(all)
        // Recall: of the demands a prediction could have covered (every block but the first), the
        // share a read-ahead did.
        let predictable = stats.dropFirst().reduce(0) { $0 + $1.demands }
        out["prefetch_recall"] = predictable > 0 ? Double(all.prefetchHits) / Double(predictable) : 0
        out["slots"] = slotCount
        out["slot_bytes"] = slotBytes
        out["policy"] = policy.rawValue
        out["prefetch_width"] = prefetchWidth
        out["layers"] = stats.map(json)
        return out
    }
}

/// How `generate --budget` divides a budget for a mixture of experts: everything but the routed
/// experts in memory (the non-expert weights as mapped from the file, Q4_1 decode copies, the KV cache
/// for the whole context, one pass's scratch), the rest a pool of expert slots.
public struct ExpertOffloadPlan: Sendable {
    public var residentBytes: Int
    /// One slot: three regions, each the largest expert matrix plus the direct-I/O alignment.
    public var slotBytes: Int
    /// One expert's three matrices as the file holds them (the largest, where blocks differ in type).
    public var expertBytes: Int
    public var slots: Int
    public var totalExperts: Int
    /// The least budget that runs: the resident part and one token's experts.
    public var minimumBudget: Int

    public init(source: GGUFWeights, budget: Int, promptTokens: Int, contextCapacity: Int) throws {
        let c = source.config, m = c.moe!
        var weights = 0, decodeCopies = 0
        for spec in try source.storedParameterTable() {
            if isExpertTensorName(spec.name) { continue }
            let t = try source.tensor(spec.name)
            weights += t.bytes.count
            if t.dtype == .q4_1, spec.shape.count == 2, spec.name.hasPrefix("blk.") { decodeCopies += t.bytes.count }
        }
        let kv = c.layers * contextCapacity * c.kvDim * 2 * 4
        // One pass's scratch, and the next block's router logits for the read-ahead (as many as "route").
        let floats = LlamaModel.scratchFloats(config: c, rows: max(1, promptTokens), start: 0)
        let scratch = (floats.values.reduce(0, +) + (floats["route"] ?? 0)) * 4
        residentBytes = weights + decodeCopies + kv + scratch + c.vocabSize * 4
        let ranges = try ExpertCache.ranges(source)
        slotBytes = 3 * (try ExpertCache.regionBytes(ranges))
        expertBytes = ranges.flatMap { $0.map { $0.reduce(0) { $0 + $1.length } } }.max() ?? 0
        totalExperts = c.layers * m.experts
        minimumBudget = residentBytes + m.used * slotBytes
        guard budget >= minimumBudget else {
            throw OffloadError("[generate] --budget \(formatBytes(budget)) is below the least this mixture of experts runs "
                               + "in: \(formatBytes(minimumBudget)) (\(formatBytes(residentBytes)) for everything but the "
                               + "experts, context \(contextCapacity) tokens, and \(m.used) expert slots of \(formatBytes(slotBytes)))")
        }
        slots = min(totalExperts, (budget - residentBytes) / slotBytes)
    }
}
