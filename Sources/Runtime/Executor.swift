// The executor: runs one training step's schedule (Planning's IR) for real on the
// CPU backend, op by op. Compute ops call the trainer's per-stage hooks; offload
// and prefetch ops go through the transfer engine to the disk store; frees return
// bytes to the compute tier at once. Every activation is allocated from a
// MemoryTier whose hard limit is the budget minus what is resident for the whole
// step (weights, gradients, optimizer state, the trainer's scratch).
// Not here (yet): parameter / optimizer-state streaming (`stream`); the optimizer
// step itself (the caller runs it after the step, exactly as the in-memory path).

import Foundation
import Memory
import Models
import Planning
import Tensors

/// Measured figures of one executed step.
public struct ExecutedStep: Sendable {
    public var loss: Float
    public var seconds: Double
    /// Peak of the compute tier: resident bytes plus the activation tier's peak (page-rounded).
    public var peakComputeBytes: Int
    public var bytesRead: Int
    public var bytesWritten: Int
}

/// Runs training-step schedules whose parameters stay in compute memory (`keep`).
public final class TrainingExecutor {
    public let trainer: LlamaTrainer
    public let schedule: Schedule
    public let computeBudget: Int
    /// Bytes held for the whole step outside the activation tier.
    public let residentBytes: Int
    /// Where activations live; its limit is `computeBudget - residentBytes`.
    public let activations: MemoryTier
    public let disk: DiskStore?
    public let trace: TraceRecorder?
    let engine: TransferEngine?
    let stageNames: [String]
    /// The schedule's names for a block's BlockActivations (`act.L.<field>`), in table order.
    let blockFields: [String]
    let layers: Int

    var live: [String: TierBuffer] = [:]
    var reads: [String: TransferHandle] = [:]
    var writes: [String: TransferHandle] = [:]
    /// Compute buffers whose free waits for their write to disk.
    var pendingFrees: [(handle: TransferHandle, buffer: TierBuffer)] = []
    /// Disk copies to drop once their read back completed.
    var pendingRemoves: [(handle: TransferHandle?, name: String)] = []
    var bytesRead = 0, bytesWritten = 0
    /// Names this step wrote to disk and has not removed yet (removed on failure).
    var onDisk = Set<String>()

    /// - Parameters:
    ///   - trainer: built with `ownsActivations: false`.
    ///   - optimizerStateBytes: bytes of optimizer state held in memory (counted as resident).
    public init(trainer: LlamaTrainer, schedule: Schedule, computeBudget: Int, optimizerStateBytes: Int,
                disk: DiskStore? = nil, trace: TraceRecorder? = nil) throws {
        guard !trainer.ownsActivations else {
            throw OffloadError("[executor] the trainer owns its activations; build it with ownsActivations: false")
        }
        guard schedule.mode == "train" else { throw OffloadError("[executor] \(schedule.strategy) is a \(schedule.mode) schedule, not a training step") }
        let m = trainer.model
        residentBytes = m.weights.bytes + m.gradients.bytes + optimizerStateBytes + trainer.activationBytes
        guard residentBytes < computeBudget else {
            throw OffloadError("[executor] weights, gradients, optimizer state and scratch take \(formatBytes(residentBytes)), "
                               + "more than the compute budget \(formatBytes(computeBudget))")
        }
        for op in schedule.operations where op.tier == .host || op.from == .host {
            throw OffloadError("[executor] op #\(op.id) uses the host tier; this CPU-only executor knows compute and disk")
        }
        if schedule.operations.contains(where: { $0.kind == .prefetch || $0.kind == .offload }) && disk == nil {
            throw OffloadError("[executor] \(schedule.strategy) moves tensors to disk: give a disk store (--disk)")
        }
        for op in schedule.operations where (op.kind == .prefetch || op.kind == .offload)
            && op.creates.contains(where: Self.isParameterState) {
            throw OffloadError("[executor] \(schedule.strategy): streaming parameters or optimizer state is not implemented yet (op #\(op.id))")
        }
        self.trainer = trainer; self.schedule = schedule; self.computeBudget = computeBudget
        self.disk = disk; self.trace = trace
        let tier = MemoryTier(.compute, limit: computeBudget - residentBytes, trace: trace)
        activations = tier
        engine = disk.map { TransferEngine(memory: tier, disk: $0, trace: trace) }
        stageNames = schedule.stageNames
        blockFields = BlockActivations.table(config: m.config, batch: trainer.batch, seqLen: trainer.seqLen).map(\.name)
        layers = m.config.layers
        try checkSizes()
    }

