"""The profile's attribution of compiled HLO ops to categories, on the job's real tiny step."""

import functools

import jax
import jax.numpy as jnp
import optax

from abaw_jax.jobs import mae_pretrain
from abaw_jax.models.mae import MAE, mae_config
from abaw_jax.runtime import optimizer, profiling, sharding


def test_compiled_step_ops_fall_in_the_right_categories():
    model = MAE(mae_config("tiny", image_size=32, patch_size=8))
    schedule = optax.constant_schedule(1e-4)
    tx = optimizer.make_optimizer(schedule, b1=0.9, b2=0.95, weight_decay=0.05)
    init = functools.partial(mae_pretrain.init_state, model=model, cfg=model.config, tx=tx)
    step = jax.jit(
        functools.partial(
            mae_pretrain.train_step,
            model=model,
            cfg=model.config,
            tx=tx,
            schedule=schedule,
            micro_batches=1,
            mesh=sharding.make_mesh(1, jax.devices()[:1]),
        )
    )
    text = (
        step.lower(jax.eval_shape(init, jax.random.key(0)), jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.uint8))
        .compile()
        .as_text()
    )
    instructions = profiling.hlo_instructions(text)
    by_category = {}
    for name, info in instructions.items():
        by_category.setdefault(profiling.categorize(info), []).append(info)
    fc1_dots = [
        i for i in instructions.values() if "/mlp/fc1/" in i["op_name"] and "dot" in ({i["opcode"]} | i["inner"])
    ]
    assert fc1_dots and all(profiling.categorize(i) == "matmul" for i in fc1_dots)
    softmax = [
        i for i in instructions.values() if "/attn/" in i["op_name"] and "exponential" in ({i["opcode"]} | i["inner"])
    ]
    assert softmax and all(profiling.categorize(i) == "attention" for i in softmax)
    update = [i for i in instructions.values() if "/cond/branch" in i["op_name"]]
    assert update and all(profiling.categorize(i) == "optimizer" for i in update)
    assert by_category.get("layernorm") and by_category.get("masking")
