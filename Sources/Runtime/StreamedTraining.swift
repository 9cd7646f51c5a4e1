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
// Reads are issued in the order the step consumes them, as far ahead as the budget
// leaves room beside what the compute ops will allocate; writes drain behind.
// Everything is allocated from one MemoryTier whose limit is the budget minus the
// trainer's scratch. Same kernels, same calls, same order of every sum as the
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
    /// What reads ahead leave free now: the largest reserve of this phase and the phases after it
    /// (a read issued now may still be held when a later phase allocates).
    var phaseReserve = 0
    func enter(phase: Int) { phaseReserve = plan.reserves[phase...].max()! }
    var logitsBytes: Int { plan.logitsBytes }
    func spills(_ k: Int) -> Bool { plan.spills(k) }
    /// Optimizer steps done (AdamW's t).
    public private(set) var steps = 0
    /// When set, every compute buffer (`alloc NAME BYTES`) and write (`write NAME`) of a step, in order:
    /// what `StreamedTrainingPlan.events` says the plan's schedule does (a test holds the two together).
    public var events: [String]?

    public var embeddingUnits: [ParameterUnit] { plan.embeddingUnits }
    public var blockUnits: [ParameterUnit] { plan.blockUnits }
    public var normUnit: ParameterUnit { plan.normUnit }
    public var outputUnits: [ParameterUnit] { plan.outputUnits }
    public var units: [ParameterUnit] { plan.units }

    var config: LlamaConfig { trainer.model.config }
    var n: Int { trainer.batch * trainer.seqLen }
    var inputBytes: Int { plan.inputBytes }
    func actsBytes(_ h: BlockHalf) -> Int { plan.actsBytes(h) }
    func blockUnit(_ l: Int, _ h: BlockHalf) -> ParameterUnit { plan.blockUnit(l, h) }

    /// - Parameters:
    ///   - trainer: built with `ownsActivations: false` over a non-resident model, at the plan's
    ///     batch and sequence length.
    public init(trainer: LlamaTrainer, optimizer: AdamW, plan: StreamedTrainingPlan, disk: DiskStore,
                trace: TraceRecorder? = nil) throws {
        guard !trainer.ownsActivations, !trainer.model.isResident else {
            throw OffloadError("[stream] the trainer must own no activations and its model no parameters")
        }
        guard trainer.batch == plan.batch, trainer.seqLen == plan.seqLen, trainer.headChunkRows == plan.headChunkRows,
              trainer.activationBytes == plan.scratchBytes else {
            throw OffloadError("[stream] internal: the plan is for another trainer shape")
        }
        self.trainer = trainer; self.optimizer = optimizer; self.plan = plan; self.disk = disk; self.trace = trace
        memory = MemoryTier(.compute, limit: plan.budget - plan.scratchBytes, trace: trace, arena: true)
        engine = TransferEngine(memory: memory, disk: disk, trace: trace)
    }

    /// Plans the step for `budget` (Planning's `StreamedTrainingPlan`) and builds its executor.
    public convenience init(trainer: LlamaTrainer, optimizer: AdamW, budget: Int, disk: DiskStore, trace: TraceRecorder? = nil,
                            activations: StreamedActivations? = nil, partBytes: Int = 4 << 20) throws {
        let plan: StreamedTrainingPlan
        do {
            plan = try StreamedTrainingPlan(config: trainer.model.config, batch: trainer.batch, seqLen: trainer.seqLen,
                                            budget: budget, activations: activations, partBytes: partBytes,
                                            headChunk: trainer.headChunkRows)
        } catch { throw OffloadError("[stream] \(error)") }
        try self.init(trainer: trainer, optimizer: optimizer, plan: plan, disk: disk, trace: trace)
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

    /// Bytes compute ops hold now (reads ahead leave `reserve` minus this free).
    var computeHeld = 0
    var pendingWrites: [String: TransferHandle] = [:]
    var writeOrder: [TransferHandle] = []
    var planned: [PlannedRead] = []
    /// Planned reads of tensors this step writes first (block inputs, tied head gradients), not written yet.
    var awaiting = Set<String>()
    var nextPlanned = 0
    var issued: [TransferHandle] = []
    var bytesRead = 0, bytesWritten = 0

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

    /// A compute op's buffer, counted against the reserve.
    func computeBuffer(_ name: String, bytes: Int, zero: Bool = false) throws -> TierBuffer {
        let b = try allocate(name, bytes: bytes)
        events?.append("alloc \(name) \(bytes)")
        computeHeld += accountedBytes(bytes)
        if zero { b.baseAddress.assumingMemoryBound(to: Float.self).update(repeating: 0, count: bytes / 4) }
        return b
    }

    func releaseCompute(_ b: TierBuffer) {
        computeHeld -= accountedBytes(b.byteCount)
        b.free()
    }

    /// Writes `b` as `name`; the buffer is freed once on disk.
    func write(_ name: String, _ b: TierBuffer) throws {
        events?.append("write \(name)")
        if let h = pendingWrites[name] { try h.wait() }
        let h = try engine.write(name, from: b)
        awaiting.remove(name)
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

    /// Issues planned reads while the budget leaves the compute reserve free.
    func pump() throws {
        try pollWrites()
        while nextPlanned < planned.count {
            let (name, bytes) = (planned[nextPlanned].name, planned[nextPlanned].bytes)
            if awaiting.contains(name) { return }
            if let w = pendingWrites[name], !w.isComplete { return }
            let room = memory.limit - memory.stats.current - max(0, phaseReserve - computeHeld)
            guard accountedBytes(bytes) <= room, let b = try? memory.allocate(name, bytes: bytes) else { return }
            try issue(name, b)
        }
    }

    func issue(_ name: String, _ b: TierBuffer) throws {
        if let w = pendingWrites[name] { try w.wait() }
        do { issued.append(try engine.read(name, into: b)) } catch { b.free(); throw error }
        nextPlanned += 1
        bytesRead += b.byteCount
    }

    /// The next planned read, which must be `name`: issued now if it was not yet, then waited for.
    func take(_ name: String) throws -> TierBuffer {
        if issued.isEmpty {
            guard nextPlanned < planned.count, planned[nextPlanned].name == name else {
                throw OffloadError("[stream] internal: read \(name) out of order (next planned: "
                                   + "\(nextPlanned < planned.count ? planned[nextPlanned].name : "none"))")
            }
            try issue(name, try allocate(name, bytes: planned[nextPlanned].bytes))
        }
        let h = issued.removeFirst()
        guard h.name == name else { throw OffloadError("[stream] internal: took \(h.name) for \(name)") }
        if let trace, !h.isComplete {
            try trace.measure("wait \(name)", stream: "compute") { try h.wait() }
        } else {
            try h.wait()
        }
        try pump()
        return h.buffer
    }

    // MARK: the step

    /// One optimizer step on `inputs` / `targets` (B·T ids each) at learning rate `lr`.
    public func step(inputs: [Int], targets: [Int], lr: Float) throws -> StreamedStep {
        let t0 = Date()
        memory.resetPeak()
        bytesRead = 0; bytesWritten = 0
        try trainer.setBatch(inputs: inputs, targets: targets)
        planned = plan.reads; nextPlanned = 0; issued = []
        awaiting = Set(planned.map(\.name).filter { ["x.", "a.", "g.", "l."].contains($0.prefix(2)) })
        do {
            let (loss, norm) = try runStep(lr: lr, t: steps + 1)
            try drainWrites()
            steps += 1
            return StreamedStep(loss: loss, gradNorm: norm, seconds: Date().timeIntervalSince(t0),
                                peakComputeBytes: trainer.activationBytes + memory.stats.peak,
                                bytesRead: bytesRead, bytesWritten: bytesWritten, arenaMisses: memory.arenaMisses)
        } catch {
            for h in issued { try? h.wait(); h.buffer.free() }
            issued = []
            try? engine.waitAll()
            while (try? drainOneWrite()) == true {}
            writeOrder = []; pendingWrites = [:]; computeHeld = 0
            throw error
        }
    }

    func floats(_ b: TierBuffer) -> UnsafeMutablePointer<Float> { b.baseAddress.assumingMemoryBound(to: Float.self) }

    /// Where unit `u`'s parameters are for the trainer's calls: its weights in `w`, its gradient in `g`.
    func bases(_ u: ParameterUnit, _ w: TierBuffer, _ g: TierBuffer? = nil) -> ParameterBases {
        ParameterBases(stageStart: u.offset, weights: floats(w), gradients: floats(g ?? w))
    }

    /// Writes a compute op's buffer out: it stops counting against the reserve now and is freed once on disk.
    func writeCompute(_ name: String, _ b: TierBuffer) throws {
        computeHeld -= accountedBytes(b.byteCount)
        try write(name, b)
    }

    func span<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
        guard let trace else { return try body() }
        let start = trace.now()
        defer { trace.span(name, stream: "compute", since: start) }
        return try body()
    }

    /// AdamW on unit `u`: w and g in memory, m and v read part by part; w, m, v written back.
    func update(_ u: ParameterUnit, weights w: TierBuffer, gradients g: UnsafeMutablePointer<Float>, lr: Float, t: Int) throws {
        let wp = floats(w)
        for (i, r) in u.parts.enumerated() {
            let m = try take(Self.key("m", u, part: i)), v = try take(Self.key("v", u, part: i))
            let mp = floats(m), vp = floats(v)
            span("update \(u.name).\(i)") {
                TrainingThreads.forEachRange(r.count, minPerThread: 1 << 15) { s in
                    optimizer.update(wp + r.lowerBound + s.lowerBound, gradient: g + r.lowerBound + s.lowerBound,
                                     state: [mp + s.lowerBound, vp + s.lowerBound], count: s.count, lr: lr, step: t)
                }
            }
            try write(Self.key("m", u, part: i), m)
            try write(Self.key("v", u, part: i), v)
        }
        try write(Self.key("w", u), w)
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

    func runStep(lr: Float, t: Int) throws -> (Float, Double) {
        let c = config, tied = outputUnits.isEmpty
        sums = [:]
        enter(phase: 0)
        try pump()
        // Embedding: x.0 from the chunks of token_embd.
        var x = try computeBuffer("x.0", bytes: inputBytes)
        for (k, u) in embeddingUnits.enumerated() {
            let w = try take(Self.key("w", u))
            span("forward embd.\(k)") { trainer.embeddingForward(output: floats(x), vocabulary: trainer.headChunk(k), table: floats(w)) }
            w.free()
        }
        // Blocks, half by half; each half's activations go to disk as soon as it is done (offloading),
        // or only the block's input is kept (recomputing).
        var kept: [TierBuffer] = []
        for l in 0..<c.layers {
            let (ua, uf) = (blockUnit(l, .attention), blockUnit(l, .ffn))
            let wa = try take(Self.key("w", ua))
            let actsA = try computeBuffer("acts \(ua.name)", bytes: actsBytes(.attention))
            let actsF = try computeBuffer("acts \(uf.name)", bytes: actsBytes(.ffn))
            var a = BlockActivations(attention: floats(actsA), ffn: floats(actsF), config: c, batch: trainer.batch, seqLen: trainer.seqLen)
            if offloadsActivations {
                // The input goes with the attention half's activations (their first slot), for the backward.
                a.attnIn.update(from: floats(x), count: n * c.dim)
                releaseCompute(x)
            } else {
                a.attnIn = floats(x)
            }
            span("forward \(ua.name)") { trainer.blockAttentionForward(l, saving: a, parameters: bases(ua, wa)) }
            wa.free()
            if offloadsActivations { try writeCompute("a.\(ua.name)", actsA) }
            let wf = try take(Self.key("w", uf))
            let out = try computeBuffer("x.\(l + 1)", bytes: inputBytes)
            span("forward \(uf.name)") { trainer.blockFFNForward(l, output: floats(out), saving: a, parameters: bases(uf, wf)) }
            wf.free()
            if offloadsActivations {
                try writeCompute("a.\(uf.name)", actsF)
            } else {
                releaseCompute(actsA); releaseCompute(actsF)
                computeHeld -= accountedBytes(x.byteCount)
                if keepsInputs { kept.append(x) } else { try write("x.\(l)", x) }
            }
            x = out
            try pump()
        }
        // Head, pass 1: the loss.
        enter(phase: 1)
        let normW = try take(Self.key("w", normUnit))
        let normG = try computeBuffer("g norm", bytes: normUnit.bytes, zero: true)
        let headBases = ParameterBases(stageStart: normUnit.offset, weights: floats(normW), gradients: floats(normG))
        let norm = try computeBuffer("head norm", bytes: inputBytes)
        let rstd = try computeBuffer("head rstd", bytes: n * 4)
        let logits = try computeBuffer("logits", bytes: n * trainer.headChunkRows * 4)
        let headUnits = tied ? embeddingUnits : outputUnits
        var current: TierBuffer?
        // The first `keptLogitChunks` chunks keep their logits in memory for pass 2, the others go to
        // disk behind the compute; pass 2 then skips their product (it recomputes only a kept chunk
        // that found no room).
        var keptLogits: [Int: TierBuffer] = [:]
        let keep: (Int) throws -> UnsafeMutablePointer<Float>? = { [self] k in
            if let b = keptLogits[k] { return floats(b) }
            guard let b = try? memory.allocate("logits \(k)", bytes: logitsBytes) else { return nil }
            keptLogits[k] = b
            return floats(b)
        }
        let computed: (Int) throws -> Void = { [self] k in
            guard spills(k) else { return }
            if let b = keptLogits.removeValue(forKey: k) { return try write("l.\(k)", b) }
            // Computed into the shared buffer (no room for its own): written before the next chunk.
            events?.append("write l.\(k)")
            let h = try engine.write("l.\(k)", from: logits)
            awaiting.remove("l.\(k)")
            bytesWritten += logits.byteCount
            try h.wait()
        }
        let loss = try span("head pass 1") {
            try trainer.headForward(input: floats(x), norm: floats(norm), rstd: floats(rstd), logits: floats(logits),
                                    keepsLogits: false, parameters: headBases, keep: keep, weights: { [self] k in
                current?.free()
                current = try take(Self.key("w", headUnits[k]))
                return UnsafePointer(floats(current!))
            }, computed: computed)
        }
        current?.free(); current = nil
        guard loss.isFinite else { throw TrainingStopped(step: t, loss: loss, gradNorm: .nan) }
        // Head, pass 2: chunk gradients (written out when tied, the embedding adds to them; else
        // complete: update), ∂L/∂x, then the final norm's update.
        let dres = try computeBuffer("dres", bytes: inputBytes)
        var grad: TierBuffer?
        try span("head pass 2") {
            try trainer.headBackward(dresidual: floats(dres), input: floats(x), norm: floats(norm), rstd: floats(rstd),
                                     logits: floats(logits), keepsLogits: false, parameters: headBases,
                                     keep: { [self] k in
                                         if spills(k) {
                                             keptLogits[k] = try take("l.\(k)")
                                             disk.remove("l.\(k)")
                                         }
                                         return keptLogits[k].map(floats)
                                     },
                                     chunk: { [self] k in
                                         current = try take(Self.key("w", headUnits[k]))
                                         grad = try computeBuffer("g \(headUnits[k].name)", bytes: headUnits[k].bytes, zero: true)
                                         return (UnsafePointer(floats(current!)), floats(grad!))
                                     },
                                     done: { [self] k in
                                         let u = headUnits[k]
                                         keptLogits.removeValue(forKey: k)?.free()
                                         if tied {
                                             current!.free()
                                             computeHeld -= accountedBytes(grad!.byteCount)
                                             try write(Self.key("g", u), grad!)
                                         } else {
                                             try addSums(u, floats(grad!), step: t, loss: loss)
                                             try update(u, weights: current!, gradients: floats(grad!), lr: lr, t: t)
                                             releaseCompute(grad!)
                                         }
                                         current = nil; grad = nil
                                     })
        }
        for b in [norm, rstd, logits, x] { releaseCompute(b) }
        try addSums(normUnit, floats(normG), step: t, loss: loss)
        try update(normUnit, weights: normW, gradients: floats(normG), lr: lr, t: t)
        releaseCompute(normG)
        enter(phase: 2)
        // Blocks backward, the feed-forward half first: each half's update as soon as its gradient is done.
        // `computed` runs once the half's activations are no longer needed, before its update.
        func backward(_ l: Int, _ h: BlockHalf, acts a: BlockActivations, weights w: TierBuffer,
                      computed: () -> Void) throws {
            let u = blockUnit(l, h)
            let g = try computeBuffer("g \(u.name)", bytes: u.bytes, zero: true)
            span("backward \(u.name)") {
                switch h {
                case .ffn: trainer.blockFFNBackward(l, dresidual: floats(dres), acts: a, parameters: bases(u, w, g))
                case .attention: trainer.blockAttentionBackward(l, dresidual: floats(dres), acts: a, parameters: bases(u, w, g))
                }
            }
            computed()
            try addSums(u, floats(g), step: t, loss: loss)
            try update(u, weights: w, gradients: floats(g), lr: lr, t: t)
            releaseCompute(g)
        }
        for l in (0..<c.layers).reversed() {
            if offloadsActivations {
                for h in [BlockHalf.ffn, .attention] {
                    let u = blockUnit(l, h), acts = try take("a.\(u.name)")
                    disk.remove("a.\(u.name)")
                    let w = try take(Self.key("w", u))
                    // One half carved alone: the other half's views are never used.
                    let a = BlockActivations(attention: floats(acts), ffn: floats(acts), config: c, batch: trainer.batch, seqLen: trainer.seqLen)
                    try backward(l, h, acts: a, weights: w) { acts.free() }
                }
                continue
            }
            let (ua, uf) = (blockUnit(l, .attention), blockUnit(l, .ffn))
            let input = keepsInputs ? kept.removeLast() : try take("x.\(l)")
            if !keepsInputs { disk.remove("x.\(l)") }
            let wa = try take(Self.key("w", ua)), wf = try take(Self.key("w", uf))
            let actsA = try computeBuffer("acts \(ua.name)", bytes: actsBytes(.attention))
            let actsF = try computeBuffer("acts \(uf.name)", bytes: actsBytes(.ffn))
            let out = try computeBuffer("recomputed x.\(l + 1)", bytes: inputBytes)
            var a = BlockActivations(attention: floats(actsA), ffn: floats(actsF), config: c, batch: trainer.batch, seqLen: trainer.seqLen)
            a.attnIn = floats(input)
            span("recompute blk.\(l)") {
                trainer.blockAttentionForward(l, saving: a, parameters: bases(ua, wa))
                trainer.blockFFNForward(l, output: floats(out), saving: a, parameters: bases(uf, wf))
            }
            releaseCompute(out)
            try backward(l, .ffn, acts: a, weights: wf) { releaseCompute(actsF) }
            try backward(l, .attention, acts: a, weights: wa) { releaseCompute(actsA); input.free() }
        }
        // Embedding backward, chunk by chunk, and its update.
        enter(phase: 3)
        for (k, u) in embeddingUnits.enumerated() {
            let g = tied ? try take(Self.key("g", u)) : try computeBuffer("g \(u.name)", bytes: u.bytes, zero: true)
            if tied { computeHeld += accountedBytes(g.byteCount) }
            span("backward embd.\(k)") {
                trainer.embeddingBackward(dresidual: floats(dres), vocabulary: trainer.headChunk(k), gradients: floats(g))
            }
            try addSums(u, floats(g), step: t, loss: loss)
            let w = try take(Self.key("w", u))
            try update(u, weights: w, gradients: floats(g), lr: lr, t: t)
            releaseCompute(g)
            if tied { disk.remove(Self.key("g", u)) }
        }
        releaseCompute(dres)
        let total = trainer.model.layout.entries.reduce(0.0) { $0 + (sums[$1.name] ?? 0) }
        return (loss, total.squareRoot())
    }
}
