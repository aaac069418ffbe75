"""bench/report.py: a re-run replaces the numbers and keeps the hand-written reading."""

from bench.report import write_markdown


def test_rerun_replaces_the_numbers_and_keeps_the_reading(tmp_path):
    path = tmp_path / "results" / "x.md"
    assert write_markdown(path, "# X\n\n| a | 1 |\n") == "# X\n\n| a | 1 |\n"  # no reading yet: as given
    path.write_text(path.read_text() + "\n## Reading\n\n- a is 1 because ...\n")
    text = write_markdown(path, "# X\n\n| a | 2 |\n")
    assert path.read_text() == text
    assert text.startswith("# X\n\n| a | 2 |\n") and "| a | 1 |" not in text
    assert text.endswith("\n## Reading\n\n- a is 1 because ...\n") and text.count("## Reading") == 1
    assert write_markdown(path, "# X\n\n| a | 3 |\n").count("## Reading") == 1  # and again
