"""Chat response parsing reference data from transformers 5, for test/chat-parsing.test.ts.

transformers 5 parses what a chat model writes (reasoning, tool calls, content) with a declarative `response_template`
(tokenizer_config.json's key; `tokenizer.parse_response`, `ResponseParser`, and `transformers serve` use it). This
records, for the templates transformers ships as fallbacks (qwen2, qwen3_5, gemma4) and for templates written here
(a Nemotron-style <TOOLCALL> one, python-call-list, kv-lines, typed fields, join, tools' argument casting):
- the parsed message of each (prefix, text), or the error it raises;
- the streamed events, the text fed one character at a time and in chunks of five;
- the errors of malformed templates.

    .venv-ref/bin/python scripts/reference/response_parsing_fixtures.py
"""
import json
import os

from transformers.cli.serving.utils import _RESPONSE_TEMPLATE_FALLBACKS
from transformers.utils.chat_parsing import ResponseParser, parse_response

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "response-parsing", "expected.json")

fallback = {types[0]: spec for types, spec in _RESPONSE_TEMPLATE_FALLBACKS.items()}

NEMOTRON = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<extra_id_1>Assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close": "</think>"},
        "tool_calls": {
            "open": "<TOOLCALL>",
            "close": "</TOOLCALL>",
            "content": "json",
            "transform_each": True,
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{arguments}"}},
        },
        "content": {"close": ["<extra_id_1>", "</s>"]},
    },
}
PYTHONIC = {
    "start_anchor_pattern": r"<\|start_header_id\|>assistant<\|end_header_id\|>\n\n",
    "fields": {
        "tool_calls": {
            "open": "<|python_start|>",
            "close": "<|python_end|>",
            "content": "python-call-list",
            "transform_each": True,
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{arguments}"}},
        },
        "content": {"close_pattern": r"<\|eot_id\|>|<\|eom_id\|>", "content": "text", "content_args": {"strip": False}},
    },
}
TYPED = {
    "defaults": {"role": "assistant", "notes": None},
    "start_anchor": ["### Answer\n", "### Retry\n"],
    "fields": {
        "score": {"open": "<score>", "close": "</score>", "content": "int"},
        "ratio": {"open": "<ratio>", "close": "</ratio>", "content": "float"},
        "ok": {"open": "<ok>", "close": "</ok>", "content": "bool"},
        "meta": {"open": "<meta>", "close": "</meta>", "content": "kv-lines", "content_args": {"value_parser": {"name": "int"}}},
        "notes": {"open_pattern": r"<note(?: id=\d+)?>", "close": "</note>", "repeats": True, "join": "\n"},
        "tags": {"open": "<tag>", "close": "</tag>", "repeats": True},
        "answer": {"open_pattern": r"(?:Answer|ANSWER):\s*", "close_pattern": r"\n\n|$", "optional": False},
        "content": {},
    },
}
XML_DUP = {
    "start_anchor": "<start>",
    "fields": {
        "call": {
            "open_pattern": r"<call name=\"(?P<name>[\w.-]+)\">",
            "close": "</call>",
            "repeats": True,
            "content": "xml-inline",
            "content_args": {
                "tag_pattern": r"<(?P<key>\w+)>(?P<value>.*?)</(?P=key)>",
                "merge_duplicates": True,
                "value_parser": {"name": "json", "args": {"allow_non_json": True}},
            },
            "transform": {"name": "{name}", "args": "{content}"},
        },
        "content": {"close": "<end>"},
    },
}

WEATHER_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
        "threshold": {"type": "number"}, "when": {"type": ["string", "null"]}, "extra": {"type": "object"},
        "codes": {"anyOf": [{"type": "array"}, {"type": "integer"}]}}}}},
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}},
]

