// The mixture-of-experts feed-forward of a resident model: each token's router picks its experts,
// tokens are grouped by expert so each chosen expert's matrices are read once per forward, and
// each row sums its experts' weighted outputs in ascending expert order (as transformers does).

import Foundation
import Kernels
import Tensors

extension LlamaModel {
    /// Block `l`'s mixture of experts on `n` rows of `xn` (normalized input), into `out` (n × dim).
    /// `g` and `u` hold at least n × max(ffn, shared ffn) floats. With `exact`, every product computes
    /// each row as alone, so a row's result does not depend on the others routed with it.
    func moeFeedForward(_ l: Int, _ w: MoEBlockWeights, xn: UnsafeMutablePointer<Float>, n: Int,
                        out: UnsafeMutablePointer<Float>, g: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>,
                        wscratch: UnsafeMutablePointer<Float>, exact: Bool) throws {
        let c = config, m = c.moe!, dim = c.dim
        let route = try work.get("route", n * m.experts), xe = try work.get("xe", n * dim), ye = try work.get("ye", n * dim)
        Matmul.linear(pool, x: xn, n: n, [(w.router, route)], scratch: wscratch, exact: exact)
        var byExpert = [[(row: Int, weight: Float)]](repeating: [], count: m.experts)
        var chosen: [(expert: Int, weight: Float)] = []
        var choices: [[Int]] = []
        for r in 0..<n {
            routeTopK(route + r * m.experts, experts: m.experts, k: m.used, normalize: m.normalizeTopK, into: &chosen)
            for (e, weight) in chosen { byExpert[e].append((r, weight)) }
            if onRouting != nil { choices.append(chosen.map(\.expert)) }
        }
        onRouting?(l, choices)
        out.update(repeating: 0, count: n * dim)
        for (e, rows) in byExpert.enumerated() where !rows.isEmpty {
            let k = rows.count, ex = w.experts[e]
            for (i, r) in rows.enumerated() { (xe + i * dim).update(from: xn + r.row * dim, count: dim) }
            Matmul.linear(pool, x: xe, n: k, [(ex.gate, g), (ex.up, u)], scratch: wscratch, exact: exact)
            swigluForward(g, g, u, count: k * c.ffnDim)
            Matmul.linear(pool, x: g, n: k, [(ex.down, ye)], scratch: wscratch, exact: exact)
            for (i, r) in rows.enumerated() {
                let o = out + r.row * dim, y = ye + i * dim
                for j in 0..<dim { o[j] += y[j] * r.weight }
            }
        }
        if let s = w.shared, let sd = m.sharedFFNDim {
            // The shared expert on every row, scaled by sigmoid(gate · x) (Qwen2-MoE).
            Matmul.linear(pool, x: xn, n: n, [(s.gate, g), (s.up, u)], scratch: wscratch, exact: exact)
            swigluForward(g, g, u, count: n * sd)
            Matmul.linear(pool, x: g, n: n, [(s.down, ye)], scratch: wscratch, exact: exact)
            for r in 0..<n {
                var z: Float = 0
                let xr = xn + r * dim
                for j in 0..<dim { z += xr[j] * s.gateInput[j] }
                let gate = 1 / (1 + Foundation.exp(-z))
                let o = out + r * dim, y = ye + r * dim
                for j in 0..<dim { o[j] += y[j] * gate }
            }
        }
    }
}
