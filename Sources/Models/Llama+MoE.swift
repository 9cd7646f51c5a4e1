// The mixture-of-experts feed-forward of a resident model: each token's router picks its experts,
// tokens are grouped by expert so each chosen expert's matrices are read once per forward, and
// each row sums its experts' weighted outputs in ascending expert order (as transformers does).

import Foundation
import Kernels
import Tensors

/// Where a model whose experts are not all in memory gets them (expert offloading). Per mixture-of-
/// experts block and forward: `begin` with the experts the rows chose (ascending), then for each of
/// them `acquire`, compute, `release` — so a block never needs more than one expert resident at a
/// time, and each is read at most once per forward. `prefetch` names the experts a later block is
/// predicted to use, to be read while this one computes. Residency changes, never values.
public protocol ExpertSupplier: AnyObject {
    func begin(layer: Int, experts: [Int])
    func acquire(layer: Int, expert: Int) throws -> ExpertMatrices
    func release(layer: Int, expert: Int)
    /// Experts per token to predict for the next block (0: no prefetch).
    var prefetchWidth: Int { get }
    func prefetch(layer: Int, experts: [Int])
}

extension LlamaModel {
    /// Block `l`'s mixture of experts on `n` rows of `xn` (normalized input), into `out` (n × dim).
    /// `g` and `u` hold at least n × max(ffn, shared ffn) floats. With `exact`, every product computes
    /// each row as alone, so a row's result does not depend on the others routed with it.
    func moeFeedForward(_ l: Int, _ w: MoEBlockWeights, x: UnsafePointer<Float>, xn: UnsafeMutablePointer<Float>, n: Int,
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
        if let supplier = expertSupplier {
            supplier.begin(layer: l, experts: byExpert.indices.filter { !byExpert[$0].isEmpty })
            if supplier.prefetchWidth > 0, l + 1 < c.layers, let next = blocks[l + 1].moe {
                // The next block's router on this hidden state (its norm applied): a guess of its experts,
                // read while this block computes (mixtral-offloading's speculative loading).
                let route2 = try work.get("route2", n * m.experts)
                blocks[l + 1].ffnNorm.withUnsafeBufferPointer {
                    rmsnormForward(ye, x, $0.baseAddress!, rows: n, dim: dim, eps: c.rmsEps)
                }
                Matmul.linear(pool, x: ye, n: n, [(next.router, route2)], scratch: wscratch, exact: exact)
                var predicted = Set<Int>()
                for r in 0..<n {
                    routeTopK(route2 + r * m.experts, experts: m.experts, k: min(supplier.prefetchWidth, m.experts),
                              normalize: false, into: &chosen)
                    predicted.formUnion(chosen.map(\.expert))
                }
                supplier.prefetch(layer: l + 1, experts: predicted.sorted())
            }
        }
        out.update(repeating: 0, count: n * dim)
        for (e, rows) in byExpert.enumerated() where !rows.isEmpty {
            let k = rows.count, ex = try expertSupplier?.acquire(layer: l, expert: e) ?? w.experts[e]
            defer { expertSupplier?.release(layer: l, expert: e) }
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
