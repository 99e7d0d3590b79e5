"""Choices that are the same math but not the same speed on every machine, made by measuring
this run's own first micro-batch, once, before training (as `precision: auto` measures matmuls).

`share_prefix: auto`: computing a prefix the micro-batch's examples share once saves FLOPs
(19-25% faster on AMD EPYC with AVX512, and on the same CPU held to AVX2), but on an AVX2-only
EPYC it measured 35% slower than packing alone. So the first micro-batch runs forward and
backward both ways, alternately; sharing stays unless it is clearly slower. The
result is recorded in the resolved config (config.yaml), so a resumed run keeps it and never
measures again. Nothing is measured where it cannot matter, cannot be timed reliably or cannot
repay the measuring: a run of fewer than MIN_MICRO_BATCHES micro-batches (the loop decides that),
a shared prefix under MIN_PREFIX tokens, several processes, preference pairs, a pass too short to time
(under MIN_FLOPS, e.g. the tests' tiny models; decided by size, not by a clock, so two runs of
the same recipe agree): sharing stays on there. Three passes (shared,
unshared, shared): the first also pays one-time costs (allocations, kernel setup).

The measurement leaves no trace: gradients are cleared and the random state restored, so a run
that measured trains exactly as one told the answer.
"""

import time

MIN_FLOPS = 1e10  # a forward pass of fewer FLOPs (2 x parameters x tokens) is too short to time: sharing stays
MIN_PREFIX = 8  # shared tokens below which sharing cannot matter (a chat template's header)
MIN_MICRO_BATCHES = 30  # a run of fewer would spend over a tenth of its time on the three measuring passes
SLOWER = 1.05  # sharing is dropped only when measured this much slower


def share_prefix(first_batch: list, collate, objective, loss_fn, autocast, params,
                 parameters: int) -> tuple[bool, str | None]:
    """(share or not, what was measured) for this run, from timing its first micro-batch both ways."""
    import torch

    from .batches import shared_prefix_length

    rows = objective.rows(first_batch)
    prefix = shared_prefix_length([r.input_ids for r in rows], [r.loss_mask for r in rows]) if len(rows) > 1 else 0
    if prefix < MIN_PREFIX:
        return True, None  # a template's few header tokens at most: nothing worth timing
    if 2 * parameters * sum(len(r.input_ids) for r in rows) < MIN_FLOPS:
        return True, None  # milliseconds: timing would measure noise (decided by size, so runs agree)
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    batches = {way: collate(rows, share_prefix=way, sequences=objective.sequences) for way in (False, True)}
    best = {False: float("inf"), True: float("inf")}
    try:
        for way in (True, False, True):  # the first pass also pays one-time costs: sharing is timed twice
            t0 = time.perf_counter()
            with autocast():
                loss_sum, _ = objective.loss(loss_fn, batches[way], first_batch)
            loss_sum.backward()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[way] = min(best[way], time.perf_counter() - t0)
    finally:
        for p in params:
            p.grad = None
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    shared, unshared = best[True], best[False]
    verdict = shared <= unshared * SLOWER
    return verdict, (f"first micro-batch: {shared * 1000:.0f} ms with the shared prefix computed once, "
                     f"{unshared * 1000:.0f} ms without")
