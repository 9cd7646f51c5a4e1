// Llama-family forward pass for inference: RMSNorm, RoPE (either convention),
// grouped-query causal attention over a KV cache, SwiGLU MLP, tied or untied
// head. One call handles any number of new tokens: a prompt (prefill) or one
// token (decode). Weights are read in their stored type (see Kernels/Matmul).
// Weights come from the source's memory map, or, when a `BlockWeightSupplier` is
// given (weight streaming under a budget), from it one stage at a time; scratch
// and KV cache then come from a `ComputeMemory` so a budget counts them.

import Foundation
import Kernels
import Tensors

/// Where a KV cache keeps the KV heads it does not hold in memory (a disk tier): for layer l, heads
/// [residentHeads[l], kvHeads). A forward hands each layer's new rows to `append` after its
/// attention; during the attention, `nextSpan` gives a disk head's keys and values a span of
/// positions at a time, in the order `beginForward` announced (so the store can read ahead),
/// from position 0 to the forward's last row (its own new rows included).
public protocol KVHeadStore: AnyObject {
    /// A forward of `rows` rows at positions [start, start + rows) begins.
    func beginForward(start: Int, rows: Int) throws
    /// The next span of head `head` of `layer`: keys and values of positions [first, first + count),
    /// a row of headDim floats every headDim floats. `newK`, `newV`: the forward's new rows
    /// (rows of kvDim floats), for the positions not yet stored. nil: the head's last span was given.
    func nextSpan(layer: Int, head: Int, newK: UnsafePointer<Float>, newV: UnsafePointer<Float>) throws
        -> (k: UnsafePointer<Float>, v: UnsafePointer<Float>, first: Int, count: Int)?
    /// The span `nextSpan` gave is no longer read.
    func releaseSpan()
    /// Keeps positions [start, start + rows) of `layer`'s disk heads from rows of kvDim floats;
    /// `start` is the number of positions the layer holds.
    func append(layer: Int, start: Int, rows: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>) throws
    /// Positions [from, to) of `layer`'s disk heads into rows of kvDim floats (their columns only).
    func read(layer: Int, from: Int, to: Int, k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>) throws
    /// Every layer holds positions [0, length) from now on (length ≤ what they hold).
    func truncate(to length: Int) throws
}

/// Keys and values of every layer for positions [0, length). Layer l keeps KV heads
/// [0, residentHeads[l]) in memory (rows of residentHeads[l]·headDim floats) and the rest in `store`.
public final class KVCache {
    public let layers: Int
    public let capacity: Int
    public let kvDim: Int
    let kvHeads: Int
    let headDim: Int
    public internal(set) var length = 0
    /// Per layer: its resident heads' keys and values (nil when none is resident).
    let k: [UnsafeMutablePointer<Float>?]
    let v: [UnsafeMutablePointer<Float>?]
    private let memory: ComputeMemory?
    private var name = "kv"
    /// KV heads of each layer held in memory (the first ones); the rest live in `store`.
    public let residentHeads: [Int]
    let store: KVHeadStore?

    public init(config: LlamaConfig, capacity: Int) {
        layers = config.layers; self.capacity = capacity; kvDim = config.kvDim; memory = nil
        kvHeads = config.kvHeads; headDim = config.headDim
        residentHeads = Array(repeating: config.kvHeads, count: layers); store = nil
        k = (0..<layers).map { _ in .allocate(capacity: capacity * config.kvDim) }
        v = (0..<layers).map { _ in .allocate(capacity: capacity * config.kvDim) }
    }

    /// A cache whose resident heads are allocated from `memory` (counted against its budget); the
    /// other heads (`residentHeads` per layer: how many stay; nil: all) live in `store`.
    /// `name` prefixes the buffer names, so several caches can share one memory.
    public init(config: LlamaConfig, capacity: Int, memory: ComputeMemory,
                residentHeads: [Int]? = nil, store: KVHeadStore? = nil, name: String = "kv") throws {
        let resident = residentHeads ?? Array(repeating: config.kvHeads, count: config.layers)
        precondition(resident.count == config.layers && resident.allSatisfy { $0 >= 0 && $0 <= config.kvHeads },
                     "resident heads per layer")
        precondition(resident.allSatisfy { $0 == config.kvHeads } || store != nil, "heads on disk need a store")
        if let l = (0..<config.layers).first(where: { resident[$0] < config.kvHeads && config.slidingWindow != nil
                                                      && config.isLocalLayer($0) }) {
            throw OffloadError("[kv] layer \(l) attends over a sliding window: its KV cache stays in memory")
        }
        layers = config.layers; self.capacity = capacity; kvDim = config.kvDim; self.memory = memory
        kvHeads = config.kvHeads; headDim = config.headDim
        self.name = name
        self.residentHeads = resident; self.store = store
        var k: [UnsafeMutablePointer<Float>?] = [], v: [UnsafeMutablePointer<Float>?] = []
        do {
            for l in 0..<config.layers {
                let bytes = capacity * resident[l] * config.headDim * 4
                guard bytes > 0 else { k.append(nil); v.append(nil); continue }
                k.append(try memory.allocate("\(name).k.\(l)", bytes: bytes).assumingMemoryBound(to: Float.self))
                v.append(try memory.allocate("\(name).v.\(l)", bytes: bytes).assumingMemoryBound(to: Float.self))
            }
            try store?.truncate(to: 0)
        } catch {
            KVCache.free(memory, layers: config.layers, name: name)
            throw error
        }
        self.k = k; self.v = v
    }

    private static func free(_ memory: ComputeMemory, layers: Int, name: String) {
        for l in 0..<layers { memory.free("\(name).k.\(l)"); memory.free("\(name).v.\(l)") }
    }

    deinit {
        if let memory {
            KVCache.free(memory, layers: layers, name: name)
        } else {
            (k + v).forEach { $0?.deallocate() }
        }
    }

    public var bytes: Int { 2 * capacity * residentHeads.reduce(0, +) * headDim * 4 }
    /// Every head of every layer in memory.
    public var allResident: Bool { residentHeads.allSatisfy { $0 == kvHeads } }
    func allResident(_ l: Int) -> Bool { residentHeads[l] == kvHeads }
    public func reset() throws { try truncate(to: 0) }

