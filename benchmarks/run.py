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

from harness import report, run  # noqa: E402


def main(argv: list[str]) -> int:
    wanted = set(argv)
    scenarios = []
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
    if not scenarios:
        print("no scenarios selected")
        return 1
    figures = run(scenarios)
    print(report(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
