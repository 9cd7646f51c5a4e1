// The one formatter for sizes: 1536 -> "1.50 KiB".

public func formatBytes(_ bytes: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while abs(value) >= 1024, unit < units.count - 1 { value /= 1024; unit += 1 }
    if unit == 0 { return "\(bytes) B" }
    return String(format: "%.2f %@", value, units[unit])
}

/// Parses "256MB", "24GiB", "1.5G", "4096" (bytes). Decimal (KB/MB/GB) and binary
/// (KiB/MiB/GiB, K/M/G) suffixes are accepted; nil when the text is not a size.
public func parseBytes(_ text: String) -> Int? {
    let t = text.trimmingCharacters(in: .whitespaces)
    let digits = t.prefix { "0123456789.".contains($0) }
    guard !digits.isEmpty, let value = Double(digits), value >= 0 else { return nil }
    let suffix = t.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased()
    let scale: Double
    switch suffix {
    case "", "b": scale = 1
    case "kb": scale = 1e3
    case "mb": scale = 1e6
    case "gb": scale = 1e9
    case "tb": scale = 1e12
    case "k", "kib": scale = 1024
    case "m", "mib": scale = 1024 * 1024
    case "g", "gib": scale = 1024 * 1024 * 1024
    case "t", "tib": scale = 1024 * 1024 * 1024 * 1024
    default: return nil
    }
    let bytes = value * scale
    guard bytes < 9e18 else { return nil }
    return Int(bytes.rounded())
}

import Foundation
