// The streamed training step as a Schedule: every compute op StreamedTrainer runs, in its
// order, with the buffers it allocates and frees; every read of the plan's read list, issued
// where the executor's read-ahead rule (`pump`: as far ahead as the tier leaves room beside
// the phase's reserve) issues it; every write, freeing its buffer when done. The simulator
// interprets it under the budget: the peak and the time `plan` predicts, and the lanes
// `--svg` draws, are those of the step the executor runs.
import Foundation
import Memory
import Models
import Tensors

extension StreamedTrainingPlan {
    /// A buffer a compute op allocates: counted against the phase reserve or not; `optional`: only
    /// when the tier has room (else the op uses a shared buffer).
    struct Alloc { var name: String; var bytes: Int; var counted = true; var optional = false }

    /// One step of the executor's program, before the reads are placed.
    enum Step {
        /// A compute op: what it runs, what it allocates (counted against the phase reserve, or not), what
        /// it frees, for how long. `takes`: reads it consumes first, in order.
        case compute(kind: OperationKind, action: StepAction, takes: [String], allocs: [Alloc],
                     frees: [String], released: [String], seconds: Double)
        /// A buffer written to disk (freed when the write completes); `counted`: it was a compute op's.
        case write(String, counted: Bool)
        case phase(Int)
        /// A buffer starts or stops counting against the phase reserve without moving.
        case count(String, Bool)
    }

