"""``python -m tests.fake_qwen --port 9000``: the emulator on its own, until Ctrl-C."""

from tests.fake_qwen.server import main

main()
