"""Tiny pretraining: schedule, bits per byte, the content-hash cache, reload, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tokalign_core.store.artifacts import ArtifactStore
from tokalign_core.train import pretrain as pt


@pytest.fixture(scope="module")
def micro_texts():
    from tokalign_core.model import toy

    docs = toy.stdlib_texts(300, seed=1)
    return pt.TrainingTexts(train=docs[20:], eval={"en": docs[:20]}, source="stdlib")


@pytest.fixture(scope="module")
def micro_result(tmp_path_factory, micro_texts):
    store = ArtifactStore(tmp_path_factory.mktemp("store"))
    cfg = pt.preset("micro")
    return store, cfg, pt.pretrain(cfg, store, texts=micro_texts, progress=False)


def test_pretraining_follows_the_training_schedule(micro_texts):
    """Pretraining uses the training package's warm-up + cosine schedule, and logs the
    rate each step used: micro = 4 steps, 1 warm-up step, lr 1e-3, floor 0.1."""
    from tokalign_core.train.schedule import warmup_cosine

    class Recorder:
        def __init__(self):
            self.rows = []

        def log(self, metrics, step=None):
            self.rows.append((step, metrics))

        def close(self):
            pass

    cfg = pt.preset("micro")
    rec = Recorder()
    tok = pt.build_tokenizer(cfg, micro_texts.train)
    model = pt.build_model(cfg, len(tok), tok.eos_token_id, tok.eos_token_id)
    pt.train_loop(model, pt.token_stream(tok, micro_texts.train), cfg, rec, progress=False)
    lrs = [m["train/lr"] for _, m in rec.rows]
    by_hand = [1.0, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 3)),
               0.1 + 0.9 * 0.5 * (1 + math.cos(2 * math.pi / 3))]
    assert lrs == pytest.approx([1e-3 * f for f in by_hand])
    assert [warmup_cosine(s, 4, 1, 0.1) for s in range(4)] == pytest.approx(by_hand)
    assert all(math.isfinite(m["train/loss"]) and m["train/grad_norm"] > 0
               for _, m in rec.rows)


def test_config_rules():
    with pytest.raises(ValueError, match="divisible by heads"):
        pt.PretrainConfig(hidden=30, heads=4)
    with pytest.raises(ValueError, match="warmup_steps"):
        pt.PretrainConfig(steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="no training text"):
        pt.PretrainConfig(text_langs=(), code_langs=())
    with pytest.raises(ValueError, match="unknown pretrain preset"):
        pt.preset("huge")
    assert pt.preset("demo", steps=40).warmup_steps == 4 and pt.preset("demo").steps == 400
    assert pt.preset("demo", steps=1).warmup_steps == 0


def test_token_stream_appends_eos_after_each_doc(bpe_tok):
    stream = pt.token_stream(bpe_tok, ["ab", "cd"])
    eos = bpe_tok.eos_token_id
    a = bpe_tok("ab", add_special_tokens=False)["input_ids"]
    c = bpe_tok("cd", add_special_tokens=False)["input_ids"]
    assert stream.tolist() == [*a, eos, *c, eos]


def test_bits_per_byte_of_a_uniform_model(bpe_tok):
    """Zero output weights -> uniform next-token distribution -> NLL = ln V per token, so
    bpb = (tokens predicted) * log2 V / bytes; windows of 4 exercise the splitting."""
    import torch

    model = pt.build_model(pt.preset("micro"), len(bpe_tok), bpe_tok.eos_token_id,
                           bpe_tok.eos_token_id).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    texts = ["def f(x):\n    return x", "Der schnelle Fuchs."]
    n_tokens = sum(len(bpe_tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    want = n_tokens * math.log2(len(bpe_tok)) / sum(len(t.encode()) for t in texts)
    for seq_len in (4, 64):
        got = pt.bits_per_byte(model, bpe_tok, texts, seq_len=seq_len, batch_size=3)
        assert got == pytest.approx(want, rel=1e-5)


def test_pretrain_saves_a_loadable_folder(micro_result, micro_texts):
    store, cfg, res = micro_result
    assert not res.cached
    model, tok = pt.load_pretrained(res.ref)
    assert model.config.model_type == "gpt_neox" and len(tok) == model.config.vocab_size
    assert len(tok) <= cfg.vocab_size
    meta = res.ref.meta()
    assert meta["key"] == res.key and meta["texts_source"] == "stdlib"
    assert math.isfinite(res.metrics["eval_bpb/en"]) and res.metrics["eval_bpb/en"] > 0
    # The saved weights give the same held-out score the run reported.
    again = pt.bits_per_byte(model, tok, micro_texts.eval["en"], cfg.seq_len)
    assert again == pytest.approx(res.metrics["eval_bpb/en"], rel=1e-5)
    assert (res.ref.dir / "model.safetensors").exists()
    assert not list(res.ref.dir.glob("*.bin")) and not list(res.ref.dir.glob("*.pt"))


def test_cache_hit_skips_training(micro_result, micro_texts, monkeypatch):
    store, cfg, first = micro_result

    def boom(*a, **k):
        raise AssertionError("training ran although the model was cached")

    monkeypatch.setattr(pt, "train_loop", boom)
    hit = pt.pretrain(cfg, store, texts=micro_texts, progress=False)
    assert hit.cached and hit.ref == first.ref and hit.metrics == first.metrics
    # Thread count is not part of the key.
    assert pt.pretrain(cfg.model_copy(update={"threads": 1}), store, texts=micro_texts,
                       progress=False).cached


def test_cache_key_changes_with_texts_config_and_code(micro_texts, monkeypatch):
    cfg = pt.preset("micro")
    k = pt.cache_key(cfg, micro_texts)
    other_texts = pt.TrainingTexts(micro_texts.train[:-1], micro_texts.eval, "stdlib")
    assert pt.cache_key(cfg, other_texts) != k
    assert pt.cache_key(cfg.model_copy(update={"seed": 1}), micro_texts) != k
    other_eval = pt.TrainingTexts(micro_texts.train, {"de": micro_texts.eval["en"]}, "x")
    assert pt.cache_key(cfg, other_eval) != k
    monkeypatch.setattr(pt, "code_digest", lambda: "0" * 64)
    assert pt.cache_key(cfg, micro_texts) != k


def test_corrupted_cache_entry_is_retrained(tmp_path, micro_texts):
    store = ArtifactStore(tmp_path)
    cfg = pt.preset("micro", steps=2)
    first = pt.pretrain(cfg, store, texts=micro_texts, progress=False)
    weights = first.ref.dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # same size, different bytes: only the checksum catches it
    weights.write_bytes(bytes(data))
    assert pt.find_cached(store, first.key) is None
    moved = Path(first.ref.path + ".corrupt-0")  # the store's quarantine: kept beside
    assert not first.ref.dir.exists() and moved.is_dir()
    second = pt.pretrain(cfg, store, texts=micro_texts, progress=False)
    assert not second.cached and second.ref.dir.exists()
    # Same seed, one thread: the retrained weights are the original, undamaged ones.
    from tokalign_core.store.artifacts import verify

    verify(second.ref)
    assert json.loads((second.ref.dir / "MANIFEST.json").read_text())["model.safetensors"] == \
        json.loads((moved / "MANIFEST.json").read_text())["model.safetensors"]
    assert pt.pretrain(cfg, store, texts=micro_texts, progress=False).cached


def test_load_training_texts_mixes_prose_and_code(tmp_path):
    from tokalign_core.data.extract import Doc
    from tokalign_core.data.mix import write_jsonl

    corpus, evald = tmp_path / "corpus", tmp_path / "eval"
    write_jsonl(corpus / "en.man.jsonl", [Doc("m" * 100, "en", "man", str(i)) for i in range(50)])
    write_jsonl(corpus / "en.doc.jsonl", [Doc("d" * 100, "en", "doc", str(i)) for i in range(50)])
    write_jsonl(corpus / "de.man.jsonl", [Doc("x" * 100, "de", "man", str(i)) for i in range(50)])
    write_jsonl(corpus / "en.help.jsonl", [Doc("h" * 100, "en", "help", str(i)) for i in range(2)])
    write_jsonl(corpus / "python.code.jsonl",
                [Doc("c" * 100, "python", "code", str(i)) for i in range(50)])
    write_jsonl(evald / "en.jsonl", [Doc("e" * 100, "en", "man", "z")])
    cfg = pt.PretrainConfig(train_bytes=2000, code_fraction=0.25, steps=2, warmup_steps=0)
    t = pt.load_training_texts(cfg, corpus)
    assert t.source == "corpus" and t.eval == {"en": ["e" * 100]}
    counts = {ch: sum(x[0] == ch for x in t.train) for ch in "hmdxc"}
    # 1500 B prose, smallest file first: help 2 docs (share 500, uses 200), doc 6 (share
    # 1300 // 2 = 650), man 7 (share 700); code 500 B -> 5 docs; German not taken.
    assert counts == {"h": 2, "d": 6, "m": 7, "x": 0, "c": 5}


def test_load_training_texts_falls_back_to_stdlib(tmp_path, caplog):
    cfg = pt.PretrainConfig(train_bytes=20_000, eval_bytes=2_000, steps=2, warmup_steps=0)
    t = pt.load_training_texts(cfg, tmp_path / "nothing")
    assert t.source == "stdlib" and t.train and t.eval["stdlib"]
    assert not set(t.train) & set(t.eval["stdlib"])
    assert "no benchmark corpus" in caplog.text


def test_cli_pretrain_help_and_run(tmp_path, capsys):
    from tokalign.cli import main

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    help_text = capsys.readouterr().out
    for opt in ("--preset", "--artifacts", "--corpus", "--steps", "--force", "default:"):
        assert opt in help_text
    assert main(["pretrain", "--preset", "micro", "--steps", "2", "--artifacts",
                 str(tmp_path / "a"), "--corpus", str(tmp_path), "--no-progress",
                 "--log", str(tmp_path / "log.jsonl")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cached"] is False and (tmp_path / "log.jsonl").read_text().count("\n") >= 2
    assert main(["pretrain", "--preset", "micro", "--corpus", str(tmp_path / "missing"),
                 "--artifacts", str(tmp_path / "a")]) == 2


@pytest.mark.slow
def test_teacher_with_qwen2_tokenizer(tmp_path, micro_texts):
    cfg = pt.preset("teacher", steps=2, warmup_steps=0, hidden=16, heads=4, layers=1,
                    seq_len=16, batch_size=2)
    res = pt.pretrain(cfg, tmp_path, texts=micro_texts, progress=False)
    model, tok = pt.load_pretrained(res.ref)
    assert len(tok) >= 151_643 and model.config.vocab_size == len(tok)


def test_build_model_is_seeded_per_call_even_from_two_threads():
    """The demo pretrains the source model and the teacher in two threads at once: each
    build must draw its weights from its own seed, not from whatever the other thread left
    in torch's global generator, and must leave the caller's generator untouched."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    cfg = pt.preset("micro")

    def weights(seed: int) -> list:
        model = pt.build_model(cfg.model_copy(update={"seed": seed}), 300, 0, 0)
        return [p.detach().clone() for p in model.parameters()]

    want = {seed: weights(seed) for seed in (0, 1)}
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with ThreadPoolExecutor(2) as pool:
        for _ in range(4):
            got = dict(zip((0, 1), pool.map(weights, (0, 1)), strict=True))
            for seed in (0, 1):
                assert all(torch.equal(a, b) for a, b in zip(got[seed], want[seed], strict=True))
    assert torch.equal(torch.get_rng_state(), before)
    assert not all(torch.equal(a, b) for a, b in zip(want[0], want[1], strict=True))
