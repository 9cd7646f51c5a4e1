// RMSNorm: out = x / sqrt(mean(x²) + eps) · weight, per row.

/// out, x: (rows, dim); weight: (dim). out may alias x.
public func rmsnormForward(_ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>,
                           _ weight: UnsafePointer<Float>, rows: Int, dim: Int, eps: Float) {
    for r in 0..<rows {
        let xr = x + r * dim, o = out + r * dim
        var ss: Float = 0
        for i in 0..<dim { ss += xr[i] * xr[i] }
        let scale = 1 / (ss / Float(dim) + eps).squareRoot()
        for i in 0..<dim { o[i] = xr[i] * scale * weight[i] }
    }
}
