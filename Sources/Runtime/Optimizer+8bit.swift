// 8-bit AdamW as torchao 0.18's AdamW8bit (Dettmers et al., "8-bit Optimizers via Block-wise
// Quantization"): m and v kept as one byte per weight, a code into a 256-value dynamic map (signed
// for m, unsigned for v), with an fp32 scale per block of 256 weights (the block's largest
// magnitude). Each update dequantizes a block, runs Adam on it in fp32, requantizes the new moments
// and moves the weights with the fp32 ones. Parameters under 4096 weights or not a whole number of
// blocks keep fp32 moments (bitsandbytes' rule). Blocks run over the weights in the reference's order
// (attn_q/attn_k read from a GGUF: Hugging Face's rows, not llama.cpp's interleaved ones).

internal import CKernels
import Foundation
import Models

public struct AdamW8bit: Optimizer, Codable, Equatable {
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var eps: Float = 1e-8
    public var weightDecay: Float = 0
    public static let blockSize = OptimizerStateSize.blockSize
    public init(beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0) {
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
    }
    public var name: String { "adamw8bit" }
    public var granularity: Int { Self.blockSize }

    /// Whether a parameter of `count` weights keeps 8-bit moments.
    public static func quantizes(count: Int) -> Bool { OptimizerStateSize.quantizes8bit(count: count) }

    /// 1 − β in double from the shortest decimal that reads back as β (what a user typed), rounded to fp32.
    static func oneMinus(_ beta: Float) -> Float { Float(1 - (Double(beta.description) ?? Double(beta))) }

    public func stateBuffers(count: Int) -> [StateBuffer] {
        guard Self.quantizes(count: count) else {
            return [StateBuffer("m", .f32, count: count, perWeight: true), StateBuffer("v", .f32, count: count, perWeight: true)]
        }
        let blocks = count / Self.blockSize
        return [StateBuffer("m.codes", .u8, count: count, perWeight: true), StateBuffer("m.scales", .f32, count: blocks, perWeight: false),
                StateBuffer("v.codes", .u8, count: count, perWeight: true), StateBuffer("v.scales", .f32, count: blocks, perWeight: false)]
    }

    public func update(_ p: UnsafeMutablePointer<Float>, gradient g: UnsafePointer<Float>, state: [UnsafeMutableRawPointer],
                       count: Int, range: Range<Int>, lr: Float, step: Int) {
        update(p, gradient: g, state: state, count: count, range: range, lr: lr, step: step, order: nil)
    }

