// Token embedding lookup and its backward (a scatter-add into the table's rows).
// With a tied head the same table also receives the head's gradient: callers
// pass the one gradient buffer to both backward passes.

/// out: (n, dim); table: (vocab, dim); tokens: (n), each in [0, vocab) (checked by the caller).
public func embeddingForward(_ out: UnsafeMutablePointer<Float>, _ table: UnsafePointer<Float>,
                             _ tokens: UnsafePointer<Int32>, n: Int, dim: Int) {
    for i in 0..<n {
        (out + i * dim).update(from: table + Int(tokens[i]) * dim, count: dim)
    }
}

/// dtable: (vocab, dim) += dout's rows, row i added to row tokens[i], in order i = 0, 1, ...
/// (a fixed order, so repeated tokens sum the same way every time); dout: (n, dim).
public func embeddingBackward(_ dtable: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>,
                              _ tokens: UnsafePointer<Int32>, n: Int, dim: Int) {
    for i in 0..<n {
        let d = dtable + Int(tokens[i]) * dim, g = dout + i * dim
        for j in 0..<dim { d[j] += g[j] }
    }
}
