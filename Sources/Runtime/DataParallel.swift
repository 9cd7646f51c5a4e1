// Data-parallel training across the ranks of an MPI job, with ZeRO stage 0 or 1.
//
// Global step k reads the windows one process with batch N·B would read; rank r takes rows
// [r·B, (r+1)·B) of them. Each rank's gradients are scaled by its share of the targets trained on,
// so their sum is the gradient of the global mean loss. The parameters are cut into N shards of
// whole tensors (contiguous, about equal in size); the reduction is a reduce-scatter done by hand:
// an all-to-all moves every rank's copy of shard j to rank j, which adds the copies in rank order
// (0, 1, …, N−1), so the sum never depends on the algorithm MPI picks and a run repeats bit for bit
// for the same N. ZeRO 0 then all-gathers the summed gradients and every rank updates every weight
// (each holding the whole optimizer state); ZeRO 1 has rank r update only its shard, holding only
// that shard's optimizer state, then all-gathers the weights. Both give the same bits.
// Not here: launching (mpirun), the MPI binding (Communicator), checkpoint files (Checkpoint).

import Foundation
import Kernels
import Models
import Planning
import Tensors

public final class DataParallel {
    public let comm: Communicator
    /// 0: optimizer state on every rank; 1: each rank holds and updates its shard's.
    public let zero: Int
    /// Rank r's shard: parameter entries `shards[r]` of the layout, floats `floats[r]` of its buffers.
    public let shards: [Range<Int>]
    public let floats: [Range<Int>]
    /// Floats each rank's piece of one all-to-all round carries (bounds the scratch: 2 × N × piece floats).
    public let piece: Int
    /// Bytes this rank has handed to other ranks so far: (N−1)/N of the gradients per reduce-scatter and of
    /// the all-gathered buffer per all-gather, 8 per loss exchanged.
    public private(set) var bytesSent = 0
    public var rank: Int { comm.rank }
    public var size: Int { comm.size }

    public init(comm: Communicator, layout: ParameterLayout, zero: Int, piece: Int = 1 << 20) throws {
        guard zero == 0 || zero == 1 else {
            throw OffloadError("[train] --zero \(zero) is not built yet: stages 0 (replicated optimizer state) and "
                               + "1 (optimizer state sharded across ranks) are; 2 and 3 shard gradients and parameters")
        }
        self.comm = comm; self.zero = zero; self.piece = piece
        (shards, floats) = DataParallel.cut(layout, into: comm.size)
    }

    private init(comm: Communicator, floats count: Int) {
        self.comm = comm; zero = 0; piece = 1 << 20
        let n = comm.size
        shards = (0..<n).map { _ in 0..<0 }
        floats = (0..<n).map { count * $0 / n ..< count * ($0 + 1) / n }
    }

    /// What `offload profile --collectives` measures: the gradient exchange of training (ZeRO 0: all-to-all,
    /// rank-order sums, all-gather) on `floats` floats, the slowest rank's median of `repeats`, as bytes a
    /// rank hands to the others per second; and one collective's fixed cost (an 8-byte all-gather).
    public static func measure(_ comm: Communicator, floats: Int, repeats: Int) -> HardwareProfile.CollectiveRates {
        let p = DataParallel(comm: comm, floats: floats)
        let g = FloatBuffer(count: floats)
        for i in 0..<floats { g.base[i] = Float(i % 1000) }
        func slowest(_ body: () -> Void) -> Double {
            comm.barrier()
            let t0 = now()
            body()
            return comm.allGather([now() - t0]).map { $0[0] }.max()!
        }
        var times: [Double] = [], sent = 0
        for _ in 0..<repeats {
            let before = p.bytesSent
            times.append(slowest { p.reduceGradients(g) })
            sent = p.bytesSent - before
        }
        let calls = 200
        let latency = slowest { for _ in 0..<calls { _ = comm.allGather([0.0]) } } / Double(calls)
        let seconds = times.sorted()[times.count / 2]
        return HardwareProfile.CollectiveRates(ranks: comm.size, bytesPerSecond: Double(sent) / max(seconds, 1e-9),
                                          latencySeconds: latency)
    }

