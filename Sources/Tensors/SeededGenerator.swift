// The one seeded random generator: SplitMix64, small and the same on every
// platform, so a seed reproduces a run (sampling, initialisation, shuffles, tests).

import Foundation

public struct SeededGenerator: RandomNumberGenerator, Codable, Sendable, Equatable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    public mutating func uniform() -> Double { Double((next() >> 11) + 1) * 0x1p-53 }

    /// Standard normal (Box–Muller).
    public mutating func normal() -> Float {
        let u1 = uniform(), u2 = uniform()
        return Float((-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
    }
}
