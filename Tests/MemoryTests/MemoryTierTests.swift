// Compute-tier budgets, aligned buffers and statistics.
import Foundation
import Memory
import Tensors
import XCTest

final class MemoryTierTests: XCTestCase {
    func testBuffersAreAlignedPaddedAndZeroPadded() throws {
        for size in [0, 1, 7, 4095, 4096, 4097, 123_457] {
            let b = try AlignedBuffer(byteCount: size)
            XCTAssertEqual(Int(bitPattern: b.baseAddress) % 4096, 0, "size \(size)")
            XCTAssertEqual(b.byteCount, size)
            XCTAssertEqual(b.capacity, max(4096, (size + 4095) / 4096 * 4096), "size \(size)")
            let padding = UnsafeRawBufferPointer(start: b.baseAddress + size, count: b.capacity - size)
            XCTAssertTrue(padding.allSatisfy { $0 == 0 }, "padding of \(size) not zeroed")
        }
    }

    func testAccountedBytesRoundsToPages() {
        XCTAssertEqual(accountedBytes(0), 0)
        XCTAssertEqual(accountedBytes(1), 4096)
        XCTAssertEqual(accountedBytes(4096), 4096)
        XCTAssertEqual(accountedBytes(4097), 8192)
    }

    func testBudgetErrorFiresAtTheRightByte() throws {
        // Budget 10 000 bytes: two pages (8192) fit, a third page does not.
        let tier = MemoryTier(.compute, limit: 10_000)
        let a = try tier.allocate("blk.0.attn_q", bytes: 8192)
        XCTAssertEqual(tier.stats.current, 8192)
        let message = errorMessage { _ = try tier.allocate("blk.0.ffn_up", bytes: 1) }
        XCTAssertTrue(message.hasPrefix("[memory]"), message)
        XCTAssertTrue(message.contains("blk.0.ffn_up"), message)
        XCTAssertTrue(message.contains("4096 bytes"), "size counted at page size: \(message)")
        XCTAssertTrue(message.contains("10000 bytes"), "names the budget: \(message)")
        XCTAssertTrue(message.contains("8.00 KiB already held by 1 tensors"), message)
        XCTAssertTrue(message.contains("blk.0.attn_q"), "names the holder: \(message)")
        XCTAssertEqual(tier.stats.current, 8192, "a refused allocation counts nothing")
        XCTAssertEqual(tier.stats.allocations, 1)

        // Exactly at the limit is allowed; one byte past it is not.
        let exact = MemoryTier(.compute, limit: 3 * 4096)
        let x = try exact.allocate("x", bytes: 2 * 4096)
        let y = try exact.allocate("y", bytes: 4096)
        XCTAssertEqual(exact.stats.current, exact.limit)
        XCTAssertThrowsError(try exact.allocate("z", bytes: 1))
        y.free()
        let z = try exact.allocate("z", bytes: 4000)
        XCTAssertEqual(exact.stats.current, 3 * 4096)
        _ = (a, x, z)
    }

    func testStatsAreSnapshotsWithPeak() throws {
        let tier = MemoryTier(.compute, limit: 1 << 20)
        let before = tier.stats
        var a: TierBuffer? = try tier.allocate("a", bytes: 100_000)
        let b = try tier.allocate("b", bytes: 5000)
        let during = tier.stats
        a!.free()
        a!.free() // idempotent: must not release twice
        XCTAssertEqual(tier.stats.current, 8192)
        a = nil   // deinit after free must not release again either
        let after = tier.stats
        XCTAssertEqual(before, TierStats(tier: .compute, current: 0, peak: 0, limit: 1 << 20, allocations: 0))
        XCTAssertEqual(during.current, 102_400 + 8192)
        XCTAssertEqual(during.allocations, 2)
        XCTAssertEqual(after.current, 8192)
        XCTAssertEqual(after.peak, 102_400 + 8192)
        XCTAssertEqual(after.allocations, 1)
        XCTAssertTrue(b.isLive)
        tier.resetPeak()
        XCTAssertEqual(tier.stats.peak, 8192)
    }

    func testDroppedBufferReturnsItsBytes() throws {
        let tier = MemoryTier(.compute, limit: 8192)
        do { _ = try tier.allocate("temp", bytes: 8192) }
        XCTAssertEqual(tier.stats.current, 0)
        XCTAssertNoThrow(try tier.allocate("again", bytes: 8192))
    }

