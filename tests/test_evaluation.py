"""The evaluate / predict / submit procedures and their commands, on tiny generated benchmarks."""

import json
import os
import threading
import zipfile

import numpy as np
import pytest
from datagen import write_davis, write_mevis, write_ytvos
from PIL import Image

from ssa_rvos.cli import main
from ssa_rvos.data import MeViS, RefDAVIS17, RefYouTubeVOS
from ssa_rvos.data.expressions import DatasetError
from ssa_rvos.data.masks import read_mask_png, write_mask_png
from ssa_rvos.evaluation.evaluate import _pool_context, evaluate_predictions, open_predictions
from ssa_rvos.evaluation.predict import predict_split
from ssa_rvos.evaluation.submit import SubmissionError, check_submission, write_submission


def _write_predictions(out, info, *, skip=(), transform=None):
    """Write the generated ground truth as prediction folders (optionally altered)."""
    for (video, exp_id), masks in info["target_masks"].items():
        if (video, exp_id) in skip:
            continue
        frames = info["videos"][video]["frames"]
        for t, frame in enumerate(frames):
            m = masks[t] if transform is None else transform(video, exp_id, t, masks[t])
            write_mask_png(out / video / exp_id / f"{frame}.png", m)


@pytest.fixture
def mevis(mevis_root):
    root, infos = mevis_root
    return MeViS(root, "valid_u"), infos["valid_u"]


def test_ground_truth_as_predictions_scores_one(mevis, tmp_path):
    dataset, info = mevis
    _write_predictions(tmp_path / "pred", info)
    report = evaluate_predictions(dataset, tmp_path / "pred")
    assert report.num_expressions == len(info["expressions"]) == 5
    assert report.j == report.f == report.jf == 1.0
    assert report.missing == [] and report.incomplete == []
    assert all(s.j == 1.0 and s.f == 1.0 for s in report.expressions)


def test_ytvos_train_round_trip_scores_one(tmp_path):
    info = write_ytvos(tmp_path / "ytvos")["train"]
    _write_predictions(tmp_path / "pred", info)
    report = evaluate_predictions(RefYouTubeVOS(tmp_path / "ytvos", "train"), tmp_path / "pred")
    assert (report.j, report.f, report.num_expressions) == (1.0, 1.0, len(info["expressions"]))


def test_missing_expression_scores_zero_and_is_listed(mevis, tmp_path):
    dataset, info = mevis
    gone = info["expressions"][1]
    _write_predictions(tmp_path / "pred", info, skip={(gone["video"], gone["exp_id"])})
    report = evaluate_predictions(dataset, tmp_path / "pred")
    assert report.missing == [f"{gone['video']}/{gone['exp_id']}"]
    assert report.j == pytest.approx(4 / 5) and report.f == pytest.approx(4 / 5)


def test_empty_predictions_score_the_frames_where_the_object_is_absent(mevis, tmp_path):
    dataset, info = mevis
    _write_predictions(tmp_path / "pred", info, transform=lambda v, e, t, m: np.zeros_like(m))
    report = evaluate_predictions(dataset, tmp_path / "pred")
    for score in report.expressions:
        truth = info["target_masks"][(score.video, score.exp_id)]
        empty_frames = np.mean([not m.any() for m in truth])  # empty/empty frames score 1, the rest 0
        assert score.j == pytest.approx(empty_frames) and score.f == pytest.approx(empty_frames)
    assert 0 < report.j < 1


def test_half_wrong_prediction_matches_the_metric(mevis, tmp_path):
    from ssa_rvos.evaluation.reference import boundary_f_reference, jaccard_reference

    dataset, info = mevis
    shifted = lambda v, e, t, m: np.roll(m, 3, axis=1)  # noqa: E731
    _write_predictions(tmp_path / "pred", info, transform=shifted)
    report = evaluate_predictions(dataset, tmp_path / "pred")
    for score in report.expressions:
        truth = info["target_masks"][(score.video, score.exp_id)]
        pred = np.roll(truth, 3, axis=2)
        assert score.j == pytest.approx(jaccard_reference(truth, pred).mean(), abs=1e-12)
        assert score.f == pytest.approx(boundary_f_reference(truth, pred).mean(), abs=1e-12)
    assert report.jf == pytest.approx((report.j + report.f) / 2)


