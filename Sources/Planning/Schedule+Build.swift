// Turns a strategy's list of chain actions (forward k saving X, backward k,
// offload/prefetch of stage k's activations) into a full schedule: the
// parameter traffic and optimizer steps of the chosen placement, the frees, and
// the dependencies. Strategies decide the order; this file decides nothing.
import Foundation
import Memory
import Tensors

/// What a strategy decides for the activations, in execution order.
public enum ChainAction: Codable, Sendable, Equatable {
    case forward(Int, SaveMode)
    case backward(Int)
    /// Write stage k's input (`.input`) or input and saved activations (`.all`) out of compute memory.
    case offload(Int, SaveMode)
    /// Read them back.
    case prefetch(Int, SaveMode)
}

/// Where parameters, gradients and optimizer state live.
public enum ParameterPlacement: String, Codable, Sendable, CaseIterable {
    /// Everything in compute memory; the optimizer step for a stage runs right after its backward.
    case keep
    /// ZeRO-Offload: weights in compute memory; gradients go to the host, AdamW runs on
    /// the host (master weights, m, v there) and the updated weights come back.
    case zeroOffload = "zero-offload"
    /// ZeRO-Infinity: weights, gradients and optimizer state live off the compute tier
    /// (host, or disk with `--disk`) and are streamed in per stage.
    case stream
}

/// Everything a schedule needs besides the actions.
///
/// On a CPU-only profile (`hardware.hostIsCompute`) the builder reads `host` as
/// `compute`: the same RAM, so moving there is no move at all. `zero-offload`, and
/// `stream` or activation/KV offload to the host, then build what `keep` builds; only
/// disk is a separate place.
public struct BuildOptions: Sendable {
    public var parameters: ParameterPlacement
    /// Where streamed parameters and optimizer state live (host or disk).
    public var parameterTier: Tier
    /// Where offloaded activations (and offloaded KV cache) go.
    public var offloadTier: Tier
    /// Generation: keep the KV cache off the compute tier and prefetch it per stage.
    public var kvOffload: Bool
    /// A forward that saves all its activations computes them into the saved tensors themselves and
    /// needs no temporaries (the CPU executor's forwards do; `forwardTempBytes` is then what a
    /// forward that does not save needs).
    public var savingForwardsNeedNoTemporaries: Bool
    /// The executor keeps every gradient in one allocation for the whole step, outside the schedule's
    /// accounting: the schedule's per-stage gradients take no bytes.
    public var gradientsOutsideSchedule = false
    public init(parameters: ParameterPlacement = .keep, parameterTier: Tier = .host, offloadTier: Tier = .host,
                kvOffload: Bool = false, savingForwardsNeedNoTemporaries: Bool = false) {
        self.parameters = parameters; self.parameterTier = parameterTier; self.offloadTier = offloadTier
        self.kvOffload = kvOffload; self.savingForwardsNeedNoTemporaries = savingForwardsNeedNoTemporaries
    }
}

struct ScheduleBuilder {
    let chain: ModelChain
    let options: BuildOptions
    let hardware: HardwareProfile
    var ops: [Operation] = []
    var producer: [Tier: [String: Int]] = [:]
    var readers: [Tier: [String: [Int]]] = [:]
    var present: [Tier: Set<String>] = [:]
    var forwarded = Set<Int>()
    var tensors: [String: Int] = [:]
    var initial: [Placement] = []
    /// The last compute op emitted: a prefetch issued after it starts when it ends,
    /// so reads run one op ahead of their use instead of all at once.
    var lastCompute: Int?
    /// Disk bytes moved since the last compute op with a duration: on a CPU-only machine their
    /// transfers take `hardware.ioComputeSecondsPerByte` each from the next compute op.
    var ioBytesSinceCompute = 0

