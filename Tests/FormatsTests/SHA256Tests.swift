// SHA-256 against FIPS 180-4 vectors and digests from sha256sum / hashlib,
// including lengths at the padding boundaries and a file read in several pieces.

import Foundation
import Formats
import XCTest

private func pattern(_ n: Int) -> [UInt8] { (0..<n).map { UInt8($0 * 7 % 251) } }

private func hex(_ bytes: [UInt8], splitAt: Int? = nil) -> String {
    var h = SHA256()
    if let s = splitAt {
        h.update(Data(bytes[..<s]))
        h.update(Data(bytes[s...]))
    } else {
        h.update(Data(bytes))
    }
    return h.finalizeHex()
}

final class SHA256Tests: XCTestCase {
    func testKnownVectors() {
        XCTAssertEqual(hex([]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    /// Lengths around the 56-byte padding limit and the 64-byte block, fed whole and in two pieces.
    func testBlockBoundaries() {
        let want: [Int: String] = [
            55: "8af594de0e003fdee5c8bb088216c824349b4137070f559574f4a4bddd27b714",
            56: "db81bc2bfd43620591df192139062da77d4c376f1888ea3d2190bd07c8d901f9",
            63: "bd535b38bf0d0d1a09d370b7e34b2696cea3767801a45d5611a4aaa6954e8527",
            64: "292be91abe8c0909fe3d26575af5755eee74d23816dc68c3ba41765136967654",
            65: "ba65aedf7884642499a59ae124894611d986cf429e69f569488048af3a99e25a",
            119: "d367ab298e74477421127b0b448667c37c006c636f5738f081c39388756e5fad",
            120: "be7beb9c82089eb08da8fe6eb30c13b9d56869014e228a8c3eb0fdfe832efab2",
        ]
        for (n, digest) in want {
            XCTAssertEqual(hex(pattern(n)), digest, "length \(n)")
            for split in [1, 13, 63, n - 1] where split > 0 && split < n {
                XCTAssertEqual(hex(pattern(n), splitAt: split), digest, "length \(n) split at \(split)")
            }
        }
    }

    func testFiles() throws {
        let dir = NSTemporaryDirectory() + "offload-sha-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // FIPS 180-4: one million 'a'.
        try Data(repeating: UInt8(ascii: "a"), count: 1_000_000).write(to: URL(fileURLWithPath: dir + "/a.bin"))
        XCTAssertEqual(try sha256Hex(ofFile: dir + "/a.bin"),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        // Just over 1 MiB, so the file is read in two pieces (digest from sha256sum).
        try Data(pattern(1_048_579)).write(to: URL(fileURLWithPath: dir + "/p.bin"))
        XCTAssertEqual(try sha256Hex(ofFile: dir + "/p.bin"),
                       "98c32015c369957d4b4957cc9995e4d027f0ff6733e65f5fa99ceb52f861bf26")
        FileManager.default.createFile(atPath: dir + "/empty", contents: Data())
        XCTAssertEqual(try sha256Hex(ofFile: dir + "/empty"),
                       "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertThrowsError(try sha256Hex(ofFile: dir + "/absent.bin")) { e in
            XCTAssertTrue("\(e)".hasPrefix("[sha256] absent.bin: cannot open"), "\(e)")
        }
    }
}