    static func isParameterState(_ name: String) -> Bool {
        name.hasPrefix("w.") || name.hasPrefix("grad.") || name.hasPrefix("adam.")
    }
    /// Tensors the executor does not allocate: parameters, gradients and optimizer state
    /// (resident, one allocation per role) and the token ids (the trainer's).
    static func isResident(_ name: String) -> Bool { isParameterState(name) || name == "act.embd.tokens" }


    /// Every activation the schedule names must have the size the trainer's kernels use.
    func checkSizes() throws {
        let c = trainer.model.config, sizes = schedule.tensorBytes
        let table = BlockActivations.table(config: c, batch: trainer.batch, seqLen: trainer.seqLen)
        for l in 0..<layers {
            for (field, floats) in table {
                let name = "act.\(l).\(field)"
                guard let b = sizes[name] else { throw OffloadError("[executor] schedule has no tensor \(name)") }
                guard b == floats * 4 else {
                    throw OffloadError("[executor] \(name): schedule says \(b) bytes, the kernels use \(floats * 4)")
                }
            }
        }
    }

    // MARK: memory

    /// Allocates `name`, first waiting for writes whose frees are due if the budget is short.
    func allocate(_ name: String, bytes: Int) throws -> TierBuffer {
        while true {
            do { return try activations.allocate(name, bytes: bytes) } catch {
                if !pendingFrees.isEmpty { try drainOneFree(); continue }
                throw OffloadError("[executor] \(schedule.strategy): \(error)")
            }
        }
    }

    func drainOneFree() throws {
        let (h, b) = pendingFrees.removeFirst()
        try h.wait()
        b.free()
    }

    /// Releases frees whose writes have completed, without waiting.
    func pollFrees() throws {
        while let first = pendingFrees.first, first.handle.isComplete { try drainOneFree() }
        // Disk copies whose read back is done; their handles (which keep the buffers) go too.
        while let first = pendingRemoves.first, first.handle?.isComplete ?? true {
            pendingRemoves.removeFirst()
            try first.handle?.wait()
            disk?.remove(first.name)
        }
    }

    func buffer(_ name: String) throws -> UnsafeMutablePointer<Float> {
        if let h = reads.removeValue(forKey: name) {
            if let trace, !h.isComplete {
                try trace.measure("wait \(name)", stream: "compute") { try h.wait() }
            } else {
                try h.wait()
            }
        }
        guard let b = live[name] else { throw OffloadError("[executor] \(schedule.strategy): \(name) is not in compute memory") }
        return b.baseAddress.assumingMemoryBound(to: Float.self)
    }

    func create(_ name: String) throws -> UnsafeMutablePointer<Float> {
        guard live[name] == nil else { throw OffloadError("[executor] \(name) created twice") }
        guard let bytes = schedule.tensorBytes[name] else { throw OffloadError("[executor] unknown tensor \(name)") }
        let b = try allocate(name, bytes: bytes)
        live[name] = b
        return b.baseAddress.assumingMemoryBound(to: Float.self)
    }

    func freeCompute(_ name: String) throws {
        guard !Self.isResident(name) else { return }
        guard let b = live.removeValue(forKey: name) else { throw OffloadError("[executor] free of \(name), which is not in compute memory") }
        if let h = reads.removeValue(forKey: name) { try h.wait() }
        // Drop our handle too: a handle keeps its buffer, so holding it would keep the memory
        // the ledger no longer counts.
        if let h = writes.removeValue(forKey: name), !h.isComplete { pendingFrees.append((h, b)) } else { b.free() }
    }

    // MARK: the step

    /// Runs the schedule once on `inputs` / `targets` (B·T ids each): returns the mean loss and
    /// adds `gradientScale` × ∂loss/∂θ to the model's gradients. `optimizerStep` ops are left
    /// to the caller (run after the step, as the in-memory path does), so the result is
    /// bit-identical to `LlamaTrainer.forwardBackward` with keep-all.
    public func forwardBackward(inputs: [Int], targets: [Int], gradientScale: Float = 1) throws -> ExecutedStep {
        let t0 = Date()
        activations.resetPeak()
        bytesRead = 0; bytesWritten = 0
        try trainer.setBatch(inputs: inputs, targets: targets)
        var loss: Float = .nan
        do {
            for op in schedule.operations {
                try pollFrees()
                let start = trace?.now() ?? 0
                switch op.kind {
                case .forward, .recompute: loss = try forward(op, loss: loss)
                case .backward: try backward(op, gradientScale: gradientScale)
                case .optimizerStep: continue
                case .offload: try offload(op)
                case .prefetch: try prefetch(op)
                case .free: try free(op)
                }
                if let trace, op.stream == .compute, op.kind != .free {
                    trace.span("\(op.kind.rawValue) \(op.stage.map { stageNames[$0] } ?? "?")", stream: "compute", since: start)
                }
            }
            try finish()
        } catch {
            abandon()
            throw error
        }
        let peak = residentBytes + activations.stats.peak
        return ExecutedStep(loss: loss, seconds: Date().timeIntervalSince(t0), peakComputeBytes: peak,
                            bytesRead: bytesRead, bytesWritten: bytesWritten)
    }

