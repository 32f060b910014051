"""Pipeline-level fault injection (issue 8, item 2): real processes, real ``kill -9``.

* The tiny align flow is killed with SIGKILL while a chosen stage runs (tokenization,
  co-occurrence, GloVe, alignment) and rerun with the same command: stages that had
  finished come from the content cache (Prefect state ``Cached``, the same artifact refs,
  untouched artifact folders), the interrupted stage recomputes, the final alignment is
  byte-identical to an uninterrupted run's, and no temp folder of the killed writer is
  referenced or left behind.
* A Dask worker process is killed while it tokenizes / counts co-occurrences: Dask
  reschedules its task on the surviving worker and the artifact equals the serial one.
* Two identical flow runs start at once on one run folder: both succeed, one computes each
  stage while the other waits on the stage's compute lock and is served its record, every
  artifact verifies, and a third run is served entirely from the cache.

The flows run in child processes against the session's Prefect test server
(``tests/flows/harness.py``); the library's code hash is pinned in the children so other
files changing during the test session do not invalidate the cache between runs.
Training kill + resume is covered by ``tests/core/test_train.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tokalign_core.store.artifacts import ArtifactRef, verify

ROOT = Path(__file__).resolve().parents[2]

# Every stage label of the align flow (``flows.align.run_align``) with the GloVe route.
STAGES = ("corpus", "tokenize:source", "tokenize:target", "shared-tokens", "cooccur:source",
          "cooccur:target", "glove:source", "glove:target", "align", "evaluate-alignment")
# Upstream stage labels of each stage (its inputs, transitively).
UPSTREAM = {
    "tokenize": ("corpus",),
    "cooccur": ("corpus", "tokenize:source", "tokenize:target"),
    "glove": ("corpus", "tokenize:source", "tokenize:target", "cooccur:source",
              "cooccur:target"),
    "align": ("corpus", "tokenize:source", "tokenize:target", "cooccur:source",
              "cooccur:target", "glove:source", "glove:target", "shared-tokens"),
}

# The child: run the align flow once on a saved config and print states + refs as JSON.
CHILD = r"""
import json, sys, time
from tokalign_core.store import hashing
hashing.code_hash = lambda: "pipeline-faults-test"   # other sessions edit the library
from flows.align import align_flow
from tasks.caching import Workspace, artifact_refs
from tokalign_core.configs.pipeline import PipelineConfig

cfg = PipelineConfig.load(sys.argv[1])
if len(sys.argv) > 3:            # a start barrier: identical runs released together
    import os, pathlib
    gate = pathlib.Path(sys.argv[3])
    (gate / f"ready-{os.getpid()}").touch()
    while not (gate / "go").exists():
        time.sleep(0.005)
out = align_flow(cfg, Workspace(run_dir=sys.argv[2]))
refs = {"corpus": out["corpus"], "alignment": out["alignment"],
        **{f"tokens:{k}": v for k, v in out["tokens"].items()},
        **{f"embeddings:{k}": v for k, v in out["embeddings"].items()}}
print("RESULT " + json.dumps({"states": out["states"],
                              "refs": {k: v.model_dump(mode="json") for k, v in refs.items()}}))
"""


@pytest.fixture(scope="module")
def prefect_api() -> Any:
    """The session's Prefect test server (started here when no flow test started it)."""
    from tests.flows import harness

    was_running = harness._stack is not None
    url = harness.start()
    yield url
    if not was_running:
        harness.stop()


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, texts, bpe_tok, sp_tok) -> Path:
    """The tiny preset on the session's toy tokenizers, with a GloVe run long enough (and
    deterministic) to be killed in the middle; saved as JSON for the children."""
    from tests.flows.tiny import tiny_inputs
    from tokalign_core.configs.glove import GloveConfig
    from tokalign_core.configs.pipeline import PipelineConfig

    root = tmp_path_factory.mktemp("faults-inputs")
    cfg = tiny_inputs(root, texts[:300], bpe_tok, sp_tok)
    glove = GloveConfig(dim=16, iterations=60, device="cpu", engine="numba", threads=1)
    cfg = PipelineConfig.model_validate({**cfg.model_dump(), "glove": glove.model_dump()})
    path = root / "pipeline.json"
    cfg.save(path)
    return path


