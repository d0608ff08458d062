"""Every command block of the README runs as written in bash and in zsh (macOS's default
shell): each command's words are expanded by both shells exactly as a user's shell would
(zsh refuses an unquoted `[...]` that matches no file: "no matches found"), both shells must
give the same words, and every `samdata` command must parse with samdata's own CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def commands() -> list[str]:
    """The commands of the README's bash blocks, continuation lines joined, comments cut."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _words(shell: str, command: str, cwd: Path) -> list[str]:
    """The words `shell` makes of `command` (its first word replaced by printf)."""
    _, _, rest = command.partition(" ")
    done = subprocess.run([shell, "-c", f"printf '%s\\0' {rest}"], capture_output=True,
                          cwd=cwd, timeout=10)
    assert done.returncode == 0, f"{shell} refuses: {command}\n{done.stderr.decode()}"
    return done.stdout.decode().split("\0")[:-1]


SHELLS = ["bash"] + (["zsh"] if shutil.which("zsh") else [])


def test_the_readme_has_commands():
    found = commands()
    assert len(found) > 20 and sum(c.startswith("samdata ") for c in found) > 20


@pytest.mark.parametrize("shell", SHELLS)
def test_every_command_block_runs_in(shell, tmp_path):
    for command in commands():
        assert _words(shell, command, tmp_path) == _words("bash", command, tmp_path), command


def test_every_samdata_command_parses(tmp_path):
    parser = build_parser()
    for command in commands():
        if not command.startswith("samdata "):
            continue
        words = [w for w in _words("bash", command, tmp_path) if w not in ("--debug",
                                                                           "--verbose")]
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"samdata's CLI refuses the README's command: {command}")
