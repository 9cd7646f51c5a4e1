import Models
import Runtime
import XCTest

final class DataLoaderTests: XCTestCase {
    func testWindowsAndBatches() throws {
        let tokens = Array(0..<23)
        let d = try TokenWindows(tokens: tokens, seqLen: 5, vocabSize: 100)
        XCTAssertEqual(d.windowCount, 4)   // starts 0, 5, 10, 15 (15 + 6 = 21 ≤ 23); 20 does not fit
        let (x, y) = d.batch(1, size: 3)   // windows 3, 0, 1
        XCTAssertEqual(x, [15, 16, 17, 18, 19, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
        XCTAssertEqual(y, [16, 17, 18, 19, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    }

    func testShuffleIsAPermutationPerEpochAndDeterministic() throws {
        let tokens = Array(0..<101)
        let a = try TokenWindows(tokens: tokens, seqLen: 4, vocabSize: 200, shuffleSeed: 42)
        let b = try TokenWindows(tokens: tokens, seqLen: 4, vocabSize: 200, shuffleSeed: 42)
        let c = try TokenWindows(tokens: tokens, seqLen: 4, vocabSize: 200, shuffleSeed: 43)
        XCTAssertEqual(a.windowCount, 25)
        let e0 = (0..<25).map { a.window(at: $0) }, e1 = (25..<50).map { a.window(at: $0) }
        XCTAssertEqual(e0.sorted(), Array(0..<25))
        XCTAssertEqual(e1.sorted(), Array(0..<25))
        XCTAssertNotEqual(e0, e1, "each epoch draws its own order")
        XCTAssertNotEqual(e0, Array(0..<25))
        // Any position can be asked for in any order (resume): same answer.
        XCTAssertEqual((0..<50).reversed().map { b.window(at: $0) }, (e0 + e1).reversed())
        XCTAssertNotEqual((0..<25).map { c.window(at: $0) }, e0)
    }

    func testMaskedTargetsAreIgnoredAndWindowsWithoutAnyAreSkipped() throws {
        // Tokens 0..<16, windows of 4 (starts 0, 4, 8): only tokens 10 and 11 are trained on.
        let tokens = Array(0..<16), mask = tokens.map { $0 == 10 || $0 == 11 }
        let d = try TokenWindows(tokens: tokens, mask: mask, seqLen: 4, vocabSize: 100)
        XCTAssertEqual(d.windowCount, 1, "windows 0 and 1 have no target trained on")
        let (x, y) = d.batch(0, size: 2)
        let i = LlamaTrainer.ignoredTarget
        XCTAssertEqual(x, [8, 9, 10, 11, 8, 9, 10, 11])
        XCTAssertEqual(y, [i, 10, 11, i, i, 10, 11, i])
        XCTAssertThrowsError(try TokenWindows(tokens: tokens, mask: [Bool](repeating: false, count: 16), seqLen: 4, vocabSize: 100)) {
            XCTAssertTrue("\($0)".contains("no window of --seq-len 4 has a token to train on"), "\($0)")
        }
        XCTAssertThrowsError(try TokenWindows(tokens: tokens, mask: [true], seqLen: 4, vocabSize: 100)) {
            XCTAssertTrue("\($0)".contains("1 mask entries for 16 tokens"), "\($0)")
        }
    }

    func testBadData() {
        XCTAssertThrowsError(try TokenWindows(tokens: [], seqLen: 4, vocabSize: 10)) { XCTAssertTrue("\($0)".contains("no tokens")) }
        XCTAssertThrowsError(try TokenWindows(tokens: [1, 2, 3, 4], seqLen: 4, vocabSize: 10)) {
            XCTAssertTrue("\($0)".contains("shorter than one training window"), "\($0)")
        }
        XCTAssertThrowsError(try TokenWindows(tokens: [1, 2, 3, 12, 4, 5], seqLen: 4, vocabSize: 10)) {
            XCTAssertTrue("\($0)".contains("token id 12 at position 3"), "\($0)")
        }
        XCTAssertNoThrow(try TokenWindows(tokens: [1, 2, 3, 4, 5], seqLen: 4, vocabSize: 10))
    }
}
