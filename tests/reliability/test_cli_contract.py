"""The command line's error contract (reliability round 2): a bad input ends in exit code 2
and ONE line ``tokalign <command>: error: ...`` that names the input and says what to do,
never a traceback. Each probe below printed a traceback (or a misleading message) before."""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tokalign.cli import EXIT_USER_ERROR, main


@dataclass(frozen=True)
class Env:
    root: Path
    model: Path
    tokens: Path
    corpus_src: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    """A tiny saved model with its tokenizer, a plain-text source and a tokens artifact."""
    from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
    from tokalign_core.configs.tokenize import TokenizeConfig
    from tokalign_core.data.corpus import build_corpus
    from tokalign_core.model import toy
    from tokalign_core.store.artifacts import ArtifactStore
    from tokalign_core.vocab.tokenize import tokenize_corpus

    root = tmp_path_factory.mktemp("cli")
    texts = toy.stdlib_texts(120)
    tok = toy.train_bytelevel_bpe(texts, 300)
    model = root / "model"
    toy.tiny_gpt_neox(len(tok), hidden=32, layers=1, heads=2).save_pretrained(model)
    tok.save_pretrained(model)
    src = root / "src.txt"
    src.write_text("\n".join(t.replace("\n", " ") for t in texts))
    store = ArtifactStore(root / "store")
    corpus = build_corpus(
        CorpusConfig(sources=[SourceSpec(path=str(src))], n_shards=1), store, progress=False
    )
    tokens = tokenize_corpus(corpus, TokenizeConfig(tokenizer=str(model)), store)
    return Env(root, model, Path(tokens.path), src)


def _copy_model(env: Env, name: str) -> Path:
    dst = env.root / name
    if not dst.exists():
        shutil.copytree(env.model, dst)
    return dst


def _no_weights(env: Env) -> Path:
    m = _copy_model(env, "no-weights")
    (m / "model.safetensors").unlink(missing_ok=True)
    return m


def _broken_config(env: Env) -> Path:
    m = _copy_model(env, "broken-config")
    (m / "config.json").write_text('{"model_type": ')
    return m


def _truncated(env: Env) -> Path:
    m = _copy_model(env, "truncated")
    data = (env.model / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 3])
    return m


def _file(env: Env, name: str, data: bytes) -> Path:
    path = env.root / name
    path.write_bytes(data)
    return path


