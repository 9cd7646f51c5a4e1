// SwiGLU: out = silu(gate) · up, silu(g) = g / (1 + e^-g). The loop is in C so
// it can use the vectorized exponential (decode spends ~5% of a token here otherwise).

import CKernels

/// out, gate, up: (count). out may alias gate.
public func swigluForward(_ out: UnsafeMutablePointer<Float>, _ gate: UnsafePointer<Float>,
                          _ up: UnsafePointer<Float>, count: Int) {
    ck_swiglu(out, gate, up, count)
}

/// Gemma's gated GELU: out[i] = gelu_tanh(gate[i]) · up[i], with PyTorch's tanh approximation
/// 0.5·g·(1 + tanh(√(2/π)·(g + 0.044715·g³))); out may alias gate.
public func geluTanhGateForward(_ out: UnsafeMutablePointer<Float>, _ gate: UnsafePointer<Float>,
                                _ up: UnsafePointer<Float>, count: Int) {
    ck_gelu_tanh_gate(out, gate, up, count)
}
