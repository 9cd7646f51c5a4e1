// The block schedule: several prompts under one budget, each stage read once per
// step for the whole block, every output token-identical to its prompt run alone
// on the resident model.
import Foundation
import Formats
import Models
import Runtime
import Tensors
import XCTest

final class BlockScheduleTests: XCTestCase {
    let prompts: [[Int]] = [[1, 504, 905, 436, 253], [42], [1, 7270, 30, 198, 198, 504, 5575, 436, 253], [9, 8]]
    let maxTokens = 7

    func weights() throws -> GGUFWeights {
        let path = AssetCache.directory
            + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("missing asset \(path): run scripts/fetch-assets.sh")
            throw CocoaError(.fileNoSuchFile)
        }
        return try GGUFWeights(path: path)
    }

    func testBlocksAreTokenIdenticalToSingleRunsAndShareReads() throws {
        let w = try weights()
        let resident = try LlamaModel(source: w, threads: 2)
        let greedy = SamplingOptions(temperature: 0)
        let alone = try prompts.map { p -> [Int] in
            var s = Sampler(options: greedy, seed: 0)
            return try Generator(model: resident).generate(prompt: p, maxTokens: maxTokens, sampler: &s).tokens
        }
        var perTokenBytes: [Int: Double] = [:]
        for (budget, block) in [(12_000_000, nil), (12_000_000, 1), (40_000_000, 3)] as [(Int, Int?)] {
            let schedule = try BlockSchedule(weights: w, budget: budget, prompts: prompts, maxTokens: maxTokens,
                                             blockSize: block)
            if let block { XCTAssertEqual(schedule.blockSize, block) }
            let (r, s) = try generateBlocks(weights: w, schedule: schedule, threads: 2, prompts: prompts,
                                            maxTokens: maxTokens, sampling: greedy, seed: 0, stop: [])
            XCTAssertEqual(r.outputs.map(\.index), Array(prompts.indices), "outputs out of input order")
            XCTAssertEqual(r.outputs.map(\.tokens), alone, "budget \(budget), block \(schedule.blockSize)")
            XCTAssertLessThanOrEqual(s.peakComputeBytes, budget)
            perTokenBytes[schedule.blockSize] = Double(s.stats.decodeBytesRead) / Double(r.decodeTokens)
        }
        // The cost model takes the whole batch as one block at this budget, and the weight
        // reads per token fall with the block size (shared by every sequence of a step).
        let chosen = try BlockSchedule(weights: w, budget: 12_000_000, prompts: prompts, maxTokens: maxTokens)
        XCTAssertEqual(chosen.blockSize, prompts.count)
        let one = try XCTUnwrap(perTokenBytes[1]), all = try XCTUnwrap(perTokenBytes[prompts.count])
        XCTAssertLessThan(all, one / 2.5, "block of \(prompts.count): \(all) bytes per token vs \(one) alone")
    }

    func testBlockThatCannotHoldItsCachesIsAnError() throws {
        let w = try weights()
        XCTAssertThrowsError(try BlockSchedule(weights: w, budget: 6_000_000, prompts: Array(repeating: [1, 2, 3], count: 64),
                                               maxTokens: 2000, blockSize: 64)) { e in
            XCTAssertTrue("\(e)".contains("of 64 sequences"), "\(e)")
        }
    }
}
