// SwiGLU: out = silu(gate) · up, silu(g) = g / (1 + e^-g).

import Foundation

/// out, gate, up: (count). out may alias gate.
public func swigluForward(_ out: UnsafeMutablePointer<Float>, _ gate: UnsafePointer<Float>,
                          _ up: UnsafePointer<Float>, count: Int) {
    for i in 0..<count {
        let g = gate[i]
        out[i] = g / (1 + expf(-g)) * up[i]
    }
}
