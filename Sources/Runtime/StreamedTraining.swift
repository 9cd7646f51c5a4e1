// Training with parameters, gradients and AdamW state off compute memory (placement
// `stream`, ZeRO-Infinity style on the CPU): weights, m and v of every parameter
// unit live in the disk store between steps; a step reads each unit's weights in
// when its forward needs them and again for its backward, and updates a unit as
// soon as its gradient is complete (m and v read in, in parts, then w, m and v
// written back), so a step holds a few units, one block's activations and the
// trainer's scratch, whatever the model's size. Units: the token embedding (and an
// untied output matrix) in the head's vocabulary chunks, each block's two halves
// (attention; feed-forward), the final norm. Activations (`StreamedActivations`):
// every half's go to disk in the forward and come back for its backward, or only
// block inputs are kept (in memory, or on disk when the budget is small) and every
// block's forward is recomputed in its backward. Halves halve what one backward
// holds: the feed-forward half's activations, weights and gradient, while the
// attention half's are read ahead.
//
// The trainer decides none of this: it runs the plan's Schedule (Planning's
// `StreamedTrainingPlan.simulation`, the one `offload plan` simulates) op by op. Each
// compute op's `action` says which kernels run on its buffers; reads are issued where
// the schedule issues them (later only when the machine lags the schedule's timing:
// a write back not done, no room yet); writes drain behind, each freeing its buffer
// once on disk. Everything is allocated from one MemoryTier whose limit is the budget
// minus the trainer's scratch. Same kernels, same calls, same order of every sum as the
// in-memory step: the losses, gradient norms and updated weights are bit-identical.
// Not here: gradient clipping and accumulation (they need every gradient before
// any update), SGD.

import Foundation
import Kernels
import Memory
import Models
import Planning
import Tensors

/// What one streamed step did.
public struct StreamedStep: Sendable {
    public var loss: Float
    public var gradNorm: Double
    public var seconds: Double
    /// Peak of the budget: the trainer's scratch plus the tier's peak.
    public var peakComputeBytes: Int
    public var bytesRead: Int
    public var bytesWritten: Int
    /// Allocations so far that the tier's arena could not place (each adds resident memory beyond
    /// the budget while it lives; see `MemoryTier(arena:)`).
    public var arenaMisses: Int
}

public final class StreamedTrainer {
    public let trainer: LlamaTrainer
    public let optimizer: AdamW
    /// The placement this trainer executes: units, reserves, activations, read order (Planning's).
    public let plan: StreamedTrainingPlan
    /// The step this trainer runs, op by op: the plan's schedule as the simulator ran it on `hardware`.
    public let schedule: Schedule
    /// What the simulator predicts for `schedule` (peak of the tier, without the trainer's scratch; time).
    public let simulation: Simulation
    public var budget: Int { plan.budget }
    public let memory: MemoryTier
    public let disk: DiskStore
    public let trace: TraceRecorder?
    let engine: TransferEngine
    public var activations: StreamedActivations { plan.activations }
    public var offloadsActivations: Bool { plan.offloadsActivations }
    public var keepsInputs: Bool { plan.keepsInputs }
    public var minimumBudget: Int { plan.minimumBudget }
    public var keptLogitChunks: Int { plan.keptLogitChunks }
    /// Optimizer steps done (AdamW's t).
    public private(set) var steps = 0

    public var embeddingUnits: [ParameterUnit] { plan.embeddingUnits }
    public var blockUnits: [ParameterUnit] { plan.blockUnits }
    public var normUnit: ParameterUnit { plan.normUnit }
    public var outputUnits: [ParameterUnit] { plan.outputUnits }
    public var units: [ParameterUnit] { plan.units }
    let unitsByName: [String: ParameterUnit]
    /// Exact bytes of the schedule's buffers, by name (a read's by its name on disk).
    let bufferBytes: [String: Int]
    /// The step's memory events between compute ops, in the simulation's order (`memoryPlan`).
    let memoryPlan: [(after: Int, event: PlannedEvent)]

    var config: LlamaConfig { trainer.model.config }
    var n: Int { trainer.batch * trainer.seqLen }
    func blockUnit(_ l: Int, _ h: BlockHalf) -> ParameterUnit { plan.blockUnit(l, h) }