    init(chain: ModelChain, options: BuildOptions, hardware: HardwareProfile) {
        self.chain = chain; self.hardware = hardware
        var o = options
        if hardware.hostIsCompute {
            if o.parameterTier == .host { o.parameterTier = .compute }
            if o.offloadTier == .host { o.offloadTier = .compute }
            if o.parameters == .zeroOffload || (o.parameters == .stream && o.parameterTier == .compute) {
                o.parameters = .keep
            }
            if o.offloadTier == .compute { o.kvOffload = false }
        }
        self.options = o
        for t in Tier.allCases { producer[t] = [:]; readers[t] = [:]; present[t] = [] }
        for (k, s) in chain.stages.enumerated() {
            declare(s.input); s.saved.forEach { declare($0) }
            declare(LogicalTensor(name: chain.boundaryGradName(k), bytes: s.input.bytes))
            for w in s.parameters {
                declare(w)
                declare(LogicalTensor(name: ModelChain.gradName(w.name),
                                      bytes: options.gradientsOutsideSchedule ? 0 : w.bytes))
                for (a, bytes) in zip(ModelChain.adamNames(w.name), chain.optimizerStateBytes(w)) {
                    declare(LogicalTensor(name: a, bytes: bytes))
                }
            }
            if let kv = s.kvCache { declare(kv) }
        }
        declare(chain.output)
        declare(LogicalTensor(name: "dact.loss", bytes: chain.output.bytes))
        place(chain.stages[0].input.name, .compute)
        let training = chain.mode == .train
        for s in chain.stages {
            for w in s.parameters {
                switch options.parameters {
                case .keep:
                    place(w.name, .compute)
                    if training { ModelChain.adamNames(w.name).forEach { place($0, .compute) } }
                case .zeroOffload:
                    place(w.name, .compute)
                    if training { place(w.name, .host); ModelChain.adamNames(w.name).forEach { place($0, .host) } }
                case .stream:
                    place(w.name, options.parameterTier)
                    if training { ModelChain.adamNames(w.name).forEach { place($0, options.parameterTier) } }
                }
            }
            if let kv = s.kvCache { place(kv.name, options.kvOffload ? options.offloadTier : .compute) }
        }
    }

    mutating func declare(_ t: LogicalTensor) { if tensors[t.name] == nil { tensors[t.name] = t.bytes } }
    mutating func place(_ name: String, _ tier: Tier) {
        initial.append(Placement(tensor: name, tier: tier)); present[tier]!.insert(name)
    }

    /// Appends an op, deriving its dependencies from who produced what it reads
    /// and who still reads what it frees.
    @discardableResult
    mutating func emit(_ kind: OperationKind, _ stream: Stream, stage: Int? = nil, save: SaveMode? = nil,
                       tier: Tier = .compute, from: Tier? = nil, reads: [String] = [], creates: [String] = [],
                       frees: [String] = [], updates: [String] = [], temp: Int = 0, seconds: Double = 0,
                       extraDeps: [Int] = []) -> Int {
        let id = ops.count
        let readTier = from ?? tier
        var deps = Set(extraDeps)
        for n in reads { if let p = producer[readTier]![n] { deps.insert(p) } }
        for n in frees + updates {
            if let p = producer[tier]![n] { deps.insert(p) }
            for r in readers[tier]![n] ?? [] { deps.insert(r) }
        }
        deps.remove(id)
        var seconds = seconds
        if stream == .compute && seconds > 0 {
            seconds += Double(ioBytesSinceCompute) * hardware.ioSecondsOnCompute
            ioBytesSinceCompute = 0
        }
        // Drop deps already implied by stream order.
        let sameStream = deps.filter { ops[$0].stream == stream }
        if let last = sameStream.max() { deps.subtract(sameStream); deps.insert(last) }
        if let prev = ops.last(where: { $0.stream == stream }), deps.contains(prev.id) { deps.remove(prev.id) }
        ops.append(Operation(id: id, kind: kind, stream: stream, stage: stage, save: save, tier: tier, from: from,
                             reads: reads, creates: creates, frees: frees, tempBytes: temp, seconds: seconds,
                             deps: deps.sorted()))
        if stream == .compute && kind != .free { lastCompute = id }
        for n in reads { readers[readTier]![n, default: []].append(id) }
        for n in creates + updates { producer[tier]![n] = id; readers[tier]![n] = []; present[tier]!.insert(n) }
        for n in frees { producer[tier]![n] = nil; readers[tier]![n] = nil; present[tier]!.remove(n) }
        return id
    }

    func bytes(_ names: [String]) -> Int { names.reduce(0) { $0 + (tensors[$1] ?? 0) } }

    /// A training step with disk traffic reads and writes at once (activations or parameters go
    /// out while others come in): each direction runs at its share of the duplex rate.
    func transferSeconds(_ names: [String], from: Tier, to: Tier) -> Double {
        let disk = from == .disk || to == .disk
        let shared = disk && chain.mode == .train ? hardware.duplexFactor : 1
        return Double(bytes(names)) / (hardware.bandwidth(from: from, to: to) * shared)
    }

    mutating func move(_ kind: OperationKind, _ names: [String], from: Tier, to: Tier, freeSource: Bool) {
        guard !names.isEmpty, from != to else { return }
        let stream: Stream = (to == .compute || (from == .disk && to == .host)) ? .read : .write
        let issue = (kind == .prefetch && to == .compute) ? lastCompute.map { [$0] } ?? [] : []
        emit(kind, stream, tier: to, from: from, reads: names, creates: names,
             seconds: transferSeconds(names, from: from, to: to), extraDeps: issue)
        if from == .disk || to == .disk { ioBytesSinceCompute += bytes(names) }
        if freeSource { emit(.free, stream, tier: from, frees: names) }
    }

