"""``dacwatch`` command line: thin wrappers over convert, container, config and the service."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError, DacwatchError

AUDIO_SUFFIXES = frozenset(
    [
        ".wav",
        ".wave",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".mp3",
        ".m4a",
        ".aac",
        ".mp4",
        ".aif",
        ".aiff",
        ".aifc",
        ".caf",
        ".w64",
        ".au",
        ".snd",
        ".wma",
        ".webm",
        ".mka",
        ".mkv",
        ".mov",
        ".ac3",
        ".amr",
    ]
)


def _env(key: str, default: str | None) -> str | None:
    """The daemon's setting ``model.<key>`` from the environment (``DACWATCH_MODEL__<KEY>``):
    one-shot commands read the same variables, so one export serves every command."""
    return os.environ.get(f"DACWATCH_MODEL__{key.upper()}") or default


def _model_args(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    if with_model:
        p.add_argument(
            "--model-type",
            choices=["44khz", "24khz", "16khz"],
            default=_env("type", "44khz"),
            help="env DACWATCH_MODEL__TYPE",
        )
        p.add_argument(
            "--model-bitrate",
            choices=["8kbps", "16kbps"],
            default=_env("bitrate", "8kbps"),
            help="env DACWATCH_MODEL__BITRATE",
        )
        p.add_argument("--model-tag", default=_env("tag", "latest"), help="env DACWATCH_MODEL__TAG")
    weights = _env("weights", None)
    p.add_argument(
        "--weights",
        type=Path,
        default=Path(weights) if weights else None,
        help="a local DAC weights file (offline hosts; env DACWATCH_MODEL__WEIGHTS)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    p.add_argument("--window", type=float, default=None, help="window length in seconds; 0 = whole file")
    p.add_argument("--batch", type=int, default=None, help="windows per forward pass")
    p.add_argument(
        "--precision",
        choices=["float32", "tf32", "bf16"],
        default="float32",
        help="float32 is exact; tf32 and bf16 are faster on a GPU (bench/ measures how far codes move)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dacwatch", description="Descript Audio Codec converter and folder daemon")
    parser.add_argument("--version", action="version", version=f"dacwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("encode", help="audio file or folder -> .dac")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    _model_args(p)
    p.add_argument("--codebooks", type=int, default=None, help="codebooks to keep (fewer = lower bitrate)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("decode", help=".dac file or folder -> audio")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--resample", action="store_true", help="restore the original sample rate and exact length")
    p.add_argument("--start", type=float, default=0.0, help="excerpt start, seconds")
    p.add_argument("--duration", type=float, default=None, help="excerpt length, seconds")
    p.add_argument("--format", choices=["wav", "flac"], default=None, help="default: from OUT's suffix, else wav")
    p.add_argument("--sample-format", choices=["float", "pcm16", "pcm24"], default="float")
    _model_args(p)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("verify", help="chunked vs whole-file encoding: frames compared, frames differing")
    p.add_argument("input", type=Path)
    _model_args(p)
    p.add_argument("--codebooks", type=int, default=None)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("info", help="describe a .dac file")
    p.add_argument("input", type=Path)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="run the folder daemon")
    p.add_argument("--config", type=Path, default=None)

    p = sub.add_parser("status", help="queue counts, running jobs, recent failures")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("retry", help="re-queue failed jobs")
    p.add_argument("--config", type=Path, default=None)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--all", action="store_true")
    g.add_argument("path", nargs="?", type=Path)

    p = sub.add_parser("config", help="configuration")
    csub = p.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", help="validate and print the effective configuration")
    c.add_argument("--config", type=Path, default=None)
    c.add_argument("--json", action="store_true")

    p = sub.add_parser("doctor", help="is this host ready: the ML stack, devices, weights, folders")
    p.add_argument("--config", type=Path, default=None, help="also check this configuration's weights and folders")
    p.add_argument("--network", action="store_true", help="also try to reach the weights' download address")
    return parser


# Commands that import torch and DAC: the stack is checked first, so a broken install
# ends in one sentence (dacwatch.stack), never in a loader's traceback. ``run`` checks
# it itself, once its signal handlers are in place.
NEEDS_STACK = frozenset(["encode", "decode", "verify", "retry", "config"])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "encode": _encode,
        "decode": _decode,
        "verify": _verify,
        "info": _info,
        "run": _run,
        "status": _status,
        "retry": _retry,
        "config": _config_check,
        "doctor": _doctor,
    }
    try:
        if args.command in NEEDS_STACK:
            from .stack import require

            require()
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("dacwatch: interrupted", file=sys.stderr)
        return 130
    except (DacwatchError, ValueError, OSError) as exc:
        print(f"dacwatch: error: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------------- one-shot conversion


def _pool(args: argparse.Namespace) -> Any:
    from .convert import CodecPool, CodecSettings
    from .model import ModelSpec

    spec = ModelSpec(
        getattr(args, "model_type", "44khz"),
        getattr(args, "model_bitrate", "8kbps"),
        getattr(args, "model_tag", "latest"),
        args.weights,
    )
    window = args.window
    settings = CodecSettings(
        device=args.device,
        encode_window_s=window if args.command in ("encode", "verify") else None,
        decode_window_s=window if args.command == "decode" else None,
        batch_size=args.batch,
        precision=args.precision,
    )
    cache = _env("cache_dir", None)
    return CodecPool(spec, settings, cache_dir=Path(cache) if cache else None)


def _pairs(src: Path, dst: Path, wanted: Callable[[Path], bool], suffix: str) -> Iterator[tuple[Path, Path]]:
    """(input, output) pairs: one for a file, the mirrored tree for a folder."""
    if not src.is_dir():
        yield src, dst
        return
    for dirpath, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(dirpath) / name
            if name.startswith(".") or not wanted(path):
                continue
            yield path, (dst / path.relative_to(src)).with_suffix(suffix)


def _convert_many(
    args: argparse.Namespace, pairs: list[tuple[Path, Path]], convert: Callable[[Path, Path, Any], object]
) -> int:
    from tqdm import tqdm

    show = sys.stderr.isatty()
    failed = 0
    folder = args.input.is_dir()
    if not pairs:
        print(f"dacwatch: nothing to convert in {args.input}", file=sys.stderr)
        return 0
    with tqdm(total=len(pairs), unit="file", disable=not show or not folder, position=0) as files:
        for src, dst in pairs:
            if dst.exists() and not args.overwrite:
                if folder:
                    files.update(1)
                    continue
                raise DacwatchError(f"{dst} exists (use --overwrite)")
            try:
                with tqdm(
                    unit="s",
                    unit_scale=True,
                    disable=not show,
                    leave=not folder,
                    position=1 if folder else 0,
                    desc=src.name,
                ) as bar:
                    convert(src, dst, lambda s: bar.update(s))
            except (DacwatchError, OSError, ValueError) as exc:
                if not folder:
                    raise
                failed += 1
                print(f"dacwatch: failed: {src}: {_one_line(exc)}", file=sys.stderr)
            files.update(1)
    if failed:
        print(f"dacwatch: {failed} of {len(pairs)} files failed", file=sys.stderr)
    return 1 if failed else 0


def _encode(args: argparse.Namespace) -> int:
    from .convert import encode_file

    pool = _pool(args)
    pool.codec()  # load once, fail early with the model's own message
    pairs = list(_pairs(args.input, args.output, lambda p: p.suffix.lower() in AUDIO_SUFFIXES, ".dac"))
    return _convert_many(
        args, pairs, lambda s, d, prog: encode_file(pool, s, d, args.codebooks, overwrite=True, progress=prog)
    )


def _decode(args: argparse.Namespace) -> int:
    from .audio import OutputFormat
    from .convert import decode_file

    pool = _pool(args)
    container = args.format or (
        args.output.suffix.lstrip(".").lower() if args.output.suffix.lower() in (".wav", ".flac") else "wav"
    )
    fmt = OutputFormat(container, args.sample_format)
    pairs = list(_pairs(args.input, args.output, lambda p: p.suffix.lower() == ".dac", fmt.suffix))
    return _convert_many(
        args,
        pairs,
        lambda s, d, prog: decode_file(
            pool, s, d, fmt, resample=args.resample, start_s=args.start, duration_s=args.duration, progress=prog
        ),
    )


def _verify(args: argparse.Namespace) -> int:
    from .convert import verify_file

    report = verify_file(_pool(args), args.input, args.codebooks)
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{args.input}: {report['frames_compared']} frames compared, {report['frames_differing']} differing "
            f"(window {report['window_s']} s, batch {report['batch']})"
        )
    return 0 if report["frames_differing"] == 0 else 1


def _info(args: argparse.Namespace) -> int:
    from .container import ModelRecord, read, summarize

    summary = summarize(read(args.input))
    if args.json:
        print(json.dumps(asdict(summary)))
        return 0
    m = summary.model
    record = ModelRecord(**m)
    geometry = f"{m['sample_rate']} Hz, hop {m['hop_length']}" if m["hop_length"] else "geometry unknown"
    guess = f" (by its codebook count: DAC {m['type']} {m['bitrate']}?)" if not record.named and m["hop_length"] else ""
    loud = "n/a" if summary.loudness_lufs is None else f"{summary.loudness_lufs:.1f} LUFS"
    print(f"{summary.path}")
    print(f"  format     {summary.format}")
    print(f"  model      {record.describe()}{guess} ({geometry})")
    print(f"  weights    {m['weights'] or 'not recorded'}")
    print(f"  duration   {summary.duration_s:.3f} s at {summary.sample_rate} Hz")
    print(f"  channels   {summary.channels}")
    print(f"  frames     {summary.frames}")
    print(f"  codebooks  {summary.codebooks} of {m['model_codebooks']} ({m['codebook_size']} entries)")
    print(f"  bitrate    {summary.bitrate_kbps:.2f} kbps")
    print(f"  loudness   {loud}")
    for k, v in summary.extra.items():
        print(f"  {k:<10} {v}")
    return 0


# ---------------------------------------------------------------------- daemon side


def _settings(args: argparse.Namespace) -> Any:
    from .config import load_settings

    return load_settings(args.config)


def _run(args: argparse.Namespace) -> int:
    import signal

    # Importing torch takes seconds; a SIGTERM then must still mean "stop cleanly".
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    from .stack import require

    require()
    from .service import run

    status: int = run(_settings(args), early_signals=early)
    return status


def _status(args: argparse.Namespace) -> int:
    from .queue import open_queue

    settings = _settings(args)
    with open_queue(settings.state_db, settings.queue.url, readonly=True)[0] as queue:
        report = queue.report()
    if args.json:
        print(json.dumps(report))
        return 0
    counts = report["counts"]
    print("queue: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for job in report["running"]:
        where = f"{job['node']}, {job['worker']}" if job.get("node") else job["worker"]
        print(
            f"running: {job['path']} on {where} (attempt {job['attempts']}, since {job['started_at']}, "
            f"last heartbeat {job['heartbeat_at']})"
        )
    for job in report.get("retrying", []):
        print(f"retrying: {job['path']}: {job['last_error']} (attempt {job['attempts']}, next at {job['not_before']})")
    for job in report["recent_failures"]:
        print(f"failed: {job['path']}: {job['last_error']}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    from .queue import open_queue
    from .worker import retry

    settings = _settings(args)
    with open_queue(settings.state_db, settings.queue.url)[0] as queue:
        count, moved = retry(settings, queue, None if args.all else _source_key(settings, args.path))
    print(f"re-queued {count} job(s); moved {moved} file(s) back from the failed folder into the inbox")
    return 0 if count else 1


def _source_key(settings: Any, path: Path) -> str:
    path = path.absolute()
    for root in (settings.inbox, settings.failed):
        try:
            return str(path.relative_to(root.absolute()))
        except ValueError:
            continue
    return str(path)


def _config_check(args: argparse.Namespace) -> int:
    from .config import describe

    settings = _settings(args)
    text = describe(settings, as_json=args.json)
    print(text)
    for line in _check_runtime(settings):
        print(line, file=sys.stderr)
    return 0


def _check_runtime(settings: Any) -> list[str]:
    """What the file alone cannot tell: do the devices exist, and does the model (when its
    weights are on this host) have what the configuration asks of it. Raises ConfigError."""
    from .errors import ModelUnavailableError
    from .model import weights_path
    from .service import resolve_devices
    from .worker import check_against_model, make_pool, model_spec

    devices = resolve_devices(settings.codec.devices)
    lines = [f"devices: {', '.join(devices)}"]
    try:
        weights_path(model_spec(settings), settings.model.cache_dir, download=False)
    except ModelUnavailableError as exc:
        return [*lines, f"model: not checked ({exc}; it is fetched at the first start)"]
    pool = make_pool(settings, "cpu")
    check_against_model(settings, pool)
    return [*lines, f"model: {pool.spec.describe()}, {pool.codec().n_codebooks} codebooks: the configuration fits"]


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import examine

    settings = _settings(args) if args.config is not None or os.environ.get("DACWATCH_CONFIG") else None
    report = examine(settings, network=args.network)
    for line in report.lines:
        print(line)
    return report.status


if __name__ == "__main__":
    sys.exit(main())