    /// - Parameters:
    ///   - trainer: built with `ownsActivations: false` over a non-resident model, at the plan's
    ///     batch and sequence length.
    ///   - hardware: the profile the plan's schedule is timed with: where it issues each read.
    public init(trainer: LlamaTrainer, optimizer: AdamW, plan: StreamedTrainingPlan, disk: DiskStore,
                hardware: HardwareProfile = .defaultCPU, trace: TraceRecorder? = nil) throws {
        guard !trainer.ownsActivations, !trainer.model.isResident else {
            throw OffloadError("[stream] the trainer must own no activations and its model no parameters")
        }
        guard trainer.batch == plan.batch, trainer.seqLen == plan.seqLen, trainer.headChunkRows == plan.headChunkRows,
              trainer.activationBytes == plan.scratchBytes else {
            throw OffloadError("[stream] internal: the plan is for another trainer shape")
        }
        self.trainer = trainer; self.optimizer = optimizer; self.plan = plan; self.disk = disk; self.trace = trace
        (schedule, simulation) = try plan.simulation(hardware: hardware)
        unitsByName = Dictionary(uniqueKeysWithValues: plan.units.map { ($0.name, $0) })
        bufferBytes = plan.bufferBytes
        memoryPlan = Self.memoryPlan(schedule: schedule, simulation: simulation, bufferBytes: bufferBytes)
        // What the simulated step holds at most: the executor never holds more, whatever the disk's timing.
        memory = MemoryTier(.compute, limit: simulation.peak[.compute] ?? plan.budget - plan.scratchBytes, trace: trace,
                            arena: true)
        engine = TransferEngine(memory: memory, disk: disk, trace: trace)
    }

    /// Plans the step for `budget` (Planning's `StreamedTrainingPlan`) and builds its executor.
    public convenience init(trainer: LlamaTrainer, optimizer: AdamW, budget: Int, disk: DiskStore,
                            hardware: HardwareProfile = .defaultCPU, trace: TraceRecorder? = nil,
                            activations: StreamedActivations? = nil, partBytes: Int = 4 << 20) throws {
        let plan: StreamedTrainingPlan
        do {
            plan = try StreamedTrainingPlan(config: trainer.model.config, batch: trainer.batch, seqLen: trainer.seqLen,
                                            budget: budget, activations: activations, partBytes: partBytes,
                                            headChunk: trainer.headChunkRows)
        } catch { throw OffloadError("[stream] \(error)") }
        try self.init(trainer: trainer, optimizer: optimizer, plan: plan, disk: disk, hardware: hardware, trace: trace)
    }

    static func key(_ role: String, _ unit: ParameterUnit, part p: Int? = nil) -> String {
        StreamedTrainingPlan.key(role, unit, part: p)
    }

    // MARK: setting up and reading out

    /// Writes every unit's weights (`fill("w", unit, buffer)`) and optimizer state (`fill("m" / "v",
    /// ...)`; left untouched, zeros: a fresh optimizer) to the disk store, unit by unit; `done`
    /// optimizer steps were taken before (a resumed run).
    public func initialize(steps done: Int = 0,
                           fill: (_ role: String, _ unit: ParameterUnit, _ into: UnsafeMutablePointer<Float>) throws -> Void) throws {
        for u in units {
            for role in ["w", "m", "v"] {
                let b = try allocate("\(role) \(u.name)", bytes: u.bytes)
                let p = b.baseAddress.assumingMemoryBound(to: Float.self)
                p.update(repeating: 0, count: u.floats)
                try fill(role, u, p)
                if role == "w" {
                    try write(Self.key("w", u), b)
                } else {
                    for (i, r) in u.parts.enumerated() {
                        let part = try allocate("\(role) \(u.name).\(i)", bytes: r.count * 4)
                        part.baseAddress.assumingMemoryBound(to: Float.self).update(from: p + r.lowerBound, count: r.count)
                        try write(Self.key(role, u, part: i), part)
                    }
                    b.free()
                }
            }
        }
        try drainWrites()
        steps = done
    }