    /// Seconds of each compute op on `hw`: the chain's per-stage costs split the way the step splits them.
    func program(hardware hw: HardwareProfile) -> [Step] {
        let chain = ExecutorPlanning.chain(config: config, batch: batch, seqLen: seqLen, hardware: hw)
        let c = config, n = rows, L = c.layers, tied = outputUnits.isEmpty
        let attnMatmul = 2 * Double(n) * Double(c.dim * c.qDim + 2 * c.dim * c.kvDim + c.qDim * c.dim)
        let causal = ModelChain.causalAttentionFLOPs(batch: batch, heads: c.heads, seqLen: seqLen, headDim: c.headDim)
        let ffnFLOPs = 2 * Double(n) * 3 * Double(c.dim * c.ffnDim)
        let recompute = ModelChain.TrainingWork(config: c, batch: batch, seqLen: seqLen).blockRecomputeFLOPs
        // Shares of a block's FLOPs: the backward recomputes scores (2.5× attention) and, in tiles, gate and up.
        let forwardShare = (attnMatmul + causal) / (attnMatmul + causal + ffnFLOPs)
        let backwardShare = (2 * attnMatmul + 2.5 * causal) / (2 * attnMatmul + 2.5 * causal + 2 * ffnFLOPs + recompute)
        func half(_ seconds: Double, _ h: BlockHalf, backward: Bool = false) -> Double {
            let share = backward ? backwardShare : forwardShare
            return seconds * (h == .attention ? share : 1 - share)
        }
        let head = chain.stages[L + 1], embd = chain.stages[0]
        let chunks = Double(headChunkCount)
        func updateSeconds(_ floats: Int) -> Double { Double(floats * 4) * chain.optimizerSecondsPerParameterByte }

        var p: [Step] = []
        func w(_ u: ParameterUnit) -> String { Self.key("w", u) }
        // AdamW on unit u: m and v read part by part, written back; then w written.
        func update(_ u: ParameterUnit, grad: String) {
            for (i, r) in u.parts.enumerated() {
                p.append(.compute(kind: .optimizerStep, action: .update(unit: u.name, part: i, gradient: grad),
                                  takes: [Self.key("m", u, part: i), Self.key("v", u, part: i)], allocs: [],
                                  frees: [], released: [], seconds: updateSeconds(r.count)))
                p.append(.write(Self.key("m", u, part: i), counted: false))
                p.append(.write(Self.key("v", u, part: i), counted: false))
            }
            p.append(.write(w(u), counted: false))
            p.append(.compute(kind: .free, action: .memory, takes: [], allocs: [], frees: [],
                              released: [grad], seconds: 0))
        }
        p.append(.phase(0))
        p.append(.compute(kind: .free, action: .memory, takes: [], allocs: [Alloc(name: "x.0", bytes: inputBytes)], frees: [],
                          released: [], seconds: 0))
        for (k, u) in embeddingUnits.enumerated() {
            p.append(.compute(kind: .forward, action: .embeddingForward(chunk: k), takes: [w(u)], allocs: [], frees: [w(u)],
                              released: [], seconds: embd.forwardSeconds / chunks))
        }
        var x = "x.0"
        for l in 0..<L {
            let ua = blockUnit(l, .attention), uf = blockUnit(l, .ffn), stage = chain.stages[l + 1]
            let actsA = "acts \(ua.name)", actsF = "acts \(uf.name)", out = "x.\(l + 1)"
            p.append(.compute(kind: .forward, action: .attentionForward(layer: l), takes: [w(ua)],
                              allocs: [Alloc(name: actsA, bytes: actsBytes(.attention)), Alloc(name: actsF, bytes: actsBytes(.ffn))],
                              frees: [w(ua)], released: offloadsActivations ? [x] : [],
                              seconds: half(stage.forwardSeconds, .attention)))
            if offloadsActivations { p.append(.write(actsA, counted: true)) }
            p.append(.compute(kind: .forward, action: .ffnForward(layer: l), takes: [w(uf)], allocs: [Alloc(name: out, bytes: inputBytes)],
                              frees: [w(uf)], released: offloadsActivations ? [] : [actsA, actsF],
                              seconds: half(stage.forwardSeconds, .ffn)))
            if offloadsActivations {
                p.append(.write(actsF, counted: true))
            } else if keepsInputs {
                p.append(.count(x, false))
            } else {
                p.append(.write(x, counted: true))
            }
            x = out
        }
        // Head, pass 1: norm's weights and gradient, the head's buffers; each chunk's logits kept in memory
        // (the first `keptLogitChunks`) or written out.
        p.append(.phase(1))
        let headUnits = tied ? embeddingUnits : outputUnits
        p.append(.compute(kind: .free, action: .headNorm, takes: [w(normUnit)],
                          allocs: [Alloc(name: "g norm", bytes: normUnit.bytes), Alloc(name: "head norm", bytes: inputBytes),
                                   Alloc(name: "head rstd", bytes: n * 4), Alloc(name: "logits", bytes: logitsBytes)],
                          frees: [], released: [], seconds: 0))
        for (k, u) in headUnits.enumerated() {
            p.append(.compute(kind: .forward, action: .headForward(chunk: k), takes: [w(u)],
                              allocs: [Alloc(name: "l.\(k)", bytes: logitsBytes, counted: false, optional: true)], frees: [w(u)], released: [],
                              seconds: head.forwardSeconds / chunks))
            if spills(k) { p.append(.write("l.\(k)", counted: false)) }
        }
        // Head, pass 2: each chunk's gradient, then its update (untied) or to disk (tied).
        p.append(.compute(kind: .free, action: .memory, takes: [], allocs: [Alloc(name: "dres", bytes: inputBytes)], frees: [],
                          released: [], seconds: 0))
        for (k, u) in headUnits.enumerated() {
            let g = "g \(u.name)"
            p.append(.compute(kind: .backward, action: .headBackward(chunk: k), takes: (spills(k) ? ["l.\(k)"] : []) + [w(u)],
                              allocs: [Alloc(name: g, bytes: u.bytes)], frees: ["l.\(k)"], released: [],
                              seconds: head.backwardSeconds / chunks))
            if tied {
                p.append(.compute(kind: .free, action: .memory, takes: [], allocs: [], frees: [w(u)], released: [],
                                  seconds: 0))
                p.append(.write(g, counted: true))
            } else {
                update(u, grad: g)
            }
        }
        p.append(.compute(kind: .free, action: .headNormBackward, takes: [], allocs: [], frees: [],
                          released: ["head norm", "head rstd", "logits", x], seconds: 0))
        update(normUnit, grad: "g norm")
        // Blocks backward, the feed-forward half first.
        p.append(.phase(2))
        for l in (0..<L).reversed() {
            let stage = chain.stages[l + 1]
            if offloadsActivations {
                for h in [BlockHalf.ffn, .attention] {
                    let u = blockUnit(l, h), g = "g \(u.name)"
                    p.append(.compute(kind: .backward, action: (h == .ffn ? .ffnBackward(layer: l) : .attentionBackward(layer: l)), takes: ["a.\(u.name)", w(u)],
                                      allocs: [Alloc(name: g, bytes: u.bytes)], frees: ["a.\(u.name)"], released: [],
                                      seconds: half(stage.backwardSeconds, h, backward: true)))
                    update(u, grad: g)
                }
                continue
            }
            let ua = blockUnit(l, .attention), uf = blockUnit(l, .ffn)
            let input = "x.\(l)"
            p.append(.compute(kind: .recompute, action: .recompute(layer: l), takes: (keepsInputs ? [] : [input]) + [w(ua), w(uf)],
                              allocs: [Alloc(name: "acts \(ua.name)", bytes: actsBytes(.attention)),
                                       Alloc(name: "acts \(uf.name)", bytes: actsBytes(.ffn)),
                                       Alloc(name: "recomputed x.\(l + 1)", bytes: inputBytes)],
                              frees: [], released: ["recomputed x.\(l + 1)"], seconds: stage.forwardSeconds))
            for h in [BlockHalf.ffn, .attention] {
                let u = blockUnit(l, h), g = "g \(u.name)"
                p.append(.compute(kind: .backward, action: (h == .ffn ? .ffnBackward(layer: l) : .attentionBackward(layer: l)), takes: [], allocs: [Alloc(name: g, bytes: u.bytes)],
                                  frees: h == .attention ? [input] : [], released: ["acts \(u.name)"],
                                  seconds: half(stage.backwardSeconds, h, backward: true)))
                update(u, grad: g)
            }
        }
        p.append(.phase(3))
        for (k, u) in embeddingUnits.enumerated() {
            let g = tied ? Self.key("g", u) : "g \(u.name)"
            if tied {
                p.append(.compute(kind: .free, action: .memory, takes: [g], allocs: [], frees: [], released: [], seconds: 0))
                p.append(.count(g, true))
            }
            p.append(.compute(kind: .backward, action: .embeddingBackward(chunk: k), takes: [],
                              allocs: tied ? [] : [Alloc(name: g, bytes: u.bytes)], frees: [], released: [],
                              seconds: embd.backwardSeconds / chunks))
            p.append(.compute(kind: .free, action: .memory, takes: [w(u)], allocs: [], frees: [], released: [],
                              seconds: 0))
            update(u, grad: g)
        }
        p.append(.compute(kind: .free, action: .memory, takes: [], allocs: [], frees: [], released: ["dres"], seconds: 0))
        return p
    }