def _corrupt_alignment(env: Env) -> Path:
    folder = env.root / "bad-alignment"
    folder.mkdir(exist_ok=True)
    (folder / "alignment.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    return folder


def _corrupt_cooccur(env: Env) -> Path:
    folder = env.root / "bad-cooccur"
    folder.mkdir(exist_ok=True)
    np.save(folder / "token_ids.npy", np.arange(4))
    (folder / "cooc.npz").write_bytes(b"\x00" * 64)
    return folder


def _init(model: Path, env: Env, *extra: str) -> list[str]:
    return [
        "init",
        "--model",
        str(model),
        "--target-tokenizer",
        str(env.model),
        "--method",
        "random",
        "--out",
        str(env.root / "init-out"),
        *extra,
    ]


def _corpus(env: Env, source: str, *extra: str) -> list[str]:
    return [
        "corpus",
        "--source",
        source,
        "--artifact-root",
        str(env.root / "store"),
        "--no-progress",
        *extra,
    ]


# (probe id, argv from the fixtures, substrings the one error line must contain)
PROBES = [
    (
        "model folder without weights",
        lambda e: _init(_no_weights(e), e),
        ["no-weights", "no weights", "re-save"],
    ),
    (
        "missing model path",
        lambda e: _init(e.root / "missing-model", e),
        ["missing-model", "does not exist", "hub id"],
    ),
    (
        "broken config.json",
        lambda e: _init(_broken_config(e), e),
        ["broken-config", "config.json", "not valid JSON"],
    ),
    ("truncated safetensors", lambda e: _init(_truncated(e), e), ["truncated", "download"]),
    (
        "corrupt .gz source",
        lambda e: _corpus(e, str(_file(e, "bad.txt.gz", b"\x1f\x8b\x08\x00" + b"x" * 200))),
        ["bad.txt.gz", "damaged"],
    ),
    (
        "malformed JSON --config",
        lambda e: ["glove", str(e.root), "--config", str(_file(e, "bad.json", b'{"dim": 3,'))],
        ["bad.json", "not valid JSON"],
    ),
    (
        "malformed YAML --config",
        lambda e: [
            "cooccur",
            str(e.root),
            "--config",
            str(_file(e, "bad.yaml", b"window: [1, 2\n")),
        ],
        ["bad.yaml", "not valid YAML"],
    ),
    (
        "folder as --config",
        lambda e: ["corpus", "--config", str(e.root)],
        [None, "is a folder", "JSON or YAML file"],
    ),
    (
        "tokens artifact as --corpus",
        lambda e: ["tokenize", "--corpus", str(e.tokens), "--tokenizer", str(e.model)],
        ["tokens artifact", "not a corpus artifact", "tokalign corpus"],
    ),
    (
        "corrupt alignment .npz",
        lambda e: _init(e.model, e, "--alignment", str(_corrupt_alignment(e))),
        ["alignment.npz", "damaged", "tokalign align"],
    ),
    (
        "corrupt cooc .npz",
        lambda e: ["glove", str(_corrupt_cooccur(e)), "--artifact-root", str(e.root / "store")],
        ["cooc.npz", "damaged", "tokalign cooccur"],
    ),
    (
        "artifact root that is a file",
        lambda e: (
            _corpus(e, str(e.corpus_src))[:3]
            + ["--artifact-root", str(_file(e, "root-file", b"x")), "--no-progress"]
        ),
        ["root-file", "is a file", "--artifact-root"],
    ),
    (
        "/dev/zero as a source",
        lambda e: _corpus(e, "/dev/zero"),
        ["/dev/zero", "not a regular file"],
    ),
    (
        "adapt on a model without weights",
        lambda e: [
            "adapt",
            "--model",
            str(_no_weights(e)),
            "--tokens",
            str(e.tokens),
            "--out",
            str(e.root / "adapt-out"),
            "--engine",
            "torch",
        ],
        ["no-weights", "no weights"],
    ),
]


@pytest.mark.parametrize(
    "argv_of,needles", [(p[1], p[2]) for p in PROBES], ids=[p[0] for p in PROBES]
)
def test_bad_input_is_one_line_and_exit_code_2(env, capsys, argv_of, needles):
    argv = argv_of(env)
    if needles[0] is None:  # the probe's own input path
        needles = [argv[argv.index("--config") + 1], *needles[1:]]
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"tokalign {argv[0]}: error:")]
    assert code == EXIT_USER_ERROR, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Repo id" not in err and "resume" not in err


def test_disk_full_during_the_corpus_spill(env, capsys, monkeypatch):
    """ENOSPC while spilling: one line saying the disk is full and where; nothing kept."""
    from tokalign_core.data import corpus

    def full(self, key, heldout, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(corpus._Spill, "add", full)
    root = env.root / "full-store"
    code = main(
        _corpus(env, str(env.corpus_src))[:3] + ["--artifact-root", str(root), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "Traceback" not in err
    line = next(ln for ln in err.splitlines() if "error:" in ln)
    assert "disk full" in line and str(root) in line and "free space" in line
    assert not (root / "corpus").exists() and not any((root / ".tmp").iterdir())


def test_adapt_failure_without_checkpoint_does_not_advise_resume(env, capsys, monkeypatch):
    """Training that fails before its first checkpoint: nothing to resume, and the message
    says so (it used to say "rerun the same command to resume")."""
    import subprocess

    from tokalign.commands import train as train_cmd

    monkeypatch.setattr(
        train_cmd.subprocess, "run", lambda cmd, env=None: subprocess.CompletedProcess(cmd, 1)
    )
    out = env.root / "adapt-fail"
    code = main(
        [
            "adapt",
            "--model",
            str(env.model),
            "--tokens",
            str(env.tokens),
            "--out",
            str(out),
            "--engine",
            "torch",
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    assert "nothing to resume" in err and "rerun the same command to resume" not in err


def test_an_internal_error_keeps_its_traceback(monkeypatch):
    """Only input errors are summarised: a bug (here a KeyError) still raises, so it can
    be reported with its traceback (exit code 1 from the interpreter)."""
    from tokalign.commands import corpus as corpus_cmd

    def bug(args):
        raise KeyError("internal")

    monkeypatch.setattr(corpus_cmd, "run", bug)
    with pytest.raises(KeyError):
        main(["corpus", "--source", "x"])
