"""Coverage-guided fuzz targets for exitgate's parsers (issue 12). See docs/fuzzing.md.

Each module `fuzz/<target>.py` defines `test_one_input(data: bytes) -> None`, which feeds the
bytes to one parser and asserts that parser's contract (typed result or its documented error,
same answer fed whole or in pieces, trailing bytes untouched, ...). A broken contract is an
AssertionError; any other exception escaping a target is a crash as well.

    python -m fuzz <target> [-runs=1000000] [libFuzzer flags]   # atheris, coverage-guided
    python -m fuzz <target> --replay                            # the kept corpus only
    python -m fuzz <target> --merge                             # minimise found units into it
    python -m fuzz --list
"""

TARGETS = (
    "http_head",
    "body",
    "socks5",
    "rules",
    "agent_hello",
    "agent_connect",
    "h2_guard",
    "proxy_protocol",
    "socks5_udp",
)
