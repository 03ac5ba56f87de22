"""The names of the files a job writes into its workdir that another module reads, in one place.

Each name is imported by the job that writes the file and by every reader (the report, the predictor bundle, the
next stage); no module spells these names itself.

    finetune   BEST_FILE        the best evaluation step and its scores
               FINETUNE_EXPORT  export/<this>: task, output transform, best step (read by extract_features)
    fusion     SCORES_FILE      members' tracks, best steps, held-out and test scores
               PREDICTIONS_DIR  every member's per-frame outputs (`data.predictions`)
    evaluate   RESULTS_FILE     tuning, Tables 1-3, the ablation, the test metric, the tuned post-processing
               PER_VIDEO_FILE   per-video sufficient statistics of every score in RESULTS_FILE (the report's
                                bootstrap over videos)
               TABLES_FILE      the job's own markdown tables
               FINAL_DIR        <track>.npz of the submitted test tracks' post-processed scores and labels
    every job  METRICS_FILE     scalars per step (`runtime.telemetry`)
"""

BEST_FILE = "best.json"
FINETUNE_EXPORT = "finetune.json"
SCORES_FILE = "scores.json"
PREDICTIONS_DIR = "predictions"
RESULTS_FILE = "results.json"
PER_VIDEO_FILE = "per_video.json"
TABLES_FILE = "tables.md"
FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"
