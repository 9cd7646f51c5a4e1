// jinja2's filters and tests and the Python str / dict / list methods chat templates call, each with
// the behaviour jinja2 3.1 and Python give it (argument names and defaults included), plus
// transformers' own `tojson` (json.dumps with ensure_ascii=False, indent, separators, sort_keys).
// A filter or test jinja2 has but Offload does not is refused by name when a render reaches it.

import Foundation
import Tensors

extension JinjaRenderer {
    // MARK: filters

    func applyFilter(_ f: JinjaFilterCall, to value: JinjaValue, _ scope: JinjaScope) throws -> JinjaValue {
        let args = try evalArguments(f.arguments, scope)
        return try located(f.line) { try filter(f.name, value, args, line: f.line) }
    }

    func filter(_ name: String, _ given: JinjaValue, _ args: JinjaCallArguments, line: Int) throws -> JinjaValue {
        func bind(_ names: [String]) throws -> [JinjaValue?] { try args.bind(names, name) }
        // Markup stays Markup through the filters that call a str method markupsafe wraps (and through
        // default, safe, escape and string, below); every other filter sees the plain str.
        if given.isMarkup, ["capitalize", "indent", "lower", "trim", "upper"].contains(name) {
            return .markup(try filter(name, given.plain, args, line: line).pyStr)
        }
        let value = name == "default" || name == "d" ? given : given.plain
        func text() throws -> String {
            if case .undefined = value { return "" }
            return value.pyStr
        }
        /// A generator, as jinja2's map, select, reject and unique return.
        func generator(_ items: [JinjaValue]) -> JinjaValue { .iterator(JinjaIterator(.generator, items)) }
        switch name {
        case "abs":
            switch value {
            case .int(let i): return .int(abs(i))
            case .bool(let b): return .int(b ? 1 : 0)
            case .double(let d): return .double(abs(d))
            case .undefined(let what): throw JinjaUndefinedError(what)
            default: throw JinjaTypeError("bad operand type for abs(): '\(value.typeName)'")
            }
        case "attr":
            guard let n = try bind(["name"])[0]?.stringValue else { throw JinjaTypeError("attr() needs an attribute name") }
            return try attribute(value, n)
        case "capitalize":
            return .string(PyText.capitalize(try text()))
        case "count", "length":
            return .int(try value.pyLen())
        case "d", "default":
            let a = try bind(["default_value", "boolean"])
            let useDefault = value.isUndefined || ((a[1]?.truthy ?? false) && !value.truthy)
            return useDefault ? (a[0] ?? .string("")) : value
        case "dictsort":
            let a = try bind(["case_sensitive", "by", "reverse"])
            guard case .dict(let d) = value else {
                if case .undefined(let what) = value { throw JinjaUndefinedError(what) }
                throw JinjaTypeError("dictsort expects a mapping, got \(value.typeName)")
            }
            let by = a[1]?.stringValue ?? "key"
            guard by == "key" || by == "value" else { throw JinjaTypeError("You can only sort by either \"key\" or \"value\"") }
            let caseSensitive = a[0]?.truthy ?? false
            var pairs = d.items.map { JinjaValue.tuple([$0.key, $0.value]) }
            pairs = try sorted(pairs, reverse: a[2]?.truthy ?? false) { item in
                guard case .tuple(let kv) = item else { return item }
                return caseSensitive ? kv[by == "key" ? 0 : 1] : Self.ignoringCase(kv[by == "key" ? 0 : 1])
            }
            return .list(pairs)
        case "e", "escape":
            return given.isMarkup ? given : .markup(JinjaValue.htmlEscape(try text()))
        case "safe":
            return .markup(try text())
        case "string":
            return given.isMarkup ? given : .string(try text())
        case "first":
            if case .iterator(let it) = value { return it.next() ?? .undefined("No first item, sequence was empty.") }
            return try value.pyIterate().first ?? .undefined("No first item, sequence was empty.")
        case "last":
            if case .undefined = value { return .undefined("No last item, sequence was empty.") }
            if case .iterator(let it) = value, it.isOneShot { throw JinjaTypeError("'\(it.typeName)' object is not reversible") }
            return try value.pyIterate().last ?? .undefined("No last item, sequence was empty.")
        case "float":
            let a = try bind(["default"])
            return Self.pyFloat(value).map { .double($0) } ?? (a[0] ?? .double(0))
        case "format":
            let formatArgs: JinjaValue = args.keyword.isEmpty
                ? .tuple(args.positional)
                : .dict(JinjaDict(args.keyword.map { ($0.name, $0.value) }))
            if case .dict = formatArgs { throw JinjaTypeError("format with keyword arguments (%(name)s) is not supported") }
            return .string(try JinjaValue.percentFormat(try text(), formatArgs))
        case "indent":
            let a = try bind(["width", "first", "blank"])
            let indentation: String
            switch a[0] {
            case .string(let s)?: indentation = s
            case let w?: indentation = String(repeating: " ", count: max(0, w.integer ?? 4))
            case nil: indentation = "    "
            }
            let lines = PyText.splitLines(try text() + "\n")
            var rv: String
            if a[2]?.truthy ?? false {
                rv = lines.joined(separator: "\n" + indentation)
            } else {
                rv = lines.first ?? ""
                if lines.count > 1 {
                    rv += "\n" + lines.dropFirst().map { $0.isEmpty ? $0 : indentation + $0 }.joined(separator: "\n")
                }
            }
            if a[1]?.truthy ?? false { rv = indentation + rv }
            return .string(rv)
        case "int":
            let a = try bind(["default", "base"])
            if case .undefined(let what) = value { throw JinjaUndefinedError(what) }
            if case .string(let s) = value, let i = Self.pyInt(s, base: a[1]?.integer ?? 10) { return .int(i) }
            if case .string = value {} else if let i = value.integer { return .int(i) }
            if let d = Self.pyFloat(value), d.isFinite, abs(d) < 9.2e18 { return .int(Int(d.rounded(.towardZero))) }
            return a[0] ?? .int(0)
        case "items":
            switch value {
            case .undefined: return generator([])
            case .dict(let d): return generator(d.items.map { .tuple([$0.key, $0.value]) })
            default: throw JinjaTypeError("Can only get item pairs from a mapping.")
            }
        case "join":
            let a = try bind(["d", "attribute"])
            var items = try value.pyIterate()
            if let attributePath = a[1] { items = try items.map { try lookupPath($0, attributePath, default: nil) } }
            return .string(items.map(\.pyStr).joined(separator: a[0]?.pyStr ?? ""))
        case "list":
            return .list(try value.pyIterate())
        case "lower":
            return .string(PyText.lower(try text()))
        case "upper":
            return .string(PyText.upper(try text()))
        case "map":
            let items = value.truthy ? try value.pyIterate() : []  // jinja2 maps a falsy value (None) to nothing
            if args.positional.isEmpty, let attributePath = args.keyword.first(where: { $0.name == "attribute" })?.value {
                let rest = args.keyword.filter { $0.name != "attribute" && $0.name != "default" }
                if let extra = rest.first { throw JinjaTypeError("Unexpected keyword argument '\(extra.name)'") }
                let fallback = args.keyword.first(where: { $0.name == "default" })?.value
                return generator(try items.map { try lookupPath($0, attributePath, default: fallback) })
            }
            guard let filterName = args.positional.first?.stringValue else { throw JinjaTypeError("map requires a filter argument") }
            guard JinjaNames.filters.contains(filterName) else { throw JinjaTypeError("no filter named '\(filterName)'") }
            let rest = JinjaCallArguments(positional: Array(args.positional.dropFirst()), keyword: args.keyword)
            return generator(try items.map { try filter(filterName, $0, rest, line: line) })
        case "max", "min":
            let a = try bind(["case_sensitive", "attribute"])
            let items = try value.pyIterate()
            guard !items.isEmpty else { return .undefined("No aggregated item, sequence was empty.") }
            let caseSensitive = a[0]?.truthy ?? false
            let key: (JinjaValue) throws -> JinjaValue = { v in
                let x = try a[1].map { try self.lookupPath(v, $0, default: nil) } ?? v
                return caseSensitive ? x : Self.ignoringCase(x)
            }
            var best = items[0]
            for v in items.dropFirst() {
                let c = try key(v).pyCompare(try key(best), name == "max" ? ">" : "<")
                if name == "max" ? c == 1 : c == -1 { best = v }
            }
            return best
        case "reject", "select", "rejectattr", "selectattr":
            let byAttribute = name.hasSuffix("attr")
            var positional = args.positional
            var attributePath: JinjaValue?
            if byAttribute {
                guard !positional.isEmpty else { throw JinjaTypeError("Missing parameter for attribute name") }
                attributePath = positional.removeFirst()
            }
            let testName = positional.isEmpty ? nil : positional.removeFirst().pyStr
            if let testName, !JinjaNames.tests.contains(testName) { throw JinjaTypeError("no test named '\(testName)'") }
            let keep = name.hasPrefix("select")
            guard value.truthy else { return generator([]) }  // jinja2 selects nothing from a falsy value (None)
            return generator(try value.pyIterate().filter { item in
                let subject = try attributePath.map { try lookupPath(item, $0, default: nil) } ?? item
                let passes = try testName.map { try test($0, subject, positional, line: line) } ?? subject.truthy
                return passes == keep
            })
        case "replace":
            let a = try bind(["old", "new", "count"])
            guard let old = a[0], let new = a[1] else { throw JinjaTypeError("replace() needs old and new strings") }
            return .string(PyText.replace(try text(), old.pyStr, new.pyStr, count: a[2]?.integer ?? -1))
        case "reverse":
            // jinja2: a string reversed; else reversed(value) (an iterator); else a reversed list.
            switch value {
            case .string(let s): return .string(PyText.string(s.unicodeScalars.reversed()))
            case .undefined: return .iterator(JinjaIterator(.reverseIterator, []))
            case .list(let a), .tuple(let a): return .iterator(JinjaIterator(.reverseIterator, a.reversed()))
            case .dict(let d): return .iterator(JinjaIterator(.reverseIterator, d.keys.reversed()))
            case .iterator(let it) where !it.isOneShot: return .iterator(JinjaIterator(.reverseIterator, it.items.reversed()))
            default: return .list(try value.pyIterate().reversed())
            }
        case "round":
            let a = try bind(["precision", "method"])
            let precision = a[0]?.integer ?? 0
            let method = a[1]?.stringValue ?? "common"
            guard let x = value.number else { throw JinjaTypeError("type \(value.typeName) doesn't define __round__ method") }
            if method == "common", let i = value.integer { return .int(i) }
            let scale = Foundation.pow(10.0, Double(precision))
            let rule: FloatingPointRoundingRule
            switch method {
            case "common": rule = .toNearestOrEven
            case "ceil": rule = .up
            case "floor": rule = .down
            default: throw JinjaTypeError("method must be common, ceil or floor")
            }
            return .double((x * scale).rounded(rule) / scale)
        case "sort":
            let a = try bind(["reverse", "case_sensitive", "attribute"])
            let caseSensitive = a[1]?.truthy ?? false
            return .list(try sorted(try value.pyIterate(), reverse: a[0]?.truthy ?? false) { v in
                let x = try a[2].map { try self.lookupPath(v, $0, default: nil) } ?? v
                return caseSensitive ? x : Self.ignoringCase(x)
            })
        case "sum":
            let a = try bind(["attribute", "start"])
            var total = a[1] ?? .int(0)
            for v in try value.pyIterate() {
                total = try JinjaValue.arithmetic(.add, total, try a[0].map { try lookupPath(v, $0, default: nil) } ?? v)
            }
            return total
        case "title":
            // jinja2's own title: words start after -, whitespace, (, {, [ or <.
            var out = ""
            var atWordStart = true
            for c in try text().unicodeScalars {
                let separator = c == "-" || c == "(" || c == "{" || c == "[" || c == "<" || PyText.isSpace(c)
                out += separator ? String(c) : (atWordStart ? PyText.upper(String(c)) : PyText.lower(String(c)))
                atWordStart = separator
            }
            return .string(out)
        case "tojson":
            let a = try bind(["ensure_ascii", "indent", "separators", "sort_keys"])
            var indent: String?
            switch a[1] {
            case nil, .none?: indent = nil
            case .string(let s)?: indent = s
            case let v?: indent = String(repeating: " ", count: max(0, v.integer ?? 0))
            }
            var separators = indent == nil ? (", ", ": ") : (",", ": ")
            if let given = a[2], !given.isNone {
                let parts = try given.pyIterate()
                guard parts.count == 2, let item = parts[0].stringValue, let key = parts[1].stringValue else {
                    throw JinjaTypeError("tojson separators must be a pair of strings")
                }
                separators = (item, key)
            }
            var out = ""
            try Self.appendJSON(value, to: &out, indent: indent, level: 0, separators: separators,
                                sortKeys: a[3]?.truthy ?? false, asciiOnly: a[0]?.truthy ?? false)
            return .string(out)
        case "trim":
            let a = try bind(["chars"])
            let chars = a[0].flatMap { $0.isNone ? nil : $0.pyStr }
            return .string(PyText.strip(try text(), chars: chars, left: true, right: true))
        case "unique":
            let a = try bind(["case_sensitive", "attribute"])
            let caseSensitive = a[0]?.truthy ?? false
            var seen: [JinjaValue] = []
            var out: [JinjaValue] = []
            for v in try value.pyIterate() {
                var k = try a[1].map { try lookupPath(v, $0, default: nil) } ?? v
                if !caseSensitive { k = Self.ignoringCase(k) }
                if !seen.contains(where: { $0.pyEquals(k) }) { seen.append(k); out.append(v) }
            }
            return generator(out)
        case "wordcount":
            var count = 0, inWord = false
            for c in try text().unicodeScalars {
                let wordChar = c == "_" || c.properties.isAlphabetic || c.properties.numericType != nil
                if wordChar && !inWord { count += 1 }
                inWord = wordChar
            }
            return .int(count)
        default:
            if !JinjaNames.filters.contains(name) { throw JinjaTypeError("no filter named '\(name)' found") }
            throw JinjaTypeError("the filter '\(name)' is not supported by Offload's chat templates")
        }
    }

