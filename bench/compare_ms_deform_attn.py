"""Speed of deformdetr's deformable attention against the grid_sample reference.

The comparison itself ships with the package (`deformdetr bench attention`); this script is the
same entry point for people working in the repository:

    python bench/compare_ms_deform_attn.py [--device cpu|cuda] [--batch 1] [--layout local|uniform]
"""

from deformdetr.bench.ms_deform_attn import main

if __name__ == "__main__":
    main()
