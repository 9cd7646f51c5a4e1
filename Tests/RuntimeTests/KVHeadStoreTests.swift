// KV heads on disk hold what a cache in memory holds: rows appended in pieces of any size (whole
// pages, partial ones, several spans), read back in any range, truncated and appended again, and
// handed to attention a span at a time (the forward's own rows completing the last span).
import Foundation
import Models
import Planning
import Runtime
import Tensors
import XCTest

/// Page-aligned buffers by name, as a budget's memory hands them out (no limit).
private final class PlainMemory: ComputeMemory {
    var held: [String: UnsafeMutableRawPointer] = [:]
    func allocate(_ name: String, bytes: Int) throws -> UnsafeMutableRawPointer {
        precondition(held[name] == nil, "\(name) allocated twice")
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 4096)
        held[name] = p
        return p
    }
    func free(_ name: String) { held.removeValue(forKey: name)?.deallocate() }
}

final class KVHeadStoreTests: XCTestCase {
    let config = LlamaConfig(name: "kv", vocabSize: 16, dim: 384, ffnDim: 64, layers: 3, heads: 6, kvHeads: 3,
                             contextLength: 1200)

    func testDiskHeadsHoldWhatMemoryHolds() throws {
        let c = config, capacity = 1200, kvDim = c.kvDim
        let memory = PlainMemory()
        let store = try DiskKVStore(folder: NSTemporaryDirectory(), config: c, capacity: capacity,
                                    residentHeads: [3, 1, 0], spanPositions: 256, slots: 2, readers: 1,
                                    bufferPages: 3, memory: memory)
        let cache = try KVCache(config: c, capacity: capacity, memory: memory, residentHeads: [3, 1, 0], store: store)
        var expected = (k: [[Float]](repeating: [], count: c.layers), v: [[Float]](repeating: [], count: c.layers))
        var g = SeededGenerator(seed: 3)
        func rows(_ n: Int) -> [Float] { (0..<n * kvDim).map { _ in Float.random(in: -1...1, using: &g) } }

        /// A forward of `n` rows: spans of every disk head match the rows so far and the new ones.
        func forward(_ n: Int) throws {
            let start = cache.length
            let new = (0..<c.layers).map { _ in (rows(n), rows(n)) }
            try store.beginForward(start: start, rows: n)
            for l in 0..<c.layers {
                let all = (expected.k[l] + new[l].0, expected.v[l] + new[l].1)
                for h in cache.residentHeads[l]..<c.kvHeads {
                    var next = 0
                    while let s = try store.nextSpan(layer: l, head: h, newK: new[l].0, newV: new[l].1) {
                        XCTAssertEqual(s.first, next, "spans in order from position 0")
                        for p in s.first..<s.first + s.count {
                            for t in 0..<64 where s.k[(p - s.first) * 64 + t] != all.0[p * kvDim + h * 64 + t]
                                || s.v[(p - s.first) * 64 + t] != all.1[p * kvDim + h * 64 + t] {
                                return XCTFail("layer \(l) head \(h) position \(p) after \(start)+\(n)")
                            }
                        }
                        next = s.first + s.count
                        store.releaseSpan()
                    }
                    XCTAssertEqual(next, start + n, "the spans cover every position")
                }
                try cache.append(layer: l, start: start, rows: n, k: new[l].0, v: new[l].1)
                expected.k[l] = all.0; expected.v[l] = all.1
            }
            cache.setLength(start + n)
        }
        func check(_ from: Int, _ count: Int) throws {
            for l in 0..<c.layers {
                var k = [Float](repeating: .nan, count: count * kvDim), v = k
                try cache.read(layer: l, from: from, count: count, k: &k, v: &v)
                XCTAssertEqual(k, Array(expected.k[l][from * kvDim..<(from + count) * kvDim]), "keys \(l) [\(from), +\(count))")
                XCTAssertEqual(v, Array(expected.v[l][from * kvDim..<(from + count) * kvDim]), "values \(l) [\(from), +\(count))")
            }
        }
        for n in [5, 11, 16, 300, 1, 1, 1, 40] { try forward(n) }   // 375: many whole pages, a tail of 7
        try check(0, cache.length); try check(17, 300); try check(368, 7)
        for keep in [370, 368, 200] {                                // within the tail, at a page, pages back
            try cache.truncate(to: keep)
            for l in 0..<c.layers { expected.k[l].removeLast(expected.k[l].count - keep * kvDim); expected.v[l].removeLast(expected.v[l].count - keep * kvDim) }
            try check(0, keep)
        }
        for n in [3, 600, 1] { try forward(n) }
        try check(0, cache.length); try check(512, 292)
        XCTAssertGreaterThan(store.bytesRead, 0); XCTAssertGreaterThan(store.bytesWritten, 0)
    }

    func testAForwardStartingElsewhereIsRefused() throws {
        let memory = PlainMemory()
        let store = try DiskKVStore(folder: NSTemporaryDirectory(), config: config, capacity: 64, residentHeads: [3, 3, 2],
                                    spanPositions: 256, slots: 2, readers: 1, memory: memory)
        XCTAssertThrowsError(try store.beginForward(start: 5, rows: 1)) { e in
            XCTAssertTrue("\(e)".contains("layer 2 holds 0 positions, the forward starts at 5"), "\(e)")
        }
    }
}