    /// jinja2's make_attrgetter: "a.b.0" looks up each part as an item (integers as indices).
    func lookupPath(_ value: JinjaValue, _ path: JinjaValue, default fallback: JinjaValue?) throws -> JinjaValue {
        var parts: [JinjaValue]
        if case .string(let s) = path {
            parts = s.split(separator: ".", omittingEmptySubsequences: false).map { p in Int(p).map { .int($0) } ?? .string(String(p)) }
        } else {
            parts = [path]
        }
        var v = value
        for p in parts {
            v = try item(v, p)
            if let fallback, v.isUndefined { v = fallback }
        }
        return v
    }

    static func ignoringCase(_ v: JinjaValue) -> JinjaValue {
        if case .string(let s) = v { return .string(PyText.lower(s)) }
        return v
    }

    /// Python's sorted(items, key=key, reverse=reverse): stable, and stable in reverse too.
    func sorted(_ items: [JinjaValue], reverse: Bool, key: (JinjaValue) throws -> JinjaValue) throws -> [JinjaValue] {
        let keys = try items.map(key)
        var failure: Error?
        let order = Array(items.indices).sorted { i, j in
            guard failure == nil else { return false }
            do {
                let c = try keys[i].pyCompare(keys[j], "<")
                if c == 0 || c == 2 { return i < j }
                return reverse ? c > 0 : c < 0
            } catch {
                failure = error
                return false
            }
        }
        if let failure { throw failure }
        return order.map { items[$0] }
    }

