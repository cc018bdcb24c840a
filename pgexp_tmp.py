import json, os, sys, time, contextlib
from pathlib import Path
from benchmarks.database import *
from benchmarks import database as b

root = Path("/tmp/pgexp")
if not root.exists():
    project(Path("/work/main"), root, "postgresql")
pg = start_server(free_port())
try:
    env = settings("postgresql", Path("/tmp"), pg)
    migrate(root, env)
    Path("/tmp/pgexp.env").write_text(json.dumps(env))
    for name in ["orig", "function", "orig", "function"]:
        extra = {}
        (root / "app" / "db.py").write_text(Path(f"/tmp/pgexp-db.py.{name}").read_text())
        with server(root, {**env, **extra}, module=MODULE) as app:
            wait_ready(app.url)
            seed(app.url)
            script = Path("/tmp/post.lua"); script.write_text(POST_SCRIPT)
            for e in (READ, BARE_READ):
                t = Target(e.label, app, e)
                wrk(t, 1, 16, script)
                ls = [wrk(t, 5, 16, script) for _ in range(2)]
                print(name, e.label, [(round(l.rps), l.p99_ms, round(l.cpu_us)) for l in ls], flush=True)
finally:
    pg.stop()
