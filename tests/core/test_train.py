"""The training entry point: stage-1 parameter selection, DeepSpeed ZeRO-1 on CPU without
JIT builds, loss going down, bit-identical resume, torch == DeepSpeed, distillation modes.

DeepSpeed initialisation costs seconds, so one uninterrupted 6-step run (module fixture)
serves several assertions."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tokalign_core.configs.distill import DistillConfig
from tokalign_core.configs.train import TrainConfig
from tokalign_core.model import toy
from tokalign_core.train.data import write_tokens_artifact
from tokalign_core.train.engine import grad_accumulation
from tokalign_core.train.loop import run_training
from tokalign_core.train.schedule import cosine_factor
from tokalign_core.train.stages import embedding_and_head_parameters, set_trainable

torch.set_num_threads(1)

FAST_STAGES = [{"name": "emb", "trainable": "embeddings", "lr": 2e-2},
               {"name": "full", "trainable": "all", "lr": 2e-2}]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, bpe_tok, texts):
    """A tokens artifact (2 shards + heldout) and two tiny models saved with bpe_tok."""
    root = tmp_path_factory.mktemp("train")
    docs = [bpe_tok(t)["input_ids"] for t in texts[:260]]
    write_tokens_artifact(root / "tokens", [docs[:100], docs[100:220]], heldout=docs[220:],
                          vocab_size=len(bpe_tok))
    for name, model in [("neox", toy.tiny_gpt_neox(len(bpe_tok), hidden=32)),
                        ("llama", toy.tiny_llama(len(bpe_tok), hidden=32, tie=True))]:
        model.save_pretrained(root / name)
        bpe_tok.save_pretrained(root / name)
    return root


@pytest.fixture(scope="module")
def no_jit_builds():
    """Any DeepSpeed C++ extension build fails the test (and is recorded)."""
    from deepspeed.ops.op_builder.builder import OpBuilder

    calls: list[str] = []

    def refuse(self, *a, **k):
        calls.append(type(self).__name__)
        raise RuntimeError(f"unexpected DeepSpeed extension build: {type(self).__name__}")

    saved = OpBuilder.load, OpBuilder.jit_load
    OpBuilder.load = OpBuilder.jit_load = refuse
    yield calls
    OpBuilder.load, OpBuilder.jit_load = saved


def _cfg(workdir: Path, out: str, model: str = "neox", **kw) -> TrainConfig:
    base = dict(seq_len=32, micro_batch_size=2, tokens_per_step=128, total_steps=6,
                checkpoint_every=2, stages=FAST_STAGES, eval_blocks=4)
    base.update(kw)
    return TrainConfig.tiny(str(workdir / model), str(workdir / "tokens"),
                            str(workdir / out), **base)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def ds_run(workdir, no_jit_builds):
    """Uninterrupted DeepSpeed ZeRO-1 run: 3 embedding-only steps then 3 full steps."""
    from transformers import AutoModelForCausalLM

    before = {k: v.clone() for k, v in
              AutoModelForCausalLM.from_pretrained(workdir / "neox").state_dict().items()}
    snaps: dict[int, dict[str, torch.Tensor]] = {}
    import tokalign_core.train.loop as train_mod

    real_build = train_mod.build_engine
    engines = []

    def spy_build(*a, **k):
        engines.append(real_build(*a, **k))
        return engines[-1]

    def on_step(info):
        module = engines[-1].module
        snaps[info.global_step] = {k: v.detach().clone() for k, v in module.state_dict().items()}

    train_mod.build_engine = spy_build
    try:
        result = run_training(_cfg(workdir, "ds"), on_step=on_step)
    finally:
        train_mod.build_engine = real_build
    return result, before, snaps, engines


def test_cosine_schedule_by_hand():
    # 100 steps, 3 warmup: 1/3, 2/3, 1 then cosine from 1 down towards 0.
    assert [cosine_factor(s, 100, 0.03, 0.0) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1])
    assert cosine_factor(3, 100, 0.03, 0.0) == pytest.approx(1.0)
    mid = 3 + 97 / 2
    assert cosine_factor(int(mid), 100, 0.03, 0.0) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * (int(mid) - 3) / 97)))
    assert cosine_factor(99, 100, 0.03, 0.1) > 0.1


def test_grad_accumulation_reaches_tokens_per_step(workdir):
    cfg = _cfg(workdir, "x", tokens_per_step=2_097_152, seq_len=2048, micro_batch_size=4)
    assert grad_accumulation(cfg, world=8) == 32  # 2M / (4 * 2048 * 8)
    assert grad_accumulation(_cfg(workdir, "x", tokens_per_step=10), world=1) == 1


def test_stage1_selection_by_module_identity():
    neox = toy.tiny_gpt_neox(50, hidden=16, layers=1)
    got = {id(p) for p in embedding_and_head_parameters(neox)}
    assert got == {id(neox.gpt_neox.embed_in.weight), id(neox.lm_head.weight)}
    tied = toy.tiny_llama(50, hidden=16, layers=1, tie=True)
    params = set_trainable(tied, "embeddings")
    # Tied: one matrix, and it *is* lm_head's weight (the reference's substring rule
    # "embed" in name would freeze lm_head).
    assert len(params) == 1 and params[0] is tied.lm_head.weight
    assert tied.lm_head.weight.requires_grad
    assert not any(p.requires_grad for n, p in tied.named_parameters() if "layers" in n)
    untied = toy.tiny_llama(50, hidden=16, layers=1, tie=False)
    names = {n for n, p in untied.named_parameters() if id(p) in
             {id(q) for q in set_trainable(untied, "embeddings")}}
    assert names == {"model.embed_tokens.weight", "lm_head.weight"}
    assert len(set_trainable(untied, "all")) == len(list(untied.parameters()))


def test_stage1_includes_head_bias():
    class Biased(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.mid = torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 10, bias=True)

        def get_input_embeddings(self):
            return self.emb

        def get_output_embeddings(self):
            return self.head

    m = Biased()
    got = {id(p) for p in set_trainable(m, "embeddings")}
    assert got == {id(m.emb.weight), id(m.head.weight), id(m.head.bias)}
    assert not m.mid.weight.requires_grad


def test_deepspeed_stage1_updates_exactly_embeddings_and_head(ds_run, no_jit_builds):
    result, before, snaps, engines = ds_run
    assert no_jit_builds == []
    assert type(engines[0].engine.optimizer).__name__ == "DeepSpeedZeroOptimizer"
    after_stage1 = snaps[3]
    changed = {k for k in before if not torch.equal(before[k], after_stage1[k])}
    assert changed == {"gpt_neox.embed_in.weight", "lm_head.weight"}
    after_stage2 = snaps[6]
    frozen_then = {k for k in before if "layers" in k and before[k].dtype.is_floating_point
                   and not torch.equal(after_stage1[k], after_stage2[k])}
    assert "gpt_neox.layers.0.attention.query_key_value.weight" in frozen_then
    assert [h["stage"] for h in result.history] == [1, 1, 1, 2, 2, 2]


def test_deepspeed_run_learns_logs_and_saves(ds_run, workdir):
    result, *_ = ds_run
    out = workdir / "ds"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for key in ("lr", "grad_norm", "tokens_per_s", "stage", "epoch"):
        assert key in steps[0]
    assert steps[0]["lr"] == pytest.approx(2e-2)  # no warmup at 3 steps: peak first
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.2
    final_eval = [r for r in lines if "eval_loss" in r][-1]["eval_loss"]
    assert final_eval < math.log(600) - 0.2  # below the uniform model's loss
    # Each step reads 2 micro-batches of 2 blocks: the cursor counts 4 blocks per step.
    assert result.cursor == 24 and result.global_step == 6
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(result.final_model)
    assert len(AutoTokenizer.from_pretrained(result.final_model)) == 600
    assert model.get_output_embeddings().weight.shape[0] == 600
    assert (result.final_model / "README.md").exists()
    kept = sorted(p.name for p in (out / "checkpoints").glob("step*"))
    assert kept == ["step00000004", "step00000006"]  # keep_checkpoints=2


def test_resume_after_crash_is_bit_identical(ds_run, workdir, no_jit_builds):
    result, *_ = ds_run

    class Crash(Exception):
        pass

    def crash_at_5(info):
        if info.global_step == 5:
            raise Crash

    cfg = _cfg(workdir, "resume")
    with pytest.raises(Crash):
        run_training(cfg, on_step=crash_at_5)
    assert not (workdir / "resume" / "model").exists()
    resumed = run_training(cfg)
    assert resumed.resumed_from == "step00000004"  # mid stage 2
    assert [h["step"] for h in resumed.history] == [5, 6]
    assert resumed.cursor == result.cursor
    a, b = _weights(result.final_model), _weights(resumed.final_model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert no_jit_builds == []


def test_resume_at_stage_boundary_and_torch_engine_matches_deepspeed(ds_run, workdir):
    result, *_ = ds_run

    def crash_at_4(info):
        if info.global_step == 4:
            raise KeyboardInterrupt

    cfg = _cfg(workdir, "torch", engine="torch", checkpoint_every=10)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, on_step=crash_at_4)
    resumed = run_training(cfg)
    assert resumed.resumed_from == "step00000003"  # the end of stage 1
    a, b = _weights(result.final_model), _weights(resumed.final_model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)  # float sums differ


def test_llama_tied_head_trains_in_stage1(workdir):
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(workdir / "llama").state_dict()
    res = run_training(_cfg(workdir, "llama-out", model="llama", total_steps=2,
                            stage_split=1.0, save_final=True))
    after = _weights(res.final_model)
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    for k, v in after.items():
        if k != "model.embed_tokens.weight" and k in before:
            assert torch.equal(before[k], v), k


def _assert_tied_checkpoint(folder: Path) -> None:
    """One matrix on disk, and it reloads tied."""
    from tokalign_core.model.init import is_tied, load_model

    assert "lm_head.weight" not in _weights(folder)
    reloaded = load_model(str(folder))
    assert is_tied(reloaded) and reloaded.config.tie_word_embeddings


@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
def test_tied_llama_stays_tied_through_both_stages_and_distillation(workdir, engine,
                                                                     no_jit_builds):
    adapted = run_training(_cfg(workdir, f"tied-{engine}", model="llama", engine=engine,
                                total_steps=2, stage_split=0.5, save_final=True))
    _assert_tied_checkpoint(adapted.final_model)
    distilled = run_training(_cfg(
        workdir, f"tied-dist-{engine}", model="llama", engine=engine, mode="distill",
        total_steps=1, stage_split=0.0, save_final=True,
        distill=DistillConfig(teacher=str(workdir / "neox"), chunk_size=8)))
    _assert_tied_checkpoint(distilled.final_model)


def test_token_distillation_with_itself_has_zero_kl(workdir):
    cfg = _cfg(workdir, "dist", engine="torch", mode="distill", total_steps=1, stage_split=0.0,
               distill=DistillConfig(teacher=str(workdir / "neox"), chunk_size=5))
    res = run_training(cfg)
    assert res.history[0]["kl"] == 0.0  # step 1: student == teacher
    assert res.history[0]["loss"] == pytest.approx(res.history[0]["ce"])


def test_topk_and_sentence_distillation_run(workdir):
    teacher = str(workdir / "llama")
    cfg = _cfg(workdir, "dist-topk", engine="torch", mode="distill", total_steps=2,
               stage_split=0.0, distill=DistillConfig(teacher=teacher, top_k=8, kl_weight=0.5))
    res = run_training(cfg)
    assert all(h["kl"] > 0 for h in res.history)
    cache = workdir / "dist-topk" / "teacher_cache" / "distill-rank0-of-1"
    n_blocks = 2 * 2 * 2  # steps * gas * micro (one rank): distinct blocks of one epoch
    assert np.load(cache / "topk_ids.npy").shape == (n_blocks, 32, 8)
    cfg = _cfg(workdir, "dist-sent", engine="torch", mode="sentence-distill", total_steps=1,
               stage_split=0.0, distill=DistillConfig(teacher=teacher, prompt_len=8))
    res = run_training(cfg)
    keep = np.load(workdir / "dist-sent" / "teacher_cache" /
                   "sentence-distill-rank0-of-1" / "keep.npy")
    assert not keep[:, :8].any() and keep[:, 8].all()
    assert "kl" not in res.history[0]


def test_config_rules(workdir):
    with pytest.raises(ValueError, match="needs a 'distill' section"):
        _cfg(workdir, "x", mode="distill")
    with pytest.raises(ValueError, match="prompt_len"):
        _cfg(workdir, "x", mode="sentence-distill",
             distill=DistillConfig(teacher="t", prompt_len=32))
    assert _cfg(workdir, "x", total_steps=7, stage_split=0.6).stage_steps() == (4, 3)


def test_vocab_mismatch_is_a_clear_error(workdir, tmp_path):
    art = write_tokens_artifact(tmp_path / "tok", [[list(range(590, 640)) * 3]])
    cfg = TrainConfig.tiny(str(workdir / "neox"), str(art), str(tmp_path / "o"), engine="torch")
    with pytest.raises(ValueError, match="contains id 639 but the tokenizer has 600"):
        run_training(cfg)


def test_cli_writes_run_json_and_dry_run(workdir, capsys):
    from tokalign.cli import main

    out = workdir / "cli"
    rc = main(["adapt", "--model", str(workdir / "neox"), "--tokens", str(workdir / "tokens"),
               "--out", str(out), "--steps", "4", "--seq-len", "32", "--dry-run"])
    assert rc == 0
    cfg = TrainConfig.load(out / "run.json")
    assert cfg.total_steps == 4 and cfg.mode == "adapt" and cfg.stages[0].lr == 6.4e-4
    assert "tokalign_core.train" in capsys.readouterr().out
    rc = main(["distill", "--student", str(workdir / "neox"), "--teacher", str(workdir / "llama"),
               "--tokens", str(workdir / "tokens"), "--out", str(workdir / "cli2"),
               "--level", "sentence", "--launcher", "deepspeed", "--num-gpus", "2",
               "--dry-run"])
    assert rc == 0
    cfg = TrainConfig.load(workdir / "cli2" / "run.json")
    assert cfg.mode == "sentence-distill" and cfg.stage_split == 0.0
    printed = capsys.readouterr().out
    assert "deepspeed --num_gpus 2 --module tokalign_core.train" in printed


@pytest.mark.slow
def test_cli_subprocess_end_to_end(workdir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = workdir / "cli-run"
    cmd = [sys.executable, "-m", "tokalign_core", "adapt", "--model", str(workdir / "neox"),
           "--tokens", str(workdir / "tokens"), "--out", str(out), "--steps", "2",
           "--seq-len", "32", "--micro-batch", "2", "--tokens-per-step", "64"]
    subprocess.run(cmd, check=True, env=env, timeout=600)
    assert (out / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_two_rank_cpu_run_with_torchrun(workdir, ds_run):
    """ZeRO-1 on two gloo ranks: same global batch as the 1-rank run, so the same model."""
    out = workdir / "two-rank"
    cfg = _cfg(workdir, "two-rank", micro_batch_size=1)
    cfg.save(workdir / "two-rank.json")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29733", "-m",
                    "tokalign_core.train", "--config", str(workdir / "two-rank.json")],
                   check=True, env=env, timeout=900)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]
    a = _weights(ds_run[0].final_model)
    b = _weights(out / "model")
    for k in a:  # 2 ranks x micro 1 x gas 2 reads the same blocks as 1 rank x micro 2 x gas 2
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)


def test_threads_setting_overrides_the_environment(workdir, monkeypatch):
    """``threads`` wins over OMP_NUM_THREADS (the demo gives distillation both cores while
    the pipeline pins everything else to one)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        run_training(_cfg(workdir, "threads", engine="torch", total_steps=1, threads=2,
                          save_final=False))
        assert torch.get_num_threads() == 2
        run_training(_cfg(workdir, "threads-env", engine="torch", total_steps=1,
                          save_final=False))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)


