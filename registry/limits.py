"""Sizes no real prompt comes near, shared by the artifact reader and the readers of records from outside.

They bound what one artifact or one record may claim (README, "Prompt artifact"), so a hostile file or answer is
refused before anything is allocated for it.
"""

MAX_ARTIFACT_BYTES = 256 * 1024 * 1024
MAX_VIRTUAL_TOKENS = 65536
MAX_HIDDEN_SIZE = 65536
SUPPORTED_DTYPE_NAMES = frozenset({"float32", "float16"})