    /// The step as a Schedule for the simulator: compute ops in the executor's order, reads where its
    /// read-ahead rule issues them, writes behind. Tensor sizes are the tier's accounted sizes; the
    /// compute tier's budget is the plan's budget less the trainer's scratch.
    public func schedule(hardware hw: HardwareProfile, delays: [Int: Int] = [:]) -> (Schedule, readOps: [Int: Int]) {
        let program = program(hardware: hw)
        let limit = budget - scratchBytes
        let reads = self.reads
        // Reads of tensors this step writes before it reads them (activations, block inputs, logits, tied
        // gradients) wait for their write; the others (weights, m, v) are on disk from the start.
        var written = Set<String>(), readFirst = Set<String>()
        for step in program {
            switch step {
            case .write(let n, _): if !readFirst.contains(diskName(n)) { written.insert(diskName(n)) }
            case .compute(_, _, let takes, _, _, _, _): for t in takes where !written.contains(t) { readFirst.insert(t) }
            default: break
            }
        }
        // Each read lands in a buffer of its own: `name#k` for the k-th read of `name` this step.
        var occurrence: [String: Int] = [:]
        let landing = reads.map { r -> String in
            let k = occurrence[r.name, default: 0]; occurrence[r.name] = k + 1
            return k == 0 ? r.name : "\(r.name)#\(k)"
        }
        var sizes: [String: Int] = [:]
        for (r, l) in zip(reads, landing) { sizes[r.name] = accountedBytes(r.bytes); sizes[l] = accountedBytes(r.bytes) }
        for step in program { if case .compute(_, _, _, let allocs, _, _, _) = step { for a in allocs { sizes[a.name] = accountedBytes(a.bytes) } } }

        // Where the read-ahead rule issues each read (before compute step `issueBefore[r]` of the program),
        // and which optional buffers found room: a walk of the tier as the executor fills it.
        var issueBefore = [Int](repeating: 0, count: reads.count)
        var granted = Set<Int>(), live = Set<String>()
        var current = 0, held = 0, reserve = reserves.max() ?? 0, next = 0, taken = 0
        // Time, as the executor sees it: compute ops back to back, each waiting for the reads it takes;
        // reads and writes each in order at the disk's rates (sharing it), a written buffer freed at the
        // first poll after its write ends.
        let share = hw.duplexFactor
        var now = 0.0, readEnd = 0.0, writeEnd = 0.0
        var readDone = [Double](repeating: 0, count: reads.count)
        var pending: [(end: Double, bytes: Int, name: String)] = []
        var names: [String: String] = [:]     // buffer name → the landing name of its latest read
        var writtenSoFar = Set<String>()
        func size(_ n: String) -> Int { sizes[names[n] ?? n] ?? 0 }
        func issue(_ r: Int, at: Int) {
            current += accountedBytes(reads[r].bytes); issueBefore[r] = at
            readEnd = max(readEnd, now) + Double(accountedBytes(reads[r].bytes)) / (hw.diskReadBandwidth * share)
            readDone[r] = readEnd
        }
        func poll() {
            pending.removeAll { if $0.end <= now { current -= $0.bytes; return true }; return false }
        }
        func pump(_ at: Int) {
            poll()
            while next < reads.count {
                let r = reads[next]
                if written.contains(r.name) && !writtenSoFar.contains(r.name) { return }
                if pending.contains(where: { $0.name == r.name }) { return }   // its write is not done yet
                let room = limit - current - max(0, reserve - held)
                guard accountedBytes(r.bytes) <= room else { return }
                issue(next, at: at); next += 1
            }
        }
        for (i, step) in program.enumerated() {
            switch step {
            case .phase(let k): reserve = reserves[k...].max()!; if k == 0 { pump(i) }
            case .count(let n, let on): held += on ? size(n) : -size(n)
            case .write(let n, let counted):
                if counted { held -= size(n) }
                // A head chunk's logits in a buffer of their own, like every other buffer, are freed when
                // written; in the shared buffer the executor waits for the write.
                let own = !n.hasPrefix("l.") || live.remove(n) != nil
                let bytes = own ? size(n) : sizes["logits"]!
                writeEnd = max(writeEnd, now) + Double(bytes) / (hw.diskWriteBandwidth * share)
                if own { pending.append((writeEnd, bytes, diskName(n))) } else { now = max(now, writeEnd) }
                writtenSoFar.insert(diskName(n))
            case .compute(_, _, let takes, let allocs, let frees, let released, let seconds):
                for a in allocs where a.optional {
                    if current + sizes[a.name]! <= limit { granted.insert(i); live.insert(a.name); current += sizes[a.name]! }
                }
                for t in takes {
                    if taken == next {   // nothing read ahead: read now, waiting for writes to make room
                        while current + accountedBytes(reads[next].bytes) > limit, let first = pending.min(by: { $0.end < $1.end }) {
                            now = max(now, first.end); poll()
                        }
                        issue(next, at: i); next += 1
                    }
                    now = max(now, readDone[taken])
                    names[t] = landing[taken]
                    taken += 1
                    pump(i)
                }
                for a in allocs where !a.optional { current += sizes[a.name]!; if a.counted { held += sizes[a.name]! } }
                now += seconds
                for n in frees {
                    // A head chunk's logits: freed if read back here or kept in a buffer of their own; a
                    // chunk that found no room was computed in the shared buffer, and is again in pass 2.
                    if n.hasPrefix("l.") && !takes.contains(n) && live.remove(n) == nil { continue }
                    current -= size(n)
                }
                for n in released { current -= size(n); held -= size(n) }
            }
        }

        // Reads the simulator found no room for where the walk put them go later (the walk's timing is the
        // executor's view; the simulation's may differ where the budget is tight).
        for (r, d) in delays { issueBefore[r] = min(program.count - 1, issueBefore[r] + d) }
        for r in issueBefore.indices.dropFirst() { issueBefore[r] = max(issueBefore[r], issueBefore[r - 1]) }
        // A read is issued no later than the step that takes it.
        var takeAt: [Int] = []
        for (i, step) in program.enumerated() { if case .compute(_, _, let takes, _, _, _, _) = step { for _ in takes { takeAt.append(i) } } }
        for r in issueBefore.indices { issueBefore[r] = min(issueBefore[r], takeAt[r]) }

        // The Schedule: reads on the read stream, writes on the write stream, compute in order.
        var readOps: [Int: Int] = [:]         // op id → read index
        var ops: [Operation] = []
        var readID: [String: Int] = [:]       // landing name → its read
        var lastWriter: [String: Int] = [:]   // disk name → its write
        var lastComputeID: Int?
        var syncWrite: Int?                   // a write the next compute op waits for (from a shared buffer)
        var ioBytes = 0
        func emit(_ op: Operation) -> Int { var o = op; o.id = ops.count; ops.append(o); return o.id }
        var nextRead = 0
        names = [:]
        var inCompute = Set<String>()          // optional buffers that got room, by name
        func issueReads(upTo index: Int) {
            while nextRead < reads.count && issueBefore[nextRead] <= index {
                let r = reads[nextRead], land = landing[nextRead], bytes = sizes[land]!
                var deps = lastComputeID.map { [$0] } ?? []
                // The executor allocates a read's buffer when it issues the read, not when the disk gets to
                // it: a reservation from issue (the host stream: no other use on a CPU-only machine) until
                // the read starts, when the read's own buffer takes its place.
                let reservation = "issued " + land
                sizes[reservation] = bytes
                let issued = emit(Operation(id: 0, kind: .free, stream: .host, tier: .compute, creates: [reservation], deps: deps))
                if let w = lastWriter[r.name] { deps.append(w) }
                _ = emit(Operation(id: 0, kind: .free, stream: .read, tier: .compute, frees: [reservation], deps: deps + [issued]))
                let id = emit(Operation(id: 0, kind: .prefetch, stream: .read, tier: .compute, from: .disk, reads: [r.name],
                                        creates: [land], seconds: Double(bytes) / (hw.diskReadBandwidth * share), deps: deps))
                readID[land] = id
                readOps[id] = nextRead
                ioBytes += bytes
                if written.contains(r.name) {
                    _ = emit(Operation(id: 0, kind: .free, stream: .read, tier: .disk, frees: [r.name], deps: [id]))
                }
                nextRead += 1
            }
        }
        var takeIndex = 0
        for (i, step) in program.enumerated() {
            issueReads(upTo: i)
            switch step {
            case .phase, .count: continue
            case .write(let n, _):
                let disk = diskName(n)
                let source = n.hasPrefix("l.") && !inCompute.contains(n) ? "logits" : (names[n] ?? n)
                var deps = lastComputeID.map { [$0] } ?? []
                if !written.contains(disk) {
                    // Weights, m, v: the old copy on disk goes as the new one is written.
                    if let r = readID[names[n] ?? n] { deps.append(r) }
                    _ = emit(Operation(id: 0, kind: .free, stream: .write, tier: .disk, frees: [disk], deps: deps))
                }
                let bytes = sizes[source]!
                if sizes[disk] == nil { sizes[disk] = bytes }
                let id = emit(Operation(id: 0, kind: .offload, stream: .write, tier: .disk, from: .compute, reads: [source],
                                        creates: [disk], seconds: Double(bytes) / (hw.diskWriteBandwidth * share), deps: deps))
                lastWriter[disk] = id
                ioBytes += bytes
                if source == "logits" {
                    syncWrite = id
                } else {
                    _ = emit(Operation(id: 0, kind: .free, stream: .write, tier: .compute, frees: [source], deps: [id]))
                    inCompute.remove(n)
                }
            case .compute(let kind, let action, let takes, let allocs, let frees, let released, let seconds):
                var landed: [String] = []
                for t in takes { names[t] = landing[takeIndex]; landed.append(landing[takeIndex]); takeIndex += 1 }
                var deps = landed.compactMap { readID[$0] }
                if let l = lastComputeID { deps.append(l) }
                if let w = syncWrite { deps.append(w); syncWrite = nil }
                var creates: [String] = []
                for a in allocs where !a.optional || granted.contains(i) { creates.append(a.name); if a.optional { inCompute.insert(a.name) } }
                var freed: [String] = []
                for n in frees + released {
                    if n.hasPrefix("l.") && !landed.contains(names[n] ?? n) && !inCompute.contains(n) { continue }
                    freed.append(names[n] ?? n)
                    inCompute.remove(n)
                }
                let id = emit(Operation(id: 0, kind: kind == .free ? .forward : kind, stream: .compute, tier: .compute,
                                        reads: landed, creates: creates, frees: freed,
                                        seconds: seconds + Double(ioBytes) * hw.ioSecondsOnCompute, deps: deps,
                                        action: action))
                ioBytes = 0
                lastComputeID = id
            }
        }
        var seen = Set<String>()
        let initial = reads.filter { !written.contains($0.name) && seen.insert($0.name).inserted }
            .map { Placement(tensor: $0.name, tier: .disk) }
        let tensors = sizes.map { LogicalTensor(name: $0.key, bytes: $0.value) }.sorted { $0.name < $1.name }
        return (Schedule(strategy: activations.rawValue + "+stream", model: config.name, mode: "train",
                         stageNames: [], tensors: tensors, initial: initial, operations: ops), readOps)
    }

