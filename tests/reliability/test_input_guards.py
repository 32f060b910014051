"""Input guards (reliability round 2): configs with non-finite numbers or booleans for
numbers, tokenizer identity between stages, outputs that would delete inputs, credentials
in tracking URIs, and the small corpus-input cases. Each test failed before its fix."""

from __future__ import annotations

import json

import numpy as np
import pytest

# ------------------------------------------------------------------ configs (defect 9)


def _all_config_classes():
    import importlib
    import pkgutil

    from tokalign_core import configs
    from tokalign_core.configs.base import FrozenConfig

    out = set()
    for info in pkgutil.iter_modules(configs.__path__):
        module = importlib.import_module(f"{configs.__name__}.{info.name}")
        out |= {
            v
            for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, FrozenConfig) and v is not FrozenConfig
        }
    return sorted(out, key=lambda c: c.__name__)


@pytest.mark.parametrize(
    "field,value",
    [
        ("x_max", float("inf")),
        ("eta", float("inf")),
        ("alpha", float("nan")),
        ("x_max", "Infinity"),
        ("eta", "-inf"),
    ],
)
def test_glove_rejects_non_finite_numbers(field, value):
    from pydantic import ValidationError

    from tokalign_core.configs.glove import GloveConfig

    with pytest.raises(ValidationError, match=field):
        GloveConfig(**{field: value})


@pytest.mark.parametrize(
    "field,value", [("iterations", True), ("dim", True), ("seed", False), ("eta", True)]
)
def test_glove_rejects_booleans_for_numbers(field, value):
    from pydantic import ValidationError

    from tokalign_core.configs.glove import GloveConfig

    with pytest.raises(ValidationError, match=f"{field}.*boolean"):
        GloveConfig(**{field: value})


def test_cooccur_window_true_is_rejected_from_a_json_file(tmp_path):
    from tokalign_core.configs.cooccur import CooccurConfig

    path = tmp_path / "c.json"
    path.write_text('{"window": true}')
    with pytest.raises(ValueError, match="window.*boolean"):
        CooccurConfig.load(path)


