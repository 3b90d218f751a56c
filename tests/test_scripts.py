"""The maintainer scripts behind the shipped model: scripts/export_model.py (how the bundled weights are
written) and scripts/synthref_table.py (the published SynthRef table)."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ssa_rvos.checkpoint import load_model
from ssa_rvos.data import MeViS
from ssa_rvos.data.synthref import expression_kinds
from ssa_rvos.evaluation.evaluate import evaluate_predictions, scores_by_group
from ssa_rvos.evaluation.predict import predict_split
from ssa_rvos.training.config import load_config

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_model_writes_fp16_weights_with_a_note(segment_model, tmp_path, capsys):
    model, checkpoint = segment_model
    export = load_script("export_model")
    out = tmp_path / "exported.safetensors"
    assert export.main([str(checkpoint), str(out), "--fp16", "--note", "a test export"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (")
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["note"] == "a test export"
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in dtypes and "F32" not in dtypes
    assert out.stat().st_size < 0.6 * checkpoint.stat().st_size
    loaded = load_model(out)
    assert loaded.config == model.config
    for name, p in model.state_dict().items():
        q = loaded.state_dict()[name]
        if p.is_floating_point():
            assert q.dtype == torch.float32 and torch.equal(q, p.half().float()), name
        else:
            assert torch.equal(q, p), name
    with pytest.raises(SystemExit):
        export.main([str(checkpoint), str(tmp_path / "exported.pt")])
    assert "must be a .safetensors file" in capsys.readouterr().err


def test_synthref_table_scores_each_model_per_kind(segment_model, synthref_root, tmp_path, capsys):
    _, checkpoint = segment_model
    data = synthref_root
    table = load_script("synthref_table")
    out = tmp_path / "table"
    argv = ["--data", str(data), "--model", f"tiny={checkpoint}", "--model", f"tiny again={checkpoint}",
            "--output", str(out), "--threads", "1"]
    assert table.main(argv) == 0
    stdout = capsys.readouterr().out
    saved = json.loads((out / "table.json").read_text())

    # the same numbers as predicting and scoring the split directly
    dataset = MeViS(data, "valid_u")
    with torch.inference_mode():
        predict_split(load_model(checkpoint), dataset, tmp_path / "direct")
    expected = scores_by_group(evaluate_predictions(dataset, tmp_path / "direct"), expression_kinds(data, "valid_u"))
    assert list(saved["results"]) == ["tiny", "tiny again"]
    for label in ("tiny", "tiny again"):
        assert saved["results"][label].keys() == expected.keys()
        for group, scores in expected.items():
            assert saved["results"][label][group] == pytest.approx(scores, abs=1e-9), (label, group)
    assert (out / "tiny").is_dir() and (out / "tiny_again").is_dir()  # labels made safe as folder names
    assert (out / "table.md").read_text().strip() == stdout.strip()
    overall = expected["overall"]
    assert f"| tiny again | {overall['J']:.1f} / {overall['F']:.1f} / **{overall['J&F']:.1f}** |" in stdout

    with pytest.raises(SystemExit):
        table.main(["--data", str(data), "--model", "no-label", "--output", str(out)])
    assert "expected LABEL=NAME_OR_PATH" in capsys.readouterr().err


SMALL_PIPELINE = {  # scripts/train_synthref.sh scaled down to seconds: 4 training videos, 2 steps a stage
    "VIDEOS": "4", "VALID_VIDEOS": "2", "HELDOUT_VIDEOS": "1", "CLIP_STEPS": "2",
    "TRAIN_ARGS": "optim.max_steps=2 optim.lr_steps=[1] optim.warmup_steps=0 checkpoint_every=1 log_every=1 "
                  "data.num_workers=0 batch_size=2 data.num_frames=2 loss.num_points=64",
}


def _run_pipeline(tmp_path, *args, **env):
    import os
    import subprocess
    import sys

    env = {**os.environ, **SMALL_PIPELINE, "DATA": str(tmp_path / "data"), "HELDOUT": str(tmp_path / "heldout"),
           "RUNS": str(tmp_path / "runs"), "EXPORT": str(tmp_path / "exported.safetensors"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    return subprocess.run(["bash", str(SCRIPTS / "train_synthref.sh"), *args], cwd=SCRIPTS.parent, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_train_synthref_script_runs_end_to_end_and_resumes(tmp_path):
    """The shipped model's one command, scaled down, with its recipe (synthref_motionaux, the default) and
    one extra cycle instead of two (CYCLES=1): data, CLIP, the model and both ablations, each a first run
    and a second learning-rate cycle started from its weights, the fp16 export and the table; run again
    after losing a checkpoint, it trains only that step again (to the same weights) and keeps everything
    else; with ABLATIONS=0 the table holds SSA alone."""
    candidate = {"CYCLES": "1"}
    done = _run_pipeline(tmp_path, **candidate)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = tmp_path / "runs"
    for run, switch in (("synthref", None), ("synthref_no_adapters", ("use_adapters", False)),
                        ("synthref_no_alignment", ("sequential_alignment", False))):
        for stage, seed, init_from in ((run, 0, None),
                                       (f"{run}_cycle2", 2, runs / run / "checkpoints" / "step_0000002")):
            assert (runs / stage / "checkpoints" / "latest").read_text().strip() == "step_0000002", stage
            config = load_config(runs / stage / "config.yaml")
            assert config.model.preset == "ssa_tiny_shallow" and config.optim.max_steps == 2, stage
            assert config.model.motion_embedding and config.model.displacement_head and config.model.train_text
            assert config.loss.video_motion_weight == 2.0 and config.seed == seed, stage
            if init_from is None:
                assert not config.model.init_from, stage
            else:  # the cycle starts from the weights of the run before it, text tower included
                assert Path(config.model.init_from) == init_from / "model.safetensors", stage
                report = json.loads((runs / stage / "init_report.json").read_text())
                assert not report["missing"] and any(k.startswith("backbone.clip.") for k in report["loaded"]), stage
            if switch:
                assert getattr(config.model, switch[0]) is switch[1], stage
    table = json.loads((runs / "synthref_table" / "table.json").read_text())
    assert list(table["results"]) == ["SSA", "w/o adapters", "w/o sequential alignment"]
    assert set(table["intervals"]["differences"]) == {"w/o adapters", "w/o sequential alignment"}
    exported = load_file(tmp_path / "exported.safetensors")
    shipped = load_file(runs / "synthref_cycle2" / "checkpoints" / "step_0000002" / "model.safetensors")
    assert exported.keys() == shipped.keys()
    assert all(torch.equal(exported[k], shipped[k].half() if shipped[k].is_floating_point() else shipped[k])
               for k in shipped)  # the last cycle's weights, in float16

    # An interruption: the last checkpoint of one run is lost; everything else is reused.
    last = runs / "synthref_no_alignment_cycle2" / "checkpoints"
    weights = load_file(last / "step_0000002" / "model.safetensors")
    clip = (runs / "synthref_clip" / "ssa_tiny_clip.safetensors").stat().st_mtime_ns
    stages = {stage: (runs / stage / "checkpoints" / "step_0000002" / "model.safetensors").stat().st_mtime_ns
              for stage in ("synthref", "synthref_cycle2", "synthref_no_alignment")}
    shutil.rmtree(last / "step_0000002")
    (last / "latest").write_text("step_0000001")
    again = _run_pipeline(tmp_path, **candidate)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = load_file(last / "step_0000002" / "model.safetensors")
    assert resumed.keys() == weights.keys() and all(torch.equal(resumed[k], weights[k]) for k in weights)
    assert (runs / "synthref_clip" / "ssa_tiny_clip.safetensors").stat().st_mtime_ns == clip
    for stage, mtime in stages.items():
        assert (runs / stage / "checkpoints" / "step_0000002" / "model.safetensors").stat().st_mtime_ns == mtime, stage
    assert "resumed from" in (runs / "synthref_no_alignment.log").read_text()

    # ABLATIONS=0: SSA alone (here only its table)
    alone = _run_pipeline(tmp_path, ABLATIONS="0", STEPS="table", **candidate)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert list(json.loads((runs / "synthref_table" / "table.json").read_text())["results"]) == ["SSA"]


def test_train_synthref_script_refuses_bad_arguments(tmp_path):
    for args, env, message in ((["--device", "tpu"], {}, "--device must be cpu or cuda, got 'tpu'"),
                               (["--epochs", "3"], {}, "unknown argument '--epochs'"),
                               (["--device", "cuda"], {}, "--device cuda: torch sees no CUDA GPU here"),
                               (["--device", "cuda"], {"CYCLES": "2"}, "RECIPE and CYCLES are for --device cpu"),
                               ([], {"CYCLES": "two"}, "CYCLES must be a whole number, got 'two'")):
        done = _run_pipeline(tmp_path, *args, CUDA_VISIBLE_DEVICES="", **env)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_gpu_recipe_is_the_cpu_recipe_scaled():
    deep, cpu, gpu = load_config("synthref"), load_config("synthref_motionaux"), load_config("synthref_gpu")
    assert (gpu.device, gpu.amp, gpu.model.test_short_side) == ("cuda", "bf16", 192)
    assert gpu.loss.num_points == 4 * cpu.loss.num_points  # twice the side: masks at 48x48, not 24x24
    # the shipped CPU recipe (the script's defaults): synthref_motionaux, then two cycles of 2,000 steps
    cpu_steps = cpu.optim.max_steps + 2 * 2000
    assert cpu_steps == 8000 and gpu.batch_size * gpu.optim.max_steps >= 2 * cpu.batch_size * cpu_steps
    # the deeper preset (the paper's layer counts) with the CPU recipe's adapter learning rate, trained text
    # tower, motion embedding and displacement loss
    assert (gpu.model.preset, gpu.data.num_frames, gpu.data.augment) == (deep.model.preset, 8, False)
    assert gpu.optim.backbone_lr_multiplier == cpu.optim.backbone_lr_multiplier == 1.0
    assert gpu.model.train_text and cpu.model.train_text and not deep.model.train_text
    for m in (gpu.model, cpu.model):
        assert m.motion_embedding and m.displacement_head
    assert gpu.loss.video_motion_weight == cpu.loss.video_motion_weight == 2.0
    # the CPU recipe is the shallow one with the text tower trained and the two motion options, nothing else
    shallow = load_config("synthref_shallow", ["model.train_text=true", "model.motion_embedding=true",
                                               "model.displacement_head=true", "loss.video_motion_weight=2.0",
                                               f"output_dir={cpu.output_dir}"])
    assert cpu.to_dict() == shallow.to_dict()
    script = (SCRIPTS / "train_synthref.sh").read_text()
    assert "RECIPE=${RECIPE:-synthref_motionaux}" in script and "CYCLES=${CYCLES:-2}" in script
    assert 'CYCLE_ARGS=(optim.max_steps=2000 "optim.lr_steps=[1700]")' in script


def test_gradnorms_script_splits_the_whole_gradient_into_parts(synthref_root, tmp_path, capsys):
    """scripts/synthref_gradnorms.py on a two-checkpoint run: every parameter falls in exactly one part (the
    parts' squared norms add up to the whole gradient's), every part gets a finite non-zero gradient."""
    from ssa_rvos.training.trainer import train

    run = tmp_path / "run"
    config = load_config("synthref", [f"data.datasets.0.root={synthref_root}", "model.clip_weights=null",
                                      "batch_size=2", "data.num_frames=2", "data.frame_window=3",
                                      "data.num_workers=0", "loss.num_points=64", "optim.max_steps=2",
                                      "optim.lr_steps=[1]", "optim.warmup_steps=0", "checkpoint_every=1",
                                      "keep_last=0", f"output_dir={run}"])
    train(config)
    gradnorms = load_script("synthref_gradnorms")
    assert gradnorms.main([str(run), "--steps", "1", "--output", str(tmp_path / "g.json")]) == 0
    out = json.loads((tmp_path / "g.json").read_text())
    assert list(out["results"]) == ["step_0000001", "step_0000002"]
    for parts in out["results"].values():
        assert set(parts) == set(out["kinds"]) and all(0 < p["grad"] < float("inf") for p in parts.values())
    assert "| adapters: sentence path | text |" in capsys.readouterr().out

    # the parts partition the parameters: their squared norms add up to the whole gradient's
    model = load_model(run / "checkpoints" / "step_0000002" / "model.safetensors")
    model.train()
    criterion = gradnorms.SSACriterion(config=config.loss)
    batches = gradnorms.build_batches(config.data, batch_size=2, seed=0)
    gradnorms.accumulate_gradients(model, criterion, next(batches), device=torch.device("cpu"))
    batches.close()
    named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    by_part = {}
    for n, p in named:
        by_part[gradnorms.part_of(n)] = by_part.get(gradnorms.part_of(n), 0.0) + float(p.grad.double().pow(2).sum())
    whole = torch.nn.utils.get_total_norm([p.grad for _, p in named]).item()
    assert sum(by_part.values()) ** 0.5 == pytest.approx(whole, rel=1e-5)
    assert len(by_part) == len(gradnorms.PARTS)
    with pytest.raises(ValueError, match="belongs to no part"):
        gradnorms.part_of("backbone.clip.visual.trunk.stem.0.weight")


def test_twins_script_bounds_follow_their_definitions(synthref_root, segment_model, tmp_path, capsys):
    """scripts/synthref_twins.py: the position-blind mask is the union of the objects drawn like a target
    (checked by hand on every expression with a twin), appearance-only sentences lose nothing to it, the
    frame-independent rule never scores below it; the model's coverages are shares of pixels; a split
    whose files do not match the drawn videos is refused."""
    import numpy as np

    from ssa_rvos.data.synthref import render_video, video_rng
    from ssa_rvos.evaluation.metrics import j_and_f

    twins = load_script("synthref_twins")
    out = tmp_path / "twins.json"
    assert twins.main(["--data", str(synthref_root), "--videos", "2", "--demo", "--model", str(segment_model[1]),
                       "--threads", "1", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    bound = result["position_blind_bound"]
    assert bound["overall"]["expressions"] == sum(len(MeViS(synthref_root, "valid_u").video_expressions(v))
                                                  for v in MeViS(synthref_root, "valid_u").videos()[:2])
    for kind, row in bound.items():
        assert row["fixed_rule_J&F"] >= row["J&F"] - 1e-9, kind
        if row["with_twins"] == 0:
            assert row["J&F"] == pytest.approx(100.0), kind
    if "appearance" in bound:
        assert bound["appearance"]["J&F"] == pytest.approx(100.0)
    # by hand: every expression with a twin, J&F of the union of the same-looking objects
    scores, checked = [], 0
    for i in range(2):
        video = render_video(video_rng(3, "valid_u", i), frames=6, size=64)
        for e in video.expressions:
            looks = {video.objects[k].appearance for k in e["obj_id"]}
            same = [o for o in video.objects if o.appearance in looks]
            gt = np.any([video.objects[k].masks for k in e["obj_id"]], axis=0)
            j, f = j_and_f(gt, np.any([o.masks for o in same], axis=0))
            scores.append((j.mean(), f.mean()))
            checked += len(same) > len(e["obj_id"])
    assert checked == bound["overall"]["with_twins"]
    assert bound["overall"]["J&F"] == pytest.approx(50 * (np.mean([s[0] for s in scores]) + np.mean([s[1] for s in scores])))
    demo = {r["exp"]: r for r in result["demo"]}
    assert demo["the small white shape you can see"]["iou"] == pytest.approx(1.0)
    assert demo["the star moving to the right"]["iou"] == pytest.approx(0.5, abs=0.05)  # two identical stars
    for group in result["model"]["coverage"].values():
        assert 0 <= group["target"] <= 1 and 0 <= group["twins"] <= 1
    assert "Position-blind bound" in capsys.readouterr().out

    broken = tmp_path / "broken"
    shutil.copytree(synthref_root / "valid_u", broken / "valid_u")
    info = json.loads((broken / "valid_u" / "synthref.json").read_text())
    (broken / "valid_u" / "synthref.json").write_text(json.dumps({**info, "seed": 4}))
    assert twins.main(["--data", str(broken), "--videos", "2"]) == 2
    assert "do not match the video drawn again" in capsys.readouterr().err


def test_probe_script_fits_a_probe_that_can_read_motion(segment_model, tmp_path, capsys):
    """scripts/synthref_probe.py: the probe reads the motion perfectly from features that hold it (the
    objects' true displacement) and at chance from noise; the script runs end to end on a model, pairs
    each object with a query of its own, and writes its figures; bad arguments exit cleanly."""
    import numpy as np

    from ssa_rvos.data.synthref import render_video, video_rng

    probe = load_script("synthref_probe")
    rng = np.random.default_rng(0)
    x, y = [], []
    for i in range(40):
        for obj in render_video(video_rng(5, "train", i), frames=6, size=64).objects:
            if obj.motion in probe.CLASSES:
                shift = obj.centers[-1] - obj.centers[0]
                x.append(np.concatenate([shift, rng.normal(size=2)]))
                y.append(probe.CLASSES.index(obj.motion))
    x, y = np.asarray(x, np.float32), np.asarray(y)
    assert len(set(y.tolist())) == len(probe.CLASSES)
    half = len(y) // 2
    readable = probe.report(x[:half], y[:half], x[half:], y[half:])
    assert readable["test_accuracy"] > 0.9 and readable["left_right_accuracy"] > 0.9
    noise = probe.report(rng.normal(size=(half, 4)).astype(np.float32), y[:half],
                         rng.normal(size=(len(y) - half, 4)).astype(np.float32), y[half:])
    assert noise["test_accuracy"] < readable["chance"] + 0.25

    out = tmp_path / "probe.json"
    code = probe.main(["--model", str(segment_model[1]), "--train-videos", "3", "--test-videos", "2",
                       "--frames", "6", "--size", "64", "--threads", "1", "--output", str(out)])
    if code == 0:
        result = json.loads(out.read_text())
        assert result["train_objects"] == result["found"]["train"]["found"] <= result["found"]["train"]["objects"]
        assert 0 <= result["test_accuracy"] <= 1 and "left vs right" in capsys.readouterr().out
    else:  # a random model's masks may miss every object: then it says so in one line
        assert code == 1 and "too few objects" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe.main(["--train-videos", "0"])
    assert probe.main(["--model", str(tmp_path / "missing.safetensors")]) == 2