    /// Positions [from, from + count) of `layer` into rows of kvDim floats (within the length).
    public func read(layer l: Int, from: Int, count: Int, k dk: UnsafeMutablePointer<Float>,
                     v dv: UnsafeMutablePointer<Float>) throws {
        precondition(from >= 0 && from + count <= length, "rows past the cache")
        copyResident(l, from: from, count: count, toRows: (dk, dv))
        if !allResident(l), count > 0 { try store!.read(layer: l, from: from, to: from + count, k: dk, v: dv) }
    }

    /// Writes positions [start, start + rows) of `layer` from rows of kvDim floats; `start` is the
    /// number of positions the layer holds (every layer written, `setLength` makes them the cache's).
    public func append(layer l: Int, start: Int, rows: Int, k sk: UnsafePointer<Float>, v sv: UnsafePointer<Float>) throws {
        precondition(start + rows <= capacity, "rows past the cache")
        copyResident(l, from: start, count: rows, fromRows: (sk, sv))
        if !allResident(l), rows > 0 { try store!.append(layer: l, start: start, rows: rows, k: sk, v: sv) }
    }

    /// Copies the resident heads' columns of `count` positions from `start` between the cache and rows
    /// of kvDim floats (one direction: `toRows` or `fromRows`).
    func copyResident(_ l: Int, from start: Int, count: Int,
                      toRows: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>)? = nil,
                      fromRows: (UnsafePointer<Float>, UnsafePointer<Float>)? = nil) {
        guard let ck = k[l], let cv = v[l] else { return }
        let width = residentHeads[l] * headDim
        for i in 0..<count {
            let c = (start + i) * width
            if let (dk, dv) = toRows {
                (dk + i * kvDim).update(from: ck + c, count: width); (dv + i * kvDim).update(from: cv + c, count: width)
            }
            if let (sk, sv) = fromRows {
                (ck + c).update(from: sk + i * kvDim, count: width); (cv + c).update(from: sv + i * kvDim, count: width)
            }
        }
    }

    /// The cache holds positions [0, n) (every layer's rows appended).
    public func setLength(_ n: Int) {
        precondition(n >= 0 && n <= capacity, "length \(n) of a cache of \(capacity)")
        length = n
    }
    /// Forgets positions from `n` on (a conversation that diverges from what the cache holds).
    public func truncate(to n: Int) throws {
        precondition(n >= 0 && n <= length, "truncate(to: \(n)) of a cache of \(length)")
        try store?.truncate(to: n)
        length = n
    }
}

/// Memory a budget counts: the executor of a plan hands out buffers by name.
/// A name is allocated at most once until freed.
public protocol ComputeMemory: AnyObject {
    func allocate(_ name: String, bytes: Int) throws -> UnsafeMutableRawPointer
    /// Returns the bytes of `name` (nothing when it is not held).
    func free(_ name: String)
}

/// Scratch buffers for one forward call, grown on demand (from `memory` when set).
final class Workspace {
    private var buffers: [String: (UnsafeMutablePointer<Float>, Int)] = [:]
    var memory: ComputeMemory?
    func get(_ name: String, _ count: Int) throws -> UnsafeMutablePointer<Float> {
        if let (p, n) = buffers[name], n >= count { return p }
        if let memory {
            if buffers[name] != nil { memory.free("scratch." + name) }
            buffers[name] = nil
            let p = try memory.allocate("scratch." + name, bytes: max(count, 1) * 4).assumingMemoryBound(to: Float.self)
            buffers[name] = (p, count)
            return p
        }
        buffers[name]?.0.deallocate()
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        buffers[name] = (p, count)
        return p
    }
    deinit {
        if let memory { buffers.keys.forEach { memory.free("scratch." + $0) } } else {
            buffers.values.forEach { $0.0.deallocate() }
        }
    }
}

/// The seven matrices of one block, in the layout a forward call reads: with one
/// token row, Q4_1 matrices carry their split copy (`WeightMatrix.split`).
public struct BlockMatrices {
    public var q, k, v, o, gate, up, down: WeightMatrix
    public init(q: WeightMatrix, k: WeightMatrix, v: WeightMatrix, o: WeightMatrix,
                gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix) {
        self.q = q; self.k = k; self.v = v; self.o = o; self.gate = gate; self.up = up; self.down = down
    }
    /// GGUF names of the matrices, in the order of `all`.
    public static let names = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    public init(_ m: [WeightMatrix]) {
        precondition(m.count == 7)
        self.init(q: m[0], k: m[1], v: m[2], o: m[3], gate: m[4], up: m[5], down: m[6])
    }
}

/// Where a model whose weights are not all in memory gets its stages (a weight
/// streaming executor). Stages are numbered: blocks 0..<layers, then the head's
/// chunks of vocabulary rows. Every forward call makes, in this order:
/// `beginForward`, `embeddingRow` per token, `block`/`release` per layer,
/// `headChunk`/`release` per chunk (only the last token's logits), `endForward`.
public protocol BlockWeightSupplier: AnyObject {
    /// `rows` token rows are about to run (1: decode, which reads split Q4_1 copies); `logits`: the
    /// forward runs the head (a prefill pass before the last runs only the blocks).
    func beginForward(rows: Int, logits: Bool) throws
    /// The forwards that will follow, in order (the current one first when called before it
    /// begins): a chunked prefill's passes, so reads can run ahead into them.
    func expectForwards(_ forwards: [(rows: Int, logits: Bool)])
    /// Token `token`'s embedding as fp32, the way the resident path converts it.
    func embeddingRow(token: Int, into dst: UnsafeMutablePointer<Float>) throws
    /// Block `layer`'s matrices, valid until `release(stage: layer)`.
    func block(_ layer: Int) throws -> BlockMatrices
    var headChunkCount: Int { get }
    /// Head chunk `i`: its first vocabulary row and its rows; valid until `release(stage: layers + i)`.
    func headChunk(_ i: Int) throws -> (firstRow: Int, matrix: WeightMatrix)
    func release(stage: Int)
    func endForward()
}

public final class LlamaModel {
    public let config: LlamaConfig
    public let source: WeightSource
    public let pool: ComputePool
    let rope: RopeTable
    /// RoPE of the sliding-window layers when they have their own base (Gemma 3).
    let localRope: RopeTable?
    let halfSplitRope: Bool

    struct Block {
        var attnNorm: [Float], ffnNorm: [Float]
        var q, k, v, o, gate, up, down: WeightMatrix
        /// Vectors beyond Llama's (small: always read, never streamed).
        var extra: BlockExtras
        /// A mixture-of-experts block's router and experts (its gate, up and down are then unused).
        var moe: MoEBlockWeights? = nil
    }