    /// Blocks are 256 consecutive weights in `order` (the reference's: for attn_q/attn_k from a GGUF, Hugging
    /// Face's rows), so the codes and scales are those torchao keeps for the same model.
    public func update(_ p: UnsafeMutablePointer<Float>, gradient g: UnsafePointer<Float>, state: [UnsafeMutableRawPointer],
                       count: Int, range: Range<Int>, lr: Float, step: Int, order: ReferenceOrder?) {
        // Scalars as torchao forms them: step is an fp32 tensor, so β^t, the bias corrections and their
        // square root are fp32; the lerp weights 1 − β are formed in double from β as written (0.999, not
        // the fp32 nearest to it: 1e-3 rather than 0.99999987e-3), then used as fp32.
        let lrwd = lr * weightDecay
        let bc1 = 1 - Foundation.pow(beta1, Float(step)), bc2 = 1 - Foundation.pow(beta2, Float(step))
        let bc2Sqrt = bc2.squareRoot()
        let w1 = Self.oneMinus(beta1), w2 = Self.oneMinus(beta2)
        /// p ← (p − lr·wd·p) − lr·(m/bc1)/(√v/√bc2 + eps) with m, v already updated (fp32).
        @inline(__always) func move(_ i: Int, _ m: Float, _ v: Float) {
            let pf = p[i] - lrwd * p[i]
            let denom = v.squareRoot() / bc2Sqrt + eps
            p[i] = pf - lr * (m / bc1) / denom
        }
        guard Self.quantizes(count: count) else {
            let m = state[0].assumingMemoryBound(to: Float.self), v = state[1].assumingMemoryBound(to: Float.self)
            for i in range {
                let gi = g[i]
                m[i] = m[i].addingProduct(w1, gi - m[i])            // exp_avg.lerp(grad, 1 − β₁)
                v[i] = v[i].addingProduct(w2, gi * gi - v[i])       // exp_avg_sq.lerp(grad², 1 − β₂)
                move(i, m[i], v[i])
            }
            return
        }
        let mc = state[0].assumingMemoryBound(to: UInt8.self), ms = state[1].assumingMemoryBound(to: Float.self)
        let vc = state[2].assumingMemoryBound(to: UInt8.self), vs = state[3].assumingMemoryBound(to: Float.self)
        let n = Self.blockSize
        DynamicMap.signed.withUnsafeBufferPointer { sb in DynamicMap.unsigned.withUnsafeBufferPointer { ub in
        let signed = sb.baseAddress!, unsigned = ub.baseAddress!
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * n) { tmp in
            let m = tmp.baseAddress!, v = m + n
            var b = range.lowerBound / n
            while b * n < range.upperBound {
                let o = b * n
                let sm = ms[b], sv = vs[b]
                var amaxM: Float = 0, amaxV: Float = 0
                for j in 0..<n {
                    let gi = g[order?.stored(o + j) ?? o + j]
                    let mj = (signed[Int(mc[o + j])] * sm).addingProduct(w1, gi - signed[Int(mc[o + j])] * sm)
                    let vj = (unsigned[Int(vc[o + j])] * sv).addingProduct(w2, gi * gi - unsigned[Int(vc[o + j])] * sv)
                    m[j] = mj; v[j] = vj
                    amaxM = max(amaxM, abs(mj)); amaxV = max(amaxV, abs(vj))
                }
                let scaleM = max(amaxM, 1e-12), scaleV = max(amaxV, 1e-12)
                ms[b] = scaleM; vs[b] = scaleV
                ck_quantize_dynamic(m, scaleM, signed, mc + o, Int32(n))
                ck_quantize_dynamic(v, scaleV, unsigned, vc + o, Int32(n))
                for j in 0..<n { move(order?.stored(o + j) ?? o + j, m[j], v[j]) }
                b += 1
            }
        }
        } }
    }
}

/// The dynamic quantization maps of 8-bit optimizers (bitsandbytes' create_dynamic_map as torchao 0.18
/// builds it, zero padding removed): for exponent i = 0…6, the midpoints of `k` equal steps from 0.1 to 1
/// scaled by 10^(i−6) (k = 2^i signed, each with its negative; 2^(i+1) unsigned), plus 0 and 1, sorted.
/// Computed here in Double and rounded to Float once (torchao's fp32 linspace differs by an ulp in places).
public enum DynamicMap {
    public static let signed = make(signed: true)
    public static let unsigned = make(signed: false)

    public static func make(signed: Bool) -> [Float] {
        var data: [Float] = [0, 1]
        for i in 0..<7 {
            let k = signed ? 1 << i : 1 << (i + 1)
            let scale = Foundation.pow(10.0, Double(i - 6))
            for j in 0..<k {
                // Midpoint of boundaries j and j+1 of linspace(0.1, 1, k + 1).
                let mean = 0.1 + 0.9 * (Double(j) + 0.5) / Double(k)
                data.append(Float(scale * mean))
                if signed { data.append(Float(-scale * mean)) }
            }
        }
        // 7 exponents leave one item over (2^(7−7) − 1 = 0 signed; unsigned likewise): both have 256.
        precondition(data.count == 256, "dynamic map has \(data.count) values")
        return data.sorted()
    }

    /// torchao's quantize_8bit_with_qmap for one value already divided by its block's scale: the largest code
    /// whose value is ≤ x (0 below the map), found by an 8-step binary search, then rounded up when
    /// x − map[c] ≥ (map[c+1] − map[c])·0.5. The update quantizes blocks with the same C routine.
    public static func code(_ x: Float, _ map: [Float]) -> UInt8 { codes([x], scale: 1, map)[0] }

    /// The codes of `x` / `scale`, as the update quantizes a block (32 values at a time with AVX2).
    public static func codes(_ x: [Float], scale: Float, _ map: [Float]) -> [UInt8] {
        var codes = [UInt8](repeating: 0, count: x.count)
        map.withUnsafeBufferPointer { ck_quantize_dynamic(x, scale, $0.baseAddress!, &codes, Int32(x.count)) }
        return codes
    }
}
