"""The `xco2` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flows.prefect_server import PrefectServerError
from tasks.settings import (
    ConfigError,
    Settings,
    check_data_dir,
    check_local_source,
    check_tracking_server,
    load_settings,
)

console = Console()


def _cmd_inspect(args: argparse.Namespace) -> int:
    from tasks.io.quarantine import InputFileError
    from tasks.readers import inspect_file

    try:
        info = inspect_file(Path(args.file))
    except (InputFileError, FileNotFoundError, OSError) as exc:
        print(f"xco2 inspect: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, default=str))
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from tasks.covariates.features import FEATURE_SET_VERSION, feature_table_markdown

    print(f"Feature set {FEATURE_SET_VERSION}\n")
    print(feature_table_markdown())
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    s = load_settings()
    out = json.loads(s.model_dump_json())
    out["archive_root"] = str(s.archive_root)
    out["tracking_uri"] = s.tracking_uri
    print(json.dumps(out, indent=2))
    return 0


def _cmd_daily(args: argparse.Namespace) -> int:
    from flows.daily import ArchiveDaysFailed, daily_update
    from tasks.covariates.static import CovariateError
    from tasks.sources.pull import EverySourceFailed

    load_settings()  # fail fast on bad configuration, before any flow starts
    try:
        result = daily_update(start=args.start, end=args.end)
    except (EverySourceFailed, ArchiveDaysFailed, CovariateError) as exc:
        # Failures the run has already reported (artifacts, log): the cause, not a traceback.
        print(f"xco2 daily: {exc}", file=sys.stderr)
        return 1
    console.print_json(json.dumps({k: result[k] for k in ("window", "new_granules", "archive_days")}, default=str))
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from flows.retrain import monthly_retrain

    load_settings()
    result = monthly_retrain()
    console.print_json(json.dumps(result, default=str))
    _print_retrain_summary(result)
    return 0


def _print_retrain_summary(result: dict) -> None:
    """The lines a modeler reads first under the JSON: the version, its alias, and whether its maps use the network."""
    console.print(f"version {result['version']}: alias '{result['alias']}' ({result['decision']})")
    console.print(result["network_share"]["reading"], markup=False, highlight=False)


def _cmd_backfill(args: argparse.Namespace) -> int:
    from flows.backfill import run_backfill

    overrides = {}
    if args.task_runner:
        overrides["task_runner"] = args.task_runner
    if args.dask_address:
        overrides["dask_address"] = args.dask_address
        overrides.setdefault("task_runner", "dask")  # an address means Dask unless told otherwise
    if not args.stale_only and not (args.start and args.end):
        console.print("xco2 backfill: --start and --end are required (or --stale, over the whole archive)",
                      markup=False, highlight=False)
        return 2
    load_settings(**overrides)  # fail fast on bad configuration, before any flow starts
    result = run_backfill(start=args.start, end=args.end, overrides=overrides or None, stale_only=args.stale_only)
    console.print_json(json.dumps({"window": result["window"], "task_runner": result["task_runner"],
                                   "model": result["model"], "days": [r["day"] for r in result["days"]],
                                   "skipped_days": result["skipped_days"],
                                   **({"why": result["why"]} if args.stale_only else {})}, default=str))
    return 0


def _cmd_sources_check(args: argparse.Namespace) -> int:
    from tasks.sources.check import check_sources

    statuses = check_sources(load_settings(), probe=not args.no_probe)
    table = Table(title="xco2 sources")
    for col in ("source", "service", "configured", "credentials from", "reachable"):
        table.add_column(col)
    for st in statuses:
        table.add_row(st.source, st.service, "yes" if st.configured else "NO", st.credentials_from or "-",
                      {True: "yes", False: "NO", None: "not probed"}[st.reachable])
    console.print(table)
    for problem in dict.fromkeys(st.problem for st in statuses if st.problem):
        print(f"- {problem}")
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses]))
    ok = all(s.configured and s.reachable is not False for s in statuses)
    return 0 if ok else 1


def _grid_covariates(settings: Settings) -> None:
    from tasks.covariates.static import build_covariates
    from tasks.gridding.geometry import Grid

    meta = build_covariates(settings.raw("static"), Grid.for_region(settings.region, settings.grid_step),
                            settings.region_dir)
    console.print(f"gridded {len(meta['static_names'])} static layers and {len(meta['ndvi'])} NDVI composites "
                  f"for region {settings.region.name}")


def _cmd_covariates_import(args: argparse.Namespace) -> int:
    from tasks.sources.static_layers import StaticLayerError, import_layer

    settings = load_settings()
    try:
        path = import_layer(settings, args.layer, Path(args.file),
                            date.fromisoformat(args.start) if args.start else None)
    except StaticLayerError as exc:
        print(f"xco2 covariates import: {exc}", file=sys.stderr)
        return 2
    console.print(f"{args.layer}: {path}")
    return 0


def _cmd_covariates_build(args: argparse.Namespace) -> int:
    from tasks.sources.static_layers import LAYERS, build_static_layers

    settings = load_settings()
    try:
        status = build_static_layers(
            settings, args.year, date.fromisoformat(args.ndvi_start), date.fromisoformat(args.ndvi_end),
            force=args.force, layers=tuple(args.layer) if args.layer else LAYERS)
    except ValueError as exc:
        print(f"xco2 covariates build: {exc}", file=sys.stderr)
        return 2
    for layer, st in status.items():
        console.print(f"{layer:<11} {st['status']:<8} {st.get('message', '')}")
    if any(st["status"] == "failed" for st in status.values()):
        return 1
    _grid_covariates(settings)
    return 0


def _print_demo_summary(s: dict) -> None:
    table = Table(title="xco2 demo: summary", show_header=False)
    table.add_row("region", f"{s['region']['name']} {s['region']['west']}-{s['region']['east']} E, "
                  f"{s['region']['south']}-{s['region']['north']} N ({s['grid']['nx']} x {s['grid']['ny']} cells)")
    table.add_row("window", f"{s['window'][0]} .. {s['window'][1]}")
    table.add_row("training samples", f"{s['samples']} cell-days over {s['samples_days']} days")
    fit = s["gosat_fit"]
    table.add_row("GOSAT -> OCO fit", f"oco = {fit['intercept']:.2f} + {fit['slope']:.4f} * gosat "
                  f"({fit['n_collocations']} collocated GOSAT soundings, {fit['method']}, fit {fit.get('fit_id', '?')})")
    table.add_row("days archived", f"{len(s['archive_days'])}: {', '.join(s['archive_days'])}")
    table.add_row("archive", s["archive_root"])
    m = s["model"]
    table.add_row("model", f"{m['name']} version {m['version']} alias '{m['alias']}' "
                  f"(best epoch {m['best_epoch']} of {m['epochs']}; ONNX parity {m['onnx_parity_max_abs_ppm']:.1e} ppm)")
    if m.get("network_share"):
        table.add_row("network share", m["network_share"]["reading"])
    for name, h in (s.get("holdouts") or {}).items():
        table.add_row(f"held out: {name}", f"RMSE {h['rmse']:.3f} ppm, R2 {h['r2']:.3f} (detrended {h['r2_detrended']:.3f}), "
                      f"bias {h['bias']:+.3f}, 68% coverage {h.get('coverage68', float('nan')):.1%}, N {h['n']}")
    table.add_row("promotion gate", s["promotion_holdout"])
    acc = s["truth_accuracy"]
    if acc:
        a = acc["all_cells"]
        table.add_row("vs truth, all cells", f"RMSE {a['rmse']:.3f} ppm, bias {a['bias']:+.3f}, R2 {a['r2']:.3f}, N {a['n']}")
        g = acc["never_observed_cells"]
        if g:
            table.add_row("vs truth, never-observed cells",
                          f"RMSE {g['rmse']:.3f} ppm, bias {g['bias']:+.3f}, R2 {g['r2']:.3f}, N {g['n']} "
                          f"({100 * (1 - acc['observed_cell_fraction']):.1f}% of cells never observed)")
        if acc.get("never_observed_interval_coverage") is not None:
            table.add_row("68% retrieval interval (band 2) vs truth, never-observed cells",
                          f"covers {acc['never_observed_interval_coverage']:.1%} (retrieval noise included: "
                          "more than 68% expected)")
        if acc.get("never_observed_true_column_coverage") is not None:
            table.add_row("68% true-column interval (band 3) vs truth, never-observed cells",
                          f"covers {acc['never_observed_true_column_coverage']:.1%}"
                          + _chance(acc.get("never_observed_true_column_range")))
    for holdout, scored in (s.get("true_column_vs_truth") or {}).items():
        if scored is not None:
            table.add_row(f"68% true-column interval vs truth, held-out {holdout}",
                          f"covers {scored['coverage']:.1%}" + _chance(scored.get("range")))
    for row in s.get("comparison") or []:
        table.add_row(f"compare {row['model']} / {row['protocol']}",
                      f"RMSE {row['rmse']:.3f} ppm, R2 {row['r2']:.3f}, bias {row['bias']:+.3f}, N {row['n']}"
                      + (f"; vs truth at the held-out cell-days RMSE {row['truth_rmse']:.3f}"
                         if row.get("truth_rmse") == row.get("truth_rmse") and row.get("truth_rmse") is not None else ""))
    table.add_row("MLflow", s["tracking_uri"])
    table.add_row("wall time", ", ".join(f"{k} {v}" for k, v in s["timings"].items()))
    console.print(table)


def _chance(spread: dict | None) -> str:
    """' (6 days: 28-80 % in 90 % of resamplings of the days)' from a CoverageRange.to_dict, or ''."""
    from tasks.analysis.reliability import CoverageRange

    return f" ({CoverageRange.from_dict(spread).reading()})" if spread else ""


def _cmd_past_window(args: argparse.Namespace) -> int:
    from tasks.steps.past_window import BIAS_CRITERION_PPM, MAP_LABELS, PastWindowOptions, past_window_check
    from demo_world import truth_for_day

    settings = load_settings()
    if settings.source.value != "demo":
        print("xco2 past-window: needs the demo world's truth (source = demo)", file=sys.stderr)
        return 2
    try:
        opts = PastWindowOptions(train_end=date.fromisoformat(args.train_end), days=args.days)
    except ValueError as exc:
        print(f"xco2 past-window: bad --train-end {args.train_end!r}: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else settings.data_dir / "reports" / settings.region.name / "past-window"
    try:
        result = past_window_check(settings, opts, lambda d: truth_for_day(settings.data_dir / "demo", d), out)
    except ValueError as exc:
        print(f"xco2 past-window: {exc}", file=sys.stderr)
        return 2
    table = Table(title=f"{opts.days} days after {opts.train_end}: map - truth (ppm), ResNet-LSTM trained as the retrain")
    for col in ("map", "mean bias", "largest daily bias", "RMSE", "68% band 2 (retrieval) covers truth",
                "band 2 without retrieval noise covers truth", "68% band 3 (true column) covers truth"):
        table.add_column(col)
    coverages = ("coverage68_band2", "coverage68_noise_free", "coverage68_true_column")
    for name, m in result["maps"].items():
        table.add_row(MAP_LABELS[name], f"{m['bias']:+.3f}", f"{m['max_abs_daily_bias']:.3f}", f"{m['rmse']:.3f}",
                      *(f"{m[k]:.1%}" if k in m else "-" for k in coverages))
    console.print(table)
    if result.get("true_column_by_distance"):
        by_distance = Table(title="band 3 (true column's 68% interval) of the map by days after the training window")
        # The background's parameter variance at the cells: extrapolated with no observation, and left
        # after conditioning on the day's observations (the part band 3 holds).
        for col in ("days after", "covers truth", "by chance (resampling the days)", "mean half-width (ppm)",
                    "background var. extrapolated (ppm2)", "background var. left (ppm2)"):
            by_distance.add_column(col)

        def ppm2(part: dict, key: str) -> str:
            return f"{part[key]:.4f}" if key in part else "-"

        for part in result["true_column_by_distance"]:
            by_distance.add_row(part["days"], f"{part['coverage68_true_column']:.1%}",
                                _chance(part.get("range68_true_column")).strip(" ()"),
                                f"{part['mean_half_width_true_column']:.3f}",
                                ppm2(part, "background_variance_extrapolated"), ppm2(part, "background_variance_left"))
        overall = result["maps"]["map"]
        if "coverage68_true_column" in overall:
            by_distance.add_row(f"1-{opts.days}", f"{overall['coverage68_true_column']:.1%}",
                                _chance(overall.get("range68_true_column")).strip(" ()"),
                                f"{overall.get('half_width_true_column', float('nan')):.3f}", "", "")
        console.print(by_distance)
    console.print(f"mean bias of the map within {BIAS_CRITERION_PPM} ppm: "
                  f"{'YES' if result['bias_within_criterion'] else 'NO'}; network anomaly scale "
                  f"{result['anomaly_scale']:.2f}")
    console.print(f"written to {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import DemoOptions, run_demo

    opts = DemoOptions(
        data_dir=Path(args.data_dir), start=date.fromisoformat(args.start), days=args.days,
        archive_days=args.archive_days, max_epochs=args.epochs, max_training_samples=args.max_samples,
        small=args.small, compare=not args.no_compare,
    )
    load_settings(data_dir=str(opts.data_dir))
    summary = run_demo(opts)
    _print_demo_summary(summary)
    out = Path(args.data_dir) / "demo" / "summary.json"
    out.write_text(json.dumps(summary, indent=2, default=str))
    console.print(f"summary written to {out}")
    return 0


def _cmd_benchmark_real(args: argparse.Namespace) -> int:
    from flows import benchmark_real as br
    from flows.prefect_server import prefect_api
    from tasks.analysis.real_benchmark import HOLDOUT_LABELS, SplitConfig, markdown_table, noise_markdown
    from tasks.analysis.reliability import markdown_rows as reliability_markdown

    table_path = Path(args.table)
    if not table_path.is_file():
        # The development set is optional (CI and most users lack it): say so and succeed.
        console.print(f"xco2 benchmark real: SKIPPED: no table of retrievals at {table_path} "
                      "(see docs/benchmark-real.md)")
        return 0
    try:
        boxes = [br.parse_box(b) for b in (args.box or [br.DEFAULT_BOXES[0].name])]
        table = br.read_retrievals(table_path)
    except br.BenchmarkInputError as exc:
        print(f"xco2 benchmark real: {exc}", file=sys.stderr)
        return 2
    opts = br.BenchmarkOptions(
        table=table_path, out_root=Path(args.out), grid_step=args.grid_step, max_epochs=args.epochs,
        max_training_samples=args.max_samples, seed=args.seed,
        split=SplitConfig(block_deg=args.block_deg, block_fraction=args.block_fraction, day_every=args.day_every,
                          seed=args.split_seed))
    results = {}
    with prefect_api():
        for box in boxes:
            result = br.run_benchmark(opts, box, table=table, log=console.print)
            results[box.label] = result
            console.print(f"{box.label}: written to {result['run_dir']} ({result['timings']})")
    md = markdown_table({label: r["table"] for label, r in results.items()})
    # The Markdown source, unwrapped: rich's rendering of 12 columns is unreadable below ~200 characters.
    console.print(md, markup=False, highlight=False, soft_wrap=True)
    for label, r in results.items():
        g = r["goal"]
        console.print(f"{label}: no baseline better than xco2 by more than 0.05 ppm on either holdout: "
                      f"{'YES' if g['no_baseline_better'] else 'NO (' + '; '.join(g['beaten_by']) + ')'}")
        cov = ", ".join(f"{HOLDOUT_LABELS[h]} {s['coverage68']:.0%}" for h, s in r["table"]["xco2 archive"].items())
        console.print(f"{label}: 68% coverage in 60-76%: {'YES' if g['coverage_ok'] else 'NO'} ({cov})")
    # Issue 22: the noise the two intervals imply beside same-day neighbouring bins' (which share,
    # and so cancel, the part of the noise correlated along a track), and each interval's reliability.
    console.print("retrieval noise variance: implied by the intervals vs same-day neighbouring bins (read at "
                  "their 68 % quantile; neighbours ~25 km apart cancel the noise they share along a track)")
    console.print(noise_markdown({label: r["noise"] for label, r in results.items()}), markup=False,
                  highlight=False, soft_wrap=True)
    for label, r in results.items():
        console.print(f"{label}: reliability ({r['run_dir']}/reliability.png)")
        console.print(reliability_markdown(r["reliability"]), markup=False, highlight=False, soft_wrap=True)
    if len(results) > 1:
        md += ("\nRetrieval noise variance (ppm2), implied by the intervals and from same-day neighbouring bins:\n\n"
               + noise_markdown({label: r["noise"] for label, r in results.items()})
               + "".join(f"\nReliability, {label} (![reliability]({Path(r['run_dir']).name}/reliability.png)):\n\n"
                         + reliability_markdown(r["reliability"]) for label, r in results.items()))
        out = br.write_combined(opts.out_root, md, results)
        console.print(f"combined table written to {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from tasks.analysis.report import report_window, select_days

    try:
        first, last = report_window(args.start, args.end)
        settings = load_settings()
        select_days(settings.archive_root, settings.region.name, first, last)  # fail fast, before the flow
    except ConfigError:
        raise
    except ValueError as exc:
        print(f"xco2 report: {exc}", file=sys.stderr)
        return 2
    from flows.report import archive_report

    try:
        result = archive_report(start=first.isoformat(), end=last.isoformat(), out_dir=args.out)
    except ValueError as exc:
        print(f"xco2 report: {exc}", file=sys.stderr)
        return 2
    if result["synthetic_days"]:
        print(f"NOTE: {result['synthetic_days']} of {result['n_days']} days are SYNTHETIC demo output, not real XCO2")
    print(f"report of {result['n_days']} archived days ({first} .. {last}, {result['region']}) in {result['out_dir']}")
    print(f"  summary  {result['summary']}")
    for path in [*result["figures"].values(), *(m["path"] for m in result["maps"])]:
        print(f"  figure   {path}")
    for path in result["csv"].values():
        print(f"  table    {path}")
    for note in result["needs_more_data"]:
        print(f"  needs more data: {note}")
    interval = result["true_column_interval"]
    if interval["n_days"]:
        print(f"  true column's 68% half-width: {interval['mean_ppm']:.2f} ppm over the area, {interval['n_days']} days")
    if interval["days_without_band"]:
        print(f"  {interval['days_without_band']} day(s) archived without the true column's interval band: skipped for it")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve_all

    load_settings()
    serve_all(limit=args.limit)  # the deployments of deployments/prefect.yaml, until Ctrl-C
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xco2", description="Daily 1 km XCO2 maps from OCO-2, OCO-3 and GOSAT.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the whole system on the embedded demo world")
    d.add_argument("--data-dir", default="xco2-data")
    d.add_argument("--start", default="2020-06-01", help="first day of the demo window")
    d.add_argument("--days", type=int, default=40, help="length of the demo window in days")
    d.add_argument("--archive-days", type=int, default=1, help="days at the end of the window to map")
    d.add_argument("--epochs", type=int, default=8, help="training epoch cap (the paper: 200)")
    d.add_argument("--max-samples", type=int, default=16000, help="cap on training samples")
    d.add_argument("--small", action="store_true", help="a 0.5 x 0.5 degree region instead of Sichuan")
    d.add_argument("--no-compare", action="store_true",
                   help="skip the model comparison (baselines x validation protocols) in the retrain")
    d.set_defaults(func=_cmd_demo)

    pw = sub.add_parser("past-window", help="demo world: train up to a day, score the maps of the days after")
    pw.add_argument("--train-end", required=True, help="last training day (YYYY-MM-DD)")
    pw.add_argument("--days", type=int, default=60, help="days after the training window to score")
    pw.add_argument("--out", default=None, help="output folder")
    pw.set_defaults(func=_cmd_past_window)

    daily = sub.add_parser("daily", help="run the daily update flow once")
    daily.add_argument("--start", help="first day (default: end - XCO2_INGEST_LOOKBACK_DAYS + 1)")
    daily.add_argument("--end", help="last day (default: today, UTC)")
    daily.set_defaults(func=_cmd_daily)

    r = sub.add_parser("retrain", help="run the retrain flow once")
    r.set_defaults(func=_cmd_retrain)

    bf = sub.add_parser("backfill", help="(re)map every day of a window onto the archive with the champion")
    bf.add_argument("--start", help="first day (YYYY-MM-DD); with --stale, default: the archive's first day")
    bf.add_argument("--end", help="last day (YYYY-MM-DD); with --stale, default: the archive's last day")
    bf.add_argument("--task-runner", choices=["process", "thread", "dask"], help="default: XCO2_TASK_RUNNER (process)")
    bf.add_argument("--dask-address", help="scheduler of a running Dask cluster, e.g. tcp://10.0.0.5:8786")
    bf.add_argument("--stale", "--stale-only", dest="stale_only", action="store_true",
                    help="only stale archived days: made by another champion or GOSAT fit, or from samples or "
                         "meteorology that have since changed (and days found unsound)")
    bf.set_defaults(func=_cmd_backfill)

    i = sub.add_parser("inspect", help="describe one input file as JSON")
    i.add_argument("file")
    i.set_defaults(func=_cmd_inspect)

    f = sub.add_parser("features", help="print the feature table")
    f.set_defaults(func=_cmd_features)

    src = sub.add_parser("sources", help="the real data sources")
    src_sub = src.add_subparsers(dest="sources_command", required=True)
    chk = src_sub.add_parser("check", help="are credentials configured and the archives reachable?")
    chk.add_argument("--no-probe", action="store_true", help="check credentials only, no network")
    chk.add_argument("--json", action="store_true", help="also print the result as JSON")
    chk.set_defaults(func=_cmd_sources_check)

    cov = sub.add_parser("covariates", help="static covariate layers (Table 2)")
    cov_sub = cov.add_subparsers(dest="covariates_command", required=True)
    bld = cov_sub.add_parser("build", help="fetch and convert the static layers from the real archives")
    bld.add_argument("--year", type=int, default=2020, help="year of population and land cover")
    bld.add_argument("--ndvi-start", default="2020-01-01")
    bld.add_argument("--ndvi-end", default="2020-12-31")
    bld.add_argument("--layer", action="append", choices=["elevation", "population", "landcover", "ndvi"])
    bld.add_argument("--force", action="store_true", help="rebuild layers already present")
    bld.set_defaults(func=_cmd_covariates_build)
    imp = cov_sub.add_parser("import", help="use your own raster (any CRS and resolution) as a layer")
    imp.add_argument("layer", choices=["elevation", "population", "landcover", "ndvi"])
    imp.add_argument("file")
    imp.add_argument("--start", help="first day of the NDVI composite (ndvi only)")
    imp.set_defaults(func=_cmd_covariates_import)

    c = sub.add_parser("config", help="print the effective configuration")
    c.set_defaults(func=_cmd_config)

    rep = sub.add_parser("report", help="annual/seasonal/monthly means, growth rates and mean maps of the archive")
    rep.add_argument("--start", required=True, help="first day of the window (YYYY-MM-DD)")
    rep.add_argument("--end", required=True, help="last day of the window (YYYY-MM-DD)")
    rep.add_argument("--out", help="output folder (default: <data>/reports/<region>/<start>_<end>)")
    rep.set_defaults(func=_cmd_report)
    bench = sub.add_parser("benchmark", help="measure the system against simple baselines")
    bench_sub = bench.add_subparsers(dest="benchmark_command", required=True)
    br_ = bench_sub.add_parser("real", help="real OCO-2 retrievals: hold out blocks and days, run the system, "
                                            "score the archive beside baselines (docs/benchmark-real.md)")
    br_.add_argument("--table", default="../shared/data/oco2-south-america-2015-2017.parquet",
                     help="Parquet table with day, lon, lat, xco2_ppm (a missing table: SKIPPED, exit 0)")
    br_.add_argument("--box", action="append",
                     help="amazon, andes, south, or NAME:WEST,SOUTH,EAST,NORTH:START:END; repeat for several "
                          "(default: amazon)")
    br_.add_argument("--out", default="xco2-data/benchmark-real", help="folder of the runs (a fresh one per run)")
    br_.add_argument("--grid-step", type=float, default=0.25,
                     help="grid step in degrees (the data's bins: 0.25; the system's: 0.01)")
    br_.add_argument("--block-deg", type=float, default=2.0, help="side of the held-out spatial blocks (degrees)")
    br_.add_argument("--block-fraction", type=float, default=0.2, help="fraction of the blocks held out")
    br_.add_argument("--day-every", type=int, default=7, help="hold out every N-th day of the window")
    br_.add_argument("--split-seed", type=int, default=20150101, help="seed of the blocks held out")
    br_.add_argument("--seed", type=int, default=42, help="the system's seed (training) and the tree baseline's")
    br_.add_argument("--epochs", type=int, default=30, help="training epoch cap of the benchmark's retrain")
    br_.add_argument("--max-samples", type=int, default=20000, help="cap on training samples of the retrain")
    br_.set_defaults(func=_cmd_benchmark_real)
    srv = sub.add_parser("serve", help="serve the deployments of deployments/prefect.yaml from this process")
    srv.add_argument("--limit", type=int, help="most flow runs at once (default: no limit)")
    srv.set_defaults(func=_cmd_serve)
    return p


# Commands that run Prefect flows and so need its API (the others must not pay for a server).
FLOW_COMMANDS = frozenset({"demo", "daily", "retrain", "backfill", "report", "serve"})


def _prefect_api_for(args: argparse.Namespace) -> AbstractContextManager[object]:
    """The configured Prefect API, or a temporary server that dies with this process even when
    it is killed (flows/prefect_server.py), for a command that runs flows."""
    if args.command not in FLOW_COMMANDS:
        return nullcontext()
    from deployments.stack import command_prefect_database
    from flows.prefect_server import prefect_api

    # Before `make up`, the runs go where the stack will find them (the demo's, say).
    return prefect_api(database_url=command_prefect_database())


def _join_running_stack(args: argparse.Namespace) -> None:
    """A command that runs flows uses the running stack (`make up`) of its data directory: its
    Prefect server and MLflow registry, one system (deployments/stack.py use_running_stack).
    Before anything imports Prefect, which reads PREFECT_API_URL at import."""
    if args.command not in FLOW_COMMANDS:
        return
    from deployments.stack import use_running_stack

    use_running_stack(Path(args.data_dir) if args.command == "demo" else load_settings().data_dir)


def _registry_unavailable(exc: BaseException) -> bool:
    # Only registry.store raises it, so it is loaded when this can be true (no MLflow import here).
    store = sys.modules.get("registry.store")
    return store is not None and isinstance(exc, store.RegistryUnavailableError)


# Commands that write into the data directory.
WRITING_COMMANDS = frozenset({"demo", "daily", "retrain", "backfill", "report", "serve", "past-window", "covariates"})


def _check_data_dir_first(args: argparse.Namespace) -> None:
    """A data directory that cannot be created or written stops the command before anything
    starts (stack, Prefect server, flow), so that its name and the reason are the last line,
    not a later symptom such as "no NDVI composites"."""
    if args.command in WRITING_COMMANDS:
        check_data_dir(load_settings(data_dir=args.data_dir) if args.command == "demo" else load_settings())


# Commands that read the configured source (and `config`, which shows what they would use): a
# local source directory that is not there stops them at once, not after the pull's retries.
SOURCE_COMMANDS = frozenset({"daily", "serve", "config"})
# Commands that use the MLflow registry: an http(s) tracking server that does not take a connection
# stops them at once, not after MLflow's retries (a plain load_settings() probes nothing).
REGISTRY_COMMANDS = frozenset({"demo", "daily", "retrain", "backfill", "serve"})


def _check_sources_first(args: argparse.Namespace) -> None:
    if args.command in SOURCE_COMMANDS:
        check_local_source(load_settings())


def _check_registry_first(args: argparse.Namespace) -> None:
    """After joining the stack, which may name its MLflow server; before a Prefect server starts."""
    if args.command in REGISTRY_COMMANDS:
        check_tracking_server(load_settings(data_dir=args.data_dir) if args.command == "demo" else load_settings())


def main(argv: list[str] | None = None) -> int:
    # Offline-friendly defaults: no usage telemetry calls from MLflow or Prefect.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Our own rich bars show progress; MLflow's per-file download bars would interleave with them.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        _check_data_dir_first(args)
        _check_sources_first(args)
        _join_running_stack(args)
        _check_registry_first(args)
        with _prefect_api_for(args):
            return args.func(args)
    except ConfigError as exc:
        print(f"xco2: {exc}", file=sys.stderr)
        return 2
    except PrefectServerError as exc:
        print(f"xco2: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not _registry_unavailable(exc):
            raise
        print(f"xco2 {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