    /// q, k, v biases (Qwen2); per-head q and k norms and the norms after attention and after
    /// the feed-forward (Gemma 3).
    struct BlockExtras {
        var bias: (q: [Float], k: [Float], v: [Float])?
        var qkNorm: (q: [Float], k: [Float])?
        var postNorm: (attention: [Float], ffn: [Float])?
        /// RMSNorm over the whole q and k projections (OLMoE), before RoPE.
        var fullQKNorm: (q: [Float], k: [Float])?

        init(_ source: WeightSource, _ i: Int) throws {
            let c = source.config, p = "blk.\(i)."
            if c.attentionBias {
                bias = (try source.vector(p + "attn_q.bias"), try source.vector(p + "attn_k.bias"),
                        try source.vector(p + "attn_v.bias"))
            }
            if c.architecture == .gemma3 || c.architecture == .qwen3moe {
                qkNorm = (try source.vector(p + "attn_q_norm.weight"), try source.vector(p + "attn_k_norm.weight"))
            }
            if c.architecture == .gemma3 {
                postNorm = (try source.vector(p + "post_attention_norm.weight"), try source.vector(p + "post_ffw_norm.weight"))
            }
            if c.architecture == .olmoe {
                fullQKNorm = (try source.vector(p + "attn_q_norm.weight"), try source.vector(p + "attn_k_norm.weight"))
            }
        }
    }
    var blocks: [Block]
    private var decodeCopies: [UnsafeMutableRawPointer] = []
    let embedding: WeightMatrix
    let head: WeightMatrix
    let outputNorm: [Float]
    let work = Workspace()
    /// Streaming: the matrices come from here (the `blocks` entries then only hold norms).
    public let supplier: BlockWeightSupplier?
    /// Streaming: where the KV cache and scratch live.
    public let memory: ComputeMemory?
    /// LoRA adapters applied to the projections they target, unmerged: each targeted product gains
    /// (B·(A·x))·alpha/rank, as peft computes it. nil: the base model.
    public private(set) var adapters: LoRAAdapters?
    /// Called by every mixture-of-experts block of every forward with each row's chosen experts
    /// (ascending); nil: not recorded.
    public var onRouting: ((_ layer: Int, _ experts: [[Int]]) -> Void)?
    /// Expert offloading: the experts come from here instead of the mapped file (nil: all in memory).
    public var expertSupplier: ExpertSupplier?

    /// Applies `adapters` (nil: none) from the next forward on.
    public func setAdapters(_ adapters: LoRAAdapters?) throws {
        if adapters != nil { try config.requireDense(for: "LoRA") }
        if let a = adapters, a.config != config || a.ropeStyle != source.ropeStyle {
            throw OffloadError("[lora] the adapters were made for another model than \(source.sourceName)")
        }
        self.adapters = adapters
    }

    /// A model whose matrices come from `supplier`, one stage at a time, with
    /// cache and scratch from `memory`. Only the norms are read from `source` here.
    public init(source: WeightSource, threads: Int, maxPositions: Int? = nil,
                supplier: BlockWeightSupplier, memory: ComputeMemory) throws {
        let c = source.config
        try c.requireDense(for: "weight streaming (--budget)")
        config = c
        self.source = source
        self.supplier = supplier
        self.memory = memory
        work.memory = memory
        pool = ComputePool(threads: threads)
        halfSplitRope = source.ropeStyle == .halfSplit
        rope = c.ropeTable(maxPositions: min(maxPositions ?? c.contextLength, c.contextLength))
        localRope = c.localRopeTable(maxPositions: rope.maxPositions)
        // Norms copied out: the matrices are streamed, so nothing maps the file's pages.
        func vector(_ name: String) throws -> [Float] { try source.vector(name) }
        // A placeholder the forward never reads: the supplier's matrices replace it.
        let none = WeightMatrix(data: UnsafeRawPointer(bitPattern: 64)!, dtype: .f32, rows: 0, cols: 0)
        blocks = try (0..<c.layers).map { i in
            Block(attnNorm: try vector("blk.\(i).attn_norm.weight"), ffnNorm: try vector("blk.\(i).ffn_norm.weight"),
                  q: none, k: none, v: none, o: none, gate: none, up: none, down: none, extra: try BlockExtras(source, i))
        }
        embedding = none
        head = none
        outputNorm = try vector("output_norm.weight")
    }

    public init(source: WeightSource, threads: Int, maxPositions: Int? = nil) throws {
        supplier = nil
        memory = nil
        let c = source.config
        config = c
        self.source = source
        pool = ComputePool(threads: threads)
        halfSplitRope = source.ropeStyle == .halfSplit
        rope = c.ropeTable(maxPositions: min(maxPositions ?? c.contextLength, c.contextLength))
        localRope = c.localRopeTable(maxPositions: rope.maxPositions)
        func matrix(_ name: String) throws -> WeightMatrix {
            let t = try source.tensor(name)
            guard t.shape.count == 2 else { throw OffloadError("[model] \(source.sourceName): \(name) is not a matrix") }
            guard t.shape[1] % t.dtype.blockElements == 0 else {
                throw OffloadError("[model] \(source.sourceName): \(name) rows are not whole \(t.dtype) blocks")
            }
            return WeightMatrix(data: t.bytes.baseAddress!, dtype: t.dtype, rows: t.shape[0], cols: t.shape[1])
        }
        func vector(_ name: String) throws -> [Float] { try source.vector(name) }
        try source.validateTensors()
        let none = WeightMatrix(data: UnsafeRawPointer(bitPattern: 64)!, dtype: .f32, rows: 0, cols: 0)
        blocks = try (0..<c.layers).map { i in
            let p = "blk.\(i).", moe = c.moe != nil
            return Block(attnNorm: try vector(p + "attn_norm.weight"), ffnNorm: try vector(p + "ffn_norm.weight"),
                         q: try matrix(p + "attn_q.weight"), k: try matrix(p + "attn_k.weight"),
                         v: try matrix(p + "attn_v.weight"), o: try matrix(p + "attn_output.weight"),
                         gate: moe ? none : try matrix(p + "ffn_gate.weight"), up: moe ? none : try matrix(p + "ffn_up.weight"),
                         down: moe ? none : try matrix(p + "ffn_down.weight"), extra: try BlockExtras(source, i),
                         moe: moe ? try MoEBlockWeights(source, layer: i) : nil)
        }
        // Decode reads Q4_1 matrices from a split copy (same size, faster kernel).
        var splits: [UnsafeMutableRawPointer] = []
        func withSplit(_ m: WeightMatrix) -> WeightMatrix {
            var m = m
            if let p = Matmul.splitForDecode(m) { splits.append(p); m.split = UnsafeRawPointer(p) }
            return m
        }
        blocks = blocks.map { b in
            var b = b
            (b.q, b.k, b.v, b.o) = (withSplit(b.q), withSplit(b.k), withSplit(b.v), withSplit(b.o))
            (b.gate, b.up, b.down) = (withSplit(b.gate), withSplit(b.up), withSplit(b.down))
            return b
        }
        decodeCopies = splits
        embedding = try matrix("token_embd.weight")
        head = c.tiedEmbeddings ? embedding : try matrix("output.weight")
        outputNorm = try vector("output_norm.weight")
    }

