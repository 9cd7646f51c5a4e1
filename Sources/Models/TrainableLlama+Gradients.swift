// Gradient norms (per tensor and global) and torch-style global-norm clipping
// over one gradient allocation (a model's, or LoRA adapters'). Deterministic:
// fixed-size fp32 partial sums, combined in Double in table order.

import Kernels

/// Trained parameters: fp32 weights and gradients, each one allocation carved by `layout`
/// (a whole model's, or LoRA adapters').
public protocol TrainableParameters: AnyObject {
    var layout: ParameterLayout { get }
    var weights: FloatBuffer { get }
    var gradients: FloatBuffer { get }
    /// How the reference lays out `entry` when it differs from how it is stored (nil: the same).
    func referenceOrder(of entry: ParameterLayout.Entry) -> ReferenceOrder?
}

extension TrainableParameters {
    public func referenceOrder(of entry: ParameterLayout.Entry) -> ReferenceOrder? { nil }
}

extension TrainableLlama: TrainableParameters {
    /// attn_q/attn_k from a GGUF (adjacent-pair rotary rows) are Hugging Face's rows interleaved per head.
    public func referenceOrder(of entry: ParameterLayout.Entry) -> ReferenceOrder? {
        guard ropeStyle == .adjacentPairs, entry.name.hasSuffix(".attn_q.weight") || entry.name.hasSuffix(".attn_k.weight")
        else { return nil }
        return ReferenceOrder(headDim: config.headDim, columns: config.dim)
    }
}
extension LoRAAdapters: TrainableParameters {
    /// B of attn_q/attn_k over a GGUF base: peft's rows interleaved per head.
    public func referenceOrder(of entry: ParameterLayout.Entry) -> ReferenceOrder? {
        reordersRows(entry.name).map { _ in ReferenceOrder(headDim: config.headDim, columns: settings.rank) }
    }
}

extension TrainableParameters {
    public func zeroGradients() { gradients.zero() }

    /// L2 norm of each parameter's gradient, in table order (fp32 partial sums per 4096 floats, Double across).
    public func gradientNorms() -> [(name: String, norm: Double)] {
        layout.entries.map { e in (e.name, sumOfSquares(gradients.base + e.offset, e.elements).squareRoot()) }
    }

    /// L2 norm of all gradients together.
    public func globalGradientNorm() -> Double {
        layout.entries.reduce(0.0) { $0 + sumOfSquares(gradients.base + $1.offset, $1.elements) }.squareRoot()
    }

    /// Scales all gradients so their global norm is at most `maxNorm`, as torch's
    /// clip_grad_norm_ (factor maxNorm / (norm + 1e-6), never above 1). Returns the norm before.
    @discardableResult
    public func clipGradients(maxNorm: Float) -> Double {
        let norm = globalGradientNorm()
        clipGradients(maxNorm: maxNorm, norm: norm)
        return norm
    }

    /// The same with the norm already known (data-parallel ranks compute it together).
    public func clipGradients(maxNorm: Float, norm: Double) {
        let factor = Float(Double(maxNorm) / (norm + 1e-6))
        if factor < 1 {
            let g = gradients.base
            TrainingThreads.forEachRange(gradients.count, minPerThread: 1 << 16) { r in
                for i in r { g[i] *= factor }
            }
        }
    }
}

/// Σ p[i]² for the gradient norms: fp32 partial sums per 4096 floats, added in Double to `total`
/// in order. A tensor cut at multiples of 4096 floats, its pieces summed in order each adding
/// to the previous piece's result, gives the same Double as one call over the whole.
public func sumOfSquares(_ p: UnsafePointer<Float>, _ count: Int, adding start: Double = 0) -> Double {
    var total = start, i = 0
    while i < count {
        let end = min(i + 4096, count)
        var acc = SIMD8<Float>(), j = i
        while j + 8 <= end {
            let v = UnsafeRawPointer(p + j).loadUnaligned(as: SIMD8<Float>.self)
            acc += v * v
            j += 8
        }
        var tail: Float = 0
        while j < end { tail += p[j] * p[j]; j += 1 }
        total += Double(acc.sum()) + Double(tail)
        i = end
    }
    return total
}

