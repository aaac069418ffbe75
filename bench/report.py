"""Writing a benchmark's markdown report without losing the hand-written reading of its numbers."""

from __future__ import annotations

from pathlib import Path

READING = "\n## Reading"


def write_markdown(path: Path, text: str) -> str:
    """Write ``text`` to ``path``; a ``## Reading`` section of the file it replaces is kept at the end.

    The reading is written by a person after looking at the numbers, so a re-run must not erase it (whoever re-runs
    checks it against the new numbers). Returns the text written."""
    previous = path.read_text() if path.is_file() else ""
    if READING in previous:
        text = text.rstrip("\n") + "\n" + READING + previous.split(READING, 1)[1].rstrip() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text