    /// The parameters unit `u` holds, in table order: each entry, the elements of it in the unit,
    /// and where they start in the unit.
    public func pieces(of u: ParameterUnit) -> [(entry: ParameterLayout.Entry, elements: Range<Int>, at: Int)] {
        trainer.model.layout.entries.compactMap { e in
            let start = max(e.offset, u.offset), end = min(e.offset + e.elements, u.offset + u.floats)
            return start < end ? (e, start - e.offset ..< end - e.offset, start - u.offset) : nil
        }
    }

    /// Initial weights drawn as `TrainableLlama.random(config:seed:)` draws them; fresh optimizer.
    public func initializeRandom(seed: UInt64) throws {
        var rng = SeededGenerator(seed: seed)
        let c = config
        try initialize { role, u, p in
            guard role == "w" else { return }
            for (e, r, at) in pieces(of: u) { TrainableLlama.randomFill(e, config: c, elements: r, into: p + at, rng: &rng) }
        }
    }

    /// Initial weights from a model file (dequantized to fp32); fresh optimizer. The file's pages
    /// are dropped from resident memory after each unit, so its mapping never holds more than one
    /// unit's source bytes.
    public func initialize(from source: WeightSource) throws {
        try source.validateTensors()
        try initialize { role, u, p in
            guard role == "w" else { return }
            for (e, r, at) in pieces(of: u) { try TrainableLlama.load(e, from: source, elements: r, into: p + at) }
            source.dropResidentPages()
        }
    }

    /// Reads `role` ("w", "m", "v") of every unit in turn and hands it to `body` (unit floats).
    public func forEachUnit(_ role: String, _ body: (ParameterUnit, UnsafePointer<Float>) throws -> Void) throws {
        for u in units {
            let b = try allocate("\(role) \(u.name)", bytes: u.bytes)
            defer { b.free() }
            let p = b.baseAddress.assumingMemoryBound(to: Float.self)
            if role == "w" {
                try disk.read(Self.key("w", u), into: b.storage)
            } else {
                for (i, r) in u.parts.enumerated() {
                    let part = try allocate("\(role) \(u.name).\(i)", bytes: r.count * 4)
                    defer { part.free() }
                    try disk.read(Self.key(role, u, part: i), into: part.storage)
                    (p + r.lowerBound).update(from: part.baseAddress.assumingMemoryBound(to: Float.self), count: r.count)
                }
            }
            try body(u, p)
        }
    }

    // MARK: memory and transfers

    var bytesRead = 0, bytesWritten = 0
    /// Writes in the order they were issued; each frees its buffer once on disk.
    var writeOrder: [TransferHandle] = []
    /// The latest write of each name on disk.
    var pendingWrites: [String: TransferHandle] = [:]

    func allocate(_ name: String, bytes: Int) throws -> TierBuffer {
        while true {
            do { return try memory.allocate(name, bytes: bytes) } catch {
                if try !drainOneWrite() {
                    throw OffloadError("[stream] \(error) (budget \(formatBytes(budget)), of which the trainer's scratch "
                                       + "\(formatBytes(trainer.activationBytes)))")
                }
            }
        }
    }

    /// Writes `b` as `name`; the buffer is freed once on disk.
    func write(_ name: String, _ b: TierBuffer) throws {
        if let h = pendingWrites[name] { try h.wait() }
        let h = try engine.write(name, from: b)
        pendingWrites[name] = h
        writeOrder.append(h)
        bytesWritten += b.byteCount
    }

    /// Waits for the oldest write still holding memory and frees its buffer; false when none.
    @discardableResult
    func drainOneWrite() throws -> Bool {
        guard !writeOrder.isEmpty else { return false }
        let h = writeOrder.removeFirst()
        try h.wait()
        h.buffer.free()
        if pendingWrites[h.name] === h { pendingWrites[h.name] = nil }
        return true
    }

    func pollWrites() throws {
        while let h = writeOrder.first, h.isComplete { try drainOneWrite() }
    }

    func drainWrites() throws { while try drainOneWrite() {} }

    // MARK: the step: the schedule, op by op

