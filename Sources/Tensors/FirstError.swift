// The first error that any of several threads met: workers record, the caller throws it.
import Foundation

public final class FirstError: @unchecked Sendable {
    private let lock = NSLock()
    private var first: Error?

    public init() {}

    /// The first error recorded, if any.
    public var error: Error? { lock.lock(); defer { lock.unlock() }; return first }

    /// Records `e` unless an error was recorded before (nil: nothing happened).
    public func set(_ e: Error?) {
        guard let e else { return }
        lock.lock(); if first == nil { first = e }; lock.unlock()
    }
}
