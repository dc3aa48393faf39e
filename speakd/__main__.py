"""Command line: ``speakd run --config FILE`` and ``speakd sandbox up|down|status|...``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from speakd import __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sandbox":
        from speakd import sandbox

        return sandbox.main(argv[1:])

    parser = argparse.ArgumentParser(prog="speakd", description="Speak TTS into live Asterisk calls over ARI")
    parser.add_argument("--version", action="version", version=f"speakd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the daemon")
    run_p.add_argument("--config", "-c", help="TOML config file (SPEAKD_<SECTION>_<KEY> env vars override it)")
    sub.add_parser("sandbox", help="manage the development Asterisk (speakd sandbox --help lists its commands)")
    check_p = sub.add_parser("check-config", help="load the config and print the effective values")
    check_p.add_argument("--config", "-c")
    args = parser.parse_args(argv)

    from speakd.config import ConfigError, load_config
    from speakd.logging import configure_logging

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"speakd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        from speakd import config_check

        return config_check.run(config)

    configure_logging(config.log.level, config.log.format)
    from speakd.daemon import run

    asyncio.run(run(config, config_path=args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