CASES = {
    "qwen2": [
        ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "Hello there!<|im_end|>", None),
        ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<think>\nThe user greets.\n</think>\n\nHello!<|im_end|>", None),
        ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n", "short thought</think>\n\nAnswer.<|im_end|>\n<|endoftext|>", None),
        ("<|im_start|>user\nweather?<|im_end|>\n<|im_start|>assistant\n",
         "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>\n"
         "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"rain\"}}\n</tool_call><|im_end|>", None),
        ("", "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool_call>", WEATHER_TOOLS),
        ("no anchor here", "plain text with < and <tool and <think", None),
        ("<|im_start|>assistant\n", "<tool_call>{not json}</tool_call>", None),
    ],
    "qwen3_5": [
        ("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
         "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n5\n</parameter>\n"
         "<parameter=metric>\ntrue\n</parameter>\n<parameter=threshold>\n2.5\n</parameter>\n<parameter=when>\nnull\n</parameter>\n"
         "<parameter=extra>\n{\"a\": [1, 2]}\n</parameter>\n<parameter=codes>\n[1, 2]\n</parameter>\n</function>\n</tool_call><|im_end|>",
         WEATHER_TOOLS),
        ("<|im_start|>assistant\n<think>\n", "I think.\n</think>\n\nDone.<|im_end|>\n<|endoftext|>", None),
        ("<|im_start|>assistant\n", "<tool_call><function=search><parameter=query>cats</parameter></function></tool_call>", None),
    ],
    "gemma4": [
        ("<|turn>user\nhi<turn|>\n<|turn>model\n", "<|channel>thought\nThinking...<channel|>Hi!<turn|>", None),
        ("<|turn>model\n",
         "<|tool_call>call:get_weather{city:<|\"|>Paris, France<|\"|>,days:3,nested:{a:<|\"|>x:y<|\"|>}}<tool_call|><|tool_response>", WEATHER_TOOLS),
        ("<|turn>model\n<|tool_call>call:f{}<tool_call|><tool_response|>", "The answer is 4.<turn|>", None),
    ],
    "nemotron": [
        ("<extra_id_0>System\n\n<extra_id_1>User\nhi\n<extra_id_1>Assistant\n", "Hello! How can I help?\n<extra_id_1>", None),
        ("<extra_id_1>Assistant\n",
         "<think>Need weather.</think><TOOLCALL>[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\", \"days\": \"2\"}}, "
         "{\"name\": \"search\", \"arguments\": {\"query\": \"umbrella\"}}]</TOOLCALL></s>", WEATHER_TOOLS),
        ("<extra_id_1>Assistant\n<think>", "reasoning continues</think>final</s>", None),
        ("<extra_id_1>Assistant\n", "unfinished <TOOLCA", None),
        ("<extra_id_1>Assistant\n", "<TOOLCALL>[{\"name\": \"search\"}]</TOOLCALL>", None),
    ],
    "pythonic": [
        ("<|start_header_id|>assistant<|end_header_id|>\n\n",
         "<|python_start|>[get_weather(city='Nice', days=2, metric=True, codes=[1, -2.5e3, None]), search(query=\"a\\\"b\\u00e9\")]<|python_end|><|eom_id|>", WEATHER_TOOLS),
        ("<|start_header_id|>assistant<|end_header_id|>\n\n", "  Just text, kept as is.  <|eot_id|>", None),
        ("", "<|python_start|>[f(1)]<|python_end|>", None),
        ("", "<|python_start|>[f(x={'k': [True, False, null]}, y=-0.5)]<|python_end|>", None),
    ],
    "typed": [
        ("### Answer\n", "<score> 7 </score><ratio>0.25</ratio><ok>True</ok><meta>a: 1\nb : 2\nbad line\n</meta>"
         "<note id=3>first</note> mid <note>second</note><tag>x</tag><tag>y</tag>Answer: forty two\n\ntrailing", None),
        ("### Retry\n", "ANSWER:   42", None),
        ("### Retry\n", "ANSWER: 42\n", None),
        ("", "no answer here", None),
        ("### Answer\n<note>", "pre-filled note</note>ANSWER: yes", None),
    ],
    "xml_dup": [
        ("<start>", "intro <call name=\"plot\"><x>1</x><x>[2, 3]</x><label>not json</label></call><call name=\"a.b-c\"></call> outro<end>", None),
    ],
}
with open(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "response-templates", "nemotron-toolcall.json")) as f:
    EXAMPLE = json.load(f)
CASES["example_nemotron_toolcall"] = [
    ("<extra_id_0>System\n<tool>[...]</tool>\n<extra_id_1>User\nWeather in Oslo?\n<extra_id_1>Assistant\n",
     "<toolcall> {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": \"3\"}} </toolcall>\n<extra_id_1>", WEATHER_TOOLS),
    ("<extra_id_1>Assistant\n", "It is sunny in Oslo.\n<extra_id_1>", None),
    ("<extra_id_1>Assistant\n", "Checking both.<toolcall>{\"name\": \"search\", \"arguments\": {\"query\": \"Oslo\"}}</toolcall>"
     "<toolcall>{\"name\": \"get_weather\", \"arguments\": {}}</toolcall></s>", None),
]
# An implicit region closed by a zero-width pattern: the parser must not close the empty region again and again.
EOS_CLOSE = {"start_anchor": "A:", "fields": {"content": {"close_pattern": r"\n?$"}}}
CASES["eos_close"] = [("A:", "first line\nsecond\n", None), ("", "", None)]
LOOKAHEAD_CLOSE = {"start_anchor": "A:", "fields": {"content": {"close_pattern": r"(?=x)"}}}
CASES["lookahead_close"] = [("A:", "abxcd", None), ("A:", "xx", None)]
TEMPLATES = {"eos_close": EOS_CLOSE, "lookahead_close": LOOKAHEAD_CLOSE, **{k: fallback[k] for k in ("qwen2", "qwen3_5", "gemma4")}, "nemotron": NEMOTRON, "example_nemotron_toolcall": EXAMPLE, "pythonic": PYTHONIC, "typed": TYPED, "xml_dup": XML_DUP}


