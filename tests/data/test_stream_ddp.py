"""Real Ray Train DDP (2 gloo ranks x 2 DataLoader workers) over uneven shards: equal steps, no hang."""

import sys

import torch
import torch.distributed as dist

from mtl.data.stream import train_loader
from tests.conftest import stream_config
from mtl.data.index import load_index


def count_steps_per_rank(config: dict) -> list:
    index = load_index(config["shards"])
    loader = train_loader(index, config["stream"], num_workers=2)
    steps = 0
    for epoch in range(2):
        loader.set_epoch(epoch)
        for batch in loader:
            total = torch.tensor([len(batch.keys)], dtype=torch.float32)
            dist.all_reduce(total)  # a collective per step, as DDP's gradient all-reduce: unequal steps would hang
            steps += 1
    loader.close()
    counts = [torch.zeros(1) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([float(steps)]))
    return [int(c.item()) for c in counts]


def test_ddp_ranks_take_equal_steps_over_uneven_shards(imbalanced_shards, ray_session):
    import ray.cloudpickle
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    index = load_index(imbalanced_shards)
    assert len(set(index.shard_sizes("train"))) > 1
    trainer = TorchTrainer(
        count_steps_per_rank, train_loop_config={"shards": str(imbalanced_shards),
                                                     "stream": stream_config(batch_size=8, shuffle_buffer=20)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False),
        torch_config=TorchConfig(backend="gloo", timeout_s=60),
        run_config=ray.train.RunConfig(name="ddp-equal-steps", storage_path=str(imbalanced_shards.parent / "ray")),
    )
    result = trainer.fit()
    expected = 2 * (index.stats["train"].samples // (8 * 2))
    assert result.return_value == [expected, expected]
