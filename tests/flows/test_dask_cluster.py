"""A real distributed engine (issue 18, item 5): ``dask scheduler`` and two ``dask worker``
processes started as separate processes, as a cluster would run them.

- ``tokalign tokenize`` / ``tokalign cooccur --dask-address`` give byte-identical artifacts
  (same manifest digest, so every file) to the in-process run;
- the align flow (the stages the pipeline flow composes) with ``Workspace.dask_address``
  gives the same tokens and co-occurrence artifacts as without it;
- a worker killed while it runs a shard task: the run completes on the other worker with
  the same result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.flows.test_integration import free_port, start, stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
DASK = str(Path(sys.executable).with_name("dask"))


def _env() -> dict[str, str]:
    # Workers import this checkout (not another install of the package) and stay offline.
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


class Cluster:
    """``dask scheduler`` + ``dask worker`` processes on loopback (no nanny: killing a
    worker loses it, as losing a machine would)."""

    def __init__(self, logs: Path, n_workers: int = 2):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        env = _env()
        self.scheduler = start(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
            env,
            logs / "scheduler.log",
        )
        self.workers = [
            start(
                [
                    DASK,
                    "worker",
                    self.address,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--name",
                    f"w{i}",
                ],
                env,
                logs / f"worker{i}.log",
            )
            for i in range(n_workers)
        ]
        from dask.distributed import Client

        self.client = Client(self.address, timeout=120)
        self.client.wait_for_workers(n_workers, timeout=120)

    def close(self) -> None:
        self.client.close()
        for p in [*self.workers, self.scheduler]:
            stop(p)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, texts):
    """A corpus artifact of 4 shards (~1.6 MB of text), so every shard task runs long
    enough to be killed mid-run."""
    root = tmp_path_factory.mktemp("dask-corpus")
    src = root / "texts.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts * 6))
    out = _cli(
        [
            "corpus",
            "--source",
            str(src),
            "--shards",
            "4",
            "--seed",
            "3",
            "--artifact-root",
            str(root / "store"),
            "--no-progress",
        ]
    )
    return Path(out)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, bpe_tok):
    path = tmp_path_factory.mktemp("tok") / "bpe"
    bpe_tok.save_pretrained(path)
    return path


def _cli(args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "tokalign_core", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def _tokens_and_cooc(corpus: Path, tok: Path, root: Path, extra: list[str]) -> tuple[str, str]:
    tokens = _cli(
        [
            "tokenize",
            "--corpus",
            str(corpus),
            "--tokenizer",
            str(tok),
            "--artifact-root",
            str(root),
            "--no-progress",
            *extra,
        ]
    )
    cooc = _cli(
        [
            "cooccur",
            tokens,
            "--window",
            "5",
            "--min-count",
            "2",
            "--artifact-root",
            str(root),
            *extra,
        ]
    )
    return tokens, cooc


def _digest(folder: str) -> dict[str, str]:
    """sha256 of every file of an artifact, checked against its manifest (so the files
    are complete). ``meta.json`` is left out: it records the input artifact's path, which
    differs between the two artifact roots."""
    from tokalign_core.store.artifacts import ArtifactRef, verify
    from tokalign_core.store.hashing import sha256_bytes

    manifest = json.loads((Path(folder) / "MANIFEST.json").read_text())
    digest = sha256_bytes(json.dumps(manifest, sort_keys=True).encode())
    verify(ArtifactRef(kind=Path(folder).parent.name, sha256=digest, path=folder))
    return {name: entry["sha256"] for name, entry in manifest.items() if name != "meta.json"}


def _task_prefixes(cluster: Cluster) -> set[str]:
    """Names of the task functions the scheduler has seen (on this cluster only)."""
    return set(
        cluster.client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    )


def test_cli_on_a_real_cluster_is_byte_identical(cluster, corpus_dir, tokenizer_dir, tmp_path):
    serial = _tokens_and_cooc(corpus_dir, tokenizer_dir, tmp_path / "serial", [])
    remote = _tokens_and_cooc(
        corpus_dir, tokenizer_dir, tmp_path / "remote", ["--dask-address", cluster.address]
    )
    assert [_digest(p) for p in remote] == [_digest(p) for p in serial]
    # the shards were tokenized and counted by the cluster's workers
    assert {"tokenize_shard", "count_shard_dir_runs"} <= _task_prefixes(cluster)


def _kill_a_busy_worker(cluster: Cluster, done: threading.Event, killed: list[str]) -> None:
    """Kill the first worker seen processing a task (SIGKILL: no goodbye to the
    scheduler), once."""
    ours = {p.pid for p in cluster.workers}
    pids = {addr: pid for addr, pid in cluster.client.run(os.getpid).items() if pid in ours}
    while not done.is_set() and not killed:
        for addr, tasks in cluster.client.processing().items():
            # one thread per worker: a worker with a task assigned is running one
            if addr in pids and any("count" in t or "tokenize" in t for t in tasks):
                os.kill(pids[addr], signal.SIGKILL)
                killed.append(f"{addr} pid {pids[addr]}: {tasks}")
                return
        time.sleep(0.05)


def test_a_killed_worker_does_not_change_the_result(cluster, corpus_dir, tokenizer_dir, tmp_path):
    serial = _tokens_and_cooc(corpus_dir, tokenizer_dir, tmp_path / "serial", [])
    done, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_a_busy_worker, args=(cluster, done, killed))
    watcher.start()
    try:
        remote = _tokens_and_cooc(
            corpus_dir, tokenizer_dir, tmp_path / "remote", ["--dask-address", cluster.address]
        )
    finally:
        done.set()
        watcher.join()
    assert killed, "no worker was seen running a shard task: nothing was killed"
    assert sum(p.poll() is None for p in cluster.workers) == 1
    assert [_digest(p) for p in remote] == [_digest(p) for p in serial]


def test_flow_dask_address_gives_the_same_artifacts(
    cluster, prefect_api, texts, bpe_tok, sp_tok, tmp_path, monkeypatch
):
    from flows.align import align_flow
    from tasks.caching import Workspace
    from tests.flows.tiny import tiny_inputs
    from tokalign_core.store import hashing

    monkeypatch.setattr(hashing, "code_hash", lambda: "dask-flow-test")
    cfg = tiny_inputs(tmp_path / "inputs", texts[:250], bpe_tok, sp_tok)
    runs = {}
    for name, address in (("local", None), ("cluster", cluster.address)):
        ws = Workspace(run_dir=str(tmp_path / name), dask_address=address)
        out = align_flow(cfg, ws)
        assert out["states"]["tokenize:source"] == "Completed", out["states"]
        root = Path(ws.artifact_root)
        runs[name] = {
            kind: sorted(
                json.dumps(_digest(str(p)), sort_keys=True)
                for p in (root / kind).iterdir()
                if (p / "MANIFEST.json").exists()
            )
            for kind in ("tokens", "cooccur")
        }
    assert runs["cluster"] == runs["local"]
    assert len(runs["local"]["tokens"]) == 2 and len(runs["local"]["cooccur"]) == 2
