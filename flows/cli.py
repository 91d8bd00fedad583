"""The `xco2` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tasks.settings import ConfigError, load_settings

console = Console()


def _cmd_inspect(args) -> int:
    from tasks.quarantine import InputFileError
    from tasks.readers import inspect_file

    try:
        info = inspect_file(Path(args.file))
    except (InputFileError, FileNotFoundError, OSError) as exc:
        print(f"xco2 inspect: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, default=str))
    return 0


def _cmd_features(args) -> int:
    from tasks.features import FEATURE_SET_VERSION, feature_table_markdown

    print(f"Feature set {FEATURE_SET_VERSION}\n")
    print(feature_table_markdown())
    return 0


def _cmd_config(args) -> int:
    s = load_settings()
    out = json.loads(s.model_dump_json())
    out["archive_root"] = str(s.archive_root)
    out["tracking_uri"] = s.tracking_uri
    print(json.dumps(out, indent=2))
    return 0


def _cmd_daily(args) -> int:
    from flows.daily import daily_update

    load_settings()  # fail fast on bad configuration, before any flow starts
    result = daily_update(start=args.start, end=args.end)
    console.print_json(json.dumps({k: result[k] for k in ("window", "new_granules", "archive_days")}, default=str))
    return 0


def _cmd_retrain(args) -> int:
    from flows.retrain import monthly_retrain

    load_settings()
    result = monthly_retrain()
    console.print_json(json.dumps(result, default=str))
    return 0


def _cmd_sources_check(args) -> int:
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


def _grid_covariates(settings) -> None:
    from tasks.covariates import build_covariates
    from tasks.grid import Grid

    meta = build_covariates(settings.raw_dir / "static", Grid.for_region(settings.region, settings.grid_step),
                            settings.region_dir)
    console.print(f"gridded {len(meta['static_names'])} static layers and {len(meta['ndvi'])} NDVI composites "
                  f"for region {settings.region.name}")


def _cmd_covariates_import(args) -> int:
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


def _cmd_covariates_build(args) -> int:
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
                  f"({fit['n_collocations']} collocated cell-days, {fit['method']})")
    table.add_row("days archived", f"{len(s['archive_days'])}: {', '.join(s['archive_days'])}")
    table.add_row("archive", s["archive_root"])
    m = s["model"]
    table.add_row("model", f"{m['name']} version {m['version']} alias '{m['alias']}' "
                  f"(best epoch {m['best_epoch']} of {m['epochs']}; ONNX parity {m['onnx_parity_max_abs_ppm']:.1e} ppm)")
    v = s["validation"]
    table.add_row("validation (random holdout)", f"RMSE {v['rmse']:.3f} ppm, R2 {v['r2']:.3f}, slope {v['slope']:.3f}, "
                  f"MAE {v['mae']:.3f}, bias {v['bias']:+.3f}, N {v['n']}")
    sv = s["spatial_validation"]
    table.add_row(f"promotion holdout ({s['promotion_holdout']})",
                  f"RMSE {sv['rmse']:.3f} ppm, R2 {sv['r2']:.3f}, bias {sv['bias']:+.3f}, N {sv['n']}")
    acc = s["truth_accuracy"]
    if acc:
        a = acc["all_cells"]
        table.add_row("vs truth, all cells", f"RMSE {a['rmse']:.3f} ppm, bias {a['bias']:+.3f}, R2 {a['r2']:.3f}, N {a['n']}")
        g = acc["never_observed_cells"]
        if g:
            table.add_row("vs truth, never-observed cells",
                          f"RMSE {g['rmse']:.3f} ppm, bias {g['bias']:+.3f}, R2 {g['r2']:.3f}, N {g['n']} "
                          f"({100 * (1 - acc['observed_cell_fraction']):.1f}% of cells never observed)")
    table.add_row("MLflow", s["tracking_uri"])
    table.add_row("wall time", ", ".join(f"{k} {v}" for k, v in s["timings"].items()))
    console.print(table)


def _cmd_demo(args) -> int:
    from flows.demo import DemoOptions, run_demo

    opts = DemoOptions(
        data_dir=Path(args.data_dir), start=date.fromisoformat(args.start), days=args.days,
        archive_days=args.archive_days, max_epochs=args.epochs, max_training_samples=args.max_samples,
        small=args.small,
    )
    load_settings(data_dir=str(opts.data_dir))
    summary = run_demo(opts)
    _print_demo_summary(summary)
    out = Path(args.data_dir) / "demo" / "summary.json"
    out.write_text(json.dumps(summary, indent=2, default=str))
    console.print(f"summary written to {out}")
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
    d.set_defaults(func=_cmd_demo)

    daily = sub.add_parser("daily", help="run the daily update flow once")
    daily.add_argument("--start", help="first day (default: end - XCO2_INGEST_LOOKBACK_DAYS + 1)")
    daily.add_argument("--end", help="last day (default: today, UTC)")
    daily.set_defaults(func=_cmd_daily)

    r = sub.add_parser("retrain", help="run the retrain flow once")
    r.set_defaults(func=_cmd_retrain)

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
    return p


def main(argv: list[str] | None = None) -> int:
    # Offline-friendly defaults: no usage telemetry calls from MLflow or Prefect.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"xco2: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
