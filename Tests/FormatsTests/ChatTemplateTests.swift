// Chat templates against transformers' own rendering: real models' templates (the GGUFs'
// tokenizer.chat_template and llama.cpp's models/templates/*.jinja, read from the asset cache)
// on the conversations in Fixtures/chat-templates/expected.json (made by
// scripts/fixtures/make_chat_template_fixtures.py), compared byte for byte. Then the interpreter
// on small inline templates whose expected text jinja2 itself produced (transformers' sandboxed
// environment), and loading from GGUF and Hugging Face folders.

import Foundation
import XCTest
import Formats
import Tensors

final class ChatTemplateTests: XCTestCase {
    // MARK: real templates

    struct Fixture: Decodable {
        struct Message: Decodable { var role: String; var content: String }
        struct Template: Decodable {
            struct Source: Decodable { var gguf: String?; var file: String? }
            struct Case: Decodable {
                var conversation: String
                var add_generation_prompt: Bool
                var tools: Bool
                var expected: String?
                var error: String?
                var raised: String?
            }
            var name: String
            var source: Source
            var sha256: String
            var bos_token: String?
            var eos_token: String?
            var cases: [Case]
        }
        var transformers: String
        var now: String
        /// Conversations and tools as JSON text: tojson prints keys in their order, which JSONDecoder loses.
        var conversations_json: [String: String]
        var tools_json: String
        var templates: [Template]
    }