    deinit { decodeCopies.forEach { $0.deallocate() } }

    public var maxPositions: Int { rope.maxPositions }

    public func makeCache(capacity: Int? = nil) -> KVCache {
        KVCache(config: config, capacity: min(capacity ?? maxPositions, maxPositions))
    }

    /// A cache from `memory` when the model has one (counted against its budget), else as `makeCache`.
    public func newCache(capacity: Int? = nil, name: String = "kv") throws -> KVCache {
        let n = min(capacity ?? maxPositions, maxPositions)
        if let memory {
            return try KVCache(config: config, capacity: n, memory: memory, residentHeads: kvResidentHeads,
                               store: kvStore, name: name)
        }
        return KVCache(config: config, capacity: n)
    }

    /// Streaming: KV heads per layer `newCache` keeps in memory (nil: all), the rest in `kvStore`
    /// (the plan decides).
    public var kvResidentHeads: [Int]?
    public var kvStore: KVHeadStore?

    /// Scratch floats a forward call of `rows` token rows after `start` cached
    /// positions asks for, by buffer name (the streaming planner budgets these).
    public static func scratchFloats(config c: LlamaConfig, rows n: Int, start: Int,
                                     allLogits: Bool = false) -> [String: Int] {
        let dim = c.dim, ffn = max(c.ffnDim, c.moe?.sharedFFNDim ?? 0)
        let maxWeightElements = max(c.qDim * c.dim, ffn * c.dim, c.kvDim * c.dim)
        var s = ["x": n * dim, "xn": n * dim, "q": n * c.qDim, "att": n * c.qDim, "g": n * ffn,
                 "u": n * ffn, "tmp": n * dim,
                 // A running softmax over blocks of keys: the same for any context (Kernels/Attention).
                 "scores": attentionScratchFloats(rows: n, keys: start + n,
                                                  shape: AttentionShape(heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)),
                 "w": n > Matmul.directRowLimit ? maxWeightElements : 0]
        if allLogits && n > Matmul.directRowLimit { s["head"] = 4096 * dim }
        if let m = c.moe { s["route"] = n * m.experts; s["xe"] = n * dim; s["ye"] = n * dim }
        return s
    }

    /// Prompt rows per prefill pass (a multiple of `Matmul.rowBlock`, 256); nil: a prompt runs in one
    /// pass. The passes give one pass's logits and cache bit for bit (`prefillPieces`); under a
    /// budget the plan sets it, so activations are bounded by the chunk rather than the prompt.
    public var prefillChunk: Int? {
        didSet {
            precondition(prefillChunk.map { $0 > 0 && $0 % Matmul.rowBlock == 0 } ?? true,
                         "a prefill chunk is a multiple of Matmul.rowBlock")
        }
    }

    /// The pieces a forward of `count` rows runs in with passes of `chunk` rows: boundaries every
    /// `chunk` rows from the first, and a tail of at most `Matmul.directRowLimit` rows joined to the
    /// piece before it. With `chunk` a multiple of `Matmul.rowBlock`, each row meets the kernels it
    /// meets in one pass: the same blocks of the products and bands of attention (both counted from
    /// the first row), never the direct path's few-row kernels, so the pieces' results are one pass's
    /// bit for bit.
    public static func prefillPieces(count n: Int, chunk: Int?) -> [Range<Int>] {
        guard let chunk, chunk > 0, n > chunk + Matmul.directRowLimit else { return [0..<n] }
        var pieces = stride(from: 0, to: n, by: chunk).map { $0..<min($0 + chunk, n) }
        if pieces.count > 1, let tail = pieces.last, tail.count <= Matmul.directRowLimit {
            pieces.removeLast()
            pieces[pieces.count - 1] = pieces[pieces.count - 1].lowerBound..<tail.upperBound
        }
        return pieces
    }

    /// The most rows one pass of a `count`-row prefill in passes of `chunk` rows holds.
    public static func largestPrefillPiece(count: Int, chunk: Int?) -> Int {
        prefillPieces(count: count, chunk: chunk).map(\.count).max() ?? 0
    }

    /// Runs `tokens` at positions [cache.length, cache.length + count), appends
    /// their keys and values to the cache, and returns logits: (count, vocab)
    /// when `allLogits`, else (vocab) for the last token. A prompt longer than
    /// `prefillChunk` runs in passes (`prefillPieces`), with the same result.
    public func forward(_ tokens: [Int], cache: KVCache, allLogits: Bool = false) throws -> [Float] {
        let c = config, n = tokens.count, start = cache.length
        guard n > 0 else { throw OffloadError("[model] forward needs at least one token") }
        guard start + n <= cache.capacity else {
            throw OffloadError("[model] context full: \(start + n) tokens exceed the cache of \(cache.capacity)")
        }
        for t in tokens where t < 0 || t >= c.vocabSize {
            throw OffloadError("[model] token id \(t) is outside the vocabulary (0..<\(c.vocabSize))")
        }
        let pieces = LlamaModel.prefillPieces(count: n, chunk: prefillChunk)
        guard pieces.count > 1 else { return try forwardPass(tokens, cache: cache, allLogits: allLogits, logits: true) }
        if supplier != nil && allLogits {
            throw OffloadError("[model] all-position logits are not supported with weight streaming")
        }
        // Scratch for the largest pass first (the last one attends to the most keys), so the
        // passes reuse it rather than growing it.
        let widest = pieces.map(\.count).max()!
        for (name, floats) in LlamaModel.scratchFloats(config: c, rows: widest, start: start + n - widest) {
            _ = try work.get(name, floats)
        }
        supplier?.expectForwards(pieces.map { (rows: $0.count, logits: $0 == pieces.last) })
        var out: [Float] = []
        for p in pieces {
            let isLast = p == pieces.last
            let logits = try forwardPass(Array(tokens[p]), cache: cache, allLogits: allLogits, logits: allLogits || isLast)
            if allLogits { out += logits } else if isLast { out = logits }
        }
        return out
    }

