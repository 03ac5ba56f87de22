"""Every job by its `config.job` name: the command line (abaw_jax.main) and the tests run jobs from here.

The pipeline receives the stage jobs, and each job's `validate_config` (it checks every stage's settings before the
first stage trains), as these mappings instead of importing them, so that jobs stay independent of one another. No
flags are defined here: importing the registry leaves other programs' command lines alone.
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
STAGE_VALIDATORS = {
    "mae_pretrain": mae_pretrain.validate_config,
    "finetune": finetune.validate_config,
    "extract_features": extract_features.validate_config,
    "fusion": fusion.validate_config,
    "evaluate": evaluate.validate_config,
}
JOBS = {**STAGE_JOBS, "pipeline": functools.partial(pipeline.run, jobs=STAGE_JOBS, validators=STAGE_VALIDATORS)}
