-- wrk script for POST /tasks; the task's data comes from BENCH_DATA (default "hello world")
local data = os.getenv("BENCH_DATA") or "hello world"
wrk.method = "POST"
wrk.body = '{"type":1,"data":"' .. data .. '"}'
wrk.headers["Content-Type"] = "application/json"