    /// One pass of `forward`; without `logits` the head is not run and nothing is returned.
    private func forwardPass(_ tokens: [Int], cache: KVCache, allLogits: Bool, logits wantLogits: Bool) throws -> [Float] {
        let c = config, n = tokens.count, start = cache.length
        if let supplier {
            return try streamedForward(tokens, cache: cache, allLogits: allLogits, logits: wantLogits, supplier: supplier)
        }
        guard cache.allResident else { throw OffloadError("[model] a cache with heads on disk needs weight streaming") }
        let dim = c.dim
        let sizes = LlamaModel.scratchFloats(config: c, rows: n, start: start)
        let x = try work.get("x", sizes["x"]!), scratch = try blockScratch(sizes)
        let positions = (0..<n).map { Int32(start + $0) }

        for (i, t) in tokens.enumerated() {
            Dequantize.toF32(embedding.dtype, embedding.data + t * embedding.rowBytes, x + i * dim, count: dim)
        }
        scaleEmbeddings(x, rows: n)
        for (l, b) in blocks.enumerated() {
            try blockForward(l, b.attnNorm, b.ffnNorm, BlockMatrices(q: b.q, k: b.k, v: b.v, o: b.o, gate: b.gate, up: b.up, down: b.down),
                         x: x, n: n, start: start, cache: cache, positions: positions, scratch)
        }
        cache.length = start + n
        guard wantLogits else { return [] }

        let rows = allLogits ? n : 1
        let last = x + (n - rows) * dim
        outputNorm.withUnsafeBufferPointer { rmsnormForward(scratch.xn, last, $0.baseAddress!, rows: rows, dim: dim, eps: c.rmsEps) }
        var logits = [Float](repeating: 0, count: rows * c.vocabSize)
        let hs = try work.get("head", rows <= Matmul.directRowLimit ? 0 : 4096 * dim)
        logits.withUnsafeMutableBufferPointer { lb in
            if rows <= Matmul.directRowLimit {
                Matmul.linear(pool, x: scratch.xn, n: rows, [(head, lb.baseAddress!)], scratch: scratch.wscratch)
                return
            }
            // Many rows: the head in chunks of vocabulary rows, so its fp32 copy stays small; token
            // rows in blocks of `Matmul.rowBlock` spread over the pool.
            let chunk = 4096, block = Matmul.rowBlock, blocks = (rows + block - 1) / block
            for r0 in stride(from: 0, to: c.vocabSize, by: chunk) {
                let m = min(chunk, c.vocabSize - r0)
                Matmul.dequantize(pool, head.rows(r0, m), into: hs)
                pool.forEach(items: blocks) { begin, end, _ in
                    for b in begin..<end {
                        let i = b * block
                        Matmul.sgemmNT(m: min(block, rows - i), n: m, k: dim, a: scratch.xn + i * dim, lda: dim, b: hs,
                                       ldb: dim, c: lb.baseAddress! + i * c.vocabSize + r0, ldc: c.vocabSize)
                    }
                }
            }
        }
        capLogits(&logits)
        return logits
    }

    /// Gemma 3 scales the embeddings by √dim (in fp32, as llama.cpp and transformers do).
    private func scaleEmbeddings(_ x: UnsafeMutablePointer<Float>, rows: Int) {
        guard config.architecture == .gemma3 else { return }
        let s = Float(config.dim).squareRoot()
        for i in 0..<rows * config.dim { x[i] *= s }
    }

    /// logits = cap · tanh(logits / cap) when the model caps them.
    private func capLogits(_ logits: inout [Float]) {
        guard let cap = config.finalLogitSoftcap else { return }
        for i in logits.indices { logits[i] = cap * Foundation.tanh(logits[i] / cap) }
    }

    /// Scratch one block's forward writes; every path (resident, streamed, block
    /// schedule) takes it from the same workspace entries.
    private struct BlockScratch {
        var xn, q, att, g, u, tmp, scores, wscratch: UnsafeMutablePointer<Float>
    }

    private func blockScratch(_ sizes: [String: Int]) throws -> BlockScratch {
        BlockScratch(xn: try work.get("xn", sizes["xn"]!), q: try work.get("q", sizes["q"]!),
                     att: try work.get("att", sizes["att"]!), g: try work.get("g", sizes["g"]!),
                     u: try work.get("u", sizes["u"]!), tmp: try work.get("tmp", sizes["tmp"]!),
                     scores: try work.get("scores", sizes["scores"]!), wscratch: try work.get("w", sizes["w"]!))
    }

    /// Rows [row, row + count) of a forward's `x` are positions [start, start + count) of `cache`'s sequence.
    struct Segment {
        var row: Int, count: Int, start: Int, cache: KVCache
    }

    /// One block on `n` rows of `x` (in place), appending keys and values at `start`.
    @inline(__always)
    private func blockForward(_ l: Int, _ attnNorm: [Float], _ ffnNorm: [Float], _ b: BlockMatrices,
                              x: UnsafeMutablePointer<Float>, n: Int, start: Int, cache: KVCache, positions: [Int32],
                              _ s: BlockScratch) throws {
        try blockForward(l, attnNorm, ffnNorm, b, x: x, n: n, [Segment(row: 0, count: n, start: start, cache: cache)],
                     positions: positions, s, exact: false)
    }