def test_missing_frame_is_empty_and_listed_wrong_size_is_an_error(mevis, tmp_path):
    dataset, info = mevis
    _write_predictions(tmp_path / "pred", info)
    first = info["expressions"][0]
    (tmp_path / "pred" / first["video"] / first["exp_id"] / f"{first['frames'][0]}.png").unlink()
    report = evaluate_predictions(dataset, tmp_path / "pred")
    assert report.incomplete == [f"{first['video']}/{first['exp_id']}"]
    bad = tmp_path / "pred" / first["video"] / first["exp_id"] / f"{first['frames'][1]}.png"
    write_mask_png(bad, np.zeros((5, 5), bool))
    with pytest.raises(DatasetError, match=rf"{first['frames'][1]}.png: prediction is 5x5"):
        evaluate_predictions(dataset, tmp_path / "pred")


def test_parallel_workers_give_the_same_report(mevis, tmp_path):
    dataset, info = mevis
    _write_predictions(tmp_path / "pred", info, transform=lambda v, e, t, m: np.roll(m, t, axis=0))
    one = evaluate_predictions(dataset, tmp_path / "pred")
    two = evaluate_predictions(dataset, tmp_path / "pred", workers=2)
    assert one.to_dict() == two.to_dict()


class _DyingSource:
    """Predictions whose reading kills the worker process (as the kernel does when it runs out of memory)."""

    def __init__(self, inner):
        self.inner = inner

    def has(self, video, exp_id):
        return self.inner.has(video, exp_id)

    def read(self, expr, size):
        os._exit(7)


def test_workers_beside_other_threads_are_not_forked_and_agree(mevis_root, tmp_path):
    # A forked child keeps the locks other threads held at that moment, locked: beside a running thread
    # (a web server, a progress monitor, a test harness) the workers start from a fresh interpreter.
    root, infos = mevis_root
    _write_predictions(tmp_path / "pred", infos["valid_u"], transform=lambda v, e, t, m: np.roll(m, t, axis=1))
    one = evaluate_predictions(MeViS(root, "valid_u"), tmp_path / "pred", workers=1)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        context, inherits = _pool_context()
        assert context.get_start_method() != "fork" and not inherits
        two = evaluate_predictions(MeViS(root, "valid_u"), tmp_path / "pred", workers=2)
    finally:
        stop.set()
        thread.join()
    assert two.to_dict() == one.to_dict()


def test_a_worker_that_dies_fails_the_run_instead_of_hanging(mevis, tmp_path):
    dataset, info = mevis
    _write_predictions(tmp_path / "pred", info)
    source = _DyingSource(open_predictions(tmp_path / "pred", dataset))
    with pytest.raises(DatasetError, match="a scoring worker process died.*--workers 1"):
        evaluate_predictions(dataset, source, workers=2)


def test_davis_protocol_round_trip_and_object_order(tmp_path):
    info = write_davis(tmp_path / "davis")["valid"]
    dataset = RefDAVIS17(tmp_path / "davis", "valid")
    _write_predictions(tmp_path / "pred", info)
    report = evaluate_predictions(dataset, tmp_path / "pred")
    assert report.protocol == "davis-unsupervised"
    assert len(report.details["annotators"]) == 4
    assert report.j == report.f == report.jf == 1.0
    # One annotator swaps its two objects' predictions: the Hungarian matching makes that irrelevant
    # except where the first object wins an overlap, so the scores stay perfect here (disjoint boxes aside).
    video = next(v for v, objs in info["objects"].items() if len(objs) == 2)
    masks = {e: info["target_masks"][(video, e)] for e in ("1", "5")}
    swapped = tmp_path / "swapped"
    _write_predictions(swapped, info, transform=lambda v, e, t, m: (
        masks["5"][t] if (v, e) == (video, "1") else masks["1"][t] if (v, e) == (video, "5") else m))
    swapped_report = evaluate_predictions(dataset, swapped)
    plain = [s for s in swapped_report.expressions if s.video == video and s.exp_id in ("1", "5")]
    assert all(s.j < 1 for s in plain)  # the per-expression scores see the swap ...
    assert swapped_report.details["annotators"][1] == report.details["annotators"][1]  # ... the protocol does not