    /// Contiguous runs of whole entries, cut where the running float count passes r/N of the total.
    public static func cut(_ layout: ParameterLayout, into n: Int) -> (entries: [Range<Int>], floats: [Range<Int>]) {
        let e = layout.entries
        func start(_ i: Int) -> Int { i < e.count ? e[i].offset : layout.totalFloats }
        var bounds = [0]
        for r in 1..<max(n, 1) {
            let target = layout.totalFloats * r / n
            var i = bounds.last!
            while i < e.count && start(i + 1) <= target { i += 1 }
            // The nearer of the two boundaries around the target.
            if i < e.count && target - start(i) > start(i + 1) - target { i += 1 }
            bounds.append(max(i, bounds.last!))
        }
        bounds.append(e.count)
        let entries = (0..<n).map { bounds[$0]..<bounds[$0 + 1] }
        return (entries, entries.map { start($0.lowerBound)..<start($0.upperBound) })
    }

    // MARK: The batch

    /// Rank r's rows of global micro-batch `k` (N·B windows), and every rank's count of targets trained on.
    public func batch(_ data: TokenWindows, _ k: Int, rows b: Int) -> (inputs: [Int], targets: [Int], counts: [Int]) {
        let (inputs, targets) = data.batch(k, size: b * size)
        let t = data.seqLen, mine = rank * b * t ..< (rank + 1) * b * t
        let counts = (0..<size).map { r in
            targets[r * b * t ..< (r + 1) * b * t].reduce(0) { $0 + ($1 == LlamaTrainer.ignoredTarget ? 0 : 1) }
        }
        return (Array(inputs[mine]), Array(targets[mine]), counts)
    }

    /// Every rank's `values`, for the losses of a step.
    public func exchange(_ values: [Double]) -> [[Double]] {
        bytesSent += 8 * values.count * (size - 1)
        return comm.allGather(values)
    }

    /// The global mean over `values[rank]` weighted by `counts[rank]`, added in rank order.
    public func weightedMean(_ values: [Double], counts: [Int]) -> Double {
        let total = Double(counts.reduce(0, +))
        return zip(values, counts).reduce(0.0) { $0 + $1.0 * Double($1.1) / total }
    }

    // MARK: Reductions

    /// Sums every rank's gradients in rank order: on return rank r's shard of `g` holds the sum (ZeRO 1), or
    /// every float does (ZeRO 0).
    public func reduceGradients(_ g: FloatBuffer) {
        reduceScatter(g.base)
        if zero == 0 { allGatherShards(g.base) }
    }

    /// After each rank updated its shard of `w`: every rank's shard on every rank.
    public func shareUpdatedWeights(_ w: FloatBuffer) {
        if zero == 1 { allGatherShards(w.base) }
    }

    private func rounds() -> Int { floats.map { ($0.count + piece - 1) / piece }.max() ?? 0 }
    private func pieceCount(_ r: Int, round t: Int) -> Int { max(0, min(piece, floats[r].count - t * piece)) }

    private func reduceScatter(_ g: UnsafeMutablePointer<Float>) {
        let n = size, p = piece
        let send = UnsafeMutablePointer<Float>.allocate(capacity: n * p), receive = UnsafeMutablePointer<Float>.allocate(capacity: n * p)
        defer { send.deallocate(); receive.deallocate() }
        let displacements = (0..<n).map { Int32($0 * p) }
        for t in 0..<rounds() {
            let counts = (0..<n).map { pieceCount($0, round: t) }
            for j in 0..<n where counts[j] > 0 {
                (send + j * p).update(from: g + floats[j].lowerBound + t * p, count: counts[j])
            }
            let mine = counts[rank]
            bytesSent += 4 * (counts.reduce(0, +) - mine)
            comm.allToAll(send: send, counts: counts.map { Int32($0) }, displacements: displacements,
                          receive: receive, counts: [Int32](repeating: Int32(mine), count: n), displacements: displacements)
            let out = g + floats[rank].lowerBound + t * p
            // Rank 0's copy, then + rank 1's, ... (the same order for every element, any thread split).
            TrainingThreads.forEachRange(mine, minPerThread: 1 << 16) { range in
                for i in range { out[i] = receive[i] }
                for r in 1..<n {
                    let src = receive + r * p
                    for i in range { out[i] += src[i] }
                }
            }
        }
    }