def child_env(api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(ROOT), PREFECT_API_URL=api_url, OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PREFECT_LOGGING_LEVEL="WARNING",
               MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1")
    return env


def start_flow(config: Path, run_dir: Path, api_url: str, gate: Path | None = None,
               log: Path | None = None) -> subprocess.Popen:
    """The align flow in a new process (its own session, so a kill reaches the whole tree)."""
    args = [sys.executable, "-c", CHILD, str(config), str(run_dir)]
    if gate is not None:
        args.append(str(gate))
    err = open(log or run_dir.with_suffix(".stderr"), "w")  # noqa: SIM115 - closed by the OS
    return subprocess.Popen(args, env=child_env(api_url), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=err, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 900) -> dict[str, Any]:
    """Wait for a flow child; its parsed RESULT line (fails with the child's stderr)."""
    out, _ = proc.communicate(timeout=timeout)
    err_file = Path(proc.stderr.name) if proc.stderr else None
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = err_file.read_text()[-3000:] if err_file and err_file.exists() else ""
        pytest.fail(f"flow child exited {proc.returncode}:\n{tail}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["refs"] = {k: ArtifactRef.model_validate(v) for k, v in result["refs"].items()}
    return result


def run_flow(config: Path, run_dir: Path, api_url: str) -> dict[str, Any]:
    return finish(start_flow(config, run_dir, api_url))


def lineage_events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "logs" / "lineage.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being appended right now
            break
    return rows


def stage_started(run_dir: Path, prefix: str) -> int:
    """How many nested MLflow runs of stages named ``prefix...`` have been started."""
    return sum(e["event"] == "start_run" and str(e.get("name", "")).startswith(prefix)
               and bool(e.get("parent")) for e in lineage_events(run_dir))


def kill_when(proc: subprocess.Popen, run_dir: Path, prefix: str, delay: float,
              count: int = 1, timeout: float = 900) -> float:
    """SIGKILL the child's process group ``delay`` s after ``count`` runs of stage
    ``prefix`` have started; returns the time of the kill."""
    deadline = time.time() + timeout
    while stage_started(run_dir, prefix) < count:
        if proc.poll() is not None:
            pytest.fail(f"the flow ended (exit {proc.returncode}) before {prefix} started")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"stage {prefix} did not start within {timeout} s")
        time.sleep(0.02)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return time.time()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()



def tmp_leftovers(run_dir: Path) -> set[str]:
    """Entries of the artifact store's temp folder (writers in progress or killed)."""
    tmp = run_dir / "artifacts" / ".tmp"
    return {p.name for p in tmp.iterdir()} if tmp.is_dir() else set()


def committed(run_dir: Path) -> dict[str, int]:
    """``{kind/digest: mtime_ns of its manifest}`` of every committed artifact folder."""
    root = run_dir / "artifacts"
    return {f"{m.parent.parent.name}/{m.parent.name}": m.stat().st_mtime_ns
            for m in root.glob("*/*/MANIFEST.json") if not m.parent.parent.name.startswith(".")}


def split_runs(run_dir: Path) -> list[list[dict[str, Any]]]:
    """Lineage events grouped by flow run (a top-level ``start_run`` opens a group)."""
    runs: list[list[dict[str, Any]]] = []
    for e in lineage_events(run_dir):
        if e["event"] == "start_run" and not e.get("parent"):
            runs.append([])
        if runs:
            runs[-1].append(e)
    return runs


def summarise(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Cached stage labels, computed stage names and output kinds of one flow run."""
    starts = [e for e in events if e["event"] == "start_run" and e.get("parent")]
    cached = {e["name"] for e in starts if e["tags"].get("tokalign.cached") == "true"}
    computed = [e["name"] for e in starts if e["tags"].get("tokalign.cached") != "true"]
    outputs = [k.split(".")[1] for e in events if e["event"] == "tags"
               for k in e.get("tags", {}) if k.startswith("output.") and k.endswith(".sha256")]
    return {"cached": cached, "computed": computed, "outputs": outputs}


def n_computed(summary: dict[str, Any], prefix: str) -> int:
    return sum(name.startswith(prefix) for name in summary["computed"])


@pytest.fixture(scope="module")
def reference(prefect_api, tiny_config, tmp_path_factory) -> dict[str, Any]:
    """One uninterrupted run in a fresh folder: what every faulted run must end with."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_flow(tiny_config, run_dir, prefect_api)
    assert set(result["states"]) == set(STAGES)
    assert set(result["states"].values()) == {"Completed"}, result["states"]
    return result


def alignment_bytes_digest(result: dict[str, Any]) -> str:
    return file_digest(Path(result["refs"]["alignment"].path) / "alignment.npz")


# Each killed run: (stage name prefix, how many of its runs must have started (both sides,
# so that everything upstream has finished), seconds to wait then, the output kind it
# writes). Measured at load ~8 on 2 cores: co-occurrence ~3 s, GloVe ~9 s, alignment ~11 s.
# Tokenization takes ~0.5 s, so it is killed when its writer's temp folder appears.
# (stage, runs started, when to kill, output kind). The kill waits for a sign that the
# stage is inside its work, not for a fixed delay (a fixed 0.5 s after both co-occurrence
# runs started let both finish first on a quiet machine): a writer's temp folder
# ("tmp:"), a spill folder the stage holds from its first count to its commit ("spill:"),
# or, for alignment, which has neither, its run's start (polled every 20 ms; the tiny
# alignment takes about a second, and a fixed 1.5 s let it finish on a quiet machine).
KILLS = (("tokenize", 1, "tmp:tokens@", "tokens"), ("cooccur", 1, "spill:cooccur-", "cooccur"),
         ("glove", 1, "spill:glove-", "embeddings"), ("align", 1, 0.0, "alignment"))


def spill_leftovers(run_dir: Path) -> set[str]:
    """Entries of the artifact store's spill folder (stages counting or training)."""
    spill = run_dir / "artifacts" / ".spill"
    return {p.name for p in spill.iterdir()} if spill.is_dir() else set()


def wait_for_folder(proc: subprocess.Popen, run_dir: Path, sign: str,
                    timeout: float = 900) -> None:
    """SIGKILL the child's process group as soon as the folder ``sign`` names exists:
    ``tmp:<prefix>`` in the store's temp folder, ``spill:<prefix>`` in its spill folder."""
    where, prefix = sign.split(":", 1)
    listing = tmp_leftovers if where == "tmp" else spill_leftovers
    deadline = time.time() + timeout
    while not any(n.startswith(prefix) for n in listing(run_dir)):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"no {sign} folder appeared (exit {proc.returncode})")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_kill9_mid_stage_then_rerun_reuses_finished_stages(prefect_api, tiny_config, reference,
                                                           tmp_path):
    """Four runs on one run folder, each SIGKILLed during the next stage (tokenization,
    co-occurrence, GloVe, alignment), then a fifth that finishes. Each rerun serves every
    stage finished before the kill from the cache and recomputes the killed one; artifacts
    committed earlier are never rewritten; dead writers' temp folders are swept and never
    referenced; the final alignment equals the uninterrupted run's byte for byte."""
    run_dir = tmp_path / "run"
    before: dict[str, int] = {}
    killed_tmp: set[str] = set()  # temp folders of killed writers, seen right after kills
    for i, (prefix, count, when, kind) in enumerate(KILLS):
        proc = start_flow(tiny_config, run_dir, prefect_api, log=tmp_path / f"kill{i}.stderr")
        if isinstance(when, str):
            wait_for_folder(proc, run_dir, when)
        else:
            kill_when(proc, run_dir, prefix, when, count)
        killed_tmp |= tmp_leftovers(run_dir)
        run = summarise(split_runs(run_dir)[-1])
        started = n_computed(run, prefix)
        # The kill landed inside the stage: some run of it started and wrote no output.
        assert started >= 1 and run["outputs"].count(kind) < started, (prefix, run)
        if i > 0:
            # Upstream stages finished in earlier runs are cache hits in this run ...
            assert set(UPSTREAM[KILLS[i - 1][0].rstrip(":")]) <= run["cached"], run
            # ... and the stage killed last time is recomputed.
            assert n_computed(run, KILLS[i - 1][0]) >= 1, run
        now = committed(run_dir)
        assert all(now.get(k) == mtime for k, mtime in before.items()), "artifact rewritten"
        before = now

    final = run_flow(tiny_config, run_dir, prefect_api)
    states = final["states"]
    assert all(states[s] == "Cached" for s in UPSTREAM["align"]), states
    assert states["align"] == "Completed" and states["evaluate-alignment"] == "Completed"
    last = summarise(split_runs(run_dir)[-1])
    assert n_computed(last, "align") == 1 and last["outputs"].count("alignment") == 1

    # Finished artifacts were reused in place (same folders, manifests untouched).
    after = committed(run_dir)
    assert all(after.get(k) == mtime for k, mtime in before.items()), "artifact rewritten"
    for label in ("corpus", "tokens:source", "tokens:target", "embeddings:source",
                  "embeddings:target"):
        ref = final["refs"][label]
        assert f"{ref.kind}/{Path(ref.path).name}" in before, f"{label} was not reused"
    # No half-written artifact is trusted: refs point at committed, verified folders, and
    # the killed writers' temp folders were swept by the rerun.
    for ref in final["refs"].values():
        assert "/.tmp/" not in ref.path
        verify(ref, full=True)
    assert any(n.startswith("tokens@") for n in killed_tmp), killed_tmp
    assert not tmp_leftovers(run_dir), tmp_leftovers(run_dir)
    assert alignment_bytes_digest(final) == alignment_bytes_digest(reference)


@pytest.mark.slow
def test_two_identical_runs_at_once(prefect_api, tiny_config, reference, tmp_path):
    """Two children of the same flow on one run folder, released together by a barrier:
    both succeed; for every stage one of them computed it and the other waited on the
    stage's compute lock and was served the record (``Cached``); so each stage ran once
    (lineage), both runs return the same refs, every artifact verifies, the alignment
    equals the reference run's, and a third run is served entirely from the cache."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    gate.mkdir()
    procs = [start_flow(tiny_config, run_dir, prefect_api, gate=gate,
                        log=tmp_path / f"twin{i}.stderr") for i in range(2)]
    deadline = time.time() + 600
    while len(list(gate.glob("ready-*"))) < 2:
        assert all(p.poll() is None for p in procs), "a twin died before the barrier"
        assert time.time() < deadline, "twins never reached the barrier"
        time.sleep(0.02)
    (gate / "go").touch()
    first, second = (finish(p) for p in procs)

    for result in (first, second):
        assert set(result["states"]) == set(STAGES)
        for ref in result["refs"].values():
            verify(ref, full=True)
        assert alignment_bytes_digest(result) == alignment_bytes_digest(reference)
    # One twin computed each stage, the other waited for it and reused its record (which
    # twin computes can differ per stage: both tokenizations start together).
    for stage in STAGES:
        assert {first["states"][stage], second["states"][stage]} == {"Completed", "Cached"}, \
            (stage, first["states"], second["states"])
    # Lineage agrees: each stage executed (a nested run that is not a cache row) once.
    starts = [e for e in lineage_events(run_dir) if e["event"] == "start_run" and e.get("parent")]
    computed = [e["name"] for e in starts if e["tags"].get("tokalign.cached") != "true"]
    cached = sorted(e["name"] for e in starts if e["tags"].get("tokalign.cached") == "true")
    assert len(computed) == len(STAGES), computed
    assert cached == sorted(STAGES), cached
    # So the runs agree on every ref, even those whose meta.json records timings.
    assert first["refs"] == second["refs"]
    assert not list((run_dir / "prefect-results" / ".locks").glob("*.lock"))  # released

    third = run_flow(tiny_config, run_dir, prefect_api)
    assert set(third["states"].values()) == {"Cached"}, third["states"]
    for label, ref in third["refs"].items():
        verify(ref, full=True)
        assert ref in (first["refs"][label], second["refs"][label]), label
    assert not tmp_leftovers(run_dir)


# ------------------------------------------------------------------ Dask worker killed


def _kill_a_busy_worker(ex, done: threading.Event, timeout: float = 300) -> int:
    """SIGKILL the process of the first Dask worker seen processing a task; its pid."""
    pids = ex.client.run(os.getpid)
    deadline = time.time() + timeout
    while time.time() < deadline and not done.is_set():
        busy = [addr for addr, keys in ex.client.processing().items() if keys]
        if busy and busy[0] in pids:
            os.kill(pids[busy[0]], signal.SIGKILL)
            return pids[busy[0]]
        time.sleep(0.005)
    pytest.fail("no Dask worker was seen processing a task before the stage finished")


def _run_with_worker_kill(ex, fn, *args) -> tuple[Any, int]:
    """``fn(*args, executor=ex)`` in a thread while a busy worker is killed."""
    out: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            out["ref"] = fn(*args, executor=ex)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            out["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target)
    thread.start()
    killed = _kill_a_busy_worker(ex, done)
    thread.join(600)
    if "error" in out:
        raise out["error"]
    return out["ref"], killed


def data_files(ref: ArtifactRef) -> dict[str, str]:
    """``{file: sha256}`` from the manifest, without meta.json (it records the executor)."""
    manifest = json.loads((Path(ref.path) / "MANIFEST.json").read_text())
    return {k: v["sha256"] for k, v in manifest.items() if k != "meta.json"}


@pytest.mark.slow
def test_dask_worker_killed_mid_task_gives_the_serial_result(tmp_path, texts, bpe_tok):
    """Tokenization and co-occurrence on 2 Dask workers, one worker SIGKILLed while it
    processes a shard each time: Dask reruns the task elsewhere and the artifacts hold the
    same bytes as the serial run's."""
    from tokalign_core.configs.cooccur import CooccurConfig
    from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
    from tokalign_core.configs.tokenize import TokenizeConfig
    from tokalign_core.data.corpus import build_corpus
    from tokalign_core.embed.cooccur import build_cooccur
    from tokalign_core.runtime.executor import DaskExecutor
    from tokalign_core.store.artifacts import ArtifactStore
    from tokalign_core.vocab.tokenize import tokenize_corpus

    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok_dir = tmp_path / "tok"
    bpe_tok.save_pretrained(tok_dir)
    store = ArtifactStore(tmp_path / "store")
    corpus = build_corpus(CorpusConfig(sources=(SourceSpec(path=str(src)),), n_shards=8,
                                       heldout_fraction=0.1), store, progress=False)
    tcfg, ccfg = TokenizeConfig(tokenizer=str(tok_dir)), CooccurConfig(min_count=2)
    serial_tokens = tokenize_corpus(corpus, tcfg, store)
    serial_cooc = build_cooccur(serial_tokens, ccfg, store)

    with DaskExecutor(n_workers=2, progress=False) as ex:
        tokens, first = _run_with_worker_kill(ex, tokenize_corpus, corpus, tcfg, store)
        cooc, second = _run_with_worker_kill(ex, build_cooccur, tokens, ccfg, store)
        assert first not in ex.client.run(os.getpid).values()  # really gone
        assert second not in ex.client.run(os.getpid).values()

    assert data_files(tokens) == data_files(serial_tokens)
    assert data_files(cooc) == data_files(serial_cooc)
    verify(tokens, full=True)
    verify(cooc, full=True)