    /// The mean loss of one batch without a step (a validation pass), as `LlamaTrainer.loss` computes it
    /// bit for bit: a forward whose blocks share one set of activation buffers (each block overwrites
    /// the last's), two block inputs taken in turn and one chunk of the head's logits, all from the
    /// activation tier and freed at the end — less than any step's schedule holds, so within the budget.
    public func loss(inputs: [Int], targets: [Int]) throws -> Float {
        try trainer.setBatch(inputs: inputs, targets: targets)
        var held: [TierBuffer] = []
        defer { held.forEach { $0.free() } }
        func take(_ name: String, floats: Int? = nil) throws -> UnsafeMutablePointer<Float> {
            guard let bytes = floats.map({ $0 * 4 }) ?? schedule.tensorBytes[name] else {
                throw OffloadError("[executor] unknown tensor \(name)")
            }
            let b = try allocate("eval " + name, bytes: bytes)
            held.append(b)
            return b.baseAddress.assumingMemoryBound(to: Float.self)
        }
        var p: [String: UnsafeMutablePointer<Float>] = [:]
        for f in blockFields.dropFirst() { p[f] = try take("act.0.\(f)") }
        var input = try take("act.0.attn_in"), output = try take("act.head.in")
        trainer.embeddingForward(output: input)
        for l in 0..<layers {
            p[blockFields[0]] = input
            trainer.blockForward(l, output: output, saving: BlockActivations(named: p))
            swap(&input, &output)
        }
        let chunk = trainer.batch * trainer.seqLen * trainer.headChunk(0).count
        return try trainer.headForward(input: input, norm: try take("act.head.norm"), rstd: try take("act.head.rstd"),
                                       logits: try take("act.head.probs", floats: chunk), keepsLogits: false)
    }

    func stageKind(_ k: Int) -> (isEmbedding: Bool, isHead: Bool, block: Int) {
        (k == 0, k == stageNames.count - 1, k - 1)
    }

    /// The block's activation pointers: its saved tensors when they were created by
    /// the op (`save: all`), otherwise a temporary carved buffer.
    func blockActivations(_ l: Int) throws -> BlockActivations {
        var p: [String: UnsafeMutablePointer<Float>] = [:]
        for f in blockFields { p[f] = try buffer("act.\(l).\(f)") }
        return BlockActivations(named: p)
    }

    func forward(_ op: Planning.Operation, loss: Float) throws -> Float {
        guard let k = op.stage else { throw OffloadError("[executor] op #\(op.id) has no stage") }
        let (isEmbedding, isHead, l) = stageKind(k)
        let saveAll = op.save == .all
        // Outputs first (what the op creates), then the temporaries a non-saving forward needs.
        for n in op.creates where !Self.isResident(n) { _ = try create(n) }
        var temps: [TierBuffer] = []
        defer { temps.forEach { $0.free() } }
        func temp(_ name: String) throws -> UnsafeMutablePointer<Float> {
            guard let bytes = schedule.tensorBytes[name] else { throw OffloadError("[executor] unknown tensor \(name)") }
            let b = try allocate("temp " + name, bytes: bytes)
            temps.append(b)
            return b.baseAddress.assumingMemoryBound(to: Float.self)
        }
        var result = loss
        if isEmbedding {
            trainer.embeddingForward(output: try buffer("act.0.attn_in"))
        } else if isHead {
            let input = try buffer("act.head.in")
            let names = ["act.head.norm", "act.head.rstd", "act.head.probs"]
            let p = try names.map { saveAll ? try buffer($0) : try temp($0) }
            result = try trainer.headForward(input: input, norm: p[0], rstd: p[1], logits: p[2], keepsLogits: true)
        } else {
            var p: [String: UnsafeMutablePointer<Float>] = [:]
            for (i, f) in blockFields.enumerated() {
                let n = "act.\(l).\(f)"
                p[f] = i == 0 || saveAll ? try buffer(n) : try temp(n)
            }
            let a = BlockActivations(named: p)
            let outName = l + 1 < layers ? "act.\(l + 1).attn_in" : "act.head.in"
            trainer.blockForward(l, output: try buffer(outName), saving: a)
        }
        for n in op.frees { try freeCompute(n) }
        return result
    }

