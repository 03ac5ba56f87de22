"""Every job by its `config.job` name: the command line (abaw_jax.main) and the tests run jobs from here.

The pipeline receives the stage jobs (each with its `validate_config`, which checks every stage's settings before
the first stage trains, and its cosmetic keys) as this mapping instead of importing them, so that jobs stay
independent of one another. No flags are defined here: importing the registry leaves other programs' command lines
alone.
"""

import functools

from abaw_jax.jobs import evaluate, extract_features, finetune, fusion, mae_pretrain, pipeline

STAGE_JOBS = {
    "mae_pretrain": pipeline.StageJob(mae_pretrain.train, mae_pretrain.validate_config, mae_pretrain.COSMETIC_KEYS),
    "finetune": pipeline.StageJob(finetune.run, finetune.validate_config, finetune.COSMETIC_KEYS),
    "extract_features": pipeline.StageJob(
        extract_features.run, extract_features.validate_config, extract_features.COSMETIC_KEYS
    ),
    "fusion": pipeline.StageJob(fusion.run, fusion.validate_config, fusion.COSMETIC_KEYS),
    "evaluate": pipeline.StageJob(evaluate.run, evaluate.validate_config, evaluate.COSMETIC_KEYS),
}
JOBS = {
    **{name: job.run for name, job in STAGE_JOBS.items()},
    "pipeline": functools.partial(pipeline.run, jobs=STAGE_JOBS),
}