def test_glove_x_max_infinity_in_json_is_rejected_through_the_cli(tmp_path, capsys):
    from tokalign.cli import main

    path = tmp_path / "g.json"
    path.write_text('{"x_max": Infinity}')
    (tmp_path / "cooc").mkdir()
    code = main(
        [
            "glove",
            str(tmp_path / "cooc"),
            "--config",
            str(path),
            "--artifact-root",
            str(tmp_path / "a"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "x_max" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()


def test_every_config_rejects_inf_and_bool_for_its_numbers():
    """The rule lives in the base class: every float field refuses inf, every int field
    refuses True (each config class is probed with one of its own number fields; the error
    must be about that field, not about missing required ones)."""
    from pydantic import ValidationError

    checked = 0
    for cls in _all_config_classes():
        for name, field in cls.model_fields.items():
            if field.annotation not in (int, float):
                continue
            for bad in (
                [float("inf"), float("nan"), True] if field.annotation is float else [True, False]
            ):
                with pytest.raises(ValidationError) as info:
                    cls.model_validate({name: bad})
                about = [e for e in info.value.errors() if e["loc"][:1] == (name,)]
                assert about, f"{cls.__name__}.{name} accepted {bad!r}"
            checked += 1
            break
    assert checked >= 8


def test_booleans_stay_valid_for_boolean_fields():
    from tokalign_core.configs.glove import GloveConfig

    assert GloveConfig(deterministic=False).deterministic is False
    assert json.loads(GloveConfig().canonical_json())["x_max"] == 10.0


# ------------------------------------------------------- outputs holding inputs (defect 10)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """<root>/inputs/{model (with tokenizer), alignment, tokens}: every input of init/adapt
    under one folder."""
    from tokalign_core.align.alignment import Alignment, Provenance
    from tokalign_core.model import toy

    root = tmp_path_factory.mktemp("outs")
    inputs = root / "inputs"
    tok = toy.train_bytelevel_bpe(toy.stdlib_texts(60), 280)
    toy.tiny_gpt_neox(len(tok), hidden=32, layers=1, heads=2).save_pretrained(inputs / "model")
    tok.save_pretrained(inputs / "model")
    n = len(tok)
    Alignment(np.arange(n), np.ones(n), np.full(n, Provenance.SHARED), np.arange(n)).save(
        inputs / "alignment"
    )
    (inputs / "tokens").mkdir()
    (inputs / "tokens" / "meta.json").write_text("{}")
    return inputs


def _tree(folder):
    from tokalign_core.store.hashing import sha256_tree

    return sha256_tree(folder)


@pytest.mark.parametrize("out_of", [lambda i: i, lambda i: i / "model", lambda i: i.parent])
def test_init_overwrite_refuses_an_out_that_holds_the_inputs(workspace, capsys, out_of):
    from tokalign.cli import main

    before = _tree(workspace)
    out = out_of(workspace)
    code = main(
        [
            "init",
            "--model",
            str(workspace / "model"),
            "--target-tokenizer",
            str(workspace / "model"),
            "--alignment",
            str(workspace / "alignment"),
            "--out",
            str(out),
            "--overwrite",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "holds the input" in err and str(out) in err
    assert _tree(workspace) == before


@pytest.mark.parametrize("command", ["adapt", "distill"])
def test_train_commands_refuse_an_out_that_holds_the_inputs(workspace, capsys, command):
    from tokalign.cli import main

    before = _tree(workspace)
    model = str(workspace / "model")
    head = (
        ["adapt", "--model", model]
        if command == "adapt"
        else ["distill", "--student", model, "--teacher", model]
    )
    code = main(
        [
            *head,
            "--tokens",
            str(workspace / "tokens"),
            "--out",
            str(workspace),
            "--engine",
            "torch",
            "--dry-run",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "holds the input" in err
    assert not (workspace / "run.json").exists() and _tree(workspace) == before


def test_check_out_dir_allows_a_sibling_and_ignores_hub_ids(tmp_path):
    from tokalign_core.store.inputs import check_out_dir

    (tmp_path / "model").mkdir()
    check_out_dir(tmp_path / "out", [tmp_path / "model", "org/name", "builtin:qwen2", None])
    with pytest.raises(ValueError, match="holds the input"):
        check_out_dir(tmp_path, [tmp_path / "model"])


# ------------------------------------------------------------- corpus inputs (defect 12)


def _build(tmp_path, source, **kw):
    from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
    from tokalign_core.data.corpus import build_corpus
    from tokalign_core.store.artifacts import ArtifactStore

    cfg = CorpusConfig(
        sources=[SourceSpec(path=str(source), **kw)], n_shards=1, heldout_fraction=0.0
    )
    return build_corpus(cfg, ArtifactStore(tmp_path / "store"), progress=False)


def _docs(ref):
    from tokalign_core.data.corpus import read_texts, shard_files

    return [t for f in shard_files(ref) for t in read_texts(f)]


def test_binary_txt_is_ingested_with_a_warning(tmp_path, caplog):
    import logging

    src = tmp_path / "image.txt"
    src.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    (tmp_path / "ok.txt").write_text("plain text\n")
    with caplog.at_level(logging.WARNING):
        ref = _build(tmp_path, tmp_path)
    assert "image.txt looks binary" in caplog.text and "ok.txt" not in caplog.text
    assert ref.meta()["sources"][0]["binary_files"] == [str(src)]


def test_utf8_bom_keeps_the_first_jsonl_record_and_text_line(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"text": "first record"}\n{"text": "second"}\n')
    (tmp_path / "b.txt").write_bytes(bom + b"first line\nsecond line\n")
    ref = _build(tmp_path, tmp_path)
    docs = sorted(_docs(ref))
    assert docs == ["first line", "first record", "second", "second line"]
    assert ref.meta()["policy_totals"]["bad_json_lines"] == 0


def test_a_file_named_like_a_glob_is_read_as_that_file(tmp_path):
    (tmp_path / "data[1].txt").write_text("the literal file\n")
    (tmp_path / "data1.txt").write_text("what the glob would match\n")
    assert _docs(_build(tmp_path, tmp_path / "data[1].txt")) == ["the literal file"]
    # a real glob still works
    assert sorted(_docs(_build(tmp_path, tmp_path / "data*.txt"))) == [
        "the literal file",
        "what the glob would match",
    ]


def test_the_same_input_typed_as_another_path_gives_the_same_artifacts(tmp_path, monkeypatch):
    """Corpus (source path), tokenize (tokenizer path) and cooccur (tokens path) record the
    resolved path, so ``x``, ``./x`` and ``/abs/x`` give one artifact digest."""
    from tokalign_core.configs.cooccur import CooccurConfig
    from tokalign_core.configs.tokenize import TokenizeConfig
    from tokalign_core.embed.cooccur import build_cooccur
    from tokalign_core.model import toy
    from tokalign_core.store.artifacts import ArtifactStore
    from tokalign_core.vocab.tokenize import tokenize_corpus

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "src.txt").write_text("alpha beta gamma\n" * 30 + "delta\n")
    toy.train_bytelevel_bpe(["alpha beta gamma delta"] * 5, 270).save_pretrained(tmp_path / "tok")
    monkeypatch.chdir(tmp_path / "d")
    store = ArtifactStore(tmp_path / "store")
    refs = [_build(tmp_path, p) for p in ("src.txt", "./src.txt", tmp_path / "d" / "src.txt")]
    assert len({r.sha256 for r in refs}) == 1
    toks = [
        tokenize_corpus(refs[0], TokenizeConfig(tokenizer=t), store)
        for t in ("../tok", str(tmp_path / "tok"))
    ]
    assert toks[0].sha256 == toks[1].sha256
    rel = "../store/tokens/" + toks[0].path.rsplit("/", 1)[-1]
    coocs = [build_cooccur(t, CooccurConfig(), store) for t in (rel, toks[0].path)]
    assert coocs[0].sha256 == coocs[1].sha256


def test_one_default_artifact_root_for_every_command_and_the_flows():
    from pathlib import Path

    from tasks.caching import Workspace
    from tokalign.cli import DEFAULT_ARTIFACT_ROOT, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    defaults = {}
    for name, p in sub.choices.items():
        for action in p._actions:
            if "--artifact-root" in action.option_strings:
                defaults[name] = action.default
    assert {"corpus", "tokenize", "cooccur", "glove", "pretrain"} <= set(defaults)
    assert set(defaults.values()) == {DEFAULT_ARTIFACT_ROOT}
    assert Workspace().artifact_root == Path(DEFAULT_ARTIFACT_ROOT).resolve()
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"default `{DEFAULT_ARTIFACT_ROOT}`" in readme
    assert "runs/artifacts" not in readme


@pytest.mark.slow
def test_cooccur_with_dask_workers_prints_only_the_artifact_path(tmp_path, capsys):
    """The Dask progress bar goes to stderr; stdout is the artifact path alone (scripts
    read it), and --no-progress hides the bar."""
    from tokalign.cli import main
    from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
    from tokalign_core.configs.tokenize import TokenizeConfig
    from tokalign_core.data.corpus import build_corpus
    from tokalign_core.model import toy
    from tokalign_core.store.artifacts import ArtifactStore
    from tokalign_core.vocab.tokenize import tokenize_corpus

    src = tmp_path / "s.txt"
    src.write_text("\n".join(toy.stdlib_texts(80)))
    tok = tmp_path / "tok"
    toy.train_bytelevel_bpe(toy.stdlib_texts(80), 300).save_pretrained(tok)
    store = ArtifactStore(tmp_path / "store")
    corpus = build_corpus(
        CorpusConfig(sources=[SourceSpec(path=str(src))], n_shards=4), store, progress=False
    )
    tokens = tokenize_corpus(corpus, TokenizeConfig(tokenizer=str(tok)), store)
    capsys.readouterr()
    argv = ["cooccur", tokens.path, "--workers", "2", "--artifact-root", str(store.root)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.strip().startswith(str(store.root / "cooccur")) and len(out.splitlines()) == 1
    assert "[" in err  # the bar went to stderr
    assert main([*argv, "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "#" not in err