    func backward(_ op: Planning.Operation, gradientScale: Float) throws {
        guard let k = op.stage else { throw OffloadError("[executor] op #\(op.id) has no stage") }
        let (isEmbedding, isHead, l) = stageKind(k)
        // ∂L/∂output arrives in one buffer and leaves, as ∂L/∂input, in the same one: rename it.
        let created = op.creates.filter { !Self.isResident($0) }
        if isHead {
            guard let dIn = created.first else { throw OffloadError("[executor] head backward creates no input gradient") }
            let d = try create(dIn)
            try trainer.headBackward(dresidual: d, input: try buffer("act.head.in"), norm: try buffer("act.head.norm"),
                                 rstd: try buffer("act.head.rstd"), logits: try buffer("act.head.probs"), keepsLogits: true,
                                 gradientScale: gradientScale)
        } else {
            let gradOut = l + 1 < layers ? "dact.\(l + 1).attn_in" : "dact.head.in"
            let gradName = isEmbedding ? "dact.0.attn_in" : gradOut
            let d = try buffer(gradName)
            if isEmbedding {
                trainer.embeddingBackward(dresidual: d)
            } else {
                let a = try blockActivations(l)
                trainer.blockBackward(l, dresidual: d, acts: a)
                guard let dIn = created.first, let b = live.removeValue(forKey: gradName) else {
                    throw OffloadError("[executor] block \(l) backward: no input gradient to hand on")
                }
                live[dIn] = b
            }
        }
        for n in op.frees {
            // The output gradient was renamed above: its buffer now holds ∂L/∂input.
            if live[n] == nil && n.hasPrefix("dact.") && n != "dact.loss" { continue }
            try freeCompute(n)
        }
    }

    func offload(_ op: Planning.Operation) throws {
        guard op.from == .compute, op.tier == .disk, let engine else {
            throw OffloadError("[executor] op #\(op.id): offload \(op.from?.rawValue ?? "?")→\(op.tier.rawValue) is not supported")
        }
        for n in op.creates where !Self.isResident(n) {
            if let h = reads.removeValue(forKey: n) { try h.wait() }
            guard let b = live[n] else { throw OffloadError("[executor] offload of \(n), which is not in compute memory") }
            onDisk.insert(n)
            writes[n] = try engine.write(n, from: b)
            bytesWritten += b.byteCount
        }
    }

    func prefetch(_ op: Planning.Operation) throws {
        guard op.from == .disk, op.tier == .compute, let engine, let disk else {
            throw OffloadError("[executor] op #\(op.id): prefetch \(op.from?.rawValue ?? "?")→\(op.tier.rawValue) is not supported")
        }
        for n in op.creates where !Self.isResident(n) {
            // The write must be on disk before it can be read back.
            if let h = writes.removeValue(forKey: n) { try h.wait() }
            for (h, _) in pendingFrees where h.name == n { try h.wait() }
            guard live[n] == nil else { throw OffloadError("[executor] prefetch of \(n), already in compute memory") }
            guard let bytes = disk.byteCount(of: n) else { throw OffloadError("[executor] prefetch of \(n), which is not on disk") }
            let b = try allocate(n, bytes: bytes)
            reads[n] = try engine.read(n, into: b)
            live[n] = b
            bytesRead += bytes
        }
    }

    func free(_ op: Planning.Operation) throws {
        switch op.tier {
        case .compute: for n in op.frees { try freeCompute(n) }
        case .disk:
            for n in op.frees where !Self.isResident(n) {
                onDisk.remove(n)
                if let h = reads[n], !h.isComplete { pendingRemoves.append((h, n)) } else { disk?.remove(n) }
            }
        case .host: throw OffloadError("[executor] op #\(op.id) frees host memory")
        }
    }

    /// End of step: every transfer done, disk copies dropped, nothing left behind.
    func finish() throws {
        for (h, n) in pendingRemoves { try h?.wait(); disk?.remove(n) }
        pendingRemoves = []
        while !pendingFrees.isEmpty { try drainOneFree() }
        try engine?.waitAll()
        for (_, h) in reads { try h.wait() }
        reads = [:]; writes = [:]
        let left = live.keys.sorted()
        guard left.isEmpty else {
            abandon()
            throw OffloadError("[executor] \(schedule.strategy): the step leaves \(left.prefix(4).joined(separator: ", ")) in compute memory")
        }
    }

    /// After an error: wait for transfers still touching our buffers, then drop everything.
    func abandon() {
        try? engine?.waitAll()
        for (_, b) in live { b.free() }
        for (_, b) in pendingFrees { b.free() }
        live = [:]; reads = [:]; writes = [:]; pendingFrees = []
        for (_, n) in pendingRemoves { disk?.remove(n) }
        for n in onDisk { disk?.remove(n) }
        pendingRemoves = []; onDisk = []
    }
}
