"""The README as the tests read it: a section's text, its commands, one inline command."""

import re

from conftest import ROOT


def readme_section(section: str) -> str:
    """The README's text under the heading `## <section>`, up to the next heading."""
    text = (ROOT / "README.md").read_text()
    return re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL).group(1)


def readme_commands(section: str) -> list[str]:
    """The commands of the bash blocks under the README heading `## <section>`, comments left out."""
    blocks = re.findall(r"```bash\n(.*?)```", readme_section(section), re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]


def readme_inline_command(section: str, words: str) -> str:
    """The one command printed inline (in a sentence or a table) under `## <section>` that holds
    `words`: a code span starting with the program the README's install puts in .venv/bin/."""
    spans = re.findall(r"`([^`\n]+)`", readme_section(section))
    (command,) = [span for span in spans if span.startswith(".venv/bin/") and words in span]
    return command
