"""``dacwatch`` command line: thin wrappers over convert, container, config and the service."""

from __future__ import annotations

import argparse
import json
import math
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from dacwatch import __version__
from dacwatch.errors import ConfigError, DacwatchError, UsageError
from dacwatch.names import printable

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


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line (argparse would print the usage first), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _finite(text: str, what: str, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number{what}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be a finite number{' above 0' if positive else ', 0 or more'}"
        )
    return value


def _seconds(text: str) -> float:
    """A time in seconds: finite and not negative."""
    return _finite(text, " of seconds", positive=False)


def _rate(text: str) -> float:
    """A positive, finite rate."""
    return _finite(text, "", positive=True)


def _count(text: str) -> int:
    """A positive whole number."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return value


def _regular(path: Path) -> None:
    """Refuse at once what is not a regular file (reading a FIFO would wait forever)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return  # the reader says so, in its own words
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise UsageError(f"{path} is not a regular file")


def _model_args(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    from dacwatch.config import model_from_env

    env = model_from_env()  # DACWATCH_MODEL__*, read and checked as the daemon reads them
    if with_model:
        p.add_argument(
            "--model-type",
            choices=["44khz", "24khz", "16khz"],
            default=env.type,
            help="env DACWATCH_MODEL__TYPE",
        )
        p.add_argument(
            "--model-bitrate",
            choices=["8kbps", "16kbps"],
            default=env.bitrate,
            help="env DACWATCH_MODEL__BITRATE",
        )
        p.add_argument("--model-tag", default=env.tag, help="env DACWATCH_MODEL__TAG")
    weights = env.weights
    p.add_argument(
        "--weights",
        type=Path,
        default=weights,
        help="a local DAC weights file (offline hosts; env DACWATCH_MODEL__WEIGHTS)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    p.add_argument("--window", type=_seconds, default=None, help="window length in seconds; 0 = whole file")
    p.add_argument("--batch", type=_count, default=None, help="windows per forward pass")
    p.add_argument(
        "--precision",
        choices=["float32", "tf32", "bf16"],
        default="float32",
        help="float32 is exact; tf32 and bf16 are faster on a GPU (bench/ measures how far codes move)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dacwatch", description="Descript Audio Codec converter and folder daemon")
    parser.add_argument("--version", action="version", version=f"dacwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("encode", help="audio file or folder -> .dac")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    _model_args(p)
    p.add_argument("--codebooks", type=_count, default=None, help="codebooks to keep (fewer = lower bitrate)")
    p.add_argument(
        "--code-format",
        choices=["packed", "int16"],
        default="packed",
        help="packed: format 2, at the codec's own bitrate (default); int16: format 1",
    )
    p.add_argument(
        "--quality",
        choices=["off", "sample", "full"],
        default="off",
        help="measure how far the codec moved the audio (about 5%% of it, or all) and record it",
    )
    p.add_argument("--min-quality", type=float, default=None, help="refuse files below this SI-SDR in dB")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("decode", help=".dac file or folder -> audio")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--resample", action="store_true", help="restore the original sample rate and exact length")
    p.add_argument("--start", type=_seconds, default=0.0, help="excerpt start, seconds")
    p.add_argument("--duration", type=_seconds, default=None, help="excerpt length, seconds")
    p.add_argument("--format", choices=["wav", "flac"], default=None, help="default: from OUT's suffix, else wav")
    p.add_argument("--sample-format", choices=["float", "pcm16", "pcm24"], default="float")
    _model_args(p)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("verify", help="chunked vs whole-file encoding: frames compared, frames differing")
    p.add_argument("input", type=Path)
    _model_args(p)
    p.add_argument("--codebooks", type=_count, default=None)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("info", help="describe a .dac file")
    p.add_argument("input", type=Path)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("repack", help="rewrite .dac files (files or trees) in another code format, exactly")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--code-format", choices=["packed", "int16"], default="packed")

    p = sub.add_parser(
        "scrub",
        help="check .dac files or trees: CRC, metadata, codes, weights, decoding, and a BagIt bag's manifest",
    )
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument(
        "--write-manifest",
        action="store_true",
        help="make each PATH a BagIt bag instead of checking it: write bagit.txt, bag-info.txt and "
        "manifest-sha256.txt (SHA-256) for the .dac files under PATH/data/ (BagIt keeps the files in data/); "
        "a later scrub of the bag, or of any path inside it, checks the files against the manifest",
    )
    p.add_argument(
        "--decode",
        nargs="?",
        const="sample",
        choices=["sample", "full"],
        default=None,
        help="also decode: three one-second excerpts (sample, the default) or everything (full)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-read-mb-s", type=_rate, default=None, help="hold reading to this rate")
    _model_args(p)

    p = sub.add_parser("run", help="run the folder daemon")
    p.add_argument("--config", type=Path, default=None)

    p = sub.add_parser("status", help="queue counts, running jobs, recent failures")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true", help="redraw every 2 s until Ctrl-C (like watch)")

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
NEEDS_STACK = frozenset(["encode", "decode", "verify", "retry", "config", "scrub"])


def main(argv: Sequence[str] | None = None) -> int:
    from dacwatch import allocator

    allocator.tune()  # before any tensor: see dacwatch/allocator.py
    try:
        args = build_parser().parse_args(argv)
    except ConfigError as exc:  # a bad DACWATCH_MODEL__* variable
        print(f"dacwatch: error: {_one_line(exc)}", file=sys.stderr)
        return 2
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
        "repack": _repack,
        "scrub": _scrub,
    }
    try:
        if args.command in NEEDS_STACK:
            from dacwatch.stack import require

            require()
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("dacwatch: interrupted", file=sys.stderr)
        return 130
    except (DacwatchError, ValueError, OSError) as exc:
        print(f"dacwatch: error: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, (ConfigError, UsageError)) else 1


def _one_line(exc: BaseException) -> str:
    return printable(" ".join(str(exc).split())) or type(exc).__name__


# ---------------------------------------------------------------------- one-shot conversion


def _pool(args: argparse.Namespace) -> Any:
    from dacwatch.codec.model import ModelSpec
    from dacwatch.convert import CodecPool, CodecSettings

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
    from dacwatch.codec.tuning import default_dir
    from dacwatch.config import model_from_env

    return CodecPool(spec, settings, cache_dir=model_from_env().cache_dir, kernels_dir=default_dir())


def _pairs(src: Path, dst: Path, wanted: Callable[[Path], bool], suffix: str) -> Iterator[tuple[Path, Path]]:
    """(input, output) pairs: one for a file, the mirrored tree for a folder. Output names
    follow the daemon's rule (README, "Output names"), in sorted order: ``a.flac`` gets
    ``a.dac``, then ``a.wav`` gets ``a.wav.dac``; no two inputs share an output."""
    from dacwatch.fsio import mirror
    from dacwatch.names import output_candidates

    if not src.is_dir():
        _regular(src)
        yield src, dst
        return
    claimed: set[Path] = set()
    for dirpath, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(dirpath) / name
            if name.startswith(".") or not wanted(path) or not path.is_file():  # a FIFO would hang
                continue
            candidates = output_candidates(mirror(path, src, dst, suffix), name)
            target = next((c for c in candidates if c not in claimed), None)
            if target is None:
                raise DacwatchError(f"no free output name for {printable(path)}")
            claimed.add(target)
            yield path, target


def _convert_many(
    args: argparse.Namespace, pairs: list[tuple[Path, Path]], convert: Callable[[Path, Path, Any], object]
) -> int:
    from tqdm import tqdm

    show = sys.stderr.isatty()
    failed = 0
    folder = args.input.is_dir()
    if not pairs:
        print(f"dacwatch: nothing to convert in {printable(args.input)}", file=sys.stderr)
        return 0
    from .fsio import sweep_dead_writers

    left = [p for folder in sorted({dst.parent for _, dst in pairs}) for p in sweep_dead_writers(folder)]
    if left:
        print(f"dacwatch: removed {len(left)} temporary file(s) a killed dacwatch left behind", file=sys.stderr)
    with tqdm(total=len(pairs), unit="file", disable=not show or not folder, position=0) as files:
        for src, dst in pairs:
            if dst.exists() and not args.overwrite:
                if folder:
                    files.update(1)
                    continue
                raise DacwatchError(f"{printable(dst)} exists (use --overwrite)")
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
                print(f"dacwatch: failed: {printable(src)}: {_one_line(exc)}", file=sys.stderr)
            files.update(1)
    if failed:
        print(f"dacwatch: {failed} of {len(pairs)} files failed", file=sys.stderr)
    return 1 if failed else 0


def _encode(args: argparse.Namespace) -> int:
    from dacwatch.convert import encode_file

    pool = _pool(args)
    pool.codec()  # load once, fail early with the model's own message
    pairs = list(_pairs(args.input, args.output, lambda p: p.suffix.lower() in AUDIO_SUFFIXES, ".dac"))
    return _convert_many(
        args,
        pairs,
        lambda s, d, prog: encode_file(
            pool,
            s,
            d,
            args.codebooks,
            overwrite=True,
            progress=prog,
            code_format=args.code_format,
            quality="sample" if args.min_quality is not None and args.quality == "off" else args.quality,
            min_quality_db=args.min_quality,
        ),
    )


def _decode(args: argparse.Namespace) -> int:
    from dacwatch.audio import OutputFormat
    from dacwatch.convert import decode_file

    pool = _pool(args)
    if pool.device.type == "cpu":  # numba's kernels load while the weights do
        from dacwatch.codec.kernels import warm_cpu_kernels_soon

        warm_cpu_kernels_soon()
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
    from dacwatch.convert import verify_file

    _regular(args.input)
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
    from dacwatch.formats.container import ModelRecord, read, summarize

    _regular(args.input)
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
    on_disk = (
        "" if summary.file_kbps is None else f"; this file {summary.file_kbps:.2f} kbps ({summary.file_bytes} bytes)"
    )
    print(f"  bitrate    {summary.bitrate_kbps:.2f} kbps (the codec's){on_disk}")
    print(f"  loudness   {loud}")
    for k, v in summary.extra.items():
        print(f"  {k:<10} {v}")
    return 0


# ---------------------------------------------------------------------- daemon side


def _settings(args: argparse.Namespace) -> Any:
    from dacwatch.config import load_settings

    return load_settings(args.config)


def _run(args: argparse.Namespace) -> int:
    import signal

    # Importing torch takes seconds; a SIGTERM then must still mean "stop cleanly".
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    from dacwatch.stack import require

    require()
    from dacwatch.daemon.service import run

    status: int = run(_settings(args), early_signals=early)
    return status


def _status(args: argparse.Namespace) -> int:
    from dacwatch.daemon.report import status_of, text
    from dacwatch.queue import open_queue

    settings = _settings(args)
    with open_queue(settings.state_db, settings.queue.url, readonly=True)[0] as queue:
        if not args.watch:
            report = status_of(queue, settings.failed, inbox=settings.inbox)
            print(json.dumps(report) if args.json else "\n".join(text(report)))
            return 0
        try:  # the same report, redrawn; Ctrl-C is how a watch ends, not an error
            while True:
                report = status_of(queue, settings.failed, inbox=settings.inbox)
                body = json.dumps(report) if args.json else "\n".join(text(report))
                sys.stdout.write(f"\x1b[H\x1b[2Jdacwatch status, every 2 s (Ctrl-C ends)\n\n{body}\n")
                sys.stdout.flush()
                time.sleep(2.0)
        except KeyboardInterrupt:
            return 0


def _retry(args: argparse.Namespace) -> int:
    from dacwatch.daemon.worker import retry
    from dacwatch.queue import open_queue

    settings = _settings(args)
    with open_queue(settings.state_db, settings.queue.url, existing=True)[0] as queue:
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
    from dacwatch.config import describe

    settings = _settings(args)
    text = describe(settings, as_json=args.json)
    print(text)
    for line in _check_runtime(settings):
        print(line, file=sys.stderr)
    return 0


def _check_runtime(settings: Any) -> list[str]:
    """What the file alone cannot tell: do the devices exist, and does the model (when its
    weights are on this host) have what the configuration asks of it. Raises ConfigError."""
    from dacwatch.codec.model import weights_path
    from dacwatch.daemon.service import resolve_devices
    from dacwatch.daemon.worker import check_against_model, make_pool, model_spec
    from dacwatch.errors import ModelUnavailableError

    devices = resolve_devices(settings.codec.devices)
    lines = [f"devices: {', '.join(devices)}"]
    try:
        weights_path(model_spec(settings), settings.model.cache_dir, download=False)
    except ModelUnavailableError as exc:
        return [*lines, f"model: not checked ({exc}; it is fetched at the first start)"]
    pool = make_pool(settings, "cpu")
    check_against_model(settings, pool)
    return [*lines, f"model: {pool.spec.describe()}, {pool.codec().n_codebooks} codebooks: the configuration fits"]


def _scrub(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dacwatch.codec.model import fingerprint
    from dacwatch.scrub import decoder, scrub, weights_here

    if args.write_manifest:
        return _write_manifest(args)

    pool = _pool(args)
    local = fingerprint(pool.codec().model) if args.weights is not None else None
    check = weights_here(pool.cache_dir, local)
    with tqdm(unit="file", disable=not sys.stderr.isatty() or args.json, desc="scrub") as bar:
        report = scrub(
            args.paths,
            weights=check,
            decode=(decoder(pool), args.decode) if args.decode else None,
            max_read_mb_s=args.max_read_mb_s,
            progress=lambda _p: bar.update(1),
        )
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        for p in report.problems:
            print(f"PROBLEM {p.path}: {p.check}: {p.detail}")
        print(
            f"scrub: {report.files} files, {report.clean} clean, {len(report.problems)} with a problem; "
            f"{report.bytes_read / 1e6:.1f} MB read"
        )
    return 1 if report.problems else 0


def _write_manifest(args: argparse.Namespace) -> int:
    from dacwatch.bag import PAYLOAD, write_bag
    from dacwatch.scrub import RateLimit, dac_files

    limit = RateLimit(args.max_read_mb_s)
    for root in args.paths:
        if not (root / PAYLOAD).is_dir():
            raise UsageError(f"{root} has no {PAYLOAD}/ folder: a bag keeps its files in {root / PAYLOAD}/")
        written = write_bag(root, dac_files([root / PAYLOAD]), limit.spend)
        print(f"bag {root}: {written.files} files, {written.octets} bytes in manifest-sha256.txt")
    return 0


def _repack(args: argparse.Namespace) -> int:
    from dacwatch.repack import repack_tree

    outcome = repack_tree(args.paths, args.code_format, report=print)
    print(
        f"repack: {outcome.repacked} rewritten, {outcome.already} already {args.code_format}, "
        f"{outcome.skipped} skipped, {outcome.failed} failed; {outcome.bytes_before} -> {outcome.bytes_after} bytes"
    )
    return 1 if outcome.failed else 0


def _doctor(args: argparse.Namespace) -> int:
    from dacwatch.doctor import examine

    settings = _settings(args) if args.config is not None or os.environ.get("DACWATCH_CONFIG") else None
    report = examine(settings, network=args.network)
    for line in report.lines:
        print(line)
    return report.status


if __name__ == "__main__":
    sys.exit(main())