def stream_events(spec, prefix, text, tools, size):
    parser = ResponseParser(spec, prefix=prefix, tools=tools)
    events = list(parser.initial_events)
    for i in range(0, len(text), size):
        events.extend(parser.feed(text[i:i + size]))
    message, final = parser.finalize()
    return events + final, message


def record(spec, prefix, text, tools):
    case = {"prefix": prefix, "text": text, "tools": tools}
    try:
        case["message"] = parse_response(text, spec, prefix=prefix, tools=tools)
    except Exception as e:  # noqa: BLE001 — the error is the expected outcome
        case["error"] = f"{type(e).__name__}: {e}"
        return case
    for size in (1, 5):
        events, message = stream_events(spec, prefix, text, tools, size)
        assert message == case["message"], (message, case["message"])
        case[f"events_{size}"] = events
    return case


BAD_TEMPLATES = [
    ({"fields": {"content": {}}}, "start_anchor"),
    ({"start_anchor": "x", "fields": {}}, "fields"),
    ({"start_anchor": "x", "fields": {"a": {}, "b": {}}}, "At most one field"),
    ({"start_anchor": "x", "fields": {"a": {"open": "<a>", "bogus": 1}}}, "bogus"),
    ({"start_anchor": "x", "fields": {"a": {"open": "<a>", "content": "yaml"}}}, "yaml"),
    ({"start_anchor": "x", "fields": {"a": {"open": "<a>", "open_pattern": "<a>"}}}, "open_pattern"),
    ({"start_anchor": "x", "fields": {"a": {"open": "<a>", "transform": {"n": "name: {name}"}}}}, "mixes"),
    ({"start_anchor": "x", "fields": {"a": {"open_pattern": "<(?P<n>a)>"}}}, "transform"),
    ({"start_anchor": "x", "fields": {"a": {"open": "<a>", "join": ","}}}, "repeats"),
    ({"start_anchor": "x", "version": 2, "fields": {"a": {}}}, "version"),
    ({"start_anchor": "x", "extra": 1, "fields": {"a": {}}}, "extra"),
    ({"start_anchor": "", "fields": {"a": {}}}, "empty"),
]

# The `regex` module's partial search, which the streaming parser leans on: (pattern, text) -> where it answers.
PATTERNS = [r"\s*<tool_call>", r"<\|tool_call>call:(?P<name>\w+)", r"\n\n|$", r"(?:Answer|ANSWER):\s*", r"<note(?: id=\d+)?>",
            r"\s*(?:<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>)", r"</function>\s*</tool_call>", r"ab|a", r"a{2,3}b", r"(?=xy)x",
            r"<(?P<k>\w+)>.*?</(?P=k)>", r"\bword\b", r"[\]a]+z", r"x\Z", r"\d+\.\d*"]
TEXTS = ["", "plain", "text\n", "text\n\n", "a", "aa", "aab", "x", "xy", " \n <tool", " \n <tool_call>", "<|tool_call>call:get",
         "<|tool_call>call:get{", "Answer", "Answer: 4", "<note id=1", "<note id=12>", "<|im_", "ok<|im_end|>", "</function>\n",
         "</function>\n</tool_call>", "<b>hi</", "<b>hi</b>", "a word", "a wor", "]a]", "]a]z", "x", "3.", "3.14"]
import regex
partial_cases = []
for pattern in PATTERNS:
    compiled = regex.compile(pattern, regex.DOTALL)
    for text in TEXTS:
        m = compiled.search(text, 0, partial=True)
        full = compiled.search(text, 0)
        partial_cases.append({"pattern": pattern, "text": text,
                              "partial": None if m is None else [m.start(), m.end(), m.partial],
                              "full": None if full is None else [full.start(), full.end()]})

out = {"templates": TEMPLATES, "cases": [], "bad_templates": [], "partial_search": partial_cases}
for name, cases in CASES.items():
    for prefix, text, tools in cases:
        out["cases"].append({"template": name, **record(TEMPLATES[name], prefix, text, tools)})
for spec, needle in BAD_TEMPLATES:
    try:
        parse_response("", spec, prefix="")
        raise SystemExit(f"no error for {spec}")
    except ValueError as e:
        assert needle in str(e), (needle, str(e))
        out["bad_templates"].append({"template": spec, "needle": needle, "error": str(e)})

os.makedirs(os.path.dirname(OUT), exist_ok=True)
with open(OUT, "w") as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
print(f"{len(out['cases'])} cases ({sum('error' in c for c in out['cases'])} errors), {len(out['bad_templates'])} bad templates -> {OUT}")