    func testRoundTripThroughComputeAndHostTiers() throws {
        // On a CPU-only machine the host tier is the compute tier.
        let tiers = Tiers(compute: MemoryTier(.compute, limit: 1 << 20))
        XCTAssertTrue(tiers.host === tiers.compute)
        var rng = SeededBytes(seed: 1)
        let src = try tiers.compute.allocate("src", bytes: 12_345)
        rng.fill(src.bytes)
        let dst = try tiers.host.allocate("dst", bytes: 12_345)
        dst.bytes.copyMemory(from: UnsafeRawBufferPointer(src.bytes))
        XCTAssertEqual(checksum(dst.storage), checksum(src.storage))
        XCTAssertTrue(dst.bytes.elementsEqual(src.bytes))
        XCTAssertEqual(tiers.stats.count, 1, "one distinct tier")
        XCTAssertEqual(tiers.stats[0].current, 2 * 16_384)
    }

    func testConcurrentAllocationsNeverExceedBudget() throws {
        let tier = MemoryTier(.compute, limit: 40 * 4096)
        let refused = Counter()
        DispatchQueue.concurrentPerform(iterations: 200) { i in
            do {
                let b = try tier.allocate("t\(i)", bytes: 4096 * (1 + i % 3))
                XCTAssertLessThanOrEqual(tier.stats.current, tier.limit)
                b.free()
            } catch { refused.add() }
        }
        XCTAssertEqual(tier.stats.current, 0)
        XCTAssertLessThanOrEqual(tier.stats.peak, tier.limit)
        XCTAssertGreaterThan(tier.stats.peak, 0)
    }
}

final class BufferReuseTests: XCTestCase {
    func testFreedBufferIsReusedForTheSameSize() throws {
        let tier = MemoryTier(.compute, limit: 1 << 20)
        var a: TierBuffer? = try tier.allocate("a", bytes: 100_000)
        let address = a!.baseAddress
        a!.bytes.initializeMemory(as: UInt8.self, repeating: 0xEE)
        a = nil
        XCTAssertEqual(tier.cachedBytes, 102_400)
        XCTAssertEqual(tier.stats.current, 0, "cached memory is not held by a tensor")
        let b = try tier.allocate("b", bytes: 100_000)
        XCTAssertEqual(b.baseAddress, address, "same-size allocation reuses the freed buffer")
        XCTAssertEqual(tier.cachedBytes, 0)
        let other = try tier.allocate("c", bytes: 50_000)
        XCTAssertNotEqual(other.baseAddress, address)
    }

    func testCachedPlusLiveNeverExceedsTheBudget() throws {
        let tier = MemoryTier(.compute, limit: 10 * 4096)
        do { _ = try tier.allocate("big", bytes: 8 * 4096) }
        XCTAssertEqual(tier.cachedBytes, 8 * 4096)
        // A different size needs room: the cache gives its memory back.
        let small = try tier.allocate("small", bytes: 4 * 4096)
        XCTAssertEqual(tier.stats.current, 4 * 4096)
        XCTAssertLessThanOrEqual(tier.cachedBytes + tier.stats.current, tier.limit)
        XCTAssertEqual(tier.cachedBytes, 0)
        _ = small
    }

    func testFreeGivesTheMemoryBackAtOnce() throws {
        // What the ledger no longer counts must not stay resident: a buffer still referenced (a local
        // that lives to the end of its scope) gives its memory back when freed, not when it goes.
        let tier = MemoryTier(.compute, limit: 1 << 20)
        let a = try tier.allocate("a", bytes: 8192)
        let address = a.baseAddress
        a.free()
        XCTAssertEqual(tier.cachedBytes, 8192, "freed memory is back in the tier while the buffer is referenced")
        let b = try tier.allocate("b", bytes: 8192)
        XCTAssertEqual(b.baseAddress, address)
        withExtendedLifetime(a) {}
    }

    func testStorageInATransferIsNotReusedUntilItEnds() throws {
        let tier = MemoryTier(.compute, limit: 1 << 20)
        let a = try tier.allocate("a", bytes: 8192)
        let kept = a.storage
        kept.pin()  // a transfer in flight, as the disk store marks one
        a.free()
        XCTAssertEqual(tier.cachedBytes, 0)
        let b = try tier.allocate("b", bytes: 8192)
        XCTAssertNotEqual(b.baseAddress, kept.baseAddress, "memory a transfer still uses must not be handed out")
        kept.unpin()
        XCTAssertEqual(tier.cachedBytes, 8192, "the memory comes back when the transfer ends")
        let c = try tier.allocate("c", bytes: 8192)
        XCTAssertEqual(c.baseAddress, kept.baseAddress)
    }
}