    static var fixtures: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fixtures")
    }

    func asset(_ rel: String) throws -> String {
        let path = "\(AssetCache.directory)/\(rel)"
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("missing \(path): run scripts/fetch-assets.sh")
            throw OffloadError("missing asset \(path)")
        }
        return path
    }

    /// The fixture's `now` ("2025-03-07T14:05:09", local time, as Python's naive datetime.now()).
    static func localDate(_ iso: String) throws -> Date {
        let parts = iso.split(whereSeparator: { "-T:".contains($0) }).compactMap { Int($0) }
        guard parts.count == 6 else { throw OffloadError("bad date \(iso)") }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = .current
        let c = DateComponents(year: parts[0], month: parts[1], day: parts[2], hour: parts[3], minute: parts[4], second: parts[5])
        guard let date = calendar.date(from: c) else { throw OffloadError("bad date \(iso)") }
        return date
    }

    /// Byte-for-byte equality; on failure, the first differing offset (in characters as Python
    /// counts them) with the text around it on both sides.
    func assertSameText(_ got: String, _ expected: String, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        if Array(got.utf8) == Array(expected.utf8) { return }
        let a = Array(got.unicodeScalars), b = Array(expected.unicodeScalars)
        var i = 0
        while i < min(a.count, b.count) && a[i] == b[i] { i += 1 }
        func context(_ s: [Unicode.Scalar]) -> String {
            var v = String.UnicodeScalarView()
            v.append(contentsOf: s[max(0, i - 40)..<min(s.count, i + 40)])
            return String(reflecting: String(v))
        }
        XCTFail("\(what): differs at offset \(i) (got \(a.count) characters, expected \(b.count))\n  got:      \(context(a))\n  expected: \(context(b))",
                file: file, line: line)
    }

    func testRealTemplatesRenderExactlyAsTransformers() throws {
        let data = try Data(contentsOf: Self.fixtures.appendingPathComponent("chat-templates/expected.json"))
        let fixture = try JSONDecoder().decode(Fixture.self, from: data)
        let now = try Self.localDate(fixture.now)
        let required = ["SmolLM2-135M-Instruct", "Llama-3.1-8B-Instruct", "Llama-3.2-3B-Instruct", "Llama-3.3-70B-Instruct",
                        "Qwen2.5-7B-Instruct", "Mistral-Nemo-Instruct-2407", "Phi-3.5-mini-instruct", "gemma-2-2b-it",
                        "SmolLM3-3B", "DeepSeek-R1-Distill-Llama-8B", "granite-3.3-2B-Instruct", "Devstral-Small-2507"]
        XCTAssertEqual(Set(required).subtracting(fixture.templates.map(\.name)), [], "templates missing from the fixture")
        var rendered = 0
        for t in fixture.templates {
            let template: ChatTemplate
            if let gguf = t.source.gguf {
                template = try ChatTemplate.fromGGUF(GGUFFile(path: try asset(gguf)))
                XCTAssertEqual(template.bosToken, t.bos_token, "\(t.name): BOS from the GGUF")
                XCTAssertEqual(template.eosToken, t.eos_token, "\(t.name): EOS from the GGUF")
            } else {
                let path = try asset(t.source.file ?? "")
                guard let source = String(data: try Data(contentsOf: URL(fileURLWithPath: path)), encoding: .utf8) else {
                    XCTFail("\(path) is not UTF-8"); continue
                }
                template = try ChatTemplate(source: source, bosToken: t.bos_token, eosToken: t.eos_token, origin: path)
            }
            var hash = SHA256()
            hash.update(Array(template.source.utf8))
            guard hash.finalizeHex() == t.sha256 else {
                XCTFail("\(t.name): the cached template's sha256 differs from the one the fixture was made from (\(t.sha256)): "
                        + "re-run scripts/fetch-assets.sh, or regenerate with scripts/fixtures/make_chat_template_fixtures.py")
                continue
            }
            for (i, c) in t.cases.enumerated() {
                let what = "\(t.name) case \(i) (\(c.conversation), add_generation_prompt \(c.add_generation_prompt)\(c.tools ? ", tools" : ""))"
                guard let json = fixture.conversations_json[c.conversation] else { XCTFail("\(what): no such conversation"); continue }
                // Text-only conversations through [ChatMessage]; tools and tool calls through the JSON form.
                let textOnly = try? JSONDecoder().decode([Fixture.Message].self, from: Data(json.utf8))
                let render = {
                    if let textOnly, !c.tools {
                        return try template.render(textOnly.map { ChatMessage(role: $0.role, content: $0.content) },
                                                   addGenerationPrompt: c.add_generation_prompt, now: now)
                    }
                    return try template.render(messagesJSON: Data(json.utf8), addGenerationPrompt: c.add_generation_prompt,
                                               variablesJSON: c.tools ? Data(#"{"tools": \#(fixture.tools_json)}"#.utf8) : nil, now: now)
                }
                if let expected = c.expected {
                    do {
                        assertSameText(try render(), expected, what)
                        rendered += 1
                    } catch {
                        XCTFail("\(what): \(error)")
                    }
                } else {
                    XCTAssertThrowsError(try render(), "\(what): transformers raised \(c.error ?? "")") { error in
                        if let raised = c.raised {
                            XCTAssertTrue("\(error)".contains(raised), "\(what): error \(error) should carry \(raised)")
                        }
                    }
                }
            }
        }
        XCTAssertGreaterThan(rendered, 500)
    }

    // MARK: the interpreter on inline templates (expected text from jinja2 itself)

    /// Context for the inline templates: `d` and `msgs`, no messages.
    static let variables = #"{"d": {"a": 1, "b": [2], "role": "user"}, "msgs": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}"#

    func render(_ source: String, _ variables: String = ChatTemplateTests.variables) throws -> String {
        try ChatTemplate(source: source, bosToken: "<s>", eosToken: "</s>")
            .render(messagesJSON: Data("[]".utf8), addGenerationPrompt: false, variablesJSON: Data(variables.utf8))
    }

    func check(_ cases: [(String, String)], file: StaticString = #filePath, line: UInt = #line) {
        for (source, expected) in cases {
            do {
                assertSameText(try render(source), expected, source, file: file, line: line)
            } catch {
                XCTFail("\(source): \(error)", file: file, line: line)
            }
        }
    }

    /// The message of the OffloadError `body` throws; fails the test when it throws none.
    func errorMessage(_ body: () throws -> Any, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            _ = try body()
            XCTFail("expected an error", file: file, line: line)
        } catch let e as OffloadError {
            return e.message
        } catch {
            XCTFail("expected an OffloadError, got \(error)", file: file, line: line)
        }
        return ""
    }

    func testWhitespaceControlAsJinja2WithTrimAndLstripBlocks() {
        check([
            ("  {% if true %}\n  x\n  {% endif %}\n  y  {{ 1 }}  \n {# c #}\nz",
             "  x\n  y  1  \nz"),
            ("a  {%- if true %}  b  {% endif -%}  c\n\n d {{- ' e ' -}} \n f",
             "a  b  c\n\n d e f"),
            ("  {%+ if true %}x{% endif %}\n{% if true +%}\ny{% endif %}",
             "  x\ny"),
            ("t {% if true %}x{% endif %}\n   {% if true %}y{% endif %}",
             "t xy"),
            ("a\n    {# note #}\nb\n  {#- note -#}  c",
             "a\nbc"),
            ("a\n\n",
             "a\n"),
            ("a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc",
             "a\nb\nc"),
        ])
    }

    func testLoopsAndLoopVariables() {
        check([
            ("{% for i in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }}{{ loop.cycle('x','y') }}|{% endfor %}",
             "1032TrueFalse3bx|2121FalseFalse3acy|3210FalseTrue3bx|"),
            ("{% for i in [1,2,3,4] if i is even %}{{ loop.index }}/{{ loop.length }}:{{ i }} {% else %}none{% endfor %}{% for i in [] %}x{% else %}empty{% endfor %}",
             "1/2:2 2/2:4 empty"),
            ("{% for i in range(10) %}{% if i is odd %}{% continue %}{% endif %}{% if i > 6 %}{% break %}{% endif %}{{ i }}{% endfor %}",
             "0246"),
            ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% set a, b = 1, 2 %}{{ a }}{{ b }}",
             "a=1;b=[2];role=user;12"),
            ("{% for message in msgs %}{% if loop.first and message['role'] != 'system' %}X{% endif %}<{{ message['role'] }}>{{ message.content }}{% if not loop.last %}\n{% endif %}{% endfor %}",
             "<system>S<user>U<assistant>A"),
        ])
    }

    /// A plain set inside a for loop is local to that iteration; a namespace is shared; `if` makes no scope.
    func testSetScopingAndNamespaces() {
        check([
            ("{% set x = 1 %}{% for i in [1,2] %}{{ x }}{% set x = x + 10 %}{{ x }},{% endfor %}{{ x }}{% if true %}{% set y = 5 %}{% endif %}{{ y }}{% for i in [1] %}{% set z = 3 %}{% endfor %}[{{ z }}]",
             "111,111,15[]"),
            ("{% set ns = namespace(n=0, last='') %}{% for m in msgs %}{% set ns.n = ns.n + 1 %}{% set ns.last = m.role %}{% endfor %}{{ ns.n }} {{ ns.last }}",
             "3 assistant"),
            ("{% macro m(a, b='d') %}[{{ a }}{{ b }}{{ g }}]{% endmacro %}{% set g = 'G' %}{{ m(1) }}{{ m(1, b=2) }}{{ m() }}{% macro rec(n) %}{% if n > 0 %}{{ n }}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(3) }}",
             "[1dG][12G][dG]321"),
            ("{% set c %}inner {{ 1 }}{% endset %}[{{ c }}]{% set u | upper %}shout{% endset %}{{ u }}{% filter upper %}abc{{ 'd' }}{% endfilter %}{% generation %}gen {{ 1 }}{% endgeneration %}{% raw %}{{ x }}{% endraw %}",
             "[inner 1]SHOUTABCDgen 1{{ x }}"),
            ("{% set x = {'role': 'user', 'n': [1, 2], 'nested': {'k': none}} %}{{ x.role }} {{ x['n'][1] }} {{ x.nested.k is none }} {{ x|length }} {{ dict(a=1, b='c') }} {{ namespace(a=1).a }}",
             "user 2 True 3 {'a': 1, 'b': 'c'} 1"),
        ])
    }

    func testExpressionsPrecedenceLiteralsAndSlicing() {
        check([
            ("{{ 1 + 2 * 3 }} {{ - 2 ** 2 }} {{ 2 ** 3 ** 2 }} {{ 'a' + 'b' | upper }} {{ not 1 == 2 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 1 / 2 }} {{ 'x' ~ 1 ~ none }} {{ 1 if 0 else 2 if 0 else 3 }} {{ true and 'yes' or 'no' }} {{ 0 or '' or 'last' }} {{ 1 ~ 2 * 3 }} {{ 'ab' * 2 }} {{ [1] + [2] }} {{ 2.5 * 2 }} {{ 10 / 4 }} {{ true + 1 }}",
             "7 4 64 aB True True False 3 -4 2 0.5 x1None 3 yes last 16 abab [1, 2] 5.0 2.5 2"),
            ("{{ 'a\\'b\\n\\t\\x41\\u00e9\\101\\d\\\\' }}|{{ \"q\\\"q\" }}|{{ 'it''s' }}",
             "a'b\n\tAéA\\d\\|q\"q|its"),
            ("{{ [1,'a',none,true,1.0,-0.5] }} {{ {'a': \"it's\", 'b': 'x\"y', 'c': 'nl\\n'} }} {{ (1,) }} {{ (1, 'b') }} {{ d }} {{ 1e-5 }} {{ 1e16 }} {{ 0.1 + 0.2 }} {{ none }} {{ True }}",
             "[1, 'a', None, True, 1.0, -0.5] {'a': \"it's\", 'b': 'x\"y', 'c': 'nl\\n'} (1,) (1, 'b') {'a': 1, 'b': [2], 'role': 'user'} 1e-05 1e+16 0.30000000000000004 None True"),
            ("{{ [1,2,3,4,5][::2] }}{{ [1,2,3][::-1] }}{{ 'hello'[1:-1] }}{{ [1,2,3][5:] }}{{ 'héllo'[1] }}{{ 'abc'[-1] }}{{ msgs[1:]|length }}{{ msgs[-1].content }}{{ 'abcdef'[4:1:-1] }}",
             "[1, 3, 5][3, 2, 1]ell[]éc2Aedc"),
            ("{{ '12'|int + 1 }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ 3.7|int }} {{ '3.5'|int }} {{ '3.5'|float }} {{ 2.5|round }} {{ 3.14159|round(2) }} {{ 3|round }} {{ -3|abs }} {{ 0x1F }} {{ 1_000 }} {{ 2.5e3 }}",
             "13 0 7 3 3 3.5 2.0 3.14 3 3 31 1000 2500.0"),
        ])
    }

    func testUndefinedBehavesAsJinja2DefaultUndefined() {
        check([
            ("[{{ x }}|{{ x is defined }}|{{ x is undefined }}|{{ x|default('d') }}|{% if x %}t{% else %}f{% endif %}|{{ x|length }}|{% for a in x %}a{% else %}empty{% endfor %}|{{ 'a' in x }}|{{ x == y }}|{{ x is none }}|{{ x|trim }}|{{ x ~ 'c' }}|{{ d.missing is defined }}|{{ d['missing'] }}|{{ msgs[9] is defined }}|{{ x|list }}]",
             "[|False|True|d|f|0|empty|False|True|False||c|False||False|[]]"),
        ])
        XCTAssertTrue(errorMessage { try self.render("line1\n{{ x.y }}") }.contains("line 2: 'x' is undefined"))
        XCTAssertTrue(errorMessage { try self.render("{{ x + 1 }}") }.contains("'x' is undefined"))
        XCTAssertTrue(errorMessage { try self.render("{{ foo() }}") }.contains("'foo' is undefined"))
        XCTAssertTrue(errorMessage { try self.render("{{ x|tojson }}") }.contains("not JSON serializable"))
    }

    func testFiltersTestsAndMethods() {
        check([
            ("{{ '  Hi  '|trim }}|{{ 'xxhixx'|trim('x') }}|{{ 'hello wORLD-foo(bar'|title }}|{{ 'hELLO wORLD'|capitalize }}|{{ 'Straße'|upper }}|{{ 'ÉCOLE'|lower }}|{{ 'aaa'|replace('a', 'b', 2) }}|{{ 'abc'|length }}|{{ 'héllo'|count }}|{{ 'ab'|list }}|{{ 'abc'|reverse }}|{{ 42|string ~ '!' }}|{{ 'a\nb\n\nc'|indent(2) }}|{{ 'a\nb'|indent(2, true) }}|{{ 'a\n\nb'|indent(2, blank=true) }}|{{ '<a&b>'|e }}",
             "Hi|hi|Hello World-Foo(Bar|Hello world|STRASSE|école|bba|3|5|['a', 'b']|cba|42!|a\n  b\n\n  c|  a\n  b|a\n  \n  b|&lt;a&amp;b&gt;"),
            ("{{ [3,1,2]|sort }} {{ ['b','A','a']|sort }} {{ [3,1,2]|sort(reverse=true) }} {{ [1,2,2,1]|unique|list }} {{ [1,2,3]|sum }} {{ [1,5,2]|max }} {{ [4,2,8]|min }} {{ [1,2,3]|first }} {{ [1,2,3]|last }} {{ []|first is defined }} {{ [1,2,3]|join('-') }} {{ ['a','b']|map('upper')|list }} {{ [1,2,3]|select('odd')|list }} {{ [1,2,3]|reject('odd')|list }} {{ [1,2]|count }}",
             "[1, 2, 3] ['A', 'a', 'b'] [3, 2, 1] [1, 2] 6 5 2 1 3 False 1-2-3 ['A', 'B'] [1, 3] [2] 2"),
            ("{{ msgs|selectattr('role', 'equalto', 'user')|list|length }} {{ msgs|rejectattr('role', 'equalto', 'user')|map(attribute='content')|join(',') }} {{ msgs|map(attribute='role')|join('/') }} {{ msgs|map(attribute='missing', default='?')|join }} {{ msgs|selectattr('content')|list|length }} {{ d|dictsort }} {{ d|items|list }} {{ msgs|map(attribute='role')|unique|list }}",
             "1 S,A system/user/assistant ??? 3 [('a', 1), ('b', [2]), ('role', 'user')] [('a', 1), ('b', [2]), ('role', 'user')] ['system', 'user', 'assistant']"),
            ("{{ 'x' is string }} {{ 1 is integer }} {{ true is integer }} {{ 1.0 is float }} {{ true is boolean }} {{ none is none }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 'a' is in 'abc' }} {{ 1 is true }} {{ true is true }} {{ d is mapping }} {{ msgs is sequence }} {{ 'x' is iterable }} {{ 1 is number }} {{ true is number }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ 2 is equalto 2 }} {{ 3 is gt 2 }} {{ 'x' is not string }} {{ d is not mapping }} {{ range is callable }}",
             "True True False True True True True True True True False True True True True True True True True True True False False True"),
            ("{{ d|tojson }} {{ 'é\"\\n\\u0001<>&'|tojson }} {{ 1.0|tojson }} {{ [1,[2,{}],[]]|tojson(indent=2) }} {{ {'b':1,'a':none}|tojson(sort_keys=true) }} {{ {'a':1,'b':[true,false]}|tojson(separators=(',', ':')) }} {{ {1: 2}|tojson }} {{ 'x'|tojson(indent=4) }} {{ [1,[2]]|tojson(indent='\t') }} {{ '😀'|tojson(ensure_ascii=true) }}",
             "{\"a\": 1, \"b\": [2], \"role\": \"user\"} \"é\\\"\\n\\u0001<>&\" 1.0 [\n  1,\n  [\n    2,\n    {}\n  ],\n  []\n] {\"a\": null, \"b\": 1} {\"a\":1,\"b\":[true,false]} {\"1\": 2} \"x\" [\n\t1,\n\t[\n\t\t2\n\t]\n] \"\\ud83d\\ude00\""),
            ("{{ '  x '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '\\n\\nab'.lstrip('\\n') }}|{{ 'ab  '.rstrip() }}|{{ 'a b  c'.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a,b,c'.split(',', 1) }}|{{ 'a,b,c'.rsplit(',', 1) }}|{{ 'Hello'.startswith(('He','x')) }}|{{ 'abc'.endswith('bc') }}|{{ 'hello world'.title() }}|{{ \"they're\".title() }}|{{ 'aXb'.upper() }}{{ 'AxB'.lower() }}|{{ 'aaa'.replace('a','b') }}|{{ 'abcabc'.find('c') }}{{ 'abcabc'.rfind('c') }}{{ 'abc'.find('z') }}|{{ 'abcabc'.count('bc') }}|{{ '-'.join(['a','b']) }}|{{ 'x</think>y'.split('</think>')[-1] }}|{{ '{} is {}'.format('a', 1) }}|{{ '{0}{name}'.format(1, name='n') }}|{{ '%s-%d' % ('a', 3) }}|{{ 'a\\nb'.splitlines() }}|{{ '12'.isdigit() }}|{{ 'prefix_x'.removeprefix('prefix_') }}",
             "x|a|ab|ab|['a', 'b', 'c']|['a', 'b', '', 'c']|['a', 'b,c']|['a,b', 'c']|True|True|Hello World|They'Re|AXBaxb|bbb|25-1|2|a-b|y|a is 1|1n|a-3|['a', 'b']|True|x"),
            ("{{ d.get('a') }} {{ d.get('z', 'def') }} {{ d.get('z') }} {{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }} {{ d.role }} {{ d['role'] }} {{ 'a' in d }} {{ 'z' not in d }} {{ d|length }} {% for k in d %}{{ k }}{% endfor %} {{ {'x': 1} == {'x': 1} }}",
             "1 def None ['a', 'b', 'role'] [1, [2], 'user'] [('a', 1), ('b', [2]), ('role', 'user')] user user True True 3 abrole True"),
        ])
    }

    /// map, select and reject give generators (always true, no len, used up by one pass); dict
    /// methods give views; range a range; `safe` and `escape` give Markup, which escapes what `+` joins to it.
    func testGeneratorsViewsAndMarkupAsPythonHasThem() {
        check([
            ("{% set g = msgs|selectattr('role', 'equalto', 'tool') %}{{ 'yes' if g else 'no' }} {{ msgs|selectattr('role', 'equalto', 'tool')|list|length }} {% set s = msgs|map(attribute='role') %}{{ s|join(',') }}|{{ s|join(',') }}| {{ 'user' in msgs|map(attribute='role') }} {{ d.items()|length }} {{ d.keys() }} {{ range(3) }} {{ range(1, 7, 2)|list }} {{ range(5)[-1] }} {{ [1, 2]|reverse|list }} {{ msgs|map(attribute='role')|first }}",
             "yes 0 system,user,assistant|| True 3 dict_keys(['a', 'b', 'role']) range(0, 3) [1, 3, 5] 4 [2, 1] system"),
            ("{{ '<b>'|safe + '<i>' }} {{ '<i>' + '&'|safe }} {{ ('a'|safe ~ '<') }} {{ '<x>'|e + '<y>' }} {{ '<'|safe is escaped }} {{ '<' is escaped }} {{ ' <p> '|safe|trim + '<' }} {{ '<'|safe == '<' }} {{ '<'|safe|length }}",
             "<b>&lt;i&gt; &lt;i&gt;& a< &lt;x&gt;&lt;y&gt; True False <p>&lt; True 1"),
        ])
        XCTAssertTrue(errorMessage { try self.render("{{ msgs|selectattr('role')|length }}") }.contains("object of type 'generator' has no len()"))
        XCTAssertTrue(errorMessage { try self.render("{{ msgs|map(attribute='role')|tojson }}") }.contains("Object of type generator is not JSON serializable"))
        XCTAssertTrue(errorMessage { try self.render("{{ msgs|map(attribute='role')|last }}") }.contains("'generator' object is not reversible"))
    }

    func testParseErrorsNameTheLineAndConstruct() {
        func parseError(_ source: String) -> String {
            errorMessage { try ChatTemplate(source: source, bosToken: nil, eosToken: nil, origin: "t.jinja") }
        }
        let unknownFilter = parseError("a\n{{ 'x'|frobnicate }}")
        XCTAssertTrue(unknownFilter.contains("t.jinja line 2") && unknownFilter.contains("'frobnicate'"), unknownFilter)
        XCTAssertTrue(parseError("{{ 'x' is frobbed }}").contains("'frobbed'"))
        let unterminated = parseError("{% for m in msgs %}\n{{ m }}\n")
        XCTAssertTrue(unterminated.contains("'for' block opened at line 1") && unterminated.contains("'endfor'"), unterminated)
        let unterminatedIf = parseError("a\n{% if true %}x")
        XCTAssertTrue(unterminatedIf.contains("'if' block opened at line 2") && unterminatedIf.contains("'endif'"), unterminatedIf)
        XCTAssertTrue(parseError("{% frob %}").contains("unknown tag 'frob'"))
        XCTAssertTrue(parseError("{% endfor %}").contains("unknown tag 'endfor'"))
        XCTAssertTrue(parseError("{% break %}").contains("'break' outside of a loop"))
        XCTAssertTrue(parseError("x\n\n{{ 1 + }}").contains("line 3"))
        XCTAssertTrue(parseError("{{ 'abc }}").contains("unterminated string"))
        XCTAssertTrue(parseError("a\n{# b").contains("line 2: missing end of comment tag"))
        XCTAssertTrue(parseError("{% include 'x' %}").contains("'include' tag is not supported"))
        // As jinja2 does, a name inside an if (or an inline if) is looked up only when a render reaches it.
        XCTAssertEqual(try render("{% if false %}{{ x|frobnicate }}{% endif %}{{ 'a' if true else x|frobnicate }}ok"), "aok")
        let reached = errorMessage { try self.render("{% if true %}\n{{ 'x'|frobnicate }}{% endif %}") }
        XCTAssertTrue(reached.contains("line 2: no filter named 'frobnicate'"), reached)
        XCTAssertTrue(parseError("{% for m in msgs %}{% if m %}{% for x in m %}{{ x|frobnicate }}{% endfor %}{% endif %}{% endfor %}")
            .contains("no filter named 'frobnicate'"))
        for message in [unknownFilter, unterminated, unterminatedIf] {
            XCTAssertTrue(message.hasPrefix("[chat template] t.jinja line "), message)
            XCTAssertFalse(message.contains("\n"), message)
        }
    }

    func testRenderErrors() {
        let raised = errorMessage { try self.render("{% if true %}\n{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}") }
        XCTAssertTrue(raised.contains("line 2") && raised.hasSuffix("Only user and assistant roles are supported!"), raised)
        XCTAssertTrue(errorMessage { try self.render("{{ none|length }}") }.contains("has no len()"))
        XCTAssertTrue(errorMessage { try self.render("{{ 'x' + 1 }}") }.contains("can only concatenate str"))
        XCTAssertTrue(errorMessage { try self.render("{{ 1 // 0 }}") }.contains("by zero"))
        XCTAssertTrue(errorMessage { try self.render("{% set a, b = [1, 2, 3] %}") }.contains("too many values to unpack"))
        XCTAssertTrue(errorMessage { try self.render("{% set ns = namespace() %}{% set ns._x = 1 %}") }.contains("underscore"))
        let sandbox = errorMessage { try self.render("{% set l = [] %}{{ l.append(1) }}") }
        XCTAssertTrue(sandbox.contains("list.append") && sandbox.contains("sandbox"), sandbox)
        // A filter jinja2 has but Offload does not: refused by name, only when a render reaches it.
        XCTAssertEqual(try render("{% if false %}{{ 'a'|wordwrap }}{% endif %}ok"), "ok")
        let unsupported = errorMessage { try self.render("\n{{ 'a'|wordwrap }}") }
        XCTAssertTrue(unsupported.contains("line 2") && unsupported.contains("'wordwrap'"), unsupported)
    }

    func testMessagesAsJSONWithToolsAndReasoning() throws {
        let template = try ChatTemplate(source: """
            {%- for m in messages %}{{ m.role }}:{{ m.content if m.content is string else m.content[0].text }}\
            {% if m.tool_calls is defined %}[{{ m.tool_calls[0].function.name }}({{ m.tool_calls[0].function.arguments|tojson }})]{% endif %}\
            {% if m.thinking is defined %}<{{ m.thinking }}|{{ m.reasoning_content }}>{% endif %}\
            {% if m.name is defined %}!{% endif %};{% endfor %}{{ tools|length }} {{ enable_thinking }}
            """, bosToken: nil, eosToken: nil)
        let messages = #"""
            [{"role": "user", "content": [{"type": "text", "text": "hi"}], "name": null},
             {"role": "assistant", "content": "", "reasoning": "hmm", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1, "y": "é"}}}]}]
            """#
        let got = try template.render(messagesJSON: Data(messages.utf8), addGenerationPrompt: true,
                                      variablesJSON: Data(#"{"tools": [{"name": "f"}], "enable_thinking": false}"#.utf8))
        XCTAssertEqual(got, #"user:hi;assistant:[f({"x": 1, "y": "é"})]<hmm|hmm>;1 False"#)
    }

    // MARK: loading

    func testFromGGUFGivesSmolLM2sChatML() throws {
        let template = try ChatTemplate.fromGGUF(GGUFFile(path: try asset("models/SmolLM2-135M-Instruct.Q4_1.gguf")))
        XCTAssertEqual(template.bosToken, "<|im_start|>")
        XCTAssertEqual(template.eosToken, "<|im_end|>")
        let text = try template.render([ChatMessage(role: "user", content: "Hi")], addGenerationPrompt: true)
        XCTAssertEqual(text, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                       + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        XCTAssertEqual(try ChatTemplate.load(model: try asset("models/SmolLM2-135M-Instruct.Q4_1.gguf")).source, template.source)
    }

    func testModelWithoutTemplateIsAClearError() throws {
        // Gemma 3 270M's GGUF carries no tokenizer.chat_template.
        let gemma = try GGUFFile(path: try asset("models/gemma-3-270m-q4_k_m.gguf"))
        let message = errorMessage { try ChatTemplate.fromGGUF(gemma) }
        XCTAssertTrue(message.contains("gemma-3-270m-q4_k_m.gguf") && message.contains("has no chat template"), message)

        let folder = try scratchFolder()
        try #"{"bos_token": "<s>"}"#.write(toFile: folder + "/tokenizer_config.json", atomically: true, encoding: .utf8)
        let hf = errorMessage { try ChatTemplate.fromHuggingFaceFolder(folder) }
        XCTAssertTrue(hf.contains("has no chat template"), hf)
        try FileManager.default.removeItem(atPath: folder + "/tokenizer_config.json")
        XCTAssertTrue(errorMessage { try ChatTemplate.fromHuggingFaceFolder(folder) }.contains("has no chat template"))
    }

    func scratchFolder() throws -> String {
        let dir = NSTemporaryDirectory() + "offload-chat-template-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    static let chatML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"

    func testHuggingFaceFolderWithAStringTemplate() throws {
        let folder = try scratchFolder()
        let config = #"{"bos_token": {"content": "<|begin|>", "lstrip": false}, "eos_token": "<|end|>", "chat_template": "{{ bos_token }}"# +
            #"{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}"}"#
        try config.write(toFile: folder + "/tokenizer_config.json", atomically: true, encoding: .utf8)
        let template = try ChatTemplate.load(model: folder)
        XCTAssertEqual(template.bosToken, "<|begin|>")
        XCTAssertEqual(template.eosToken, "<|end|>")
        XCTAssertEqual(try template.render([ChatMessage(role: "user", content: "é")], addGenerationPrompt: false),
                       "<|begin|>[user]é<|end|>")
    }

    func testHuggingFaceFolderWithNamedTemplatesUsesDefault() throws {
        let folder = try scratchFolder()
        let config = #"{"eos_token": "</s>", "chat_template": [{"name": "tool_use", "template": "TOOLS"}, "# +
            #"{"name": "default", "template": "DEFAULT {{ messages|length }}{{ eos_token }}"}]}"#
        try config.write(toFile: folder + "/tokenizer_config.json", atomically: true, encoding: .utf8)
        let template = try ChatTemplate.fromHuggingFaceFolder(folder)
        XCTAssertNil(template.bosToken)
        XCTAssertEqual(try template.render([ChatMessage(role: "user", content: "x")], addGenerationPrompt: true), "DEFAULT 1</s>")

        let noDefault = #"{"chat_template": [{"name": "tool_use", "template": "TOOLS"}, {"name": "rag", "template": "RAG"}]}"#
        try noDefault.write(toFile: folder + "/tokenizer_config.json", atomically: true, encoding: .utf8)
        let message = errorMessage { try ChatTemplate.fromHuggingFaceFolder(folder) }
        XCTAssertTrue(message.contains("no template named 'default'") && message.contains("'tool_use', 'rag'"), message)
    }

    func testHuggingFaceFolderPrefersChatTemplateJinja() throws {
        let folder = try scratchFolder()
        try #"{"bos_token": "<s>", "eos_token": "</s>", "chat_template": "FROM CONFIG"}"#
            .write(toFile: folder + "/tokenizer_config.json", atomically: true, encoding: .utf8)
        try Self.chatML.write(toFile: folder + "/chat_template.jinja", atomically: true, encoding: .utf8)
        let template = try ChatTemplate.fromHuggingFaceFolder(folder)
        XCTAssertEqual(template.eosToken, "</s>")
        XCTAssertEqual(try template.render([ChatMessage(role: "user", content: "Hi")], addGenerationPrompt: true),
                       "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    }

    // MARK: speed

    func testRenderingAConversationIsFast() throws {
        let path = try asset("llama.cpp/models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja")
        let template = try ChatTemplate(source: try String(contentsOfFile: path, encoding: .utf8),
                                        bosToken: "<|begin_of_text|>", eosToken: "<|eot_id|>")
        // 64 messages of 2,000 characters (130 kB of prompt): linear work is well under a millisecond
        // in release; copying the output per append, or the messages per loop iteration, is not.
        let messages = (0..<64).map { ChatMessage(role: $0 == 0 ? "system" : ($0 % 2 == 1 ? "user" : "assistant"),
                                                  content: " " + String(repeating: "A few words, é 中文 😀. ", count: 100) + "\n") }
        let start = Date()
        let n = 20
        var length = 0
        for _ in 0..<n { length = try template.render(messages, addGenerationPrompt: true).utf8.count }
        let perRender = Date().timeIntervalSince(start) / Double(n)
        print("chat template: a 64-message Llama 3.1 conversation (\(length) bytes) renders in \(String(format: "%.0f", perRender * 1e6)) µs")
        XCTAssertGreaterThan(length, 64 * 2000)
        XCTAssertLessThan(perRender, 0.05, "rendering a 64-message conversation should take well under 50 ms")
    }
}
