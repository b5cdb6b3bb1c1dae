import sys, tempfile, time
from pathlib import Path
from bench import driver
from bench.driver import Cell, Session, ensure_path
from bench.servers import ZkfsdStandalone, mntr

def main():
    with tempfile.TemporaryDirectory(prefix="i12s-fs-", dir="/tmp") as tmp:
        shape = ZkfsdStandalone(Path(tmp), 2000)
        with shape:
            address = shape.addresses[0]
            for op, s, w in (("create", 16, 32), ("setData", 16, 32)):
                prefix = f"/fs-{op}{s}-{int(time.time()*1000)}"
                with Session(*address) as sess: ensure_path(sess, prefix)
                before = int(mntr(*address)["zk_fsync_count"])
                res, _, _ = driver.run_cell(address, Cell(op, s, w, 2.0, 10**9, prefix))
                after = int(mntr(*address)["zk_fsync_count"])
                print(f"{op} {s}x{w}: {res.ops} ops, {res.throughput:.0f}/s, fsyncs/write {(after-before)/max(1,res.ops):.4f}")

if __name__ == "__main__":
    main()
