import sys
print("gpu_smoke: no CUDA device is available here; run it on a machine with a GPU", file=sys.stderr)
sys.exit(2)