def test_resume_refuses_checkpoints_others_could_write(workdir):
    """DeepSpeed unpickles checkpoints on resume: a checkpoint tree that is not ours or is
    group/world-writable is refused before anything is loaded (issue 16 item 4); the
    trainer's own checkpoints (written under umask 002) stay resumable."""
    from tokalign_core.train.checkpoint import UnsafeCheckpointError

    def crash_at_2(info):
        if info.global_step == 2:
            raise KeyboardInterrupt

    cfg = _cfg(workdir, "unsafe", engine="torch", total_steps=4, checkpoint_every=1)
    old = os.umask(0o002)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_training(cfg, on_step=crash_at_2)
    finally:
        os.umask(old)
    root = Path(cfg.out_dir) / "checkpoints"
    assert root.stat().st_mode & 0o777 == 0o700
    victim = next(p for p in sorted(root.rglob("*")) if p.is_file())
    assert not victim.stat().st_mode & 0o022, oct(victim.stat().st_mode)
    os.chmod(victim, 0o666)
    with pytest.raises(UnsafeCheckpointError, match="group- or world-writable"):
        run_training(cfg)
    os.chmod(victim, 0o644)
    if os.geteuid() == 0:  # only root can hand a file to another user
        os.chown(victim, 12345, 12345)
        with pytest.raises(UnsafeCheckpointError, match="owned by uid 12345"):
            run_training(cfg)
        os.chown(victim, 0, 0)
    os.chmod(cfg.out_dir, 0o777)
    with pytest.raises(UnsafeCheckpointError, match="world-writable"):
        run_training(cfg)
    os.chmod(cfg.out_dir, 0o755)
    assert run_training(cfg).resumed_from == "step00000002"
