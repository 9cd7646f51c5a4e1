// A base model with LoRA adapters merged in, as a WeightSource: each targeted
// projection is W + (alpha/rank)·B·A in fp32 (peft's merge_and_unload), every
// other tensor the base's own. What `offload export --merge` writes.

import Foundation
import Kernels
import Tensors

public final class LoRAMergedWeights: WeightSource {
    public let base: WeightSource
    public let adapters: LoRAAdapters
    /// The latest merged tensor: its bytes are valid until the next `tensor(_:)` call (the exporter
    /// converts one tensor at a time, so a merged model is never whole in memory).
    private var merged: FloatBuffer?

    public init(base: WeightSource, adapters: LoRAAdapters) throws {
        guard adapters.config == base.config, adapters.ropeStyle == base.ropeStyle else {
            throw OffloadError("[lora] the adapter was made for another model than \(base.sourceName)")
        }
        self.base = base; self.adapters = adapters
    }

    public var config: LlamaConfig { base.config }
    public var ropeStyle: RopeStyle { base.ropeStyle }
    public var sourceName: String { base.sourceName + " + LoRA" }
    public func dropResidentPages() { base.dropResidentPages() }
    public func vector(_ name: String) throws -> [Float] { try base.vector(name) }

    public func tensor(_ name: String) throws -> StoredTensor {
        let parts = name.split(separator: ".")
        guard parts.count == 4, parts[3] == "weight", let l = Int(parts[1]),
              let t = LoRATarget.allCases.first(where: { $0.ggufName == parts[2] }), let p = adapters.pair(l, t) else {
            return try base.tensor(name)
        }
        let stored = try base.tensor(name)
        let w = FloatBuffer(count: stored.elements)
        merged = w
        Dequantize.toF32(stored.dtype, stored.bytes.baseAddress!, w.base, count: stored.elements)
        loraMerge(w.base, a: p.a, b: p.b, inDim: p.inDim, outDim: p.outDim, rank: p.rank, scale: p.scale)
        return StoredTensor(name: name, dtype: .f32, shape: stored.shape, bytes: UnsafeRawBufferPointer(start: w.base, count: w.bytes))
    }
}
