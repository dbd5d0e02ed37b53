# The tests pin the float GEMM backend (RBN_GEMM, read by the module and by the rbn tool they
# run); a caller's own RBN_GEMM is kept, so the suite can be run on each backend.
import os

os.environ.setdefault("RBN_GEMM", "openblas")
