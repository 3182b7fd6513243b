"""The console: the project's lines, others' problems, one progress line; the file: everything."""

import io
import logging

import pytest

from pipeline.runs import logs


@pytest.fixture
def console(tmp_path):
    stream = io.StringIO()
    path = logs.setup(tmp_path / "logs" / "job.log", stream=stream)
    yield stream, path
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, (logs._Console, logging.FileHandler)):
            root.removeHandler(handler)
            handler.close()


def test_console_shows_our_lines_and_others_warnings_file_keeps_all(console, caplog):
    stream, path = console
    caplog.set_level(logging.DEBUG)  # as logs.setup leaves it (pytest's log_level resets it)
    logging.getLogger("pipeline.train").info("fit: 3 epochs")
    logging.getLogger("pipeline.train").debug("a detail")
    logging.getLogger("ray.data").info("Starting execution of Dataset x")
    logging.getLogger("ray.data").warning("Progress bars disabled")
    logging.getLogger("ray.tune").error("a trial failed")
    assert stream.getvalue().splitlines() == ["fit: 3 epochs", "ERROR: a trial failed"]
    text = path.read_text()
    assert all(line in text for line in ("a detail", "Starting execution of Dataset x"))


def test_progress_off_a_terminal_writes_a_line_only_now_and_then(console):
    stream, path = console
    progress = logs.Progress("featurize", total=3, every=3600, tick=0)
    for done in (1, 2, 3):
        progress.update(done, "images")
    assert stream.getvalue() == ""  # not a terminal: the summary line that follows says it
    progress.every = 0
    progress.update(3, "images, done")
    assert stream.getvalue().splitlines() == ["featurize: 3/3 images, done"]
    assert "featurize: 1/3 images" in path.read_text()


def test_a_terminal_gets_one_line_rewritten_in_place(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    handler = logs._Console(stream, verbose=False)
    logger = logging.getLogger("pipeline.test_terminal")
    logger.addHandler(handler)
    try:
        progress = logs.Progress("fit", total=2, every=3600, tick=0, logger=logger)
        progress.update(1, "epochs")
        progress.update(2, "epochs")
        logger.info("fit: done")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == (
        "\rfit: 1/2 epochs\033[K\rfit: 2/2 epochs\033[K\rfit: done\033[K\n"
    )


def test_printed_library_output_goes_to_the_file(console, capsys):
    stream, path = console
    with logs.captured_stdout("ray.tune"):
        print("+-----------------+\n| a Tune table    |")
    assert capsys.readouterr().out == "" and stream.getvalue() == ""
    assert "a Tune table" in path.read_text()
