"""Reads every Parquet file an object sink wrote under a directory with pyarrow and prints what
it holds as one JSON line: files, rows, distinct (partition, offset) pairs, distinct `n`
properties (the message numbers the test sent) and the sum of `n`."""
import glob
import json
import os
import sys

import pyarrow.parquet as pq

root = sys.argv[1]
files = sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True))
rows = 0
positions = set()
numbers = set()
total = 0
for path in files:
    table = pq.read_table(path)
    rows += table.num_rows
    columns = table.to_pydict()
    for partition, offset, properties, body in zip(
        columns["partition"], columns["offset"], columns["properties"], columns["body"]
    ):
        positions.add((partition, offset))
        n = int(dict(properties)["n"])
        numbers.add(n)
        total += n
        assert json.loads(body)["n"] == n, (path, offset)
print(json.dumps({"files": len(files), "rows": rows, "distinct": len(positions),
                  "numbers": len(numbers), "sum": total}))
