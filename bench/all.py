"""Every figure of the performance issue, side by side in one run, on this machine's device.

    python bench/all.py                       # CPU suite (about 20 min on 2 cores)
    python bench/all.py --device cuda         # GPU suite (ViT-H, 32x32 grids, bf16)
    python bench/all.py --only embed everything --out figures.json

Runs the benchmark scripts of this folder one after the other, each in its own process (each
starts and stops its own Ray), with arguments sized for the device (see SUITES). Prints one
JSON object: the date, the device, each part's full JSON output under its name, and
"headline": the figures the issue sets targets for. With --markdown, also a table of those
figures on stderr, ready for RESULTS.md. A part that fails is reported with its exit status
and the tail of its stderr; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

# part -> (script, arguments) per device type. CPU: the small students and tiny configs (2 cores
# give ~0.1-2 encoder images/s); CUDA: the issue's own workloads.
SUITES: dict[str, dict[str, tuple[str, list[str]]]] = {
    "cpu": {
        "embed": ("embed.py", ["--model", "mobile_sam", "--shards", "3",
                               "--images-per-shard", "4", "--batch-size", "4",
                               "--warmup-shards", "1"]),
        "memory": ("memory.py", ["--model", "sam_tiny", "--shards", "10", "40",
                                 "--images-per-shard", "8"]),
        "everything": ("everything.py", ["--images", "2", "--points-per-side", "16"]),
        "autolabel": ("autolabel.py", ["--model", "sam_tiny", "--images", "4",
                                       "--points-per-side", "32", "--box-nms-thresh", "1.0"]),
        "models": ("models.py", ["--models", "sam_vit_b", "mobile_sam", "efficientvit_sam_l0",
                                 "efficient_sam_vitt", "--min-seconds", "1"]),
        "distill": ("distill.py", ["--steps", "200"]),
        "pieces": ("pieces.py", ["--images", "64", "--per-task", "8", "--shards", "8"]),
        "control_plane": ("control_plane.py", ["--shards", "10", "100", "1001"]),
        # one 1024 image per encoder, no warm-up: ViT-H alone is minutes on 2 cores
        "sam2_encoders": ("sam2_speed.py", ["--part", "encoders"]),
        "sam2_everything": ("sam2_speed.py", ["--part", "everything", "--images", "2",
                                              "--points-per-side", "16"]),
        # SAM 3's 1008 backbone beside ViT-H and Hiera-L: one image each, no warm-up (minutes)
        "sam3_backbone": ("sam3_speed.py", ["--part", "backbone"]),
        "sam3_concepts": ("sam3_speed.py", ["--part", "concepts", "--images", "4"]),
    },
    "cuda": {
        "embed": ("embed.py", ["--model", "sam_vit_h", "--shards", "16",
                               "--images-per-shard", "32", "--batch-size", "auto",
                               "--warmup-shards", "4", "--repeats", "3",
                               "--peak-tflops", "989"]),
        "profile": ("embed.py", ["--model", "sam_vit_h", "--shards", "1",
                                 "--images-per-shard", "32", "--batch-size", "auto",
                                 "--warmup-shards", "0", "--profile"]),
        "memory": ("memory.py", ["--model", "sam_tiny", "--shards", "10", "40",
                                 "--images-per-shard", "8"]),
        "everything": ("everything.py", ["--device", "cuda", "--precision", "bf16",
                                         "--points-per-side", "32", "--images", "16",
                                         "--models", "mobile_sam", "efficientvit_sam_l0",
                                         "fastsam_x", "fastsam_s"]),
        "autolabel": ("autolabel.py", ["--model", "sam_vit_b", "--images", "8",
                                       "--points-per-side", "32", "--device", "cuda"]),
        "models": ("models.py", ["--device", "cuda", "--precision", "bf16", "--batch", "8"]),
        "distill": ("distill.py", ["--teacher", "sam_vit_h", "--student", "mobile_sam",
                                   "--shards", "8", "--images-per-shard", "64", "--min-side",
                                   "768", "--max-side", "1500", "--batch-size", "16",
                                   "--steps", "300", "--log-every", "20"]),
        "pieces": ("pieces.py", ["--images", "256", "--per-task", "16", "--shards", "8",
                                 "--ray-cpus", "16"]),
        "control_plane": ("control_plane.py", ["--shards", "10", "100", "1001"]),
        "sam2_encoders": ("sam2_speed.py", ["--part", "encoders", "--device", "cuda",
                                            "--precision", "bf16", "--images", "8",
                                            "--warmup", "2", "--reps", "5"]),
        "sam2_everything": ("sam2_speed.py", ["--part", "everything", "--device", "cuda",
                                              "--images", "8", "--points-per-side", "32"]),
        "sam3_backbone": ("sam3_speed.py", ["--part", "backbone", "--device", "cuda",
                                            "--precision", "bf16", "--images", "8",
                                            "--warmup", "2", "--reps", "5"]),
        "sam3_concepts": ("sam3_speed.py", ["--part", "concepts", "--device", "cuda",
                                            "--precision", "bf16", "--concept-model", "sam3",
                                            "--images", "8", "--batch-size", "8",
                                            "--height", "768", "--width", "1024"]),
    },
}


def last_json(text: str) -> dict:
    """The last JSON object a script printed: the object that starts on the last line
    beginning with "{" and parses (the scripts print one object, on one line or indented);
    whatever follows it (late log lines) is ignored."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("{")]
    for i in reversed(starts):
        try:
            obj, _ = json.JSONDecoder().raw_decode("\n".join(lines[i:]))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise ValueError(f"expected a JSON object in the output, got: {text[-500:]!r}")


def run_part(name: str, script: str, args: list[str], timeout: float | None,
             device: str = "cuda") -> dict:
    """Run one benchmark script; its JSON output, or {"failed": exit status, "stderr": tail}.
    For the CPU suite the part sees no GPU (each script would otherwise take one it sees)."""
    cmd = [sys.executable, str(HERE / script), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    print(f"[bench/all] {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        return {"failed": "timeout", "seconds": timeout,
                "stderr": (e.stderr or b"")[-2000:].decode(errors="replace")
                if isinstance(e.stderr, bytes) else (e.stderr or "")[-2000:]}
    seconds = round(time.perf_counter() - start, 1)
    print(f"[bench/all] {name}: exit {proc.returncode} after {seconds} s", file=sys.stderr,
          flush=True)
    if proc.returncode != 0:
        return {"failed": proc.returncode, "seconds": seconds, "stderr": proc.stderr[-2000:]}
    try:
        result = last_json(proc.stdout)
    except ValueError as e:
        return {"failed": str(e), "seconds": seconds, "stderr": proc.stderr[-2000:]}
    result["part_seconds"] = seconds
    return result


def headline(parts: dict[str, dict]) -> list[tuple[str, str, object]]:
    """(figure, target, value) rows for the figures the issue sets targets for."""
    rows: list[tuple[str, str, object]] = []
    e = parts.get("embed", {})
    if "failed" not in e and e:
        m = f"{e['model']} {e['precision']} batch {e['batch_size']}"
        rows += [
            (f"bare encoder img/s ({m})", "-", e["bare_images_per_s"]),
            ("bare encoder % of measured peak", ">= 60 (GPU)", e["bare_percent_of_peak"]),
            ("bare encoder % of data-sheet peak", ">= 60 (GPU)", e["bare_percent_of_datasheet"]),
            ("pipeline img/s, end to end", "-", e["pipeline_images_per_s"]),
            ("pipeline / bare, end to end", "-", e["pipeline_to_bare"]),
            ("pipeline img/s, steady state", "-", e["pipeline_steady_images_per_s"]),
            ("pipeline / bare, steady state", ">= 0.95", e["pipeline_steady_to_bare"]),
            ("pipeline % of measured peak, steady state", ">= 60 (GPU)",
             e["pipeline_steady_percent_of_peak"]),
            ("peak RSS, driver + Ray (MiB)", "-", e["peak_rss_mib"]),
            ("peak device memory, bare loop (MiB)", "-", e["peak_device_memory_mib"]),
        ]
    p = parts.get("profile", {})
    if "failed" not in p and p.get("profile"):
        rows.append(("profile: device busy share of wall", "-", p["profile"].get("busy_share")))
    m = parts.get("memory", {})
    if "failed" not in m and m:
        runs = m["runs"]
        rows.append((f"peak RSS {runs[-1]['shards']} vs {runs[0]['shards']} shards", "<= 1.2",
                     m["peak_rss_ratio_largest_to_smallest"]))
    v = parts.get("everything", {})
    for r in v.get("results", []):
        grid = f", {v['points_per_side']}x{v['points_per_side']}" if r["mode"] == "point grid" \
            else ""
        rows.append((f"everything mode img/s, {r['model']}{grid}", ">= 20 (H100, 32x32)",
                     r["images_per_s"]))
    a = parts.get("autolabel", {})
    if "failed" not in a and a:
        rows += [
            (f"ours / official generator ({a['model']}, {a['images']} images)", ">= 10 (GPU)",
             a["speedup"]),
            ("masks identical to the official", "-", a["identical_masks"]),
            ("masks at IoU >= 0.9 to the official", ">= 0.99", a["masks_iou_ge_0.9"]),
        ]
    for r in parts.get("models", {}).get("results", []):
        rows.append((f"encoder img/s, {r['model']}", "-", r.get("encoder_images_per_s")))
    d = parts.get("distill", {})
    if "failed" not in d and d:
        rows += [
            (f"distill img/s, {d['student']} from {d['teacher']}, steady state", "-",
             d["steady_images_per_s"]),
            ("distill: trainer waiting for data, share of step time", "< 0.10",
             d["steady_data_wait_share"]),
        ]
    pc = parts.get("pieces", {})
    if "failed" not in pc and pc:
        rows += [
            (f"embed img/s, 1 shard in pieces / 1 task ({pc['model']}, decode-bound), steady",
             "> 1 (one core per shard no more)", pc["steady_pieces_to_one_task"]),
            (f"embed img/s, {pc['shards']} shards / 1 shard, pieces, steady", "~1",
             pc["steady_many_shards_to_one_shard_pieces"]),
        ]
    cp = parts.get("control_plane", {})
    if "failed" not in cp and cp:
        last = cp["runs"][-1]
        rows += [
            (f"driver control-plane ms per shard ({last['shards']} shards)", "-",
             round(sum(last["control_ms_per_shard"].values()), 1)),
            (f"driver peak RSS MiB, {last['shards']} vs {cp['runs'][0]['shards']} shards", "-",
             cp["peak_driver_rss_ratio_largest_to_smallest"]),
        ]
    for r in parts.get("sam2_encoders", {}).get("encoders", {}).get("results", []):
        rows.append((f"encoder img/s, {r['model']} (x sam_vit_h: {r['x_sam_vit_h']})", "-",
                     r["encoder_images_per_s"]))
    se = parts.get("sam2_everything", {}).get("everything")
    if se:
        rows += [
            (f"ours / official SAM2AutomaticMaskGenerator ({se['model']}, {se['images']} "
             f"images)", "-", se["speedup"]),
            ("SAM 2 masks at IoU >= 0.9 to the official", ">= 0.99", se["masks_iou_ge_0.9"]),
        ]
    for r in parts.get("sam3_backbone", {}).get("backbone", {}).get("results", []):
        rows.append((f"SAM 3 backbone beside SAM / SAM 2.1: img/s, {r['model']} @{r['input']} "
                     f"(x sam_vit_h: {r['x_sam_vit_h']})", "-", r["encoder_images_per_s"]))
    sc = parts.get("sam3_concepts", {}).get("concepts")
    for r in (sc or {}).get("results", []):
        rows += [
            (f"concept labeling img/s, {sc['model']}, {r['concepts']} concepts "
             f"({r['instances_per_image']} instances / image)", "-", r["images_per_s"]),
            (f"  {r['concepts']} concepts, ms per image: backbone / detector / masks", "-",
             f"{r['backbone_ms_per_image']} / {r['detector_ms_per_image']} / "
             f"{r['masks_ms_per_image']}"),
            (f"  {r['concepts']} concepts, text ms once per job (not per image)", "-",
             r["text_ms_once_per_job"]),
        ]
    for name, part in parts.items():
        if "failed" in part:
            rows.append((f"{name}: FAILED", "-", part["failed"]))
    return rows


def markdown(rows: list[tuple[str, str, object]]) -> str:
    lines = ["| figure | target | value |", "|---|---|---:|"]
    lines += [f"| {f} | {t} | {'-' if v is None else v} |" for f, t, v in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    choices=sorted(SUITES))
    ap.add_argument("--only", nargs="+", default=None, metavar="PART",
                    help="run only these parts (default: all of the device's suite)")
    ap.add_argument("--skip", nargs="+", default=[], metavar="PART",
                    help="leave these parts out (e.g. embed memory where Ray is absent)")
    ap.add_argument("--no-ray", action="store_true",
                    help="where Ray is not installed: the embed parts measure the bare encoder "
                    "only (--bare-only) and the memory part is left out")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds each part may run (default: no limit)")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    ap.add_argument("--markdown", action="store_true",
                    help="print the headline figures as a Markdown table on stderr")
    args = ap.parse_args()
    suite = SUITES[args.device]
    names = args.only or list(suite)
    unknown = sorted(set(names + args.skip) - set(suite))
    if unknown:
        ap.error(f"expected parts among {', '.join(suite)}, got {', '.join(unknown)}")

    if args.no_ray:
        args.skip.append("memory")
        suite = {n: (script, [*a, "--bare-only"] if script == "embed.py" else a)
                 for n, (script, a) in suite.items()}

    start = time.perf_counter()
    parts = {n: run_part(n, *suite[n], args.timeout, args.device)
             for n in names if n not in args.skip}
    rows = headline(parts)
    result = {
        "bench": "all", "date": date.today().isoformat(), "device": args.device,
        "device_name": (torch.cuda.get_device_name() if args.device == "cuda"
                        else platform.processor() or platform.machine()),
        "cores": os.cpu_count(), "torch": torch.__version__,
        "seconds": round(time.perf_counter() - start, 1),
        "headline": [{"figure": f, "target": t, "value": v} for f, t, v in rows],
        "parts": parts,
    }
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.markdown:
        print(markdown(rows), file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