    /// A read: `landing` (its buffer's name) from `disk`; `buffer` once allocated, `handle` once issued.
    final class Read {
        let disk: String, landing: String, bytes: Int
        var buffer: TierBuffer?
        var handle: TransferHandle?
        init(disk: String, landing: String, bytes: Int) { self.disk = disk; self.landing = landing; self.bytes = bytes }
    }
    /// What happens to memory between compute ops, at the simulated time it happens: a read's buffer is
    /// allocated as it is issued; a written buffer is freed once on disk.
    enum MemoryEvent { case issue(Read), freeWritten(String) }
    /// The step's memory events in the simulation's order, each to be done after compute op `after` (its
    /// ordinal among the step's compute ops; -1: before the first; see `memoryPlan`); `nextEvent` is the first
    /// not done yet.
    var events: [(after: Int, event: MemoryEvent)] = []
    var nextEvent = 0
    /// Frees done ahead of a read that waits for room (indices into `events`).
    var freedEarly = Set<Int>()
    /// Reads allocated and not yet issued to the disk (their tensor's write is not done), in order.
    var waiting: [Read] = []
    var reads: [String: Read] = [:]
    /// Buffers by the schedule's names: compute buffers and landed reads.
    var live: [String: TierBuffer] = [:]
    /// Buffers handed to a write, freed when the schedule frees them (once on disk).
    var writing: [String: TransferHandle] = [:]
    /// The landing of each name on disk taken last (a unit's weights are read twice a step).
    var latest: [String: String] = [:]
    /// Landings whose copy on disk goes once they have arrived (tensors this step wrote).
    var removeOnArrival = Set<String>()

    /// Does the memory events the simulation has happen after compute op `ordinal` ended: the compute
    /// tier then holds what the simulated one holds.
    ///
    /// Where the disk is behind the profile's timing, the compute does not wait for it: a written buffer
    /// the schedule frees stays until its write is done, and the reads after it in the schedule's order
    /// wait until the tier has room (the tier's limit is the simulated peak). `force`: the compute needs
    /// a read now, so writes are waited for until it has room.
    func advance(through ordinal: Int, force: Bool = false) throws {
        try pollWrites()
        func free(_ name: String) throws {
            guard let h = writing.removeValue(forKey: name) else {
                // Logits that found no room of their own were written from the shared buffer at once.
                if name.hasPrefix("l.") { return }
                throw OffloadError("[stream] internal: the schedule frees \(name), which is not being written")
            }
            if h.isComplete { h.buffer.free() } else { writeOrder.append(h) }   // freed once on disk
        }
        while nextEvent < events.count, events[nextEvent].after <= ordinal {
            if freedEarly.remove(nextEvent) != nil { nextEvent += 1; continue }
            switch events[nextEvent].event {
            case .issue(let r):
                if let b = try? memory.allocate(r.landing, bytes: r.bytes) {
                    r.buffer = b
                } else if force {
                    r.buffer = try allocate(r.landing, bytes: r.bytes)
                } else {
                    // The frees due by now still happen (their buffers go once on disk), so what the
                    // compute allocates meanwhile can wait for them.
                    for j in nextEvent + 1 ..< events.count where events[j].after <= ordinal && !freedEarly.contains(j) {
                        if case .freeWritten(let name) = events[j].event { try free(name); freedEarly.insert(j) }
                    }
                    try issueWaiting()
                    return
                }
                waiting.append(r)
            case .freeWritten(let name):
                try free(name)
            }
            nextEvent += 1
        }
        try issueWaiting()
    }

    /// Issues allocated reads in order while each one's tensor is on disk (its write back done).
    func issueWaiting(force: Bool = false) throws {
        while let r = waiting.first {
            if let w = pendingWrites[r.disk] {
                guard force || w.isComplete else { return }
                try w.wait()
            }
            r.handle = try engine.read(r.disk, into: r.buffer!)
            bytesRead += r.bytes
            waiting.removeFirst()
        }
    }

