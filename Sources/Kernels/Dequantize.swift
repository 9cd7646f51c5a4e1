// Conversion of stored element types to fp32 (ggml block layouts), and back for
// the types Offload writes. Plain loops: these run once per tensor per use in
// prefill, never in the decode hot path (which reads quantized blocks directly).

import CKernels
import Tensors

@inline(__always) func f16ToF32(_ bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }
@inline(__always) func bf16ToF32(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

public enum Dequantize {
    /// Converts `count` values of `dtype` at `src` to fp32 at `dst`.
    /// `count` must be a whole number of blocks.
    public static func toF32(_ dtype: DType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        switch dtype {
        case .f32:
            dst.update(from: src.assumingMemoryBound(to: Float.self), count: count)
        case .f16:
            let s = src.assumingMemoryBound(to: UInt16.self)
            for i in 0..<count { dst[i] = f16ToF32(s[i]) }
        case .bf16:
            let s = src.assumingMemoryBound(to: UInt16.self)
            for i in 0..<count { dst[i] = bf16ToF32(s[i]) }
        case .q8_0:
            for b in 0..<count / 32 {
                let blk = src + b * 34
                let d = f16ToF32(blk.loadUnaligned(as: UInt16.self))
                let q = (blk + 2).assumingMemoryBound(to: Int8.self)
                for j in 0..<32 { dst[b * 32 + j] = d * Float(q[j]) }
            }
        case .q4_0:
            for b in 0..<count / 32 {
                let blk = src + b * 18
                let d = f16ToF32(blk.loadUnaligned(as: UInt16.self))
                let q = (blk + 2).assumingMemoryBound(to: UInt8.self)
                for j in 0..<16 {
                    dst[b * 32 + j] = d * Float(Int(q[j] & 0x0F) - 8)
                    dst[b * 32 + j + 16] = d * Float(Int(q[j] >> 4) - 8)
                }
            }
        case .q4_1:
            for b in 0..<count / 32 {
                let blk = src + b * 20
                let d = f16ToF32(blk.loadUnaligned(as: UInt16.self))
                let m = f16ToF32((blk + 2).loadUnaligned(as: UInt16.self))
                let q = (blk + 4).assumingMemoryBound(to: UInt8.self)
                for j in 0..<16 {
                    dst[b * 32 + j] = d * Float(q[j] & 0x0F) + m
                    dst[b * 32 + j + 16] = d * Float(q[j] >> 4) + m
                }
            }
        default:
            // The other block formats (Q5_*, K-quants, IQ4_*): the C kernels' dequantization,
            // the same code prefill uses (one implementation of each layout).
            ck_dequantize_rows(nil, src, Int32(dtype.ggmlID), dst, 1, Int32(count))
        }
    }

    /// Convenience: a whole tensor to a new fp32 array.
    public static func toF32(_ dtype: DType, _ bytes: UnsafeRawBufferPointer, count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { buf, n in
            toF32(dtype, bytes.baseAddress!, buf.baseAddress!, count: count)
            n = count
        }
    }
}

public enum Quantize {
    /// fp32 → f16 bits (round to nearest even).
    public static func toF16(_ src: [Float]) -> [UInt16] { src.map { Float16($0).bitPattern } }

    /// fp32 → bf16 bits (round to nearest even; NaN stays NaN).
    public static func toBF16(_ src: [Float]) -> [UInt16] {
        src.map { v in
            let b = v.bitPattern
            if v.isNaN { return UInt16(b >> 16) | 0x40 }
            return UInt16((b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
        }
    }

    /// fp32 → Q8_0 blocks, as ggml's reference quantizer does (d = amax/127).
    public static func toQ8_0(_ src: [Float]) -> [UInt8] {
        precondition(src.count % 32 == 0)
        return [UInt8](unsafeUninitializedCapacity: src.count / 32 * 34) { buf, n in
            n = src.withUnsafeBufferPointer {
                ck_quantize_rows(nil, $0.baseAddress, Int32(DType.q8_0.ggmlID), buf.baseAddress, 1, Int32(src.count))
            }
        }
    }

    /// Whether `rows(_:to:cols:)` writes `dtype`.
    public static func canWrite(_ dtype: DType) -> Bool {
        switch dtype {
        case .f32, .f16, .bf16: return true
        default: return ck_can_quantize(Int32(dtype.ggmlID)) != 0
        }
    }

    /// fp32 rows of `cols` values to `dtype`'s bytes: plain floats rounded to nearest even, block
    /// formats (Q8_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) as ggml's reference quantizers write them.
    /// Rows are split across `pool` when given.
    public static func rows(_ src: [Float], to dtype: DType, cols: Int, pool: ComputePool? = nil) throws -> [UInt8] {
        guard cols > 0, src.count % cols == 0, let bytes = dtype.byteCount(elements: src.count),
              cols % dtype.blockElements == 0 else {
            throw OffloadError("[quantize] \(src.count) values in rows of \(cols) are not whole \(dtype) rows")
        }
        switch dtype {
        case .f32: return src.withUnsafeBytes { Array($0) }
        case .f16: return toF16(src).withUnsafeBytes { Array($0) }
        case .bf16: return toBF16(src).withUnsafeBytes { Array($0) }
        default:
            guard canWrite(dtype) else { throw OffloadError("[quantize] writing \(dtype) is not supported") }
            return [UInt8](unsafeUninitializedCapacity: bytes) { buf, n in
                n = src.withUnsafeBufferPointer {
                    ck_quantize_rows(pool?.pool, $0.baseAddress, Int32(dtype.ggmlID), buf.baseAddress,
                                     Int32(src.count / cols), Int32(cols))
                }
            }
        }
    }
}
