// Expert offloading for mixture-of-experts generation: everything but the routed experts stays in
// memory; the experts live in the GGUF file and a pool of slots holds the ones in use, each read
// with direct I/O (an expert's gate, up and down matrices are three contiguous ranges). A block's
// misses are queued when its routing is known and read by a few I/O threads while its first experts
// compute (the compute thread reads one itself rather than wait); predicted experts of the next
// block are read ahead only while no demand read is pending, and queued read-aheads a block no
// longer needs are cancelled. The slots hold the file's bytes, so the products are those of the
// all-resident run, bit for bit.
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
    /// A read to do: a block's miss (`demand`), or a predicted expert of the next block.
    struct Job { var key: Key, slot: Int, demand: Bool }
    /// One matrix of one expert: where it is in the file, and its shape.
    struct MatrixRange { var offset: Int, length: Int, dtype: DType, rows: Int, cols: Int }

    /// Counts per block, for the run's report.
    public struct LayerStats: Sendable {
        public var demands = 0, hits = 0, prefetchHits = 0, prefetchesIssued = 0, prefetchesCancelled = 0
        public var bytesRead = 0
        public var stallSeconds = 0.0
        /// Seconds with at least one expert read under way (kept for the totals only): the disk's
        /// share of the run, and bytesRead over it the rate reads got.
        public var diskBusySeconds = 0.0

        mutating func add(_ s: LayerStats, sign: Int = 1) {
            demands += sign * s.demands; hits += sign * s.hits; prefetchHits += sign * s.prefetchHits
            prefetchesIssued += sign * s.prefetchesIssued; prefetchesCancelled += sign * s.prefetchesCancelled
            bytesRead += sign * s.bytesRead; stallSeconds += Double(sign) * s.stallSeconds
            diskBusySeconds += Double(sign) * s.diskBusySeconds
        }
    }

    public let policy: Policy
    public let prefetchWidth: Int
    /// I/O threads: a block's misses are read this many at a time, while its first experts compute.
    public let readers: Int
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
    /// Demand jobs first (in the order the block uses them), then read-ahead jobs.
    var queue: [Job] = []
    /// Demand reads under way (on an I/O thread or the compute thread): read-ahead waits for none.
    var demandsReading = 0
    /// Reads under way, since when there have been any, and the seconds there have been any.
    var reading = 0, busySince: UInt64 = 0, busySeconds = 0.0
    /// The experts the block being computed has not released yet: nothing evicts them.
    var needed: Set<Key> = []
    /// The block `begin` last started.
    var currentLayer = 0
    /// Misses `begin` found no slot for (every slot needed or being read), with their use's clock.
    var deferred: [Key: Int] = [:]
    let cond = NSCondition()
    var stopping = false
    var workers: [Thread] = []
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

    /// A pool of `slots` experts of `source`, read from its file by `readers` I/O threads.
    public init(source: GGUFWeights, slots: Int, policy: Policy, prefetchWidth: Int, readers: Int = 2) throws {
        let c = source.config, m = c.moe!
        guard slots >= m.used else {
            throw OffloadError("[experts] a pool of \(slots) expert slots is below the \(m.used) experts a token uses")
        }
        self.policy = policy
        self.prefetchWidth = prefetchWidth
        self.readers = max(1, readers)
        ranges = try Self.ranges(source)
        regionBytes = try Self.regionBytes(ranges)
        slotCount = min(slots, c.layers * m.experts)
        slotBytes = 3 * regionBytes
        reader = try DirectFileReader(path: source.file.path)
        memory = UnsafeMutableRawPointer.allocate(byteCount: slotCount * slotBytes, alignment: AlignedBuffer.alignment)
        self.slots = Array(repeating: Slot(), count: slotCount)
        stats = Array(repeating: LayerStats(), count: c.layers)
        for i in 0..<self.readers {
            let t = Thread { [unowned self] in self.readLoop() }
            t.name = "offload-expert-read-\(i)"
            workers.append(t)
            t.start()
        }
    }

    deinit {
        stop()
        memory.deallocate()
    }

    /// Ends the I/O threads (after the reads they are doing).
    public func stop() {
        cond.lock()
        stopping = true
        queue.removeAll()
        cond.broadcast()
        cond.unlock()
        while workers.contains(where: { !$0.isFinished }) { usleep(1000) }
        workers = []
    }

    func base(_ slot: Int) -> UnsafeMutableRawPointer { memory + slot * slotBytes }

    /// Reads `key`'s three matrices into `slot`, the three at once (a small expert's reads cost their
    /// latency, not the disk's rate); returns the bytes read.
    func read(_ key: Key, into slot: Int) throws -> Int {
        let rs = ranges[key.layer][key.expert]
        // Each matrix as whole aligned pages: where they start and how many bytes.
        let spans = rs.map { r in
            (start: AlignedBuffer.alignDown(r.offset), length: AlignedBuffer.alignUp(r.offset + r.length) - AlignedBuffer.alignDown(r.offset))
        }
        nonisolated(unsafe) let errors = UnsafeMutableBufferPointer<Error?>.allocate(capacity: rs.count)
        errors.initialize(repeating: nil)
        defer { errors.deallocate() }
        DispatchQueue.concurrentPerform(iterations: rs.count) { i in
            let r = rs[i], span = spans[i]
            precondition(span.length <= regionBytes)
            do {
                try reader.read(into: base(slot) + i * regionBytes, offset: span.start, length: span.length,
                                needed: r.offset + r.length - span.start, what: "expert \(key.expert) of block \(key.layer)")
            } catch { errors[i] = error }
        }
        if let e = errors.compactMap({ $0 }).first { throw e }
        return spans.reduce(0) { $0 + $1.length }
    }

    /// Reads `job` with the lock released; marks its slot ready (or records the failure). Called locked.
    func run(_ job: Job) {
        slots[job.slot].state = .loading
        if job.demand { demandsReading += 1 }
        if reading == 0 { busySince = DispatchTime.now().uptimeNanoseconds }
        reading += 1
        cond.unlock()
        let result = Result { try read(job.key, into: job.slot) }
        cond.lock()
        reading -= 1
        if reading == 0 { busySeconds += Double(DispatchTime.now().uptimeNanoseconds - busySince) / 1e9 }
        if job.demand { demandsReading -= 1 }
        switch result {
        case .success(let bytes):
            stats[job.key.layer].bytesRead += bytes
            slots[job.slot].state = .ready
        case .failure(let e):
            failure = failure ?? e
            index[job.key] = nil
            slots[job.slot] = Slot()
        }
        cond.broadcast()
    }

    func views(_ key: Key, _ slot: Int) -> ExpertMatrices {
        let m = ranges[key.layer][key.expert].enumerated().map { i, r in
            WeightMatrix(data: UnsafeRawPointer(base(slot) + i * regionBytes + (r.offset - AlignedBuffer.alignDown(r.offset))),
                         dtype: r.dtype, rows: r.rows, cols: r.cols)
        }
        return ExpertMatrices(gate: m[0], up: m[1], down: m[2])
    }

    /// A slot to (re)use, by the policy, among those neither needed by the block, in use, nor being
    /// read; nil if none. `keep`: a layer whose read-ahead experts are not to be evicted (a
    /// prefetch for it).
    /// `anyNeeded`: a block's expert not yet used may go too (the last resort of a pool smaller than the
    /// block's experts; it is read again when its turn comes).
    func victim(keep layer: Int? = nil, anyNeeded: Bool = false) -> Int? {
        func info(_ s: Slot) -> (layer: Int, lastUse: Int, uses: Int) { (s.key!.layer, s.lastUse, uses[s.key!] ?? 0) }
        var best: Int?
        for (i, s) in slots.enumerated() where s.pins == 0 && (s.state == .empty || s.state == .ready) {
            if s.state == .empty { return i }
            if !anyNeeded, needed.contains(s.key!) { continue }
            if let layer, s.key?.layer == layer, s.prefetched { continue }
            guard let b = best else { best = i; continue }
            if policy.evicts(info(s), before: info(slots[b]), current: currentLayer, layers: ranges.count) { best = i }
        }
        return best
    }

    func assign(_ slot: Int, to key: Key, state: State) {
        if let old = slots[slot].key { index[old] = nil }
        slots[slot].key = key
        slots[slot].state = state
        index[key] = slot
    }

    func cancel(_ job: Job) {
        index[job.key] = nil
        slots[job.slot] = Slot()
        stats[job.key.layer].prefetchesCancelled += 1
    }

    // MARK: ExpertSupplier

    /// Counts the block's demands (a hit: resident, or read ahead and under way) and queues its
    /// misses as demand reads, ahead of every read-ahead, each into a slot the block does not need.
    public func begin(layer: Int, experts: [Int]) {
        cond.lock()
        defer { cond.unlock() }
        let keys = experts.map { Key(layer: layer, expert: $0) }
        needed = Set(keys)
        currentLayer = layer
        deferred = [:]
        // Queued read-aheads for this block it does not need, or for blocks already past, are stale.
        queue.removeAll { job in
            let stale = !job.demand && (job.key.layer < layer || (job.key.layer == layer && !needed.contains(job.key)))
            if stale { cancel(job) }
            return stale
        }
        var demandJobs = queue.filter(\.demand).count
        for key in keys {
            clock += 1
            uses[key, default: 0] += 1
            stats[layer].demands += 1
            if let s = index[key] {
                if slots[s].state == .queued, let q = queue.firstIndex(where: { $0.key == key }) {
                    // Read ahead but not started: now a demand read (a miss).
                    queue.remove(at: q)
                    queue.insert(Job(key: key, slot: s, demand: true), at: demandJobs)
                    demandJobs += 1
                    slots[s].prefetched = false
                    stats[layer].prefetchesCancelled += 1
                } else {
                    stats[layer].hits += 1
                    if slots[s].prefetched { stats[layer].prefetchHits += 1; slots[s].prefetched = false }
                }
                slots[s].lastUse = clock
            } else if let s = victim() {
                assign(s, to: key, state: .queued)
                slots[s].lastUse = clock
                slots[s].prefetched = false
                queue.insert(Job(key: key, slot: s, demand: true), at: demandJobs)
                demandJobs += 1
            } else {
                deferred[key] = clock
            }
        }
        cond.broadcast()
    }

    public func acquire(layer: Int, expert: Int) throws -> ExpertMatrices {
        let key = Key(layer: layer, expert: expert)
        let t0 = DispatchTime.now().uptimeNanoseconds
        cond.lock()
        defer {
            stats[layer].stallSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            cond.unlock()
        }
        while true {
            if let f = failure { throw f }
            if let s = index[key] {
                switch slots[s].state {
                case .ready:
                    slots[s].pins += 1
                    return views(key, s)
                case .queued:   // no I/O thread has started it: read it here
                    queue.removeAll { $0.key == key }
                    run(Job(key: key, slot: s, demand: true))
                case .loading, .empty:
                    cond.wait()
                }
                continue
            }
            // A miss `begin` had no slot for: one is free once an earlier expert of the block is released,
            // else (every slot holds one of the block's later experts) one of those goes.
            let inFlight = slots.contains { $0.state == .loading || $0.state == .queued }
            guard let s = victim() ?? (inFlight ? nil : victim(anyNeeded: true)) else {
                guard inFlight else {
                    throw OffloadError("[experts] every one of the \(slotCount) expert slots is in use; the pool is too small")
                }
                cond.wait()
                continue
            }
            assign(s, to: key, state: .queued)
            slots[s].lastUse = deferred.removeValue(forKey: key) ?? clock
            slots[s].prefetched = false
            run(Job(key: key, slot: s, demand: true))
        }
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
            queue.append(Job(key: key, slot: s, demand: false))
            stats[layer].prefetchesIssued += 1
        }
        cond.broadcast()
    }

    /// An I/O thread: demand reads first; a read-ahead only while no demand read is queued or under way,
    /// so predictions never hold the disk from a block's misses.
    func readLoop() {
        cond.lock()
        while true {
            if stopping { break }
            // Demand jobs are at the front of the queue.
            if let job = queue.first, job.demand || demandsReading == 0 {
                run(queue.removeFirst())
            } else {
                cond.wait()
            }
        }
        cond.unlock()
    }

    /// The counts summed over the blocks.
    public var totals: LayerStats {
        cond.lock()
        defer { cond.unlock() }
        var t = stats.reduce(into: LayerStats()) { $0.add($1) }
        t.diskBusySeconds = busySeconds
        return t
    }

    /// Totals over the blocks, and per block, for `generate --json`; with `since` (the totals at the
    /// end of the prefill), also the decode's own counts.
    public func report(since prefill: LayerStats? = nil) -> [String: Any] {
        let all = totals
        func json(_ s: LayerStats) -> [String: Any] {
            ["demands": s.demands, "hits": s.hits, "hit_rate": s.demands > 0 ? Double(s.hits) / Double(s.demands) : 0,
             "prefetch_issued": s.prefetchesIssued, "prefetch_used": s.prefetchHits,
             "prefetch_cancelled": s.prefetchesCancelled,
             "prefetch_precision": s.prefetchesIssued > 0 ? Double(s.prefetchHits) / Double(s.prefetchesIssued) : 0,
             "bytes_read": s.bytesRead, "stall_seconds": s.stallSeconds]
        }
        var out = json(all)
        out["disk_busy_seconds"] = all.diskBusySeconds
        // Recall: of the demands a prediction could have covered (every block but the first), the
        // share a read-ahead did.
        let predictable = stats.dropFirst().reduce(0) { $0 + $1.demands }
        out["prefetch_recall"] = predictable > 0 ? Double(all.prefetchHits) / Double(predictable) : 0
        out["slots"] = slotCount
        out["slot_bytes"] = slotBytes
        out["policy"] = policy.rawValue
        out["prefetch_width"] = prefetchWidth
        out["readers"] = readers
        out["layers"] = stats.map(json)
        if let prefill {
            var d = all
            d.add(prefill, sign: -1)
            out["decode"] = json(d).merging(["disk_busy_seconds": d.diskBusySeconds]) { a, _ in a }
        }
        return out
    }
}

/// How `generate --budget` divides a budget for a mixture of experts: everything but the routed
/// experts in memory (the non-expert weights as mapped from the file, Q4_1 decode copies, the KV cache
/// for the whole context, one pass's scratch), the rest a pool of expert slots.
public struct ExpertOffloadPlan: Sendable {
    public var residentBytes: Int
    /// The weights among them (everything but the experts, as the file holds them).
    public var weightBytes: Int
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
        weightBytes = weights
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
