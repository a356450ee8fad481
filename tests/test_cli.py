"""psm_jax/cli.py: the one-line error is the last line even while other threads still log."""
from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, threading, time
    from absl import logging
    from psm_jax import cli

    def chatter():          # like the data pipeline's readers, still decoding prefetched files
        while True:
            logging.warning("skipping unreadable image bad.jpg")

    for _ in range(4):
        threading.Thread(target=chatter, daemon=True).start()
    time.sleep(0.2)
    code = cli.error("4 unreadable training records in a row", last_words=True)
    time.sleep(0.2)         # the threads keep running until the process exits
    sys.exit(code)
""")


def test_last_words_error_is_the_last_line_while_threads_log():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2
    assert any("skipping unreadable" in l for l in lines), r.stderr[-500:]   # the threads did log
    assert lines[-1] == "error: 4 unreadable training records in a row", lines[-3:]


def test_error_folds_whitespace_and_returns_the_code(capsys):
    from psm_jax import cli

    assert cli.error("a\n  b", code=1) == 1
    assert capsys.readouterr().err == "error: a b\n"
