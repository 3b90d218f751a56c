"""Training: run configs and recipes, optimizer groups, the loop, DDP, checkpoints and resuming, init_from, CLI."""

import contextlib
import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ssa_rvos.build import build_model, ssa_tiny
from ssa_rvos.checkpoint import load_model, read_checkpoint
from ssa_rvos.cli import main
from ssa_rvos.training.clips import build_batches
from ssa_rvos.training.config import TrainConfig, list_recipes, load_config, save_config
from ssa_rvos.training.losses import SSACriterion
from ssa_rvos.training.trainer import (
    accumulate_gradients,
    build_optimizer,
    build_scheduler,
    latest_checkpoint,
    load_init_weights,
    lr_multiplier,
    parameter_groups,
    setup_distributed,
    train,
    wrap_ddp,
)


def _tiny(tmp_path, *overrides):
    return load_config("tiny_cpu", [f"output_dir={tmp_path / 'run'}", *overrides])


# ------------------------------------------------------------------------------------------------ config


def test_defaults_are_the_released_mevis_config():
    c = TrainConfig()
    assert (c.optim.lr, c.optim.weight_decay, c.optim.backbone_lr_multiplier, c.optim.clip_grad_norm) == (5e-5, 0.05, 0.1, 0.01)
    assert (c.optim.max_steps, c.optim.lr_steps, c.optim.gamma) == (75000, (55000, 70000), 0.1)
    assert (c.optim.warmup_steps, c.optim.warmup_factor) == (10, 1.0)
    assert (c.batch_size, c.data.num_frames, c.data.frame_window, c.amp) == (8, 8, 10, "fp16")
    assert [(d.name, d.root) for d in c.data.datasets] == [("mevis", "datasets/mevis")]
    assert (c.model.preset, c.model.clip_weights) == ("ssa_convnext_large", "laion2b_s29b_b131k_ft_soup")


def test_recipes_say_what_they_should():
    assert set(list_recipes()) >= {"mevis_official", "mevis_paper", "joint_mevis_ytvos", "refcoco_pretrain", "ytvos",
                                   "tiny_cpu"}
    official = load_config("mevis_official")
    assert (official.loss.sim_weight, official.loss.sim_frame_order) == (1.0, "reordered")
    assert (official.optim.lr, official.optim.max_steps, official.optim.lr_steps) == (5e-5, 75000, (55000, 70000))
    assert (official.batch_size, official.data.num_frames, official.amp) == (8, 8, "fp16")
    paper = load_config("mevis_paper")
    assert (paper.optim.lr, paper.optim.max_steps) == (5e-4, 50000)
    assert (paper.loss.sim_weight, paper.loss.sim_frame_order) == (0.5, "original")
    assert all(s < 50000 for s in paper.optim.lr_steps) and paper.batch_size == 8
    joint = load_config("joint_mevis_ytvos")
    assert [(d.name, d.ratio) for d in joint.data.datasets] == [("mevis", 1.0), ("ytvos", 0.6)]
    assert joint.optim.max_steps == 75000
    coco = load_config("refcoco_pretrain")
    assert {d.name for d in coco.data.datasets} == {"refcoco", "refcoco+", "refcocog"}
    assert (coco.data.num_frames, coco.batch_size, coco.optim.max_steps, coco.optim.lr_steps) == (1, 32, 100000,
                                                                                                  (40000, 85000))
    ytvos = load_config("ytvos")
    ratios = {d.name: d.ratio for d in ytvos.data.datasets}
    assert ratios["ytvos"] == 1.0 and sum(r for n, r in ratios.items() if n.startswith("refcoco")) == pytest.approx(0.4)
    assert ytvos.data.pseudo_video and (ytvos.optim.max_steps, ytvos.optim.lr_steps) == (25000, (20000,))
    tiny = load_config("tiny_cpu")
    assert tiny.model.preset == "ssa_tiny" and tiny.model.clip_weights is None
    assert [d.name for d in tiny.data.datasets] == ["synthetic"] and tiny.amp == "off"
    synthref, stage2 = load_config("synthref"), load_config("synthref_stage2")
    assert synthref.model.preset == "ssa_tiny" and not synthref.data.augment and synthref.seed == 0
    # stage 2 is stage 1 again (same data, losses, schedule), started from stage 1's weights on other clips
    assert stage2.seed == 1 and stage2.output_dir == "runs/synthref_stage2" and stage2.model.init_from is None
    assert (stage2.data, stage2.loss, stage2.optim) == (synthref.data, synthref.loss, synthref.optim)
    for name in list_recipes():  # every recipe's roots are relative (datasets/<name>)
        assert all(not os.path.isabs(d.root) for d in load_config(name).data.datasets)


