"""Every job by its `config.job` name: the command line (abaw_jax.main) and the tests run jobs from here.

The pipeline receives the stage jobs as this mapping instead of importing them, so that jobs stay independent of
one another. No flags are defined here: importing the registry leaves other programs' command lines alone.
"""
import functools

from abaw_jax.jobs import evaluate, extract_features, finetune, fusion, mae_pretrain, pipeline

STAGE_JOBS = {
    "mae_pretrain": mae_pretrain.train,
    "finetune": finetune.run,
    "extract_features": extract_features.run,
    "fusion": fusion.run,
    "evaluate": evaluate.run,
}
JOBS = {**STAGE_JOBS, "pipeline": functools.partial(pipeline.run, jobs=STAGE_JOBS)}
