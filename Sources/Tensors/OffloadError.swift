// The one error type users see: a sentence that starts with the operation that
// failed, in brackets, and names the file, tensor or flag involved.

public struct OffloadError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