    func weights(_ k: Int) -> [String] { chain.stages[k].parameters.map(\.name) + chain.stages[k].borrowed }
    func unitTensors(_ k: Int, _ unit: SaveMode) -> [String] {
        let s = chain.stages[k]
        return unit == .all ? [s.input.name] + s.saved.map(\.name) : [s.input.name]
    }

    /// Streamed weights of stage k into compute memory. With `optimizerState` on a
    /// CPU-only machine also k's m and v, which its optimizer step (right after the
    /// backward, in compute memory) needs: read during the backward, one op ahead.
    mutating func ensureWeights(_ k: Int, optimizerState: Bool = false) {
        guard options.parameters == .stream else { return }
        let missing = weights(k).filter { !present[.compute]!.contains($0) }
        move(.prefetch, missing, from: options.parameterTier, to: .compute, freeSource: false)
        if optimizerState && hardware.hostIsCompute && chain.mode == .train {
            let adam = chain.stages[k].parameters.map(\.name).flatMap(ModelChain.adamNames)
            move(.prefetch, adam.filter { !present[.compute]!.contains($0) }, from: options.parameterTier, to: .compute,
                 freeSource: true)
        }
    }

    static func stageOf(_ a: ChainAction) -> Int? {
        switch a {
        case .forward(let k, _), .backward(let k): return k
        default: return nil
        }
    }

    /// Emits the whole step.
    mutating func build(_ actions: [ChainAction]) {
        let n = chain.count
        let computeIdx = actions.indices.filter { Self.stageOf(actions[$0]) != nil }
        var nextCompute: [Int: Int] = [:]
        for (j, i) in computeIdx.enumerated() where j + 1 < computeIdx.count { nextCompute[i] = computeIdx[j + 1] }
        for (idx, action) in actions.enumerated() {
            switch action {
            case .offload(let k, let unit):
                // Offloading to the tier one already is in (host on a CPU-only machine) is nothing.
                move(.offload, unitTensors(k, unit), from: .compute, to: options.offloadTier, freeSource: true)
            case .prefetch(let k, let unit):
                move(.prefetch, unitTensors(k, unit), from: options.offloadTier, to: .compute, freeSource: true)
            case .forward(let k, let save):
                ensureWeights(k)
                if let nx = nextCompute[idx], let nk = Self.stageOf(actions[nx]) { ensureWeights(nk) }
                var kvRead: [String] = []
                if let kv = chain.stages[k].kvCache {
                    if options.kvOffload { move(.prefetch, [kv.name], from: options.offloadTier, to: .compute, freeSource: false) }
                    kvRead = [kv.name]
                }
                let s = chain.stages[k]
                var creates: [String] = []
                if k + 1 < n { creates.append(chain.boundaryName(k + 1)) } else if chain.mode == .generate {
                    creates.append(chain.output.name)
                } else if !present[.compute]!.contains("dact.loss") {
                    creates.append("dact.loss")
                }
                if save == .all { creates += s.saved.map(\.name) }
                var frees: [String] = []
                if save == .none && k > 0 { frees.append(s.input.name) }
                let kind: OperationKind = forwarded.contains(k) ? .recompute : .forward
                forwarded.insert(k)
                emit(kind, .compute, stage: k, save: save, reads: [s.input.name] + weights(k) + kvRead,
                     creates: creates, frees: frees,
                     temp: save == .all && options.savingForwardsNeedNoTemporaries ? 0 : s.forwardTempBytes,
                     seconds: s.forwardSeconds)
                if options.kvOffload, let kv = s.kvCache { emit(.free, .compute, frees: [kv.name]) }
                if chain.mode == .generate && k == n - 1 { emit(.free, .compute, frees: [chain.output.name]) }
                // A forward right before its own backward only recomputes what B_k needs: its output is not.
                if let nx = nextCompute[idx], actions[nx] == .backward(k), k + 1 < n {
                    emit(.free, .compute, frees: [chain.boundaryName(k + 1)])
                }
                releaseWeights(k, next: nextCompute[idx].flatMap { Self.stageOf(actions[$0]) })
            case .backward(let k):
                ensureWeights(k, optimizerState: true)
                if let nx = nextCompute[idx], let nk = Self.stageOf(actions[nx]) { ensureWeights(nk) }
                let s = chain.stages[k]
                let gradIn = k + 1 < n ? chain.boundaryGradName(k + 1) : "dact.loss"
                var grads: [String] = []
                for w in weights(k) { grads.append(ModelChain.gradName(w)) }
                let newGrads = grads.filter { !present[.compute]!.contains($0) }
                let oldGrads = grads.filter { present[.compute]!.contains($0) }
                var creates = newGrads
                if k > 0 { creates.append(chain.boundaryGradName(k)) }
                var frees = s.saved.map(\.name) + [gradIn]
                if k > 0 { frees.append(s.input.name) }
                emit(.backward, .compute, stage: k, reads: [s.input.name] + s.saved.map(\.name) + [gradIn] + weights(k) + oldGrads,
                     creates: creates, frees: frees, updates: oldGrads, temp: s.backwardTempBytes, seconds: s.backwardSeconds)
                if options.parameters == .stream && hardware.hostIsCompute {
                    // The step updates the weights the backward just used, still in memory.
                    optimizerStep(k)
                    releaseWeights(k, next: nextCompute[idx].flatMap { Self.stageOf(actions[$0]) }, afterBackward: true)
                } else {
                    releaseWeights(k, next: nextCompute[idx].flatMap { Self.stageOf(actions[$0]) }, afterBackward: true)
                    optimizerStep(k)
                }
            }
        }
    }

