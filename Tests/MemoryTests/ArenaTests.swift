// A tier's arena (MemoryTier(arena: true)): buffers within the budget always fit,
// even when the free bytes are in pieces (their pages are moved side by side),
// and no buffer ever sees another's bytes.
import Foundation
import Memory
import Tensors
import XCTest

final class ArenaTests: XCTestCase {
    func fill(_ b: TierBuffer, seed: UInt64) {
        var rng = SeededBytes(seed: seed)
        rng.fill(b.bytes)
    }

    func testFreePiecesAreGatheredIntoOneBufferAndReturned() throws {
        let mib = 1 << 20
        let tier = MemoryTier(.compute, limit: 16 * mib, hugePages: true, arena: true)
        let quarters = try (0..<4).map { try tier.allocate("q\($0)", bytes: 4 * mib) }
        for (i, q) in quarters.enumerated() { fill(q, seed: UInt64(i + 1)) }
        let kept = [quarters[1], quarters[3]].map { checksum($0.storage) }
        // Free the first and third quarter: 8 MiB free, but in two pieces of 4 MiB.
        quarters[0].free(); quarters[2].free()
        let whole = try tier.allocate("whole", bytes: 8 * mib)
        XCTAssertEqual(tier.arenaMisses, 0, "8 MiB in two free pieces of 4 MiB must be placed by the arena")
        XCTAssertEqual(tier.arenaGathers, 1)
        fill(whole, seed: 99)
        let wholeSum = checksum(whole.storage)
        XCTAssertEqual([quarters[1], quarters[3]].map { checksum($0.storage) }, kept, "moving pages touched a live buffer")
        XCTAssertEqual(checksum(whole.storage), wholeSum)
        whole.free(); quarters[1].free(); quarters[3].free()
        // Everything back: the whole budget is one buffer again.
        let all = try tier.allocate("all", bytes: 16 * mib)
        fill(all, seed: 7)
        XCTAssertEqual(tier.arenaMisses, 0)
        XCTAssertEqual(tier.stats.current, 16 * mib)
    }

    func testRandomTrafficWithinTheBudgetNeverMissesNorMixesBytes() throws {
        let limit = 24 << 20, largest = 6 << 20
        let tier = MemoryTier(.compute, limit: limit, arena: true)
        var rng = SeededBytes(seed: 2024)
        // Each buffer holds one byte value everywhere; `expected` holds it too, for memcmp.
        let expected = try AlignedBuffer(byteCount: largest)
        func intact(_ b: TierBuffer, _ value: Int32) -> Bool {
            memset(expected.baseAddress, value, b.byteCount)
            return memcmp(b.baseAddress, expected.baseAddress, b.byteCount) == 0
        }
        var live: [(buffer: TierBuffer, value: Int32)] = []
        for i in 0..<600 {
            let size = rng.int(in: 1...largest)
            // Free random buffers until this one fits the budget.
            while tier.stats.current + accountedBytes(size) > limit {
                let (b, value) = live.remove(at: rng.int(in: 0...(live.count - 1)))
                XCTAssertTrue(intact(b, value), "buffer \(b.name) changed while it was live")
                b.free()
            }
            let b = try tier.allocate("b\(i)", bytes: size)
            let value = Int32(i % 251 + 1)
            memset(b.baseAddress, value, size)
            live.append((b, value))
        }
        for (b, value) in live { XCTAssertTrue(intact(b, value), "buffer \(b.name) changed while it was live") }
        XCTAssertEqual(tier.arenaMisses, 0, "every allocation within the budget fits the arena")
        XCTAssertGreaterThan(tier.arenaGathers, 10, "the traffic should split the free bytes")
        XCTAssertLessThanOrEqual(tier.stats.peak, limit)
    }

    func testGatheredBuffersGoThroughDirectIO() throws {
        let root = scratchFolder("arena")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try DiskStore(roots: [root])
        defer { store.close() }
        let mib = 1 << 20
        let tier = MemoryTier(.compute, limit: 12 * mib, arena: true)
        let parts = try (0..<6).map { try tier.allocate("p\($0)", bytes: 2 * mib) }
        for i in [0, 2, 4] { parts[i].free() }
        let gathered = try tier.allocate("gathered", bytes: 6 * mib)  // three pieces of 2 MiB
        XCTAssertEqual(tier.arenaMisses, 0)
        XCTAssertEqual(tier.arenaGathers, 1)
        fill(gathered, seed: 5)
        try store.write("t", from: gathered.storage)
        for i in [1, 3, 5] { parts[i].free() }
        let back = try tier.allocate("back", bytes: 6 * mib)
        memset(back.baseAddress, 0, back.byteCount)
        try store.read("t", into: back.storage)
        XCTAssertTrue(back.bytes.elementsEqual(gathered.bytes), "a direct read into or write from moved pages lost bytes")
        XCTAssertEqual(tier.arenaMisses, 0)
    }
}
