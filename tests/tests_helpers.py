"""Shared builders for tests (importable as ``tests_helpers`` because tests/ is on sys.path)."""

from prelort.config import SimulationConfig, config_from_mapping


def tiny(model_dir, task, out, **kw) -> SimulationConfig:
    base = dict(
        model=str(model_dir),
        task=str(task),
        ranks="1,2,4",
        clients=3,
        rounds=2,
        local_steps=3,
        batch_size=8,
        lr=5e-3,
        eval_examples=24,
        generate_examples=6,
        max_new_tokens=4,
        partition="iid",
        out=str(out),
        max_length=32,
    )
    base.update(kw)
    return config_from_mapping(base)
