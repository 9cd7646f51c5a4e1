// The disk store: bit-exact round trips, O_DIRECT fallback, full devices,
// read errors, extent reuse, budgets and stale-folder cleanup.
import CPlatform
import Foundation
import Memory
import Tensors
import XCTest

final class DiskStoreTests: XCTestCase {
    var root = ""
    override func setUp() { root = scratchFolder("disk") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: root) }

    func smallRequests() -> DiskStoreOptions {
        var o = DiskStoreOptions()
        o.requestBytes = 64 << 10  // several requests per tensor
        o.growthStep = 1 << 20
        return o
    }

    func randomBuffer(_ bytes: Int, seed: UInt64) throws -> AlignedBuffer {
        let b = try AlignedBuffer(byteCount: bytes)
        var rng = SeededBytes(seed: seed)
        rng.fill(b.bytes)
        return b
    }

    func roundTrip(_ store: DiskStore, sizes: [Int], file: StaticString = #filePath, line: UInt = #line) throws {
        var originals: [String: AlignedBuffer] = [:]
        for (i, size) in sizes.enumerated() {
            let b = try randomBuffer(size, seed: UInt64(i + 1))
            try store.write("t\(i)", from: b)
            originals["t\(i)"] = b
        }
        XCTAssertEqual(store.stats.current, sizes.map(accountedBytes).reduce(0, +), file: file, line: line)
        for (i, size) in sizes.enumerated() {
            let back = try AlignedBuffer(byteCount: size)
            memset(back.baseAddress, 0xA5, back.capacity)
            try store.read("t\(i)", into: back)
            XCTAssertTrue(back.bytes.elementsEqual(originals["t\(i)"]!.bytes), "t\(i) of \(size) bytes differs", file: file, line: line)
        }
    }

    static let oddSizes = [1, 3, 4095, 4096, 4097, 65_537, 131_071, 1_000_003, 2_500_001]

    func testBitExactRoundTripOfOddSizes() throws {
        let notices = NoticeLog()
        let store = try DiskStore(roots: [root], options: smallRequests(), notice: notices.sink)
        // ext4 (and tmpfs since Linux 6.6) accept O_DIRECT; where a file system
        // refuses it there must have been a notice.
        XCTAssertEqual(store.usesDirectIO, notices.all.isEmpty, "\(notices.all)")
        try roundTrip(store, sizes: Self.oddSizes)
    }

    func testRoundTripAcrossTwoSpillFolders() throws {
        let second = scratchFolder("disk2")
        defer { try? FileManager.default.removeItem(atPath: second) }
        let store = try DiskStore(roots: [root, second], options: smallRequests(), notice: { _ in })
        XCTAssertEqual(store.spillFolders.count, 2)
        try roundTrip(store, sizes: Self.oddSizes)
        let files = Set(store.names.compactMap { store.location(of: $0)?.path })
        XCTAssertEqual(files.count, 2, "tensors spread over both folders")
    }

    func testBufferedFallbackWhenDirectIOIsRefusedSaysSoOnce() throws {
        var o = smallRequests()
        o.faults.refuseDirectIO = true
        let notices = NoticeLog()
        let store = try DiskStore(roots: [root], options: o, notice: notices.sink)
        XCTAssertFalse(store.usesDirectIO)
        try roundTrip(store, sizes: Self.oddSizes)
        XCTAssertEqual(notices.all.count, 1, "\(notices.all)")
        XCTAssertTrue(notices.all.first?.contains("refuses O_DIRECT") ?? false, "\(notices.all)")
    }

    func testBufferedFallbackOnAFileSystemThatRefusesDirectIO() throws {
        // ramfs refuses O_DIRECT at open (EINVAL). Mounting needs root; without it
        // the same path is exercised through the injected refusal above.
        let mountPoint = root + "/ramfs"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        guard shell("mount -t ramfs ramfs '\(mountPoint)'") == 0 else {
            return try testBufferedFallbackWhenDirectIOIsRefusedSaysSoOnce()
        }
        defer { shell("umount '\(mountPoint)'") }
        let notices = NoticeLog()
        let store = try DiskStore(roots: [mountPoint], options: smallRequests(), notice: notices.sink)
        XCTAssertFalse(store.usesDirectIO)
        XCTAssertEqual(notices.all.count, 1, "\(notices.all)")
        XCTAssertTrue(notices.all.first?.contains("refuses O_DIRECT") ?? false)
        try roundTrip(store, sizes: [1, 4097, 300_001])
        store.close()
        XCTAssertEqual(entries(mountPoint), [])
    }

    func testDiskFullIsAnErrorNamingTheFileAndKeepsEarlierData() throws {
        // A 1 MiB tmpfs: the fourth 300 kB tensor cannot fit.
        let mountPoint = root + "/small"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        var options = smallRequests()
        var folder = mountPoint
        let mounted = shell("mount -t tmpfs -o size=1m tmpfs '\(mountPoint)'") == 0
        if !mounted {
            // Not root: the same condition, as a device that stops after 1 MiB.
            options.faults.shortWriteAfterBytes = 1 << 20
            folder = root
        }
        defer { if mounted { shell("umount '\(mountPoint)'") } }
        let store = try DiskStore(roots: [folder], options: options, notice: { _ in })
        var written: [AlignedBuffer] = []
        var failure = ""
        for i in 0..<10 {
            let b = try randomBuffer(300_000, seed: UInt64(100 + i))
            do {
                try store.write("t\(i)", from: b)
                written.append(b)
            } catch {
                failure = "\(error)"
                break
            }
        }
        XCTAssertEqual(written.count, 3, "three 300 kB tensors fit in 1 MiB, a fourth does not")
        let spillFile = store.spillFolders[0] + "/spill.bin"
        XCTAssertTrue(failure.hasPrefix("[disk]"), failure)
        XCTAssertTrue(failure.contains(spillFile), "names the file: \(failure)")
        XCTAssertTrue(failure.contains("t3"), "names the tensor: \(failure)")
        XCTAssertTrue(failure.contains("No space left on device"), failure)
        XCTAssertEqual(store.stats.current, 3 * accountedBytes(300_000), "the failed write counts nothing")
        XCTAssertFalse(store.contains("t3"))
        for (i, b) in written.enumerated() {
            let back = try AlignedBuffer(byteCount: 300_000)
            try store.read("t\(i)", into: back)
            XCTAssertEqual(checksum(back), checksum(b), "t\(i) changed after the failed write")
        }
        store.close()
        XCTAssertEqual(entries(folder).filter { $0.hasPrefix("offload-spill-") }, [])
    }

    func testShortWriteFailsTheRewriteAndKeepsTheOldVersion() throws {
        var o = smallRequests()
        o.faults.shortWriteAfterBytes = 3 * 65_536 + 4096
        let store = try DiskStore(roots: [root], options: o, notice: { _ in })
        let v1 = try randomBuffer(150_000, seed: 7)
        try store.write("w", from: v1)  // 36 pages = 147 456 + 4096 bytes: fits
        let v2 = try randomBuffer(150_000, seed: 8)
        let message = errorMessage { try store.write("w", from: v2) }
        XCTAssertTrue(message.contains("write w to \(store.spillFolders[0])/spill.bin"), message)
        XCTAssertTrue(message.contains("No space left on device"), message)
        XCTAssertTrue(message.contains(" of 65536 bytes") || message.contains(" of 20480 bytes"), message)
        let back = try AlignedBuffer(byteCount: 150_000)
        try store.read("w", into: back)
        XCTAssertEqual(checksum(back), checksum(v1), "the old version must survive a failed rewrite")
        XCTAssertEqual(store.stats.current, accountedBytes(150_000))
    }

    func testReadErrorIsAnErrorNotZeros() throws {
        var o = smallRequests()
        o.faults.readErrorOn = "broken"
        let store = try DiskStore(roots: [root], options: o, notice: { _ in })
        let b = try randomBuffer(200_000, seed: 9)
        try store.write("broken", from: b)
        try store.write("fine", from: b)
        let back = try AlignedBuffer(byteCount: 200_000)
        let message = errorMessage { try store.read("broken", into: back) }
        XCTAssertTrue(message.hasPrefix("[disk] read broken from \(store.spillFolders[0])/spill.bin"), message)
        XCTAssertTrue(message.contains("Input/output error"), message)
        try store.read("fine", into: back)
        XCTAssertEqual(checksum(back), checksum(b))
    }

    func testTruncatedSpillFileIsAnErrorNotZeros() throws {
        let store = try DiskStore(roots: [root], options: smallRequests(), notice: { _ in })
        let b = try randomBuffer(100_000, seed: 10)
        try store.write("gone", from: b)
        let path = store.location(of: "gone")!.path
        XCTAssertEqual(truncate(path, 0), 0)
        let back = try AlignedBuffer(byteCount: 100_000)
        let message = errorMessage { try store.read("gone", into: back) }
        XCTAssertTrue(message.contains("read gone from \(path)"), message)
        XCTAssertTrue(message.contains("got 0 of"), message)
    }

    func testReadIntoWrongSizeOrMissingTensorIsAnError() throws {
        let store = try DiskStore(roots: [root], options: smallRequests(), notice: { _ in })
        try store.write("a", from: try randomBuffer(5000, seed: 1))
        let m1 = errorMessage { try store.read("a", into: try AlignedBuffer(byteCount: 4999)) }
        XCTAssertTrue(m1.contains("4999") && m1.contains("5000"), m1)
        let m2 = errorMessage { try store.read("nope", into: try AlignedBuffer(byteCount: 5000)) }
        XCTAssertTrue(m2.contains("nope") && m2.contains("no such tensor"), m2)
    }

    func testRemovedSpaceIsReusedAndUncounted() throws {
        let store = try DiskStore(roots: [root], options: smallRequests(), notice: { _ in })
        try store.write("a", from: try randomBuffer(8192, seed: 1))
        try store.write("b", from: try randomBuffer(4096, seed: 2))
        let aOffset = store.location(of: "a")!.offset
        XCTAssertEqual(store.location(of: "b")!.offset, aOffset + 8192)
        store.remove("a")
        XCTAssertEqual(store.stats.current, 4096)
        XCTAssertEqual(store.stats.peak, 12_288)
        let c = try randomBuffer(5000, seed: 3)
        try store.write("c", from: c)
        XCTAssertEqual(store.location(of: "c")!.offset, aOffset, "first fit reuses the hole")
        let back = try AlignedBuffer(byteCount: 5000)
        try store.read("c", into: back)
        XCTAssertEqual(checksum(back), checksum(c))
        XCTAssertEqual(store.names, ["b", "c"])
    }

    func testDiskBudgetIsHard() throws {
        var o = smallRequests()
        o.capacity = 3 * 4096
        let store = try DiskStore(roots: [root], options: o, notice: { _ in })
        try store.write("a", from: try randomBuffer(8192, seed: 1))
        let message = errorMessage { try store.write("b", from: try randomBuffer(4097, seed: 2)) }
        XCTAssertTrue(message.hasPrefix("[disk] cannot place b"), message)
        XCTAssertTrue(message.contains("12288 bytes"), message)
        XCTAssertTrue(message.contains("in spill folder \(store.spillFolders[0]): it is full"), message)
        XCTAssertEqual(store.stats.current, 8192)
        XCTAssertNoThrow(try store.write("b", from: try randomBuffer(4096, seed: 2)))
    }

    func testCloseRemovesSpillFolder() throws {
        let store = try DiskStore(roots: [root], options: smallRequests(), notice: { _ in })
        try store.write("a", from: try randomBuffer(100_000, seed: 1))
        let folder = store.spillFolders[0]
        XCTAssertEqual(entries(folder), ["lock", "spill.bin"])
        store.close()
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder))
        XCTAssertEqual(entries(root), [])
        XCTAssertThrowsError(try store.write("b", from: try randomBuffer(10, seed: 1)))
    }

    func testStaleFoldersAreRemovedAndLiveOnesKept() throws {
        let fm = FileManager.default
        // A live store in the same root: its lock is held, it must survive.
        let live = try DiskStore(roots: [root], options: smallRequests(), notice: { _ in })
        try live.write("keep", from: try randomBuffer(4096, seed: 1))
        // A killed run: lock file present but nobody holds its flock.
        let killed = root + "/offload-spill-999999-1"
        try fm.createDirectory(atPath: killed, withIntermediateDirectories: false)
        try Data("999999\n".utf8).write(to: URL(fileURLWithPath: killed + "/lock"))
        try Data(count: 8192).write(to: URL(fileURLWithPath: killed + "/spill.bin"))
        // A run killed before it made its lock file: judged by its pid.
        var deadPid: Int32 = 4_000_000
        while cs_process_alive(deadPid) != 0 { deadPid += 1 }
        let early = root + "/offload-spill-\(deadPid)-7"
        try fm.createDirectory(atPath: early, withIntermediateDirectories: false)
        // Something that is not ours.
        try fm.createDirectory(atPath: root + "/unrelated", withIntermediateDirectories: false)

        let notices = NoticeLog()
        let store = try DiskStore(roots: [root], options: smallRequests(), notice: notices.sink)
        XCTAssertFalse(fm.fileExists(atPath: killed))
        XCTAssertFalse(fm.fileExists(atPath: early))
        XCTAssertTrue(fm.fileExists(atPath: live.spillFolders[0] + "/spill.bin"))
        XCTAssertTrue(fm.fileExists(atPath: root + "/unrelated"))
        XCTAssertEqual(notices.all.count, 2, "\(notices.all)")
        XCTAssertTrue(notices.all.contains { $0.contains(killed) && $0.contains("8.01 KiB") && $0.contains("999999") }, "\(notices.all)")
        let back = try AlignedBuffer(byteCount: 4096)
        try live.read("keep", into: back)
        XCTAssertEqual(checksum(back), checksum(try randomBuffer(4096, seed: 1)))
        store.close()
        live.close()
        XCTAssertEqual(entries(root), ["unrelated"])
    }

    func testStoreDroppedWithWritesInFlightCleansUpWithoutDeadlock() throws {
        var o = smallRequests()
        o.faults.requestDelay = 0.02
        var store: DiskStore? = try DiskStore(roots: [root], options: o, notice: { _ in })
        let folder = store!.spillFolders[0]
        let finished = DispatchSemaphore(value: 0)
        try store!.write("a", from: try randomBuffer(300_000, seed: 1)) { error in
            XCTAssertNil(error)
            finished.signal()
        }
        store = nil  // the write in flight now holds the last reference; deinit runs on an I/O thread
        XCTAssertEqual(finished.wait(timeout: .now() + 5), .success)
        let deadline = Date().addingTimeInterval(5)
        while FileManager.default.fileExists(atPath: folder) && Date() < deadline { usleep(10_000) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder), "deinit on the I/O thread must close the store")
    }
}
