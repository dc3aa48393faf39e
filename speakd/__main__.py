"""Command line: ``speakd run [--config FILE]``, ``speakd check-config [--config FILE]``,
``speakd cache clear [--config FILE]`` and ``speakd sandbox up|down|status|...``.

Without ``--config`` they take ``$SPEAKD_CONFIG``, else /etc/speakd/speakd.toml; with none of
them they refuse (running on built-in defaults alone would serve nothing anyone configured).
"""

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
    from speakd import config_check
    from speakd.config import CONFIG_FILE_VARIABLE, DEFAULT_CONFIG_FILE, ConfigError, config_file, read_config

    parser = argparse.ArgumentParser(prog="speakd", description="Speak TTS into live Asterisk calls over ARI")
    parser.add_argument("--version", action="version", version=f"speakd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = (
        f"TOML config file (default: ${CONFIG_FILE_VARIABLE}, else {DEFAULT_CONFIG_FILE}); "
        "SPEAKD_<SECTION>_<KEY> variables override its keys"
    )
    run_p = sub.add_parser("run", help="run the daemon")
    run_p.add_argument("--config", "-c", help=config_help)
    sub.add_parser("sandbox", help="manage the development Asterisk (speakd sandbox --help lists its commands)")
    check_p = sub.add_parser("check-config", help="list every problem of the config and print the effective values")
    check_p.add_argument("--config", "-c", help=config_help)
    cache_p = sub.add_parser("cache", help="the audio cache ([cache] dir)")
    cache_p.add_argument("action", choices=["clear"], help="clear: remove every entry (the daemon may be running)")
    cache_p.add_argument("--config", "-c", help=config_help)
    args = parser.parse_args(argv)

    try:
        path = config_file(args.config)
        reading = read_config(path)
    except ConfigError as exc:
        print(f"speakd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        return config_check.run(reading)
    if args.command == "cache":
        return _clear_cache(reading.config.cache.dir)
    if reading.problems:
        return config_check.report_refusal(reading)

    import structlog

    from speakd.logging import configure_logging

    config = reading.config
    configure_logging(config.log.level, config.log.format, config.node.id)
    log = structlog.get_logger("speakd")
    # Which file, and which keys the environment set over it (names, never values).
    log.info("config_file", path=path, from_environment=sorted(reading.from_environment.values()))
    for warning in config_check.warnings(reading):
        log.warning("config_warning", problem=warning)
    from speakd.daemon import run
    from speakd.store import StoreNotOpened

    try:
        asyncio.run(run(config, config_path=path))
    except StoreNotOpened as exc:  # unreachable, or written by a newer speakd: a sentence, not a traceback
        log.error("store_not_opened", error=exc.message)
        return 1
    return 0


def _clear_cache(directory: str) -> int:
    from speakd.providers.cache import clear_directory

    try:
        files, size = clear_directory(directory)
    except OSError as exc:
        print(f"speakd: cannot clear the audio cache in {directory}: {exc}", file=sys.stderr)
        return 1
    print(f"removed {files} entr{'y' if files == 1 else 'ies'} ({size / 1024 / 1024:.1f} MiB) from {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
