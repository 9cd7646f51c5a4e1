// Element types of tensors as stored in model files and in memory.
// Quantized types are block formats (ggml's layouts, ggml-common.h): a block of
// `blockElements` values occupies `blockBytes` bytes.

public enum DType: String, Sendable, CaseIterable, Codable {
    case f32, f16, bf16, q8_0, q4_0, q4_1
    case q5_0, q5_1, iq4_nl
    case q2_k, q3_k, q4_k, q5_k, q6_k, iq4_xs

    /// Values per block (1 for plain floating-point types).
    public var blockElements: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .iq4_nl: return 32
        case .q2_k, .q3_k, .q4_k, .q5_k, .q6_k, .iq4_xs: return 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q8_0: return 34    // f16 scale + 32 × int8
        case .q4_0: return 18    // f16 scale + 16 bytes of nibbles
        case .q4_1: return 20    // f16 scale + f16 min + 16 bytes of nibbles
        case .q5_0: return 22    // f16 scale + 4 bytes of fifth bits + nibbles
        case .q5_1: return 24    // f16 scale + f16 min + fifth bits + nibbles
        case .iq4_nl: return 18  // f16 scale + 16 bytes of indices into a fixed 16-value table
        case .q2_k: return 84    // 16 scale/min bytes, 64 bytes of 2-bit values, f16 d and dmin
        case .q3_k: return 110   // 32 bytes of high bits, 64 of 2-bit values, 12 of scales, f16 d
        case .q4_k: return 144   // f16 d and dmin, 12 bytes of 6-bit scales/mins, 128 of nibbles
        case .q5_k: return 176   // as Q4_K plus 32 bytes of fifth bits
        case .q6_k: return 210   // 128 bytes of low nibbles, 64 of high pairs, 16 int8 scales, f16 d
        case .iq4_xs: return 136 // f16 d, 6-bit scales (2 + 4 bytes), 128 bytes of table indices
        }
    }

    public var isQuantized: Bool { blockElements > 1 }

    /// ggml's id of the type (`ggml_type`), as GGUF files store it.
    public var ggmlID: UInt32 {
        switch self {
        case .f32: return 0
        case .f16: return 1
        case .q4_0: return 2
        case .q4_1: return 3
        case .q5_0: return 6
        case .q5_1: return 7
        case .q8_0: return 8
        case .q2_k: return 10
        case .q3_k: return 11
        case .q4_k: return 12
        case .q5_k: return 13
        case .q6_k: return 14
        case .iq4_nl: return 20
        case .iq4_xs: return 23
        case .bf16: return 30
        }
    }

    /// The type with ggml id `id`, or nil when Offload does not read it.
    public init?(ggmlID id: UInt32) {
        guard let t = DType.allCases.first(where: { $0.ggmlID == id }) else { return nil }
        self = t
    }

    /// Bytes needed for `elements` values, or nil when `elements` is not a whole
    /// number of blocks or the size overflows.
    public func byteCount(elements: Int) -> Int? {
        guard elements >= 0, elements % blockElements == 0 else { return nil }
        let (bytes, overflow) = (elements / blockElements).multipliedReportingOverflow(by: blockBytes)
        return overflow ? nil : bytes
    }
}
