"""Co-occurrence with workers (issue 18, item 4): the distributed path must fork its
workers (no thread left behind by the counting code) and give byte-identical artifacts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tokalign_core.runtime import executor as ex_mod


def test_warm_kernels_starts_no_thread_so_workers_can_fork():
    """``build_cooccur`` warms the kernels in the command's process right before the
    LocalCluster starts; a thread left running by that (tqdm's monitor thread, made by a
    disabled progress bar) made every CLI run spawn its workers, which then re-imported
    everything. Run in a fresh interpreter: pytest's own threads must not count."""
    code = textwrap.dedent("""
        import threading
        from tokalign_core.embed.cooccur import warm_kernels
        from tokalign_core.runtime.executor import resolve_start_method
        warm_kernels()
        print(threading.active_count(), [t.name for t in threading.enumerate()],
              resolve_start_method(None))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "1", out
    assert out[-1] == "fork"


def test_start_method_is_recorded():
    ex = ex_mod.DaskExecutor(n_workers=2, progress=False)
    assert ex.start_method is None  # nothing started: decided at the first map
