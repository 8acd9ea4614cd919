"""Chat-template reference data from transformers, for test/tokenizer-chat.test.ts.

A Nemotron-style template (<extra_id_0>System / <extra_id_1>User / <extra_id_1>Assistant turns, the layout of NVIDIA's
instruct checkpoints), plus a named tool-use template, rendered by transformers' apply_chat_template(tokenize=False)
for several conversations, with and without the generation prompt; and the error a bad role raises.

    .venv-ref/bin/python scripts/reference/chat_template_fixtures.py
"""
import json
import os

from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "chat-template")

DEFAULT = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}{%- set rest = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- set rest = messages -%}{%- endif -%}\n"
    "<extra_id_0>System\n"
    "{{ system | trim }}\n"
    "{% for message in rest %}\n"
    "{%- if message['role'] == 'user' -%}\n"
    "<extra_id_1>User\n"
    "{{ message['content'] | trim }}\n"
    "{% elif message['role'] == 'assistant' -%}\n"
    "<extra_id_1>Assistant\n"
    "{{ message['content'] | trim }}{% if not loop.last %}\n{% endif %}\n"
    "{% else -%}\n"
    "{{ raise_exception('Conversation roles must be system, user or assistant, got ' + message['role']) }}\n"
    "{%- endif %}\n"
    "{% endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "<extra_id_1>Assistant\n"
    "{% endif -%}"
)
TOOL_USE = (
    "{{ bos_token }}<extra_id_0>System\n"
    "{% if tools %}<tool>{{ tools | tojson }}</tool>\n{% endif %}"
    "{% for message in messages %}<extra_id_1>{{ message['role'] | capitalize }}\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<extra_id_1>Assistant\n{% endif %}"
)

CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "system-user": [{"role": "system", "content": "  You are a helpful assistant.  "}, {"role": "user", "content": "Hi!"}],
    "multi-turn": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?\n"},
    ],
    "ends-with-assistant": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}],
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]

words = ["<unk>", "<s>", "</s>", "<pad>"]
tokenizer = PreTrainedTokenizerFast(
    tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")),
    bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
)
tokenizer.chat_template = {"default": DEFAULT, "tool_use": TOOL_USE}

cases = []
for name, conversation in CONVERSATIONS.items():
    for generation_prompt in (False, True):
        cases.append({"name": name, "messages": conversation, "add_generation_prompt": generation_prompt,
                      "rendered": tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt)})
cases.append({"name": "tool-use", "template": "tool_use", "messages": CONVERSATIONS["user"], "tools": TOOLS, "add_generation_prompt": True,
              "rendered": tokenizer.apply_chat_template(CONVERSATIONS["user"], tools=TOOLS, chat_template="tool_use", tokenize=False,
                                                        add_generation_prompt=True)})
try:
    tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
    raise SystemExit("expected an error for a bad role")
except Exception as e:  # jinja2's TemplateError
    bad_role = str(e)

os.makedirs(OUT, exist_ok=True)
config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
          "chat_template": [{"name": "default", "template": DEFAULT}, {"name": "tool_use", "template": TOOL_USE}]}
json.dump(config, open(os.path.join(OUT, "tokenizer_config.json"), "w"), indent=1)
json.dump({"cases": cases, "bad_role_error": bad_role}, open(os.path.join(OUT, "expected.json"), "w"), indent=1)
for c in cases:
    print(c["name"], c.get("add_generation_prompt"), repr(c["rendered"]))
print("error:", bad_role)
