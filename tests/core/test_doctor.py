"""Pre-flight doctor: sizes, specials, chat template, reachability, custom code (issue 4)."""

from __future__ import annotations

import json

import pytest

from tokalign import cli
from tokalign_core.configs.doctor import DoctorConfig
from tokalign_core.model import toy
from tokalign_core.model.doctor import (
    DoctorReport,
    chat_template_tokens,
    check_remote_code,
    diagnose,
    diagnose_pair,
    unreachable_tokens,
)
from tokalign_core.model.init import load_model


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory, bpe_tok):
    """A GPT-NeoX with 640 rows for the 600-token byte-level BPE (eos = bos = 0)."""
    path = tmp_path_factory.mktemp("doctor") / "good"
    toy.tiny_gpt_neox(640, hidden=16, layers=1, heads=2).save_pretrained(path)
    bpe_tok.save_pretrained(path)
    return path


def _tokenizer_without(bpe_tok, **drop):
    from transformers import PreTrainedTokenizerFast

    specials = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>"}
    for key in drop:
        specials.pop(key)
    return PreTrainedTokenizerFast(tokenizer_object=bpe_tok.backend_tokenizer, **specials)


def test_good_pair_has_no_blockers(good_folder):
    report = diagnose(str(good_folder), str(good_folder))
    assert report.blockers == []
    sizes = report.by_check("sizes")[0]
    assert sizes.severity == "ok" and "40 padding rows" in sizes.message
    emb = report.by_check("embeddings")[0]
    assert emb.detail == {"rows": 640, "dim": 16, "tied": False}


def test_tied_model_reported_tied(tmp_path, bpe_tok):
    toy.tiny_llama(640, hidden=16, layers=1, heads=2).save_pretrained(tmp_path)
    report = diagnose(str(tmp_path), bpe_tok)
    assert report.by_check("embeddings")[0].detail["tied"] is True


def test_mismatched_vocab_is_a_blocker(sp_tok, good_folder, capsys):
    report = diagnose(str(good_folder), sp_tok)  # 700 tokens, 640 rows
    [blocker] = [f for f in report.blockers if f.check == "sizes"]
    assert "700 tokens" in blocker.message and "640 rows" in blocker.message
    sp_tok_dir = good_folder.parent / "sp"
    sp_tok.save_pretrained(sp_tok_dir)
    # The tokenizer as the model's current one (e.g. a hand-edited folder): a blocker.
    assert cli.main(["doctor", str(good_folder), "--with-tokenizer", str(sp_tok_dir)]) == 1
    assert "BLOCKER" in capsys.readouterr().out


@pytest.fixture(scope="module")
def sp_dir(good_folder, sp_tok):
    path = good_folder.parent / "sp-target"
    sp_tok.save_pretrained(path)
    return path


def test_source_target_pair_is_checked_as_a_swap_not_as_a_match(good_folder, sp_dir, capsys):
    """`tokalign doctor SOURCE TARGET`: the target is the vocabulary the model will get,
    so a different size and other special ids are expected, not blockers."""
    report = diagnose_pair(str(good_folder), str(sp_dir))
    assert report.blockers == [], report.table()
    checks = {f.check for f in report.findings}
    assert {"source.sizes", "source.special_tokens", "target.special_tokens",
            "target.reachable", "pair.vocabulary"} <= checks
    [swap] = report.by_check("pair.vocabulary")
    assert "700" in swap.message and "640" in swap.message
    assert swap.detail["target_tokens"] == 700 and swap.detail["new_rows"] == 704
    [shared] = report.by_check("pair.shared_tokens")
    assert shared.severity == "ok" and shared.detail["n_shared"] > 0
    assert cli.main(["doctor", str(good_folder), str(sp_dir)]) == 0
    out = capsys.readouterr().out
    assert "0 blocker(s)" in out and "target" in out


def test_pair_target_without_eos_is_a_target_blocker(good_folder, bpe_tok):
    report = diagnose_pair(str(good_folder), _tokenizer_without(bpe_tok, eos_token=None))
    [blocker] = report.blockers
    assert blocker.check == "target.special_tokens" and "no eos" in blocker.message


