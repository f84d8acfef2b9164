"""``iqa-plugins score`` under bad files, bad arguments and damaged outputs: exit status, the message
naming the file or argument, and what the output file holds afterwards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from robust_helpers import BAD_KINDS, CHEAP, OTHER, bomb_png, error_lines, make_bad_file, rows_of, save_random_png

from iqa_plugins.scoring_output import normalise_path, sidecar_path

SCORE = ["score", "--workers", "0", "-q"]


def score(cli, *args):
    return cli([*SCORE, *map(str, args)])


# -------------------------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_file_is_skipped_named_and_logged(cli, good_images, tmp_path, kind, fmt):
    folder, good = good_images
    bad = make_bad_file(kind, folder / "bad")
    out = tmp_path / f"scores.{fmt}"
    result = score(cli, folder, "--metric", CHEAP, "--batch-size", "2", "-o", out)
    assert result.code == 1, result.err
    assert bad.name in result.err
    rows = rows_of(out)
    assert sorted(r["path"] for r in rows) == good  # every good row, once
    logged = error_lines(out)
    assert [Path(e["path"]).name for e in logged] == [bad.name] and logged[0]["reason"]


def test_folder_named_like_an_image_is_walked(cli, good_images, tmp_path):
    folder, good = good_images
    inner = make_bad_file("directory_named_png", folder)
    out = tmp_path / "s.csv"
    assert score(cli, folder, "--metric", CHEAP, "-o", out).code == 0
    assert sorted(r["path"] for r in rows_of(out)) == sorted(good + [normalise_path(inner)])


@pytest.mark.parametrize("batch_size", [1, 4])
def test_decompression_bomb_among_good_images_then_resume(cli, good_images, tmp_path, batch_size):
    folder, good = good_images
    bomb_png(folder / "aa_bomb.png")  # sorts first
    out = tmp_path / "s.jsonl"
    first = score(cli, folder, "--metric", CHEAP, "--batch-size", batch_size, "-o", out)
    assert first.code == 1 and "aa_bomb.png: refused as a possible decompression bomb" in first.err
    assert sorted(r["path"] for r in rows_of(out)) == good
    again = score(cli, folder, "--metric", CHEAP, "--batch-size", batch_size, "-o", out, "--resume")
    assert again.code == 1 and "aa_bomb.png" in again.err  # retried, reported again, no loop
    assert sorted(r["path"] for r in rows_of(out)) == good
    assert [Path(e["path"]).name for e in error_lines(out)] == ["aa_bomb.png", "aa_bomb.png"]


def test_dangling_symlink_loops_and_folder_loops_are_named(cli, good_images, tmp_path):
    folder, good = good_images
    os.symlink(folder, folder / "sub" / "back")  # a folder loop
    make_bad_file("dangling_symlink", folder)
    make_bad_file("symlink_loop", folder)
    out = tmp_path / "s.csv"
    result = score(cli, folder, "--metric", CHEAP, "-o", out)
    assert result.code == 1
    for name in ("dangling.png: dangling symlink", "loop.png: symlink loop", "back: symlink loop"):
        assert name in result.err
    assert sorted(r["path"] for r in rows_of(out)) == good


def test_unreadable_subfolder_is_named(cli, good_images, tmp_path, monkeypatch):
    folder, good = good_images
    locked = folder / "locked"
    save_random_png(locked / "x.png")
    real_scandir = os.scandir

    def scandir(path="."):  # what a folder without read permission does (tests may run as root)
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "s.csv"
    result = score(cli, folder, "--metric", CHEAP, "-o", out)
    assert result.code == 1 and f"{locked}: cannot list folder: Permission denied" in result.err
    assert sorted(r["path"] for r in rows_of(out)) == good


# ------------------------------------------------------------------------------------- arguments, file intact

PRECIOUS = "precious,data\n1,2\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--batch-size", "-3"], "--batch-size must be >= 1"),
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--min-side", "0"], "--min-side must be >= 1"),
        (["--explain"], f"--explain: metric '{CHEAP}' has no explanations"),
        (["--metric", "no_such_metric"], "unknown --metric 'no_such_metric'"),
        (["--metric", "psnr"], "full-reference"),
        (["--metric-opt", "oops"], "--metric-opt expects [METRIC:]KEY=VALUE, got 'oops'"),
        (["--metric-opt", "x=[1, 2"], "--metric-opt 'x=[1, 2': the value is not valid YAML"),
        (["--metric-opt", "no_such_option=1"], f"--metric '{CHEAP}' does not accept the --metric-opt given"),
        (["--metric", f"{CHEAP},{CHEAP}"], f"--metric: {CHEAP} given more than once"),
        (["--metric", f"{CHEAP},"], "--metric: empty metric name"),
        (["--metric", f"{CHEAP},{OTHER}", "--metric-opt", "a=1"], "with several metrics say which one"),
        (["--metric-opt", "brisque:a=1"], "'brisque' is not one of the --metric names"),
        (["--device", "cuda:7"], "--device 'cuda:7'"),
        (["--device", "toaster"], "--device 'toaster'"),
        (["--format", "xml"], "invalid choice: 'xml'"),
        (["--dtype", "fp8"], "invalid choice: 'fp8'"),
        (["--batch-size", "two"], "invalid int value: 'two'"),
    ],
)
def test_bad_arguments_exit_2_and_leave_the_output_alone(cli, good_images, tmp_path, args, message):
    folder, _ = good_images
    out = tmp_path / "kept.csv"
    out.write_text(PRECIOUS)
    argv = [str(folder), "-o", str(out), *args]
    if "--metric" not in args:
        argv += ["--metric", CHEAP]
    result = score(cli, *argv)
    assert result.code == 2, result.err
    assert message in result.err
    assert out.read_text() == PRECIOUS
    assert not Path(f"{out}.errors.jsonl").exists() and not sidecar_path(out).exists()


def test_output_naming_a_directory(cli, good_images, tmp_path):
    folder, _ = good_images
    result = score(cli, folder, "--metric", CHEAP, "-o", tmp_path)
    assert result.code == 2 and f"--output {str(tmp_path)!r} is a directory" in result.err


def test_output_under_a_file(cli, good_images, tmp_path):
    folder, _ = good_images
    (tmp_path / "file").write_text("x")
    result = score(cli, folder, "--metric", CHEAP, "-o", tmp_path / "file" / "s.csv")
    assert result.code == 2 and "is not a directory" in result.err


def test_resume_needs_output(cli, good_images):
    result = score(cli, good_images[0], "--metric", CHEAP, "--resume")
    assert result.code == 2 and "--resume needs --output" in result.err


def test_no_images_is_exit_2_and_no_file(cli, tmp_path):
    out = tmp_path / "s.csv"
    result = score(cli, tmp_path / "missing", "--metric", CHEAP, "-o", out)
    assert result.code == 2 and "missing: no such file or directory" in result.err and not out.exists()


# --------------------------------------------------------------------------------------------------- resume


@pytest.fixture
def scored(cli, good_images, tmp_path):
    """A finished run of the three good images, in each format; returns (folder, good paths, outputs)."""
    folder, good = good_images
    outputs = {}
    for fmt in ("csv", "jsonl"):
        outputs[fmt] = tmp_path / f"done.{fmt}"
        assert score(cli, folder, "--metric", CHEAP, "-o", outputs[fmt]).code == 0
    return folder, good, outputs


def _last_row_start(data: bytes) -> int:
    return data[:-1].rfind(b"\n") + 1


# Where a kill can cut the last row: fractions of its length (inside the path, at the comma, inside the
# score, just before the newline).
CUTS = [0.1, 0.5, 0.9, -1]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("cut", CUTS)
def test_resume_repairs_a_cut_last_row_and_rescores_it(cli, scored, fmt, cut):
    folder, _, outputs = scored
    out = outputs[fmt]
    full = rows_of(out)
    data = out.read_bytes()
    start = _last_row_start(data)
    end = len(data) - 1 if cut == -1 else start + int((len(data) - start) * cut)
    out.write_bytes(data[:end])
    result = score(cli, folder, "--metric", CHEAP, "-o", out, "--resume")
    assert result.code == 0, result.err
    assert "dropped a cut last row" in result.err
    rows = rows_of(out)
    assert [r["path"] for r in rows] == [r["path"] for r in full]  # each once, in order
    for got, want in zip(rows, full):
        assert got[CHEAP] == pytest.approx(want[CHEAP], rel=1e-6)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_after_a_cut_first_line_starts_over(cli, scored, fmt):
    folder, good, outputs = scored
    out = outputs[fmt]
    out.write_bytes(out.read_bytes()[:7])  # inside the CSV header / the JSONL metadata line
    assert score(cli, folder, "--metric", CHEAP, "-o", out, "--resume").code == 0
    assert sorted(r["path"] for r in rows_of(out)) == good


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_of_a_finished_file_scores_nothing(cli, scored, fmt):
    folder, _, outputs = scored
    before = outputs[fmt].read_bytes()
    result = score(cli, folder, "--metric", CHEAP, "-o", outputs[fmt], "--resume")
    assert result.code == 0 and "every image is already in" in result.err
    assert outputs[fmt].read_bytes() == before


def test_resume_with_other_spellings_of_the_same_paths(cli, scored, monkeypatch, tmp_path):
    folder, _, outputs = scored
    monkeypatch.chdir(folder.parent)
    os.symlink(folder, tmp_path / "alias")
    before = outputs["csv"].read_bytes()
    for spelling in (os.path.relpath(folder), str(tmp_path / "alias"), f"{folder}/./sub/../"):
        result = score(cli, spelling, "--metric", CHEAP, "-o", outputs["csv"], "--resume")
        assert result.code == 0 and "every image is already in" in result.err, spelling
    assert outputs["csv"].read_bytes() == before


@pytest.mark.parametrize(
    "fmt, content, sidecar, message",
    [
        ("csv", PRECIOUS, None, "has no metadata file"),
        ("csv", PRECIOUS, '{"format": "something-else"}', "is not an iqa-plugins score file"),
        ("csv", PRECIOUS, "{not json", "unreadable metadata"),
        ("jsonl", '{"a": 1}\n{"a": 2}\n', None, "is not an iqa-plugins score file"),
        ("jsonl", "precious", None, "is not an iqa-plugins JSONL score file"),
    ],
)
def test_resume_refuses_foreign_files(cli, good_images, tmp_path, fmt, content, sidecar, message):
    out = tmp_path / f"foreign.{fmt}"
    out.write_text(content)
    if sidecar is not None:
        sidecar_path(out).write_text(sidecar)
    result = score(cli, good_images[0], "--metric", CHEAP, "-o", out, "--resume")
    assert result.code == 2 and message in result.err and str(out) in result.err
    assert out.read_text() == content


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(
    "change",
    [["--metric", OTHER], ["--metric", f"{CHEAP},{OTHER}"], ["--metric", CHEAP, "--metric-opt", "seed=7"]],
)
def test_resume_refuses_other_metrics_or_options(cli, scored, fmt, change):
    folder, _, outputs = scored
    before = outputs[fmt].read_bytes()
    result = score(cli, folder, "-o", outputs[fmt], "--resume", *change)
    assert result.code == 2, result.err
    assert f"holds {CHEAP} (options {{}}, explain=False), but this run asks for" in result.err
    assert outputs[fmt].read_bytes() == before


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_refuses_a_damaged_middle_row(cli, scored, fmt):
    folder, _, outputs = scored
    lines = outputs[fmt].read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("/", "#", 1)[: len(lines[1]) // 2] + "\n"
    outputs[fmt].write_text("".join(lines))
    before = outputs[fmt].read_bytes()
    result = score(cli, folder, "--metric", CHEAP, "-o", outputs[fmt], "--resume")
    assert result.code == 2 and "not a complete score row" in result.err
    assert outputs[fmt].read_bytes() == before


def test_resume_retries_files_listed_as_errors(cli, good_images, tmp_path):
    folder, good = good_images
    late = folder / "late.png"
    late.write_text("not yet an image")
    out = tmp_path / "s.csv"
    assert score(cli, folder, "--metric", CHEAP, "-o", out).code == 1
    save_random_png(late)
    assert score(cli, folder, "--metric", CHEAP, "-o", out, "--resume").code == 0
    assert sorted(r["path"] for r in rows_of(out)) == sorted(good + [normalise_path(late)])


# ---------------------------------------------------------------------------------------- several metrics


def test_several_metrics_decode_each_image_once(cli, good_images, tmp_path, monkeypatch):
    from iqa_plugins import scoring

    folder, good = good_images
    decoded = []
    real = scoring.read_pixels
    monkeypatch.setattr(scoring, "read_pixels", lambda path, **kw: decoded.append(path) or real(path, **kw))
    both = tmp_path / "both.jsonl"
    assert score(cli, folder, "--metric", CHEAP, "--metric", OTHER, "-o", both).code == 0
    assert sorted(decoded) == good
    meta_line = json.loads(both.read_text().splitlines()[0])["_meta"]
    assert meta_line["columns"] == ["path", CHEAP, OTHER]
    assert [(m["name"], m["score_range"], m["lower_better"]) for m in meta_line["metrics"]] == [
        (CHEAP, [0, 100], True), (OTHER, [0, 8], False)]
    single = {}
    for name in (CHEAP, OTHER):
        assert score(cli, folder, "--metric", name, "-o", tmp_path / f"{name}.csv").code == 0
        single[name] = {r["path"]: r[name] for r in rows_of(tmp_path / f"{name}.csv")}
    for row in rows_of(both):
        for name in (CHEAP, OTHER):
            assert row[name] == pytest.approx(single[name][row["path"]], rel=1e-5)


def test_comma_list_and_resume_per_metric_set(cli, good_images, tmp_path):
    folder, good = good_images
    out = tmp_path / "s.csv"
    assert score(cli, folder / "a.png", "--metric", f"{CHEAP},{OTHER}", "-o", out).code == 0
    wrong = score(cli, folder, "--metric", f"{OTHER},{CHEAP}", "-o", out, "--resume")  # other column order
    assert wrong.code == 2
    assert score(cli, folder, "--metric", CHEAP, "--metric", OTHER, "-o", out, "--resume").code == 0
    rows = rows_of(out)
    assert sorted(r["path"] for r in rows) == good and list(rows[0]) == ["path", CHEAP, OTHER]


def test_per_metric_options_with_prefix(cli, good_images, tmp_path, drexperts_checkpoint):
    folder, good = good_images
    out = tmp_path / "s.jsonl"
    result = score(cli, folder, "--metric", f"drexperts,{CHEAP}", "--metric-opt",
                   f"drexperts:pretrained_model_path={drexperts_checkpoint}", "-o", out)
    assert result.code == 0, result.err
    rows = rows_of(out)
    assert sorted(r["path"] for r in rows) == good and list(rows[0]) == ["path", "drexperts", CHEAP]


# ------------------------------------------------------------------------------------ explanations, weights


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    """The compact DR.Experts format, with NaN in the score head (a broken training run's output)."""
    import torch

    from iqa_plugins.archs.drexperts_arch import DRExperts
    from iqa_plugins.archs.drexperts_arch import save_pretrained

    model = DRExperts(pretrained=False, config="small").eval()
    with torch.no_grad():
        for name, value in model.named_parameters():
            if name.startswith("score"):
                value.fill_(float("nan"))
    path = tmp_path_factory.mktemp("nan") / "nan.pth"
    save_pretrained(model, path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_nan_scores_are_errors_not_rows(cli, good_images, tmp_path, nan_checkpoint, fmt):
    folder, _ = good_images
    out = tmp_path / f"s.{fmt}"
    result = score(cli, folder / "a.png", "--metric", "drexperts", "--metric-opt",
                   f"pretrained_model_path={nan_checkpoint}", "-o", out)
    assert result.code == 1 and "a.png: metric gave a non-finite value (drexperts=nan)" in result.err
    assert rows_of(out) == []
    assert "NaN" not in out.read_text()


def test_explain_columns_and_resume_toggling_explain(cli, good_images, tmp_path, drexperts_checkpoint):
    folder, good = good_images
    out = tmp_path / "s.csv"
    opt = f"pretrained_model_path={drexperts_checkpoint}"
    assert score(cli, folder / "a.png", "--metric", "drexperts", "--metric-opt", opt, "--explain", "-o", out).code == 0
    before = out.read_bytes()
    result = score(cli, folder, "--metric", "drexperts", "--metric-opt", opt, "-o", out, "--resume")
    assert result.code == 2 and "explain=True" in result.err and out.read_bytes() == before
    assert score(cli, folder, "--metric", "drexperts", "--metric-opt", opt, "--explain", "-o", out,
                 "--resume").code == 0
    rows = rows_of(out)
    assert sorted(r["path"] for r in rows) == good
    assert "drexperts:share:hazy" in rows[0] and "drexperts:weight:hazy" in rows[0] and all(len(r) == len(rows[0]) for r in rows)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p, good: p.write_bytes(b"garbage, not a checkpoint"), "could not create --metric 'drexperts'"),
        (lambda p, good: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]), "could not create"),
        (lambda p, good: p.mkdir(), "is a folder, not a checkpoint file"),
        (lambda p, good: None, "no such file"),
    ],
    ids=["garbage", "truncated", "directory", "missing"],
)
def test_bad_weights_files(cli, good_images, tmp_path, drexperts_checkpoint, make, message):
    weights = tmp_path / "w.pth"
    make(weights, drexperts_checkpoint)
    out = tmp_path / "s.csv"
    out.write_text(PRECIOUS)
    result = score(cli, good_images[0], "--metric", "drexperts", "--metric-opt", f"pretrained_model_path={weights}",
                   "-o", out)
    assert result.code == 2 and message in result.err and "w.pth" in result.err
    assert out.read_text() == PRECIOUS


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_file_names_that_are_not_utf8(cli, good_images, tmp_path, fmt):
    folder, good = good_images
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # Latin-1 bytes, not UTF-8
    save_random_png(Path(os.fsdecode(odd)))
    out = tmp_path / f"s.{fmt}"
    result = score(cli, folder, "--metric", CHEAP, "-o", out)
    rows = rows_of(out)
    if fmt == "jsonl":  # JSON escapes the name; resume recognises it
        assert result.code == 0 and len(rows) == 4
        again = score(cli, folder, "--metric", CHEAP, "-o", out, "--resume")
        assert again.code == 0 and "every image is already in" in again.err
    else:  # CSV is UTF-8 text: the image is reported, every other row kept
        assert result.code == 1 and "not valid UTF-8" in result.err
        assert sorted(r["path"] for r in rows) == good


def test_resume_repairs_a_row_cut_inside_a_multibyte_character(cli, good_images, tmp_path):
    folder, good = good_images
    accented = save_random_png(folder / "zé.png")  # sorts last: its row is the last one
    out = tmp_path / "s.csv"
    assert score(cli, folder, "--metric", CHEAP, "-o", out).code == 0
    data = out.read_bytes()
    out.write_bytes(data[: data.index("é".encode()) + 1])  # between the two bytes of é
    result = score(cli, folder, "--metric", CHEAP, "-o", out, "--resume")
    assert result.code == 0 and "dropped a cut last row" in result.err
    assert [r["path"] for r in rows_of(out)] == sorted(good + [normalise_path(accented)])


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_resume_that_fails_leaves_even_a_cut_row_alone(cli, scored, fmt):
    folder, _, outputs = scored
    out = outputs[fmt]
    out.write_bytes(out.read_bytes()[:-5])
    before = out.read_bytes()
    result = score(cli, folder, "--metric", CHEAP, "-o", out, "--resume", "--device", "toaster")
    assert result.code == 2 and "--device 'toaster'" in result.err
    assert out.read_bytes() == before
