#!/usr/bin/python3
"""Sends one prompt to a router, waits for the whole answer and prints it with its final info.

    PYTHONPATH=build/sdk/python /usr/bin/python3 sdk/python/examples/blocking.py \
        --router 127.0.0.1:7000 --prompt "The capital of France is" --max-new-tokens 16
"""

import argparse
import json
import sys

from indexcache_client import Client, ClientError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", required=True, help="router address, host:port")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="0 = greedy; unset: the server default")
    parser.add_argument("--timeout", type=float, help="deadline in seconds")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()

    try:
        with Client(args.router, timeout=args.timeout) as client:
            result = client.generate(args.prompt, max_new_tokens=args.max_new_tokens,
                                     temperature=args.temperature)
    except ClientError as error:
        print(error, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"request {result.request_id}\ntext: {result.text}\nids: {result.output_ids}")
    print(f"finish: {result.finish_reason}" + (f" ({result.error})" if result.error else ""))
    print(f"prompt tokens {result.prompt_tokens}, generated {result.generated_tokens}, "
          f"pattern {result.index_pattern}")
    print(f"first token {result.timings.first_token_seconds:.3f} s, total {result.timings.total_seconds:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
