#!/usr/bin/python3
"""Streams one prompt's answer to stdout as it is generated; --cancel-after N cancels the call once N
tokens arrived, which frees the request's KV cache on the workers.

    PYTHONPATH=build/sdk/python /usr/bin/python3 sdk/python/examples/streaming.py \
        --router 127.0.0.1:7000 --prompt "Once upon a time" --cancel-after 8
"""

import argparse
import sys

from indexcache_client import Client, ClientError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", required=True, help="router address, host:port")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="0 = greedy; unset: the server default")
    parser.add_argument("--timeout", type=float, help="deadline in seconds")
    parser.add_argument("--cancel-after", type=int, help="cancel once this many tokens arrived")
    args = parser.parse_args()

    tokens = 0
    cancelled = False
    try:
        with Client(args.router, timeout=args.timeout) as client:
            with client.stream(args.prompt, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature) as stream:
                for chunk in stream:
                    print(chunk.text or "".join(f"[{i}]" for i in chunk.token_ids), end="", flush=True)
                    tokens += len(chunk.token_ids)
                    if chunk.final is not None:
                        final = chunk.final
                        print(f"\n[{final.finish_reason}, {final.generated_tokens} tokens, first token "
                              f"{final.timings.first_token_seconds:.3f} s, "
                              f"{final.timings.mean_inter_token_seconds:.4f} s/token]")
                    if args.cancel_after is not None and tokens >= args.cancel_after and chunk.final is None:
                        stream.cancel()  # the loop ends at the next step
                        cancelled = True
    except ClientError as error:
        print(f"\n{error}", file=sys.stderr)
        return 1
    if cancelled:
        print(f"\n[cancelled after {tokens} tokens]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