def test_yaml_delta_with_base_inheritance(tmp_path):
    (tmp_path / "parent.yaml").write_text("base: tiny_cpu\noptim:\n  lr: 5e-5\n  lr_steps: [7]\namp: off\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("base: ../parent.yaml\nbatch_size: 4\ndata:\n  num_frames: 3\n")
    c = load_config(tmp_path / "sub" / "child.yaml")
    assert c.optim.lr == 5e-5 and isinstance(c.optim.lr, float)  # YAML 1.2 number, not the string "5e-5"
    assert c.optim.lr_steps == (7,) and c.amp == "off"  # "off" stays a string
    assert c.batch_size == 4 and c.data.num_frames == 3
    assert c.model.preset == "ssa_tiny" and c.data.synthetic_size == (64, 64)  # from tiny_cpu
    assert c.optim.weight_decay == 0.05  # from the defaults in code


def test_dotted_overrides_with_list_index():
    c = load_config("joint_mevis_ytvos", ["optim.lr=1e-4", "data.datasets.1.root=/data/ytvos", "data.datasets.0.ratio=2",
                                          "optim.lr_steps=[10, 20]", "model.init_from=m2f.pth", "eval.every=100"])
    assert c.optim.lr == 1e-4 and c.optim.lr_steps == (10, 20)
    assert c.data.datasets[1].root == "/data/ytvos" and c.data.datasets[0].ratio == 2.0
    assert c.model.init_from == "m2f.pth" and c.eval.every == 100
    assert load_config("tiny_cpu", ["model.clip_weights=null"]).model.clip_weights is None


@pytest.mark.parametrize("override, key", [
    ("optim.lrr=1", "optim.lrr"),
    ("data.datasets.0.rooot=x", "data.datasets.0.rooot"),
    ("data.datasets.3.root=x", "data.datasets.3.root"),
    ("nonsense=1", "nonsense"),
    ("model.preset.name=x", "model.preset.name"),
])
def test_unknown_override_keys_are_named(override, key):
    with pytest.raises(ValueError, match=f"unknown config key '{key}'"):
        load_config("tiny_cpu", [override])


def test_unknown_yaml_keys_and_bad_values_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: tiny_cpu\noptim:\n  lr: 1e-4\n  warmup_iters: 3\n")
    with pytest.raises(ValueError, match="unknown config key 'optim.warmup_iters'"):
        load_config(bad)
    bad.write_text("data:\n  datasets:\n    - {name: synthetic, rot: x}\n")
    with pytest.raises(ValueError, match="rot"):
        load_config(bad)
    bad.write_text("base: bad.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(bad)
    with pytest.raises(ValueError, match="optim.lr: expected a number"):
        load_config("tiny_cpu", ["optim.lr=fast"])
    with pytest.raises(ValueError, match="unknown recipe 'mevis_offical'"):
        load_config("mevis_offical")


def test_resolved_config_is_saved_and_reloads(tmp_path):
    c = load_config("ytvos", ["optim.lr=2e-4", "data.datasets.0.root=/data/ytvos", "model.init_from=a.safetensors"])
    save_config(c, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == c


# ------------------------------------------------------------------------------------------------ optimizer


def test_parameter_groups(tiny_model):
    optim = TrainConfig().optim
    groups = parameter_groups(tiny_model, optim)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    where = {}
    for g in groups:
        for p in g["params"]:
            assert names[id(p)] not in where, "a parameter in two groups"
            where[names[id(p)]] = (g["lr"], g["weight_decay"])
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert set(where) == trainable and not any(n.startswith("backbone.clip.") for n in where)
    lr, wd = optim.lr, optim.weight_decay
    expected = {
        "backbone.adapters.0.conv1.weight": (lr * 0.1, wd),
        "backbone.adapters.2.cross_attn.norm.weight": (lr * 0.1, 0.0),  # LayerNorm
        "backbone.adapters.2.cross_attn.norm.bias": (lr * 0.1, 0.0),
        "frame_decoder.query_pos.weight": (lr, 0.0),  # nn.Embedding tables
        "frame_decoder.level_embed.weight": (lr, 0.0),
        "video_decoder.query_pos.weight": (lr, 0.0),
        "video_decoder.slot_pos.weight": (lr, 0.0),
        "pixel_decoder.input_proj.0.1.weight": (lr, 0.0),  # GroupNorm
        "sentence_proj.norm.bias": (lr, 0.0),
        "frame_decoder.norm.weight": (lr, 0.0),
        "frame_decoder.class_head.weight": (lr, wd),
        "pixel_decoder.level_embed": (lr, wd),  # a bare nn.Parameter: decayed, as in the original
        "video_decoder.layers.0.ffn.linear1.weight": (lr, wd),
    }
    for name, value in expected.items():
        assert where[name] == pytest.approx(value), name


def test_lr_schedule():
    optim = TrainConfig().optim
    assert [lr_multiplier(s, optim) for s in (0, 9, 54999, 55000, 69999, 70000, 74999)] == pytest.approx(
        [1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = replace(optim, warmup_steps=10, warmup_factor=0.5)
    assert [lr_multiplier(s, warm) for s in (0, 5, 10)] == pytest.approx([0.5, 0.75, 1.0])
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, replace(optim, lr_steps=(2,), lr=1.0, warmup_steps=0))
    sched = build_scheduler(opt, replace(optim, lr_steps=(2,), lr=1.0, warmup_steps=0))
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1.0, 1.0, 0.1, 0.1])


# ------------------------------------------------------------------------------------------------ the loop


@pytest.mark.slow
def test_tiny_run_learns_and_its_checkpoint_loads(tmp_path):
    result = train(_tiny(tmp_path))
    losses = result.losses
    assert result.step == 40 and len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, (first, last)
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt == result.checkpoint and ckpt.name == "step_0000040"
    assert (ckpt.parent / "latest").read_text().strip() == "step_0000040"
    loaded = load_model(ckpt / "model.safetensors")  # a training checkpoint is a loadable model
    for key, value in result.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert load_config(tmp_path / "run" / "config.yaml") == _tiny(tmp_path)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [5, 10, 15, 20, 25, 30, 35, 40] and "loss_sim" in metrics[0]


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical(tmp_path):
    overrides = ["optim.max_steps=6", "optim.lr_steps=[4]", "checkpoint_every=3", "keep_last=1", "log_every=1"]
    whole = train(_tiny(tmp_path / "a", *overrides))
    killed = train(_tiny(tmp_path / "b", *overrides), max_steps_this_run=4)  # dies after step 4, last saved at 3
    assert killed.step == 4 and latest_checkpoint(tmp_path / "b" / "run").name == "step_0000003"
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(_tiny(tmp_path / "b", *overrides))
    resumed = train(_tiny(tmp_path / "b", *overrides), resume=True)
    assert resumed.step == 6 and resumed.losses == whole.losses[3:]  # steps 4..6 replayed exactly
    a, b = whole.checkpoint, resumed.checkpoint
    assert a.name == b.name == "step_0000006"
    assert [p.name for p in sorted((tmp_path / "b" / "run" / "checkpoints").glob("step_*"))] == ["step_0000006"]
    _, wa = read_checkpoint(a / "model.safetensors")
    _, wb = read_checkpoint(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = torch.load(a / "state.pt", weights_only=True)
    sb = torch.load(b / "state.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 6 and sa["scheduler"] == sb["scheduler"]
    assert sa["optimizer"]["param_groups"] == sb["optimizer"]["param_groups"]
    for i, state in sa["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, sb["optimizer"]["state"][i][key]), (i, key)


def test_eval_hook_runs_on_schedule(tmp_path):
    calls = []

    def eval_fn(model, step):
        assert not model.training
        calls.append(step)
        return {"score": float(step)}

    result = train(_tiny(tmp_path, "optim.max_steps=4", "eval.every=2"), eval_fn=eval_fn)
    assert calls == [2, 4] and result.evals == {2: {"score": 2.0}, 4: {"score": 4.0}}
    assert result.model.training
    lines = (tmp_path / "run" / "eval.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]


def test_configured_evaluation_scores_a_split(tmp_path):
    from datagen import write_mevis

    from ssa_rvos.data import MeViS
    from ssa_rvos.evaluation.evaluate import evaluate_predictions
    from ssa_rvos.evaluation.predict import predict_split

    write_mevis(tmp_path / "mevis", "valid_u")
    result = train(_tiny(tmp_path, "optim.max_steps=1", "eval.dataset=mevis", f"eval.root={tmp_path / 'mevis'}",
                         "eval.short_side=32"))
    scores = result.evals[1]
    assert not any((tmp_path / "run" / "eval").iterdir())  # the predictions were scratch
    # The same as predicting the split with the trained model (step 1 was the last) and evaluating.
    dataset = MeViS(tmp_path / "mevis", "valid_u")
    predict_split(result.model, dataset, tmp_path / "pred", short_side=32)
    report = evaluate_predictions(dataset, tmp_path / "pred")
    assert scores == {"J": report.j, "F": report.f, "J&F": report.jf}
    assert 0 < report.j < 1 and report.j != report.f


def test_tensorboard_is_optional(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'ssa-rvos\[train\]'"):
            train(_tiny(tmp_path, "tensorboard=true"))
        assert not (tmp_path / "run").exists()  # failed before any work
    else:
        train(_tiny(tmp_path, "tensorboard=true", "optim.max_steps=1", "log_every=1"))
        assert any((tmp_path / "run" / "tensorboard").iterdir())


# ------------------------------------------------------------------------------------------------ DDP


def _dropout_free_tiny():
    """ssa_tiny without dropout: one process with two clips and two with one each draw different masks."""
    base = ssa_tiny()
    config = replace(base, text_dropout=0.0, adapter=replace(base.adapter, dropout=0.0),
                     pixel_decoder=replace(base.pixel_decoder, fusion_dropout=0.0, dropout=0.0))
    torch.manual_seed(0)
    return build_model(config)


@contextlib.contextmanager
def _same_points_for_every_mask():
    """The criterion's only randomness is where it samples points (matchers and losses), drawn per mask in
    one call for the whole batch: one process with two clips and two processes with one would draw
    different points. Here every row of a draw gets the same points, a function of the draw's shape, so
    the comparison sees only the trainer's arithmetic."""
    real = torch.rand

    def rand(*size, device=None, **kwargs):
        size = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
        g = torch.Generator().manual_seed(sum(size[1:]))
        return real(*size[1:], generator=g).expand(*size).to(device).contiguous()

    torch.rand = rand
    try:
        yield
    finally:
        torch.rand = real


def _step_gradients(*, rank: int, world_size: int, accumulation: int) -> dict[str, torch.Tensor]:
    config = load_config("tiny_cpu")
    env = setup_distributed("cpu")
    assert (env.rank, env.world_size) == (rank, world_size)
    model = _dropout_free_tiny().train()
    net = wrap_ddp(model, env)
    criterion = SSACriterion(config=config.loss)
    micro = next(build_batches(config.data, batch_size=2, seed=config.seed, rank=rank, world_size=world_size,
                               accumulation=accumulation))
    with _same_points_for_every_mask():
        accumulate_gradients(net, criterion, micro, device=torch.device("cpu"))
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _ddp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(_step_gradients(rank=rank, world_size=world_size, accumulation=1), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_and_accumulation_give_the_gradients_of_one_big_batch(tmp_path):
    # The comparison is exact only when every process holds as many matches (see the trainer's docstring):
    # synthetic clips have one object; check it is visible in every frame of both clips.
    config = load_config("tiny_cpu")
    (batch,) = next(build_batches(config.data, batch_size=2, seed=config.seed))
    assert all(t.masks.shape[0] == 1 and t.masks.flatten(2).any(2).all() for t in batch.targets)

    single = _step_gradients(rank=0, world_size=1, accumulation=1)
    assert all(g is not None and torch.isfinite(g).all() for g in single.values())
    assert sum(g.abs().sum() for g in single.values()) > 0

    accumulated = _step_gradients(rank=0, world_size=1, accumulation=2)
    for name, g in single.items():
        torch.testing.assert_close(accumulated[name], g, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, g in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # all-reduced: the same on every process
        torch.testing.assert_close(ranks[0][name], g, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


# ------------------------------------------------------------------------------------------------ init_from


def test_init_from_loads_what_fits_and_reports_the_rest(tmp_path, tiny_model):
    ours = tiny_model.state_dict()
    weights = {
        "pixel_decoder.mask_features.weight": torch.randn(64, 64, 1, 1),  # our name, fits
        "sem_seg_head.predictor.decoder_norm.weight": torch.randn(64),  # the original's name, fits
        "sem_seg_head.predictor.class_embed.weight": torch.randn(81, 64),  # COCO classes: does not fit
        "sem_seg_head.predictor.query_feat.weight": torch.randn(100, 64),  # no counterpart
        "some.other.thing": torch.randn(3),
        "backbone.clip_model.visual.trunk.stem.0.weight": torch.randn(*ours["backbone.clip.visual.trunk.stem.0.weight"].shape),
    }
    path = tmp_path / "m2f.pth"
    torch.save({"model": weights, "iteration": 5}, path)
    model = _dropout_free_tiny()
    clip_before = model.state_dict()["backbone.clip.visual.trunk.stem.0.weight"].clone()
    report = load_init_weights(model, path)
    assert report.loaded == ["frame_decoder.norm.weight", "pixel_decoder.mask_features.weight"]
    assert report.mismatched == [("frame_decoder.class_head.weight", (81, 64), (2, 64))]
    assert sorted(report.unexpected) == ["sem_seg_head.predictor.query_feat.weight", "some.other.thing"]
    assert report.skipped == ["backbone.clip_model.visual.trunk.stem.0.weight"]
    assert "frame_decoder.class_head.weight" in report.missing and "pixel_decoder.level_embed" in report.missing
    assert not any(k.startswith("backbone.clip.") for k in report.missing)
    state = model.state_dict()
    assert torch.equal(state["pixel_decoder.mask_features.weight"], weights["pixel_decoder.mask_features.weight"])
    assert torch.equal(state["frame_decoder.norm.weight"], weights["sem_seg_head.predictor.decoder_norm.weight"])
    assert torch.equal(state["backbone.clip.visual.trunk.stem.0.weight"], clip_before)  # CLIP never from init_from
    text = "\n".join(report.lines())
    assert "frame_decoder.class_head.weight [81, 64] vs [2, 64]" in text and "some.other.thing" in text


def test_init_from_takes_the_text_tower_only_when_it_trains(tmp_path):
    """With model.train_text the CLIP's text tower is a trainable part: init_from takes it (a run started
    from the bundled model keeps the text tower it was trained with); the image tower stays as made. With
    the whole CLIP frozen, neither is taken."""
    from ssa_rvos.checkpoint import save_model

    base = ssa_tiny()
    text_config = replace(base, clip=replace(base.clip, train_text=True))
    torch.manual_seed(0)
    source = build_model(text_config)
    with torch.no_grad():
        source.backbone.clip.token_embedding.weight.add_(1.0)
        source.backbone.clip.visual.trunk.stem[0].weight.add_(1.0)
    path = tmp_path / "init.safetensors"
    save_model(source, path)
    token, stem = "backbone.clip.token_embedding.weight", "backbone.clip.visual.trunk.stem.0.weight"
    for config, text_taken in [(text_config, True), (base, False)]:
        torch.manual_seed(1)
        model = build_model(config)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        report = load_init_weights(model, path)
        state = model.state_dict()
        assert torch.equal(state[stem], before[stem]) and stem in report.skipped
        assert torch.equal(state[token], source.state_dict()[token]) == text_taken
        assert (token in report.loaded) == text_taken and (token in report.skipped) != text_taken
        assert not report.missing and not report.unexpected and not report.mismatched
        text_keys = {k for k in report.loaded if k.startswith("backbone.clip.")}
        assert len(text_keys) == (len(model.backbone.text_parameters()) if text_taken else 0)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_train_with_init_from_and_overrides(tmp_path, tiny_model, capsys):
    from ssa_rvos.checkpoint import save_model

    init = tmp_path / "init.safetensors"
    save_model(tiny_model, init)
    out = tmp_path / "cli_run"
    code = main(["train", "tiny_cpu", "optim.max_steps=2", "checkpoint_every=1", "keep_last=1", f"model.init_from={init}",
                 "--output-dir", str(out)])
    assert code == 0
    assert latest_checkpoint(out).name == "step_0000002"
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_0000002"]
    report = json.loads((out / "init_report.json").read_text())
    assert not report["mismatched"] and not report["unexpected"] and len(report["loaded"]) > 100
    assert "trained to step 2" in capsys.readouterr().err
    # KEY=VALUE changes may also come after the options
    assert main(["train", "tiny_cpu", "--resume", "--output-dir", str(out), "optim.max_steps=3"]) == 0
    assert latest_checkpoint(out).name == "step_0000003"
    with pytest.raises(SystemExit):
        main(["train", "tiny_cpu", "--output-dir", str(out), "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "tiny_cpu", "optim.learning_rate=1"], "unknown config key 'optim.learning_rate'"),
    (["train", "tiny_cpu", "optim.lr"], "expected KEY=VALUE"),
    (["train", "no_such_recipe"], "unknown recipe 'no_such_recipe'"),
])
def test_cli_train_bad_config_is_one_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("ssa-rvos train: error:")
