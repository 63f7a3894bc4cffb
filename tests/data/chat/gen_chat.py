#!/usr/bin/env python3
"""Render the chat templates in templates/ with jinja2 the way Hugging Face's
apply_chat_template does (sandboxed, trim_blocks, lstrip_blocks, raise_exception), for a few
conversations, and write expected.json for tests/unit/test_chat.c.

The templates are copies of the ones published in each model's tokenizer_config.json
(smollm2.jinja is read from the SmolLM2-135M-Instruct GGUF). Re-run after changing a template
or a conversation:  python3 tests/data/chat/gen_chat.py
Optional: --gguf PATH re-extracts smollm2.jinja from the GGUF first (needs the gguf package).
"""
import json
import os
import sys

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (file, family tokd should detect, bos_token, eos_token, default system or None)
TEMPLATES = {
    "smollm2": ("smollm2.jinja", "chatml", "<|im_start|>", "<|im_end|>",
                "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    "qwen2_5": ("qwen2_5.jinja", "chatml", "", "<|im_end|>",
                "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    "llama3": ("llama3.jinja", "llama3", "<|begin_of_text|>", "<|eot_id|>", None),
    "llama2": ("llama2.jinja", "llama2", "<s>", "</s>", None),
    "mistral": ("mistral.jinja", "mistral", "<s>", "</s>", None),
    "gemma": ("gemma.jinja", "gemma", "<bos>", "<eos>", None),
    "zephyr": ("zephyr.jinja", "zephyr", "<s>", "</s>", None),
}

S = lambda c: {"role": "system", "content": c}
U = lambda c: {"role": "user", "content": c}
A = lambda c: {"role": "assistant", "content": c}

# (name, messages, add_generation_prompt)
CONVERSATIONS = [
    ("system_user", [S("You are terse."), U("What is 2+2?")], True),
    ("user_only", [U("Hello!")], True),
    ("user_only_no_prompt", [U("Hello!")], False),
    ("multi_turn", [S("Be kind.\nAlways."), U("Hi"), A("Hello! How can I help?"),
                    U("Tell me a joke.")], True),
    ("multi_turn_no_system", [U("Hi"), A("Hello."), U("Bye")], False),
    ("ends_with_assistant", [U("Q?"), A("A.")], False),
    ("whitespace_and_utf8", [S("  sys with spaces \n"), U("\n  H\u00e9llo w\u00f6rld \u2713\t "),
                             A(" ok\u00a0"), U("\u3000wide space\u3000")], True),
    ("empty_content", [U("")], True),
    ("non_alternating", [U("one"), U("two")], True),
    ("system_later", [U("a"), A("b"), S("late system"), U("c")], True),
]


def raise_exception(msg):
    raise TemplateError(msg)


def render(env, source, bos, eos, messages, add_gen):
    tmpl = env.from_string(source)
    return tmpl.render(messages=messages, add_generation_prompt=add_gen, bos_token=bos,
                       eos_token=eos, tools=None)


def read_template(fname):
    with open(os.path.join(HERE, "templates", fname), encoding="utf-8") as f:
        src = f.read()
    # heredoc-written copies end in a newline the published strings do not have
    return src[:-1] if src.endswith("\n") else src


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--gguf":
        from gguf import GGUFReader
        src = GGUFReader(sys.argv[2]).fields["tokenizer.chat_template"].contents()
        with open(os.path.join(HERE, "templates", "smollm2.jinja"), "w", encoding="utf-8") as f:
            f.write(src)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    out = {"templates": [], "cases": []}
    for name, (fname, family, bos, eos, default_system) in TEMPLATES.items():
        src = read_template(fname)
        out["templates"].append({"name": name, "family": family, "bos": bos, "source": src,
                                 "default_system": default_system})
        for conv, msgs, add_gen in CONVERSATIONS:
            case = {"template": name, "conversation": conv, "messages": msgs,
                    "add_generation_prompt": add_gen}
            try:
                case["expected"] = render(env, src, bos, eos, msgs, add_gen)
            except TemplateError as e:
                case["expected"] = None
                case["error"] = str(e)
            out["cases"].append(case)
    with open(os.path.join(HERE, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote %d cases" % len(out["cases"]))


if __name__ == "__main__":
    main()