    /// The name on disk of a buffer the step writes.
    func diskName(_ buffer: String) -> String {
        if buffer.hasPrefix("acts ") { return "a." + buffer.dropFirst(5) }
        if buffer.hasPrefix("g ") { return "g." + buffer.dropFirst(2) }
        return buffer
    }

    /// The step simulated under its budget: time, compute peak (with the trainer's scratch), disk.
    public func simulation(hardware: HardwareProfile) throws -> (schedule: Schedule, simulation: Simulation) {
        var delays: [Int: Int] = [:]
        var lastError: Error?
        for _ in 0..<400 {
            let (s, readOps) = schedule(hardware: hardware, delays: delays)
            do {
                return (s, try s.simulate(budgets: [.compute: budget - scratchBytes]))
            } catch let e as ScheduleOverflow {
                // A read with no room where the walk issued it goes one step later (and again if need
                // be); a compute op with no room: the last read issued before it does.
                guard let r = readOps[e.op] ?? readOps.filter({ $0.key < e.op }).max(by: { $0.key < $1.key })?.value else {
                    throw e.error
                }
                delays[r, default: 0] += 1
                lastError = e.error
            }
        }
        throw lastError ?? OffloadError("the streamed step's schedule does not fit its budget")
    }

    /// The exact bytes of every buffer the step's schedule names (the schedule's tensors carry the
    /// tier's accounted sizes): compute buffers and reads, each landing as its tensor on disk.
    public var bufferBytes: [String: Int] {
        var sizes: [String: Int] = [:]
        for r in reads { sizes[r.name] = r.bytes }
        for step in program(hardware: .defaultCPU) {
            if case .compute(_, _, _, let allocs, _, _, _) = step { for a in allocs { sizes[a.name] = a.bytes } }
        }
        return sizes
    }
}
