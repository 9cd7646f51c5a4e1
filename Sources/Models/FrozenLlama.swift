// A model's weights frozen in the file's own types, for training that does not
// change them (LoRA): every matrix stays as the WeightSource holds it (a mapped
// GGUF's Q4_0 … blocks) and is dequantized a tile at a time inside the products
// (Kernels/Matmul+Frozen); only the norms (a few thousand floats) are held in fp32.

import Foundation
import Kernels
import Tensors

public final class FrozenLlama {
    public let source: WeightSource
    public var config: LlamaConfig { source.config }
    public var ropeStyle: RopeStyle { source.ropeStyle }
    /// Every norm weight in fp32: attn_norm and ffn_norm of each block, then output_norm.
    let norms: FloatBuffer
    /// Block l's seven projections.
    public let blocks: [[LoRATarget: WeightMatrix]]
    public let embedding: WeightMatrix
    /// The output projection (token_embd when tied).
    public let head: WeightMatrix
    /// Bytes of the frozen tensors as the source holds them.
    public let storedBytes: Int

    public init(source: WeightSource) throws {
        self.source = source
        let c = source.config
        try c.requireDense(for: "LoRA training")
        guard c.architecture == .llama else {
            throw OffloadError("[train] \(source.sourceName): LoRA on \(c.architecture.rawValue) models is not supported yet (Llama only)")
        }
        try source.validateTensors()
        var bytes = 0
        func matrix(_ name: String) throws -> WeightMatrix {
            let t = try source.tensor(name)
            guard t.shape.count == 2, let row = t.dtype.byteCount(elements: t.shape[1]), row * t.shape[0] == t.bytes.count else {
                throw OffloadError("[train] \(source.sourceName): tensor \(name) (\(t.dtype), shape \(t.shape)) does not have "
                                   + "rows of whole \(t.dtype) blocks; it cannot be used frozen")
            }
            bytes += t.bytes.count
            return WeightMatrix(data: t.bytes.baseAddress!, dtype: t.dtype, rows: t.shape[0], cols: t.shape[1])
        }
        blocks = try (0..<c.layers).map { l in
            try Dictionary(uniqueKeysWithValues: LoRATarget.allCases.map { ($0, try matrix("blk.\(l).\($0.ggufName).weight")) })
        }
        embedding = try matrix("token_embd.weight")
        head = c.tiedEmbeddings ? embedding : try matrix("output.weight")
        norms = FloatBuffer(count: (2 * c.layers + 1) * c.dim)
        for l in 0..<c.layers {
            for (i, n) in ["attn_norm", "ffn_norm"].enumerated() {
                let v = try source.vector("blk.\(l).\(n).weight")
                (norms.base + (2 * l + i) * c.dim).update(from: v, count: c.dim)
            }
        }
        (norms.base + 2 * c.layers * c.dim).update(from: try source.vector("output_norm.weight"), count: c.dim)
        storedBytes = bytes + norms.bytes
    }

    public func attnNorm(_ l: Int) -> UnsafeMutablePointer<Float> { norms.base + 2 * l * config.dim }
    public func ffnNorm(_ l: Int) -> UnsafeMutablePointer<Float> { norms.base + (2 * l + 1) * config.dim }
    public var outputNorm: UnsafeMutablePointer<Float> { norms.base + 2 * config.layers * config.dim }

    /// Scratch floats the frozen products need (the largest matrix tile).
    public var scratchFloats: Int { (blocks.flatMap(\.values) + [head]).map(\.scratchFloats).max() ?? 0 }
}
