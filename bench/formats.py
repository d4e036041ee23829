"""``python -m bench.formats``: the archive's side, in one run.

- bytes per audio second of the same audio as format 2 (bit-packed, the default), format 1
  (int16), the seed script's ``.npz`` and DAC 1.0.0's own ``.dac``;
- decoding time, whole file and a one-second excerpt, format 1 against format 2 (the cost of
  unpacking), interleaved rounds on one loaded network;
- the cost of ``codec.quality = "sample"`` on encoding (interleaved with ``off``).

Full-size 44 kHz network with random weights unless ``--tiny``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from . import __main__ as bench


def _best(times: list[float]) -> float:
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.formats", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random network (smoke test, not for figures)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=10.0, help="audio for sizes and decode timing")
    p.add_argument("--quality-seconds", type=float, default=60.0, help="audio for the quality cost")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--weights", type=Path, help="real DAC weights (default: random network)")
    p.add_argument("--out", type=Path, default=bench.RESULTS)
    args = p.parse_args(argv)

    from dacwatch.audio import OutputFormat
    from dacwatch.codec.model import ModelSpec
    from dacwatch.convert import CodecPool, CodecSettings, decode_file, encode_file
    from dacwatch.formats import container

    report: dict[str, Any] = {**bench.run_header(args, "python -m bench.formats", argv), "seconds": args.seconds}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = bench.weights_file(args, work)
        pool = CodecPool(ModelSpec(weights=weights), CodecSettings(args.device))
        pool.codec()
        wav = work / "talk.wav"
        sf.write(str(wav), bench.synth(args.seconds, 1, 44100).T, 44100, subtype="PCM_16")

        # Sizes: one encode, written in each layout.
        f2 = encode_file(pool, wav, work / "f2.dac").output
        dac = container.read(f2)
        codes = np.asarray(dac.codes)
        f1 = work / "f1.dac"
        with open(f1, "wb") as f:
            container.write(f, dac.metadata, codes, "int16")
        seed = work / "seed.dac"
        seed_meta = {"sample_rate": 44100, "original_length": dac.metadata.length, "channels": 1, "input_db": -16.0}
        with open(seed, "wb") as f:
            np.savez(f, codes=codes, metadata=np.array(seed_meta, dtype=object))
        dac100 = _dac_1_0_0(weights, wav, work)
        frame_rate = dac.metadata.model.sample_rate / dac.metadata.model.hop_length
        nominal = np.ceil(np.log2(dac.metadata.model.codebook_size)) * dac.metadata.model.n_codebooks * frame_rate
        sizes = {
            "format 2 (packed, default)": f2,
            "format 1 (int16)": f1,
            "seed script .npz": seed,
            "DAC 1.0.0 .dac": dac100,
        }
        report["sizes"] = {
            name: {"bytes": path.stat().st_size, "kbps": path.stat().st_size * 8 / args.seconds / 1000}
            for name, path in sizes.items()
        }
        report["nominal_kbps"] = nominal / 1000

        # Decoding, whole and a one-second excerpt from the middle, format 1 against 2.
        fmt = OutputFormat("wav", "pcm16")
        timing: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, path in (("format 1", f1), ("format 2", f2)):
                for what, start, duration in (("whole", 0.0, None), ("excerpt", args.seconds / 2, 1.0)):
                    t0 = time.perf_counter()
                    decode_file(pool, path, work / "out.wav", fmt, start_s=start, duration_s=duration)
                    timing.setdefault(f"{name} {what}", []).append(time.perf_counter() - t0)
        report["decode_s"] = {k: {"best": _best(v), "rounds": v} for k, v in timing.items()}

        # The quality figure's cost on encoding.
        long_wav = work / "long.wav"
        sf.write(str(long_wav), bench.synth(args.quality_seconds, 1, 44100).T, 44100, subtype="PCM_16")
        enc: dict[str, list[float]] = {"off": [], "sample": []}
        for _ in range(args.rounds):
            for mode in ("off", "sample"):
                t0 = time.perf_counter()
                encode_file(pool, long_wav, work / f"q-{mode}.dac", quality=mode)
                enc[mode].append(time.perf_counter() - t0)
        report["quality_encode_s"] = {k: {"best": _best(v), "rounds": v} for k, v in enc.items()}
        report["quality_cost"] = _best(enc["sample"]) / _best(enc["off"]) - 1
    bench.save_result(args.out, f"formats-{'cpu' if args.device == 'cpu' else 'gpu'}", report, markdown(report))
    return 0


def _dac_1_0_0(weights: Path, wav: Path, work: Path) -> Path:
    """The same audio through DAC 1.0.0's own ``compress`` and ``save``."""
    import torch
    from audiotools import AudioSignal
    from dac.model import DAC

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DAC.load(str(weights)).eval()
        audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
        signal = AudioSignal(torch.from_numpy(audio.T.copy())[None], rate)
        with torch.inference_mode():
            saved = model.compress(signal, win_duration=1.0).save(work / "dac100")
    return Path(saved)


def markdown(r: dict[str, Any]) -> str:
    d = r["decode_s"]
    rows = [
        f"| {name} | {v['bytes']} | {v['kbps']:.2f} | {v['kbps'] / r['nominal_kbps']:.3f} |"
        for name, v in r["sizes"].items()
    ]
    return "\n".join(
        [
            f"# dacwatch's files, {r['date']}",
            "",
            f"`{r['command']}`",
            "",
            f"{r['network']}; device {r['device']} ({r['cpu']}, {r['cores']} cores); torch {r['torch']}; "
            f"{r['seconds']:g} s of mono audio; the codec's nominal bitrate {r['nominal_kbps']:.2f} kbps.",
            "",
            "| file | bytes | kbps on disk | of nominal |",
            "|---|---|---|---|",
            *rows,
            "",
            "| decode (best of the rounds) | format 1 (int16) | format 2 (packed) | 2 / 1 |",
            "|---|---|---|---|",
            *[
                f"| {what} | {d[f'format 1 {what}']['best']:.3f} s | {d[f'format 2 {what}']['best']:.3f} s "
                f"| {d[f'format 2 {what}']['best'] / d[f'format 1 {what}']['best']:.3f} |"
                for what in ("whole", "excerpt")
            ],
            "",
            f'Encoding with `codec.quality = "sample"`: {r["quality_encode_s"]["sample"]["best"]:.2f} s against '
            f"{r['quality_encode_s']['off']['best']:.2f} s off, **{100 * r['quality_cost']:+.1f}%**.",
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
