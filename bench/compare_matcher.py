"""Times deformdetr's native matcher against the official Deformable DETR approach, and the
native linear_sum_assignment against scipy's (needs scipy). Same as `deformdetr bench matcher`:

    python bench/compare_matcher.py [--batch 32 --queries 300 --classes 91]
"""

from deformdetr.bench.matcher import main

if __name__ == "__main__":
    main()
