// SwiGLU's backward. Forward: out = silu(g) · u, silu(g) = g · σ(g).

import Foundation

/// dgate, dup: (count), written; dout, gate, up: (count) — gate and up as the forward saw them.
///   dgate = dout · u · σ(g) · (1 + g · (1 − σ(g))),  dup = dout · silu(g)
public func swigluBackward(_ dgate: UnsafeMutablePointer<Float>, _ dup: UnsafeMutablePointer<Float>,
                           _ dout: UnsafePointer<Float>, _ gate: UnsafePointer<Float>, _ up: UnsafePointer<Float>,
                           count: Int) {
    parallelRows(count, minRowsPerThread: 4096) { range in
        for i in range {
            let g = gate[i]
            let s = 1 / (1 + expf(-g))
            let d = dout[i]
            dgate[i] = d * up[i] * s * (1 + g * (1 - s))
            dup[i] = d * g * s
        }
    }
}

/// out, gate, up: (count); out may alias gate. The same values as `swigluForward`, on the training threads.
public func swigluForwardParallel(_ out: UnsafeMutablePointer<Float>, _ gate: UnsafePointer<Float>,
                                  _ up: UnsafePointer<Float>, count: Int) {
    parallelRows(count, minRowsPerThread: 4096) { range in
        swigluForward(out + range.lowerBound, gate + range.lowerBound, up + range.lowerBound, count: range.count)
    }
}