    /// Frees streamed weights the next compute op does not use.
    mutating func releaseWeights(_ k: Int, next: Int?, afterBackward: Bool = false) {
        guard options.parameters == .stream else { return }
        let keep = Set(next.map { weights($0) } ?? [])
        var drop = weights(k).filter { !keep.contains($0) && present[.compute]!.contains($0) }
        // The tied embedding is also read by the head's backward; it stays until its own stage is done.
        if afterBackward, chain.stages[k].borrowed.isEmpty == false { drop = drop.filter { !chain.stages[k].borrowed.contains($0) } }
        if !drop.isEmpty { emit(.free, .compute, frees: drop) }
    }

    /// The optimizer step for stage k's own parameters, once their gradients are complete.
    mutating func optimizerStep(_ k: Int) {
        let own = chain.stages[k].parameters.map(\.name)
        guard chain.mode == .train, !own.isEmpty else { return }
        // A parameter another stage still has to backward through (tied embedding) waits for it.
        let grads = own.map(ModelChain.gradName)
        let adam = own.flatMap(ModelChain.adamNames)
        let seconds = Double(bytes(own)) * chain.optimizerSecondsPerParameterByte
        switch options.parameters {
        case .keep:
            emit(.optimizerStep, .compute, stage: k, reads: own + grads + adam, frees: grads, updates: own + adam, seconds: seconds)
        case .zeroOffload:
            move(.offload, grads, from: .compute, to: .host, freeSource: true)
            emit(.free, .compute, frees: own)
            emit(.optimizerStep, .host, stage: k, tier: .host, reads: own + grads + adam, frees: grads, updates: own + adam, seconds: seconds)
            move(.prefetch, own, from: .host, to: .compute, freeSource: false)
        case .stream where hardware.hostIsCompute:
            // CPU-only, parameters on disk: w is in memory from the backward, m and v were
            // read during it. Step on the compute stream (the host's cores are compute's:
            // no free overlap), then write w, m, v back in place of the disk copies.
            let t = options.parameterTier
            emit(.optimizerStep, .compute, stage: k, reads: own + grads + adam, frees: grads, updates: own + adam, seconds: seconds)
            emit(.free, .write, tier: t, frees: own)
            move(.offload, own + adam, from: .compute, to: t, freeSource: true)
        case .stream:
            let t = options.parameterTier
            move(.offload, grads, from: .compute, to: .host, freeSource: true)
            let stillResident = own.filter { present[.compute]!.contains($0) }
            if !stillResident.isEmpty { emit(.free, .compute, frees: stillResident) }
            if t == .host {
                emit(.optimizerStep, .host, stage: k, tier: .host, reads: own + grads + adam, frees: grads, updates: own + adam, seconds: seconds)
            } else {
                move(.prefetch, own + adam, from: t, to: .host, freeSource: true)
                emit(.optimizerStep, .host, stage: k, tier: .host, reads: own + grads + adam, frees: grads, updates: own + adam, seconds: seconds)
                move(.offload, own + adam, from: .host, to: t, freeSource: true)
            }
        }
    }

    func schedule(strategy: String) -> Schedule {
        var ops = self.ops
        // Transfers after the last compute op still take their share from it.
        if ioBytesSinceCompute > 0, let last = ops.lastIndex(where: { $0.stream == .compute && $0.seconds > 0 }) {
            ops[last].seconds += Double(ioBytesSinceCompute) * hardware.ioSecondsOnCompute
        }
        return Schedule(strategy: strategy, model: chain.model, mode: chain.mode.rawValue, stageNames: chain.stages.map(\.name),
                        tensors: tensors.map { LogicalTensor(name: $0.key, bytes: $0.value) }.sorted { $0.name < $1.name },
                        initial: initial, operations: ops)
    }
}

extension ModelChain {
    /// The schedule a list of actions gives under a parameter placement.
    public func schedule(_ actions: [ChainAction], strategy: String, options: BuildOptions,
                         hardware: HardwareProfile) -> Schedule {
        var b = ScheduleBuilder(chain: self, options: options, hardware: hardware)
        b.build(actions)
        return b.schedule(strategy: strategy)
    }
}
