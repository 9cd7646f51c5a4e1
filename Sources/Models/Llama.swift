// Llama-family forward pass for inference: RMSNorm, RoPE (either convention),
// grouped-query causal attention over a KV cache, SwiGLU MLP, tied or untied
// head. One call handles any number of new tokens: a prompt (prefill) or one
// token (decode). Weights are read in their stored type (see Kernels/Matmul).

import Kernels
import Tensors

/// Keys and values of every layer for positions [0, length).
public final class KVCache {
    public let layers: Int
    public let capacity: Int
    public let kvDim: Int
    public internal(set) var length = 0
    let k: [UnsafeMutablePointer<Float>]
    let v: [UnsafeMutablePointer<Float>]

    public init(config: LlamaConfig, capacity: Int) {
        layers = config.layers; self.capacity = capacity; kvDim = config.kvDim
        k = (0..<layers).map { _ in .allocate(capacity: capacity * config.kvDim) }
        v = (0..<layers).map { _ in .allocate(capacity: capacity * config.kvDim) }
    }
    deinit { (k + v).forEach { $0.deallocate() } }

    public var bytes: Int { 2 * layers * capacity * kvDim * 4 }
    public func reset() { length = 0 }
}

/// Scratch buffers for one forward call, grown on demand.
final class Workspace {
    private var buffers: [String: (UnsafeMutablePointer<Float>, Int)] = [:]
    func get(_ name: String, _ count: Int) -> UnsafeMutablePointer<Float> {
        if let (p, n) = buffers[name], n >= count { return p }
        buffers[name]?.0.deallocate()
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        buffers[name] = (p, count)
        return p
    }
    deinit { buffers.values.forEach { $0.0.deallocate() } }
}

public final class LlamaModel {
    public let config: LlamaConfig
    public let source: WeightSource
    public let pool: ComputePool
    let rope: RopeTable
    let halfSplitRope: Bool

    struct Block {
        var attnNorm: [Float], ffnNorm: [Float]
        var q, k, v, o, gate, up, down: WeightMatrix
    }
    var blocks: [Block]
    private var decodeCopies: [UnsafeMutableRawPointer] = []
    let embedding: WeightMatrix
    let head: WeightMatrix
    let outputNorm: [Float]
    let work = Workspace()