    /// The read landing as `landing`, waited for.
    func take(_ landing: String) throws -> TierBuffer {
        guard let r = reads[landing] else { throw OffloadError("[stream] internal: \(landing) is taken but never read") }
        // Issued by the schedule before the op that takes it; the simulator's times can only tie here.
        while r.buffer == nil, nextEvent < events.count { try advance(through: events[nextEvent].after, force: true) }
        while r.handle == nil, !waiting.isEmpty { try issueWaiting(force: true) }
        guard let h = r.handle else { throw OffloadError("[stream] internal: \(landing) is taken before it is read") }
        if let trace, !h.isComplete {
            try trace.measure("wait \(h.name)", stream: "compute") { try h.wait() }
        } else {
            try h.wait()
        }
        reads[landing] = nil
        if removeOnArrival.remove(landing) != nil { disk.remove(h.name) }
        live[landing] = h.buffer
        latest[h.name] = landing
        return h.buffer
    }

    func buffer(_ name: String) throws -> TierBuffer {
        guard let b = live[name] else { throw OffloadError("[stream] internal: the schedule uses \(name), which is not in memory") }
        return b
    }

    func floats(_ b: TierBuffer) -> UnsafeMutablePointer<Float> { b.baseAddress.assumingMemoryBound(to: Float.self) }
    func floats(_ name: String) throws -> UnsafeMutablePointer<Float> { floats(try buffer(name)) }
    /// The latest read of `disk` (a unit's weights: "w.NAME").
    func landed(_ disk: String) throws -> UnsafeMutablePointer<Float> {
        guard let l = latest[disk] else { throw OffloadError("[stream] internal: \(disk) was not read") }
        return try floats(l)
    }

    /// Where unit `u`'s parameters are for the trainer's calls: its weights at `w`, its gradient at `g`.
    func bases(_ u: ParameterUnit, _ w: UnsafeMutablePointer<Float>, _ g: UnsafeMutablePointer<Float>? = nil) -> ParameterBases {
        ParameterBases(stageStart: u.offset, weights: w, gradients: g ?? w)
    }

