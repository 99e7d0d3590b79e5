"""The processes training one model together (torch.distributed, set up by accelerate), and what
makes N of them give the update one process would:

  - every process builds the same optimizer steps (batches.step_groups: the seeded order and
    length grouping do not depend on N) and takes its own shard of each micro-batch (`shard`:
    every N-th example, so no example twice and none lost)
  - the summed token loss is divided by the trained tokens of the whole step, counted across
    processes (`sum`), and multiplied by N (`grad_scale`), because DDP and FSDP average gradients
    over processes: the average of N times each shard's share is the one-process gradient
  - a process whose shard of a micro-batch is empty still runs one example at weight 0: every
    process must join every collective (DDP's gradient all-reduce, FSDP's all-gathers)
  - rank 0 alone writes the run folder, the registry and the terminal; an error any process finds
    while setting up stops them all (`agreeing`), and rank 0 names it

Strategies: DDP (accelerate wraps the loss module; gradients all-reduced once per optimizer step)
replicates the model in every process. FSDP shards weights, gradients and optimizer state
(`shard_model`: torch's FSDP2 `fully_shard`, one unit per decoder layer, the rest with the loss
module as root); a checkpoint or the shipped model gathers full tensors (`full`) and loading
takes each process's slice (`like`). accelerate's FSDP plugin would call the same `fully_shard`,
but accelerate sets FSDP up only on accelerators; torch runs FSDP2 over gloo on CPU too, so
tunery calls it itself and the same code is tested here and runs on GPUs.

One process is a World of size 1, whose operations cost nothing.
"""

import contextlib
import gc

from ..errors import ConfigError
from .control import error_from, error_report


def shard(examples: list, rank: int, size: int) -> list:
    """Process `rank`'s examples of a micro-batch: every size-th one from its rank on. A micro-batch
    is sorted by length (batches.py), so each process gets a like share of its tokens."""
    return examples[rank::size]


class World:
    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.size = accelerator.num_processes if accelerator else 1
        self.rank = accelerator.process_index if accelerator else 0
        self.device = accelerator.device if accelerator else None

    @classmethod
    @contextlib.contextmanager
    def joined(cls):
        """This process's world for one run: itself alone, or its place among the processes a
        launcher started (accelerate launch, torchrun, `tunery train --nproc`), over gloo on CPU
        and NCCL on GPUs. A world of several is left at the end: a process group left to the
        interpreter's teardown can abort it ("terminate called without an active exception")."""
        import torch
        from accelerate import Accelerator

        world = cls(Accelerator(cpu=not torch.cuda.is_available()))
        try:
            yield world
        finally:
            if world.size > 1:
                from accelerate.state import AcceleratorState

                AcceleratorState._reset_state(reset_partial_state=True)  # a later run joins afresh
                if torch.distributed.is_initialized():
                    torch.distributed.destroy_process_group()
                gc.collect()  # its last references (in a traceback's frames): its threads stop now

    def refuse_unsupported(self, grad_accum: int) -> None:
        """Launcher set-ups this loop would not drive right, refused before any work."""
        kind = str(self.accelerator.distributed_type) if self.accelerator else ""
        if kind.endswith("DEEPSPEED") and grad_accum > 1:
            raise ConfigError("grad_accum: under DeepSpeed accelerate steps the optimizer inside every backward, so "
                              "micro-batches cannot accumulate; use --grad-accum 1 and a larger --batch-size",
                              field="grad_accum")
        if kind.endswith("FSDP"):
            raise ConfigError("strategy: launched with accelerate's FSDP (--use_fsdp); launch without it and pass "
                              "--strategy fsdp: tunery shards the model itself", field="strategy")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def grad_scale(self) -> int:
        """DDP and FSDP average gradients over processes; the loss is scaled up so they sum."""
        return self.size

    def shard(self, examples: list) -> list:
        return shard(examples, self.rank, self.size)

    # -- collectives: every process calls each one, in the same order ---------------------------
    def sum(self, *values: float) -> list[float]:
        """Each value summed over the processes."""
        if self.size == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj):
        """Rank 0's `obj`, on every process."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every process's `obj`, by rank, on every process."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def no_sync(self, module, sync: bool):
        """Gradients reduced across processes only when `sync` (the step's last micro-batch)."""
        if sync or self.size == 1:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(module)

    @contextlib.contextmanager
    def agreeing(self):
        """Around work that may fail on some processes and not others (reading files, rank 0's
        checks of the run folder): if any process failed, every process raises, the one that failed
        its own error and the others the first failure's message, so rank 0 can name it. The work
        inside must not itself call a collective."""
        failure = None
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - shared with the other processes, then raised
            failure = exc
        if self.size > 1:
            reports = self.gather(None if failure is None else error_report(failure))
            first = next((r for r in reports if r is not None), None)
            if failure is None and first is not None:
                raise error_from(first)
        if failure is not None:
            raise failure



def shard_model(token_loss) -> None:
    """FSDP2 in place: each decoder layer a unit (gathered for its forward and backward, then
    freed), the rest (embeddings, final norm, output layer) with `token_loss`, the root whose
    forward the loop calls."""
    from torch.distributed.fsdp import fully_shard

    for layer in token_loss.decoder.layers:
        fully_shard(layer)
    fully_shard(token_loss)


def is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t):
    """The whole tensor behind an FSDP shard (a collective: every process calls it, in the same
    order), or `t` itself."""
    return t.full_tensor() if is_sharded(t) else t


def like(param, whole):
    """This process's slice of `whole` shaped as `param` is sharded (no communication), or `whole`."""
    if not is_sharded(param):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(param.device, param.dtype), param.device_mesh, param.placements,
                             src_data_rank=None)