    /// One block on `n` rows of `x` (in place) that belong to one or more sequences (`segments`,
    /// in row order). With one segment, keys and values are written straight into its cache; with
    /// several, into `g` and `u` (free until the feed-forward), then copied to each cache. `exact`: matrix products compute each
    /// row as alone (several decode sequences at once, each bit-identical to its own forward).
    @inline(__always)
    private func blockForward(_ l: Int, _ attnNorm: [Float], _ ffnNorm: [Float], _ b: BlockMatrices,
                              x: UnsafeMutablePointer<Float>, n: Int, _ segments: [Segment], positions: [Int32],
                              _ s: BlockScratch, exact: Bool) throws {
        let (xn, q, att, g, u, tmp, scores, wscratch) = (s.xn, s.q, s.att, s.g, s.u, s.tmp, s.scores, s.wscratch)
        let c = config, dim = c.dim
        let shape = AttentionShape(heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)
        // One sequence whose layer is all in memory: keys and values straight into its cache. Else into
        // `g` and `u` (free until the feed-forward), then to each cache's resident heads and its store.
        let one = segments.count == 1 && segments[0].cache.allResident(l) ? segments[0] : nil
        let kc = one.map { $0.cache.k[l]! + $0.start * c.kvDim } ?? g
        let vc = one.map { $0.cache.v[l]! + $0.start * c.kvDim } ?? u
        attnNorm.withUnsafeBufferPointer { rmsnormForward(xn, x, $0.baseAddress!, rows: n, dim: dim, eps: c.rmsEps) }
        Matmul.linear(pool, x: xn, n: n, [(b.q, q), (b.k, kc), (b.v, vc)], scratch: wscratch, exact: exact)
        if adapters != nil {
            addLoRA(l, .q, x: xn, out: q, n: n); addLoRA(l, .k, x: xn, out: kc, n: n); addLoRA(l, .v, x: xn, out: vc, n: n)
        }
        let extra = blocks[l].extra
        if let bias = extra.bias {
            for r in 0..<n {
                for j in 0..<c.qDim { q[r * c.qDim + j] += bias.q[j] }
                for j in 0..<c.kvDim { kc[r * c.kvDim + j] += bias.k[j]; vc[r * c.kvDim + j] += bias.v[j] }
            }
        }
        if let norm = extra.fullQKNorm {   // the whole q and k RMS-normalized (OLMoE)
            norm.q.withUnsafeBufferPointer { rmsnormForward(q, q, $0.baseAddress!, rows: n, dim: c.qDim, eps: c.rmsEps) }
            norm.k.withUnsafeBufferPointer { rmsnormForward(kc, kc, $0.baseAddress!, rows: n, dim: c.kvDim, eps: c.rmsEps) }
        }
        if let norm = extra.qkNorm {   // each head's q and k RMS-normalized (Gemma 3, Qwen3-MoE)
            norm.q.withUnsafeBufferPointer { rmsnormForward(q, q, $0.baseAddress!, rows: n * c.heads, dim: c.headDim, eps: c.rmsEps) }
            norm.k.withUnsafeBufferPointer { rmsnormForward(kc, kc, $0.baseAddress!, rows: n * c.kvHeads, dim: c.headDim, eps: c.rmsEps) }
        }
        let local = c.isLocalLayer(l), table = local ? localRope ?? rope : rope
        positions.withUnsafeBufferPointer { pos in
            ropeForward(q, positions: pos.baseAddress!, rows: n, heads: c.heads, table: table, halfSplit: halfSplitRope)
            ropeForward(kc, positions: pos.baseAddress!, rows: n, heads: c.kvHeads, table: table, halfSplit: halfSplitRope)
        }
        if one == nil {
            for seg in segments {
                seg.cache.copyResident(l, from: seg.start, count: seg.count,
                                       fromRows: (UnsafePointer(kc + seg.row * c.kvDim), UnsafePointer(vc + seg.row * c.kvDim)))
            }
        }
        for seg in segments {
            let (cache, start, rows) = (seg.cache, seg.start, seg.count)
            let segAtt = att + seg.row * c.qDim, segQ = q + seg.row * c.qDim
            if !cache.allResident(l) {
                // Resident heads from memory, the others a span at a time from the store.
                let r = cache.residentHeads[l], store = cache.store!
                let newK = kc + seg.row * c.kvDim, newV = vc + seg.row * c.kvDim
                let a = AttentionRows(out: segAtt, q: segQ, rows: rows, start: start, shape: shape, scratch: scores)
                a.begin()
                if r > 0 {
                    a.accumulate(pool, kvHeads: 0..<r, k: cache.k[l]!, v: cache.v[l]!, ld: r * c.headDim, first: 0,
                                 count: start + rows)
                }
                for h in r..<c.kvHeads {
                    while let span = try store.nextSpan(layer: l, head: h, newK: newK, newV: newV) {
                        a.accumulate(pool, kvHeads: h..<h + 1, k: span.k, v: span.v, ld: c.headDim, first: span.first,
                                     count: span.count)
                        store.releaseSpan()
                    }
                }
                a.finish()
                try store.append(layer: l, start: start, rows: rows, k: newK, v: newV)
            } else if local, let w = c.slidingWindow?.size, start + rows > w {
                // Rows at positions below w see every key before them: in bands, as when the prompt
                // ends inside the window (so a row's result does not depend on how far the pass runs).
                let within = max(0, w - start)
                if within > 0 {
                    attentionForward(pool, segAtt, segQ, cache.k[l]!, cache.v[l]!, scratch: scores, rows: within,
                                     start: start, shape: shape)
                }
                // Rows whose window starts past position 0 see only their last w keys: one row at a time,
                // from the first key of its window (the row's own position is the last).
                for i in within..<rows {
                    let pos = start + i
                    attentionForward(pool, segAtt + i * c.qDim, segQ + i * c.qDim, cache.k[l]!, cache.v[l]!,
                                     scratch: scores, rows: 1, start: pos, lo: max(0, pos - w + 1), shape: shape)
                }
            } else {
                attentionForward(pool, segAtt, segQ, cache.k[l]!, cache.v[l]!, scratch: scores, rows: rows, start: start,
                                 shape: shape)
            }
        }
        Matmul.linear(pool, x: att, n: n, [(b.o, tmp)], scratch: wscratch, exact: exact)
        if adapters != nil { addLoRA(l, .o, x: att, out: tmp, n: n) }
        if let post = extra.postNorm {
            post.attention.withUnsafeBufferPointer { rmsnormForward(tmp, tmp, $0.baseAddress!, rows: n, dim: dim, eps: c.rmsEps) }
        }
        for i in 0..<n * dim { x[i] += tmp[i] }
        ffnNorm.withUnsafeBufferPointer { rmsnormForward(xn, x, $0.baseAddress!, rows: n, dim: dim, eps: c.rmsEps) }
        if let moe = blocks[l].moe {
            try moeFeedForward(l, moe, x: x, xn: xn, n: n, out: tmp, g: g, u: u, wscratch: wscratch, exact: exact)
            for i in 0..<n * dim { x[i] += tmp[i] }
            return
        }
        Matmul.linear(pool, x: xn, n: n, [(b.gate, g), (b.up, u)], scratch: wscratch, exact: exact)
        if adapters != nil { addLoRA(l, .gate, x: xn, out: g, n: n); addLoRA(l, .up, x: xn, out: u, n: n) }
        if c.architecture == .gemma3 {
            geluTanhGateForward(g, g, u, count: n * c.ffnDim)
        } else {
            swigluForward(g, g, u, count: n * c.ffnDim)
        }
        Matmul.linear(pool, x: g, n: n, [(b.down, tmp)], scratch: wscratch, exact: exact)
        if adapters != nil { addLoRA(l, .down, x: g, out: tmp, n: n) }
        if let post = extra.postNorm {
            post.ffn.withUnsafeBufferPointer { rmsnormForward(tmp, tmp, $0.baseAddress!, rows: n, dim: dim, eps: c.rmsEps) }
        }
        for i in 0..<n * dim { x[i] += tmp[i] }
    }