def test_pair_with_a_too_small_source_tokenizer_is_a_source_blocker(good_folder, sp_dir):
    """The source side keeps the old checks: a source tokenizer larger than the model's
    matrix still blocks (with the side named)."""
    report = diagnose_pair(str(good_folder), str(sp_dir), source_tokenizer=str(sp_dir))
    assert [f.check for f in report.blockers] == ["source.sizes"]


def test_config_vocab_size_disagreement_is_a_warning(good_folder, bpe_tok):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(good_folder)
    model = load_model(str(good_folder))
    model.config = cfg
    cfg.vocab_size = 700
    report = diagnose(model, bpe_tok)
    assert any("config.vocab_size=700" in f.message for f in report.warnings)


def test_missing_eos_is_a_blocker(good_folder, bpe_tok):
    report = diagnose(str(good_folder), _tokenizer_without(bpe_tok, eos_token=None))
    [blocker] = report.blockers
    assert blocker.check == "special_tokens" and "no eos" in blocker.message


def test_config_special_ids_compared_with_the_tokenizer(good_folder, sp_tok, bpe_tok):
    model = load_model(str(good_folder))  # config eos 0
    model.config.eos_token_id = 5
    report = diagnose(model, bpe_tok)
    assert any("config.eos_token_id=5" in f.message for f in report.warnings)


def test_chat_template_tokens_must_be_in_the_vocabulary(good_folder, bpe_tok):
    tok = _tokenizer_without(bpe_tok)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                         "<|endoftext|>{% endfor %}")
    assert chat_template_tokens(tok) == ["<|endoftext|>", "<|im_start|>"]
    report = diagnose(str(good_folder), tok)
    [warn] = report.by_check("chat_template")
    assert warn.severity == "warning" and warn.detail["missing"] == ["<|im_start|>"]


def test_unreachable_tokens_found(bpe_tok):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(bpe_tok.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    orphan = "ĠorphanXYZ"  # in the vocabulary, but no merge builds it
    vocab[orphan] = len(vocab)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)),
                                  eos_token="<|endoftext|>")
    bad, checked = unreachable_tokens(tok)
    assert bad == [vocab[orphan]] and checked == len(tok) - 1
    bad, checked = unreachable_tokens(tok, max_check=100, seed=0)
    assert checked == 100


def test_remote_code_refused_without_the_flag(good_folder, tmp_path, capsys):
    import shutil

    remote = tmp_path / "remote"
    shutil.copytree(good_folder, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (remote / "config.json").write_text(json.dumps(cfg))
    report = diagnose(str(remote), str(remote))
    [blocker] = report.blockers
    assert blocker.check == "remote_code" and "--trust-remote-code" in blocker.message
    assert cli.main(["doctor", str(remote), "--json", "-"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["findings"][0]["severity"] == "blocker"
    with pytest.raises(ValueError, match="--trust-remote-code"):
        load_model(str(remote))  # `tokalign init` refuses it too


def test_remote_code_allowed_with_the_flag():
    class Cfg:
        auto_map = {"AutoModelForCausalLM": "modeling_x.X"}

    report = DoctorReport("m", "t")
    assert check_remote_code(report, Cfg(), trust_remote_code=True)
    assert report.findings[0].severity == "warning"


def test_json_report_file(good_folder, tmp_path):
    out = tmp_path / "r.json"
    assert cli.main(["doctor", str(good_folder), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {f["check"] for f in data["findings"]} >= {"sizes", "special_tokens", "embeddings",
                                                       "chat_template", "reachable"}


def test_doctor_flags_reach_the_checks(good_folder, tmp_path):
    """The DoctorConfig built from the flags is the one the checks run with: a smaller
    --max-check-tokens samples fewer ids, in the source and the pair report alike."""
    out = tmp_path / "r.json"
    assert cli.main(["doctor", str(good_folder), "--json", str(out),
                     "--max-check-tokens", "50", "--seed", "3"]) == 0
    reach = next(f for f in json.loads(out.read_text())["findings"] if f["check"] == "reachable")
    assert reach["detail"]["checked"] == 50 and "50 sampled ids" in reach["message"]
    pair = diagnose_pair(str(good_folder), str(good_folder), cfg=DoctorConfig(max_check_tokens=40))
    checked = {f.check: f.detail.get("checked") for f in pair.findings
               if f.check.endswith("reachable")}
    assert checked == {"source.reachable": 40, "target.reachable": 40}