    func span<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
        guard let trace else { return try body() }
        let start = trace.now()
        defer { trace.span(name, stream: "compute", since: start) }
        return try body()
    }

    /// One optimizer step on `inputs` / `targets` (B·T ids each) at learning rate `lr`.
    public func step(inputs: [Int], targets: [Int], lr: Float) throws -> StreamedStep {
        let t0 = Date()
        memory.resetPeak()
        bytesRead = 0; bytesWritten = 0
        try trainer.setBatch(inputs: inputs, targets: targets)
        do {
            let (loss, norm) = try run(lr: lr, t: steps + 1)
            try drainWrites()
            steps += 1
            return StreamedStep(loss: loss, gradNorm: norm, seconds: Date().timeIntervalSince(t0),
                                peakComputeBytes: trainer.activationBytes + memory.stats.peak,
                                bytesRead: bytesRead, bytesWritten: bytesWritten, arenaMisses: memory.arenaMisses)
        } catch {
            try? engine.waitAll()
            while (try? drainOneWrite()) == true {}
            for b in live.values { b.free() }
            for h in writing.values { h.buffer.free() }
            for r in reads.values { r.buffer?.free() }
            events = []; waiting = []; reads = [:]; live = [:]; writing = [:]; removeOnArrival = []
            throw error
        }
    }

    /// Sums of squares of the gradients per parameter, in table order once complete.
    var sums: [String: Double] = [:]

    /// Adds unit `u`'s gradient (at `g`) to the per-parameter sums; throws when one is not finite.
    func addSums(_ u: ParameterUnit, _ g: UnsafePointer<Float>, step t: Int, loss: Float) throws {
        for (e, r, at) in pieces(of: u) {
            let s = sumOfSquares(g + at, r.count, adding: sums[e.name] ?? 0)
            sums[e.name] = s
            guard s.isFinite else {
                throw OffloadError("[train] step \(t): the gradient of \(e.name) is not finite (loss \(loss)); stopping. "
                                   + "Streamed parameters updated earlier in this step were changed: resume from the last checkpoint")
            }
        }
    }

    /// A memory event of the step as planned: a read (its name on disk, its buffer's name, its bytes)
    /// issued, or a written buffer freed once on disk.
    enum PlannedEvent { case issue(disk: String, landing: String, bytes: Int), freeWritten(String) }

    /// The memory events between compute ops of `schedule` as `simulation` has them, each with the
    /// compute op (ordinal) it comes after: what every step does, worked out once.
    static func memoryPlan(schedule: Schedule, simulation: Simulation,
                           bufferBytes: [String: Int]) -> [(after: Int, event: PlannedEvent)] {
        let times = Dictionary(uniqueKeysWithValues: simulation.ops.map { ($0.id, $0) })
        // The memory events, from the schedule: a read's reservation (host stream) starts as the read is
        // issued; a written buffer's free (write stream, compute tier) ends once it is on disk.
        var reservation: [String: Double] = [:]
        var timed: [(time: Double, event: PlannedEvent)] = []
        for op in schedule.operations {
            switch (op.stream, op.kind) {
            case (.host, _):
                reservation[op.creates[0]] = times[op.id]!.start
            case (.read, .prefetch):
                let landing = op.creates[0]
                timed.append((reservation["issued " + landing]!, .issue(disk: op.reads[0], landing: landing,
                                                                         bytes: bufferBytes[op.reads[0]]!)))
            case (.write, .free) where op.tier == .compute:
                for n in op.frees { timed.append((times[op.id]!.end, .freeWritten(n))) }
            default: break
            }
        }
        // The executor does nothing while a compute op runs, so each event goes between two compute ops:
        // before the first op that starts once it happened in the simulation, and, for an event during an
        // op, after that op. A written buffer's free at the very instant an op starts goes before it; a
        // read's allocation then goes before it only if the op takes time (an op of no time only frees or
        // only allocates, and the read may have waited for its frees). Between two compute ops, events go
        // in the simulation's time order, frees first at one instant. So the tier never holds more than
        // the simulated one, and at the simulated peak it holds the same.
        let computes = schedule.operations.filter { $0.stream == .compute }.map { times[$0.id]! }
        let eps = 1e-12
        func slot(_ t: Double, free: Bool) -> Int {
            func before(_ c: SimulatedOp) -> Bool {
                free ? c.start >= t - eps : c.start > t + eps || (abs(c.start - t) <= eps && c.end > c.start + eps)
            }
            var lo = 0, hi = computes.count
            while lo < hi { let m = (lo + hi) / 2; if before(computes[m]) { hi = m } else { lo = m + 1 } }
            return lo - 1
        }
        return timed.enumerated().map { i, e -> (after: Int, free: Bool, time: Double, index: Int, event: PlannedEvent) in
            let free: Bool
            if case .freeWritten = e.event { free = true } else { free = false }
            return (slot(e.time, free: free), free, e.time, i, e.event)
        }.sorted { a, b in
            if a.after != b.after { return a.after < b.after }
            if a.time != b.time { return a.time < b.time }
            if a.free != b.free { return a.free }
            return a.index < b.index
        }.map { ($0.after, $0.event) }
    }

    /// The schedule, op by op: each compute op when the one before it is done, its buffers allocated
    /// before it runs and freed after; writes issued as the schedule issues them; reads allocated and
    /// issued, and written buffers freed, in the simulation's order between compute ops. So the tier
    /// holds what the simulated tier holds while the disk keeps the profile's pace, and less when it lags
    /// (`advance`).
    func run(lr: Float, t: Int) throws -> (Float, Double) {
        sums = [:]; latest = [:]; reads = [:]; events = []; nextEvent = 0; freedEarly = []
        // The step's reads and memory events, from the plan made at init.
        for (after, event) in memoryPlan {
            switch event {
            case .issue(let disk, let landing, let bytes):
                let r = Read(disk: disk, landing: landing, bytes: bytes)
                reads[landing] = r
                events.append((after, .issue(r)))
            case .freeWritten(let name):
                events.append((after, .freeWritten(name)))
            }
        }
        var loss = Float.nan
        var recomputed: BlockActivations?
        var lastRead = "", ordinal = 0
        for op in schedule.operations {
            switch (op.stream, op.kind) {
            case (.host, _), (.write, .free), (.read, .free) where op.tier == .compute:
                continue
            case (.read, .prefetch):
                lastRead = op.creates[0]
            case (.read, .free):
                // A tensor this step wrote goes from disk once read back.
                removeOnArrival.insert(lastRead)
            case (.write, .offload):
                let source = op.reads[0], name = op.creates[0]
                if source == "logits" || (source.hasPrefix("l.") && live[source] == nil) {
                    // A head chunk's logits computed in the shared buffer: on disk before the next chunk uses it.
                    let h = try engine.write(name, from: try buffer("logits"))
                    bytesWritten += h.buffer.byteCount
                    try h.wait()
                } else {
                    let b = try buffer(source)
                    live[source] = nil
                    if let h = pendingWrites[name] { try h.wait() }
                    let h = try engine.write(name, from: b)
                    pendingWrites[name] = h
                    writing[source] = h
                    bytesWritten += b.byteCount
                }
            case (.compute, _):
                guard let action = op.action else { throw OffloadError("[stream] internal: op #\(op.id) says nothing to run") }
                try advance(through: ordinal - 1)
                ordinal += 1
                var took: [TierBuffer] = []
                for r in op.reads { took.append(try take(r)) }
                for name in op.creates {
                    guard let bytes = bufferBytes[name] else { throw OffloadError("[stream] internal: no size for \(name)") }
                    if name.hasPrefix("l.") {
                        // Logits of their own only when the tier has room; else the shared buffer.
                        if let b = try? memory.allocate(name, bytes: bytes) { live[name] = b }
                        continue
                    }
                    let b = try allocate(name, bytes: bytes)
                    if name.hasPrefix("g ") { floats(b).update(repeating: 0, count: bytes / 4) }
                    live[name] = b
                }
                if let l = try execute(action, took: took, loss: loss, recomputed: &recomputed, lr: lr, t: t) { loss = l }
                for name in op.frees { live.removeValue(forKey: name)?.free() }
                try issueWaiting()
            default:
                throw OffloadError("[stream] internal: op #\(op.id) (\(op.kind.rawValue) on \(op.stream.rawValue)) is not one this executor runs")
            }
        }
        try advance(through: .max, force: true)
        try drainWrites()
        guard live.isEmpty, reads.isEmpty, writing.isEmpty else {
            throw OffloadError("[stream] internal: the step ended holding "
                               + (live.keys.sorted() + reads.keys.sorted() + writing.keys.sorted()).joined(separator: ", "))
        }
        let total = trainer.model.layout.entries.reduce(0.0) { $0 + (sums[$1.name] ?? 0) }
        return (loss, total.squareRoot())
    }

    /// Runs one compute op's kernels on its buffers; returns the loss once the head's pass 1 is complete.
    func execute(_ action: StepAction, took: [TierBuffer], loss: Float, recomputed: inout BlockActivations?,
                 lr: Float, t: Int) throws -> Float? {
        let c = config, tied = outputUnits.isEmpty, headUnits = tied ? embeddingUnits : outputUnits
        func acts(_ attention: UnsafeMutablePointer<Float>, _ ffn: UnsafeMutablePointer<Float>) -> BlockActivations {
            BlockActivations(attention: attention, ffn: ffn, config: c, batch: trainer.batch, seqLen: trainer.seqLen)
        }
        switch action {
        case .memory:
            break
        case .embeddingForward(let k):
            let x = try floats("x.0")
            span("forward embd.\(k)") { trainer.embeddingForward(output: x, vocabulary: trainer.headChunk(k), table: floats(took[0])) }
        case .attentionForward(let l):
            let u = blockUnit(l, .attention), x = try floats("x.\(l)")
            var a = acts(try floats("acts \(u.name)"), try floats("acts \(blockUnit(l, .ffn).name)"))
            // Offloading, the input goes with the attention half's activations (their first slot); recomputing,
            // it is kept as it is.
            if offloadsActivations { a.attnIn.update(from: x, count: n * c.dim) } else { a.attnIn = x }
            span("forward \(u.name)") { trainer.blockAttentionForward(l, saving: a, parameters: bases(u, floats(took[0]))) }
        case .ffnForward(let l):
            let u = blockUnit(l, .ffn), ffn = try floats("acts \(u.name)")
            // The attention half's activations may be on their way to disk: only the feed-forward half's are used.
            var a = acts(live["acts \(blockUnit(l, .attention).name)"].map(floats) ?? ffn, ffn)
            if !offloadsActivations { a.attnIn = try floats("x.\(l)") }
            let out = try floats("x.\(l + 1)")
            span("forward \(u.name)") { trainer.blockFFNForward(l, output: out, saving: a, parameters: bases(u, floats(took[0]))) }
        case .headNorm:
            trainer.headNormForward(input: try floats("x.\(c.layers)"), norm: try floats("head norm"), rstd: try floats("head rstd"),
                                    weights: floats(took[0]))
        case .headForward(let k):
            let out = try live["l.\(k)"].map(floats) ?? floats("logits"), norm = try floats("head norm")
            span("head pass 1 chunk \(k)") { trainer.headChunkForward(k, logits: out, norm: norm, weights: floats(took[0])) }
            if k == headUnits.count - 1 {
                let loss = trainer.headLoss()
                guard loss.isFinite else { throw TrainingStopped(step: t, loss: loss, gradNorm: .nan) }
                return loss
            }
        case .headBackward(let k):
            let u = headUnits[k]
            // Its logits: read back from disk, or kept in a buffer of their own, or computed again in the shared one.
            let own = took.count == 2 ? floats(took[0]) : live["l.\(k)"].map(floats)
            let out = try own ?? floats("logits"), g = try floats("g \(u.name)"), norm = try floats("head norm")
            span("head pass 2 chunk \(k)") {
                trainer.headChunkBackward(k, logits: out, computed: own != nil, norm: norm, weights: floats(took.last!), gradients: g)
            }
        case .headNormBackward:
            trainer.headNormBackward(dresidual: try floats("dres"), input: try floats("x.\(c.layers)"), rstd: try floats("head rstd"),
                                     weights: try landed(Self.key("w", normUnit)), gradients: try floats("g norm"))
        case .recompute(let l):
            let ua = blockUnit(l, .attention), uf = blockUnit(l, .ffn)
            var a = acts(try floats("acts \(ua.name)"), try floats("acts \(uf.name)"))
            a.attnIn = try floats("x.\(l)")
            let out = try floats("recomputed x.\(l + 1)")
            let wa = floats(took[took.count - 2]), wf = floats(took[took.count - 1])
            span("recompute blk.\(l)") {
                trainer.blockAttentionForward(l, saving: a, parameters: bases(ua, wa))
                trainer.blockFFNForward(l, output: out, saving: a, parameters: bases(uf, wf))
            }
            recomputed = a
        case .ffnBackward(let l), .attentionBackward(let l):
            let h: BlockHalf
            if case .ffnBackward = action { h = .ffn } else { h = .attention }
            let u = blockUnit(l, h), g = try floats("g \(u.name)"), w = try landed(Self.key("w", u)), dres = try floats("dres")
            // Offloading: the half's activations read back, carved alone (the other half's views are never used).
            let a = offloadsActivations ? acts(floats(took[0]), floats(took[0])) : recomputed!
            span("backward \(u.name)") {
                switch h {
                case .ffn: trainer.blockFFNBackward(l, dresidual: dres, acts: a, parameters: bases(u, w, g))
                case .attention: trainer.blockAttentionBackward(l, dresidual: dres, acts: a, parameters: bases(u, w, g))
                }
            }
        case .embeddingBackward(let k):
            let u = embeddingUnits[k]
            let g = tied ? try landed(Self.key("g", u)) : try floats("g \(u.name)"), dres = try floats("dres")
            span("backward embd.\(k)") { trainer.embeddingBackward(dresidual: dres, vocabulary: trainer.headChunk(k), gradients: g) }
        case .update(let name, let part, let gradient):
            guard let u = unitsByName[name] else { throw OffloadError("[stream] internal: no parameter unit \(name)") }
            let w = try landed(Self.key("w", u))
            let g = try live[gradient].map(floats) ?? landed(gradient)
            if part == 0 { try addSums(u, g, step: t, loss: loss) }
            let r = u.parts[part], mp = floats(took[0]), vp = floats(took[1])
            span("update \(u.name).\(part)") {
                TrainingThreads.forEachRange(r.count, minPerThread: 1 << 15) { s in
                    optimizer.update(w + r.lowerBound + s.lowerBound, gradient: g + r.lowerBound + s.lowerBound,
                                     m: mp + s.lowerBound, v: vp + s.lowerBound, count: s.count, lr: lr, step: t)
                }
            }
        }
        return nil
    }
}
