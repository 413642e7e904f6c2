"""Codex CLI itself (``codex exec``, from npm) on the Responses API: a README provider block → proxy → emulator.

``.ci/run`` installs the CLI (``npm install -g @openai/codex``); without it the module is skipped
locally and fails in CI. Each test runs one ``codex exec --json`` in a temporary ``CODEX_HOME`` and
reads the events it prints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import API_KEY
from transform.tool_prompts import format_call

MODEL = "qwen3.7-plus-thinking"
COMPLETIONS = "/api/v2/chat/completions"


@pytest.fixture(scope="module")
def codex() -> str:
    found = os.environ.get("CODEX_BIN") or shutil.which("codex")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("Codex CLI is not installed; .ci/run must install it (npm install -g @openai/codex)")
        pytest.skip("Codex CLI is not installed (npm install -g @openai/codex); CI runs these tests")
    return found


def run_codex(codex: str, proxy, tmp_path: Path, prompt: str) -> tuple[int, list[dict]]:
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(f"""
model = "{MODEL}"
model_provider = "qwen2openai"
model_reasoning_effort = "medium"
web_search = "disabled"

[model_providers.qwen2openai]
name = "qwen2openai"
base_url = "{proxy.url}/v1"
env_key = "QWEN2OPENAI_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
""")
    env = {**os.environ, "CODEX_HOME": str(home), "QWEN2OPENAI_KEY": API_KEY}
    done = subprocess.run([codex, "exec", "--json", "--skip-git-repo-check", "-s", "workspace-write", prompt],
                          cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, events


def items(events: list[dict], kind: str) -> list[dict]:
    return [e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == kind]


def test_codex_answers_with_thinking_and_usage(codex, proxy, fake, tmp_path):
    fake.configure(thinking=["Thinking about it."])
    fake.script("Hello from Qwen.")
    code, events = run_codex(codex, proxy, tmp_path, "Say hello.")
    assert code == 0, events
    assert [i["text"] for i in items(events, "agent_message")] == ["Hello from Qwen."]
    assert [i["text"] for i in items(events, "reasoning")] == ["Thinking about it."]
    [done] = [e for e in events if e["type"] == "turn.completed"]
    assert done["usage"]["input_tokens"] == 812 and done["usage"]["reasoning_output_tokens"] > 0
    [sent] = fake.requests_to(COMPLETIONS)
    assert sent.json["messages"][0]["chat_type"] == "t2t", "web search disabled as the README says"
    assert sent.json["messages"][0]["feature_config"]["thinking_mode"] == "Thinking"
    text = sent.json["messages"][0]["content"]
    assert text.startswith("# Tools") and "exec_command(" in text and text.endswith("<user>\nSay hello.\n</user>")


def test_codex_runs_a_command_and_the_chat_continues(codex, proxy, fake, tmp_path):
    fake.script("Running it.\n" + format_call("exec_command", {"cmd": "echo marker-123"}), "It printed marker-123.")
    code, events = run_codex(codex, proxy, tmp_path, "Echo a marker.")
    assert code == 0, events
    [command] = items(events, "command_execution")
    assert "marker-123" in command["aggregated_output"] and command["exit_code"] == 0
    assert items(events, "agent_message")[-1]["text"] == "It printed marker-123."
    first, second = fake.requests_to(COMPLETIONS)
    assert second.query["chat_id"] == first.query["chat_id"] and second.json["parent_id"], "the same upstream chat"
    followed = second.json["messages"][0]["content"]
    assert followed.startswith('<tool_response name="exec_command"') and "marker-123" in followed
    assert len(followed) < 2000, "only the command's output travels, not the whole conversation again"


@pytest.mark.parametrize(("fault", "words"), [("stream_data_inspection", "moderation"),
                                              ("error_after_content", "Internal error")])
def test_codex_shows_our_error(codex, proxy, fake, tmp_path, fault, words):
    fake.configure(fault=fault, answer="Partial answer that is cut off.")
    code, events = run_codex(codex, proxy, tmp_path, "Say hello.")
    assert code != 0
    [failed] = [e for e in events if e["type"] == "turn.failed"]
    assert words in failed["error"]["message"]
