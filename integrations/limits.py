"""The prompt proxy's limits and their defaults, in a module the CLI can show without the proxy's dependencies."""

DEFAULT_MAX_BODY_BYTES = 1 << 20  # a whole request body; 413 above
DEFAULT_TIMEOUT_S = 600.0  # for the engine's answer; 504 after
#: Positions of one sequence (virtual + its tokens + max_tokens) when the checkpoint's config names no context length.
DEFAULT_MAX_REQUEST_TOKENS = 4096
DEFAULT_MAX_BATCH = 16  # sequences in one request's prompt
DEFAULT_MAX_N = 16  # choices per sequence (n, best_of)
MAX_DEPTH = 32  # JSON nesting of a body; a completion request needs 3
DEFAULT_MAX_TOKENS = 16  # what OpenAI and vLLM generate when a completion request names no max_tokens
