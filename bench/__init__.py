"""Benchmarks: each module `bench/<name>.py` has `main(argv=None) -> int` and writes JSON under
`bench/results/<name>.json` through `engine.benchmark.BenchResult`. Run with `portrait bench NAME`
or `python -m bench.NAME`. Benchmarks measure; tests assert."""