def test_davis_missing_annotator_predictions_lower_only_that_annotator(tmp_path):
    info = write_davis(tmp_path / "davis")["valid"]
    dataset = RefDAVIS17(tmp_path / "davis", "valid")
    skip = {(v, e) for (v, e) in info["target_masks"] if int(e) % 4 == 2}
    _write_predictions(tmp_path / "pred", info, skip=skip)
    report = evaluate_predictions(dataset, tmp_path / "pred")
    anns = report.details["annotators"]
    assert [a["J&F-Mean"] for a in anns][:2] == [1.0, 1.0] and anns[3]["J&F-Mean"] == 1.0
    # Empty predictions score 1 only on the frames where the object is absent (empty/empty).
    absent = [np.mean([not m.any() for m in info["target_masks"][(v, e)]])
              for (v, e) in sorted(skip)]
    assert anns[2]["J-Mean"] == pytest.approx(np.mean(absent)) and anns[2]["F-Mean"] == pytest.approx(np.mean(absent))
    assert 0 < np.mean(absent) < 0.5
    assert report.jf == pytest.approx((3 + np.mean(absent)) / 4)
    assert len(report.missing) == len(skip)


def test_evaluate_command_prints_table_and_writes_report(mevis, tmp_path, capsys):
    dataset, info = mevis
    gone = info["expressions"][0]
    _write_predictions(tmp_path / "pred", info, skip={(gone["video"], gone["exp_id"])})
    code = main(["evaluate", "--dataset", "mevis", "--root", str(mevis[0].root), "--split", "valid_u",
                 "--predictions", str(tmp_path / "pred"), "--output", str(tmp_path / "report.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "J&F" in out and "80.00" in out and "1 expressions have no predictions" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["num_expressions"] == 5 and report["jf"] == pytest.approx(0.8)
    assert {(e["video"], e["exp_id"]) for e in report["expressions"]} == {
        (e["video"], e["exp_id"]) for e in info["expressions"]}


@pytest.mark.parametrize("argv, code, needle", [
    (["--split", "train", "--predictions", "NOPE"], 1, "train"),  # split folder not generated
    (["--predictions", "NOPE"], 1, "NOPE"),
    ([], 2, "either --predictions"),
    (["--model", "ssa_tiny"], 2, "without trained weights"),
    (["--model", "missing.safetensors"], 2, "missing.safetensors"),
])
def test_evaluate_command_errors_are_one_line(mevis, tmp_path, capsys, argv, code, needle):
    args = ["evaluate", "--dataset", "mevis", "--root", str(mevis[0].root)]
    if "--split" not in argv:
        args += ["--split", "valid_u"]
    argv = [str(tmp_path / a) if a in ("NOPE",) else a for a in argv]
    assert main(args + argv) == code
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_server_split_cannot_be_evaluated(tmp_path, capsys):
    write_mevis(tmp_path / "mevis", "valid")
    (tmp_path / "pred").mkdir()
    assert main(["evaluate", "--dataset", "mevis", "--root", str(tmp_path / "mevis"), "--split", "valid",
                 "--predictions", str(tmp_path / "pred")]) == 2
    assert "no ground truth" in capsys.readouterr().err




def test_predict_writes_every_expression_and_resumes(mevis, tiny_model, tmp_path, monkeypatch):
    import ssa_rvos.evaluation.predict as predict_mod

    dataset, info = mevis
    out = tmp_path / "pred"
    # An interruption in the middle of an expression leaves nothing half-written.
    calls = {"n": 0}
    real = predict_mod.write_mask_png

    def flaky(path, mask):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        real(path, mask)

    monkeypatch.setattr(predict_mod, "write_mask_png", flaky)
    with pytest.raises(KeyboardInterrupt):
        predict_split(tiny_model, dataset, out, short_side=32, frame_chunk=2)
    monkeypatch.setattr(predict_mod, "write_mask_png", real)
    first = info["expressions"][0]
    done = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*"))
    assert done == [f"{first['video']}/{first['exp_id']}"]  # complete, and no partial folder left
    stats = predict_split(tiny_model, dataset, out, short_side=32, frame_chunk=2)
    assert (stats.written, stats.skipped) == (4, 1)
    # The resumed output is the same as an uninterrupted run's.
    whole = tmp_path / "whole"
    predict_split(tiny_model, dataset, whole, short_side=32, frame_chunk=2)
    for e in info["expressions"]:
        for frame in e["frames"]:
            mask = read_mask_png(out / e["video"] / e["exp_id"] / f"{frame}.png")
            assert mask.shape == info["videos"][e["video"]]["size"]
            assert np.array_equal(mask, read_mask_png(whole / e["video"] / e["exp_id"] / f"{frame}.png"))
    again = predict_split(tiny_model, dataset, out, short_side=32)
    assert (again.written, again.skipped, again.videos) == (0, 5, 0)


def test_predict_matches_the_model_and_postprocess(mevis, tiny_model, tmp_path):
    import torch

    from ssa_rvos.data.transforms import resize_frames, test_resize_shape
    from ssa_rvos.postprocess import postprocess

    def run_model(expr):
        frames = dataset.read_frames(expr.video)
        H, W = frames.shape[1:3]
        resized = resize_frames(frames, test_resize_shape(H, W, short=40))
        clip = torch.from_numpy(resized).permute(0, 3, 1, 2)[None].float()
        with torch.no_grad():
            return tiny_model(clip, [expr.text]), (H, W)

    dataset, info = mevis
    predict_split(tiny_model, dataset, tmp_path / "pred", short_side=40, frame_chunk=None)
    for expr in dataset.expressions:
        out, size = run_model(expr)
        expected = postprocess(out, selection="union", output_size=size)[0].masks.numpy()
        written = np.stack([read_mask_png(tmp_path / "pred" / expr.video / expr.exp_id / f"{f}.png")
                            for f in expr.frames])
        assert np.array_equal(written, expected)
    # On the first expression several queries pass the threshold and their union differs from the best
    # one alone: the comparison above checked the MeViS selection on a mask neither empty nor full.
    out, size = run_model(dataset.expressions[0])
    union = postprocess(out, selection="union", output_size=size)[0].masks.numpy()
    top1 = postprocess(out, selection="top1", output_size=size)[0].masks.numpy()
    assert (out.video_scores()[-1, 0] > 0.5).sum() > 1
    assert 0 < union.mean() < 1 and not np.array_equal(union, top1)


def test_evaluate_with_a_model_predicts_and_scores(mevis, tiny_checkpoint, tmp_path, capsys):
    root = str(mevis[0].root)
    saved = tmp_path / "saved"
    assert main(["evaluate", "--dataset", "mevis", "--root", root, "--split", "valid_u", "--model",
                 str(tiny_checkpoint), "--device", "cpu", "--short-side", "32", "--save-predictions", str(saved),
                 "--output", str(tmp_path / "a.json")]) == 0
    assert len(list(saved.glob("*/*"))) == 5
    assert main(["evaluate", "--dataset", "mevis", "--root", root, "--split", "valid_u",
                 "--predictions", str(saved), "--output", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["jf"] == b["jf"] and 0.0 <= a["jf"] <= 1.0 and a["missing"] == []


def test_predict_command(tmp_path, tiny_checkpoint, capsys):
    info = write_ytvos(tmp_path / "ytvos")["valid"]
    assert main(["predict", "--model", str(tiny_checkpoint), "--dataset", "ytvos", "--root",
                 str(tmp_path / "ytvos"), "--short-side", "32", "--output", str(tmp_path / "pred")]) == 0
    written = {p.relative_to(tmp_path / "pred").as_posix() for p in (tmp_path / "pred").glob("*/*")}
    assert written == {f"{e['video']}/{e['exp_id']}" for e in info["expressions"]}


# ------------------------------------------------------------------------------------------- submissions

@pytest.fixture
def mevis_valid(mevis_root, tmp_path):
    root, infos = mevis_root
    _write_predictions(tmp_path / "pred", infos["valid"])
    return MeViS(root, "valid"), infos["valid"]


def test_submission_layout_and_check(mevis_valid, tmp_path):
    dataset, info = mevis_valid
    n = write_submission(dataset, tmp_path / "pred", tmp_path / "sub.zip")
    names = zipfile.ZipFile(tmp_path / "sub.zip").namelist()
    expected = {f"{e['video']}/{e['exp_id']}/{f}.png" for e in info["expressions"] for f in e["frames"]}
    assert n == len(expected) and set(names) == expected
    assert check_submission(dataset, tmp_path / "sub.zip") == []


def test_ytvos_submission_is_under_annotations(tmp_path):
    info = write_ytvos(tmp_path / "ytvos")["valid"]
    for e in info["expressions"]:
        for frame in e["frames"]:
            write_mask_png(tmp_path / "pred" / e["video"] / e["exp_id"] / f"{frame}.png",
                           np.zeros(info["videos"][e["video"]]["size"], bool))
    dataset = RefYouTubeVOS(tmp_path / "ytvos", "valid")
    write_submission(dataset, tmp_path / "pred", tmp_path / "sub.zip")
    names = zipfile.ZipFile(tmp_path / "sub.zip").namelist()
    assert names and all(n.startswith("Annotations/") for n in names)
    assert check_submission(dataset, tmp_path / "sub.zip") == []


def test_incomplete_predictions_write_no_zip(mevis_valid, tmp_path):
    dataset, info = mevis_valid
    e = info["expressions"][0]
    (tmp_path / "pred" / e["video"] / e["exp_id"] / f"{e['frames'][-1]}.png").unlink()
    with pytest.raises(SubmissionError, match=r"1 of \d+ PNGs missing"):
        write_submission(dataset, tmp_path / "pred", tmp_path / "sub.zip")
    assert list(tmp_path.glob("*.zip")) == [] and list(tmp_path.glob(".sub.zip*")) == []


def test_check_lists_everything_wrong(mevis_valid, tmp_path, capsys):
    dataset, info = mevis_valid
    write_submission(dataset, tmp_path / "pred", tmp_path / "good.zip")
    e0, e1 = info["expressions"][0], info["expressions"][3]
    other_video = next(v for v in info["videos"] if v != e0["video"])
    drop_frame = f"{e0['video']}/{e0['exp_id']}/{e0['frames'][1]}.png"
    gray = f"{e0['video']}/{e0['exp_id']}/{e0['frames'][2]}.png"
    small = f"{e0['video']}/{e0['exp_id']}/{e0['frames'][3]}.png"
    with zipfile.ZipFile(tmp_path / "good.zip") as src, zipfile.ZipFile(tmp_path / "bad.zip", "w") as dst:
        for name in src.namelist():
            video, exp_id = name.split("/")[:2]
            if name == drop_frame or (video == e1["video"] and exp_id == e1["exp_id"]):
                continue
            if video == other_video and e1["video"] != other_video:
                continue
            data = src.read(name)
            if name in (gray, small):
                import io
                arr = np.full((24, 32) if name == gray else (5, 5), 128 if name == gray else 255, np.uint8)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="PNG")
                data = buf.getvalue()
            dst.writestr(name, data)
        dst.writestr("stray/0/00000.png", src.read(src.namelist()[0]))
    problems = check_submission(dataset, tmp_path / "bad.zip")
    text = "\n".join(problems)
    assert f"missing frame {drop_frame}" in text
    assert f"missing expression {e1['video']}/{e1['exp_id']}" in text or f"missing video {e1['video']}" in text
    assert f"{gray}: not binary" in text and f"{small}: 5x5" in text
    assert "unexpected file stray/0/00000.png" in text
    assert main(["submit", "--dataset", "mevis", "--root", str(mevis_valid[0].root), "--check",
                 str(tmp_path / "bad.zip")]) == 1
    captured = capsys.readouterr()
    assert "missing frame" in captured.out and "problems" in captured.err
    assert main(["submit", "--dataset", "mevis", "--root", str(mevis_valid[0].root), "--check",
                 str(tmp_path / "good.zip")]) == 0
    assert "OK" in capsys.readouterr().out


def test_submit_command_writes_zip(mevis_valid, tmp_path, capsys):
    assert main(["submit", "--dataset", "mevis", "--root", str(mevis_valid[0].root), "--predictions",
                 str(tmp_path / "pred"), "-o", str(tmp_path / "out.zip")]) == 0
    assert zipfile.is_zipfile(tmp_path / "out.zip")
    assert main(["submit", "--dataset", "mevis", "--root", str(mevis_valid[0].root), "--predictions",
                 str(tmp_path / "pred"), "-o", str(tmp_path / "out.tar")]) == 2
    assert main(["submit", "--dataset", "mevis", "--root", str(mevis_valid[0].root), "--check",
                 str(tmp_path / "nothere.zip")]) == 1
    assert "nothere.zip: file not found" in capsys.readouterr().err
