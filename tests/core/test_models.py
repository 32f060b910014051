"""Model specs (GGUF files, builtin aliases) and concurrent loads (issue 13).

The race: transformers 5 patches process-wide state while it builds a model
(``PreTrainedModel.tie_weights`` becomes a no-op, init functions are swapped) and restores
what it saved afterwards; two loads in two threads restore each other's patches. The flow
runs its six ``init-model`` tasks in threads, so tied models came out untied with their
LM head on the meta device."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch

from tokalign_core.configs.init import InitConfig
from tokalign_core.model import load as models
from tokalign_core.model import toy
from tokalign_core.model.init import initialize, is_tied, load_model, save_initialized

METHODS = ["mean", "fvt", "random", "random-permutation", "multivariate"]


@pytest.fixture(scope="module")
def tied_llama_dir(tmp_path_factory, bpe_tok):
    folder = tmp_path_factory.mktemp("tied-llama")
    model = toy.tiny_llama(640, hidden=32, layers=1, tie=True)
    model.save_pretrained(folder)
    bpe_tok.save_pretrained(folder)
    return folder


def _init(folder, target_tok, source_tok, method):
    # The flow's init-model task: initialize(load_model(spec), ...) on a fresh load.
    return initialize(load_model(str(folder)), target_tok, None, InitConfig(method=method),
                      source_tok).model


def _overlap_builds(monkeypatch, parties: int) -> threading.Barrier:
    """Make every model build wait for the others while transformers' global patches are
    active (inside ``from_pretrained``'s init contexts), so the loads overlap for certain
    instead of by chance. Under the loader's lock only one build can be there at a time:
    the barrier then times out once and every later wait passes at once."""
    import transformers.modeling_utils as mu

    assert hasattr(mu, "patch_output_recorders"), "transformers moved its build step"
    barrier = threading.Barrier(parties, timeout=3)
    original = mu.patch_output_recorders

    def wait_then_patch(model):
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return original(model)

    monkeypatch.setattr(mu, "patch_output_recorders", wait_then_patch)
    return barrier


def test_concurrent_inits_of_a_tied_llama_match_serial_ones(
    monkeypatch, tied_llama_dir, bpe_tok, sp_tok
):
    serial = {m: _init(tied_llama_dir, sp_tok, bpe_tok, m) for m in METHODS}
    _overlap_builds(monkeypatch, len(METHODS))
    results, errors = {}, []

    def run(method):
        try:
            results[method] = _init(tied_llama_dir, sp_tok, bpe_tok, method)
        except Exception as exc:  # collected: the assertion below names them
            errors.append(f"{method}: {exc!r}"[:300])

    threads = [threading.Thread(target=run, args=(m,)) for m in METHODS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for method, model in results.items():
        assert is_tied(model), method
        assert not any(p.is_meta for p in model.parameters()), method
        for (name, a), b in zip(model.state_dict().items(), serial[method].state_dict().values(),
                                   strict=True):
            assert torch.equal(a, b), (method, name)


def test_every_init_method_keeps_a_tied_model_tied_on_disk(tmp_path, tied_llama_dir, bpe_tok,
                                                           sp_tok):
    from safetensors import safe_open

    for method in METHODS:
        model = _init(tied_llama_dir, sp_tok, bpe_tok, method)
        out = save_initialized(model, sp_tok, tmp_path / method)
        with safe_open(out / "model.safetensors", "pt") as fh:
            keys = set(fh.keys())
        assert "lm_head.weight" not in keys, method  # one matrix stored
        reloaded = load_model(str(out))
        assert is_tied(reloaded) and reloaded.config.tie_word_embeddings, method


def test_resolve_model_passes_hub_ids_and_folders_through(tied_llama_dir):
    assert models.resolve_model("EleutherAI/pythia-1b") == "EleutherAI/pythia-1b"
    assert models.resolve_model(str(tied_llama_dir)) == str(tied_llama_dir)


def test_bad_model_specs_name_the_fix(tmp_path):
    with pytest.raises(models.ModelSpecError, match="does not exist"):
        models.resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(models.ModelSpecError, match="builtin:smollm2-135m"):
        models.resolve_model("builtin:no-such-model")
    assert models.resolve_model("builtin:qwen2") == "builtin:qwen2"  # a tokenizer alias


def _write_gguf(path, model, tok_text: list[str]) -> None:
    """A tiny Llama GGUF written with the ``gguf`` package (float32 tensors in llama.cpp's
    layout, a byte-level BPE vocabulary), so conversion is tested without the 93 MB file."""
    gguf = pytest.importorskip("gguf")
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_file_type(0)  # ALL_F32
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tok_text)
    w.add_token_types([1] * len(tok_text))
    w.add_token_merges(["t h"])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
             "output_norm.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied
        if key not in names:
            i, rest = key.split(".")[2], ".".join(key.split(".")[3:]).removesuffix(".weight")
            names[key] = f"blk.{i}.{per_layer[rest]}.weight"
        data = tensor.float().numpy()
        if key.endswith("q_proj.weight"):
            data = _llama_cpp_permute(data, heads)
        elif key.endswith("k_proj.weight"):
            data = _llama_cpp_permute(data, kv)
        w.add_tensor(names[key], np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp stores q/k rows interleaved per rotary pair; transformers undoes this on load.
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def test_gguf_is_converted_once_and_matches_the_original(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKALIGN_CACHE_DIR", str(tmp_path / "cache"))
    vocab = [chr(c) for c in range(33, 127)] + ["th"]  # printable bytes + one merge
    model = toy.tiny_llama(len(vocab), hidden=32, layers=1, tie=True)
    gguf_file = tmp_path / "tiny.F32.gguf"
    _write_gguf(gguf_file, model, vocab)

    folder = models.resolve_model(str(gguf_file))
    info = (models.converted_dir(gguf_file) / "gguf_source.json").read_text()
    assert '"quantization": "F32"' in info and "tied_embeddings\": true" in info
    assert "F32" in (models.converted_dir(gguf_file) / "README.md").read_text()
    converted = load_model(folder)
    assert is_tied(converted)
    pairs = zip(model.state_dict().items(), converted.state_dict().values(), strict=True)
    for (name, a), b in pairs:
        torch.testing.assert_close(a, b, msg=name)
    stamp = (models.converted_dir(gguf_file) / "model.safetensors").stat().st_mtime_ns
    assert models.resolve_model(str(gguf_file)) == folder  # cached: not converted again
    assert (models.converted_dir(gguf_file) / "model.safetensors").stat().st_mtime_ns == stamp
    from tokalign_core.vocab.tokenizers import load_tokenizer

    tok = load_tokenizer(str(gguf_file))  # the GGUF's own vocabulary, through the conversion
    assert tok.convert_tokens_to_ids(vocab) == list(range(len(vocab)))
    assert tok("the")["input_ids"][:1] == [vocab.index("th")]
    from tokalign_core.model.doctor import diagnose

    report = diagnose(str(gguf_file), str(gguf_file))  # the doctor takes the .gguf too
    assert report.by_check("embeddings")[0].detail["tied"] is True


def test_cli_keeps_deepspeeds_accelerator_probe_off_stdout():
    """Commands print their artifact JSON on stdout; loading any model imports DeepSpeed
    (through accelerate), whose GPU probe logs to stdout unless told the accelerator."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    build = ("import tempfile; from tokalign_core.model import load as models, toy; "
             "d = tempfile.mkdtemp(); "
             "toy.tiny_llama(16, hidden=8, layers=1, heads=2).save_pretrained(d); "
             "models.load_causal_lm(d)")
    before = subprocess.run([sys.executable, "-c", build], env=env, capture_output=True,
                            text=True, timeout=300)
    assert "Setting accelerator" in before.stdout  # the probe this guards against
    guarded = subprocess.run(
        [sys.executable, "-c", f"from tokalign.cli import _cpu_only_deepspeed; "
         f"_cpu_only_deepspeed(); {build}"],
        env=env, capture_output=True, text=True, timeout=300)
    assert guarded.returncode == 0 and guarded.stdout == "", guarded.stdout[-500:]
