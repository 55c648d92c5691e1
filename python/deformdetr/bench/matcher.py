"""Times deformdetr's native matcher against the official Deformable DETR approach, and the
native linear_sum_assignment against scipy's, on this machine's CPU; checks that they agree.

The official approach: the focal/L1/GIoU cost in torch on the whole flattened batch (B*Q
predictions) against all the batch's targets concatenated, then scipy on each image's block.

    deformdetr bench matcher [--batch 32 --queries 300 --classes 91]
"""

from __future__ import annotations

import argparse
import platform
import statistics

import numpy as np
import torch

try:
    from scipy.optimize import linear_sum_assignment as scipy_lsa
except ImportError as error:  # scipy is the reference here, not a dependency of the package
    raise SystemExit("the matcher benchmark compares against scipy: pip install scipy") from error

from deformdetr.bench import call_seconds, positive_int
from deformdetr.models import HungarianMatcher
from deformdetr.models.matcher import matching_cost_reference
from deformdetr.ops import linear_sum_assignment


@torch.no_grad()
def official_matcher(outputs, targets, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25):
    """The official algorithm, written from its description (torch cost + scipy per image)."""
    cost = matching_cost_reference(outputs, targets, cost_class, cost_bbox, cost_giou, alpha).cpu()
    sizes = [len(t["boxes"]) for t in targets]
    result = [scipy_lsa(c[i]) for i, c in enumerate(cost.split(sizes, -1))]
    return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in result]


def random_batch(batch, queries, classes, mean_targets, seed=0):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(batch, queries, classes, generator=g),
        "pred_boxes": torch.rand(batch, queries, 4, generator=g) * 0.5 + 0.1,
    }
    targets = []
    for _ in range(batch):
        count = int(torch.randint(max(0, mean_targets - 4), mean_targets + 5, (1,), generator=g))
        targets.append({
            "labels": torch.randint(0, classes, (count,), generator=g),
            "boxes": torch.rand(count, 4, generator=g) * 0.5 + 0.1,
        })
    return outputs, targets


def best_ms(fn, repeats, warmup=3):
    """(best, median) milliseconds of ``repeats`` calls."""
    times = call_seconds(fn, repeats, warmup)
    return 1e3 * min(times), 1e3 * statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="deformdetr bench matcher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--queries", type=positive_int, default=300)
    parser.add_argument("--classes", type=positive_int, default=91)
    parser.add_argument("--targets", type=positive_int, default=7, help="mean targets per image")
    parser.add_argument("--repeats", "--repeat", type=positive_int, default=30)
    parser.add_argument("--lsa-size", type=positive_int, default=1000)
    args = parser.parse_args(argv)

    print(f"CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}")
    outputs, targets = random_batch(args.batch, args.queries, args.classes, args.targets)
    matcher = HungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2, focal_alpha=0.25)
    ours = matcher(outputs, targets)
    official = official_matcher(outputs, targets)
    agree = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ours, official))
    total_targets = sum(len(t["labels"]) for t in targets)
    ours_ms = best_ms(lambda: matcher(outputs, targets), args.repeats)
    official_ms = best_ms(lambda: official_matcher(outputs, targets), args.repeats)
    print(f"matcher B={args.batch} Q={args.queries} C={args.classes} targets={total_targets} "
          f"(~{total_targets / args.batch:.1f}/image): assignments identical: {agree}")
    print(f"  official (torch cost + scipy): best {official_ms[0]:8.3f} ms  median {official_ms[1]:8.3f} ms")
    print(f"  deformdetr (native):           best {ours_ms[0]:8.3f} ms  median {ours_ms[1]:8.3f} ms")
    print(f"  speed-up: {official_ms[0] / ours_ms[0]:.1f}x (best), {official_ms[1] / ours_ms[1]:.1f}x (median)")

    rng = np.random.default_rng(0)
    for label, shape, repeats in (
        ("uniform", (args.lsa_size, args.lsa_size), 5),
        ("integers 0..99", (args.lsa_size, args.lsa_size), 5),
        ("uniform", (300, 7), 2000),
    ):
        cost = rng.random(shape) if label == "uniform" else rng.integers(0, 100, shape).astype(np.float64)
        a, b = linear_sum_assignment(cost), scipy_lsa(cost)
        same_total = bool(np.isclose(cost[a].sum(), cost[b].sum()))
        ours_ms = best_ms(lambda: linear_sum_assignment(cost), repeats, warmup=1)
        scipy_ms = best_ms(lambda: scipy_lsa(cost), repeats, warmup=1)
        print(f"linear_sum_assignment {shape[0]}x{shape[1]} {label}: same total cost: {same_total}")
        print(f"  scipy:      best {scipy_ms[0]:9.4f} ms  median {scipy_ms[1]:9.4f} ms")
        print(f"  deformdetr: best {ours_ms[0]:9.4f} ms  median {ours_ms[1]:9.4f} ms")
        print(f"  speed-up: {scipy_ms[0] / ours_ms[0]:.2f}x (best), {scipy_ms[1] / ours_ms[1]:.2f}x (median)")


if __name__ == "__main__":
    main()