    private func allGatherShards(_ x: UnsafeMutablePointer<Float>) {
        let n = size, p = piece
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: n * p)
        defer { buffer.deallocate() }
        let displacements = (0..<n).map { Int32($0 * p) }
        for t in 0..<rounds() {
            let counts = (0..<n).map { pieceCount($0, round: t) }
            if counts[rank] > 0 { (buffer + rank * p).update(from: x + floats[rank].lowerBound + t * p, count: counts[rank]) }
            bytesSent += 4 * counts[rank] * (n - 1)
            comm.allGatherInPlace(buffer, counts: counts.map { Int32($0) }, displacements: displacements)
            for j in 0..<n where j != rank && counts[j] > 0 {
                (x + floats[j].lowerBound + t * p).update(from: buffer + j * p, count: counts[j])
            }
        }
    }

    /// The global gradient norm, the same Double `globalGradientNorm()` gives on the summed gradients: per
    /// parameter sums of squares (ZeRO 1: each by its shard's rank, all-gathered), added in table order.
    public func gradientNorm(_ model: some TrainableParameters) -> Double {
        guard zero == 1 else { return model.globalGradientNorm() }
        let e = model.layout.entries
        var mine = [Double](repeating: 0, count: e.count)
        for i in shards[rank] { mine[i] = sumOfSquares(model.gradients.base + e[i].offset, e[i].elements) }
        let all = comm.allGather(mine)
        bytesSent += 8 * shards[rank].count * (size - 1)
        var total = 0.0
        for r in 0..<size { for i in shards[r] { total += all[r][i] } }
        return total.squareRoot()
    }

    /// The parameters rank r updates: its shard of `model` (ZeRO 1), or all of them.
    public func updated(_ model: any TrainableParameters) -> any TrainableParameters {
        zero == 1 ? ParameterShard(model, entries: shards[rank], floats: floats[rank]) : model
    }

    // MARK: Checkpoints

    /// ZeRO 1: every rank's shard of the optimizer state gathered into the whole state on rank 0 (nil on the
    /// others). A shard's state is the whole state's bytes for its parameters, so the gather is a
    /// concatenation, done in rounds of `piece` floats' bytes per rank through a staging buffer (MPI counts
    /// are 32-bit).
    public func gatherState(_ shard: OptimizerState, optimizer: any Optimizer, layout: ParameterLayout) -> OptimizerState? {
        let counts = comm.allGather([shard.bytes]).map { $0[0] }
        let full = rank == 0 ? OptimizerState(for: optimizer, layout: layout) : nil
        if let full { precondition(full.bytes == counts.reduce(0, +), "shard states do not add up to the whole") }
        let offsets = counts.reduce(into: [0]) { $0.append($0.last! + $1) }
        let chunk = 4 * piece
        let staging = full.map { _ in UnsafeMutableRawPointer.allocate(byteCount: size * chunk, alignment: 64) }
        defer { staging?.deallocate() }
        for t in 0..<((counts.max() ?? 0) + chunk - 1) / chunk {
            let pieces = counts.map { max(0, min(chunk, $0 - t * chunk)) }
            comm.gather(shard.base + min(t * chunk, shard.bytes), count: pieces[rank], into: staging,
                        counts: pieces.map { Int32($0) }, displacements: (0..<size).map { Int32($0 * chunk) })
            if let full, let staging {
                for r in 0..<size where pieces[r] > 0 {
                    (full.base + offsets[r] + t * chunk).copyMemory(from: staging + r * chunk, byteCount: pieces[r])
                }
            }
        }
        full?.step = shard.step
        return full
    }
}

/// Parameters `entries` of a model as a model of their own, on windows of its weights and gradients
/// (ZeRO 1's shard: what one rank's optimizer updates).
final class ParameterShard: TrainableParameters {
    let whole: any TrainableParameters
    let layout: ParameterLayout
    let weights: FloatBuffer
    let gradients: FloatBuffer

    init(_ whole: any TrainableParameters, entries: Range<Int>, floats: Range<Int>) {
        self.whole = whole
        let e = whole.layout.entries[entries]
        layout = ParameterLayout(e.map { ($0.spec, $0.stage) })
        precondition(layout.totalFloats == floats.count && zip(layout.entries, e).allSatisfy { $0.offset == $1.offset - floats.lowerBound },
                     "a shard's layout must be its part of the whole")
        weights = FloatBuffer(window: floats, of: whole.weights)
        gradients = FloatBuffer(window: floats, of: whole.gradients)
    }

    func referenceOrder(of entry: ParameterLayout.Entry) -> ReferenceOrder? {
        whole.layout.entries.first { $0.name == entry.name }.flatMap { whole.referenceOrder(of: $0) }
    }
}
