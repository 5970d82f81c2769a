"""Client of an indexcache serving cluster (the public indexcache.v1 gRPC API on its router).

    from indexcache_client import Client
    with Client("127.0.0.1:7000", timeout=60) as client:
        result = client.generate("The capital of France is", max_new_tokens=16, temperature=0)
        print(result.text, result.finish_reason, result.timings.first_token_seconds)

Runs on Debian's python3-grpcio and python3-protobuf; the stubs come from generate_stubs.sh.
Installable with pip (pyproject.toml); `__version__` is the project's (CMakeLists.txt's project VERSION).
"""

__version__ = "0.1.0"

from .client import Client, ClientError, GenerateStream
from .results import Chunk, FinalInfo, ModelInfo, Result, Timings, TokenLogprobs

__all__ = ["Client", "ClientError", "GenerateStream", "Chunk", "FinalInfo", "ModelInfo", "Result", "Timings",
           "TokenLogprobs"]