    /// out (n, outDim) += (B·(A·x))·scale for target `t` of block `l` when adapted; each row on its own
    /// (so decode batches stay bit-identical to single sequences).
    private func addLoRA(_ l: Int, _ t: LoRATarget, x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, n: Int) {
        guard let p = adapters?.pair(l, t) else { return }
        let r = p.rank
        let xa = UnsafeMutablePointer<Float>.allocate(capacity: r)
        defer { xa.deallocate() }
        for i in 0..<n {
            let xi = x + i * p.inDim, oi = out + i * p.outDim
            for j in 0..<r { xa[j] = dot(p.a + j * p.inDim, xi, p.inDim) }
            for o in 0..<p.outDim { oi[o] += dot(p.b + o * r, xa, r) * p.scale }
        }
    }

    @inline(__always) private func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>(), i = 0
        while i + 8 <= n {
            acc += UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self) * UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self)
            i += 8
        }
        var s = acc.sum()
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    /// One decode step of several independent sequences: token i runs at the next position of
    /// cache i, and the logits of each are bit-identical to `forward([token], cache:)` alone
    /// (matrix products run with `exact`, attention per sequence). The weights are read once
    /// for all of them, from memory or, when streaming, from the supplier: the step of a server's
    /// continuous batching. Caches must be distinct.
    public func forwardDecode(_ seqs: [(token: Int, cache: KVCache)]) throws -> [[Float]] {
        let c = config, n = seqs.count, dim = c.dim
        guard n > 0 else { return [] }
        guard Set(seqs.map { ObjectIdentifier($0.cache) }).count == n else {
            throw OffloadError("[model] a decode batch holds the same sequence twice")
        }
        // One sequence: the plain decode step (which also serves a cache with layers on disk).
        if n == 1 { return [try forward([seqs[0].token], cache: seqs[0].cache)] }
        for (t, cache) in seqs {
            guard cache.length < cache.capacity else {
                throw OffloadError("[model] context full: \(cache.length + 1) tokens exceed the cache of \(cache.capacity)")
            }
            guard cache.allResident else { throw OffloadError("[model] batched decode keeps KV caches in memory") }
            guard t >= 0 && t < c.vocabSize else {
                throw OffloadError("[model] token id \(t) is outside the vocabulary (0..<\(c.vocabSize))")
            }
        }
        var sizes = LlamaModel.scratchFloats(config: c, rows: n, start: 0)
        sizes["w"] = 0   // exact products never dequantize to scratch
        sizes["scores"] = seqs.map { LlamaModel.scratchFloats(config: c, rows: 1, start: $0.cache.length)["scores"]! }.max()!
        let scratch = try blockScratch(sizes)
        let x = try work.get("x", n * dim)
        let segments = seqs.enumerated().map { Segment(row: $0, count: 1, start: $1.cache.length, cache: $1.cache) }
        let positions = seqs.map { Int32($0.cache.length) }
        if let supplier {
            try supplier.beginForward(rows: 1, logits: true)
            for (i, s) in seqs.enumerated() { try supplier.embeddingRow(token: s.token, into: x + i * dim) }
        } else {
            for (i, s) in seqs.enumerated() {
                Dequantize.toF32(embedding.dtype, embedding.data + s.token * embedding.rowBytes, x + i * dim, count: dim)
            }
        }
        scaleEmbeddings(x, rows: n)
        for (l, b) in blocks.enumerated() {
            let m = try supplier?.block(l) ?? BlockMatrices(q: b.q, k: b.k, v: b.v, o: b.o, gate: b.gate, up: b.up, down: b.down)
            try blockForward(l, b.attnNorm, b.ffnNorm, m, x: x, n: n, segments, positions: positions, scratch, exact: true)
            supplier?.release(stage: l)
        }
        for s in seqs { s.cache.length += 1 }
        outputNorm.withUnsafeBufferPointer { rmsnormForward(scratch.xn, x, $0.baseAddress!, rows: n, dim: dim, eps: c.rmsEps) }
        var flat = [Float](repeating: 0, count: n * c.vocabSize)
        try flat.withUnsafeMutableBufferPointer { fb in
            // Logits row i of the batch: vocabulary-major per sequence, as `forward` returns them.
            guard let supplier else {
                Matmul.linear(pool, x: scratch.xn, n: n, [(head, fb.baseAddress!)], scratch: scratch.wscratch, exact: true)
                return
            }
            // Chunks of vocabulary rows: each chunk's logits, sequence-major, then into place.
            var chunk = [Float](repeating: 0, count: 0)
            for h in 0..<supplier.headChunkCount {
                let (firstRow, m) = try supplier.headChunk(h)
                if chunk.count < n * m.rows { chunk = [Float](repeating: 0, count: n * m.rows) }
                chunk.withUnsafeMutableBufferPointer { cb in
                    Matmul.linear(pool, x: scratch.xn, n: n, [(m, cb.baseAddress!)], scratch: scratch.wscratch, exact: true)
                    for i in 0..<n {
                        (fb.baseAddress! + i * c.vocabSize + firstRow).update(from: cb.baseAddress! + i * m.rows, count: m.rows)
                    }
                }
                supplier.release(stage: c.layers + h)
            }
        }
        supplier?.endForward()
        var logits = (0..<n).map { Array(flat[$0 * c.vocabSize..<($0 + 1) * c.vocabSize]) }
        for i in logits.indices { capLogits(&logits[i]) }
        return logits
    }

    /// Streaming, the block schedule: one forward over several sequences in which
    /// each stage, once loaded, serves every sequence before the next is loaded.
    /// Each sequence runs exactly as `forward` runs it alone (same kernels, same
    /// rows), so its logits are bit-identical; only the weight reads are shared.
    /// All sequences must be decode steps (one token) or all longer.
    public func forwardBlock(_ seqs: [(tokens: [Int], cache: KVCache)]) throws -> [[Float]] {
        guard let supplier else { throw OffloadError("[model] the block schedule needs weight streaming") }
        guard let first = seqs.first else { return [] }
        let decode = first.tokens.count == 1
        guard seqs.allSatisfy({ ($0.tokens.count == 1) == decode && !$0.tokens.isEmpty }) else {
            throw OffloadError("[model] a block mixes decode steps and prompts; run them as separate blocks")
        }
        let c = config, dim = c.dim
        for (tokens, cache) in seqs {
            guard cache.length + tokens.count <= cache.capacity else {
                throw OffloadError("[model] context full: \(cache.length + tokens.count) tokens exceed the cache of \(cache.capacity)")
            }
            guard cache.allResident else { throw OffloadError("[model] the block schedule keeps KV caches in memory") }
            for t in tokens where t < 0 || t >= c.vocabSize {
                throw OffloadError("[model] token id \(t) is outside the vocabulary (0..<\(c.vocabSize))")
            }
        }
        // Shared scratch sized for the largest sequence; each sequence keeps its own hidden state.
        var sizes: [String: Int] = [:]
        for (tokens, cache) in seqs {
            for (k, v) in LlamaModel.scratchFloats(config: c, rows: tokens.count, start: cache.length) {
                sizes[k] = max(sizes[k] ?? 0, v)
            }
        }
        let scratch = try blockScratch(sizes)
        let xs = try seqs.indices.map { try work.get("x.\($0)", seqs[$0].tokens.count * dim) }
        let heads = try seqs.indices.map { try work.get("xhead.\($0)", dim) }
        let starts = seqs.map { $0.cache.length }
        let positions = seqs.map { s in (0..<s.tokens.count).map { Int32(s.cache.length + $0) } }
        try supplier.beginForward(rows: decode ? 1 : 2, logits: true)
        for (i, s) in seqs.enumerated() {
            for (j, t) in s.tokens.enumerated() { try supplier.embeddingRow(token: t, into: xs[i] + j * dim) }
            scaleEmbeddings(xs[i], rows: s.tokens.count)
        }
        for (l, b) in blocks.enumerated() {
            let m = try supplier.block(l)
            for (i, s) in seqs.enumerated() {
                try blockForward(l, b.attnNorm, b.ffnNorm, m, x: xs[i], n: s.tokens.count, start: starts[i], cache: s.cache,
                             positions: positions[i], scratch)
            }
            supplier.release(stage: l)
        }
        for (i, s) in seqs.enumerated() {
            s.cache.length = starts[i] + s.tokens.count
            let last = xs[i] + (s.tokens.count - 1) * dim
            outputNorm.withUnsafeBufferPointer { rmsnormForward(heads[i], last, $0.baseAddress!, rows: 1, dim: dim, eps: c.rmsEps) }
        }
        var logits = [[Float]](repeating: [Float](repeating: 0, count: c.vocabSize), count: seqs.count)
        for h in 0..<supplier.headChunkCount {
            let (firstRow, m) = try supplier.headChunk(h)
            for i in seqs.indices {
                logits[i].withUnsafeMutableBufferPointer { lb in
                    Matmul.linear(pool, x: heads[i], n: 1, [(m, lb.baseAddress! + firstRow)], scratch: scratch.wscratch)
                }
            }
            supplier.release(stage: c.layers + h)
        }
        supplier.endForward()
        for i in logits.indices { capLogits(&logits[i]) }
        return logits
    }

    /// The forward with weights from `supplier`: the same kernels in the same
    /// order as the resident path, so logits are bit-identical. The head runs in
    /// chunks of vocabulary rows; every row's dot product is computed alone by
    /// the direct kernels, so chunking does not change it.
    private func streamedForward(_ tokens: [Int], cache: KVCache, allLogits: Bool, logits wantLogits: Bool,
                                 supplier: BlockWeightSupplier) throws -> [Float] {
        let c = config, n = tokens.count, start = cache.length, dim = c.dim
        guard !allLogits || n == 1 else {
            throw OffloadError("[model] all-position logits are not supported with weight streaming")
        }
        let sizes = LlamaModel.scratchFloats(config: c, rows: n, start: start)
        let x = try work.get("x", sizes["x"]!), scratch = try blockScratch(sizes)
        let positions = (0..<n).map { Int32(start + $0) }
        try supplier.beginForward(rows: n, logits: wantLogits)
        for (i, t) in tokens.enumerated() { try supplier.embeddingRow(token: t, into: x + i * dim) }
        scaleEmbeddings(x, rows: n)
        if !cache.allResident { try cache.store!.beginForward(start: start, rows: n) }
        for (l, b) in blocks.enumerated() {
            let m = try supplier.block(l)
            try blockForward(l, b.attnNorm, b.ffnNorm, m, x: x, n: n, start: start, cache: cache, positions: positions,
                             scratch)
            supplier.release(stage: l)
        }
        cache.length = start + n
        guard wantLogits else { supplier.endForward(); return [] }
        let last = x + (n - 1) * dim
        outputNorm.withUnsafeBufferPointer { rmsnormForward(scratch.xn, last, $0.baseAddress!, rows: 1, dim: dim, eps: c.rmsEps) }
        var logits = [Float](repeating: 0, count: c.vocabSize)
        try logits.withUnsafeMutableBufferPointer { lb in
            for i in 0..<supplier.headChunkCount {
                let (first, m) = try supplier.headChunk(i)
                Matmul.linear(pool, x: scratch.xn, n: 1, [(m, lb.baseAddress! + first)], scratch: scratch.wscratch)
                supplier.release(stage: c.layers + i)
            }
        }
        supplier.endForward()
        capLogits(&logits)
        return logits
    }

}
