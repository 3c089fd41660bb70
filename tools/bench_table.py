"""Print .bench/results.json as the Markdown table docs/performance.md shows."""

import json
import sys
from pathlib import Path

results = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else ".bench/results.json")
                     .read_text())
print("| figure | value | target | met | measured |")
print("|---|---|---|---|---|")
for f in results["figures"]:
    print(f"| {f['name']} | {f['value']:.2f} | {f['target']} | "
          f"{'yes' if f['met'] else '**no**'} | {f['detail']} |")
print(f"\n{results['machine']}; `make bench` wall time {results['wall_time_s']:.0f} s.")