    /// Python's float(value), nil where it raises.
    static func pyFloat(_ value: JinjaValue) -> Double? {
        switch value {
        case .string(let s):
            let t = PyText.strip(s, chars: nil, left: true, right: true).replacingOccurrences(of: "_", with: "")
            switch t.lowercased() {
            case "inf", "+inf", "infinity", "+infinity": return .infinity
            case "-inf", "-infinity": return -.infinity
            case "nan", "+nan", "-nan": return .nan
            default: return Double(t)
            }
        default: return value.number
        }
    }

    /// Python's int(text, base), nil where it raises.
    static func pyInt(_ s: String, base: Int) -> Int? {
        var t = PyText.strip(s, chars: nil, left: true, right: true).replacingOccurrences(of: "_", with: "")
        var negative = false
        if t.hasPrefix("-") || t.hasPrefix("+") { negative = t.hasPrefix("-"); t.removeFirst() }
        guard !t.isEmpty, let v = Int(t, radix: base) else { return nil }
        return negative ? -v : v
    }

    // MARK: tojson

    /// json.dumps(value, ensure_ascii=asciiOnly, indent=indent, separators=separators, sort_keys=sortKeys).
    static func appendJSON(_ value: JinjaValue, to out: inout String, indent: String?, level: Int,
                           separators: (item: String, key: String), sortKeys: Bool, asciiOnly: Bool) throws {
        func newline(_ depth: Int) {
            guard let indent else { return }
            out += "\n"
            for _ in 0..<depth { out += indent }
        }
        switch value.plain {
        case .none: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d): out += jsonFloat(d)
        case .string(let s): appendJSONString(s, to: &out, asciiOnly: asciiOnly)
        case .list(let items), .tuple(let items):
            if items.isEmpty { out += "[]"; return }
            out += "["
            for (i, v) in items.enumerated() {
                if i > 0 { out += separators.item }
                newline(level + 1)
                try appendJSON(v, to: &out, indent: indent, level: level + 1, separators: separators, sortKeys: sortKeys, asciiOnly: asciiOnly)
            }
            newline(level)
            out += "]"
        case .dict(let d):
            if d.count == 0 { out += "{}"; return }
            var order = Array(0..<d.count)
            if sortKeys {
                var failure: Error?
                order.sort { i, j in
                    do { return try d.keys[i].pyCompare(d.keys[j], "<") < 0 } catch { failure = error; return false }
                }
                if let failure { throw failure }
            }
            out += "{"
            for (n, i) in order.enumerated() {
                if n > 0 { out += separators.item }
                newline(level + 1)
                let key: String
                switch d.keys[i] {
                case .string(let s): key = s
                case .int(let v): key = String(v)
                case .double(let v): key = jsonFloat(v)
                case .bool(let b): key = b ? "true" : "false"
                case .none: key = "null"
                default: throw JinjaTypeError("keys must be str, int, float, bool or None, not \(d.keys[i].typeName)")
                }
                appendJSONString(key, to: &out, asciiOnly: asciiOnly)
                out += separators.key
                try appendJSON(d.values[i], to: &out, indent: indent, level: level + 1, separators: separators, sortKeys: sortKeys, asciiOnly: asciiOnly)
            }
            newline(level)
            out += "}"
        default:
            throw JinjaTypeError("Object of type \(value.typeName) is not JSON serializable")
        }
    }

    static func jsonFloat(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
        return JinjaValue.pyFloatRepr(d)
    }

    static func appendJSONString(_ s: String, to out: inout String, asciiOnly: Bool) {
        out += "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if c.value < 0x20 || (asciiOnly && c.value > 0x7E) {
                    if c.value > 0xFFFF {
                        let v = c.value - 0x10000
                        out += "\\u" + JinjaValue.hex(0xD800 + (v >> 10), width: 4) + "\\u" + JinjaValue.hex(0xDC00 + (v & 0x3FF), width: 4)
                    } else {
                        out += "\\u" + JinjaValue.hex(c.value, width: 4)
                    }
                } else {
                    out.unicodeScalars.append(c)
                }
            }
        }
        out += "\""
    }

    // MARK: tests

    func test(_ name: String, _ given: JinjaValue, _ args: [JinjaValue], line: Int) throws -> Bool {
        if name == "escaped" { return given.isMarkup }
        let value = given.plain
        func argument() throws -> JinjaValue {
            guard let a = args.first else { throw JinjaTypeError("the test '\(name)' needs an argument") }
            return a
        }
        func compare(_ symbol: String) throws -> Int {
            let other = try argument()
            if case .undefined(let what) = value { throw JinjaUndefinedError(what) }
            if case .undefined(let what) = other { throw JinjaUndefinedError(what) }
            return try value.pyCompare(other, symbol)
        }
        switch name {
        case "defined": return !value.isUndefined
        case "undefined": return value.isUndefined
        case "none": return value.isNone
        case "boolean": if case .bool = value { return true }; return false
        case "true": if case .bool(true) = value { return true }; return false
        case "false": if case .bool(false) = value { return true }; return false
        case "integer": if case .int = value { return true }; return false
        case "float": if case .double = value { return true }; return false
        case "number": return value.number != nil
        case "string": if case .string = value { return true }; return false
        case "mapping": if case .dict = value { return true }; return false
        case "sequence":
            switch value {
            case .string, .list, .tuple, .dict, .undefined: return true
            case .iterator(let it): if case .range = it.kind { return true }; return false
            default: return false
            }
        case "iterable":
            switch value {
            case .string, .list, .tuple, .dict, .undefined, .loop, .iterator: return true
            default: return false
            }
        case "callable": if case .function = value { return true }; return false
        case "filter": return JinjaNames.filters.contains(value.pyStr)
        case "test": return JinjaNames.tests.contains(value.pyStr)
        case "lower", "upper":
            let s = value.pyStr.unicodeScalars
            let cased = s.filter { $0.properties.isCased }
            guard !cased.isEmpty else { return false }
            return name == "lower" ? cased.allSatisfy { $0.properties.isLowercase } : cased.allSatisfy { $0.properties.isUppercase }
        case "odd", "even", "divisibleby":
            let divisor = name == "divisibleby" ? try argument() : .int(2)
            let r = try JinjaValue.arithmetic(.modulo, value, divisor)
            return r.pyEquals(.int(name == "odd" ? 1 : 0))
        case "eq", "equalto", "==": return value.pyEquals(try argument())
        case "ne", "!=": return !value.pyEquals(try argument())
        case "lt", "lessthan", "<": let c = try compare("<"); return c == -1
        case "le", "<=": let c = try compare("<="); return c == -1 || c == 0
        case "gt", "greaterthan", ">": let c = try compare(">"); return c == 1
        case "ge", ">=": let c = try compare(">="); return c == 1 || c == 0
        case "in": return try argument().pyContains(value)
        case "sameas":
            switch (value, try argument()) {
            case (.none, .none): return true
            case (.bool(let a), .bool(let b)): return a == b
            case (.namespace(let a), .namespace(let b)): return a === b
            default: return false
            }
        default:
            if !JinjaNames.tests.contains(name) { throw JinjaTypeError("no test named '\(name)' found") }
            throw JinjaTypeError("the test '\(name)' is not supported by Offload's chat templates")
        }
    }

    // MARK: methods

    func callMethod(_ receiver: JinjaValue, _ name: String, _ args: JinjaCallArguments, line: Int) throws -> JinjaValue {
        func bind(_ names: [String]) throws -> [JinjaValue?] { try args.bind(names, name) }
        func unsafe() -> JinjaTypeError {
            JinjaTypeError("\(receiver.typeName).\(name)() is not allowed: transformers renders chat templates in jinja2's "
                           + "immutable sandbox, which refuses methods that change a list or dict")
        }
        switch receiver {
        case .string(let s):
            return try stringMethod(s, name, args)
        case .dict(let d):
            switch name {
            case "get":
                let a = try bind(["key", "default"])
                guard let key = a[0] else { throw JinjaTypeError("get expected at least 1 argument, got 0") }
                return d[key] ?? a[1] ?? .none
            case "items": _ = try bind([]); return .iterator(JinjaIterator(.dictItems, d.items.map { .tuple([$0.key, $0.value]) }))
            case "keys": _ = try bind([]); return .iterator(JinjaIterator(.dictKeys, d.keys))
            case "values": _ = try bind([]); return .iterator(JinjaIterator(.dictValues, d.values))
            case "copy": _ = try bind([]); return receiver
            case "clear", "pop", "popitem", "setdefault", "update": throw unsafe()
            default: throw JinjaTypeError("dict.\(name)() is not supported by Offload's chat templates")
            }
        case .list(let items), .tuple(let items):
            switch name {
            case "count":
                let x = try bind(["value"])[0] ?? .none
                return .int(items.filter { $0.pyEquals(x) }.count)
            case "index":
                let x = try bind(["value"])[0] ?? .none
                guard let i = items.firstIndex(where: { $0.pyEquals(x) }) else { throw JinjaTypeError("\(x.pyRepr) is not in list") }
                return .int(i)
            case "copy": return receiver
            default: throw unsafe()
            }
        case .loop(let loop):
            guard name == "cycle" else { break }
            guard !args.positional.isEmpty else { throw JinjaTypeError("no items for cycling given") }
            return args.positional[loop.index0 % args.positional.count]
        default:
            break
        }
        throw JinjaTypeError("'\(receiver.typeName)' object has no method '\(name)'")
    }

    private func stringMethod(_ s: String, _ name: String, _ args: JinjaCallArguments) throws -> JinjaValue {
        func bind(_ names: [String]) throws -> [JinjaValue?] { try args.bind(names, name) }
        func optionalString(_ v: JinjaValue?) throws -> String? {
            guard let v, !v.isNone else { return nil }
            guard case .string(let t) = v else { throw JinjaTypeError("\(name) arg must be None or str") }
            return t
        }
        func requiredString(_ v: JinjaValue?) throws -> String {
            guard case .string(let t)? = v else { throw JinjaTypeError("\(name)() argument must be str, not \(v?.typeName ?? "nothing")") }
            return t
        }
        let scalars = { Array(s.unicodeScalars) }
        switch name {
        case "strip", "lstrip", "rstrip":
            let chars = try optionalString(try bind(["chars"])[0])
            return .string(PyText.strip(s, chars: chars, left: name != "rstrip", right: name != "lstrip"))
        case "split", "rsplit":
            let a = try bind(["sep", "maxsplit"])
            let sep = try optionalString(a[0])
            if sep == "" { throw JinjaTypeError("empty separator") }
            let maxSplit = a[1]?.integer ?? -1
            if name == "rsplit" && maxSplit >= 0 {
                // Split the reversed text with the reversed separator, then reverse everything back.
                let reversedText = PyText.string(s.unicodeScalars.reversed())
                let reversedSep = sep.map { PyText.string($0.unicodeScalars.reversed()) }
                let parts = PyText.split(reversedText, separator: reversedSep, maxSplit: maxSplit)
                return .list(parts.reversed().map { .string(PyText.string($0.unicodeScalars.reversed())) })
            }
            return .list(PyText.split(s, separator: sep, maxSplit: maxSplit).map { .string($0) })
        case "splitlines":
            return .list(PyText.splitLines(s).map { .string($0) })
        case "startswith", "endswith":
            let a = try bind(["prefix", "start", "end"])
            guard let given = a[0] else { throw JinjaTypeError("\(name)() takes at least 1 argument (0 given)") }
            var candidates: [String] = []
            switch given {
            case .string(let p): candidates = [p]
            case .tuple(let items):
                for item in items {
                    guard case .string(let p) = item else { throw JinjaTypeError("tuple for \(name) must only contain str") }
                    candidates.append(p)
                }
            default: throw JinjaTypeError("\(name) first arg must be str or a tuple of str, not \(given.typeName)")
            }
            var text = s
            if a[1] != nil || a[2] != nil {
                guard case .string(let t) = try JinjaValue.string(s).pySlice(start: a[1]?.integer, stop: a[2]?.integer, step: 1) else { return .bool(false) }
                text = t
            }
            let bytes = Array(text.utf8)
            return .bool(candidates.contains { c in
                let p = Array(c.utf8)
                guard p.count <= bytes.count else { return false }
                return name == "startswith" ? bytes[..<p.count].elementsEqual(p) : bytes[(bytes.count - p.count)...].elementsEqual(p)
            })
        case "upper": _ = try bind([]); return .string(PyText.upper(s))
        case "lower": _ = try bind([]); return .string(PyText.lower(s))
        case "title": _ = try bind([]); return .string(PyText.title(s))
        case "capitalize": _ = try bind([]); return .string(PyText.capitalize(s))
        case "replace":
            let a = try bind(["old", "new", "count"])
            return .string(PyText.replace(s, try requiredString(a[0]), try requiredString(a[1]), count: a[2]?.integer ?? -1))
        case "find", "rfind", "index", "rindex", "count":
            let sub = try requiredString(try bind(["sub"])[0])
            let hay = Array(s.utf8), needle = Array(sub.utf8)
            var hits: [Int] = []
            var from = 0
            while let at = JinjaValue.find(needle, in: hay, from: from) {
                hits.append(at)
                if name == "find" || name == "index" { break }
                from = at + max(needle.count, 1)
                if from > hay.count { break }
            }
            if name == "count" { return .int(hits.count) }
            let at = (name == "find" || name == "index") ? hits.first : hits.last
            guard let at else {
                if name.hasSuffix("index") { throw JinjaTypeError("substring not found") }
                return .int(-1)
            }
            return .int(String(decoding: hay[..<at], as: UTF8.self).unicodeScalars.count)
        case "join":
            guard let iterable = try bind(["iterable"])[0] else { throw JinjaTypeError("join() takes exactly one argument") }
            var parts: [String] = []
            for (i, item) in try iterable.pyIterate().enumerated() {
                guard case .string(let p) = item else { throw JinjaTypeError("sequence item \(i): expected str instance, \(item.typeName) found") }
                parts.append(p)
            }
            return .string(parts.joined(separator: s))
        case "removeprefix", "removesuffix":
            let affix = try requiredString(try bind(["affix"])[0])
            let bytes = Array(s.utf8), p = Array(affix.utf8)
            guard !p.isEmpty, p.count <= bytes.count else { return .string(s) }
            if name == "removeprefix", bytes[..<p.count].elementsEqual(p) { return .string(String(decoding: bytes[p.count...], as: UTF8.self)) }
            if name == "removesuffix", bytes[(bytes.count - p.count)...].elementsEqual(p) {
                return .string(String(decoding: bytes[..<(bytes.count - p.count)], as: UTF8.self))
            }
            return .string(s)
        case "isdigit", "isdecimal", "isnumeric":
            _ = try bind([])
            let cs = scalars()
            return .bool(!cs.isEmpty && cs.allSatisfy { c in
                guard let t = c.properties.numericType else { return false }
                return name == "isnumeric" || t == .decimal || (name == "isdigit" && t == .digit)
            })
        case "isalpha", "isalnum":
            _ = try bind([])
            let cs = scalars()
            return .bool(!cs.isEmpty && cs.allSatisfy { c in
                let letter = c.properties.generalCategory.isLetter
                return letter || (name == "isalnum" && c.properties.numericType != nil)
            })
        case "isspace":
            _ = try bind([])
            let cs = scalars()
            return .bool(!cs.isEmpty && cs.allSatisfy(PyText.isSpace))
        case "islower", "isupper":
            _ = try bind([])
            return .bool(try test(name == "islower" ? "lower" : "upper", .string(s), [], line: 0))
        case "format":
            return .string(try pyFormat(s, args))
        default:
            throw JinjaTypeError("str.\(name)() is not supported by Offload's chat templates")
        }
    }

    /// str.format with `{}`, `{0}`, `{name}`, `{{` and `}}`; format specs and conversions are refused.
    private func pyFormat(_ format: String, _ args: JinjaCallArguments) throws -> String {
        var out = ""
        var automatic = 0
        let cs = Array(format.unicodeScalars)
        var i = 0
        while i < cs.count {
            let c = cs[i]
            if c == "{" && i + 1 < cs.count && cs[i + 1] == "{" { out += "{"; i += 2; continue }
            if c == "}" && i + 1 < cs.count && cs[i + 1] == "}" { out += "}"; i += 2; continue }
            if c == "}" { throw JinjaTypeError("Single '}' encountered in format string") }
            guard c == "{" else { out.unicodeScalars.append(c); i += 1; continue }
            var j = i + 1
            while j < cs.count && cs[j] != "}" { j += 1 }
            guard j < cs.count else { throw JinjaTypeError("Single '{' encountered in format string") }
            let field = PyText.string(cs[(i + 1)..<j])
            if field.contains(":") || field.contains("!") || field.contains(".") || field.contains("[") {
                throw JinjaTypeError("str.format: the field {\(field)} is not supported (only {}, {0} and {name})")
            }
            let value: JinjaValue?
            if field.isEmpty {
                value = automatic < args.positional.count ? args.positional[automatic] : nil
                automatic += 1
            } else if let n = Int(field) {
                value = n < args.positional.count ? args.positional[n] : nil
            } else {
                value = args.keyword.first { $0.name == field }?.value
            }
            guard let value else { throw JinjaTypeError("str.format: no argument for {\(field)}") }
            out += value.pyStr
            i = j + 1
        }
        return out
    }
}

private extension Unicode.GeneralCategory {
    var isLetter: Bool {
        switch self {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }
}
