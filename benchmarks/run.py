"""Run every benchmark module (``bench_*.py``) in one interleaved run and print the table.

python benchmarks/run.py                 # everything
python benchmarks/run.py core traffic    # only these groups
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))

from harness import report, report_timings, run, run_timings  # noqa: E402


def main(argv: list[str]) -> int:
    wanted = set(argv)
    scenarios = []
    timings = []
    for path in sorted(HERE.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
            found = module.scenarios()
        except ImportError as exc:
            print(f"skipping {path.name}: {exc}")
            continue
        scenarios.extend(s for s in found if not wanted or s.group in wanted)
        once = getattr(module, "timings", None)
        if once is not None:
            timings.extend(t for t in once() if not wanted or t.group in wanted)
    if not scenarios and not timings:
        print("no scenarios selected")
        return 1
    if scenarios:
        print(report(run(scenarios)))
    if timings:
        print(report_timings(run_timings(timings)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
