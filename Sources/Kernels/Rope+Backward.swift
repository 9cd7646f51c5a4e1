// RoPE's backward: rotation is orthogonal, so the gradient is rotated back by
// the same angle (the transpose), in either convention.

/// dx: (rows, heads, headDim), the gradient with respect to the rotated values,
/// replaced in place by the gradient with respect to the values before rotation.
public func ropeBackward(_ dx: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, rows: Int,
                         heads: Int, table: RopeTable, halfSplit: Bool) {
    let d = table.headDim, half = d / 2
    table.cos.withUnsafeBufferPointer { cb in
        table.sin.withUnsafeBufferPointer { sb in
            for r in 0..<rows {
                let c = cb.baseAddress! + Int(positions[r]) * half, s = sb.baseAddress! + Int(positions[r]) * half
                for h in 0..<heads {
                    let v = dx + (r * heads + h) * d
                    // forward: a' = a·c − b·s, b' = b·c + a·s  ⇒  da = da'·c + db'·s, db = db'·c − da'·s
                    if halfSplit {
                        for i in 0..<half {
                            let ga = v[i], gb = v[i + half]
                            v[i] = ga * c[i] + gb * s[i]
                            v[i + half] = gb * c[i] - ga * s[i]
                        }
                    } else {
                        for i in 0..<half {
                            let ga = v[2 * i], gb = v[2 * i + 1]
                            v[2 * i] = ga * c[i] + gb * s[i]
                            v[2 * i + 1] = gb * c[i] - ga * s[i]
                        }
                    }
                }
            }
        }
    }
}
