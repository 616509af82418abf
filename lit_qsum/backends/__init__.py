"""Model building: environment probe, backend choice, and one loader per backend."""

import logging

# On AVX512-BF16 CPUs bitsandbytes tries to fetch an optional kernel from a model hub and warns when it
# can't; its own CPU kernel is used instead, so the warning only confuses offline users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
