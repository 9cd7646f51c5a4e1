// The transfer engine: many concurrent transfers stay bit-exact, bytes count
// against the destination tier at issue, back-pressure holds, traces overlap.
import Foundation
import Memory
import Tensors
import XCTest

final class TransferEngineTests: XCTestCase {
    var root = ""
    override func setUp() { root = scratchFolder("xfer") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: root) }

    func makeStore(delay: Double = 0, threads: Int = 4, trace: TraceRecorder? = nil) throws -> DiskStore {
        var o = DiskStoreOptions()
        o.requestBytes = 64 << 10
        o.growthStep = 4 << 20
        o.threadsPerDirection = threads
        o.faults.requestDelay = delay
        return try DiskStore(roots: [root], options: o, trace: trace, notice: { _ in })
    }

    func testManyConcurrentTransfersWithRandomSizesKeepEveryChecksum() throws {
        let memory = MemoryTier(.compute, limit: 64 << 20)
        let engine = TransferEngine(memory: memory, disk: try makeStore(), stagingLimit: 4 << 20)
        var rng = SeededBytes(seed: 42)
        let count = 64
        var sums: [String: UInt64] = [:]
        var sizes: [String: Int] = [:]
        var writes: [TransferHandle] = []
        var early: [TransferHandle] = []
        for i in 0..<count {
            let size = rng.int(in: 1...300_000)
            let b = try memory.allocate("t\(i)", bytes: size)
            rng.fill(b.bytes)
            sums["t\(i)"] = checksum(b.storage)
            sizes["t\(i)"] = size
            writes.append(try engine.write("t\(i)", from: b))
            // Reads of the first half run while the second half is still being written.
            if i >= count / 2 {
                let j = i - count / 2
                try writes[j].wait()
                writes[j].buffer.free()
                early.append(try engine.read("t\(j)"))
            }
        }
        try engine.waitAll()
        for i in count / 2..<count { writes[i].buffer.free() }
        for h in early {
            try h.wait()
            XCTAssertEqual(checksum(h.buffer.storage), sums[h.name], "\(h.name) read while others were written")
            h.buffer.free()
        }
        XCTAssertEqual(early.count, count / 2)
        // Every tensor again, all reads in flight at once.
        let reads = try (0..<count).map { try engine.read("t\($0)") }
        for h in reads {
            try h.wait()
            XCTAssertEqual(h.buffer.byteCount, sizes[h.name])
            XCTAssertEqual(checksum(h.buffer.storage), sums[h.name], "\(h.name) differs after the round trip")
            h.buffer.free()
        }
        XCTAssertEqual(memory.stats.current, 0)
        XCTAssertEqual(engine.disk.stats.current, sizes.values.map(accountedBytes).reduce(0, +))
        XCTAssertLessThanOrEqual(engine.peakBytesInFlight(.write), 4 << 20)
    }

    func testReadCountsAgainstComputeWhenIssued() throws {
        let memory = MemoryTier(.compute, limit: 3 * 4096)
        let disk = try makeStore(delay: 0.2)  // long enough that a loaded machine still sees the read in flight
        try disk.write("big", from: try AlignedBuffer(byteCount: 8192))
        try disk.write("small", from: try AlignedBuffer(byteCount: 100))
        let engine = TransferEngine(memory: memory, disk: disk)
        let h = try engine.read("big")
        XCTAssertFalse(h.isComplete, "the slow device has not finished yet")
        XCTAssertEqual(memory.stats.current, 8192, "counted at issue, before the bytes land")
        let message = errorMessage { _ = try engine.read("big") }
        XCTAssertTrue(message.hasPrefix("[memory] cannot place big"), message)
        XCTAssertTrue(message.contains("already held by 1 tensors"), message)
        let small = try engine.read("small")
        XCTAssertEqual(memory.stats.current, 3 * 4096)
        try h.wait()
        try small.wait()
    }

    func testWriteReservesDiskWhenIssued() throws {
        let memory = MemoryTier(.compute)
        let disk = try makeStore(delay: 0.2)
        let engine = TransferEngine(memory: memory, disk: disk)
        let b = try memory.allocate("act", bytes: 10_000)
        let h = try engine.write("act", from: b)
        XCTAssertFalse(h.isComplete)
        XCTAssertEqual(disk.stats.current, 12_288)
        XCTAssertFalse(disk.contains("act"), "not readable before it is on disk")
        try h.wait()
        XCTAssertTrue(disk.contains("act"))
    }

    func testBackPressureBlocksIssueWhenStagingIsFull() throws {
        // Each request takes 40 ms; staging holds two 8 KiB transfers. Issuing six
        // must wait for two rounds to finish; without back-pressure all six would
        // be issued at once with 48 KiB in flight.
        let memory = MemoryTier(.compute)
        let engine = TransferEngine(memory: memory, disk: try makeStore(delay: 0.04, threads: 8), stagingLimit: 2 * 8192)
        let buffers = try (0..<6).map { try memory.allocate("b\($0)", bytes: 8192) }
        let start = Date()
        let handles = try buffers.map { try engine.write($0.name, from: $0) }
        let issuing = Date().timeIntervalSince(start)
        try engine.waitAll()
        XCTAssertGreaterThanOrEqual(issuing, 0.075, "issue did not wait for staging")
        XCTAssertEqual(engine.peakBytesInFlight(.write), 2 * 8192)
        XCTAssertTrue(handles.allSatisfy(\.isComplete))
        XCTAssertEqual(engine.bytesInFlight(.write), 0)
    }

    func testFailedTransferSurfacesThroughHandleAndWaitAll() throws {
        var o = DiskStoreOptions()
        o.faults.readErrorOn = "bad"
        let disk = try DiskStore(roots: [root], options: o, notice: { _ in })
        try disk.write("bad", from: try AlignedBuffer(byteCount: 4096))
        let engine = TransferEngine(memory: MemoryTier(.compute), disk: disk)
        let h = try engine.read("bad")
        XCTAssertThrowsError(try h.wait()) { XCTAssertTrue("\($0)".contains("Input/output error"), "\($0)") }
        XCTAssertThrowsError(try engine.waitAll())
        XCTAssertNoThrow(try engine.waitAll(), "an error is reported once")
    }

    func testTraceRecordsOverlappingComputeAndTransfers() throws {
        let trace = TraceRecorder()
        let memory = MemoryTier(.compute, limit: 1 << 20, trace: trace)
        let engine = TransferEngine(memory: memory, disk: try makeStore(delay: 0.1, trace: trace), trace: trace)
        let a = try memory.allocate("a", bytes: 65_536)
        let w = try engine.write("a", from: a)
        // Compute (a busy loop) while the write is in flight.
        var x = 0.0
        trace.measure("spin", stream: "compute") {
            let until = Date().addingTimeInterval(0.02)
            while Date() < until { x += 1 }
        }
        try w.wait()
        a.free()
        let r = try engine.read("a")
        try r.wait()
        r.buffer.free()
        XCTAssertGreaterThan(x, 0)

        let events = try TraceEvent.decode(Data(TraceEvent.encode(trace.events).utf8))
        let compute = events.filter { $0.phase == .span && $0.stream == "compute" }
        let writes = events.filter { $0.phase == .span && $0.stream == "write" }
        let reads = events.filter { $0.phase == .span && $0.stream == "read" }
        XCTAssertEqual(compute.map(\.name), ["spin"])
        XCTAssertEqual(writes.map(\.name), ["write a"])
        XCTAssertEqual(reads.map(\.name), ["read a"])
        XCTAssertEqual(writes[0].args["bytes"], 65_536)
        XCTAssertGreaterThanOrEqual(writes[0].duration, 100_000, "µs: the write took at least the 100 ms delay")
        XCTAssertTrue(compute[0].start < writes[0].end && writes[0].start < compute[0].end, "compute and write overlap")
        XCTAssertGreaterThanOrEqual(reads[0].start, writes[0].end)
        // Allocations and frees, and one counter track per tier.
        let instants = events.filter { $0.phase == .instant }.map(\.name)
        XCTAssertEqual(instants.filter { $0 == "alloc a" }.count, 3, "compute a, disk a, compute a again: \(instants)")
        XCTAssertEqual(instants.filter { $0 == "free a" }.count, 2, "\(instants)")
        let counters = events.filter { $0.phase == .counter }
        XCTAssertEqual(Set(counters.map(\.name)), ["compute bytes", "disk bytes"])
        XCTAssertEqual(counters.last { $0.name == "compute bytes" }?.args["bytes"], 0)
        XCTAssertEqual(counters.last { $0.name == "disk bytes" }?.args["bytes"], 65_536)
    }
}