    public init(source: WeightSource, threads: Int, maxPositions: Int? = nil) throws {
        let c = source.config
        config = c
        self.source = source
        pool = ComputePool(threads: threads)
        halfSplitRope = source.ropeStyle == .halfSplit
        rope = RopeTable(headDim: c.headDim, maxPositions: min(maxPositions ?? c.contextLength, c.contextLength),
                         theta: c.ropeTheta)
        func matrix(_ name: String) throws -> WeightMatrix {
            let t = try source.tensor(name)
            guard t.shape.count == 2 else { throw OffloadError("[model] \(source.sourceName): \(name) is not a matrix") }
            guard t.shape[1] % t.dtype.blockElements == 0 else {
                throw OffloadError("[model] \(source.sourceName): \(name) rows are not whole \(t.dtype) blocks")
            }
            return WeightMatrix(data: t.bytes.baseAddress!, dtype: t.dtype, rows: t.shape[0], cols: t.shape[1])
        }
        func vector(_ name: String) throws -> [Float] {
            let t = try source.tensor(name)
            return Dequantize.toF32(t.dtype, t.bytes, count: t.elements)
        }
        try source.validateTensors()
        blocks = try (0..<c.layers).map { i in
            let p = "blk.\(i)."
            return Block(attnNorm: try vector(p + "attn_norm.weight"), ffnNorm: try vector(p + "ffn_norm.weight"),
                         q: try matrix(p + "attn_q.weight"), k: try matrix(p + "attn_k.weight"),
                         v: try matrix(p + "attn_v.weight"), o: try matrix(p + "attn_output.weight"),
                         gate: try matrix(p + "ffn_gate.weight"), up: try matrix(p + "ffn_up.weight"),
                         down: try matrix(p + "ffn_down.weight"))
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

    /// Runs `tokens` at positions [cache.length, cache.length + count), appends
    /// their keys and values to the cache, and returns logits: (count, vocab)
    /// when `allLogits`, else (vocab) for the last token.
    public func forward(_ tokens: [Int], cache: KVCache, allLogits: Bool = false) throws -> [Float] {
        let c = config, n = tokens.count, start = cache.length
        guard n > 0 else { throw OffloadError("[model] forward needs at least one token") }
        guard start + n <= cache.capacity else {
            throw OffloadError("[model] context full: \(start + n) tokens exceed the cache of \(cache.capacity)")
        }
        for t in tokens where t < 0 || t >= c.vocabSize {
            throw OffloadError("[model] token id \(t) is outside the vocabulary (0..<\(c.vocabSize))")
        }
        let dim = c.dim
        let x = work.get("x", n * dim), xn = work.get("xn", n * dim)
        let q = work.get("q", n * c.qDim), att = work.get("att", n * c.qDim)
        let g = work.get("g", n * c.ffnDim), u = work.get("u", n * c.ffnDim)
        let tmp = work.get("tmp", n * dim)
        let scores = work.get("scores", n * max(c.heads, 1) * (start + n))
        let wscratch = work.get("w", n > Matmul.directRowLimit ? maxWeightElements : 0)
        let positions = (0..<n).map { Int32(start + $0) }

        for (i, t) in tokens.enumerated() {
            Dequantize.toF32(embedding.dtype, embedding.data + t * embedding.rowBytes, x + i * dim, count: dim)
        }
        let shape = AttentionShape(heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)
        for (l, b) in blocks.enumerated() {
            let kc = cache.k[l] + start * c.kvDim, vc = cache.v[l] + start * c.kvDim
            b.attnNorm.withUnsafeBufferPointer { rmsnormForward(xn, x, $0.baseAddress!, rows: n, dim: dim, eps: c.rmsEps) }
            Matmul.linear(pool, x: xn, n: n, [(b.q, q), (b.k, kc), (b.v, vc)], scratch: wscratch)
            positions.withUnsafeBufferPointer { pos in
                ropeForward(q, positions: pos.baseAddress!, rows: n, heads: c.heads, table: rope, halfSplit: halfSplitRope)
                ropeForward(kc, positions: pos.baseAddress!, rows: n, heads: c.kvHeads, table: rope, halfSplit: halfSplitRope)
            }
            attentionForward(pool, att, q, cache.k[l], cache.v[l], scores: scores, rows: n, start: start, shape: shape)
            Matmul.linear(pool, x: att, n: n, [(b.o, tmp)], scratch: wscratch)
            for i in 0..<n * dim { x[i] += tmp[i] }
            b.ffnNorm.withUnsafeBufferPointer { rmsnormForward(xn, x, $0.baseAddress!, rows: n, dim: dim, eps: c.rmsEps) }
            Matmul.linear(pool, x: xn, n: n, [(b.gate, g), (b.up, u)], scratch: wscratch)
            swigluForward(g, g, u, count: n * c.ffnDim)
            Matmul.linear(pool, x: g, n: n, [(b.down, tmp)], scratch: wscratch)
            for i in 0..<n * dim { x[i] += tmp[i] }
        }
        cache.length = start + n

        let rows = allLogits ? n : 1
        let last = x + (n - rows) * dim
        outputNorm.withUnsafeBufferPointer { rmsnormForward(xn, last, $0.baseAddress!, rows: rows, dim: dim, eps: c.rmsEps) }
        var logits = [Float](repeating: 0, count: rows * c.vocabSize)
        logits.withUnsafeMutableBufferPointer { lb in
            if rows <= Matmul.directRowLimit {
                Matmul.linear(pool, x: xn, n: rows, [(head, lb.baseAddress!)], scratch: wscratch)
                return
            }
            // Many rows: the head in chunks of vocabulary rows, so its fp32 copy stays small.
            let chunk = 4096
            let hs = work.get("head", chunk * dim)
            for r0 in stride(from: 0, to: c.vocabSize, by: chunk) {
                let m = min(chunk, c.vocabSize - r0)
                Matmul.dequantize(pool, head.rows(r0, m), into: hs)
                Matmul.sgemmNT(m: rows, n: m, k: dim, a: xn, lda: dim, b: hs, ldb: dim,
                               c: lb.baseAddress! + r0, ldc: c.vocabSize)
            }
        }
        return logits
    }

    private var maxWeightElements: Int {
        let c = config
        return max(c.qDim * c.dim, c.ffnDim * c.dim, c.kvDim * c.dim)
    }
}
