// RMSNorm for training: the forward keeps 1/rms per row; the backward gives the
// input's and the weight's gradients. y = x · r · w, r = 1/sqrt(mean(x²) + eps).

/// out: (rows, dim); rstd: (rows), kept for the backward pass; x: (rows, dim); weight: (dim).
public func rmsnormForward(_ out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
                           _ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>,
                           rows: Int, dim: Int, eps: Float) {
    parallelRows(rows, minRowsPerThread: 16) { range in
        for r in range {
            let xr = x + r * dim, o = out + r * dim
            var ss: Float = 0
            for i in 0..<dim { ss += xr[i] * xr[i] }
            let s = 1 / (ss / Float(dim) + eps).squareRoot()
            rstd[r] = s
            for i in 0..<dim { o[i] = xr[i] * s * weight[i] }
        }
    }
}

/// dx: (rows, dim) += ∂L/∂x; dweight: (dim) += ∂L/∂w (summed over rows in order);
/// dout: (rows, dim); x: (rows, dim) the forward input; weight: (dim); rstd: (rows) from the forward.
///   dx_i = r · w_i · dy_i − x_i · r³ / dim · Σ_j w_j · dy_j · x_j
public func rmsnormBackward(_ dx: UnsafeMutablePointer<Float>, _ dweight: UnsafeMutablePointer<Float>,
                            _ dout: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>,
                            rstd: UnsafePointer<Float>, rows: Int, dim: Int) {
    parallelRows(rows, minRowsPerThread: 16) { range in
        for r in range {
            let xr = x + r * dim, g = dout + r * dim, d = dx + r * dim
            let s = rstd[r]
            var dot: Float = 0
            for i in 0..<dim { dot += weight[i] * g[i] * xr[i] }
            let c = dot * s * s * s / Float(dim)
            for i in 0..<dim { d[i] += s * weight[i] * g[i] - c * xr[i] }
        }
    }
    // Weight gradient: one pass over rows in order, so the sum is the same for any thread count.
    for r in 0..<rows {
        let xr = x + r * dim, g = dout + r * dim, s = rstd[r]
        for i in 0..<dim { dweight[i] += g[i] * xr[i] * s }
    }
}
